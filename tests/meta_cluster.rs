//! Metaserver groups as real processes: operations through any member, leader fail-over
//! without losing or repeating acknowledged operations, full restart, a new member catching
//! up from a snapshot after the log was purged, and chunkservers in the cluster map.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::{
    MERIDIAN, MetaCluster, admin_at, cluster_map, create_op, free_addr, gauge, log_tail, mkdir_op,
    start_chunkservers, wait_for,
};
use meridian_client::{MetaClient, MetaError};
use meridian_proto::ns::*;
use meridian_proto::{InodeId, NodeId, NodeState};

async fn new_volume(client: &MetaClient, name: &str) -> Result<Volume> {
    match client
        .mutate(&Op::CreateVolume {
            name: name.into(),
            policy: VolumePolicy::default(),
        })
        .await?
    {
        Reply::Volume(v) => Ok(v),
        other => anyhow::bail!("unexpected {other:?}"),
    }
}

fn attr_of(reply: Reply) -> Attr {
    match reply {
        Reply::Attr(a) => a,
        other => panic!("expected attributes, got {other:?}"),
    }
}

async fn lookup(
    client: &MetaClient,
    parent: InodeId,
    name: &str,
    stale: bool,
) -> Result<Attr, MetaError> {
    match client
        .query(
            &Query::Lookup {
                parent,
                name: name.into(),
                creds: Creds::root(),
            },
            stale,
        )
        .await?
    {
        QueryReply::Attr(a) => Ok(a),
        other => panic!("unexpected {other:?}"),
    }
}

