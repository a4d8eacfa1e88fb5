//! Volumes with a home region (issue 17): every change of such a volume is decided by the
//! home region's Raft group. Another region forwards a client's change to the home, and
//! answers once it has pulled and applied the home's change log that far, so the client
//! reads its own write at once in its own region and any region sees it at the home as
//! soon as the change returns. While the home cannot be reached, changes are refused
//! with EROFS (the reason in the log) and reads go on from the local replica.
//!
//! Volume-level changes (create, delete, quota, regions, copies) and bookkeeping that
//! never needs one truth (access times, compaction) are not forwarded; a planned move of
//! the home is (the current home makes it). The state machine refuses a change of a
//! volume whose home is another region whatever this layer decided, and a change the old
//! home accepted after a forced move is kept apart in every region (`namespace::fence`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_proto::RegionId;
use meridian_proto::ns::{NsError, Op, QueryReply, Reply};
use meridian_proto::pb::meta::meta_service_client::MetaServiceClient;
use meridian_proto::pb::meta::{MutateRequest, MutateResponse, QueryRequest, QueryResponse};
use redb::ReadableDatabase;
use tonic::{Response, Status};
use tracing::warn;

use crate::service::{MetaNode, json};

/// A client's token header, sent on with the call made for it.
type Token = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// How long a forwarded change may take to be answered by the home region, tries
/// included; past it, the change is refused.
const FORWARD_DEADLINE: Duration = Duration::from_secs(5);
/// How long one try may take.
const TRY_DEADLINE: Duration = Duration::from_secs(2);
/// How many regions may pass a forwarded change on toward the home (a chain of regions;
/// two regions that disagree about the home while it moves pass it back and forth at
/// most this often before the asking region tries again).
pub(crate) const MAX_HOPS: u32 = 2;
/// How long this region waits to hold a forwarded change before answering anyway (the
/// change is decided; only reading it back here may lag).
const APPLY_DEADLINE: Duration = Duration::from_secs(10);

/// How the volume of a change is named.
enum VolumeIs<'a> {
    Named(&'a str),
    Id(u32),
}

/// What forwarding a change to its volume's home came to.
pub(crate) enum Forward {
    /// The home's answer (or the refusal to give: EROFS, and why).
    Answered(Response<MutateResponse>),
    /// The home is this region now (it moved here meanwhile): the change is made here.
    HomeHere,
}

/// What trying the home region came to.
enum AtHome<T> {
    /// The home (this region) answered.
    Answered(RegionId, T),
    /// The home is this region now.
    HomeHere,
    /// The home is a region this one does not peer with.
    NoPeer(RegionId),
    /// No member of the home answered in time: the last error, and whether a try may
    /// have reached it before failing.
    Unreachable(RegionId, String, bool),
}

impl MetaNode {
    /// The home region of the volume `op` changes, if that volume has one other than this
    /// region and `op` is a change the home decides. Read from this region's state each
    /// time: a home moves (`admin volume-promote`).
    pub(crate) fn home_elsewhere(&self, op: &Op) -> Result<Option<RegionId>, Status> {
        self.home_elsewhere_of(op, 0)
    }

    /// [`MetaNode::home_elsewhere`], for a change asked by a mount of volume `volume` (0:
    /// not said): a change of an inode this region has not pulled yet goes to that
    /// volume's home.
    pub(crate) fn home_elsewhere_of(
        &self,
        op: &Op,
        volume: u32,
    ) -> Result<Option<RegionId>, Status> {
        if !op.decided_at_home() {
            return Ok(None);
        }
        match op {
            Op::SetVolumeHome { name, .. } => self.home_of(VolumeIs::Named(name)),
            _ => {
                let Some(ino) = op.inode_changed() else {
                    return Ok(None);
                };
                match self.read(|r| r.getattr(ino))? {
                    Ok(attr) => self.home_of(VolumeIs::Id(attr.volume)),
                    // Not here (yet): the asking mount's volume's home may know it.
                    Err(_) if volume != 0 => self.home_of(VolumeIs::Id(volume)),
                    // Missing, of no volume said: the change fails wherever it runs;
                    // here is as good as anywhere.
                    Err(_) => Ok(None),
                }
            }
        }
    }

    /// The home region of volume `id`, if it has one other than this region.
    pub(crate) fn volume_home_elsewhere(&self, id: u32) -> Result<Option<RegionId>, Status> {
        self.home_of(VolumeIs::Id(id))
    }

