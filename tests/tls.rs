//! Mutual TLS on every link: a region whose metaservers, chunkservers, mount and admin CLI
//! all run with certificates from `meridian admin certs`, working end to end through the
//! kernel; and the callers it must refuse (no certificate, another CA's, plaintext).

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use common::tls::*;
use common::*;

#[test]
fn certs_are_written_once_with_private_keys_private() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let made = deployment(dir.path(), "ca", &[("meta-1", "meta")])?;
    let mode = |p: PathBuf| -> Result<u32> { Ok(fs::metadata(p)?.permissions().mode() & 0o777) };
    assert_eq!(mode(dir.path().join("ca/ca.key"))?, 0o600);
    assert_eq!(mode(made[0].join("key.pem"))?, 0o600);
    assert!(fs::read_to_string(made[0].join("cert.pem"))?.starts_with("-----BEGIN CERTIFICATE"));
    // Nothing is overwritten, and bad names are refused before anything is written.
    let again = refused(meridian(
        None,
        &[
            "admin",
            "certs",
            "init",
            "--dir",
            dir.path().join("ca").to_str().unwrap(),
        ],
    )?)?;
    assert!(again.contains("must be a new folder"), "{again}");
    let bad = refused(meridian(
        None,
        &[
            "admin",
            "certs",
            "issue",
            "--ca",
            dir.path().join("ca").to_str().unwrap(),
            "--out",
            dir.path().join("bad").to_str().unwrap(),
            "--name",
            "../x",
            "--role",
            "client",
        ],
    )?)?;
    assert!(bad.contains("--name"), "{bad}");
    assert!(!dir.path().join("bad").exists());
    // A server without TLS refuses to start unless told to run plaintext.
    let data = dir.path().join("data").display().to_string();
    for zone in [&[][..], &["--zone", "a"][..]] {
        let role = if zone.is_empty() { "meta" } else { "chunk" };
        let args = [
            &[
                role,
                "--id",
                "1",
                "--data",
                &data,
                "--listen",
                "127.0.0.1:0",
            ][..],
            zone,
        ]
        .concat();
        let e = refused(meridian(None, &args)?)?;
        assert!(e.contains("--tls DIR") && e.contains("--plaintext"), "{e}");
    }
    assert!(!dir.path().join("data").exists());
    // A process refuses a folder that is not one.
    let e = refused(meridian(
        Some(&dir.path().join("ca")),
        &["admin", "meta-status", "--meta", "127.0.0.1:1"],
    )?)?;
    assert!(e.contains("cert.pem"), "{e}");
    Ok(())
}