async fn list(client: &MetaClient, dir: InodeId, stale: bool) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut after = None;
    loop {
        let q = Query::ReadDir {
            ino: dir,
            after: after.clone(),
            limit: 1000,
            creds: Creds::root(),
        };
        let QueryReply::Dir { entries, next } = client.query(&q, stale).await? else {
            anyhow::bail!("not a dir page")
        };
        names.extend(
            entries
                .into_iter()
                .map(|e| String::from_utf8_lossy(&e.name).into_owned()),
        );
        match next {
            Some(n) => after = Some(n),
            None => return Ok(names),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_succeed_through_any_member() -> Result<()> {
    let cluster = MetaCluster::start(3, &[])?;
    let via = |i: usize| MetaClient::new(vec![cluster.nodes[i].addr.clone()]);
    let vol = new_volume(&via(0), "main").await?;
    let docs = attr_of(via(1).mutate(&mkdir_op(vol.root, "docs")).await?);
    attr_of(via(2).mutate(&create_op(docs.ino, "readme")).await?);
    for i in 0..3 {
        // Linearizable reads through every member see every acknowledged write.
        let got = lookup(&via(i), docs.ino, "readme", false).await?;
        assert_eq!(got.kind, FileKind::File);
    }
    // POSIX errors come back as errors, through any member.
    let err = via(2)
        .mutate(&mkdir_op(vol.root, "docs"))
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc_errno::EEXIST, "{err}");
    let err = lookup(&via(1), vol.root, "nope", false).await.unwrap_err();
    assert_eq!(err.errno(), libc_errno::ENOENT);
    // Followers catch up for stale reads too.
    for i in 0..3 {
        let c = via(i);
        wait_for(Duration::from_secs(10), "a follower to apply", || {
            let rt = tokio::runtime::Handle::current();
            std::thread::scope(|s| {
                s.spawn(|| rt.block_on(lookup(&c, docs.ino, "readme", true)).ok())
                    .join()
                    .ok()
                    .flatten()
            })
        })?;
    }

    let out = Command::new(MERIDIAN)
        .args([
            "admin",
            "meta-status",
            "--json",
            "--meta",
            &cluster.addrs().join(","),
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rows = rows.as_array().context("array")?;
    assert_eq!(rows.iter().filter(|r| r["state"] == "Leader").count(), 1);
    for r in rows {
        assert_eq!(
            r["members"]
                .as_array()
                .map(|m| m.iter().filter(|m| m["voter"] == true).count()),
            Some(3)
        );
    }
    Ok(())
}

/// A client's mutations and queries share one `Calls` stream per member: many in flight
/// at once, each answered with its own outcome (a create's inode is the one its lookup
/// finds; a refused create gets its own error), through a follower as through the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_together_on_one_stream_each_get_their_own_answer() -> Result<()> {
    let mut cluster = MetaCluster::start(3, &[])?;
    let leader = cluster.wait_leader()?;
    let follower = (leader + 1) % 3;
    for via in [leader, follower] {
        let client = std::sync::Arc::new(MetaClient::new(vec![cluster.nodes[via].addr.clone()]));
        let vol = new_volume(&client, &format!("v{via}")).await?;
        let dir = attr_of(client.mutate(&mkdir_op(vol.root, "d")).await?);
        // Every third name is taken already: its create must fail, the others not.
        for i in (0..96).step_by(3) {
            client.mutate(&create_op(dir.ino, &format!("f{i}"))).await?;
        }
        let calls = (0..96).map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let name = format!("f{i}");
                let made = client.mutate(&create_op(dir.ino, &name)).await;
                let found = lookup(&client, dir.ino, &name, false).await;
                (i, made, found)
            })
        });
        let mut inodes = BTreeSet::new();
        for call in calls {
            let (i, made, found) = call.await?;
            let found = found.with_context(|| format!("lookup f{i}"))?;
            if i % 3 == 0 {
                let e = made.expect_err("the name was taken");
                assert_eq!(e.errno(), libc_errno::EEXIST, "f{i}: {e}");
            } else {
                let made = attr_of(made.with_context(|| format!("create f{i}"))?);
                assert_eq!(made.ino, found.ino, "f{i}: the create's answer is its own");
            }
            assert!(inodes.insert(found.ino), "f{i}: an inode answered twice");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_stream_loses_and_repeats_nothing() -> Result<()> {
    let mut cluster = MetaCluster::start(3, &[])?;
    let client = cluster.client();
    let vol = new_volume(&client, "main").await?;
    let dir = attr_of(client.mutate(&mkdir_op(vol.root, "stream")).await?);

    let total = 300;
    let mut acked = BTreeSet::new();
    let mut failover = None;
    for i in 0..total {
        if i == 100 {
            let leader = cluster.wait_leader()?;
            cluster.nodes[leader].kill();
            failover = Some(Instant::now());
        }
        let name = format!("f-{i:04}");
        let t = Instant::now();
        client
            .mutate(&create_op(dir.ino, &name))
            .await
            .with_context(|| format!("create {name}"))?;
        if let Some(start) = failover.take().filter(|_| i == 100) {
            eprintln!(
                "first write after killing the leader took {:?} (since kill {:?})",
                t.elapsed(),
                start.elapsed()
            );
        }
        acked.insert(name);
    }
    // Every acknowledged create is there, and nothing else.
    let names: BTreeSet<String> = list(&client, dir.ino, false).await?.into_iter().collect();
    assert_eq!(names, acked);
    // None was applied twice: the change log holds exactly one create per name.
    let QueryReply::Changes(changes) = client
        .query(
            &Query::Changes {
                from: 0,
                limit: 10_000,
            },
            false,
        )
        .await?
    else {
        anyhow::bail!("not changes")
    };
    let creates = changes
        .iter()
        .filter(|(_, rec)| {
            let v: serde_json::Value = serde_json::from_slice(rec).unwrap();
            v["op"]["Mknod"]["parent"] == dir.ino.0 && v["op"]["Mknod"]["kind"] == "File"
        })
        .count();
    assert_eq!(creates, total);
    Ok(())
}

/// A new volume with a directory "a" of `n` empty files.
async fn dir_of_files(client: &MetaClient, n: usize) -> Result<(Volume, Attr)> {
    let vol = new_volume(client, "main").await?;
    let a = attr_of(client.mutate(&mkdir_op(vol.root, "a")).await?);
    for i in 0..n {
        client
            .mutate(&create_op(a.ino, &format!("file-{i:03}")))
            .await?;
    }
    Ok((vol, a))
}

/// Waits (up to `within`) until member `i` has applied entry `index`; its status then.
fn applied(
    cluster: &MetaCluster,
    i: usize,
    index: u64,
    within: Duration,
) -> Result<meridian_proto::pb::meta::StatusResponse> {
    wait_for(
        within,
        &format!("member {} to apply {index}", i + 1),
        || cluster.status(i).filter(|s| s.last_applied >= index),
    )
}

/// Starts every (stopped) member again on its address; a client once a leader is up.
fn restart_every_member(cluster: &mut MetaCluster) -> Result<MetaClient> {
    for n in &mut cluster.nodes {
        let addr = n.addr.clone();
        n.restart_on(&addr)?;
    }
    cluster.wait_leader()?;
    Ok(cluster.client())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_and_restarting_every_member_keeps_the_namespace() -> Result<()> {
    let mut cluster = MetaCluster::start(3, &[])?;
    let client = cluster.client();
    let (vol, a) = dir_of_files(&client, 20).await?;
    let before = list(&client, a.ino, false).await?;
    for n in &mut cluster.nodes {
        assert!(n.terminate()?.success(), "graceful stop");
    }
    let client = restart_every_member(&mut cluster)?;
    assert_eq!(list(&client, a.ino, false).await?, before);
    assert_eq!(lookup(&client, vol.root, "a", false).await?.nlink, 2);
    client.mutate(&create_op(a.ino, "after-restart")).await?;
    Ok(())
}

/// Applies commit without fsync, the fsync'd Raft log being the durability: every member
/// killed at once (no chance to flush), with snapshots taken and the log purged along the
/// way, comes back with every acknowledged operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_every_member_at_once_loses_no_acknowledged_operation() -> Result<()> {
    let mut cluster = MetaCluster::start(3, &["--snapshot-logs", "40", "--keep-logs", "0"])?;
    let client = cluster.client();
    let (_, a) = dir_of_files(&client, 150).await?;
    let before = list(&client, a.ino, false).await?;
    assert_eq!(before.len(), 150);
    for n in &mut cluster.nodes {
        n.kill();
    }
    let client = restart_every_member(&mut cluster)?;
    assert_eq!(list(&client, a.ino, false).await?, before);
    client.mutate(&create_op(a.ino, "after-restart")).await?;
    // Each member's state reopened as of its last persisting commit, which recorded redb's
    // page allocator: no member read its whole state file again to rebuild it.
    for n in &cluster.nodes {
        let log = std::fs::read_to_string(&n.log)?;
        assert!(
            !log.contains("not closed cleanly"),
            "member {} rebuilt its state database's allocator:\n{}",
            n.id,
            log.lines()
                .filter(|l| l.contains("state database"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}

/// A group of three (`extra` given to each member) with a directory of five files: the
/// group; the indexes of the leader, the prompt follower and the spare (`raft/spare.rs`:
/// the followers by member id, the first prompt); a client; the directory.
async fn three_with_a_spare(extra: &[&str]) -> Result<(MetaCluster, [usize; 3], MetaClient, Attr)> {
    let mut cluster = MetaCluster::start(3, extra)?;
    let leader = cluster.wait_leader()?;
    let client = cluster.client();
    let (_, a) = dir_of_files(&client, 5).await?;
    let mut followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    followers.sort_by_key(|&i| cluster.nodes[i].id);
    Ok((cluster, [leader, followers[0], followers[1]], client, a))
}

/// Makes changes in `dir` (files `prefix-N`) until `done` (60 s at most; `log` is shown if
/// never); how many it made. For what a member notices only as changes come.
async fn changes_until(
    client: &MetaClient,
    dir: InodeId,
    prefix: &str,
    log: &std::path::Path,
    mut done: impl FnMut() -> bool,
) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut made = 0;
    while !done() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not after 60 s of changes:\n{}",
            log_tail(log, 20)
        );
        client
            .mutate(&create_op(dir, &format!("{prefix}-{made:04}")))
            .await?;
        made += 1;
    }
    Ok(made)
}

/// A commit waits for the leader's copy and the prompt follower's; with the prompt one
/// down it waits for the spare's gathered sync instead (`raft/spare.rs`), until the spare
/// finds the prompt one silent and syncs each append at once. Changes go on, and once the
/// leader is killed too and the prompt follower comes back without them, the spare's copy
/// is what the group keeps: every acknowledged change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_prompt_follower_down_the_spare_carries_every_commit() -> Result<()> {
    let (mut cluster, [leader, prompt, spare], client, a) = three_with_a_spare(&[]).await?;
    cluster.nodes[prompt].kill();
    for i in 0..25 {
        client
            .mutate(&create_op(a.ino, &format!("spare-{i:02}")))
            .await?;
    }
    let spare_log = cluster.nodes[spare].log.clone();
    wait_for(
        Duration::from_secs(30),
        "the spare to find the prompt follower silent",
        || {
            std::fs::read_to_string(&spare_log)
                .ok()
                .filter(|l| l.contains("a prompt follower does not answer"))
        },
    )?;
    for i in 25..50 {
        client
            .mutate(&create_op(a.ino, &format!("spare-{i:02}")))
            .await?;
    }
    let before = list(&client, a.ino, false).await?;
    assert_eq!(before.len(), 55);
    cluster.nodes[leader].kill();
    let addr = cluster.nodes[prompt].addr.clone();
    cluster.nodes[prompt].restart_on(&addr)?;
    assert_eq!(
        cluster.wait_leader()?,
        spare,
        "the member holding every commit leads"
    );
    let client = cluster.client();
    assert_eq!(list(&client, a.ino, false).await?, before);
    client.mutate(&create_op(a.ino, "after")).await?;
    Ok(())
}

/// A prompt follower that answers but syncs slowly (its disk made 5 ms slower per sync,
/// less than the leader's batch for spares): every commit would wait for it, or for the
/// spare's gathered sync. The spare finds the prompt follower's syncs slower than its own
/// and its gather together and syncs each append at once; the leader finds them slower
/// than its own and sends the spare each append at once (`raft/spare.rs`,
/// `raft/pacing.rs`). Both go back once the prompt follower is quick. Each member's
/// recent time per sync is in its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_syncs_at_once_while_the_prompt_follower_syncs_slowly() -> Result<()> {
    let (mut cluster, [leader, prompt, spare], client, a) = three_with_a_spare(&[]).await?;
    let (spare_log, leader_log) = (
        cluster.nodes[spare].log.clone(),
        cluster.nodes[leader].log.clone(),
    );
    // Which of `lines` a log says last (a member's state now).
    let last = |log: &std::path::Path, lines: &[&'static str]| -> Option<&'static str> {
        let text = std::fs::read_to_string(log).ok()?;
        lines
            .iter()
            .filter_map(|l| text.rfind(l).map(|at| (at, *l)))
            .max()
            .map(|(_, l)| l)
    };
    let spare_says = [
        "spare=true",
        "a prompt follower syncs slowly: this spare",
        "a prompt follower does not answer",
    ];
    let leader_says = [
        "the prompt followers sync in time: the spare followers' appends go in batches",
        "a prompt follower syncs slowly: the spare followers' appends go at once",
    ];
    let addr = cluster.nodes[prompt].addr.clone();
    cluster.nodes[prompt].kill();
    cluster.nodes[prompt].add_args(&["--fault-sync-delay-us", "5000"]);
    cluster.nodes[prompt].restart_on(&addr)?;
    // Changes (each synced by the prompt follower) until the spare and the leader say so.
    let mut made = changes_until(&client, a.ino, "slow", &spare_log, || {
        last(&spare_log, &spare_says) == Some(spare_says[1])
            && last(&leader_log, &leader_says) == Some(leader_says[1])
    })
    .await?;
    let theirs = cluster.status(prompt).context("prompt status")?.log_sync_us;
    let own = cluster.status(spare).context("spare status")?.log_sync_us;
    assert!(theirs >= 1_000, "the slowed member's syncs: {theirs} µs");
    assert!(
        own > 0 && own < theirs,
        "the spare's {own} µs, the slow one's {theirs}"
    );
    // The prompt follower quick again: the spare gathers again, the leader batches again.
    cluster.nodes[prompt].kill();
    cluster.nodes[prompt].remove_arg("--fault-sync-delay-us");
    cluster.nodes[prompt].restart_on(&addr)?;
    made += changes_until(&client, a.ino, "quick", &spare_log, || {
        last(&spare_log, &spare_says) == Some(spare_says[0])
            && last(&leader_log, &leader_says) == Some(leader_says[0])
    })
    .await?;
    assert_eq!(list(&client, a.ino, false).await?.len() as u64, 5 + made);
    Ok(())
}

/// The leader gathers a spare follower's entries into one append while the prompt
/// follower keeps up (`raft/pacing.rs`; the spare's own gathering is off here, so what
/// its syncs show is the leader's batches): the prompt follower syncs each change, the
/// spare a batch of them. Once the prompt follower is down the leader says so and sends
/// the spare each change at once, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_batches_a_spares_entries_only_while_the_prompt_follower_keeps_up() -> Result<()> {
    let (mut cluster, [leader, prompt, spare], client, a) =
        three_with_a_spare(&["--spare-batch-us", "100000", "--spare-sync-us", "0"]).await?;
    let (prompt_before, spare_before) = (
        status_of(&cluster, prompt)?.log_syncs,
        status_of(&cluster, spare)?.log_syncs,
    );
    const CHANGES: u64 = 150;
    for i in 0..CHANGES {
        client
            .mutate(&create_op(a.ino, &format!("batched-{i:03}")))
            .await?;
    }
    // The spare holds them all (its last batch may still be on its way).
    let last = status_of(&cluster, leader)?.last_log_index;
    wait_for(
        Duration::from_secs(30),
        "the spare to hold every change",
        || {
            status_of(&cluster, spare)
                .ok()
                .filter(|s| s.last_log_index >= last)
                .map(|s| s.log_syncs)
        },
    )?;
    let prompt_syncs = status_of(&cluster, prompt)?.log_syncs - prompt_before;
    let spare_syncs = status_of(&cluster, spare)?.log_syncs - spare_before;
    assert!(
        prompt_syncs >= CHANGES,
        "the prompt follower synced {prompt_syncs} times"
    );
    assert!(
        spare_syncs <= CHANGES / 3,
        "the spare synced {spare_syncs} times for {CHANGES} changes"
    );
    // The prompt follower down: the leader finds it behind, and the spare's appends go
    // one by one (a sync each).
    cluster.nodes[prompt].kill();
    let leader_log = cluster.nodes[leader].log.clone();
    // Changes (each looks at the prompt follower when the spare's append is held) until
    // the leader says so.
    let made = changes_until(&client, a.ino, "behind", &leader_log, || {
        std::fs::read_to_string(&leader_log)
            .is_ok_and(|l| l.contains("a prompt follower falls behind"))
    })
    .await?;
    let before = status_of(&cluster, spare)?.log_syncs;
    for i in 0..40 {
        client
            .mutate(&create_op(a.ino, &format!("alone-{i:02}")))
            .await?;
    }
    let synced = status_of(&cluster, spare)?.log_syncs - before;
    assert!(
        synced >= 40,
        "the spare synced {synced} times for 40 changes"
    );
    assert_eq!(
        list(&client, a.ino, false).await?.len() as u64,
        5 + CHANGES + made + 40
    );
    Ok(())
}