    fn home_of(&self, volume: VolumeIs<'_>) -> Result<Option<RegionId>, Status> {
        // The one volume read (every change asks this: not every volume decoded).
        let vol = self
            .read(|r| match volume {
                VolumeIs::Named(n) => match r.volume(n) {
                    Err(NsError::NotFound(_)) => Ok(None),
                    other => other.map(Some),
                },
                VolumeIs::Id(id) => r.volume_by_id(id),
            })?
            .map_err(|e| Status::internal(e.to_string()))?;
        let home = vol.and_then(|v| v.policy.home);
        Ok(home.filter(|h| *h != self.shared.region))
    }

    /// Calls `call` on the home region's members in turn, each try bounded, looking the
    /// home up again (`resolve`) before every round, until one answers or
    /// [`FORWARD_DEADLINE`] passes. While a home moves, the old home and the new one
    /// refuse to decide until the move has reached the new one (`Unavailable`), and the
    /// call waits for it. A try of the same request is answered by the home from its
    /// record of the first, so a try that reached it and lost its answer is learnt.
    async fn at_home<T, F, Fut>(
        &self,
        resolve: impl Fn() -> Result<Option<RegionId>, Status>,
        call: F,
    ) -> Result<AtHome<T>, Status>
    where
        F: Fn(MetaServiceClient<meridian_proto::channels::Authed>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let mut last_error = String::from("no metaserver address");
        let mut maybe_sent = false;
        let mut home = self.shared.region;
        'tries: while started.elapsed() < FORWARD_DEADLINE {
            let Some(h) = resolve()? else {
                return Ok(AtHome::HomeHere);
            };
            home = h;
            // The home itself if it is a peer, else the peer its records come through
            // (regions linked as a chain), which passes the call on.
            let via = self
                .db
                .begin_read()
                .ok()
                .and_then(|tx| crate::regions::relayed_through(&tx, h));
            let Some(peer) = self.peers.iter().find(|p| p.region == h.0).or_else(|| {
                self.peers
                    .iter()
                    .find(|p| Some(p.region) == via.map(|v| v.0))
            }) else {
                return Ok(AtHome::NoPeer(h));
            };
            for addr in &peer.meta {
                let left = FORWARD_DEADLINE.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break 'tries;
                }
                let Ok(ch) = self.pool.get(addr) else {
                    continue;
                };
                let client = meridian_proto::channels::meta_client(ch);
                match call(client, left.min(TRY_DEADLINE)).await {
                    Ok(answer) => return Ok(AtHome::Answered(h, answer)),
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::Unknown
                                | tonic::Code::DeadlineExceeded
                                | tonic::Code::Cancelled
                        ) =>
                    {
                        maybe_sent |= s.code() != tonic::Code::Unavailable;
                        last_error = format!("{addr}: {}", s.message());
                    }
                    // The home answered, and refused: that is the answer.
                    Err(s) => return Err(s),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(AtHome::Unreachable(home, last_error, maybe_sent))
    }

    /// Forwards a client's change `op` (asked as `req`) to its volume's home region, and
    /// answers it once this region holds the result.
    pub(crate) async fn forward_home(
        &self,
        op: &Op,
        mut req: MutateRequest,
        token: Option<Token>,
    ) -> Result<Forward, Status> {
        let own = self.shared.region;
        if req.from_region != 0 {
            // Passed on by a region between the asking one and the home.
            req.hops += 1;
        }
        req.from_region = u32::from(own.0);
        // Leases are this region's; the home grants none to another region's client.
        req.lease = false;
        // The volume, for the home (or a region between) that has not pulled the change's
        // inode yet: the new home while a home moves, if this region made the inode just
        // before the move. Unsaid, it took itself for as good a place as any to decide,
        // and refused the change of an inode it did not have (ENOENT: a commit refused so
        // dropped the content it carried); said, it takes the home from the volume, and
        // until it has pulled the move it sends the change back to try again.
        if req.volume == 0
            && let Some(ino) = op.inode_changed()
            && let Ok(Ok(attr)) = self.read(|r| r.getattr(ino))
        {
            req.volume = attr.volume;
        }
        let volume = req.volume;
        let tried = self
            .at_home(
                || self.home_elsewhere_of(op, volume),
                |mut client, limit| {
                    let mut call = tonic::Request::new(req.clone());
                    call.set_timeout(limit);
                    if let Some(t) = &token {
                        call.metadata_mut()
                            .insert(meridian_proto::token::HEADER, t.clone());
                    }
                    async move { client.mutate(call).await.map(|r| r.into_inner()) }
                },
            )
            .await?;
        let (home, answer) = match tried {
            AtHome::Answered(home, answer) => (home, answer),
            AtHome::HomeHere => return Ok(Forward::HomeHere),
            AtHome::NoPeer(h) => {
                return Ok(Forward::Answered(refused(format!(
                    "the volume's home is region {}, which region {} does not hear of: changes are refused here",
                    h.0, own.0
                ))));
            }
            AtHome::Unreachable(home, last_error, maybe_sent) => {
                warn!(home = home.0, error = %last_error, maybe_sent, "home region unreachable: change refused");
                metrics::counter!("meridian_home_forward_refused_total").increment(1);
                return Ok(Forward::Answered(refused(format!(
                    "the volume's home region {} cannot be reached ({last_error}): changes are refused until it can, reads go on{}",
                    home.0,
                    if maybe_sent {
                        " (the link failed while a try was under way: if it reached the home, the change was made there)"
                    } else {
                        ""
                    }
                ))));
            }
        };
        metrics::counter!("meridian_home_forwarded_total").increment(1);
        self.wait_applied_from(home, answer.change_seq).await;
        Ok(Forward::Answered(Response::new(answer)))
    }