#[test]
fn a_region_on_mutual_tls_serves_a_mount_and_refuses_strangers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ours = deployment(dir.path(), "ca", &ROLES)?;
    let (chunk_tls, mount_tls, admin_tls) = (&ours[1], &ours[2], &ours[3]);
    let theirs = deployment(dir.path(), "other", &[("ops", "admin")])?;
    let (meta, chunks, addrs) = tls_region(1, &ours)?;

    // A mount over TLS: data goes to three chunkservers (forwarded between them) and back.
    let data = random_bytes(7, (5 << 20) + 123);
    let path = dir.path().join("mnt");
    {
        let m = Mount::start_with(
            &addrs,
            "default",
            &path,
            &["--tls", mount_tls.to_str().unwrap()],
        )?;
        let mut f = fs::File::create(m.path.join("big"))?;
        f.write_all(&data)?;
        f.sync_all()?;
        drop(f);
        fs::write(m.path.join("small"), b"over tls")?;
        m.unmount()?;
    }
    let m = Mount::start_with(
        &addrs,
        "default",
        &path,
        &["--tls", mount_tls.to_str().unwrap()],
    )?;
    assert!(
        fs::read(m.path.join("big"))? == data,
        "the file read back differs"
    );
    assert_eq!(fs::read(m.path.join("small"))?, b"over tls");
    let chunk_addr = &chunks[0].addr;
    ok(meridian(
        Some(admin_tls),
        &["admin", "chunk-status", chunk_addr],
    )?)?;

    // Roles: a mount's certificate cannot administer the group, join Raft or delete
    // blocks; an operator's cannot delete blocks either (only servers do).
    let e = refused(meridian(
        Some(mount_tls),
        &[
            "admin",
            "add-member",
            "--meta",
            &addrs,
            "--id",
            "9",
            "--address",
            "127.0.0.1:9",
        ],
    )?)?;
    assert!(e.contains("for admin or meta certificates"), "{e}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = |tls: &Path, call: &'static str| -> Result<tonic::Code> {
        use meridian_proto::pb::chunk::DeleteRequest;
        use meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient;
        use meridian_proto::pb::meta::RaftMessage;
        use meridian_proto::pb::meta::raft_service_client::RaftServiceClient;
        meridian_proto::tls::install(
            meridian_proto::tls::TlsIdentity::load(tls).map_err(anyhow::Error::msg)?,
        );
        let (meta_addr, chunk_addr) = (meta.nodes[0].addr.clone(), chunk_addr.clone());
        rt.block_on(async move {
            let status = match call {
                "vote" => {
                    let ch = meridian_proto::channels::connect(&meta_addr)
                        .await
                        .map_err(anyhow::Error::msg)?;
                    RaftServiceClient::new(ch)
                        .vote(RaftMessage {
                            data: b"{}".to_vec().into(),
                        })
                        .await
                        .err()
                }
                _ => {
                    let ch = meridian_proto::channels::connect(&chunk_addr)
                        .await
                        .map_err(anyhow::Error::msg)?;
                    ChunkServiceClient::new(ch)
                        .delete(DeleteRequest {
                            block_id: vec![1; 32].into(),
                        })
                        .await
                        .err()
                }
            };
            Ok(status.map_or(tonic::Code::Ok, |s| s.code()))
        })
    };
    assert_eq!(code(mount_tls, "vote")?, tonic::Code::PermissionDenied);
    assert_eq!(code(mount_tls, "delete")?, tonic::Code::PermissionDenied);
    assert_eq!(code(admin_tls, "delete")?, tonic::Code::PermissionDenied);
    // A chunkserver's certificate may delete (the block does not exist: nothing happens).
    assert_eq!(code(chunk_tls, "delete")?, tonic::Code::Ok);
    meridian_proto::tls::install(
        meridian_proto::tls::TlsIdentity::load(admin_tls).map_err(anyhow::Error::msg)?,
    );

    // No certificate: plaintext to a TLS server fails, and says what to pass.
    let e = refused(meridian(None, &["admin", "meta-status", "--meta", &addrs])?)?;
    assert!(e.contains("--tls"), "{e}");
    refused(meridian(None, &["admin", "chunk-status", chunk_addr])?)?;
    // Another deployment's certificate: refused by both kinds of server.
    let e = refused(meridian(
        Some(&theirs[0]),
        &["admin", "meta-status", "--meta", &addrs],
    )?)?;
    assert!(e.contains("cannot reach"), "{e}");
    refused(meridian(
        Some(&theirs[0]),
        &["admin", "chunk-status", chunk_addr],
    )?)?;
    // A mount with another deployment's certificate never comes up.
    assert!(
        Mount::start_with(
            &addrs,
            "default",
            &dir.path().join("stranger"),
            &["--tls", theirs[0].to_str().unwrap()],
        )
        .is_err()
    );
    Ok(())
}

/// Replaces a live TLS folder's files (each by a rename, as a secret update does): `ca` as
/// its ca.pem, and the certificate and key of the folder `from`.
fn rotate(live: &Path, ca: &[u8], from: Option<&Path>) -> Result<()> {
    let mut files = vec![("ca.pem", ca.to_vec())];
    if let Some(from) = from {
        files.push(("cert.pem", fs::read(from.join("cert.pem"))?));
        files.push(("key.pem", fs::read(from.join("key.pem"))?));
    }
    for (name, bytes) in files {
        let tmp = live.join(format!(".{name}.new"));
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, live.join(name))?;
    }
    Ok(())
}

