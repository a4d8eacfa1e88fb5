//! Spare followers: the members whose copies a commit does not wait for first.
//!
//! A change commits once a majority of the voters hold it durably: the leader and, of
//! three, one follower. Every follower used to fdatasync each append as it came, so on a
//! host where the members share one disk every change paid for three syncs at once, and
//! each took longer for the others (on this project's test host 112 µs alone, 209–256
//! with three at once). The leader's and one follower's are the ones a commit (and a
//! client's early answer, ADR 0020) waits for.
//!
//! So the voters other than the leader are ranked by member id: the first (a majority
//! less one) of them are prompt and sync each append in place, as before; the rest, and
//! every learner, are spares: their log's flusher gathers appends for a while
//! (`spare_sync_us`, 500 µs by default) and syncs them together. A spare still answers the
//! leader only once what it answers for is durable, so nothing about what is committed
//! changes: if a prompt follower is down or slow, the commit waits for a spare's gathered
//! sync instead (a change takes the gather longer while the group is short of it).
//!
//! Each member decides for itself from its own view of the leader and the configuration,
//! and is prompt whenever it is unsure: no known leader, or a configuration in change. A
//! spare also asks the prompt followers for their status every second: while one of them
//! does not answer, the spare syncs each append at once, so a group short of a member
//! does not wait for the gather on every change. So it does while one answers but its
//! log's syncs take longer lately than the spare's gather and its own sync together (a
//! slow or busy disk): the spare's copy would come first, and every commit wait for its
//! gather.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::channels::ChannelPool;
use meridian_proto::pb::meta::StatusRequest;
use openraft::async_runtime::WatchReceiver;
use tracing::info;

use super::MetaRaft;
use super::log_store::LogStore;
use super::pacing::Pacing;

/// How long a spare follower's appends are gathered before their sync, unless configured.
pub const GATHER: Duration = Duration::from_micros(500);
/// How often a spare asks the prompt followers whether they answer.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a prompt follower's answer may take before it counts as not answering.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// The followers whose copies, with the leader's, make a majority of `voters`: the first
/// by member id. None when the leader is unknown or the configuration is joint (`joint`):
/// then every member is prompt.
fn prompt_followers(leader: Option<u64>, voters: &BTreeSet<u64>, joint: bool) -> Option<Vec<u64>> {
    let leader = leader?;
    if joint {
        return None;
    }
    let majority = voters.len() / 2 + 1;
    let prompt = majority - usize::from(voters.contains(&leader));
    Some(
        voters
            .iter()
            .copied()
            .filter(|&v| v != leader)
            .take(prompt)
            .collect(),
    )
}

/// The prompt followers, if member `me` is a spare: not the leader, and not among the
/// followers (by id) whose copies with the leader's make a majority of `voters` (a learner
/// always is). Prompt when the leader is unknown or the configuration is joint (`joint`).
fn stands_in_for(
    me: u64,
    leader: Option<u64>,
    voters: &BTreeSet<u64>,
    joint: bool,
) -> Option<Vec<u64>> {
    prompt_followers(leader, voters, joint)
        .filter(|prompt| leader != Some(me) && !prompt.contains(&me))
}

/// If member `me` leads (`leader`): its spares (every other member of `members` past the
/// prompt followers, learners too) and its prompt followers. Nothing while it does not
/// lead or the configuration is joint.
fn led_by(
    me: u64,
    leader: Option<u64>,
    voters: &BTreeSet<u64>,
    members: &BTreeSet<u64>,
    joint: bool,
) -> (BTreeSet<u64>, Vec<u64>) {
    match prompt_followers(leader, voters, joint) {
        Some(prompt) if leader == Some(me) => {
            let spares = members
                .iter()
                .copied()
                .filter(|id| *id != me && !prompt.contains(id))
                .collect();
            (spares, prompt)
        }
        _ => (BTreeSet::new(), Vec::new()),
    }
}

/// What a spare found of the followers it stands in for, at its last look.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Found {
    /// Not a spare (the leader, a prompt follower, or unsure).
    Prompt,
    /// Every prompt follower answers, and syncs in time: this member gathers.
    Gathering,
    /// This prompt follower does not answer: this member syncs each append at once.
    Silent(String),
    /// This prompt follower's syncs take longer than this member's gather and its own
    /// sync together (their recent time, this member's): it syncs each append at once.
    Slow(String, Duration, Duration),
}

/// Whether a prompt follower whose log syncs take `theirs` lately is slower than a spare's
/// gathered copy (the gather, then the spare's own sync, `own`): every commit would then
/// wait for the gather. Once it stands in for a slow one (`standing_in`), a spare gathers
/// again only when the prompt follower's syncs are under its own and half the gather, so
/// that one near the line does not turn it at every look. A time of zero is not known.
fn outrun(theirs: Duration, own: Duration, gather: Duration, standing_in: bool) -> bool {
    let margin = if standing_in { gather / 2 } else { gather };
    !theirs.is_zero() && !gather.is_zero() && theirs > own + margin
}

