//! Malformed, oversized and out-of-order requests to every service of a running region:
//! each gets a clear error, and the namespace, the block stores and the Raft group are as
//! they were.

mod common;

use std::fs;

use anyhow::Result;
use common::*;
use meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient;
use meridian_proto::pb::chunk::{
    DeleteRequest, GetRequest, HasRequest, PutHeader, PutRequest, StatRequest, put_request,
};
use meridian_proto::pb::meta::meta_service_client::MetaServiceClient;
use meridian_proto::pb::meta::raft_service_client::RaftServiceClient;
use meridian_proto::pb::meta::{
    MutateRequest, PullChangesRequest, QueryRequest, RaftMessage, RegisterChunkserverRequest,
    WriteBackRequest,
};
use tonic::Code;
use tonic::transport::Channel;

/// What a mount shows: the names and contents of its root.
fn listing(mount: &Mount) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&mount.path)?
        .map(|e| {
            let e = e?;
            Ok((
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path())?,
            ))
        })
        .collect::<Result<_>>()?;
    files.sort();
    Ok(files)
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

#[test]
fn hostile_requests_get_clear_errors_and_change_nothing() -> Result<()> {
    let region = Region::start()?;
    let mount = region.mount("m")?;
    fs::write(mount.path.join("kept"), random_bytes(3, 100_000))?;
    let before = listing(&mount)?;
    let (meta_addr, chunk_addr) = (
        region.meta.nodes[0].addr.clone(),
        region.chunks[0].addr.clone(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ch = |a: String| async move {
            meridian_proto::channels::connect(&a)
                .await
                .map_err(anyhow::Error::msg)
        };
        // Unlimited on this side: the server's limits are what is tested.
        let mut meta = MetaServiceClient::<Channel>::new(ch(meta_addr.clone()).await?)
            .max_encoding_message_size(usize::MAX);
        let mut raft = RaftServiceClient::<Channel>::new(ch(meta_addr.clone()).await?)
            .max_encoding_message_size(usize::MAX);
        let mut chunk = ChunkServiceClient::<Channel>::new(ch(chunk_addr.clone()).await?)
            .max_encoding_message_size(usize::MAX);

        // Metaservers: bytes that are not an operation or a query.
        let garbage = bytes::Bytes::from_static(b"{\"Mknod\": {\"parent\": [1, ");
        let c = code(
            meta.mutate(MutateRequest {
                op: garbage.clone(),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(c, Code::InvalidArgument, "mutate of garbage");
        let c = code(
            meta.query(QueryRequest {
                query: garbage.clone(),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(c, Code::InvalidArgument, "query of garbage");
        let c = code(
            meta.write_back(WriteBackRequest {
                client_id: 7,
                ops: garbage.clone(),
                ..Default::default()
            })
            .await,
        );
        assert_ne!(c, Code::Ok, "write-back of garbage");
        // Oversized: more than the 64 MiB a metaserver takes.
        let huge = bytes::Bytes::from(vec![b' '; (64 << 20) + 1]);
        let c = code(
            meta.mutate(MutateRequest {
                op: huge,
                ..Default::default()
            })
            .await,
        );
        assert!(
            matches!(c, Code::OutOfRange | Code::ResourceExhausted),
            "oversized mutate: {c:?}"
        );
        // A chunkserver registration with nothing in it, and a pull of records from the
        // end of time for a region that does not exist.
        let c = code(
            meta.register_chunkserver(RegisterChunkserverRequest::default())
                .await,
        );
        assert_eq!(c, Code::InvalidArgument, "empty registration");
        let c = code(
            meta.pull_changes(PullChangesRequest {
                region: 999,
                from: u64::MAX,
                limit: u32::MAX,
                ..Default::default()
            })
            .await,
        );
        assert_ne!(c, Code::Unknown, "pull from the end of time: {c:?}");
        // Raft: messages that are not Raft messages.
        for data in [garbage.clone(), bytes::Bytes::new()] {
            assert_ne!(
                code(
                    raft.append_entries(RaftMessage { data: data.clone() })
                        .await
                ),
                Code::Ok
            );
            assert_ne!(code(raft.vote(RaftMessage { data }).await), Code::Ok);
        }

        // Chunkservers: ids that are not 32 bytes.
        let bad_id = bytes::Bytes::from_static(b"short");
        let c = code(
            chunk
                .get(GetRequest {
                    block_id: bad_id.clone(),
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(c, Code::InvalidArgument, "get of a bad id");
        let c = code(
            chunk
                .stat(StatRequest {
                    block_id: bad_id.clone(),
                })
                .await,
        );
        assert_eq!(c, Code::InvalidArgument, "stat of a bad id");
        let c = code(
            chunk
                .delete(DeleteRequest {
                    block_id: bad_id.clone(),
                })
                .await,
        );
        assert_eq!(c, Code::InvalidArgument, "delete of a bad id");
        let many = vec![bytes::Bytes::from(vec![0u8; 32]); 10_001];
        let c = code(
            chunk
                .has(HasRequest {
                    block_ids: many,
                    include_condemned: false,
                })
                .await,
        );
        assert_eq!(c, Code::InvalidArgument, "has of too many ids");
        // Out of order: data before any header, then two headers.
        let header = PutHeader {
            block_id: bytes::Bytes::from(vec![7u8; 32]),
            raw_len: 3,
            encoded_len: 3,
            ..Default::default()
        };
        let head = || PutRequest {
            msg: Some(put_request::Msg::Header(header.clone())),
        };
        let data = |b: Vec<u8>| PutRequest {
            msg: Some(put_request::Msg::Data(b.into())),
        };
        let put = |msgs: Vec<PutRequest>| futures::stream::iter(msgs);
        assert_eq!(
            code(chunk.put(put(vec![data(b"abc".to_vec())])).await),
            Code::InvalidArgument,
            "data before header"
        );
        assert_ne!(
            code(chunk.put(put(vec![head(), head()])).await),
            Code::Ok,
            "two headers"
        );
        // Oversized for a chunkserver's messages (blocks come in pieces).
        let big = put(vec![head(), data(vec![0u8; 8 << 20])]);
        assert_ne!(code(chunk.put(big).await), Code::Ok, "an 8 MiB message");
        // None of the hostile blocks is stored, on any chunkserver.
        for c in &region.chunks {
            let mut client = ChunkServiceClient::<Channel>::new(ch(c.addr.clone()).await?);
            let has = client
                .has(HasRequest {
                    block_ids: vec![header.block_id.clone(), bytes::Bytes::from(vec![0u8; 32])],
                    include_condemned: true,
                })
                .await?
                .into_inner();
            assert_eq!(
                has.present,
                [false, false],
                "chunkserver {} stored a hostile block",
                c.id
            );
        }
        Ok::<_, anyhow::Error>(())
    })?;

    // Nothing changed, and the region still works.
    assert!(
        listing(&mount)? == before,
        "a hostile request changed the namespace"
    );
    for c in &region.chunks {
        let stored = block_files(&c.data);
        assert!(
            !stored
                .iter()
                .any(|f| f.starts_with("0707070707") || f.starts_with("0000000000")),
            "chunkserver {} has a file of a hostile block: {stored:?}",
            c.id
        );
    }
    fs::write(mount.path.join("after"), b"still works")?;
    assert_eq!(fs::read(mount.path.join("after"))?, b"still works");
    Ok(())
}
