//! Protocol version 2 against a real PostgreSQL (docs/protocol.md §4, guarantees 5
//! and 6): a frozen member delays only the partitions whose claims it
//! holds; drained handoffs never overlap user work; a drain ends at its
//! timeout; a lost answer never blocks a partition for a lease while its
//! member lives; a member restarted under the same node id inherits
//! nothing; a version-1 schema migrates and version-1 members are refused.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use leasering::{ErrorKind, Event, ReleaseReason, RingNode};
use leasering_testkit::member_log::{parse_events, Ev};
use leasering_testkit::oracle::{End, History};
use leasering_testkit::worker::{Sink, WorkConfig, Worker};
use leasering_testkit::{MemberArgs, MemberProcess, ProxyMode, TcpProxy, TestPostgres};

const SETTLE: Duration = Duration::from_secs(30);

/// A member process of `ring`, ready (joined) when this returns.
fn member_process(
    db: &TestPostgres,
    ring: &str,
    node: &str,
    ttl: Duration,
    events: &std::path::Path,
) -> MemberProcess {
    let url = db.url();
    let args = MemberArgs {
        exe: leasering_testkit::member_binary(),
        url: &url,
        ring,
        node,
        ttl,
        schema: "leasering",
        events,
    };
    MemberProcess::spawn(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether `node`'s lease row is live in the database now (by its clock).
fn live_in_db(db: &TestPostgres, ring: &str, node: &str) -> bool {
    db.client()
        .unwrap()
        .query_one(
            "SELECT count(*) FROM leasering.members WHERE ring_id = $1 AND node_id = $2 AND expires_at > now()",
            &[&ring, &node],
        )
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

/// Partitions whose claim `node` holds in the database now.
fn claims_of(db: &TestPostgres, ring: &str, node: &str) -> Vec<u32> {
    db.client()
        .unwrap()
        .query(
            "SELECT c.partition FROM leasering.claims c JOIN leasering.members m ON m.incarnation = c.holder
             WHERE c.ring_id = $1 AND m.node_id = $2 ORDER BY 1",
            &[&ring, &node],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i32>(0) as u32)
        .collect()
}

#[test]
fn a_frozen_member_delays_only_the_partitions_whose_claims_it_holds() {
    init_logs();
    let db = db();
    let ring = ring_name("frozen");
    let ttl = Duration::from_secs(8);
    // The frozen member's lease runs at least two thirds of its TTL after
    // the SIGSTOP (renewals every third): with twice the others' TTL, the
    // join and the leave below have more than the others' TTL to hand over
    // while it is provably live — a bound no healthy run comes near.
    let frozen_ttl = ttl * 2;
    let dir = std::env::temp_dir().join(ring_name("frozenev"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("frozen.log");
    let frozen = member_process(db, &ring, "frozen", frozen_ttl, &log);
    let recorder = Recorder::default();
    let b = |n: &str| builder(pool(4), &ring, n).lease_ttl(ttl);
    let mut nodes: Vec<RingNode> = (0..2)
        .map(|i| recorder.start(b(&format!("live{i}"))))
        .collect();
    wait_until(SETTLE, "3 members to settle", || {
        nodes
            .iter()
            .all(|n| n.view().members().len() == 3 && n.status().pending == 0)
    });
    let held_by_frozen = claims_of(db, &ring, "frozen");
    assert!(!held_by_frozen.is_empty());
    frozen.signal(libc::SIGSTOP);
    // A join while a member is frozen: what the joiner takes from the live
    // members moves at once — while the frozen member's lease is still live.
    let joiner = recorder.start(b("joiner"));
    let share = joiner.view().partitions_of("joiner");
    let from_live: Vec<u32> = share
        .iter()
        .copied()
        .filter(|p| !held_by_frozen.contains(p))
        .collect();
    let from_frozen: Vec<u32> = share
        .iter()
        .copied()
        .filter(|p| held_by_frozen.contains(p))
        .collect();
    assert!(
        !from_live.is_empty(),
        "the joiner takes some partitions from live members"
    );
    wait_until(
        SETTLE,
        "the joiner to hold what live members gave up",
        || from_live.iter().all(|p| joiner.owns(*p)),
    );
    assert!(
        live_in_db(db, &ring, "frozen"),
        "the joiner had to wait for the frozen member's lease to end"
    );
    if !from_frozen.is_empty() {
        assert!(
            from_frozen.iter().all(|p| !joiner.owns(*p)),
            "the frozen member still holds these"
        );
        let waiting = joiner.status().waiting_for;
        assert!(
            waiting
                .iter()
                .any(|(who, ps)| who == "frozen" && ps.iter().all(|p| from_frozen.contains(p))),
            "status names the frozen member as the one waited for: {waiting:?}"
        );
    }
    // A graceful leave while it is frozen: its successors take over at once.
    let leaver = nodes.pop().unwrap();
    let leaver_parts: Vec<u32> = leaver.owned_partitions().iter().collect();
    leaver.stop().unwrap();
    nodes.push(joiner.clone());
    // (Those the frozen member now succeeds to wait for it, like those it
    // holds.)
    wait_until(SETTLE, "the leaver's partitions to be taken over", || {
        let view = joiner.view();
        leaver_parts.iter().all(|p| {
            nodes.iter().any(|n| n.owns(*p))
                || held_by_frozen.contains(p)
                || view.owner_of(*p) == Some("frozen")
        })
    });
    assert!(
        live_in_db(db, &ring, "frozen"),
        "the leave waited for the frozen member's lease"
    );
    // The frozen member's partitions move once its lease ends.
    wait_until(
        frozen_ttl * 3,
        "everything covered after the frozen member's lease ended",
        || covered_exactly_once(&nodes, 1024),
    );
    assert!(!live_in_db(db, &ring, "frozen"));
    // It wakes: its hot path already reports nothing, its fence releases
    // everything stamped with its deadline, it finds itself removed and
    // rejoins; then it leaves.
    frozen.signal(libc::SIGCONT);
    wait_until(SETTLE, "the woken member to release what it held", || {
        let (evs, _) = parse_events(&std::fs::read_to_string(&log).unwrap());
        evs.iter()
            .any(|e| matches!(e, leasering_testkit::member_log::Ev::Released { .. }))
    });
    frozen.stop();
    let exited_at = leasering_testkit::oracle::now();
    // One judgement over everything: the in-process members' events and the
    // frozen process's own log.
    let mut history = recorder.history();
    let run = history.add_run("frozen");
    let (evs, bad) = parse_events(&std::fs::read_to_string(&log).unwrap());
    assert!(bad.is_empty(), "{bad:?}");
    for e in &evs {
        history.logged(run, e);
    }
    history.end(run, End::Exited(exited_at));
    let verdict = history.judge(leasering_testkit::oracle::now());
    assert!(
        verdict.overlaps.is_empty(),
        "{:?}",
        &verdict.overlaps[..verdict.overlaps.len().min(3)]
    );
    assert!(
        verdict.regressions.is_empty(),
        "{:?}",
        &verdict.regressions[..verdict.regressions.len().min(3)]
    );
    for n in nodes {
        n.stop().unwrap();
    }
}

/// Every member's records (ownership and units of work), with its node id,
/// in the order each member's worker handed them over.
type Log = Arc<Mutex<Vec<(String, Ev)>>>;

/// A member with the testkit's drain workload: 200 ms units of work on
/// every partition it owns, each handoff held back with the drain guard
/// until the unit in progress has ended.
struct Working {
    node: RingNode,
    worker: Worker,
}

impl Working {
    fn start(b: leasering::NodeBuilder, log: &Log) -> Working {
        let mut b = b;
        let rx = b.subscribe();
        let node = b.start().unwrap();
        let sink: Sink = {
            let (log, name) = (log.clone(), node.node_id().to_string());
            Arc::new(move |ev| log.lock().unwrap().push((name.clone(), ev)))
        };
        let cfg = WorkConfig {
            unit_min: Duration::from_millis(200),
            unit_max: Duration::from_millis(200),
            lanes: 1,
            log_ownership: true,
            ..WorkConfig::default()
        };
        let worker = Worker::start(node.clone(), rx, cfg, sink);
        Working { node, worker }
    }

    fn stop(self) {
        // stop() waits for the drains: the worker still runs meanwhile,
        // finishing its unit and letting the guards go.
        let _ = self.node.stop();
        self.worker.stop();
    }
}

/// The oracle's history of a log; every member has stopped.
fn history_of(log: &Log) -> History {
    let mut h = History::with_ring_size(64);
    let mut runs: BTreeMap<String, leasering_testkit::oracle::RunId> = BTreeMap::new();
    for (name, ev) in log.lock().unwrap().iter() {
        let run = *runs.entry(name.clone()).or_insert_with(|| h.add_run(name));
        h.logged(run, ev);
    }
    let end = leasering_testkit::oracle::now();
    for run in runs.values() {
        h.end(*run, End::Exited(end));
    }
    h
}

#[test]
fn drained_handoffs_never_overlap_user_work() {
    init_logs();
    let ring = ring_name("drain");
    let log: Log = Arc::default();
    let start = |n: &str, log: &Log| {
        let b = builder(pool(4), &ring, n)
            .ring_size(64)
            .drain_timeout(Duration::from_secs(5));
        Working::start(b, log)
    };
    let mut workers: Vec<Working> = (0..3).map(|i| start(&format!("w{i}"), &log)).collect();
    wait_until(SETTLE, "3 members to settle", || {
        let nodes: Vec<RingNode> = workers.iter().map(|w| w.node.clone()).collect();
        covered_exactly_once(&nodes, 64) && settled(&nodes)
    });
    // Churn: members join and leave gracefully, one after the other; every
    // time, partitions move between members whose workers are mid-unit.
    for (round, next) in (0..8).zip(3..) {
        let w = start(&format!("w{next}"), &log);
        workers.push(w);
        std::thread::sleep(Duration::from_millis(300));
        let leaving = workers.remove(round % workers.len());
        leaving.stop();
        std::thread::sleep(Duration::from_millis(300));
    }
    let nodes: Vec<RingNode> = workers.iter().map(|w| w.node.clone()).collect();
    wait_until(SETTLE, "the ring to settle", || {
        covered_exactly_once(&nodes, 64) && settled(&nodes)
    });
    std::thread::sleep(Duration::from_millis(400));
    for w in workers {
        w.stop();
    }
    let h = history_of(&log);
    assert!(
        h.anomalies().is_empty(),
        "{:?}",
        &h.anomalies()[..h.anomalies().len().min(5)]
    );
    let v = h.judge_work(leasering_testkit::oracle::now());
    assert!(
        v.anomalies.is_empty(),
        "{:?}",
        &v.anomalies[..v.anomalies.len().min(5)]
    );
    assert!(
        v.handoffs >= 100,
        "only {} handoffs of user work happened",
        v.handoffs
    );
    assert!(
        v.drained > 0,
        "no handoff found work in progress to wait for ({} handoffs)",
        v.handoffs
    );
    assert!(
        v.user_overlaps.is_empty(),
        "{} user-work overlaps across {} handoffs, first: {:?}",
        v.user_overlaps.len(),
        v.handoffs,
        v.user_overlaps.first()
    );
}

#[test]
fn a_drain_whose_guard_is_kept_ends_at_its_timeout() {
    init_logs();
    let ring = ring_name("draintimeout");
    let timeout = Duration::from_millis(1500);
    let mut b = builder(pool(4), &ring, "old")
        .ring_size(64)
        .drain_timeout(timeout);
    let events = b.subscribe();
    let old = b.start().unwrap();
    wait_until(SETTLE, "the first member to own the ring", || {
        old.owned_partitions().len() == 64
    });
    let mut b = builder(pool(4), &ring, "new")
        .ring_size(64)
        .drain_timeout(timeout);
    let new_events = b.subscribe();
    let new = b.start().unwrap();
    // The old owner's user keeps every guard.
    let mut kept = Vec::new();
    let released_at = loop {
        match events.recv_timeout(SETTLE).expect("a handoff") {
            Event::Released {
                reason: ReleaseReason::Handoff,
                drain: Some(g),
                at,
                ..
            } => {
                assert_eq!(g.deadline(), at + timeout);
                kept.push(g);
                break at;
            }
            _ => continue,
        }
    };
    let acquired_at = loop {
        match new_events
            .recv_timeout(SETTLE)
            .expect("the new owner acquires")
        {
            Event::Acquired { at, .. } => break at,
            _ => continue,
        }
    };
    assert!(
        acquired_at >= released_at + timeout,
        "the new owner started {:?} after the release, before the drain timeout {timeout:?}",
        acquired_at - released_at
    );
    wait_until(SETTLE, "the new member to hold its share", || {
        new.owned_partitions().len() == new.view().partitions_of("new").len()
    });
    drop(kept);
    new.stop().unwrap();
    old.stop().unwrap();
}

#[test]
fn a_member_restarted_under_its_node_id_inherits_no_claims() {
    init_logs();
    let db = db();
    let ring = ring_name("reincarnate");
    let ttl = Duration::from_secs(2);
    let b = |n: &str| builder(pool(4), &ring, n).lease_ttl(ttl).ring_size(64);
    let stays = b("stays").start().unwrap();
    // The first incarnation's lease outlives its crash by at least two
    // thirds of its TTL: three of the others' TTLs give the refused start
    // below (its pool made before the crash) far more than it needs.
    let first = b("again").lease_ttl(ttl * 3).start().unwrap();
    wait_until(SETTLE, "both to hold their share", || {
        settled(&[stays.clone(), first.clone()])
    });
    let old_tokens: BTreeMap<u32, u64> = {
        let o = first.owned_partitions();
        o.iter().map(|p| (p, o.token(p).unwrap())).collect()
    };
    let too_soon = b("again");
    first.crash();
    // While the crashed incarnation's lease lives, the node id is in use.
    let err = too_soon.start().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NodeIdInUse, "{err}");
    let mut again = None;
    wait_until(SETTLE, "the node id to be free again", || {
        again = b("again").start().ok();
        again.is_some()
    });
    let again = again.unwrap();
    wait_until(SETTLE, "the restarted member to hold its share", || {
        settled(&[stays.clone(), again.clone()])
    });
    // Every claim names a live incarnation; the new one's tokens are above
    // the old one's, partition by partition.
    let dangling: i64 = db
        .client()
        .unwrap()
        .query_one(
            "SELECT count(*) FROM leasering.claims c WHERE c.ring_id = $1 AND c.holder IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM leasering.members m WHERE m.incarnation = c.holder)",
            &[&ring],
        )
        .unwrap()
        .get(0);
    assert_eq!(dangling, 0);
    let o = again.owned_partitions();
    for p in o.iter() {
        if let Some(old) = old_tokens.get(&p) {
            assert!(
                o.token(p).unwrap() > *old,
                "partition {p}: token {:?} after {old}",
                o.token(p)
            );
        }
    }
    again.stop().unwrap();
    stays.stop().unwrap();
}

/// A pool whose connections go through the proxy at `port` and are named
/// `app` (`application_name`).
fn proxied_pool(db: &TestPostgres, port: u16, app: &str) -> Pool {
    let base = db.config();
    let mut cfg = postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .application_name(app)
        .connect_timeout(Duration::from_secs(2));
    if let Some(u) = base.get_user() {
        cfg.user(u);
    }
    if let Some(p) = base.get_password() {
        cfg.password(p);
    }
    if let Some(d) = base.get_dbname() {
        cfg.dbname(d);
    }
    r2d2::Pool::builder()
        .max_size(4)
        .connection_timeout(Duration::from_secs(2))
        .build_unchecked(r2d2_postgres::PostgresConnectionManager::new(
            cfg,
            r2d2_postgres::postgres::NoTls,
        ))
}

/// Makes `op` statements (`INSERT`: takes, `UPDATE`: releases) on the
/// claims of connections named `app` sleep `secs` (a statement trigger,
/// `when` = `BEFORE` or `AFTER` the rows are written and locked), so that a
/// test can cut the connection while one runs.
fn slow_claims_for(db: &TestPostgres, app: &str, secs: f64, when: &str, op: &str) {
    db.client()
        .unwrap()
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION leasering.slow_{app}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF current_setting('application_name') = '{app}' THEN PERFORM pg_sleep({secs}); END IF;
               RETURN NULL;
             END $$;
             DROP TRIGGER IF EXISTS slow_{app} ON leasering.claims;
             CREATE TRIGGER slow_{app} {when} {op} ON leasering.claims
               FOR EACH STATEMENT EXECUTE FUNCTION leasering.slow_{app}();"
        ))
        .unwrap();
}

/// Makes every take by a connection of application `app` that takes a free
/// claim sleep `secs` once the rows are written (marks of claims held by
/// others and releases do not sleep): a row trigger that sleeps once per
/// transaction.
fn slow_takes_for(db: &TestPostgres, app: &str, secs: f64) {
    db.client()
        .unwrap()
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION leasering.slow_{app}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF current_setting('application_name') = '{app}'
                  AND current_setting('leasering_test.slept', true) IS DISTINCT FROM 'y' THEN
                 PERFORM set_config('leasering_test.slept', 'y', true);
                 PERFORM pg_sleep({secs});
               END IF;
               RETURN NULL;
             END $$;
             DROP TRIGGER IF EXISTS slow_{app} ON leasering.claims;
             CREATE TRIGGER slow_{app} AFTER UPDATE ON leasering.claims
               FOR EACH ROW WHEN (OLD.holder IS NULL AND NEW.holder IS NOT NULL)
               EXECUTE FUNCTION leasering.slow_{app}();"
        ))
        .unwrap();
}

