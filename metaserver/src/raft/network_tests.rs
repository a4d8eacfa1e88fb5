use super::*;
use crate::raft::Request;
use openraft::RaftTypeConfig;
use openraft::entry::RaftEntry;
use openraft::type_config::alias::{EntryOf, LogIdOf};
use openraft::vote::{RaftLeaderIdExt, RaftVote};
use tokio_stream::wrappers::UnboundedReceiverStream;

fn id(i: u64) -> LogIdOf<TypeConfig> {
    LogIdOf::<TypeConfig>::new(
        <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(1, 1),
        i,
    )
}

/// An append after entry `prev` with `entries` new ones, and commit index `commit`.
fn append(prev: u64, entries: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: VoteOf::<TypeConfig>::from_leader_id(
            <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(1, 1),
            true,
        ),
        prev_log_id: Some(id(prev)),
        leader_commit: Some(id(commit)),
        entries: (prev + 1..=prev + entries)
            .map(|i| EntryOf::<TypeConfig>::new_normal(id(i), Request::Peers(vec![])))
            .collect(),
    }
}

fn seen(r: &AppendEntriesRequest<TypeConfig>) -> (u64, usize, u64) {
    (
        r.prev_log_id.map_or(0, |l| l.index),
        r.entries.len(),
        r.leader_commit.map_or(0, |l| l.index),
    )
}

/// A member that cannot be reached is not tried before the stream has a request
/// (openraft waits out its backoff before it makes one): with nothing to send, opening
/// a stream waits; with a request, it fails as unreachable.
#[tokio::test]
async fn a_stream_connects_once_it_has_a_request() {
    // A port nothing listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let pool = Arc::new(ChannelPool::new(meridian_proto::channels::Timeouts {
        connect: Duration::from_millis(500),
        request: Duration::from_secs(5),
    }));
    let mut peer = Peer {
        target: 2,
        addr,
        pool,
        encoded: Arc::default(),
        pacing: Arc::default(),
        streams: true,
        max_append: APPEND_MAX_BYTES,
    };
    let option = RPCOption::new(Duration::from_millis(100));
    let nothing = futures::stream::pending::<AppendEntriesRequest<TypeConfig>>();
    let opened = tokio::time::timeout(
        Duration::from_millis(300),
        peer.open_append_stream(nothing, option.clone()),
    )
    .await;
    assert!(opened.is_err(), "no connection attempt without a request");
    let one = futures::stream::iter([append(1, 1, 1)]);
    match peer.open_append_stream(one, option).await {
        Err(RPCError::Unreachable(_)) => {}
        Err(e) => panic!("not reported unreachable: {e}"),
        Ok(_) => panic!("a stream opened to nothing"),
    }
}

/// A member that records how many entries each append it gets carries and answers
/// every one with a success: on a stream, or (a member of an older version) only by
/// unary calls.
#[derive(Clone, Default)]
struct Recorder {
    got: Arc<std::sync::Mutex<Vec<usize>>>,
    streams: bool,
}

impl Recorder {
    fn took(&self, data: &[u8]) -> AppendEntriesRequest<TypeConfig> {
        let got: AppendEntriesRequest<TypeConfig> = serde_json::from_slice(data).unwrap();
        self.got.lock().unwrap().push(got.entries.len());
        got
    }
}

#[tonic::async_trait]
impl RaftService for Recorder {
    type AppendStreamStream = AppendAnswers;

