//! The Kubernetes manifests in deploy/: valid against the Kubernetes schemas, and in
//! agreement with the CSI plugin (its name, its socket paths) and with each other.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

/// The plugin's name; tests/csi.rs checks that the plugin reports exactly this.
const DRIVER_NAME: &str = "csi.meridian.io";

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn manifests() -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    for dir in [deploy(), deploy().join("examples")] {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                all.push(p);
            }
        }
    }
    all.sort();
    anyhow::ensure!(all.len() >= 10, "manifests: {all:?}");
    Ok(all)
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() -> Result<()> {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.33.0"])
        .args(manifests()?)
        .output()
        .context("kubernetes-validate (pip install kubernetes-validate; scripts/test.sh does)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("ERROR"), "{text}");
    // Every Kubernetes object was checked against a schema (only kustomizations and the
    // snapshot CRDs have none).
    for line in text.lines().filter(|l| l.starts_with("WARN")) {
        assert!(
            line.contains("kind Kustomization") || line.contains("kind VolumeSnapshot"),
            "{line}"
        );
    }
    assert!(text.matches("passed for resource").count() >= 18, "{text}");
    Ok(())
}

#[test]
fn the_manifests_agree_with_the_plugin_and_with_each_other() -> Result<()> {
    let check = |name: &str| {
        Command::new("python3")
            .arg(deploy().join("check.py"))
            .arg(name)
            .output()
    };
    let ok = check(DRIVER_NAME)?;
    assert!(
        ok.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    // The check can fail: another driver name disagrees with every place that names it.
    let wrong = check("csi.example.org")?;
    let text = String::from_utf8_lossy(&wrong.stdout);
    assert!(!wrong.status.success(), "{text}");
    for what in ["CSIDriver", "StorageClass", "kubelet-registration-path"] {
        assert!(text.contains(what), "{what} not checked:\n{text}");
    }
    Ok(())
}