/// Whether a backend of application `app` sleeps in `pg_sleep`.
fn sleeping(db: &TestPostgres, app: &str) -> bool {
    db.client()
        .unwrap()
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                            WHERE application_name = $1 AND wait_event = 'PgSleep')",
            &[&app],
        )
        .unwrap()
        .get(0)
}

fn fast_claims_for(db: &TestPostgres, app: &str) {
    db.client()
        .unwrap()
        .batch_execute(&format!(
            "DROP TRIGGER IF EXISTS slow_{app} ON leasering.claims;"
        ))
        .unwrap();
}

#[test]
fn a_release_whose_answer_is_lost_does_not_block_the_partition_while_its_member_lives() {
    init_logs();
    let db = db();
    let ring = ring_name("lostrelease");
    let app = ring_name("proxied");
    let ttl = Duration::from_secs(9);
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", db.port()).parse().unwrap()).unwrap();
    let via_proxy = proxied_pool(db, proxy.port(), &app);
    let recorder = Recorder::default();
    let a = recorder.start(builder(via_proxy, &ring, "a").lease_ttl(ttl).ring_size(64));
    wait_until(SETTLE, "a to own the ring", || {
        a.owned_partitions().len() == 64
    });
    // a's next writes to claims (its release when b joins) take 1.5 s in
    // the database; the connection is cut meanwhile: the answer is lost.
    slow_claims_for(db, &app, 1.5, "BEFORE", "UPDATE");
    let b = recorder.start(builder(pool(4), &ring, "b").lease_ttl(ttl).ring_size(64));
    let b_share = b.view().partitions_of("b");
    wait_until(SETTLE, "a to hand b's partitions off", || {
        b_share.iter().all(|p| !a.owns(*p))
    });
    std::thread::sleep(Duration::from_millis(300));
    proxy.cut();
    fast_claims_for(db, &app);
    wait_until(SETTLE, "b to hold its share", || {
        b_share.iter().all(|p| b.owns(*p))
    });
    assert!(live_in_db(db, &ring, "a"), "b waited for a's lease to end");
    assert!(
        !recorder.events().iter().any(|(n, e)| n == "a"
            && matches!(
                e,
                Event::Released {
                    reason: ReleaseReason::LeaseExpired | ReleaseReason::Evicted,
                    ..
                }
            )),
        "a lost its lease"
    );
    recorder.assert_no_overlap_and_tokens_increase();
    b.stop().unwrap();
    a.stop().unwrap();
}

