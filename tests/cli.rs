//! The command line: clear errors for the mistakes users make.

mod common;

use std::process::Command;

use anyhow::Result;
use common::{MERIDIAN, Region};

fn run(args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(MERIDIAN).args(args).output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn help_lists_the_subcommands() -> Result<()> {
    let out = Command::new(MERIDIAN).arg("--help").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["dev", "mount", "meta", "chunk", "admin"] {
        assert!(text.contains(cmd), "--help lists {cmd}:\n{text}");
    }
    Ok(())
}

#[test]
fn mount_explains_what_is_wrong() -> Result<()> {
    let region = Region::start()?;
    let meta = region.meta_addrs();
    let dir = region.meta.dir.path();

    let (ok, err) = run(&[
        "mount",
        "--meta",
        &meta,
        dir.join("missing").to_str().unwrap(),
    ])?;
    assert!(!ok && err.contains("does not exist"), "{err}");

    std::fs::create_dir(dir.join("mnt"))?;
    let (ok, err) = run(&[
        "mount",
        "--meta",
        &meta,
        "--volume",
        "nosuch",
        dir.join("mnt").to_str().unwrap(),
    ])?;
    assert!(!ok && err.contains("unknown volume"), "{err}");

    let (ok, err) = run(&[
        "mount",
        "--meta",
        "127.0.0.1:1",
        dir.join("mnt").to_str().unwrap(),
    ])?;
    assert!(!ok && err.contains("metaservers unreachable"), "{err}");
    assert!(!common::is_mounted(&dir.join("mnt")));

    // Volumes: create, refuse a duplicate, delete.
    let (ok, _) = run(&["admin", "volume-create", "--meta", &meta, "scratch"])?;
    assert!(ok);
    let (ok, err) = run(&["admin", "volume-create", "--meta", &meta, "scratch"])?;
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _) = run(&["admin", "volume-delete", "--meta", &meta, "scratch"])?;
    assert!(ok);
    let (ok, err) = run(&["admin", "volume-delete", "--meta", &meta, "scratch"])?;
    assert!(!ok && err.contains("not found"), "{err}");
    Ok(())
}
