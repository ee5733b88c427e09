//! Allocator scenarios from issue 17, step by step.
use bulkhead_pool::*;
use bulkhead_pool_proto::{ErrorCode, RefuseReason, SessionId};
use std::time::{Duration, Instant};

fn spec(name: &str, program: &str, size: u32, max: u32) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        program: program.into(),
        size,
        max,
        min_idle: 0,
        recycle_after: None,
    }
}

fn req(program: &str, user: &str, wait_ms: u64) -> Request {
    Request {
        program: program.into(),
        user: user.into(),
        max_sessions: 10,
        wait: Duration::from_millis(wait_ms),
    }
}

/// A pool whose partitions have all booted.
fn ready(a: &mut Allocator, s: PoolSpec) {
    for act in a.add_pool(s).unwrap() {
        let Action::Boot { partition, from } = act else {
            panic!("{act:?}")
        };
        assert_eq!(from, Start::Cold);
        assert!(a.partition_ready(&partition).unwrap().is_empty());
    }
}

/// Pool `p` of one ready partition `p-1` serving `echo`.
fn one_pool() -> Allocator {
    let mut a = Allocator::new();
    ready(&mut a, spec("p", "echo", 1, 1));
    a
}

fn answer(actions: &[Action], id: RequestId) -> Result<Allocation, RefuseReason> {
    let found: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Answer { request, result } if *request == id => Some(result.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{id:?} answered {} times in {actions:?}",
        found.len()
    );
    found.into_iter().next().unwrap()
}

fn served(a: &mut Allocator, r: Request, now: Instant) -> Allocation {
    let (id, acts) = a.request(r, now);
    answer(&acts, id).unwrap()
}

#[test]
fn allocate_alice_then_deallocate_with_confirm() {
    let mut a = Allocator::new();
    ready(&mut a, spec("echo", "echo", 2, 2));
    let names: Vec<_> = a
        .partitions_of("echo")
        .map(|p| p.primary_id.clone())
        .collect();
    assert_eq!(names, ["echo-1", "echo-2"]);

    let now = Instant::now();
    let al = served(&mut a, req("echo", "alice", 0), now);
    assert_eq!(al.alternate_id, "alice");
    let p = a.partition(&al.partition).unwrap();
    assert_eq!(p.state, PartitionState::InSession(al.session));
    assert_eq!(p.alternate_id.as_deref(), Some("alice"));

    let acts = a.deallocate(al.session, true).unwrap();
    assert_eq!(
        acts,
        [Action::Cleanup {
            partition: al.partition.clone(),
            session: al.session
        }]
    );
    // The alternate id stays while the program cleans up.
    assert_eq!(
        a.partition(&al.partition).unwrap().state,
        PartitionState::Cleaning(al.session)
    );
    assert_eq!(
        a.partition(&al.partition).unwrap().alternate_id.as_deref(),
        Some("alice")
    );
    // A second DEALLOCATE of the same session is refused and changes nothing.
    assert_eq!(
        a.deallocate(al.session, true),
        Err(AllocError::NotInSession(al.session))
    );

    let acts = a.cleanup_done(al.session, true).unwrap();
    assert_eq!(
        acts,
        [Action::Confirmed {
            session: al.session
        }]
    );
    let p = a.partition(&al.partition).unwrap();
    assert_eq!(
        (p.state, p.alternate_id.clone(), p.sessions_served),
        (PartitionState::Idle, None, 1)
    );
    assert_eq!(
        a.cleanup_done(al.session, true),
        Err(AllocError::UnknownSession(al.session))
    );
    a.check().unwrap();
}

#[test]
fn each_program_lands_on_its_pool() {
    let mut a = Allocator::new();
    ready(&mut a, spec("web", "http", 1, 1));
    ready(&mut a, spec("db", "sql", 1, 1));
    let now = Instant::now();
    assert_eq!(
        served(&mut a, req("sql", "alice", 0), now).partition,
        "db-1"
    );
    assert_eq!(
        served(&mut a, req("http", "alice", 0), now).partition,
        "web-1"
    );
}