#[test]
fn a_claim_whose_take_answer_was_lost_is_given_back_at_the_next_renewal() {
    init_logs();
    let db = db();
    let ring = ring_name("losttake");
    let app = ring_name("proxied");
    let ttl = Duration::from_secs(9);
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", db.port()).parse().unwrap()).unwrap();
    let via_proxy = proxied_pool(db, proxy.port(), &app);
    let recorder = Recorder::default();
    let x = recorder.start(builder(pool(4), &ring, "x").lease_ttl(ttl).ring_size(64));
    wait_until(SETTLE, "x to own the ring", || {
        x.owned_partitions().len() == 64
    });
    // a joins; its take of what x gives up sleeps 1.5 s in the database and
    // its connection is stalled meanwhile, then cut: a never learns that it
    // holds those claims. y joins meanwhile, and its view gives y some of
    // a's partitions: a no longer wants them, and nothing but the
    // reconciliation at a's next renewal gives them back.
    let a_name = "a";
    let y_name = follower_of(&x.view(), a_name, 64);
    // After the rows are updated: y's take of them waits for a's to commit.
    slow_takes_for(db, &app, 1.5);
    let a = recorder.start(
        builder(via_proxy, &ring, a_name)
            .lease_ttl(ttl)
            .ring_size(64),
    );
    wait_until(SETTLE, "a's take to sleep in the database", || {
        sleeping(db, &app)
    });
    proxy.set_mode(ProxyMode::Stall);
    let y = recorder.start(
        builder(pool(4), &ring, &y_name)
            .lease_ttl(ttl)
            .ring_size(64),
    );
    wait_until(SETTLE, "a's take to end its sleep (and commit)", || {
        !sleeping(db, &app)
    });
    // Seen while a's link still stalls (a cannot give anything back yet):
    // once the link passes, a's next renewal ends the wait within
    // milliseconds, too soon to be sure to see it.
    wait_until(SETTLE, "y to wait for a claim a forgot", || {
        y.status().waiting_for.iter().any(|(who, _)| who == "a")
    });
    fast_claims_for(db, &app);
    proxy.cut();
    proxy.set_mode(ProxyMode::Pass);
    let all = [x.clone(), a.clone(), y.clone()];
    wait_until(
        SETTLE,
        "the ring to settle (a gives back what it forgot)",
        || covered_exactly_once(&all, 64) && settled(&all),
    );
    assert!(
        live_in_db(db, &ring, "a"),
        "a partition waited for a's lease to end"
    );
    recorder.assert_no_overlap_and_tokens_increase();
    for n in all {
        n.stop().unwrap();
    }
}