/// Keeps `log` told whether this member is a spare (and `pacing`, while it leads, which
/// followers are), as the leader and the configuration
/// change (openraft's server metrics, which change with them only) and as the prompt
/// followers answer or not, and sync in time or not; runs until the member stops.
pub async fn run(
    raft: MetaRaft,
    log: LogStore,
    me: u64,
    pool: Arc<ChannelPool>,
    pacing: Arc<Pacing>,
) {
    let mut metrics = raft.server_metrics();
    let mut was: Option<Found> = None;
    // Leading: whether the last look found a prompt follower syncing slowly.
    let mut led_slow = false;
    loop {
        // A spare by the configuration, and the addresses of the followers it stands in for;
        // leading, its spares, its prompt followers and their addresses.
        let (asked, leading) = {
            let m = metrics.borrow_and_update();
            let membership = m.membership_config.membership();
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            let joint = membership.get_joint_config().len() > 1;
            let addrs = |ids: &[u64]| -> Vec<String> {
                ids.iter()
                    .filter_map(|id| membership.get_node(id).map(|n| n.addr.clone()))
                    .collect()
            };
            let members: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
            let (spares, prompt) = led_by(me, m.current_leader, &voters, &members, joint);
            let leading = (!spares.is_empty()).then(|| {
                let at = addrs(&prompt);
                (spares, prompt, at)
            });
            let asked = stands_in_for(me, m.current_leader, &voters, joint).map(|p| addrs(&p));
            (asked, leading)
        };
        // A spare, or leading spares: looked at again in a while.
        let probes = asked.is_some() || leading.is_some();
        // Leading: its spares' entries go in batches (`pacing.rs`), unless a prompt
        // follower syncs slowly (its copy would then come after a spare's sent at once;
        // the streams' answers tell `pacing` of one that is silent or behind).
        match leading {
            Some((spares, prompt, at)) => {
                let slow = matches!(
                    look(&pool, &at, &log, GATHER, led_slow).await,
                    Found::Slow(..)
                );
                if slow != led_slow {
                    match slow {
                        true => info!(
                            member = me,
                            "a prompt follower syncs slowly: the spare followers' appends go at once"
                        ),
                        false => info!(
                            member = me,
                            "the prompt followers sync in time: the spare followers' appends go in batches"
                        ),
                    }
                    led_slow = slow;
                }
                match slow {
                    true => pacing.set_roles(BTreeSet::new(), Vec::new()),
                    false => pacing.set_roles(spares, prompt),
                }
            }
            None => {
                pacing.set_roles(BTreeSet::new(), Vec::new());
                led_slow = false;
            }
        }
        let found = match &asked {
            Some(addrs) => {
                let standing_in = matches!(was, Some(Found::Slow(..)));
                look(&pool, addrs, &log, log.gather(), standing_in).await
            }
            None => Found::Prompt,
        };
        if was.as_ref().map(std::mem::discriminant) != Some(std::mem::discriminant(&found)) {
            match &found {
                Found::Silent(addr) => info!(
                    member = me,
                    prompt = %addr,
                    "a prompt follower does not answer: this spare syncs each append at once"
                ),
                Found::Slow(addr, theirs, own) => info!(
                    member = me,
                    prompt = %addr,
                    their_sync_us = theirs.as_micros() as u64,
                    own_sync_us = own.as_micros() as u64,
                    gather_us = log.gather().as_micros() as u64,
                    "a prompt follower syncs slowly: this spare syncs each append at once"
                ),
                Found::Prompt | Found::Gathering => {
                    info!(
                        member = me,
                        spare = found == Found::Gathering,
                        "spare follower"
                    )
                }
            }
            let spare = found == Found::Gathering;
            log.set_spare(spare);
            metrics::gauge!("meridian_raft_spare").set(f64::from(u8::from(spare)));
        }
        was = Some(found);
        let changed = match probes {
            // Asked again in a while, sooner if the leader or the configuration changes.
            true => tokio::time::timeout(PROBE_EVERY, metrics.changed())
                .await
                .unwrap_or(Ok(())),
            false => metrics.changed().await,
        };
        if changed.is_err() {
            return;
        }
    }
}

