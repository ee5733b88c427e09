//! Random allocate / deallocate / cleanup / ready / fail / cancel / time sequences,
//! checked against the promises: no partition in two sessions, FIFO per program,
//! every request answered exactly once (or cancelled), no refusal before its
//! deadline, every session ended exactly once, counts consistent.
use bulkhead_pool::*;
use bulkhead_pool_proto::{RefuseReason, SessionId};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const PROGRAMS: [&str; 3] = ["a", "b", "unknown"];
const USERS: [&str; 3] = ["alice", "bob", "carol"];

#[derive(Debug, Clone)]
enum Op {
    Request {
        program: usize,
        user: usize,
        wait_ms: u64,
    },
    Deallocate {
        pick: usize,
        confirm: bool,
    },
    CleanupDone {
        pick: usize,
        ok: bool,
    },
    Ready {
        pick: usize,
    },
    Fail {
        pick: usize,
    },
    Cancel {
        pick: usize,
    },
    Advance {
        ms: u64,
    },
    Template {
        ready: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..3usize, prop_oneof![Just(0u64), 1..3000u64])
            .prop_map(|(program, user, wait_ms)| Op::Request { program, user, wait_ms }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, confirm)| Op::Deallocate { pick, confirm }),
        3 => (any::<usize>(), prop::bool::weighted(0.9)).prop_map(|(pick, ok)| Op::CleanupDone { pick, ok }),
        3 => any::<usize>().prop_map(|pick| Op::Ready { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Fail { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        2 => (1..2000u64).prop_map(|ms| Op::Advance { ms }),
        1 => any::<bool>().prop_map(|ready| Op::Template { ready }),
    ]
}

#[derive(Default)]
struct Model {
    /// Requests not yet answered nor cancelled: program, deadline.
    waiting: BTreeMap<RequestId, (String, Instant)>,
    answered: BTreeSet<RequestId>,
    /// Live sessions: partition, whether DEALLOCATE asked to confirm.
    sessions: BTreeMap<SessionId, (String, Option<bool>)>,
    ended: BTreeSet<SessionId>,
    /// Partitions the model knows of: primary id -> pool.
    partitions: BTreeMap<String, String>,
    starting: BTreeSet<String>,
}

impl Model {
    fn apply(
        &mut self,
        a: &Allocator,
        acts: Vec<Action>,
        now: Instant,
    ) -> Result<(), TestCaseError> {
        for act in acts {
            match act {
                Action::Answer { request, result } => {
                    prop_assert!(self.answered.insert(request), "{request:?} answered twice");
                    let (program, deadline) =
                        self.waiting.remove(&request).expect("a waiting request");
                    match result {
                        Ok(al) => {
                            // FIFO: nobody earlier for the same program still waits.
                            let earlier = self
                                .waiting
                                .iter()
                                .find(|(id, (p, _))| **id < request && *p == program);
                            prop_assert!(
                                earlier.is_none(),
                                "{request:?} served before {earlier:?}"
                            );
                            prop_assert_eq!(&al.program, &program);
                            let busy = self.sessions.values().any(|(p, _)| *p == al.partition);
                            prop_assert!(!busy, "{} handed out twice", al.partition);
                            prop_assert!(!self.starting.contains(&al.partition));
                            prop_assert!(self
                                .sessions
                                .insert(al.session, (al.partition, None))
                                .is_none());
                        }
                        Err(RefuseReason::PoolExhausted) => {
                            // Refused early only when it asked not to wait (deadline == now then).
                            prop_assert!(
                                deadline <= now,
                                "{request:?} refused before its deadline"
                            );
                        }
                        Err(RefuseReason::UnknownProgram) => {
                            prop_assert_eq!(program.as_str(), "unknown")
                        }
                        Err(RefuseReason::UserLimit) => {}
                        Err(r) => prop_assert!(false, "unexpected refusal {r:?}"),
                    }
                }
                Action::Boot { partition, .. } => {
                    let pool = a
                        .partition(&partition)
                        .expect("booted partition listed")
                        .pool
                        .clone();
                    prop_assert!(self.partitions.insert(partition.clone(), pool).is_none());
                    self.starting.insert(partition);
                }
                Action::Recycle { partition, .. } => {
                    prop_assert!(self.partitions.contains_key(&partition));
                    prop_assert!(!self.sessions.values().any(|(p, _)| *p == partition));
                    self.starting.insert(partition);
                }
                Action::Destroy { partition } => {
                    prop_assert!(self.partitions.remove(&partition).is_some());
                    prop_assert!(!self.sessions.values().any(|(p, _)| *p == partition));
                    self.starting.remove(&partition);
                }
                Action::Cleanup { partition, session } => {
                    prop_assert_eq!(&self.sessions[&session].0, &partition);
                }
                Action::Confirmed { session } => {
                    let (_, confirm) = self.sessions.remove(&session).expect("live session");
                    prop_assert_eq!(confirm, Some(true));
                    prop_assert!(self.ended.insert(session));
                }
                Action::EndSession { session, .. } => {
                    let (_, confirm) = self.sessions.remove(&session).expect("live session");
                    prop_assert_ne!(confirm, Some(false), "no word to a vanished client");
                    prop_assert!(self.ended.insert(session));
                }
            }
        }
        Ok(())
    }

    /// Sessions a silent (no-confirm) cleanup ended: gone from the allocator.
    fn reap(&mut self, a: &Allocator) {
        let gone: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(s, (_, c))| *c == Some(false) && a.session_partition(**s).is_none())
            .map(|(s, _)| *s)
            .collect();
        for s in gone {
            self.sessions.remove(&s);
            self.ended.insert(s);
        }
    }
}