#[test]
fn certificates_and_the_ca_rotate_without_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let old = deployment(dir.path(), "ca", &ROLES)?;
    let new = deployment(dir.path(), "ca2", &ROLES)?;
    let (old_ops, new_ops) = (&old[3], &new[3]);
    let (mut meta, chunks, addrs) = tls_region(3, &old)?;
    let reaches = |tls: &Path| -> bool {
        let metas = meridian(Some(tls), &["admin", "meta-status", "--meta", &addrs])
            .is_ok_and(|o| o.status.success());
        metas
            && chunks.iter().all(|c| {
                meridian(Some(tls), &["admin", "chunk-status", &c.addr])
                    .is_ok_and(|o| o.status.success())
            })
    };
    let m = Mount::start_with(
        &addrs,
        "default",
        &dir.path().join("mnt"),
        &["--tls", old[2].to_str().unwrap()],
    )?;
    fs::write(m.path.join("before"), b"written under the first CA")?;
    assert!(
        !reaches(new_ops),
        "the second CA's certificate works before any rotation"
    );
    // The mount's first certificate, kept to be revoked once it has rotated.
    let first_mount_cert = dir.path().join("first-mount-cert.pem");
    fs::copy(old[2].join("cert.pem"), &first_mount_cert)?;
    fs::copy(
        old[2].join("key.pem"),
        dir.path().join("first-mount-key.pem"),
    )?;

    // Step 1: every process trusts both CAs and presents a certificate of the second.
    let (ca1, ca2) = (
        fs::read(dir.path().join("ca/ca.pem"))?,
        fs::read(dir.path().join("ca2/ca.pem"))?,
    );
    let both = [ca1.as_slice(), ca2.as_slice()].concat();
    for i in 0..3 {
        rotate(&old[i], &both, Some(&new[i]))?;
    }
    wait_for(
        std::time::Duration::from_secs(30),
        "servers presenting the new certificates",
        || reaches(new_ops).then_some(()),
    )?;
    // The mount's first certificate is revoked once the mount presents its second: the
    // mount's calls go on (on new connections: its metadata calls' stream too, ADR 0019).
    wait_for(
        std::time::Duration::from_secs(30),
        "the mount taking its second certificate",
        || {
            fs::read_to_string(&m.log)
                .ok()?
                .contains("TLS: certificates reloaded")
                .then_some(())
        },
    )?;
    let printed = ok(meridian(
        None,
        &[
            "admin",
            "certs",
            "fingerprint",
            first_mount_cert.to_str().unwrap(),
        ],
    )?)?;
    let fp = printed.split_whitespace().next().unwrap_or_default();
    for server in &old[..2] {
        let tmp = server.join(".revoked.new");
        fs::write(&tmp, format!("{fp}\n"))?;
        fs::rename(&tmp, server.join("revoked"))?;
    }
    // In force once a client presenting it is refused.
    let first_mount = dir.path().join("first-mount");
    fs::create_dir_all(&first_mount)?;
    fs::copy(&first_mount_cert, first_mount.join("cert.pem"))?;
    fs::copy(dir.path().join("ca/ca.pem"), first_mount.join("ca.pem"))?;
    let first_key = dir.path().join("first-mount-key.pem");
    fs::copy(&first_key, first_mount.join("key.pem"))?;
    wait_for(
        std::time::Duration::from_secs(30),
        "the first mount certificate refused",
        || {
            meridian(
                Some(&first_mount),
                &["admin", "meta-status", "--meta", &addrs],
            )
            .is_ok_and(|o| !o.status.success())
            .then_some(())
        },
    )?;
    let mut f = fs::File::create(m.path.join("after-revoking"))?;
    f.write_all(b"written after the first certificate was revoked")?;
    f.sync_all()
        .context("a mount whose old certificate is revoked writes on")?;
    drop(f);
    // Step 2: the first CA is trusted no more.
    for live in &old[..3] {
        rotate(live, &ca2, None)?;
    }
    wait_for(
        std::time::Duration::from_secs(30),
        "servers refusing the first CA",
        || {
            let refused =
                |args: &[&str]| meridian(Some(old_ops), args).is_ok_and(|o| !o.status.success());
            (refused(&["admin", "meta-status", "--meta", &addrs])
                && chunks
                    .iter()
                    .all(|c| refused(&["admin", "chunk-status", &c.addr])))
            .then_some(())
        },
    )?;

    // The Raft group elects again over new connections (kill -9 of the leader), and the
    // mount, still the same process, reaches the new leader and writes to R copies.
    meridian_proto::tls::install(
        meridian_proto::tls::TlsIdentity::load(new_ops).map_err(anyhow::Error::msg)?,
    );
    let leader = meta.wait_leader()?;
    meta.nodes[leader].kill();
    meta.wait_leader()?;
    let mut f = fs::File::create(m.path.join("after"))?;
    f.write_all(b"written after both rotations")?;
    f.sync_all()?;
    drop(f);
    // The mount's own process took both rotations (its channels are rebuilt from them).
    let reloads = fs::read_to_string(&m.log)?
        .matches("TLS: certificates reloaded")
        .count();
    assert!(
        reloads >= 2,
        "the mount reloaded its certificates {reloads} times"
    );
    assert_eq!(
        fs::read(m.path.join("before"))?,
        b"written under the first CA"
    );
    assert_eq!(
        fs::read(m.path.join("after"))?,
        b"written after both rotations"
    );
    Ok(())
}

