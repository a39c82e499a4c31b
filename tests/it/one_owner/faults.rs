//! Real faults against a real PostgreSQL: a member process killed with
//! `kill -9`, a member frozen past its TTL, the database stopped for longer
//! than the TTL, a connection stalled or cut by a loopback proxy.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;
use leasering::{Event, NodeBuilder, ReleaseReason, RingNode};
use leasering_testkit::member_log::parse_events;
use leasering_testkit::oracle::{self, End};
use leasering_testkit::{instant_of, MemberArgs, MemberProcess, ProxyMode, TcpProxy, TestPostgres};

const SETTLE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(2);

/// The common test builder with the short TTL these fault tests are about.
fn builder(pool: Pool, ring: &str, node: &str) -> NodeBuilder {
    crate::common::builder(pool, ring, node).lease_ttl(TTL)
}

/// Installs an audit trigger on `schema.members` recording every write
/// with the writing connection's application_name.
fn install_audit(db: &TestPostgres, schema: &str) {
    leasering::migrate(&mut db.client().unwrap(), schema).unwrap();
    db.client()
        .unwrap()
        .batch_execute(&format!(
            "CREATE TABLE {schema}.audit (op text, node_id text, app text, expires_at timestamptz, at timestamptz DEFAULT clock_timestamp());
             CREATE FUNCTION {schema}.audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF TG_OP = 'DELETE' THEN
                 INSERT INTO {schema}.audit (op, node_id, app, expires_at)
                 VALUES (TG_OP, OLD.node_id, current_setting('application_name'), OLD.expires_at);
                 RETURN OLD;
               END IF;
               INSERT INTO {schema}.audit (op, node_id, app, expires_at)
               VALUES (TG_OP, NEW.node_id, current_setting('application_name'), NEW.expires_at);
               RETURN NEW;
             END $$;
             CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON {schema}.members
               FOR EACH ROW EXECUTE FUNCTION {schema}.audit_fn();"
        ))
        .unwrap();
}