    /// Answers a linearizable query of volume `volume` (asked as `req`) through its home
    /// region, which answers as of now (a read index on its Raft group): every change
    /// acknowledged anywhere before the query arrived is in the answer. None: the home is
    /// this region now (the query is answered here).
    pub(crate) async fn query_at_home(
        &self,
        volume: u32,
        mut req: QueryRequest,
        token: Option<Token>,
    ) -> Result<Option<Response<QueryResponse>>, Status> {
        let own = self.shared.region;
        req.from_region = u32::from(own.0);
        req.stale = false;
        let tried = self
            .at_home(
                || self.volume_home_elsewhere(volume),
                |mut client, limit| {
                    let mut call = tonic::Request::new(req.clone());
                    call.set_timeout(limit);
                    if let Some(t) = &token {
                        call.metadata_mut()
                            .insert(meridian_proto::token::HEADER, t.clone());
                    }
                    async move { client.query(call).await.map(|r| r.into_inner()) }
                },
            )
            .await?;
        let why = match tried {
            AtHome::Answered(_, answer) => {
                metrics::counter!("meridian_home_linearizable_reads_total").increment(1);
                return Ok(Some(Response::new(answer)));
            }
            AtHome::HomeHere => return Ok(None),
            AtHome::NoPeer(h) => format!(
                "the volume's home is region {}, which region {} does not peer with",
                h.0, own.0
            ),
            AtHome::Unreachable(h, last_error, _) => {
                format!(
                    "the volume's home region {} cannot be reached ({last_error})",
                    h.0
                )
            }
        };
        warn!(error = %why, "linearizable read refused");
        let outcome: Result<QueryReply, NsError> = Err(NsError::Unreachable(format!(
            "{why}: linearizable reads go through it"
        )));
        Ok(Some(Response::new(QueryResponse {
            outcome: json(&outcome),
            caps: Bytes::new(),
        })))
    }

    /// Waits (a bounded time) until this region has applied `origin`'s change log up to
    /// `seq`.
    async fn wait_applied_from(&self, origin: RegionId, seq: u64) {
        let mut applied = self.shared.applied.subscribe();
        let deadline = tokio::time::Instant::now() + APPLY_DEADLINE;
        loop {
            let have = self
                .db
                .begin_read()
                .map(|tx| crate::regions::watermark(&tx, origin))
                .unwrap_or(0);
            if have >= seq {
                return;
            }
            if tokio::time::timeout_at(deadline, applied.changed())
                .await
                .is_err()
            {
                warn!(
                    origin = origin.0,
                    seq, have, "a forwarded change was not pulled back in time; answering anyway"
                );
                return;
            }
        }
    }
}

/// The answer refusing a change with EROFS, and why.
fn refused(why: String) -> Response<MutateResponse> {
    answer_err(NsError::ReadOnly(why))
}

/// An answer carrying `e` as the change's outcome.
fn answer_err(e: NsError) -> Response<MutateResponse> {
    let outcome: Result<Reply, NsError> = Err(e);
    Response::new(MutateResponse {
        outcome: json(&outcome),
        ..MutateResponse::default()
    })
}
