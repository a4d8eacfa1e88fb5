//! Volume access tokens (docs/adr/0016): a region on mutual TLS whose servers check tokens
//! serves each mount only the volumes its token grants, through the kernel; and every
//! call a token for one volume could make on another volume's namespace or blocks is
//! refused, as are expired, altered and read-only tokens used to write.

mod common;

use std::fs;
use std::io::Write;

use anyhow::Result;
use bytes::Bytes;
use common::tls::*;
use common::*;
use meridian_proto::InodeId;
use meridian_proto::ns::{Creds, Extent, FileKind, NsError, Op, Query, QueryReply, Queued};
use meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient;
use meridian_proto::pb::chunk::{
    GetRequest, HasRequest, PutHeader, PutRequest, PutRole, put_request,
};
use meridian_proto::pb::meta::{
    MutateRequest, QueryRequest, RegionStatusRequest, WatchRequest, WriteBackRequest,
};
use meridian_proto::range_wire::RangeReply;
use meridian_proto::token::{Grant, TokenKeys};
use tonic::Code;

/// A call's request carrying `token` (none: no token at all).
fn with<T>(token: Option<&str>, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert(
            meridian_proto::token::HEADER,
            format!("Bearer {t}").parse().expect("ascii token"),
        );
    }
    r
}

struct Caller<'a> {
    rt: tokio::runtime::Runtime,
    meta: &'a str,
    chunk: &'a str,
}

