//! Early answers (docs/adr/0020) on a real three-member group: a client takes the leader's
//! early answer only once a majority of members hold the entry durable (the members'
//! notices, the leader's own among them), a change so answered is seen by the next
//! linearizable read of any client, a change answered early by a leader whose followers
//! never got it is made by the next leader rather than lost, a change taken early
//! survives its leader, and on the wire a follower names a client's entries to its one
//! subscription per stream, the leader its own entries to a subscription that asks for
//! them, an early answer says whether the leader's copy counts from its notice as its
//! call asked, and the answer after the commit of a call taken early comes only if no
//! later call names it settled.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{MetaCluster, SlowFollowers, create_op, new_volume};
use meridian_client::MetaClient;
use meridian_proto::ns::*;

/// `client`, taking early answers.
fn early(client: MetaClient) -> MetaClient {
    client.set_early_answers(true);
    client
}

async fn new_file(client: &MetaClient) -> Result<Attr> {
    let root = new_volume(client, "early").await?;
    match client.mutate(&create_op(root, "f")).await? {
        Reply::Attr(a) => Ok(a),
        other => anyhow::bail!("unexpected {other:?}"),
    }
}

fn chmod(ino: meridian_proto::InodeId, perm: u16) -> Op {
    Op::SetAttr {
        ino,
        set: SetAttr {
            perm: Some(perm),
            ..Default::default()
        },
        creds: Creds::root(),
    }
}