#[test]
fn six_on_two_served_in_order_and_a_seventh_times_out() {
    let mut a = Allocator::new();
    ready(&mut a, spec("p", "echo", 2, 2));
    let t0 = Instant::now();
    let mut ids = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..6 {
        let (id, acts) = a.request(req("echo", &format!("u{i}"), 60_000), t0);
        if i < 2 {
            sessions.push(answer(&acts, id).unwrap());
        } else {
            assert!(acts.is_empty(), "{acts:?}");
        }
        ids.push(id);
    }
    assert_eq!(a.queue_len(), 4);
    let (late, acts) = a.request(req("echo", "late", 50), t0);
    assert!(acts.is_empty());

    // Nothing expires early; the short one is refused at its deadline, alone.
    assert!(a.tick(t0 + Duration::from_millis(49)).is_empty());
    let acts = a.tick(t0 + Duration::from_millis(50));
    assert_eq!(answer(&acts, late), Err(RefuseReason::PoolExhausted));
    assert_eq!(acts.len(), 1);

    // Each freed partition goes to the longest waiter.
    let mut order = Vec::new();
    let mut next = 2;
    while let Some(s) = sessions.pop() {
        a.deallocate(s.session, true).unwrap();
        let acts = a.cleanup_done(s.session, true).unwrap();
        if next < 6 {
            let al = answer(&acts, ids[next]).unwrap();
            assert_eq!(al.partition, s.partition);
            assert_eq!(al.alternate_id, format!("u{next}"));
            order.push(next);
            sessions.insert(0, al);
            next += 1;
        }
        a.check().unwrap();
    }
    assert_eq!(order, [2, 3, 4, 5]);
    assert_eq!(a.queue_len(), 0);
}

#[test]
fn refusals_change_nothing() {
    let mut a = one_pool();
    let now = Instant::now();
    let before: Vec<Partition> = a.partitions_of("p").cloned().collect();
    let (id, acts) = a.request(req("nope", "alice", 1000), now);
    assert_eq!(answer(&acts, id), Err(RefuseReason::UnknownProgram));
    let limited = Request {
        max_sessions: 0,
        ..req("echo", "alice", 1000)
    };
    let (id, acts) = a.request(limited, now);
    assert_eq!(answer(&acts, id), Err(RefuseReason::UserLimit));
    assert_eq!(a.partitions_of("p").cloned().collect::<Vec<_>>(), before);
    assert_eq!((a.queue_len(), a.session_count()), (0, 0));

    // Busy pool, no wait: exhausted at once.
    served(&mut a, req("echo", "alice", 0), now);
    let (id, acts) = a.request(req("echo", "bob", 0), now);
    assert_eq!(answer(&acts, id), Err(RefuseReason::PoolExhausted));
    assert_eq!(a.queue_len(), 0);
}

#[test]
fn per_user_limit_counts_queued_requests() {
    let mut a = one_pool();
    let now = Instant::now();
    let two = |u: &str| Request {
        max_sessions: 2,
        ..req("echo", u, 1000)
    };
    served(&mut a, two("alice"), now);
    let (_, acts) = a.request(two("alice"), now); // queued: 2 of 2
    assert!(acts.is_empty());
    let (id, acts) = a.request(two("alice"), now);
    assert_eq!(answer(&acts, id), Err(RefuseReason::UserLimit));
    let (_, acts) = a.request(two("bob"), now); // another user still queues
    assert!(acts.is_empty());
    assert_eq!(a.queue_len(), 2);
}

#[test]
fn recycle_after_one_restores_from_template() {
    let mut a = Allocator::new();
    ready(
        &mut a,
        PoolSpec {
            recycle_after: Some(1),
            ..spec("p", "echo", 1, 1)
        },
    );
    a.set_template("p", true).unwrap();
    let now = Instant::now();
    let al = served(&mut a, req("echo", "alice", 0), now);
    a.deallocate(al.session, true).unwrap();
    let acts = a.cleanup_done(al.session, true).unwrap();
    assert_eq!(
        acts,
        [
            Action::Confirmed {
                session: al.session
            },
            Action::Recycle {
                partition: "p-1".into(),
                from: Start::Template
            }
        ]
    );
    let p = a.partition("p-1").unwrap();
    assert_eq!(
        (p.state, p.alternate_id.clone()),
        (PartitionState::Recycling, None)
    );
    // Bob waits for the fresh partition, not the one alice used.
    let (id, acts) = a.request(req("echo", "bob", 1000), now);
    assert!(acts.is_empty());
    let acts = a.partition_ready("p-1").unwrap();
    assert_eq!(answer(&acts, id).unwrap().alternate_id, "bob");
}