impl Caller<'_> {
    /// A client of the metaserver called, over a new connection.
    async fn meta_client(
        &self,
    ) -> meridian_proto::pb::meta::meta_service_client::MetaServiceClient<
        meridian_proto::channels::Authed,
    > {
        let ch = meridian_proto::channels::connect(self.meta).await.unwrap();
        meridian_proto::channels::meta_client(ch)
    }

    /// A query's outcome, and the capabilities that came with it; Err: the call's status.
    fn query(
        &self,
        token: Option<&str>,
        q: &Query,
    ) -> Result<(Result<QueryReply, NsError>, Bytes), Code> {
        let req = QueryRequest {
            query: serde_json::to_vec(q).unwrap().into(),
            ..Default::default()
        };
        self.rt.block_on(async {
            match self.meta_client().await.query(with(token, req)).await {
                Ok(r) => {
                    let r = r.into_inner();
                    Ok((serde_json::from_slice(&r.outcome).unwrap(), r.caps))
                }
                Err(s) => Err(s.code()),
            }
        })
    }

    fn mutate(
        &self,
        token: Option<&str>,
        op: &Op,
    ) -> Result<Result<serde_json::Value, NsError>, Code> {
        self.mutate_with(token, op, Bytes::new())
    }

    /// A change carrying block capabilities `caps`.
    fn mutate_with(
        &self,
        token: Option<&str>,
        op: &Op,
        caps: Bytes,
    ) -> Result<Result<serde_json::Value, NsError>, Code> {
        let req = MutateRequest {
            op: serde_json::to_vec(op).unwrap().into(),
            client_id: 77,
            request_id: rand_id(),
            caps,
            ..Default::default()
        };
        self.rt.block_on(async {
            match self.meta_client().await.mutate(with(token, req)).await {
                Ok(r) => Ok(serde_json::from_slice(&r.into_inner().outcome).unwrap()),
                Err(s) => Err(s.code()),
            }
        })
    }

    /// A write-back of `ops` as client 77, with capabilities `caps`.
    fn write_back(&self, token: Option<&str>, ops: &[Queued], caps: Bytes) -> Code {
        let req = WriteBackRequest {
            client_id: 77,
            ops: serde_json::to_vec(ops).unwrap().into(),
            caps,
            ..Default::default()
        };
        self.rt.block_on(async {
            match self.meta_client().await.write_back(with(token, req)).await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            }
        })
    }

    /// A write-back of client 77 that only asks for the leases of `acquire` (after
    /// giving back those of `release`).
    fn leases(&self, token: Option<&str>, acquire: &[InodeId], release: &[InodeId]) -> Code {
        let req = WriteBackRequest {
            client_id: 77,
            ops: b"[]".to_vec().into(),
            acquire: acquire.iter().map(|d| d.0).collect(),
            release: release.iter().map(|d| d.0).collect(),
            ..Default::default()
        };
        self.rt.block_on(async {
            match self.meta_client().await.write_back(with(token, req)).await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            }
        })
    }

    fn watch(&self, token: Option<&str>, volume: u32) -> Code {
        let req = WatchRequest {
            volume,
            ..Default::default()
        };
        self.rt.block_on(async {
            match self.meta_client().await.watch(with(token, req)).await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            }
        })
    }

    /// A whole block's bytes from chunkserver `chunk`, asked as part of `volume` with
    /// `cap`.
    fn get(
        &self,
        chunk: &str,
        token: Option<&str>,
        block: &[u8],
        volume: u32,
        cap: &[u8],
    ) -> Result<usize, Code> {
        let req = GetRequest {
            block_id: Bytes::copy_from_slice(block),
            volume,
            cap: Bytes::copy_from_slice(cap),
            ..Default::default()
        };
        self.rt.block_on(async {
            let ch = meridian_proto::channels::connect(chunk).await.unwrap();
            let mut c = ChunkServiceClient::new(ch);
            match c.get(with(token, req)).await {
                Ok(r) => {
                    let mut stream = r.into_inner();
                    let mut n = 0;
                    while let Some(m) = stream.message().await.map_err(|s| s.code())? {
                        if let Some(meridian_proto::pb::chunk::get_response::Msg::Data(d)) = m.msg {
                            n += d.len();
                        }
                    }
                    Ok(n)
                }
                Err(s) => Err(s.code()),
            }
        })
    }

    /// A put of a new one-byte block for `volume`: the capability it hands back.
    fn put(&self, token: Option<&str>, volume: u32, byte: u8) -> Result<Bytes, Code> {
        let data = vec![byte; 1000];
        let id = meridian_proto::BlockId::of(&data);
        let header = PutHeader {
            block_id: Bytes::copy_from_slice(id.as_bytes()),
            raw_len: 1000,
            encoded_len: 1000,
            role: PutRole::Coordinator as i32,
            replicas: 3,
            min_copies: 1,
            volume,
            ..Default::default()
        };
        let msgs = vec![
            PutRequest {
                msg: Some(put_request::Msg::Header(header)),
            },
            PutRequest {
                msg: Some(put_request::Msg::Data(data.into())),
            },
        ];
        self.rt.block_on(async {
            let ch = meridian_proto::channels::connect(self.chunk).await.unwrap();
            let mut c = ChunkServiceClient::new(ch);
            match c.put(with(token, tokio_stream::iter(msgs))).await {
                Ok(r) => Ok(r.into_inner().cap),
                Err(s) => Err(s.code()),
            }
        })
    }

    fn has(&self, token: Option<&str>, block: &[u8]) -> Code {
        let req = HasRequest {
            block_ids: vec![Bytes::copy_from_slice(block)],
            include_condemned: false,
        };
        self.rt.block_on(async {
            let ch = meridian_proto::channels::connect(self.chunk).await.unwrap();
            match ChunkServiceClient::new(ch).has(with(token, req)).await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            }
        })
    }
}

fn rand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn mknod(parent: InodeId, name: &str) -> Op {
    Op::Mknod {
        parent,
        name: name.as_bytes().to_vec(),
        kind: FileKind::File,
        perm: 0o644,
        rdev: 0,
        exclusive: true,
        creds: Creds::root(),
    }
}

fn volume(c: &Caller, token: Option<&str>, name: &str) -> meridian_proto::ns::Volume {
    match c.query(token, &Query::Volume { name: name.into() }) {
        Ok((Ok(QueryReply::Volume(v)), _)) => v,
        other => panic!("volume {name}: {other:?}"),
    }
}