/// A node id whose join, after `first` joined `view` (ring of `ring_size`),
/// takes some of `first`'s partitions.
fn follower_of(view: &leasering::RingView, first: &str, ring_size: u32) -> String {
    use leasering::protocol::choose_positions;
    let mut taken: Vec<u32> = view.vnodes().map(|(p, _)| p).collect();
    let first_positions = choose_positions(first, 8, ring_size, |p| taken.contains(&p)).unwrap();
    taken.extend(&first_positions);
    let mut pairs: Vec<(u32, String)> = view.vnodes().map(|(p, n)| (p, n.to_string())).collect();
    pairs.extend(first_positions.iter().map(|p| (*p, first.to_string())));
    let with_first =
        leasering::RingView::build(2, ring_size, pairs.iter().map(|(p, n)| (*p, n.as_str())));
    let firsts = with_first.partitions_of(first);
    (0..1000)
        .map(|i| format!("y{i}"))
        .find(|y| {
            let ps = choose_positions(y, 8, ring_size, |p| taken.contains(&p)).unwrap();
            let mut all = pairs.clone();
            all.extend(ps.iter().map(|p| (*p, y.clone())));
            let next =
                leasering::RingView::build(3, ring_size, all.iter().map(|(p, n)| (*p, n.as_str())));
            next.partitions_of(y).iter().any(|p| firsts.contains(p))
        })
        .expect("some node id follows the first one")
}