/// Asks each of `addrs` (the prompt followers) for its status: the first that does not
/// answer in time, or whose log syncs lately [`outrun`] this member's own and `margin`
/// together (a spare's gather).
async fn look(
    pool: &ChannelPool,
    addrs: &[String],
    log: &LogStore,
    margin: Duration,
    standing_in: bool,
) -> Found {
    for addr in addrs {
        let status = match pool.get(addr) {
            Ok(ch) => {
                let mut client = meridian_proto::channels::meta_client(ch);
                match tokio::time::timeout(PROBE_TIMEOUT, client.status(StatusRequest {})).await {
                    Ok(Ok(r)) => Some(r.into_inner()),
                    _ => None,
                }
            }
            Err(_) => None,
        };
        let Some(status) = status else {
            return Found::Silent(addr.clone());
        };
        let theirs = Duration::from_micros(status.log_sync_us);
        let own = log.recent_sync();
        if outrun(theirs, own, margin, standing_in) {
            return Found::Slow(addr.clone(), theirs, own);
        }
    }
    Found::Gathering
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn is_spare(me: u64, leader: Option<u64>, voters: &BTreeSet<u64>, joint: bool) -> bool {
        stands_in_for(me, leader, voters, joint).is_some()
    }

    /// Which of members 1 to `n` are spares under `leader` with `voters`.
    fn spares_of(n: u64, leader: Option<u64>, voters: &BTreeSet<u64>) -> Vec<u64> {
        (1..=n)
            .filter(|&m| is_spare(m, leader, voters, false))
            .collect()
    }

    #[test]
    fn the_followers_past_a_majority_with_the_leader_are_spares() {
        let three = set(&[1, 2, 3]);
        // Leader 1: follower 2 is prompt, 3 spare.
        assert!(!is_spare(1, Some(1), &three, false));
        assert!(!is_spare(2, Some(1), &three, false));
        assert!(is_spare(3, Some(1), &three, false));
        // Leader 2: 1 prompt, 3 spare; leader 3: 1 prompt, 2 spare.
        assert!(!is_spare(1, Some(2), &three, false));
        assert!(is_spare(3, Some(2), &three, false));
        assert!(!is_spare(1, Some(3), &three, false));
        assert!(is_spare(2, Some(3), &three, false));
        // Five: the leader and two followers make a majority.
        let five = set(&[1, 2, 3, 4, 5]);
        assert_eq!(spares_of(5, Some(3), &five), [4, 5]);
        // Two voters: the one follower is needed.
        assert!(!is_spare(2, Some(1), &set(&[1, 2]), false));
        // Four: the leader and two of three followers.
        assert_eq!(spares_of(4, Some(1), &set(&[1, 2, 3, 4])), [4]);
    }

    #[test]
    fn a_learner_is_a_spare_and_doubt_makes_a_member_prompt() {
        let three = set(&[1, 2, 3]);
        assert!(is_spare(4, Some(1), &three, false), "a learner");
        assert!(!is_spare(3, None, &three, false), "no leader known");
        assert!(!is_spare(3, Some(1), &three, true), "a joint configuration");
        // A leader outside the voters (leaving the group): its copy does not count, so a
        // majority of the voters are prompt.
        assert!(!is_spare(2, Some(9), &three, false));
        assert!(is_spare(3, Some(9), &three, false));
        assert_eq!(spares_of(4, Some(9), &set(&[1, 2, 3, 4])), [4]);
    }

    #[test]
    fn a_spare_stands_in_for_a_prompt_follower_slower_than_its_gathered_copy() {
        let us = Duration::from_micros;
        let gather = us(500);
        // On one shared disk both sync in about the same time: the spare gathers.
        assert!(!outrun(us(250), us(200), gather, false));
        // Slower than the spare's gather and sync together: the spare stands in.
        assert!(outrun(us(800), us(200), gather, false));
        assert!(!outrun(us(700), us(200), gather, false), "at the line");
        // Standing in, it gathers again only well under the line.
        assert!(outrun(us(600), us(200), gather, true));
        assert!(!outrun(us(400), us(200), gather, true));
        // Unknown (no sync yet, or an older member), or no gather: nothing to stand in for.
        assert!(!outrun(Duration::ZERO, us(200), gather, false));
        assert!(!outrun(us(50_000), us(200), Duration::ZERO, false));
    }

    #[test]
    fn a_leader_knows_its_spares_learners_among_them() {
        let three = set(&[1, 2, 3]);
        let with_learner = set(&[1, 2, 3, 4]);
        assert_eq!(
            led_by(1, Some(1), &three, &with_learner, false),
            (set(&[3, 4]), vec![2])
        );
        assert_eq!(
            led_by(2, Some(2), &three, &three, false),
            (set(&[3]), vec![1])
        );
        // Not leading, no leader known, or a joint configuration: no roles.
        let none = (BTreeSet::new(), Vec::new());
        assert_eq!(led_by(2, Some(1), &three, &three, false), none);
        assert_eq!(led_by(1, None, &three, &three, false), none);
        assert_eq!(led_by(1, Some(1), &three, &three, true), none);
        // Two voters: the one follower is prompt, nobody is a spare.
        assert_eq!(
            led_by(1, Some(1), &set(&[1, 2]), &set(&[1, 2]), false),
            (BTreeSet::new(), vec![2])
        );
    }
}