async fn perm_of(client: &MetaClient, ino: meridian_proto::InodeId) -> Result<u16> {
    match client.query(&Query::GetAttr { ino }, false).await? {
        QueryReply::Attr(a) => Ok(a.perm),
        other => anyhow::bail!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_answered_early_is_read_by_every_clients_next_linearizable_query() -> Result<()> {
    let group = SlowFollowers::start(40)?;
    let writer = group.client();
    let reader = group.client();
    let file = new_file(&writer).await?;
    for i in 0..40u16 {
        let perm = 0o600 | (i % 0o100);
        writer.mutate(&chmod(file.ino, perm)).await?;
        // The reader asks right after the writer's answer, which the followers' notices
        // gave before the leader heard of the commit from them.
        assert_eq!(perm_of(&reader, file.ino).await?, perm, "change {i}");
    }
    let (heard, taken) = writer.early_answers();
    assert!(
        taken > 0 && taken <= heard,
        "no early answer taken ({taken} of {heard} heard): the test shows nothing"
    );
    // A client told not to take them asks for none.
    let plain = MetaClient::new(group.members.iter().map(|m| m.addr.clone()).collect());
    plain.set_early_answers(false);
    plain.mutate(&chmod(file.ino, 0o600)).await?;
    assert_eq!(plain.early_answers(), (0, 0));
    // A client takes them unless told not to.
    let default = MetaClient::new(group.members.iter().map(|m| m.addr.clone()).collect());
    for i in 0..40u16 {
        if default.early_answers().1 > 0 {
            break;
        }
        default.mutate(&chmod(file.ino, 0o640 | (i % 8))).await?;
    }
    assert!(
        default.early_answers().1 > 0,
        "a client by default took none"
    );
    drop(group.dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_waits_for_a_majority_and_a_change_no_follower_has_is_made_again()
-> Result<()> {
    let mut cluster = MetaCluster::start(3, &[])?;
    let leader = cluster.wait_leader()?;
    let client = std::sync::Arc::new(early(cluster.client()));
    let file = new_file(&client).await?;
    // Until the client takes early answers (its streams to every member are open).
    for _ in 0..500 {
        if client.early_answers().1 > 0 {
            break;
        }
        client.mutate(&chmod(file.ino, 0o640)).await?;
    }
    anyhow::ensure!(client.early_answers().1 > 0, "no early answer taken");
    // Everything answered so far has applied on the leader (a linearizable read waits
    // for it), so the next change applies ahead alone.
    perm_of(&client, file.ino).await?;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &f in &followers {
        cluster.nodes[f].pause(true);
    }
    let (heard, _) = client.early_answers();
    let change = tokio::spawn({
        let c = client.clone();
        async move { c.mutate(&chmod(file.ino, 0o604)).await }
    });
    // The leader answers early (its own copy written, and noticed once durable) ...
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        while client.early_answers().0 == heard {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    // ... and without a follower's copy that answer does not hold: the call still waits,
    // however long it is watched.
    let mut finished_alone = false;
    if got.is_ok() {
        for _ in 0..100 {
            finished_alone |= change.is_finished();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // The leader dies with the only copy; the followers elect another.
    cluster.nodes[leader].kill();
    for &f in &followers {
        cluster.nodes[f].pause(false);
    }
    got.context("the leader never answered early with its followers stopped")?;
    assert!(
        !finished_alone,
        "a call took an early answer no follower's copy backed"
    );
    let new_leader = cluster.wait_leader()?;
    assert_ne!(new_leader, leader);
    // The call goes on to the next leader with its request id, which makes the change.
    tokio::time::timeout(Duration::from_secs(60), change)
        .await
        .context("the call never completed")???;
    assert_eq!(perm_of(&client, file.ino).await?, 0o604);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_taken_early_survives_its_leader_killed_at_once() -> Result<()> {
    let mut cluster = MetaCluster::start(3, &[])?;
    let leader = cluster.wait_leader()?;
    let client = early(cluster.client());
    let file = new_file(&client).await?;
    // The last change the client takes early before its leader is killed.
    let mut perm = 0;
    for i in 0..500u16 {
        let taken = client.early_answers().1;
        let p = 0o600 | (i % 0o100);
        client.mutate(&chmod(file.ino, p)).await?;
        if client.early_answers().1 > taken {
            perm = p;
            break;
        }
    }
    anyhow::ensure!(perm != 0, "no change taken early");
    cluster.nodes[leader].kill();
    assert_ne!(cluster.wait_leader()?, leader);
    assert_eq!(
        perm_of(&client, file.ino).await?,
        perm,
        "a change taken early was lost"
    );
    Ok(())
}

/// The next answer on a Calls stream.
async fn next_reply(
    answers: &mut tonic::Streaming<meridian_proto::pb::meta::CallReply>,
) -> Result<meridian_proto::pb::meta::CallReply> {
    tokio::time::timeout(Duration::from_secs(20), answers.message())
        .await??
        .context("the stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_notices_a_key_holders_entries_once_per_stream_on_the_wire() -> Result<()> {
    use meridian_proto::pb::meta::{Call, MutateRequest, Notices, call, call_reply};
    use meridian_proto::{CLIENT_KEY_LEN, client_id_of};
    use std::collections::BTreeSet;
    use tonic::Code;

    let mut cluster = MetaCluster::start(3, &[])?;
    let leader = cluster.wait_leader()?;
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let connect = |i: usize| {
        let addr = cluster.nodes[i].addr.clone();
        async move {
            anyhow::Ok(meridian_proto::channels::meta_client(
                meridian_proto::channels::connect(&addr)
                    .await
                    .map_err(anyhow::Error::msg)?,
            ))
        }
    };
    let open = |i: usize| {
        let connect = connect(i);
        async move {
            let (calls, rx) = tokio::sync::mpsc::unbounded_channel();
            let answers = connect
                .await?
                .calls(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
                .await?
                .into_inner();
            anyhow::Ok((calls, answers))
        }
    };
    let refused = |reply: &meridian_proto::pb::meta::CallReply, id: u64| {
        assert_eq!(reply.id, id);
        match &reply.reply {
            Some(call_reply::Reply::Error(e)) => {
                assert_eq!(Code::from(e.code), Code::InvalidArgument)
            }
            other => panic!("call {id} answered {other:?}"),
        }
    };
    let subscribe = |id: u64, key: &[u8]| Call {
        id,
        call: Some(call::Call::Notices(Notices {
            client_key: key.to_vec().into(),
            led: false,
        })),
        early: false,
        leader_notices: false,
        settled: Vec::new(),
    };
    let key = [0x5e; CLIENT_KEY_LEN];
    let client_id = client_id_of(&key);
    let (calls, mut answers) = open(follower).await?;
    for id in [1, 2] {
        calls.send(subscribe(id, &key))?;
    }
    // The second subscription on the stream is refused; the first is never answered but
    // by notices.
    refused(&next_reply(&mut answers).await?, 2);
    // Another client may not follow this one by its id, which the change feed shows: a
    // subscription names the subscriber's own key, and one without a key is refused.
    let other_key = [0x0f; CLIENT_KEY_LEN];
    let other_id = client_id_of(&other_key);
    let (other_calls, mut other_answers) = open(follower).await?;
    other_calls.send(subscribe(1, &[]))?;
    refused(&next_reply(&mut other_answers).await?, 1);
    other_calls.send(subscribe(2, &other_key))?;
    // A change of each client, made through the leader, the first client's first.
    let mut leader_rpc = connect(leader).await?;
    for (name, client_id) in [("noticed", client_id), ("other", other_id)] {
        let op = Op::CreateVolume {
            name: name.into(),
            policy: VolumePolicy::default(),
        };
        leader_rpc
            .mutate(MutateRequest {
                op: serde_json::to_vec(&op)?.into(),
                client_id,
                request_id: 1,
                ..Default::default()
            })
            .await?;
    }
    // The follower names each client's entry to that client's subscription alone.
    let places = |reply: meridian_proto::pb::meta::CallReply, id: u64| {
        assert_eq!(reply.id, id);
        match reply.reply {
            Some(call_reply::Reply::Durable(d)) => {
                assert_eq!(d.member, cluster.nodes[follower].id);
                assert!(
                    !d.entries.is_empty() && d.entries.iter().all(|p| p.term > 0 && p.index > 0)
                );
                d.entries
                    .iter()
                    .map(|p| (p.term, p.index))
                    .collect::<BTreeSet<_>>()
            }
            other => panic!("not a notice: {other:?}"),
        }
    };
    let first = places(next_reply(&mut answers).await?, 1);
    let second = places(next_reply(&mut other_answers).await?, 2);
    assert!(
        first.is_disjoint(&second),
        "one client's entries were named to another: {first:?} {second:?}"
    );
    assert!(
        first.iter().max() < second.iter().min(),
        "the second client's first notice is of its own later change"
    );
    Ok(())
}

/// A group of three with a file, and a `Calls` stream opened to its leader by hand.
async fn leader_stream() -> Result<(
    MetaCluster,
    usize,
    Attr,
    tokio::sync::mpsc::UnboundedSender<meridian_proto::pb::meta::Call>,
    tonic::Streaming<meridian_proto::pb::meta::CallReply>,
)> {
    let mut cluster = MetaCluster::start(3, &[])?;
    let leader = cluster.wait_leader()?;
    let file = new_file(&cluster.client()).await?;
    let channel = meridian_proto::channels::connect(&cluster.nodes[leader].addr)
        .await
        .map_err(anyhow::Error::msg)?;
    let (calls, rx) = tokio::sync::mpsc::unbounded_channel();
    let answers = meridian_proto::channels::meta_client(channel)
        .calls(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((cluster, leader, file, calls, answers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_notices_its_own_copies_to_who_asks_and_says_so_in_its_early_answers()
-> Result<()> {
    use meridian_proto::pb::meta::{Call, MutateRequest, Notices, call, call_reply};
    use meridian_proto::{CLIENT_KEY_LEN, client_id_of};

    let (cluster, leader, file, calls, mut answers) = leader_stream().await?;
    let key = [0x3c; CLIENT_KEY_LEN];
    calls.send(Call {
        id: 1,
        call: Some(call::Call::Notices(Notices {
            client_key: key.to_vec().into(),
            led: true,
        })),
        early: false,
        leader_notices: false,
        settled: Vec::new(),
    })?;
    // Changes of this client's key, asking for early answers: with the leader's copy
    // counted from its notice (odd calls) or from the answer itself (even ones).
    let mut early_seen = [false; 2];
    let mut noticed = false;
    let mut request_id = 0;
    while !(early_seen[0] && early_seen[1] && noticed) {
        request_id += 1;
        anyhow::ensure!(
            request_id <= 400,
            "no early answer of each kind, or no notice"
        );
        let op = chmod(file.ino, 0o600 | (request_id % 0o100) as u16);
        let asks = request_id % 2 == 1;
        calls.send(Call {
            id: 1 + request_id,
            call: Some(call::Call::Mutate(MutateRequest {
                op: serde_json::to_vec(&op)?.into(),
                client_id: client_id_of(&key),
                request_id,
                ..Default::default()
            })),
            early: true,
            leader_notices: asks,
            settled: Vec::new(),
        })?;
        // Every answer to this call, and the notices meanwhile, up to the final answer.
        loop {
            let reply = next_reply(&mut answers).await?;
            match reply.reply {
                Some(call_reply::Reply::Durable(d)) => {
                    assert_eq!(reply.id, 1, "a notice answers the subscription");
                    assert_eq!(d.member, cluster.nodes[leader].id, "the leader's own copy");
                    noticed = true;
                }
                Some(call_reply::Reply::Mutate(_)) if reply.early.is_some() => {
                    let early = reply.early.expect("checked");
                    assert_eq!(reply.id, 1 + request_id);
                    assert_eq!(
                        early.leader_notices, asks,
                        "the early answer says how the leader's copy counts, as asked"
                    );
                    early_seen[usize::from(asks)] = true;
                }
                Some(call_reply::Reply::Mutate(_)) => {
                    assert_eq!(reply.id, 1 + request_id);
                    break;
                }
                other => anyhow::bail!("unexpected answer {other:?}"),
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_after_the_commit_of_a_call_taken_early_comes_only_if_not_named_settled()
-> Result<()> {
    use meridian_proto::pb::meta::{Call, CallReply, MutateRequest, call, call_reply};
    use meridian_proto::{CLIENT_KEY_LEN, client_id_of};

    let (_cluster, _, file, calls, mut answers) = leader_stream().await?;
    let client_id = client_id_of(&[0x7d; CLIENT_KEY_LEN]);
    let change = |id: u64, early: bool, settled: Vec<u64>| -> Result<Call> {
        Ok(Call {
            id,
            call: Some(call::Call::Mutate(MutateRequest {
                op: serde_json::to_vec(&chmod(file.ino, 0o600 | id as u16))?.into(),
                client_id,
                request_id: id,
                ..Default::default()
            })),
            early,
            leader_notices: false,
            settled,
        })
    };
    // The replies up to and including `id`'s answer after the commit.
    async fn until_final(
        answers: &mut tonic::Streaming<CallReply>,
        id: u64,
    ) -> Result<Vec<CallReply>> {
        let mut seen = Vec::new();
        loop {
            let reply = next_reply(answers).await?;
            let done = reply.id == id && reply.early.is_none();
            if let Some(call_reply::Reply::Error(e)) = &reply.reply {
                anyhow::bail!("call {} failed: {}", reply.id, e.message);
            }
            seen.push(reply);
            if done {
                return Ok(seen);
            }
        }
    }
    // A change answered early (a leader of three with its copy durable answers early;
    // the first changes may come before it has the configuration committed: tried
    // until one is).
    let mut taken = None;
    for id in 1..=50 {
        calls.send(change(id, true, Vec::new())?)?;
        let replies = until_final(&mut answers, id).await?;
        if replies.iter().any(|r| r.id == id && r.early.is_some()) {
            taken = Some(id);
            break;
        }
    }
    let first = taken.context("no early answer in 50 changes")?;
    // That one came with its answer after the commit, as nothing named it. The next
    // change answered early (one may apply behind instead: the next is tried).
    let mut seen = Vec::new();
    let mut next = first;
    let mut next_taken = async |calls: &tokio::sync::mpsc::UnboundedSender<Call>,
                                answers: &mut tonic::Streaming<CallReply>,
                                seen: &mut Vec<CallReply>|
           -> Result<u64> {
        loop {
            next += 1;
            anyhow::ensure!(next <= first + 50, "no early answer in 50 changes");
            calls.send(change(next, true, Vec::new())?)?;
            let reply = next_reply(answers).await?;
            anyhow::ensure!(reply.id == next, "a reply to another call: {reply:?}");
            let early = reply.early.is_some();
            seen.push(reply);
            if early {
                return Ok(next);
            }
        }
    };
    let a = next_taken(&calls, &mut answers, &mut seen).await?;
    // The next call names it: its answer after the commit never comes.
    let b = a + 100;
    calls.send(change(b, false, vec![a])?)?;
    seen.extend(until_final(&mut answers, b).await?);
    // A change taken early that no call names: its answer after the commit comes, a
    // while later.
    let c = next_taken(&calls, &mut answers, &mut seen).await?;
    seen.extend(until_final(&mut answers, c).await?);
    let finals_of_a = seen
        .iter()
        .filter(|r| r.id == a && r.early.is_none())
        .count();
    anyhow::ensure!(
        finals_of_a == 0,
        "the answer after the commit of change {a}, named settled, came: {seen:?}"
    );
    Ok(())
}