fn lookup(c: &Caller, token: Option<&str>, parent: InodeId, name: &str) -> Result<InodeId, String> {
    match c.query(
        token,
        &Query::Lookup {
            parent,
            name: name.as_bytes().to_vec(),
            creds: Creds::root(),
        },
    ) {
        Ok((Ok(QueryReply::Attr(a)), _)) => Ok(a.ino),
        other => Err(format!("{other:?}")),
    }
}

#[test]
fn a_token_reaches_only_the_volumes_it_grants() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = deployment(dir.path(), "ca", &ROLES)?;
    let (mount_tls, admin_tls) = (certs[2].clone(), certs[3].clone());
    let key = dir.path().join("token.key");
    ok(meridian(
        None,
        &["admin", "token", "key", "--out", key.to_str().unwrap()],
    )?)?;
    let key_s = key.to_str().unwrap();
    let (meta, chunks, addrs) = tls_region_with(3, &certs, &["--token-key", key_s])?;
    for v in ["x", "y"] {
        ok(meridian(
            Some(&admin_tls),
            &["admin", "volume-create", "--meta", &addrs, v],
        )?)?;
    }
    let tx = issue_token(&key, "team-x", &["x"], "1h")?;
    let tx_ro = issue_token(&key, "x-reader", &["x:ro"], "1h")?;
    let ty = issue_token(&key, "team-y", &["y"], "1h")?;
    let token_file = |name: &str, token: &str| -> Result<String> {
        let p = dir.path().join(name);
        fs::write(&p, token)?;
        Ok(p.display().to_string())
    };
    let (fx, fx_ro, fy) = (
        token_file("tx", &tx)?,
        token_file("tx-ro", &tx_ro)?,
        token_file("ty", &ty)?,
    );
    let mount = |volume: &str, at: &str, token: Option<&str>| {
        let mut flags = vec!["--tls", mount_tls.to_str().unwrap()];
        if let Some(t) = token {
            flags.extend(["--token-file", t]);
        }
        Mount::start_with(&addrs, volume, &dir.path().join(at), &flags)
    };

    // Each volume through its own token, end to end: written, then read back cold by a
    // new mount (blocks fetched with the capabilities the extents came with).
    let secret = random_bytes(3, (4 << 20) + 5_000);
    let mine = random_bytes(4, 300_000);
    for (volume, token, name, data) in [("y", &fy, "secret", &secret), ("x", &fx, "mine", &mine)] {
        let m = mount(volume, volume, Some(token))?;
        let mut f = fs::File::create(m.path.join(name))?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        // Small files in a directory the mount made: answered under its lease, their
        // commits written back later, with their blocks' capabilities.
        fs::create_dir(m.path.join("dir"))?;
        for i in 0..20 {
            fs::write(m.path.join(format!("dir/{i}")), format!("small file {i}"))?;
        }
        m.unmount()?;
        let m = mount(volume, volume, Some(token))?;
        assert!(
            fs::read(m.path.join(name))? == *data,
            "{name} read back differs"
        );
        for i in 0..20 {
            assert_eq!(
                fs::read_to_string(m.path.join(format!("dir/{i}")))?,
                format!("small file {i}")
            );
        }
        m.unmount()?;
    }
    // A read-only token reads, and writes nothing.
    {
        let m = mount("x", "x-ro", Some(&fx_ro))?;
        assert!(fs::read(m.path.join("mine"))? == mine);
        assert!(
            fs::write(m.path.join("new"), b"no").is_err(),
            "a read-only token wrote"
        );
        assert!(
            fs::remove_file(m.path.join("mine")).is_err(),
            "a read-only token deleted"
        );
    }
    // A token for x mounts nothing else; a client certificate alone mounts nothing.
    assert!(
        mount("y", "y-by-x", Some(&fx)).is_err(),
        "x's token mounted y"
    );
    assert!(
        mount("x", "no-token", None).is_err(),
        "a mount without a token came up"
    );

    // The range port carries no tokens: a mount's certificate is sent to gRPC for reads
    // and puts alike; a chunkserver's is served (the block asked for does not exist).
    let port = tls_cluster_map(&admin_tls, &addrs)?.nodes[0]
        .range_address
        .clone();
    let nothing = meridian_proto::BlockId::of(b"not stored anywhere");
    match port_read(&mut port_as(&mount_tls, &port)?, nothing, 100)? {
        RangeReply::Refused(m) => assert!(m.contains("volume tokens are checked"), "{m}"),
        other => anyhow::bail!("a mount's certificate read through the port: {other:?}"),
    }
    let small = meridian_proto::EncodedBlock::encode(b"a small block")?;
    let put = meridian_proto::put_wire::PutFrame {
        header: meridian_proto::wire::put_header(
            &small,
            meridian_proto::pb::chunk::PutHeader {
                role: meridian_proto::pb::chunk::PutRole::Coordinator as i32,
                replicas: 1,
                ..Default::default()
            },
        ),
        payload: small.payload.clone(),
    };
    match port_put(&mut port_as(&mount_tls, &port)?, put)? {
        meridian_proto::put_wire::PutReply::Closed(m) => {
            assert!(m.contains("volume tokens are checked"), "{m}")
        }
        other => anyhow::bail!("a mount's certificate put through the port: {other:?}"),
    }
    assert!(
        matches!(
            port_read(&mut port_as(&certs[1], &port)?, nothing, 100)?,
            RangeReply::Missing(_)
        ),
        "a chunkserver's certificate is served"
    );

    // Calls made directly, as a mount's certificate with a token in the header.
    meridian_proto::tls::install(
        meridian_proto::tls::TlsIdentity::load(&mount_tls).map_err(anyhow::Error::msg)?,
    );
    let c = Caller {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        meta: &meta.nodes[1].addr,
        chunk: &chunks[0].addr,
    };
    // What y holds, learnt with y's token (this also shows the checks let it through).
    let (yv, xv) = (volume(&c, Some(&ty), "y"), volume(&c, Some(&tx), "x"));
    let y_file = lookup(&c, Some(&ty), yv.root, "secret").map_err(anyhow::Error::msg)?;
    let view = |token: &str, ino: InodeId| {
        c.query(
            Some(token),
            &Query::View {
                ino,
                offset: 0,
                len: 1 << 30,
            },
        )
    };
    let (Ok(QueryReply::View { extents, .. }), y_caps) = view(&ty, y_file).unwrap() else {
        panic!("no view of y's file");
    };
    let y_block = extents[0].block;
    assert!(
        !y_caps.is_empty(),
        "a token holder's view came without capabilities"
    );
    let y_cap = &y_caps[36..52];
    assert_eq!(&y_caps[..32], y_block.as_bytes());
    // Served to y's token with the capability; the same capability is no use for x.
    let holder = |block: &[u8], volume: u32, cap: &[u8], token: &str| {
        chunks
            .iter()
            .map(|ch| c.get(&ch.addr, Some(token), block, volume, cap))
            .collect::<Vec<_>>()
    };
    let got = holder(y_block.as_bytes(), yv.id, y_cap, &ty);
    assert!(
        got.contains(&Ok(4 << 20)),
        "y's own token cannot read its block: {got:?}"
    );
    for (volume, cap, why) in [
        (yv.id, &[][..], "x's token, naming y"),
        (yv.id, y_cap, "x's token, with y's capability"),
        (xv.id, &[][..], "x's token, naming x, no capability"),
        (xv.id, y_cap, "x's token, naming x, y's capability"),
    ] {
        let got = holder(y_block.as_bytes(), volume, cap, &tx);
        assert!(
            got.iter().all(|r| *r == Err(Code::PermissionDenied)),
            "{why}: {got:?}"
        );
    }
    // x's token on y's namespace: no stat, lookup, listing, view, change or watch.
    for q in [
        Query::GetAttr { ino: yv.root },
        Query::GetAttr { ino: y_file },
        Query::Lookup {
            parent: yv.root,
            name: b"secret".to_vec(),
            creds: Creds::root(),
        },
        Query::ReadDir {
            ino: yv.root,
            after: None,
            limit: 100,
            creds: Creds::root(),
        },
        Query::View {
            ino: y_file,
            offset: 0,
            len: 100,
        },
        Query::Extents {
            ino: y_file,
            offset: 0,
            len: 100,
            limit: None,
        },
        Query::Volume { name: "y".into() },
        Query::BlockRefs {
            blocks: vec![y_block],
        },
        Query::Changes { from: 0, limit: 10 },
        Query::Leases {
            after: 0,
            limit: 10,
        },
        Query::Links {
            inodes: vec![y_file.0],
        },
    ] {
        assert_eq!(
            c.query(Some(&tx), &q).map(|_| ()),
            Err(Code::PermissionDenied),
            "{q:?}"
        );
    }
    let listed = match c.query(Some(&tx), &Query::Volumes) {
        Ok((Ok(QueryReply::Volumes(v)), _)) => v.into_iter().map(|v| v.name).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(listed, ["x"]);
    for op in [
        mknod(yv.root, "planted"),
        Op::Unlink {
            parent: yv.root,
            name: b"secret".to_vec(),
            creds: Creds::root(),
        },
        Op::SetAttr {
            ino: y_file,
            set: Default::default(),
            creds: Creds::root(),
        },
        Op::CopyRange {
            src: y_file,
            src_offset: 0,
            dst: lookup(&c, Some(&tx), xv.root, "mine").map_err(anyhow::Error::msg)?,
            dst_offset: 0,
            len: 10,
            creds: Creds::root(),
        },
        Op::CreateVolume {
            name: "z".into(),
            policy: Default::default(),
        },
        Op::DeleteVolume { name: "y".into() },
    ] {
        assert_eq!(
            c.mutate(Some(&tx), &op).map(|_| ()),
            Err(Code::PermissionDenied),
            "{op:?}"
        );
    }
    assert_eq!(c.watch(Some(&tx), yv.id), Code::PermissionDenied);
    let status = c.rt.block_on(async {
        c.meta_client()
            .await
            .region_status(with(Some(&tx), RegionStatusRequest {}))
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    });
    assert_eq!(status, Err(Code::PermissionDenied), "the regions' status");
    assert_eq!(c.has(Some(&tx), y_block.as_bytes()), Code::PermissionDenied);
    // Puts: only for a volume the token may write, and never for none.
    assert_eq!(
        c.put(Some(&tx), yv.id, 1).map(|_| ()),
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        c.put(Some(&tx), 0, 2).map(|_| ()),
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        c.put(Some(&tx_ro), xv.id, 3).map(|_| ()),
        Err(Code::PermissionDenied)
    );
    let cap = c
        .put(Some(&tx), xv.id, 4)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(
        cap.len(),
        meridian_proto::token::CAP_LEN,
        "a put handed back no capability"
    );
    // A commit adds to a file only blocks its token holder put or was shown there: not
    // y's block, whatever capability comes with it; x's own new block, with the put's.
    let x_file = lookup(&c, Some(&tx), xv.root, "mine").map_err(anyhow::Error::msg)?;
    let commit = |block: meridian_proto::BlockId, block_len: u32| Op::CommitExtents {
        ino: x_file,
        extents: vec![Extent {
            offset: 0,
            len: 10,
            block,
            block_offset: 0,
            block_len,
        }],
        size: 10,
        base_version: None,
        creds: Creds::root(),
        staged: Vec::new(),
    };
    let record = |block: &meridian_proto::BlockId, volume: u32, cap: &[u8]| {
        Bytes::from([block.as_bytes(), &volume.to_le_bytes()[..], cap].concat())
    };
    let planted = commit(y_block, 4 << 20);
    for (caps, why) in [
        (Bytes::new(), "no capability"),
        (record(&y_block, yv.id, y_cap), "y's capability"),
        (
            record(&y_block, xv.id, y_cap),
            "y's capability, said to be x's",
        ),
        (record(&y_block, xv.id, &[7; 16]), "a forged capability"),
    ] {
        assert_eq!(
            c.mutate_with(Some(&tx), &planted, caps).map(|_| ()),
            Err(Code::PermissionDenied),
            "a commit of y's block into x with {why}"
        );
    }
    let own = meridian_proto::BlockId::of(&[4u8; 1000]);
    assert!(matches!(
        c.mutate_with(Some(&tx), &commit(own, 1000), record(&own, xv.id, &cap)),
        Ok(Ok(_))
    ));
    // A block a commit carries staged (docs/adr/0018) is shown by its bytes; bytes that
    // do not hash to the block named show nothing.
    let carried = vec![5u8; 1000];
    let carried_id = meridian_proto::BlockId::of(&carried);
    let staged = |id: meridian_proto::BlockId| {
        let mut op = commit(id, 1000);
        if let Op::CommitExtents { staged, .. } = &mut op {
            staged.push(meridian_proto::ns::StagedBlock {
                id,
                data: carried.clone(),
            });
        }
        op
    };
    assert!(matches!(
        c.mutate_with(Some(&tx), &staged(carried_id), Bytes::new()),
        Ok(Ok(_))
    ));
    assert_eq!(
        c.mutate_with(Some(&tx), &staged(y_block), Bytes::new())
            .map(|_| ()),
        Err(Code::PermissionDenied),
        "y's block carried as other bytes"
    );
    // Nor through a write-back: an inode number a change merely carries (not a create
    // of it) does not put y's file in x for the changes after it.
    let queued = [
        Queued {
            request: rand_id(),
            op: Op::Unlink {
                parent: xv.root,
                name: b"absent".to_vec(),
                creds: Creds::root(),
            },
            now: Default::default(),
            ino: Some(y_file),
        },
        Queued {
            request: rand_id(),
            op: Op::CommitExtents {
                ino: y_file,
                extents: vec![Extent {
                    offset: 0,
                    len: 10,
                    block: own,
                    block_offset: 0,
                    block_len: 1000,
                }],
                size: 10,
                base_version: None,
                creds: Creds::root(),
                staged: Vec::new(),
            },
            now: Default::default(),
            ino: None,
        },
    ];
    assert_eq!(
        c.write_back(Some(&tx), &queued, record(&own, xv.id, &cap)),
        Code::PermissionDenied,
        "a write-back into y's file"
    );
    // A directory's lease only with a grant to write its volume.
    assert_eq!(c.leases(Some(&tx), &[yv.root], &[]), Code::PermissionDenied);
    assert_eq!(
        c.leases(Some(&tx_ro), &[xv.root], &[]),
        Code::PermissionDenied
    );
    assert_eq!(c.leases(Some(&tx), &[xv.root], &[]), Code::Ok);
    assert_eq!(c.leases(Some(&tx), &[], &[xv.root]), Code::Ok);
    // A read-only token changes nothing, and x's token does what it grants.
    assert_eq!(
        c.mutate(Some(&tx_ro), &mknod(xv.root, "ro")).map(|_| ()),
        Err(Code::PermissionDenied)
    );
    assert!(matches!(
        c.mutate(Some(&tx), &mknod(xv.root, "made")),
        Ok(Ok(_))
    ));

    // Tokens that are not good: expired, altered, signed with another key, none at all.
    let keys = TokenKeys::load(&key)?;
    let grant = vec![Grant {
        volume: "x".into(),
        write: true,
    }];
    let now = meridian_proto::token::unix_now();
    let expired = keys.issue("late", grant.clone(), now - 7_200, 3_600)?;
    let parts: Vec<&str> = tx_ro.split('.').collect();
    let payload =
        String::from_utf8(hex::decode(parts[1])?)?.replace("\"write\":false", "\"write\":true");
    let altered = format!("{}.{}.{}", parts[0], hex::encode(payload), parts[2]);
    let foreign = TokenKeys::generate("k1")?.issue("stranger", grant, now, 3_600)?;
    let x_root = Query::GetAttr { ino: xv.root };
    for (token, why) in [
        (Some(expired.as_str()), "expired"),
        (Some(altered.as_str()), "altered"),
        (Some(foreign.as_str()), "another key"),
        (Some("mrd1.zz.zz"), "garbage"),
        (None, "no token"),
    ] {
        assert_eq!(
            c.query(token, &x_root).map(|_| ()),
            Err(Code::Unauthenticated),
            "{why}"
        );
        assert_eq!(
            c.put(token, xv.id, 5).map(|_| ()),
            Err(Code::Unauthenticated),
            "{why}"
        );
    }
    assert!(c.query(Some(&tx), &x_root).is_ok());
    let e = refused(meridian(
        Some(&mount_tls),
        &["admin", "volume-create", "--meta", &addrs, "w"],
    )?)?;
    assert!(e.contains("token"), "{e}");

    // y is as it was: one file, its block intact; nothing planted.
    meridian_proto::tls::install(
        meridian_proto::tls::TlsIdentity::load(&admin_tls).map_err(anyhow::Error::msg)?,
    );
    let listing = match c.query(
        None,
        &Query::ReadDir {
            ino: yv.root,
            after: None,
            limit: 100,
            creds: Creds::root(),
        },
    ) {
        Ok((Ok(QueryReply::Dir { entries, .. }), _)) => entries
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(listing, ["dir", "secret"]);
    let m = mount("y", "y-again", Some(&fy))?;
    assert!(fs::read(m.path.join("secret"))? == secret);
    drop(m);
    // A mount whose token will be renewed in its file (below, after the key changes).
    let renewed = mount("x", "x-renewed", Some(&fx))?;

    // Keys rotate without a restart: once the servers' file holds only a new key, tokens
    // of the old one are refused and the new key's are taken.
    meridian_proto::tls::install(
        meridian_proto::tls::TlsIdentity::load(&mount_tls).map_err(anyhow::Error::msg)?,
    );
    let fresh = TokenKeys::generate("k2")?;
    let tmp = dir.path().join(".token.key.new");
    fs::write(&tmp, fresh.to_file())?;
    fs::rename(&tmp, &key)?;
    let t2 = fresh.issue(
        "after-rotation",
        vec![Grant {
            volume: "x".into(),
            write: false,
        }],
        meridian_proto::token::unix_now(),
        600,
    )?;
    // Each server looks at its file on its own: a call one passes to another is decided
    // under both's keys, so both conditions hold once every server has reloaded.
    wait_for(
        std::time::Duration::from_secs(30),
        "the servers taking the new key",
        || {
            (c.query(Some(&tx), &x_root) == Err(Code::Unauthenticated)
                && c.query(Some(&t2), &x_root).is_ok())
            .then_some(())
        },
    )?;
    // The running mount's token is of the old key now: its changes are refused until a
    // new token is written to its file, which it takes without a remount.
    assert!(fs::write(renewed.path.join("refused"), b"x").is_err());
    let t3 = fresh.issue(
        "renewed",
        vec![Grant {
            volume: "x".into(),
            write: true,
        }],
        meridian_proto::token::unix_now(),
        600,
    )?;
    let tmp = dir.path().join(".tx.new");
    fs::write(&tmp, &t3)?;
    fs::rename(&tmp, &fx)?;
    let mut n = 0;
    wait_for(
        std::time::Duration::from_secs(30),
        "the mount sending its renewed token",
        || {
            n += 1;
            fs::write(renewed.path.join(format!("renewed-{n}")), b"x")
                .is_ok()
                .then_some(())
        },
    )?;
    Ok(())
}

#[test]
fn a_server_refuses_to_carry_a_token_of_its_own() -> Result<()> {
    // It passes on its clients' tokens; one of its own would stand in for theirs.
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data").display().to_string();
    let out = std::process::Command::new(MERIDIAN)
        .args(["--plaintext", "meta", "--id", "1", "--data", &data])
        .args(["--listen", "127.0.0.1:0", "--init"])
        .env("MERIDIAN_TOKEN", "mrd1.00.00")
        .env_remove("MERIDIAN_TLS")
        .output()?;
    anyhow::ensure!(!out.status.success(), "a metaserver started with a token");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("sends no volume access token"), "{e}");
    assert!(!dir.path().join("data").exists());
    Ok(())
}