#[test]
fn program_crash_ends_session_and_recycles_failing_starts_stop() {
    let mut a = one_pool();
    let al = served(&mut a, req("echo", "alice", 0), Instant::now());
    let acts = a.partition_failed("p-1").unwrap();
    assert_eq!(
        acts,
        [
            Action::EndSession {
                session: al.session,
                code: ErrorCode::ProgramDied
            },
            Action::Recycle {
                partition: "p-1".into(),
                from: Start::Cold
            }
        ]
    );
    assert_eq!(a.session_count(), 0);
    assert_eq!(
        a.deallocate(al.session, true),
        Err(AllocError::UnknownSession(al.session))
    );
    // Starts that keep failing end in Failed, with no further action, until retried.
    for _ in 1..MAX_START_FAILURES {
        assert!(matches!(
            a.partition_failed("p-1").unwrap()[..],
            [Action::Recycle { .. }]
        ));
    }
    assert!(a.partition_failed("p-1").unwrap().is_empty());
    assert_eq!(a.partition("p-1").unwrap().state, PartitionState::Failed);
    assert!(matches!(
        a.retry("p-1").unwrap()[..],
        [Action::Recycle { .. }]
    ));
    assert!(a.partition_ready("p-1").unwrap().is_empty());
    assert_eq!(a.partition("p-1").unwrap().state, PartitionState::Idle);
}

#[test]
fn cleanup_failure_is_reported_and_recycles() {
    let mut a = one_pool();
    let al = served(&mut a, req("echo", "alice", 0), Instant::now());
    a.deallocate(al.session, true).unwrap();
    let acts = a.cleanup_done(al.session, false).unwrap();
    assert_eq!(
        acts[0],
        Action::EndSession {
            session: al.session,
            code: ErrorCode::CleanupFailed
        }
    );
    assert!(matches!(acts[1], Action::Recycle { .. }));
}

#[test]
fn vanished_client_gets_no_confirmation() {
    let mut a = one_pool();
    let al = served(&mut a, req("echo", "alice", 0), Instant::now());
    a.deallocate(al.session, false).unwrap();
    assert!(a.cleanup_done(al.session, true).unwrap().is_empty());
    assert_eq!(a.partition("p-1").unwrap().state, PartitionState::Idle);
}

#[test]
fn grows_to_max_under_load_and_shrinks_back_to_size() {
    let mut a = Allocator::new();
    ready(
        &mut a,
        PoolSpec {
            min_idle: 1,
            ..spec("p", "echo", 1, 3)
        },
    );
    let now = Instant::now();
    let s1 = served(&mut a, req("echo", "u1", 0), now);
    // min idle 1: a second partition is booted at once.
    assert_eq!(a.partitions_of("p").count(), 2);
    a.partition_ready("p-2").unwrap();
    let s2 = served(&mut a, req("echo", "u2", 0), now);
    a.partition_ready("p-3").unwrap();
    let s3 = served(&mut a, req("echo", "u3", 0), now);
    // At max: nothing more is booted; the next one waits.
    assert_eq!(a.partitions_of("p").count(), 3);
    let (_, acts) = a.request(req("echo", "u4", 1000), now);
    assert!(acts.is_empty());
    for s in [s1, s2, s3] {
        a.deallocate(s.session, false).unwrap();
        a.cleanup_done(s.session, true).unwrap();
        a.check().unwrap();
    }
    // u4 holds one; the pool keeps one idle and destroys the third.
    let states: Vec<_> = a.partitions_of("p").map(|p| p.state.as_str()).collect();
    assert_eq!(states, ["in-session", "idle"]);
}

#[test]
fn resize_and_remove() {
    let mut a = Allocator::new();
    ready(&mut a, spec("p", "echo", 2, 2));
    let now = Instant::now();
    let al = served(&mut a, req("echo", "alice", 0), now);
    let acts = a.resize("p", 3, 4).unwrap();
    assert_eq!(
        acts,
        [Action::Boot {
            partition: "p-3".into(),
            from: Start::Cold
        }]
    );
    assert!(matches!(a.resize("p", 3, 2), Err(AllocError::BadSpec(_))));
    let acts = a.resize("p", 1, 1).unwrap();
    // Idle ones over the new max go; the busy one stays until its session ends.
    assert!(
        acts.iter().all(|x| matches!(x, Action::Destroy { .. })),
        "{acts:?}"
    );
    a.check().unwrap();

    ready(&mut a, spec("q", "other", 1, 1));
    let (id, acts) = a.request(req("echo", "bob", 1000), now);
    assert!(acts.is_empty());
    let acts = a.remove_pool("p").unwrap();
    assert!(acts.contains(&Action::EndSession {
        session: al.session,
        code: ErrorCode::Shutdown
    }));
    assert_eq!(answer(&acts, id), Err(RefuseReason::UnknownProgram));
    assert_eq!(a.partitions_of("p").count(), 0);
    assert!(a.partition("q-1").is_some());
}