#[test]
fn a_revoked_certificate_is_refused_even_on_connections_made_before() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut roles = ROLES.to_vec();
    roles.push(("other-mount", "client"));
    let certs = deployment(dir.path(), "ca", &roles)?;
    let (_meta, _chunks, addrs) = tls_region(1, &certs)?;
    let mount = |cert: &Path, at: &str| {
        Mount::start_with(
            &addrs,
            "default",
            &dir.path().join(at),
            &["--tls", cert.to_str().unwrap()],
        )
    };
    let m = mount(&certs[2], "mnt")?;
    fs::write(m.path.join("before"), b"written before the revocation")?;

    // The mount's certificate is listed in every server's folder (atomically, as a secret
    // update does); the servers take it on their next look at the folder.
    let printed = ok(meridian(
        None,
        &[
            "admin",
            "certs",
            "fingerprint",
            certs[2].join("cert.pem").to_str().unwrap(),
        ],
    )?)?;
    let fp = printed
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(fp.len(), 64, "{printed}");
    for server in &certs[..2] {
        let tmp = server.join(".revoked.new");
        fs::write(&tmp, format!("# a lost laptop\n{fp}\n"))?;
        fs::rename(&tmp, server.join("revoked"))?;
    }
    // The running mount's connections were made before: its requests are refused now.
    let mut n = 0;
    wait_for(
        std::time::Duration::from_secs(30),
        "the revoked mount refused",
        || {
            n += 1;
            fs::write(m.path.join(format!("probe-{n}")), b"x")
                .is_err()
                .then_some(())
        },
    )?;
    // A new mount with it does not come up; another client's certificate is served.
    assert!(
        mount(&certs[2], "again").is_err(),
        "a revoked certificate mounted"
    );
    let other = mount(&certs[4], "other")?;
    assert_eq!(
        fs::read(other.path.join("before"))?,
        b"written before the revocation"
    );
    // A revoked file that does not parse is refused, and the list in force stays.
    fs::write(certs[0].join("revoked"), "not a fingerprint\n")?;
    let e = refused(meridian(
        Some(&certs[0]),
        &["admin", "meta-status", "--meta", &addrs],
    )?)?;
    assert!(e.contains("revoked line 1"), "{e}");
    Ok(())
}