/// The version-1 schema, as version 1 of this crate created it.
fn create_v1_schema(db: &TestPostgres, s: &str) {
    db.client()
        .unwrap()
        .batch_execute(&format!(
            "CREATE SCHEMA {s};
             CREATE TABLE {s}.schema_version (version int NOT NULL, installed_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE {s}.rings (ring_id text PRIMARY KEY, ring_size int NOT NULL CHECK (ring_size > 0),
                 epoch bigint NOT NULL DEFAULT 0, created_at timestamptz NOT NULL DEFAULT now(),
                 changed_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE {s}.members (ring_id text NOT NULL REFERENCES {s}.rings ON DELETE CASCADE,
                 node_id text NOT NULL, vnode_count int NOT NULL, acked_epoch bigint NOT NULL,
                 expires_at timestamptz NOT NULL, behind_since timestamptz,
                 joined_at timestamptz NOT NULL DEFAULT now(), renewed_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (ring_id, node_id));
             CREATE TABLE {s}.vnodes (ring_id text NOT NULL, position int NOT NULL, node_id text NOT NULL,
                 vnode_idx int NOT NULL, PRIMARY KEY (ring_id, position),
                 FOREIGN KEY (ring_id, node_id) REFERENCES {s}.members ON DELETE CASCADE);
             CREATE INDEX vnodes_by_member ON {s}.vnodes (ring_id, node_id);
             CREATE TABLE {s}.changes (ring_id text NOT NULL REFERENCES {s}.rings ON DELETE CASCADE,
                 epoch bigint NOT NULL, removed text[] NOT NULL, added text, positions int[] NOT NULL,
                 at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (ring_id, epoch));
             INSERT INTO {s}.schema_version (version) VALUES (1);"
        ))
        .unwrap();
}

/// What version 1's join wrote for a member: its row and one vnode.
fn v1_join(
    db: &TestPostgres,
    s: &str,
    ring: &str,
    node: &str,
    position: i32,
) -> Result<(), postgres::Error> {
    let mut c = db.client().unwrap();
    c.execute(
        &format!(
            "INSERT INTO {s}.rings (ring_id, ring_size) VALUES ($1, 64) ON CONFLICT DO NOTHING"
        ),
        &[&ring],
    )?;
    c.execute(
        &format!(
            "INSERT INTO {s}.members (ring_id, node_id, vnode_count, acked_epoch, expires_at)
             VALUES ($1, $2, 1, 1, now() + interval '1 hour')"
        ),
        &[&ring, &node],
    )?;
    c.execute(
        &format!(
            "INSERT INTO {s}.vnodes (ring_id, position, node_id, vnode_idx) VALUES ($1, $3, $2, 0)"
        ),
        &[&ring, &node, &position],
    )?;
    c.execute(
        &format!("UPDATE {s}.rings SET epoch = epoch + 1 WHERE ring_id = $1"),
        &[&ring],
    )?;
    Ok(())
}

#[test]
fn a_version_1_ring_migrates_and_version_1_members_are_refused() {
    init_logs();
    let db = db();
    let s = ring_name("v1schema");
    let ring = ring_name("v1ring");
    create_v1_schema(db, &s);
    v1_join(db, &s, &ring, "old-member", 10).unwrap();
    // A version-2 member migrates the schema, and refuses to share the ring
    // with the live version-1 member: a typed error, not an overlap.
    let err = builder(pool(4), &ring, "new-member")
        .schema(s.clone())
        .ring_size(64)
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ProtocolMismatch, "{err}");
    assert!(err.to_string().contains("old-member"), "{err}");
    let mut c = db.client().unwrap();
    let version: i32 = c
        .query_one(&format!("SELECT max(version) FROM {s}.schema_version"), &[])
        .unwrap()
        .get(0);
    assert_eq!(version, leasering::SCHEMA_VERSION);
    // After the migration a version-1 member cannot join any more.
    let v1_again = v1_join(db, &s, &ring, "old-other", 20);
    assert!(
        v1_again.is_err(),
        "a version-1 join must fail on a migrated schema"
    );
    // Once the version-1 member's lease has ended, the ring is version 2's.
    c.execute(
        &format!("UPDATE {s}.members SET expires_at = now() - interval '1 second' WHERE node_id = 'old-member'"),
        &[],
    )
    .unwrap();
    let n = builder(pool(4), &ring, "new-member")
        .schema(s.clone())
        .ring_size(64)
        .start()
        .unwrap();
    wait_until(SETTLE, "the version-2 member to own the ring", || {
        n.owned_partitions().len() == 64
    });
    let claimed: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {s}.claims WHERE ring_id = $1 AND holder IS NOT NULL"),
            &[&ring],
        )
        .unwrap()
        .get(0);
    assert_eq!(claimed, 64, "every partition it uses is claimed");
    n.stop().unwrap();
    // Migrating again is a no-op.
    leasering::migrate(&mut c, &s).unwrap();
}