#[test]
fn bad_specs_refused() {
    let mut a = Allocator::new();
    for s in [
        spec("p", "echo", 0, 1),
        spec("p", "echo", 2, 1),
        spec("p q", "echo", 1, 1),
        spec("p", "", 1, 1),
        PoolSpec {
            recycle_after: Some(0),
            ..spec("p", "echo", 1, 1)
        },
        PoolSpec {
            min_idle: 5,
            ..spec("p", "echo", 1, 2)
        },
    ] {
        assert!(matches!(a.add_pool(s), Err(AllocError::BadSpec(_))));
    }
    a.add_pool(spec("p", "echo", 1, 1)).unwrap();
    assert_eq!(
        a.add_pool(spec("p", "echo", 1, 1)),
        Err(AllocError::PoolExists("p".into()))
    );
    assert_eq!(a.pools().count(), 1);
    let _ = SessionId(1);
}

#[test]
fn partition_dying_in_cleanup_after_a_vanished_client_tells_nobody() {
    let mut a = one_pool();
    let al = served(&mut a, req("echo", "alice", 0), Instant::now());
    a.deallocate(al.session, false).unwrap();
    let acts = a.partition_failed("p-1").unwrap();
    assert_eq!(
        acts,
        [Action::Recycle {
            partition: "p-1".into(),
            from: Start::Cold
        }]
    );
    assert_eq!(a.session_count(), 0);
}

#[test]
fn partition_dying_in_cleanup_with_confirm_tells_the_client() {
    let mut a = one_pool();
    let al = served(&mut a, req("echo", "alice", 0), Instant::now());
    a.deallocate(al.session, true).unwrap();
    let acts = a.partition_failed("p-1").unwrap();
    assert_eq!(
        acts[0],
        Action::EndSession {
            session: al.session,
            code: ErrorCode::ProgramDied
        }
    );
}

#[test]
fn shrinking_below_a_starting_partition_keeps_the_pool_at_max() {
    let mut a = Allocator::new();
    ready(&mut a, spec("p", "echo", 1, 2));
    a.resize("p", 2, 2).unwrap(); // boots p-2
                                  // Over the new max: the idle one goes now, the starting one is kept.
    let acts = a.resize("p", 1, 1).unwrap();
    assert_eq!(
        acts,
        [Action::Destroy {
            partition: "p-1".into()
        }]
    );
    assert!(a.partition_ready("p-2").unwrap().is_empty());
    let states: Vec<_> = a.partitions_of("p").map(|p| p.state.as_str()).collect();
    assert_eq!(states, ["idle"]);
    a.check().unwrap();
}

#[test]
fn a_program_served_by_two_pools_uses_both_then_waits() {
    let mut a = Allocator::new();
    ready(&mut a, spec("small", "echo", 1, 1));
    ready(
        &mut a,
        PoolSpec {
            recycle_after: Some(1),
            ..spec("fresh", "echo", 1, 1)
        },
    );
    let t0 = Instant::now();
    let mut got: Vec<String> = (0..2)
        .map(|i| served(&mut a, req("echo", &format!("u{i}"), 0), t0).partition)
        .collect();
    got.sort();
    assert_eq!(got, ["fresh-1", "small-1"]);
    let (id, acts) = a.request(req("echo", "late", 2000), t0);
    assert!(acts.is_empty());
    assert_eq!(a.next_deadline(), Some(t0 + Duration::from_millis(2000)));
    let acts = a.tick(t0 + Duration::from_millis(2000));
    assert_eq!(answer(&acts, id), Err(RefuseReason::PoolExhausted));
    assert_eq!(a.next_deadline(), None);
}

#[test]
fn removing_a_pool_tells_only_clients_still_there() {
    let mut a = Allocator::new();
    ready(&mut a, spec("p", "echo", 2, 2));
    let now = Instant::now();
    let stays = served(&mut a, req("echo", "alice", 0), now);
    let gone = served(&mut a, req("echo", "bob", 0), now);
    a.deallocate(gone.session, false).unwrap();
    let acts = a.remove_pool("p").unwrap();
    let ended: Vec<_> = acts
        .iter()
        .filter_map(|x| match x {
            Action::EndSession { session, code } => Some((*session, *code)),
            _ => None,
        })
        .collect();
    assert_eq!(ended, [(stays.session, ErrorCode::Shutdown)]);
    assert_eq!(a.session_count(), 0);
}
