use super::*;

fn reply(id: u64, failed: bool) -> CallReply {
    let reply = if failed {
        call_reply::Reply::Error(meridian_proto::pb::meta::CallError {
            code: 14,
            message: "gone".into(),
        })
    } else {
        call_reply::Reply::Mutate(Default::default())
    };
    CallReply {
        id,
        reply: Some(reply),
        leader: String::new(),
        early: None,
    }
}

#[test]
fn an_answer_named_settled_before_or_after_it_is_ready_never_goes() {
    let s = Settled::default();
    // Named while its handler runs.
    s.answering_early(1);
    s.taken(&[1]);
    assert!(s.finished(reply(1, false)).is_none());
    // Named once held.
    s.answering_early(2);
    assert!(s.finished(reply(2, false)).is_none(), "held");
    s.taken(&[2]);
    let (due, next, closed) = s.due(Instant::now() + HOLD * 2);
    assert!(due.is_empty() && next.is_none() && !closed);
    assert!(s.lock().calls.is_empty(), "nothing is kept of either");
}

#[test]
fn calls_not_answered_early_and_failures_go_at_once_and_names_of_others_change_nothing() {
    let s = Settled::default();
    assert_eq!(s.finished(reply(1, false)).map(|r| r.id), Some(1));
    s.answering_early(2);
    assert_eq!(
        s.finished(reply(2, true)).map(|r| r.id),
        Some(2),
        "a failure after an early answer goes at once"
    );
    s.answering_early(3);
    s.not_answered_early(3);
    assert_eq!(s.finished(reply(3, false)).map(|r| r.id), Some(3));
    s.taken(&[1, 2, 3, 99]);
    assert!(
        s.lock().calls.is_empty(),
        "names of calls not held keep nothing"
    );
}

#[test]
fn an_answer_not_named_goes_after_the_hold_and_every_held_one_when_the_stream_ends() {
    let s = Settled::default();
    s.answering_early(1);
    assert!(s.finished(reply(1, false)).is_none());
    let start = Instant::now();
    let (due, next, _) = s.due(start);
    assert!(due.is_empty());
    let next = next.expect("a time for it");
    assert!(next > start && next <= start + HOLD);
    let (due, _, _) = s.due(next);
    assert_eq!(due.iter().map(|r| r.id).collect::<Vec<_>>(), [1]);
    // Closed: held ones go at once, running ones answer themselves, none is held again.
    s.answering_early(2);
    assert!(s.finished(reply(2, false)).is_none());
    s.answering_early(3);
    s.close();
    let (due, next, closed) = s.due(Instant::now());
    assert_eq!(due.iter().map(|r| r.id).collect::<Vec<_>>(), [2]);
    assert!(closed && next.is_none());
    assert_eq!(s.finished(reply(3, false)).map(|r| r.id), Some(3));
    s.answering_early(4);
    assert_eq!(s.finished(reply(4, false)).map(|r| r.id), Some(4));
}

#[tokio::test]
async fn the_sender_sends_what_is_due_and_ends_with_the_stream() {
    let s = Arc::new(Settled::default());
    let (tx, mut rx) = mpsc::channel(8);
    let run = tokio::spawn(s.clone().run(tx));
    s.answering_early(7);
    assert!(s.finished(reply(7, false)).is_none());
    let got = rx.recv().await.expect("sent").expect("an answer");
    assert_eq!(got.id, 7);
    s.answering_early(8);
    assert!(s.finished(reply(8, false)).is_none());
    s.close();
    let got = rx
        .recv()
        .await
        .expect("sent at the end")
        .expect("an answer");
    assert_eq!(got.id, 8);
    run.await.unwrap();
    assert!(rx.recv().await.is_none(), "the sender is gone");
}