/// The range port on TLS: a client's range reads, whole blocks and small puts go through
/// it with the deployment's certificates (a coordinator's copies to its replicas' ports
/// too), and it refuses what gRPC refuses: plaintext, another CA's certificate, a replica
/// put from a mount's certificate, and a certificate revoked since its connection was
/// made. Connections made under an identity are not used once another is installed.
#[test]
fn range_ports_speak_mutual_tls_and_refuse_what_grpc_refuses() -> Result<()> {
    use meridian_client::blocks::{BlockClient, blocking_reads};
    use meridian_proto::pb::chunk::{PutHeader, PutRole};
    use meridian_proto::put_wire::{PutFrame, PutReply};
    use meridian_proto::range_wire::RangeReply;
    use meridian_proto::{EncodedBlock, placement, wire};

    let dir = tempfile::tempdir()?;
    let mut roles = ROLES.to_vec();
    roles.push(("reader", "client"));
    let ours = deployment(dir.path(), "ca", &roles)?;
    let (chunk_tls, mount_tls, reader_tls) = (&ours[1], &ours[2], &ours[4]);
    let theirs = deployment(dir.path(), "other", &[("stranger", "client")])?;
    let (_meta, _chunks, addrs) = tls_region(1, &ours)?;
    let map = tls_cluster_map(&ours[3], &addrs)?;
    assert!(
        map.nodes.iter().all(|n| !n.range_address.is_empty()),
        "every chunkserver announces its range port on TLS: {map:?}"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // A client with a mount's certificate: a put (its copies forwarded port to port), a
    // whole block and a range, all through the ports.
    install_identity(mount_tls)?;
    let client = BlockClient::with_map(map.clone(), None);
    let data = random_bytes(21, 300_000);
    let block = EncodedBlock::encode(&data)?;
    let receipt = rt.block_on(client.put(&block, 3, 3))?;
    assert_eq!(client.put_port_puts(), 1, "put through the port");
    assert_eq!(receipt.stored_on.len(), 3, "{receipt:?}");
    assert_eq!(rt.block_on(client.get(&block.id, 3))?, data);
    assert_eq!(
        client.range_port_reads(),
        1,
        "a whole block through the port"
    );
    let got = blocking_reads(|| rt.block_on(client.get_range(&block.id, 3, 1000, 5000)))?;
    assert_eq!(got, data[1000..6000]);
    assert_eq!(client.range_port_reads(), 2, "a range through the port");

    // Another identity installed: the connections made under the mount's are not used
    // (with them the read would succeed; the stranger's certificate gets nothing).
    install_identity(&theirs[0])?;
    assert!(
        rt.block_on(client.get(&block.id, 3)).is_err(),
        "read with connections made under the identity before"
    );
    assert_eq!(client.range_port_reads(), 2);

    // Straight to a port: another CA's certificate, and plaintext, get no answer.
    let node = map
        .node(placement(&block.id, &map, 1)[0])
        .context("the block's first placement")?
        .clone();
    let port = node.range_address.clone();
    assert!(
        port_as(&theirs[0], &port).is_err(),
        "a port served another CA's certificate"
    );
    let mut plain = std::net::TcpStream::connect(&port)?;
    plain.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let request = meridian_proto::range_wire::RangeRequest {
        block: block.id,
        offset: 0,
        length: 100,
        outboard_known: false,
        volume: 0,
        regions: Vec::new(),
    };
    plain.write_all(&request.encode()?)?;
    plain.shutdown(std::net::Shutdown::Write)?;
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut answer);
    assert!(
        RangeReply::read(&mut &answer[..], 1 << 20).is_err(),
        "a plaintext request was answered: {answer:?}"
    );

    // A replica's copy is for chunkservers: refused to a mount's certificate, stored for a
    // chunkserver's.
    let other = EncodedBlock::encode(&random_bytes(22, 50_000))?;
    let replica = || PutFrame {
        header: wire::put_header(
            &other,
            PutHeader {
                role: PutRole::Replica as i32,
                replicas: 3,
                map_epoch: map.epoch,
                ..Default::default()
            },
        ),
        payload: other.payload.clone(),
    };
    match port_put(&mut port_as(mount_tls, &port)?, replica())? {
        PutReply::Refused(m) => assert!(m.contains("replica puts are for chunkservers"), "{m}"),
        other => anyhow::bail!("a mount's replica put was answered {other:?}"),
    }
    match port_put(&mut port_as(chunk_tls, &port)?, replica())? {
        PutReply::Stored(r) => assert_eq!(r.stored_on, vec![node.id.0]),
        other => anyhow::bail!("a chunkserver's replica put was answered {other:?}"),
    }

    // Revoked while connected: the connection made before is refused from its next frame,
    // and a new one from the first.
    let mut reader = port_as(reader_tls, &port)?;
    match port_read(&mut reader, block.id, 100)? {
        // The groups covering the range, from its start.
        RangeReply::Found { plain, .. } => assert!(plain.starts_with(&data[..100])),
        other => anyhow::bail!("the reader's first read: {other:?}"),
    }
    let fp = meridian_proto::tls::fingerprint_pem(&fs::read(reader_tls.join("cert.pem"))?)
        .map_err(anyhow::Error::msg)?;
    let tmp = chunk_tls.join(".revoked.new");
    fs::write(&tmp, format!("{}\n", hex::encode(fp)))?;
    fs::rename(&tmp, chunk_tls.join("revoked"))?;
    wait_for(
        std::time::Duration::from_secs(30),
        "the revoked reader's connection refused",
        || port_read(&mut reader, block.id, 100).is_err().then_some(()),
    )?;
    let again = port_as(reader_tls, &port).and_then(|mut c| port_read(&mut c, block.id, 100));
    assert!(again.is_err(), "a revoked certificate read: {again:?}");
    Ok(())
}

