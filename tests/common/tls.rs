//! Regions on mutual TLS, for the tests of TLS and of tokens: `meridian` run with or
//! without a certificate folder, a deployment's CA and certificates, and a region whose
//! every server runs with them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result};

use super::*;

pub fn meridian(tls: Option<&Path>, args: &[&str]) -> Result<Output> {
    let mut c = Command::new(MERIDIAN);
    if let Some(dir) = tls {
        c.arg("--tls").arg(dir);
    }
    Ok(c.args(args)
        .env_remove("MERIDIAN_TLS")
        .env_remove("MERIDIAN_PLAINTEXT")
        .output()?)
}

pub fn ok(out: Output) -> Result<String> {
    anyhow::ensure!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn refused(out: Output) -> Result<String> {
    anyhow::ensure!(!out.status.success(), "succeeded where it must be refused");
    // What it said, wherever it said it (a status table names unreachable members).
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// A CA in `dir/name`, and a certificate folder `dir/<name>-<cert>` for each of `certs`.
pub fn deployment(dir: &Path, name: &str, certs: &[(&str, &str)]) -> Result<Vec<PathBuf>> {
    let ca = dir.join(name);
    ok(meridian(
        None,
        &["admin", "certs", "init", "--dir", ca.to_str().unwrap()],
    )?)?;
    let mut out = Vec::new();
    for (cert, role) in certs {
        let folder = dir.join(format!("{name}-{cert}"));
        ok(meridian(
            None,
            &[
                "admin",
                "certs",
                "issue",
                "--ca",
                ca.to_str().unwrap(),
                "--out",
                folder.to_str().unwrap(),
                "--name",
                cert,
                "--role",
                role,
            ],
        )?)?;
        out.push(folder);
    }
    Ok(out)
}

/// A certificate of each role, in this order: metaservers, chunkservers, the mount, the
/// operator.
pub const ROLES: [(&str, &str); 4] = [
    ("meta", "meta"),
    ("chunk", "chunk"),
    ("mount", "client"),
    ("ops", "admin"),
];

/// A region on TLS: `members` metaservers and three chunkservers with the certificates of
/// `tls` (as [`ROLES`] orders them), all up, and a volume "default"; this test process
/// calls as the operator. Returns the metaservers, the chunkservers and their addresses.
pub fn tls_region(
    members: usize,
    tls: &[PathBuf],
) -> Result<(MetaCluster, Vec<ServerProc>, String)> {
    tls_region_with(members, tls, &[])
}

/// [`tls_region`], with more flags for every server (`--token-key FILE`).
pub fn tls_region_with(
    members: usize,
    tls: &[PathBuf],
    flags: &[&str],
) -> Result<(MetaCluster, Vec<ServerProc>, String)> {
    let (meta_tls, chunk_tls, admin_tls) = (&tls[0], &tls[1], &tls[3]);
    meridian_proto::tls::install(
        meridian_proto::tls::TlsIdentity::load(admin_tls).map_err(anyhow::Error::msg)?,
    );
    let meta_flags = [&["--tls", meta_tls.to_str().unwrap()][..], flags].concat();
    let meta = MetaCluster::start(members, &meta_flags)?;
    let addrs = meta.addrs().join(",");
    let mut chunk_flags = vec!["--tls".to_string(), chunk_tls.display().to_string()];
    chunk_flags.extend(flags.iter().map(|f| f.to_string()));
    let chunks = start_chunkservers_with(&meta, 300, 8 << 30, &chunk_flags)?;
    wait_for(
        std::time::Duration::from_secs(30),
        "three chunkservers up over TLS",
        || {
            let map = tls_cluster_map(admin_tls, &addrs).ok()?;
            (map.nodes
                .iter()
                .filter(|n| n.state == meridian_proto::NodeState::Up)
                .count()
                == 3)
                .then_some(())
        },
    )
    .with_context(|| log_tail(&meta.nodes[0].log, 20))?;
    ok(meridian(
        Some(admin_tls),
        &["admin", "volume-create", "--meta", &addrs, "default"],
    )?)?;
    Ok((meta, chunks, addrs))
}

/// A volume access token signed with the key file `key` (`meridian admin token issue`),
/// for `subject`, granting `volumes` (`name` or `name:ro`), valid for `ttl` (`1h`).
pub fn issue_token(key: &Path, subject: &str, volumes: &[&str], ttl: &str) -> Result<String> {
    let mut args = vec![
        "admin",
        "token",
        "issue",
        "--key",
        key.to_str().unwrap(),
        "--subject",
        subject,
        "--ttl",
        ttl,
    ];
    for v in volumes {
        args.extend(["--volume", v]);
    }
    Ok(ok(meridian(None, &args)?)?.trim().to_string())
}

/// The cluster map of the region at `addrs`, asked with the certificate folder `admin`.
pub fn tls_cluster_map(admin: &Path, addrs: &str) -> Result<meridian_proto::ClusterMap> {
    let out = ok(meridian(
        Some(admin),
        &["admin", "cluster-map", "--json", "--meta", addrs],
    )?)?;
    Ok(serde_json::from_str(&out)?)
}

/// Makes the certificate folder `cert` this test process's identity.
pub fn install_identity(cert: &Path) -> Result<()> {
    let identity = meridian_proto::tls::TlsIdentity::load(cert).map_err(anyhow::Error::msg)?;
    meridian_proto::tls::install(identity);
    Ok(())
}

/// A connection to the range port at `address` with the certificate folder `cert` (this
/// process's identity from then on).
pub fn port_as(
    cert: &Path,
    address: &str,
) -> Result<std::io::BufReader<meridian_proto::port_conn::PortStream>> {
    install_identity(cert)?;
    let conn = meridian_proto::port_conn::dial(
        address,
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(10),
    )?;
    Ok(std::io::BufReader::new(conn))
}

/// A range read of the first `len` bytes of `block` on the port connection `conn`.
pub fn port_read(
    conn: &mut std::io::BufReader<meridian_proto::port_conn::PortStream>,
    block: meridian_proto::BlockId,
    len: u32,
) -> Result<meridian_proto::range_wire::RangeReply> {
    use std::io::Write;
    let request = meridian_proto::range_wire::RangeRequest {
        block,
        offset: 0,
        length: len,
        outboard_known: false,
        volume: 0,
        regions: Vec::new(),
    };
    conn.get_mut().write_all(&request.encode()?)?;
    conn.get_mut().flush()?;
    Ok(meridian_proto::range_wire::RangeReply::read(conn, 8 << 20)?)
}

/// A put of `frame` on the port connection `conn`: the reply.
pub fn port_put(
    conn: &mut std::io::BufReader<meridian_proto::port_conn::PortStream>,
    frame: meridian_proto::put_wire::PutFrame,
) -> Result<meridian_proto::put_wire::PutReply> {
    use std::io::Write;
    frame.outgoing()?.write_to(conn.get_mut())?;
    conn.get_mut().flush()?;
    Ok(meridian_proto::put_wire::PutReply::read(conn)?)
}