fn status_of(cluster: &MetaCluster, i: usize) -> Result<meridian_proto::pb::meta::StatusResponse> {
    cluster.status(i).context("status")
}

/// What a member's Raft log holds in memory (and a restart replays) is in its metrics:
/// entries and bytes grow with changes and fall when a snapshot purges them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_log_is_measured_in_its_metrics() -> Result<()> {
    let metrics = free_addr()?;
    let cluster = MetaCluster::start(1, &["--keep-logs", "0", "--metrics-listen", &metrics])?;
    dir_of_files(&cluster.client(), 100).await?;
    let entries = |m: &str| gauge(m, "meridian_raft_log_entries");
    let held = wait_for(Duration::from_secs(30), "the log's gauges", || {
        entries(&metrics).filter(|n| *n >= 100.0)
    })?;
    let bytes = gauge(&metrics, "meridian_raft_log_bytes").context("metrics")?;
    assert!(
        bytes >= 100.0 * 50.0,
        "{held} entries in {bytes} bytes of records"
    );
    let syncs = gauge(&metrics, "meridian_raft_log_syncs_total").context("metrics")?;
    assert!(syncs >= 1.0, "{syncs} fdatasyncs of the log counted");
    admin_at(&cluster.nodes[0].addr, &["snapshot", "--purge"])?;
    wait_for(Duration::from_secs(30), "the purge in the gauges", || {
        entries(&metrics).filter(|n| *n < 10.0)
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_catches_up_from_a_snapshot_after_the_log_is_purged() -> Result<()> {
    let mut cluster = MetaCluster::start(3, &["--keep-logs", "0"])?;
    let client = cluster.client();
    let vol = new_volume(&client, "main").await?;
    let dir = attr_of(client.mutate(&mkdir_op(vol.root, "many")).await?);
    for i in 0..150 {
        client
            .mutate(&create_op(dir.ino, &format!("n-{i:03}")))
            .await?;
    }
    let leader = cluster.wait_leader()?;
    let out = Command::new(MERIDIAN)
        .args([
            "admin",
            "snapshot",
            "--purge",
            "--meta",
            &cluster.nodes[leader].addr,
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = cluster.status(leader).context("leader status")?;
    assert!(
        status.snapshot_index > 150 && status.purged_index >= status.snapshot_index,
        "{status:?}"
    );

    cluster.add_member(4)?;
    let target = cluster
        .status(leader)
        .context("leader status")?
        .last_applied;
    let fourth = applied(&cluster, 3, target, Duration::from_secs(20))?;
    assert!(
        fourth.snapshot_index > 0,
        "member 4 was brought up from a snapshot: {fourth:?}"
    );
    let only_four = MetaClient::new(vec![cluster.nodes[3].addr.clone()]);
    assert_eq!(list(&only_four, dir.ino, true).await?.len(), 150);
    Ok(())
}

/// A member joining a group whose log since its last snapshot is longer than the entries
/// kept behind one gets a snapshot taken as it joins, not that log to replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_gets_a_fresh_snapshot_rather_than_a_long_log() -> Result<()> {
    let mut cluster = MetaCluster::start(3, &["--keep-logs", "50", "--snapshot-logs", "1000000"])?;
    let client = cluster.client();
    let (_, a) = dir_of_files(&client, 150).await?;
    let leader = cluster.wait_leader()?;
    let before = cluster.status(leader).context("leader status")?;
    assert_eq!(before.snapshot_index, 0, "no snapshot yet: {before:?}");

    cluster.add_member(4)?;
    let fourth = applied(&cluster, 3, before.last_applied, Duration::from_secs(20))?;
    assert!(
        fourth.snapshot_index >= before.last_applied,
        "member 4 was brought up from a snapshot of everything before it joined: {fourth:?}"
    );
    let after = cluster.status(leader).context("leader status")?;
    assert!(
        after.snapshot_index >= before.last_applied
            && after.purged_index + 50 >= after.snapshot_index,
        "the leader's log is purged up to the fresh snapshot, but for the entries kept: {after:?}"
    );
    let only_four = MetaClient::new(vec![cluster.nodes[3].addr.clone()]);
    assert_eq!(list(&only_four, a.ino, true).await?.len(), 150);
    Ok(())
}

/// A member that was down, and answers late while it catches up (stopped for a second at a
/// time, as a member applying a large namespace's entries holds its answers back), still
/// catches up: the leader keeps its stream to it rather than giving it up and opening
/// another at every late answer (the member's HTTP/2 server refuses the connection's new
/// streams once twenty were opened and reset before it took them, and replication to it
/// stopped for good: a member of 1,000,000 files restarted after 100,000 more stayed
/// 10,000 entries behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_answering_slowly_while_it_catches_up_catches_up() -> Result<()> {
    use futures::StreamExt;
    let mut cluster = MetaCluster::start(3, &[])?;
    let client = cluster.client();
    let (_, a) = dir_of_files(&client, 10).await?;
    let leader = cluster.wait_leader()?;
    let down = (0..3).find(|i| *i != leader).context("a follower")?;
    cluster.nodes[down].kill();
    let made: Vec<_> = futures::stream::iter(0..3000)
        .map(|i| {
            let client = &client;
            async move {
                client
                    .mutate(&create_op(a.ino, &format!("more-{i:04}")))
                    .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(made.iter().all(|r| r.is_ok()));

    let addr = cluster.nodes[down].addr.clone();
    cluster.nodes[down].restart_on(&addr)?;
    // Late answers while changes go on: stopped for a second, three times (a fault, not a
    // wait), changes made meanwhile.
    for round in 0..3 {
        cluster.nodes[down].pause(true);
        let paused = Instant::now();
        let mut i = 0;
        while paused.elapsed() < Duration::from_secs(1) {
            client
                .mutate(&create_op(a.ino, &format!("during-{round}-{i:04}")))
                .await?;
            i += 1;
        }
        cluster.nodes[down].pause(false);
        std::thread::sleep(Duration::from_millis(200));
    }
    let target = cluster
        .status(leader)
        .context("leader status")?
        .last_applied;
    applied(&cluster, down, target, Duration::from_secs(30))?;
    let only_it = MetaClient::new(vec![addr]);
    let everyone = list(&client, a.ino, false).await?;
    assert!(everyone.len() > 3010);
    // Its reads follow what it applied, a little behind its log.
    let deadline = Instant::now() + Duration::from_secs(10);
    while list(&only_it, a.ino, true).await? != everyone {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the member does not list every file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A second without answers is not a member gone: the leader kept its stream.
    let led = std::fs::read_to_string(&cluster.nodes[leader].log)?;
    let given_up = led.matches("no answer to an append").count();
    assert_eq!(
        given_up, 0,
        "the leader gave up on streams {given_up} times"
    );
    Ok(())
}

#[test]
fn chunkservers_register_show_up_and_go_down_when_killed() -> Result<()> {
    let cluster = MetaCluster::start(3, &["--suspect-after-ms", "800", "--down-after-ms", "2000"])?;
    let meta = cluster.addrs();
    let mut chunks = start_chunkservers(&cluster, 200, 1 << 33)?;
    let map = wait_for(Duration::from_secs(20), "three chunkservers up", || {
        cluster_map(&meta.join(","))
            .filter(|m| m.nodes.len() == 3 && m.nodes.iter().all(|n| n.state == NodeState::Up))
    })?;
    for (n, p) in map.nodes.iter().zip(&chunks) {
        assert_eq!((n.id, n.address.as_str()), (NodeId(p.id), p.addr.as_str()));
    }

    chunks[1].kill();
    let map = wait_for(
        Duration::from_secs(20),
        "the killed chunkserver to be down",
        || {
            cluster_map(&meta.join(",")).filter(|m| {
                m.node(NodeId(2))
                    .is_some_and(|n| n.state == NodeState::Down)
            })
        },
    )?;
    assert_eq!(map.node(NodeId(1)).map(|n| n.state), Some(NodeState::Up));
    assert_eq!(map.node(NodeId(3)).map(|n| n.state), Some(NodeState::Up));

    // It comes back: registered again and up, with a newer epoch.
    let addr = chunks[1].addr.clone();
    chunks[1].restart_on(&addr)?;
    let back = wait_for(
        Duration::from_secs(20),
        "the chunkserver to be up again",
        || {
            cluster_map(&meta.join(","))
                .filter(|m| m.node(NodeId(2)).is_some_and(|n| n.state == NodeState::Up))
        },
    )?;
    assert!(back.epoch > map.epoch);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_grows_to_five_members_and_shrinks_back_to_three() -> Result<()> {
    let mut cluster = MetaCluster::start(3, &[])?;
    cluster.add_member(4)?;
    cluster.add_member(5)?;
    let client = cluster.client();
    let vol = new_volume(&client, "main").await?;
    let voters =
        |s: &meridian_proto::pb::meta::StatusResponse| s.members.iter().filter(|m| m.voter).count();
    let leader = cluster.wait_leader()?;
    assert_eq!(voters(&cluster.status(leader).context("status")?), 5);

    for id in [4u64, 5] {
        let out = Command::new(MERIDIAN)
            .args([
                "admin",
                "remove-member",
                "--meta",
                &cluster.addrs().join(","),
                "--id",
                &id.to_string(),
            ])
            .output()?;
        assert!(
            out.status.success(),
            "remove {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cluster.nodes[3].kill();
    cluster.nodes[4].kill();
    let leader = cluster.wait_leader()?;
    let status = cluster.status(leader).context("status")?;
    assert_eq!(voters(&status), 3);
    assert_eq!(status.members.len(), 3);

    // With 4 and 5 gone from the quorum, one more dead member still leaves a majority.
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    cluster.nodes[follower].kill();
    let only_live: Vec<String> = (0..3)
        .filter(|i| *i != follower)
        .map(|i| cluster.nodes[i].addr.clone())
        .collect();
    let live = MetaClient::new(only_live);
    attr_of(live.mutate(&mkdir_op(vol.root, "still-writable")).await?);
    Ok(())
}

/// A group of mixed versions: members older than the Calls stream answer it as
/// unimplemented (`--no-calls-stream`), and a client asks them through unary calls. Every
/// change and query goes through, across a change of leader from the new member to an old
/// one; a client taking early answers counts none, as the old followers send no notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_uses_unary_calls_with_members_older_than_the_calls_stream() -> Result<()> {
    let mut cluster = MetaCluster::start(1, &[])?;
    cluster.extra_args.push("--no-calls-stream".into());
    cluster.add_member(2)?;
    cluster.add_member(3)?;
    let client = cluster.client();
    client.set_early_answers(true);
    let vol = new_volume(&client, "mixed").await?;
    let dir = attr_of(client.mutate(&mkdir_op(vol.root, "d")).await?);
    let mut made = BTreeSet::new();
    for i in 0..20 {
        let name = format!("a{i}");
        client.mutate(&create_op(dir.ino, &name)).await?;
        made.insert(name);
    }
    // The new member gone, an old one leads (the new one, which started the group, most
    // likely led until now).
    cluster.nodes[0].kill();
    let next = cluster.wait_leader()?;
    assert_ne!(next, 0, "an old member leads");
    for i in 0..20 {
        let name = format!("b{i}");
        client
            .mutate(&create_op(dir.ino, &name))
            .await
            .with_context(|| format!("create {name} through an old leader"))?;
        made.insert(name);
    }
    let names: BTreeSet<String> = list(&client, dir.ino, false).await?.into_iter().collect();
    assert_eq!(
        names, made,
        "every change made through either kind of member"
    );
    let (_, taken) = client.early_answers();
    assert_eq!(
        taken, 0,
        "an early answer taken without a majority's notices"
    );
    Ok(())
}

/// A member restarted on its address while another socket holds that port (any test's
/// outgoing connection or listener may be given it while the member is down) starts once
/// the port is free, rather than failing the test that restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_on_a_port_held_for_a_while_starts_once_it_is_free() -> Result<()> {
    let mut cluster = MetaCluster::start(1, &[])?;
    let client = cluster.client();
    let vol = new_volume(&client, "held").await?;
    let addr = cluster.nodes[0].addr.clone();
    assert!(cluster.nodes[0].terminate()?.success(), "graceful stop");
    let holder = std::net::TcpListener::bind(&addr)?;
    // Let go of the port once the member has found it taken.
    let log = cluster.nodes[0].log.clone();
    let release = std::thread::spawn(move || {
        let found = wait_for(Duration::from_secs(60), "the port found taken", || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("Address already in use"))
        });
        drop(holder);
        found.map(|_| ())
    });
    cluster.nodes[0].restart_on(&addr)?;
    release.join().expect("releasing thread")?;
    cluster.wait_leader()?;
    // The member it was: its namespace kept, and serving.
    let client = cluster.client();
    attr_of(client.mutate(&mkdir_op(vol.root, "after")).await?);
    assert_eq!(list(&client, vol.root, false).await?, ["after"]);
    Ok(())
}

/// A member that was down while entries of more bytes than one message may carry (a
/// member takes at most 64 MiB in one) were written catches up: the leader sends it the
/// entries behind in appends bounded in bytes, not in one append of up to 300 entries
/// that it would refuse at every try. 400 extended attributes of 64 KiB of random bytes,
/// each an entry of about 260 KiB of JSON: about 100 MiB behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_by_more_than_one_message_carries_catches_up() -> Result<()> {
    let mut cluster = MetaCluster::start(3, &[])?;
    let client = cluster.client();
    let (_, a) = dir_of_files(&client, 1).await?;
    let file = lookup(&client, a.ino, "file-000", false).await?;
    let leader = cluster.wait_leader()?;
    let down = (0..3).find(|i| *i != leader).context("a follower")?;
    cluster.nodes[down].kill();
    let mut value = vec![0u8; XATTR_VALUE_MAX];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut all = Vec::new();
    for i in 0..400u32 {
        for b in value.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Three digits each in the entry's JSON (bytes go as numbers): 300 entries,
            // what openraft sends at once, come to about 75 MiB.
            *b = 100 + (seed % 156) as u8;
        }
        all.push(value.clone());
        client
            .mutate(&Op::SetXattr {
                ino: file.ino,
                name: format!("user.big-{}", i % 8).into_bytes(),
                value: value.clone(),
                mode: XattrMode::Any,
                creds: Creds::root(),
            })
            .await?;
    }
    let addr = cluster.nodes[down].addr.clone();
    cluster.nodes[down].restart_on(&addr)?;
    let target = cluster
        .status(leader)
        .context("leader status")?
        .last_applied;
    applied(&cluster, down, target, Duration::from_secs(60))
        .with_context(|| log_tail(&cluster.nodes[leader].log, 10))?;
    // It holds what was written last, read from it alone (its reads follow what it
    // applied, a little behind its log).
    let only_it = MetaClient::new(vec![addr]);
    let get = Query::GetXattr {
        ino: file.ino,
        name: b"user.big-7".to_vec(),
        creds: Creds::root(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = only_it.query(&get, true).await?;
        if matches!(&reply, QueryReply::Bytes(v) if *v == value) {
            break;
        }
        let seen = match &reply {
            QueryReply::Bytes(v) => all.iter().position(|x| x == v),
            _ => None,
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "the member holds the value written {seen:?}th, not the last"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