    async fn append_stream(
        &self,
        request: tonic::Request<Streaming<RaftMessage>>,
    ) -> Result<Response<AppendAnswers>, Status> {
        if !self.streams {
            return Err(Status::unimplemented("older"));
        }
        let me = self.clone();
        let answers = request.into_inner().map(move |msg| {
            let got = me.took(&msg?.data);
            let last = got.entries.last().map(|e| e.log_id).or(got.prev_log_id);
            let item: StreamItem = Ok(Ok(last));
            Ok(encode(&item))
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn append_entries(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.took(&request.into_inner().data);
        let ok: Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>> =
            Ok(AppendEntriesResponse::Success);
        Ok(Response::new(encode(&ok)))
    }

    async fn vote(&self, _: tonic::Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        Err(Status::unimplemented("older"))
    }

    async fn install_snapshot(
        &self,
        _: tonic::Request<Streaming<RaftMessage>>,
    ) -> Result<Response<RaftMessage>, Status> {
        Err(Status::unimplemented("older"))
    }
}

/// `member` served on loopback, and a peer to it whose appends carry about ten of
/// the tests' entries each.
async fn peer_to(member: Recorder) -> (Peer, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let streams = member.streams;
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(
                meridian_proto::pb::meta::raft_service_server::RaftServiceServer::new(member),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let pool = Arc::new(ChannelPool::new(meridian_proto::channels::Timeouts {
        connect: Duration::from_millis(500),
        request: Duration::from_secs(5),
    }));
    let one_entry = Encoded::default()
        .entry_json(&append(1, 1, 1).entries[0])
        .len();
    let peer = Peer {
        target: 2,
        addr,
        pool,
        encoded: Arc::default(),
        pacing: Arc::default(),
        streams,
        max_append: 200 + 10 * (one_entry + 1),
    };
    (peer, server)
}

/// A unary append (to a member without streams) larger than the bound carries its
/// first part only, and its success is a partial one up to that part's last entry:
/// openraft sends the rest from there. One within the bound is a plain success.
#[tokio::test]
async fn a_unary_append_past_the_bound_sends_its_first_part_and_says_so() {
    let older = Recorder::default();
    let (mut peer, server) = peer_to(older.clone()).await;
    let option = RPCOption::new(Duration::from_secs(5));
    let answer = peer.append_entries(append(1, 25, 1), option.clone()).await;
    assert_eq!(
        answer.unwrap(),
        AppendEntriesResponse::PartialSuccess(Some(id(11)))
    );
    let answer = peer.append_entries(append(11, 5, 1), option).await;
    assert_eq!(answer.unwrap(), AppendEntriesResponse::Success);
    assert_eq!(*older.got.lock().unwrap(), vec![10, 5]);
    server.abort();
}

/// On a stream, an append larger than the bound goes as parts, each answered on its
/// own (the last with the request's last entry).
#[tokio::test]
async fn a_streamed_append_past_the_bound_goes_in_parts_each_answered() {
    let member = Recorder {
        streams: true,
        ..Default::default()
    };
    let (mut peer, server) = peer_to(member.clone()).await;
    let option = RPCOption::new(Duration::from_secs(5));
    let requests = futures::stream::iter([append(1, 25, 1), append(26, 3, 1)]);
    let answers: Vec<_> = peer
        .open_append_stream(requests, option)
        .await
        .unwrap()
        .collect()
        .await;
    let matched: Vec<_> = answers
        .into_iter()
        .map(|a| a.unwrap().unwrap().map(|l| l.index))
        .collect();
    // The first request in three parts of about ten entries, the second whole; each
    // part answered with its last entry.
    let got = member.got.lock().unwrap().clone();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got[..3].iter().all(|n| (5..=10).contains(n)), "{got:?}");
    assert_eq!((got[..3].iter().sum::<usize>(), got[3]), (25, 3));
    let mut last = 1;
    let each: Vec<_> = got
        .iter()
        .map(|n| {
            last += *n as u64;
            Some(last)
        })
        .collect();
    assert_eq!(matched, each);
    assert_eq!(matched[2], Some(26));
    server.abort();
}

/// An entry-less append followed by one with entries is never sent; a newer one
/// replaces a held one; the end of the input (a heartbeat is a stream of one) sends
/// what is held at once; and one that nothing follows goes out once the hold is over.
#[tokio::test]
async fn entryless_appends_wait_for_the_next_request_or_the_hold() {
    // A hold far longer than the test: whatever comes out early came out unheld.
    let soon = Duration::from_secs(30);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut out = hold_entryless(UnboundedReceiverStream::new(rx), Duration::from_secs(600));
    let mut next = async || {
        tokio::time::timeout(soon, out.next())
            .await
            .expect("not held")
            .map(|r| seen(&r))
    };
    tx.send(append(1, 1, 1)).unwrap();
    assert_eq!(next().await, Some((1, 1, 1)));
    // "2 is committed", then entry 3: only the entry goes out, with the commit.
    tx.send(append(2, 0, 2)).unwrap();
    tx.send(append(2, 1, 2)).unwrap();
    assert_eq!(next().await, Some((2, 1, 2)));
    // Two in a row, then the end of the input: the newer goes out, and the stream ends.
    tx.send(append(3, 0, 3)).unwrap();
    tx.send(append(3, 0, 4)).unwrap();
    drop(tx);
    assert_eq!(next().await, Some((3, 0, 4)));
    assert_eq!(next().await, None);

    // Nothing after it: sent once the hold is over.
    let hold = Duration::from_millis(50);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut out = hold_entryless(UnboundedReceiverStream::new(rx), hold);
    let started = tokio::time::Instant::now();
    tx.send(append(4, 0, 4)).unwrap();
    assert_eq!(out.next().await.map(|r| seen(&r)), Some((4, 0, 4)));
    assert!(started.elapsed() >= hold, "held {:?}", started.elapsed());
    drop(tx);
}