/// One call naming no method on the calls port at `address`, with this process's
/// identity: its answer (an error under the call's id), or why none came.
async fn call_on_port(address: &str) -> Result<meridian_proto::pb::meta::CallReply> {
    use meridian_proto::calls_wire;
    use meridian_proto::pb::meta::{Call, CallReply};
    use tokio::io::AsyncWriteExt;

    let second = std::time::Duration::from_secs(5);
    let mut conn = meridian_proto::port_conn::dial_async(address, second, second).await?;
    let mut frames = Vec::new();
    calls_wire::put_bytes(&mut frames, b"");
    calls_wire::put(
        &mut frames,
        &Call {
            id: 41,
            ..Default::default()
        },
    );
    conn.io.write_all(&frames).await?;
    conn.io.flush().await?;
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        calls_wire::read_message::<CallReply, _>(&mut conn.io),
    )
    .await??;
    reply.context("the connection ended without an answer")
}

#[test]
fn calls_ports_speak_mutual_tls_and_refuse_strangers() -> Result<()> {
    use meridian_proto::ns::*;
    use meridian_proto::pb::meta::CallsPortRequest;
    use meridian_proto::pb::meta::meta_service_client::MetaServiceClient;

    let dir = tempfile::tempdir()?;
    let ours = deployment(dir.path(), "ca", &ROLES)?;
    let theirs = deployment(dir.path(), "other", &[("stranger", "client")])?;
    let (meta, _chunks, _addrs) = tls_region(3, &ours)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // The operator's calls go through the members' ports, on TLS.
    install_identity(&ours[3])?;
    let client = meta.client();
    let created = rt.block_on(client.mutate(&Op::CreateVolume {
        name: "calls".into(),
        policy: VolumePolicy::default(),
    }))?;
    let Reply::Volume(v) = created else {
        anyhow::bail!("no volume: {created:?}");
    };
    let file = rt.block_on(client.mutate(&create_op(v.root, "f")))?;
    assert!(matches!(file, Reply::Attr(_)), "{file:?}");
    assert!(
        client.calls_through_port() >= 2,
        "calls through the port on TLS: {}",
        client.calls_through_port()
    );

    let leader = meta.addrs()[0].clone();
    let port = rt.block_on(async {
        let channel = meridian_proto::channels::endpoint(&leader)?
            .connect()
            .await?;
        let reply = MetaServiceClient::new(channel)
            .calls_port(CallsPortRequest {})
            .await?;
        anyhow::Ok(reply.into_inner().port)
    })?;
    anyhow::ensure!(port != 0, "no calls port announced on TLS");
    let address = format!("127.0.0.1:{port}");

    // A mount's certificate is answered; another CA's is not.
    install_identity(&ours[2])?;
    let reply = rt.block_on(call_on_port(&address))?;
    assert_eq!(reply.id, 41, "{reply:?}");
    install_identity(&theirs[0])?;
    let stranger = rt.block_on(call_on_port(&address));
    assert!(
        stranger.is_err(),
        "another CA's certificate was answered: {stranger:?}"
    );

    // Plaintext gets no answer.
    let mut plain = std::net::TcpStream::connect(&address)?;
    plain.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut frames = Vec::new();
    meridian_proto::calls_wire::put_bytes(&mut frames, b"");
    meridian_proto::calls_wire::put(
        &mut frames,
        &meridian_proto::pb::meta::Call {
            id: 41,
            ..Default::default()
        },
    );
    plain.write_all(&frames)?;
    plain.shutdown(std::net::Shutdown::Write)?;
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut answer);
    let answered = rt.block_on(meridian_proto::calls_wire::read_message::<
        meridian_proto::pb::meta::CallReply,
        _,
    >(&mut answer.as_slice()));
    assert!(
        !matches!(answered, Ok(Some(ref r)) if r.id == 41),
        "a plaintext call was answered: {answered:?}"
    );
    Ok(())
}