fn pick<T: Clone>(v: &[T], i: usize) -> Option<T> {
    (!v.is_empty()).then(|| v[i % v.len()].clone())
}

fn pools() -> Vec<PoolSpec> {
    let p = |name: &str, program: &str, size, max, min_idle, recycle_after| PoolSpec {
        name: name.into(),
        program: program.into(),
        size,
        max,
        min_idle,
        recycle_after,
    };
    vec![
        p("a1", "a", 1, 2, 0, None),
        p("a2", "a", 1, 1, 0, Some(1)),
        p("b1", "b", 1, 3, 1, Some(2)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn allocator_keeps_its_promises(ops in proptest::collection::vec(op(), 1..120)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut a = Allocator::new();
        let mut m = Model::default();
        for spec in pools() {
            let acts = a.add_pool(spec).unwrap();
            m.apply(&a, acts, now)?;
        }
        for op in ops {
            let acts = match op {
                Op::Request { program, user, wait_ms } => {
                    let r = Request {
                        program: PROGRAMS[program].into(),
                        user: USERS[user].into(),
                        max_sessions: 2,
                        wait: Duration::from_millis(wait_ms),
                    };
                    let deadline = now + r.wait;
                    let (id, acts) = a.request(r, now);
                    m.waiting.insert(id, (PROGRAMS[program].into(), deadline));
                    acts
                }
                Op::Deallocate { pick: i, confirm } => {
                    let live: Vec<SessionId> = m.sessions.iter().filter(|(_, (_, c))| c.is_none()).map(|(s, _)| *s).collect();
                    match pick(&live, i) {
                        Some(s) => {
                            m.sessions.get_mut(&s).unwrap().1 = Some(confirm);
                            a.deallocate(s, confirm).unwrap()
                        }
                        None => vec![],
                    }
                }
                Op::CleanupDone { pick: i, ok } => {
                    let cleaning: Vec<SessionId> = m.sessions.iter().filter(|(_, (_, c))| c.is_some()).map(|(s, _)| *s).collect();
                    match pick(&cleaning, i) {
                        Some(s) => a.cleanup_done(s, ok).unwrap(),
                        None => vec![],
                    }
                }
                Op::Ready { pick: i } => {
                    let starting: Vec<String> = m.starting.iter().cloned().collect();
                    match pick(&starting, i) {
                        Some(p) => {
                            m.starting.remove(&p);
                            a.partition_ready(&p).unwrap()
                        }
                        None => vec![],
                    }
                }
                Op::Fail { pick: i } => {
                    let all: Vec<String> = m.partitions.keys().cloned().collect();
                    match pick(&all, i) {
                        Some(p) => {
                            m.starting.remove(&p);
                            a.partition_failed(&p).unwrap()
                        }
                        None => vec![],
                    }
                }
                Op::Cancel { pick: i } => {
                    let waiting: Vec<RequestId> = m.waiting.keys().copied().collect();
                    if let Some(id) = pick(&waiting, i) {
                        prop_assert!(a.cancel(id));
                        m.waiting.remove(&id);
                    }
                    vec![]
                }
                Op::Advance { ms } => {
                    now += Duration::from_millis(ms);
                    a.tick(now)
                }
                Op::Template { ready } => {
                    a.set_template("a2", ready).unwrap();
                    vec![]
                }
            };
            m.reap(&a);
            m.apply(&a, acts, now)?;
            for s in m.sessions.keys() {
                prop_assert!(a.session_partition(*s).is_some(), "{} ended without a word", s);
            }
            if let Err(e) = a.check() {
                prop_assert!(false, "invariant: {}", e);
            }
            // Counts: the allocator's and the model's views agree.
            prop_assert_eq!(a.session_count(), m.sessions.len());
            prop_assert_eq!(a.queue_len(), m.waiting.len());
            let in_session = a.pools().flat_map(|p| a.partitions_of(&p.name).collect::<Vec<_>>())
                .filter(|p| p.state.session().is_some()).count();
            prop_assert_eq!(in_session, m.sessions.len());
            for (id, (_, deadline)) in &m.waiting {
                prop_assert!(*deadline > now, "{:?} past its deadline still waits", id);
            }
            if let Some(d) = a.next_deadline() {
                prop_assert!(d > now);
            }
        }
        // Past every deadline, every request not cancelled has had its answer.
        now += Duration::from_secs(3600);
        let acts = a.tick(now);
        m.apply(&a, acts, now)?;
        prop_assert!(m.waiting.is_empty(), "unanswered: {:?}", m.waiting.keys());
    }
}