#[test]
fn a_killed_member_is_replaced_only_after_its_lease_ends_then_at_once() {
    init_logs();
    let db = db();
    // The audit keeps the victim's last lease end (its row's expires_at when
    // it was deleted): read after the takeover, not raced against the
    // survivors' cleanup right after the kill.
    let schema = ring_name("kill9s");
    install_audit(db, &schema);
    let ring = ring_name("kill9");
    let dir = std::env::temp_dir().join(ring_name("kill9ev"));
    std::fs::create_dir_all(&dir).unwrap();
    let events_file = dir.join("victim.log");
    let url = db.url();
    let child = MemberProcess::spawn(MemberArgs {
        exe: leasering_testkit::member_binary(),
        url: &url,
        ring: &ring,
        node: "victim",
        ttl: TTL,
        schema: &schema,
        events: &events_file,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let recorder = Recorder::default();
    let survivors: Vec<RingNode> = (0..2)
        .map(|i| recorder.start(builder(pool(4), &ring, &format!("s{i}")).schema(schema.clone())))
        .collect();
    wait_until(SETTLE, "survivors to see 3 members", || {
        survivors.iter().all(|n| n.view().members().len() == 3)
    });
    wait_until(SETTLE, "survivors to hold their share", || {
        survivors
            .iter()
            .all(|n| n.owned_partitions().len() == n.view().partitions_of(n.node_id()).len())
    });
    let victim_parts = survivors[0].view().partitions_of("victim");
    assert!(!victim_parts.is_empty());
    // Let it renew a few times, then kill it hard.
    std::thread::sleep(TTL / 2);
    let killed_at = Instant::now();
    child.kill();
    wait_until(SETTLE, "survivors to cover the victim's partitions", || {
        victim_parts
            .iter()
            .all(|p| survivors.iter().any(|n| n.owns(*p)))
    });
    let covered_at = Instant::now();
    // Its lease ended when the database says so: the latest expires_at any
    // of its writes left (a renewal in flight at the kill included).
    let expires: SystemTime = db
        .client()
        .unwrap()
        .query_one(
            &format!("SELECT max(expires_at) FROM {schema}.audit WHERE node_id = 'victim'"),
            &[],
        )
        .unwrap()
        .try_get(0)
        .expect("the audit recorded the victim's lease");
    let lease_end = instant_of(expires);
    // Only after the lease ended...
    let first_take = recorder
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::Acquired { partitions, at, .. }
                if at > killed_at && partitions.iter().any(|p| victim_parts.contains(p)) =>
            {
                Some(at)
            }
            _ => None,
        })
        .min()
        .expect("an Acquired of the victim's partitions");
    assert!(
        first_take >= lease_end - Duration::from_millis(5),
        "partitions taken {:?} before the victim's lease ended",
        lease_end - first_take
    );
    // ...and then without waiting for another lease period. (A bound of
    // liveness, not of speed: a healthy takeover takes milliseconds, and
    // waiting for another lease would take a whole TTL.)
    assert!(
        covered_at < lease_end + TTL,
        "covered {:?} after the lease ended: the survivors waited another lease period ({TTL:?})",
        covered_at - lease_end
    );
    assert_eq!(
        rows_of(db, &schema, &ring, "victim"),
        0,
        "the crashed member's rows were removed"
    );
    recorder.assert_no_overlap_and_tokens_increase();
    // The victim's own log, with the survivors' events: it held what it
    // held until the kill, and nobody else held any of it meanwhile.
    let mut history = recorder.history();
    let victim = history.add_run("victim");
    let (logged, bad) = parse_events(&std::fs::read_to_string(&events_file).unwrap());
    assert!(bad.is_empty(), "unreadable victim log: {bad:?}");
    logged.iter().for_each(|e| history.logged(victim, e));
    history.end(victim, End::Killed(oracle::ns(killed_at)));
    let verdict = history.judge(oracle::now());
    assert!(
        verdict.is_clean() && history.anomalies().is_empty(),
        "victim and survivors: {verdict:?} {:?}",
        history.anomalies()
    );
    for n in &survivors {
        n.stop().unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_member_paused_past_its_ttl_fences_does_not_resurrect_and_rejoins() {
    init_logs();
    let db = db();
    let schema = ring_name("pause");
    install_audit(db, &schema);
    let ring = ring_name("pausering");
    let recorder = Recorder::default();
    let nodes: Arc<Mutex<Vec<RingNode>>> = Arc::new(Mutex::new(Vec::new()));
    for i in 0..3 {
        let name = format!("p{i}");
        let b = builder(named_pool(db, &name, 4), &ring, &name).schema(schema.clone());
        nodes.lock().unwrap().push(recorder.start(b));
    }
    let all = nodes.lock().unwrap().clone();
    wait_until(SETTLE, "3 members to settle", || {
        covered_exactly_once(&all, 1024) && settled(&all)
    });
    let sampler = start_sampler(nodes.clone());
    let sleeper = all[0].clone();
    let its = sleeper.owned_partitions().to_vec();
    let snapshot = sleeper.owned_partitions();
    sleeper.pause_threads_for(TTL * 2);
    // Its hot path stops reporting at the local deadline, with every
    // thread of it frozen (the fence thread too).
    wait_until(
        TTL * 2,
        "the paused member to stop reporting its partitions",
        || its.iter().all(|p| !sleeper.owns(*p)) && sleeper.owned_partitions().is_empty(),
    );
    assert!(
        !snapshot.is_valid() && snapshot.is_empty(),
        "an old snapshot must not report past the deadline"
    );
    // The others take over once the database lease ends and it is removed.
    let others = all[1..].to_vec();
    wait_until(SETTLE, "the others to cover the ring", || {
        covered_exactly_once(&others, 1024)
    });
    // When it wakes, it finds itself removed and rejoins.
    wait_until(
        SETTLE,
        "the paused member to rejoin and the ring to settle",
        || covered_exactly_once(&all, 1024) && all.iter().all(|n| n.view().members().len() == 3),
    );
    sampler.finish().assert_no_overlap();
    recorder.assert_no_overlap_and_tokens_increase();
    let evs: Vec<Event> = recorder
        .events()
        .into_iter()
        .filter(|(n, _)| n == "p0")
        .map(|(_, e)| e)
        .collect();
    let joins = evs
        .iter()
        .filter(|e| matches!(e, Event::Joined { .. }))
        .count();
    assert_eq!(joins, 2, "joined, then rejoined: {evs:?}");
    assert!(evs.iter().any(|e| matches!(
        e,
        Event::Released {
            reason: ReleaseReason::LeaseExpired,
            ..
        }
    )));
    for n in &all {
        n.stop().unwrap();
    }
    // The audit: every INSERT/UPDATE of a row was made by that member
    // itself; rows of others were only ever deleted (expired cleanup).
    let mut c = db.client().unwrap();
    let foreign: Vec<(String, String, String)> = c
        .query(&format!("SELECT op, node_id, app FROM {schema}.audit WHERE op <> 'DELETE' AND node_id <> app"), &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        foreign.is_empty(),
        "members wrote rows of others: {foreign:?}"
    );
    // p0's row was deleted by another member (expired) and inserted anew by p0;
    // no UPDATE of p0's row happened between its removal and its rejoin.
    let ops: Vec<(String, String)> = c
        .query(
            &format!("SELECT op, app FROM {schema}.audit WHERE node_id = 'p0' ORDER BY at"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let del = ops
        .iter()
        .position(|(op, app)| op == "DELETE" && app != "p0")
        .expect("p0 removed by another member");
    assert_eq!(
        ops[del + 1].0,
        "INSERT",
        "after its removal p0 rejoined (no resurrecting UPDATE): {ops:?}"
    );
}

#[test]
fn database_down_longer_than_ttl_fences_everyone_before_their_lease_ends() {
    init_logs();
    let server = TestPostgres::start().unwrap_or_else(|e| panic!("{e}"));
    let schema = "leasering";
    install_audit(&server, schema);
    let ring = ring_name("dbdown");
    let recorder = Recorder::default();
    let nodes: Vec<RingNode> = (0..3)
        .map(|i| {
            let name = format!("d{i}");
            recorder.start(builder(named_pool(&server, &name, 4), &ring, &name))
        })
        .collect();
    // Every member must hold its share before the outage (coverage alone
    // can hold while the last joiner's partitions are still with the others).
    wait_until(
        SETTLE,
        "3 members to cover the ring, each with its share",
        || {
            covered_exactly_once(&nodes, 1024)
                && nodes.iter().all(|n| {
                    n.view().members().len() == 3
                        && n.owned_partitions().len() == n.view().partitions_of(n.node_id()).len()
                })
        },
    );
    let stopped_at = Instant::now();
    server.stop_fast().unwrap();
    // Everyone lets go of everything, with the lease-expired reason.
    wait_until(
        TTL * 3,
        "every member to release everything with reason LeaseExpired",
        || {
            let evs = recorder.events();
            nodes.iter().all(|n| {
            n.owned_partitions().is_empty()
                && evs.iter().any(|(who, e)| {
                    who == n.node_id()
                        && matches!(e, Event::Released { reason: ReleaseReason::LeaseExpired, at, .. } if *at > stopped_at)
                })
        })
        },
    );
    for n in &nodes {
        assert!(!n.status().stopped, "{} gave up", n.node_id());
    }
    // A stop while the database is away returns an error within its
    // timeout, and nothing is owned afterwards.
    let leaver = nodes[2].clone();
    let t = Instant::now();
    let err = leaver
        .stop()
        .expect_err("stop cannot leave while the database is down");
    assert!(
        t.elapsed() < Duration::from_secs(5) + Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    assert!(
        leaver.owned_partitions().is_empty() && leaver.status().stopped,
        "{err}"
    );
    std::thread::sleep(TTL); // down for longer than the TTL
    let restarted = SystemTime::now();
    server.start_again().unwrap();
    let nodes = &nodes[..2];
    wait_until(SETTLE, "the ring to form again after the outage", || {
        covered_exactly_once(nodes, 1024)
    });
    wait_until(
        SETTLE,
        "the member that stopped during the outage to be cleaned up",
        || rows_of(&server, "leasering", &ring, leaver.node_id()) == 0,
    );
    recorder.assert_no_overlap_and_tokens_increase();
    // Each member released before its lease ended in the database.
    let mut c = server.client().unwrap();
    for n in nodes.iter().chain([&leaver]) {
        let last: SystemTime = c
            .query_one(
                &format!(
                    "SELECT max(expires_at) FROM {schema}.audit WHERE node_id = $1 AND at < $2"
                ),
                &[&n.node_id(), &restarted],
            )
            .unwrap()
            .get(0);
        let db_end = instant_of(last);
        let release = recorder
            .events()
            .into_iter()
            .filter(|(who, _)| who == n.node_id())
            .find_map(|(_, e)| match e {
                Event::Released {
                    reason: ReleaseReason::LeaseExpired,
                    at,
                    ..
                } if at > stopped_at => Some(at),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{} never released with LeaseExpired", n.node_id()));
        assert!(
            release < db_end,
            "{} released {:?} after its database lease ended",
            n.node_id(),
            release - db_end
        );
    }
    for n in nodes {
        n.stop().unwrap();
    }
}

#[test]
fn a_stalled_connection_fences_the_member_and_a_cut_one_heals() {
    init_logs();
    let db = db();
    let ring = ring_name("stall");
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", db.port()).parse().unwrap()).unwrap();
    let recorder = Recorder::default();
    let nodes: Arc<Mutex<Vec<RingNode>>> = Arc::new(Mutex::new(Vec::new()));
    let proxied = {
        let pool = db.pool_via(proxy.port(), 4).unwrap();
        recorder.start(builder(pool, &ring, "behind-proxy").stop_timeout(Duration::from_secs(2)))
    };
    nodes.lock().unwrap().push(proxied.clone());
    for i in 0..2 {
        nodes
            .lock()
            .unwrap()
            .push(recorder.start(builder(pool(4), &ring, &format!("direct{i}"))));
    }
    let all = nodes.lock().unwrap().clone();
    wait_until(SETTLE, "3 members to settle", || {
        covered_exactly_once(&all, 1024) && settled(&all)
    });
    let sampler = start_sampler(nodes.clone());
    // A cut: connections die, the member reconnects, nothing is lost.
    let renewals = proxied.status().renewals;
    proxy.cut();
    wait_until(
        SETTLE,
        "the member behind the cut to renew on new connections",
        || proxied.status().renewals >= renewals + 2,
    );
    assert!(
        !recorder.events().iter().any(|(n, e)| n == "behind-proxy"
            && matches!(
                e,
                Event::Released {
                    reason: ReleaseReason::LeaseExpired | ReleaseReason::Evicted,
                    ..
                }
            )),
        "a cut connection cost the member its lease"
    );
    wait_until(SETTLE, "the ring to be covered after the cut", || {
        covered_exactly_once(&all, 1024)
    });
    // A stall longer than the TTL: the member fences itself, the others
    // take over after its lease ends, and it comes back when the stall ends.
    proxy.set_mode(ProxyMode::Stall);
    wait_until(TTL * 2, "the stalled member to fence itself", || {
        proxied.owned_partitions().is_empty()
    });
    let others = all[1..].to_vec();
    wait_until(SETTLE, "the others to cover the ring", || {
        covered_exactly_once(&others, 1024)
    });
    proxy.set_mode(ProxyMode::Pass);
    wait_until(SETTLE, "the stalled member to come back", || {
        covered_exactly_once(&all, 1024) && all.iter().all(|n| n.view().members().len() == 3)
    });
    // A stop while the connection is stalled keeps its bound and owns
    // nothing afterwards; the member's row goes once its lease ends.
    proxy.set_mode(ProxyMode::Stall);
    let t = Instant::now();
    let err = proxied
        .stop()
        .expect_err("stop cannot finish through a stalled connection");
    let took = t.elapsed();
    // A bound on behaviour (it gives up at stop_timeout), not a speed figure.
    assert!(
        took < Duration::from_secs(2 + 3),
        "stop took {took:?}: {err}"
    );
    assert!(proxied.owned_partitions().is_empty());
    wait_until(
        SETTLE,
        "the others to cover the ring after the stalled stop",
        || covered_exactly_once(&others, 1024),
    );
    proxy.set_mode(ProxyMode::Pass);
    wait_until(SETTLE, "no row of the stopped member left", || {
        rows_of(db, "leasering", &ring, "behind-proxy") == 0
    });
    sampler.finish().assert_no_overlap();
    recorder.assert_no_overlap_and_tokens_increase();
    assert!(recorder.events().iter().any(|(n, e)| n == "behind-proxy"
        && matches!(
            e,
            Event::Released {
                reason: ReleaseReason::LeaseExpired,
                ..
            }
        )));
    for n in &others {
        n.stop().unwrap();
    }
}

/// A member whose watcher fails while its renewals still work — here its
/// role lost `UPDATE` on `claims`, so it can neither give back nor take —
/// keeps its lease (and holds up its successor's handoff), so a readiness
/// probe must see it: after half a TTL it is unhealthy, the reason naming
/// the watcher and the database's error; with the privilege back it gives
/// the claims back, the handoff completes and it is healthy again.
#[test]
fn a_failing_watcher_makes_the_member_unready_while_its_lease_runs() {
    init_logs();
    let db = db();
    let (schema, role) = ("watchfail", "watchfail_member");
    let mut admin = db.client().unwrap();
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .unwrap();
    leasering::migrate(&mut admin, schema).unwrap();
    admin
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {schema} TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role};"
        ))
        .unwrap();
    let mut config = db.config();
    config.user(role);
    let role_pool = r2d2::Pool::builder()
        .max_size(4)
        .build(r2d2_postgres::PostgresConnectionManager::new(
            config,
            r2d2_postgres::postgres::NoTls,
        ))
        .unwrap();
    let ring = ring_name("watchfail");
    let start = |pool: Pool, node: &str| {
        builder(pool, &ring, node)
            .schema(schema)
            .create_schema(false)
            .ring_size(32)
            .start()
            .unwrap()
    };
    let a = start(role_pool, "wa");
    wait_until(SETTLE, "wa to own the ring and be healthy", || {
        a.owned_partitions().len() == 32 && a.status().health.is_healthy()
    });
    admin
        .batch_execute(&format!("REVOKE UPDATE ON {schema}.claims FROM {role}"))
        .unwrap();
    // A join: `wa` must give `wb` its share and cannot.
    let b = start(pool(4), "wb");
    let share = b.view().partitions_of("wb");
    assert!(!share.is_empty());
    wait_until(
        SETTLE,
        "wa to be unhealthy because its watcher fails (permission denied)",
        || {
            a.status().health.reason().is_some_and(|r| {
                r.starts_with("watcher failing for") && r.contains("permission denied")
            })
        },
    );
    let st = a.status();
    assert!(
        st.lease_left.is_some_and(|d| !d.is_zero()),
        "its lease still runs: {st:?}"
    );
    assert!(
        share.iter().all(|p| !b.owns(*p)),
        "wb cannot have its share yet"
    );
    admin
        .batch_execute(&format!("GRANT UPDATE ON {schema}.claims TO {role}"))
        .unwrap();
    wait_until(
        SETTLE,
        "wb to get its share and wa to be healthy again",
        || share.iter().all(|p| b.owns(*p)) && a.status().health.is_healthy(),
    );
    b.stop().unwrap();
    a.stop().unwrap();
}

/// The connection dies while the join's commit is on its way: the commit
/// lands, its answer is lost (a deferred trigger holds the commit up while
/// the proxy cuts the connection). `start()` tries again on another
/// connection, finds that it had joined and carries on — instead of failing,
/// or being refused as "node id in use" by its own new row, which then
/// stayed in the ring as a ghost for a TTL.
#[test]
fn start_survives_losing_the_answer_to_its_joins_commit() {
    init_logs();
    let db = db();
    let schema = "lostcommit";
    let mut admin = db.client().unwrap();
    leasering::migrate(&mut admin, schema).unwrap();
    // Well under the statement timeout (3.3 s with the common TTL of 10 s,
    // used here), so that the commit is slow but succeeds even on a loaded
    // machine; long enough for the watcher below to see it sleep.
    admin
        .batch_execute(&format!(
            "CREATE TABLE {schema}.slow_once (node_id text);
             INSERT INTO {schema}.slow_once VALUES ('lc');
             CREATE FUNCTION {schema}.slow_fn() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF EXISTS (SELECT 1 FROM {schema}.slow_once WHERE node_id = NEW.node_id) THEN
                 DELETE FROM {schema}.slow_once WHERE node_id = NEW.node_id;
                 PERFORM pg_sleep(1.5);
               END IF;
               RETURN NULL;
             END $$;
             CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON {schema}.members
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {schema}.slow_fn();"
        ))
        .unwrap();
    let proxy =
        Arc::new(TcpProxy::start(format!("127.0.0.1:{}", db.port()).parse().unwrap()).unwrap());
    let cutter = {
        let proxy = proxy.clone();
        let mut watch = db.client().unwrap();
        std::thread::spawn(move || {
            let deadline = Instant::now() + SETTLE;
            while Instant::now() < deadline {
                let sleeping = watch
                    .query_opt(
                        "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE 'COMMIT%'",
                        &[],
                    )
                    .unwrap()
                    .is_some();
                if sleeping {
                    proxy.cut();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            false
        })
    };
    let ring = ring_name("lostcommit");
    let node = crate::common::builder(db.pool_via(proxy.port(), 4).unwrap(), &ring, "lc")
        .schema(schema)
        .create_schema(false)
        .ring_size(16)
        .start()
        .unwrap_or_else(|e| panic!("start() should survive a lost commit answer: {e}"));
    assert!(
        cutter.join().unwrap(),
        "the proxy cut the connection during the join's commit"
    );
    let slept: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {schema}.slow_once"), &[])
        .unwrap()
        .get(0);
    assert_eq!(slept, 0, "the slow commit happened");
    wait_until(SETTLE, "lc to own the ring", || {
        node.owned_partitions().len() == 16
    });
    let rows: i64 = admin
        .query_one(
            &format!("SELECT count(*) FROM {schema}.members WHERE ring_id = $1"),
            &[&ring],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "one member row: no ghost of a lost try");
    assert_eq!(node.view().epoch(), 1, "one join, no second membership");
    node.stop().unwrap();
}

/// Issue 19: the database stops in the middle of a join held back by a
/// move budget (takes and the budget's steps fail while it is down) and
/// comes back well within the lease TTL: the steps resume — written after
/// the next takes, or by a member's safety net — and the ring reaches its
/// balance, with no partition ever active on two members.
#[test]
fn a_budgeted_join_resumes_its_steps_after_a_database_restart() {
    init_logs();
    let server = TestPostgres::start().unwrap_or_else(|e| panic!("{e}"));
    let ring = ring_name("budgetdb");
    let recorder = Recorder::default();
    let member = |name: &str| {
        builder(named_pool(&server, name, 4), &ring, name)
            .ring_size(64)
            .placement(leasering::Placement::Balanced)
            .max_moving(4)
            .drain_timeout(Duration::from_millis(300))
    };
    let mut nodes: Vec<RingNode> = ["o0", "o1"]
        .iter()
        .map(|n| recorder.start(member(n)))
        .collect();
    wait_until(SETTLE, "the two old members to hold 32 each", || {
        nodes.iter().all(|n| n.owned_partitions().len() == 32)
    });
    nodes.extend(["n0", "n1"].iter().map(|n| recorder.start(member(n))));
    wait_until(SETTLE, "the joiners to have taken some partitions", || {
        nodes[2].owned_partitions().len() + nodes[3].owned_partitions().len() >= 4
    });
    assert!(
        nodes[0].status().moves_pending > 0 || nodes[2].status().moves_pending > 0,
        "the budget holds moves back while the joiners take their share"
    );
    server.stop_fast().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    server.start_again().unwrap();
    wait_until(
        SETTLE,
        "the four members to hold 16 each, nothing held back",
        || {
            covered_exactly_once(&nodes, 64)
                && settled(&nodes)
                && nodes
                    .iter()
                    .all(|n| n.owned_partitions().len() == 16 && n.status().moves_pending == 0)
        },
    );
    recorder.assert_no_overlap_and_tokens_increase();
    for n in nodes {
        n.stop().unwrap();
    }
}
