//! Real deployments against real servers: members behind a real PgBouncer
//! (session mode with notifications, transaction mode without), a pool
//! shared with the application, TLS, and a PostgreSQL failover.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use leasering::{ErrorKind, NodeBuilder, RingNode};
use leasering_testkit::member_log::parse_events;
use leasering_testkit::oracle::{self, End};
use leasering_testkit::{MemberArgs, MemberProcess, PgBouncer, PoolMode, ProxyMode, TcpProxy};

const TTL: Duration = Duration::from_secs(2);
const RING_SIZE: u32 = 64;
/// Bound on every wait for a ring to settle: far above what any step
/// needs, so that a loaded machine does not fail the test; what the steps
/// need is measured by the benches.
const SETTLE: Duration = Duration::from_secs(30);

fn bouncer(mode: PoolMode, server_pool: u32) -> PgBouncer {
    PgBouncer::start(db(), mode, server_pool).unwrap_or_else(|e| panic!("pgbouncer: {e}"))
}

/// A member of `ring` through `b`, set for its pool mode.
fn member_via(b: &PgBouncer, ring: &str, node: &str) -> NodeBuilder {
    let pool = b.pool(node, 4).unwrap_or_else(|e| panic!("pool: {e}"));
    let builder = crate::common::builder(pool, ring, node)
        .lease_ttl(TTL)
        .ring_size(RING_SIZE);
    match b.mode() {
        PoolMode::Session => builder,
        PoolMode::Transaction => builder.pooling(leasering::Pooling::Transaction),
    }
}

fn settled_and_covered(nodes: &Arc<Mutex<Vec<RingNode>>>) -> bool {
    let all = nodes.lock().unwrap().clone();
    settled(&all) && covered_exactly_once(&all, RING_SIZE)
}

/// Joins (several at once), a member process killed with `kill -9`, a
/// crash, a pause past the TTL, leaves and churn, through PgBouncer in
/// `mode`; every member's events judged by the oracle, the members sampled
/// meanwhile.
fn through_pgbouncer(mode: PoolMode, server_pool: u32) {
    init_logs();
    let b = bouncer(mode, server_pool);
    let tag = match mode {
        PoolMode::Session => "pgbs",
        PoolMode::Transaction => "pgbt",
    };
    let ring = ring_name(tag);
    let recorder = Recorder::default();
    let nodes: Arc<Mutex<Vec<RingNode>>> = Arc::new(Mutex::new(Vec::new()));
    let sampler = start_sampler(nodes.clone());
    let t0 = Instant::now();

    // Six members start at once.
    let starters: Vec<_> = (0..6)
        .map(|i| {
            let (rec, nodes, builder) = (
                recorder.clone(),
                nodes.clone(),
                member_via(&b, &ring, &format!("{tag}{i}")),
            );
            std::thread::spawn(move || {
                let n = rec.start(builder);
                nodes.lock().unwrap().push(n);
            })
        })
        .collect();
    for s in starters {
        s.join().expect("a member failed to start");
    }
    wait_until(SETTLE, "six members starting at once to settle", || {
        settled_and_covered(&nodes)
    });
    let start_ms = t0.elapsed().as_millis();

    // A member process joins, and is killed with kill -9.
    let dir = std::env::temp_dir().join(ring_name(&format!("{tag}ev")));
    std::fs::create_dir_all(&dir).unwrap();
    let events_file = dir.join("victim.log");
    let url = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        b.port()
    );
    let extra: &[&str] = match mode {
        PoolMode::Session => &["--ring-size=64"],
        PoolMode::Transaction => &["--ring-size=64", "--transaction-pooling"],
    };
    let victim = MemberProcess::spawn_with(
        MemberArgs {
            exe: leasering_testkit::member_binary(),
            url: &url,
            ring: &ring,
            node: "victim",
            ttl: TTL,
            schema: "leasering",
            events: &events_file,
        },
        extra,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_until(SETTLE, "the member process to get its share", || {
        let all = nodes.lock().unwrap().clone();
        let view = all[0].view();
        let theirs = view.partitions_of("victim");
        view.members().len() == 7
            && !theirs.is_empty()
            && all.iter().all(|n| n.view().epoch() == view.epoch())
            && theirs.iter().all(|p| {
                all.iter()
                    .all(|n| !n.view().partitions_of(n.node_id()).contains(p))
            })
            && all
                .iter()
                .all(|n| n.owned_partitions().to_vec() == view.partitions_of(n.node_id()))
    });
    std::thread::sleep(TTL / 2);
    let killed_at = Instant::now();
    victim.kill();
    wait_until(SETTLE, "survivors to cover after the kill -9", || {
        settled_and_covered(&nodes)
    });
    let kill_ms = killed_at.elapsed().as_millis();

    // An in-process crash.
    let crashed = nodes.lock().unwrap().remove(0);
    let crashed_at = Instant::now();
    crashed.crash();
    wait_until(SETTLE, "survivors to cover after a crash", || {
        settled_and_covered(&nodes)
    });
    let crash_ms = crashed_at.elapsed().as_millis();

    // A pause past the TTL: the member fences itself, the others take over,
    // it rejoins (a new incarnation) and gets its share back.
    let paused = nodes.lock().unwrap()[0].clone();
    paused.pause_threads_for(TTL * 2);
    wait_until(SETTLE, "the paused member to fence itself", || {
        paused.owned_partitions().is_empty()
    });
    wait_until(SETTLE, "the ring to settle after the pause", || {
        settled_and_covered(&nodes)
    });

    // Churn: a leave and a join at once, three times.
    let mut churn_ms = Vec::new();
    for round in 0..3 {
        let t = Instant::now();
        let leaving = nodes.lock().unwrap().remove(0);
        let joiner = {
            let (rec, nodes, builder) = (
                recorder.clone(),
                nodes.clone(),
                member_via(&b, &ring, &format!("{tag}j{round}")),
            );
            std::thread::spawn(move || {
                let n = rec.start(builder);
                nodes.lock().unwrap().push(n);
            })
        };
        leaving.stop().expect("a graceful leave");
        joiner.join().expect("a joiner failed to start");
        wait_until(
            SETTLE,
            "the ring to settle after a leave and a join",
            || settled_and_covered(&nodes),
        );
        churn_ms.push(t.elapsed().as_millis());
    }
    eprintln!(
        "deploy: pgbouncer {mode:?}: six starts settled in {start_ms} ms, kill -9 covered in {kill_ms} ms, \
         crash in {crash_ms} ms, leave+join rounds {churn_ms:?} ms"
    );

    let report = sampler.finish();
    report.assert_no_overlap();
    recorder.assert_no_overlap_and_tokens_increase();
    // The killed process's own log, with everyone else's events.
    let mut history = recorder.history();
    let run = history.add_run("victim");
    let (logged, bad) = parse_events(&std::fs::read_to_string(&events_file).unwrap());
    assert!(bad.is_empty(), "unreadable victim log: {bad:?}");
    assert!(!logged.is_empty(), "the victim logged nothing");
    logged.iter().for_each(|e| history.logged(run, e));
    history.end(run, End::Killed(oracle::ns(killed_at)));
    let verdict = history.judge(oracle::now());
    assert!(
        verdict.is_clean() && history.anomalies().is_empty(),
        "through pgbouncer ({mode:?}), with the killed process: {verdict:?} {:?}",
        history.anomalies()
    );
    for n in nodes.lock().unwrap().drain(..) {
        n.stop().expect("a graceful stop");
    }
    let _ = paused;
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(
        pooler_errors(),
        0,
        "statements or settings that did not follow a connection through pgbouncer ({mode:?}; logged above)"
    );
}

#[test]
fn through_pgbouncer_in_session_mode_with_notifications() {
    // A server connection per client connection: enough for every pool.
    through_pgbouncer(PoolMode::Session, 100);
}

#[test]
fn through_pgbouncer_in_transaction_mode_without_notifications() {
    // Few server connections for many clients: consecutive statements of
    // one client land on different server connections, so a named
    // statement or a session setting would not follow them.
    through_pgbouncer(PoolMode::Transaction, 3);
}

/// The members and observers of one client share its connection, so its
/// pooling mode: a second mode is refused with a typed error naming both.
#[test]
fn a_client_refuses_a_second_pooling_mode() {
    let client = leasering::Client::new(pool(3));
    let ring = ring_name("tp");
    let a = client.member(&ring).node_id("a").start().unwrap();
    let err = client
        .member(&ring)
        .node_id("b")
        .pooling(leasering::Pooling::Transaction)
        .start()
        .expect_err("a second pooling mode on one client must be refused");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(
        err.to_string().contains("pooling session")
            && err.to_string().contains("pooling transaction"),
        "{err}"
    );
    let err = client
        .observer(&ring)
        .pooling(leasering::Pooling::SessionPolling)
        .start()
        .expect_err("an observer with another mode must be refused");
    assert!(err.to_string().contains("pooling session polling"), "{err}");
    a.stop().unwrap();
}

// ---- a pool shared with the application -----------------------------------

/// The application's side of a shared pool: takes every connection it can
/// get and holds on to them until dropped.
struct Hog {
    stop: Arc<std::sync::atomic::AtomicBool>,
    pids: Arc<Mutex<Vec<i32>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hog {
    fn start(pool: &Pool) -> Hog {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pids = Arc::new(Mutex::new(Vec::new()));
        let (p, s, ids) = (pool.clone(), stop.clone(), pids.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(mut c) = p.get_timeout(Duration::from_millis(20)) {
                    if let Ok(row) = c.query_one("SELECT pg_backend_pid()", &[]) {
                        ids.lock().unwrap().push(row.get(0));
                    }
                    held.push(c);
                }
            }
        });
        Hog {
            stop,
            pids,
            thread: Some(thread),
        }
    }

    /// Gives every connection back.
    fn release(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("the hog thread");
        }
    }
}

/// Terminates the backends of `app` that the hog does not hold (`hog_pids`),
/// as long as `go_on()` says: the member cannot keep or get any connection
/// of its pool.
fn terminate_member_backends(
    app: &str,
    hog_pids: &Mutex<Vec<i32>>,
    mut go_on: impl FnMut() -> bool,
) {
    let mut c = db().client().unwrap();
    while go_on() {
        let spare: Vec<i32> = hog_pids.lock().unwrap().clone();
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = $1 AND NOT (pid = ANY($2))",
            &[&app, &spare],
        )
        .unwrap();
        // Often enough that no connection of the member lives long enough
        // to connect and renew (a few round trips), whoever gets the slot.
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_pool_the_application_exhausts_for_longer_than_the_ttl() {
    init_logs();
    let db = db();
    let ring = ring_name("hog");
    let recorder = Recorder::default();
    let nodes: Arc<Mutex<Vec<RingNode>>> = Arc::new(Mutex::new(Vec::new()));
    let sampler = start_sampler(nodes.clone());
    let shared = named_pool(db, "hogged", 4);
    let start = |pool: Pool, name: &str| {
        recorder.start(
            crate::common::builder(pool, &ring, name)
                .lease_ttl(TTL)
                .ring_size(RING_SIZE)
                .stop_timeout(Duration::from_secs(3)),
        )
    };
    let a = start(shared.clone(), "hogged");
    nodes.lock().unwrap().push(a.clone());
    for name in ["free1", "free2"] {
        let n = start(named_pool(db, name, 4), name);
        nodes.lock().unwrap().push(n);
    }
    wait_until(SETTLE, "three members to settle", || {
        settled_and_covered(&nodes)
    });
    let share = a.owned_partitions().to_vec();

    // 1. The application takes every connection the member does not hold,
    //    for three TTLs: the member renews on the connection its client
    //    keeps, and keeps its lease and its partitions all along.
    let hog = Hog::start(&shared);
    wait_until(
        SETTLE,
        "the application to hold the rest of the pool",
        || hog.pids.lock().unwrap().len() >= 2,
    );
    let renewals = a.status().renewals;
    let until = Instant::now() + TTL * 3;
    while Instant::now() < until {
        assert_eq!(
            a.owned_partitions().to_vec(),
            share,
            "the member kept its share"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = a.status();
    assert!(
        status.renewals >= renewals + 3,
        "the member renewed on its own connections while the application held the rest: {status:?}"
    );
    assert_eq!(status.renewal_failures, 0, "{status:?}");

    // 2. Its own connections die too (the application still holds every
    //    slot it can get), for three TTLs and until the others have its
    //    share: it fences itself at its local deadline, the others take
    //    over once its lease has ended, and nothing overlaps. (Waited for
    //    as conditions, while it still starves: it could rejoin as soon
    //    as its connections live again.)
    let t = Instant::now();
    let starving = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let killer = {
        let (pids, starving) = (hog.pids.clone(), starving.clone());
        std::thread::spawn(move || {
            terminate_member_backends("hogged", &pids, || {
                Instant::now() < t + TTL * 3 || starving.load(std::sync::atomic::Ordering::SeqCst)
            });
        })
    };
    wait_until(
        SETTLE,
        "a member without connections to fence itself (nothing owned)",
        || a.owned_partitions().is_empty(),
    );
    wait_until(
        SETTLE,
        "the starved member to release with LeaseExpired",
        || {
            recorder.events().into_iter().any(|(who, e)| {
                who == "hogged"
                    && matches!(e, leasering::Event::Released { reason: leasering::ReleaseReason::LeaseExpired, at, .. } if at > t)
            })
        },
    );
    let others: Vec<RingNode> = nodes.lock().unwrap()[1..].to_vec();
    wait_until(
        SETTLE,
        "the others to cover the starved member's share",
        || share.iter().all(|p| others.iter().any(|n| n.owns(*p))),
    );
    // Its threads are not hung: status answers at once.
    let _ = a.status();
    starving.store(false, std::sync::atomic::Ordering::SeqCst);
    killer
        .join()
        .expect("the thread terminating the member's backends");

    // 3. The connections come back: it rejoins and gets its share back.
    hog.release();
    wait_until(SETTLE, "the starved member to rejoin and settle", || {
        settled_and_covered(&nodes)
    });

    // 4. A stop while the application holds everything again (and the
    //    member's connections die): bounded by stop_timeout, no hang.
    let hog = Hog::start(&shared);
    wait_until(
        SETTLE,
        "the application to hold the rest of the pool",
        || hog.pids.lock().unwrap().len() >= 2,
    );
    let killer = {
        let until = Instant::now() + Duration::from_secs(4);
        let pids = hog.pids.clone();
        std::thread::spawn(move || {
            terminate_member_backends("hogged", &pids, || Instant::now() < until);
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    nodes.lock().unwrap().retain(|n| n.node_id() != "hogged");
    let t = Instant::now();
    let stopped = a.stop();
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(3) + Duration::from_secs(5),
        "stop() with a starved pool must return within its stop_timeout (3 s): took {took:?} ({stopped:?})"
    );
    assert!(a.owned_partitions().is_empty());
    killer.join().unwrap();
    hog.release();
    wait_until(
        SETTLE,
        "the others to settle without the stopped member",
        || settled_and_covered(&nodes),
    );

    sampler.finish().assert_no_overlap();
    recorder.assert_no_overlap_and_tokens_increase();
    for n in nodes.lock().unwrap().drain(..) {
        n.stop().expect("a graceful stop");
    }
}

// ---- TLS ------------------------------------------------------------------

/// A cluster with `ssl = on` and a self-signed certificate made here; the
/// members connect as a DML-only role that `pg_hba.conf` admits over TLS
/// only, through rustls (`tokio-postgres-rustls`) with the certificate as
/// their only trusted root (so the server's certificate and host name are
/// checked).
#[test]
fn over_tls_as_a_role_with_dml_rights_only() {
    use leasering_testkit::tls::{TlsFiles, TLS_ROLE};
    use leasering_testkit::{TestPostgres, TestPostgresOptions};
    use r2d2_postgres::postgres::config::SslMode;
    use r2d2_postgres::postgres::NoTls;
    use r2d2_postgres::PostgresConnectionManager;

    init_logs();
    let tls = TlsFiles::self_signed().unwrap_or_else(|e| panic!("{e}"));
    let db = TestPostgres::start_with(TestPostgresOptions {
        extra_settings: tls.server_settings(),
        ..TestPostgresOptions::default()
    })
    .unwrap_or_else(|e| panic!("a cluster with ssl=on: {e}"));
    // The administrator creates the schema and grants DML on it.
    let schema = "ring_tls";
    let mut admin = db.client().unwrap();
    admin
        .batch_execute(&format!("CREATE ROLE {TLS_ROLE} LOGIN"))
        .unwrap();
    leasering::migrate(&mut admin, schema).unwrap();
    admin
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {schema} TO {TLS_ROLE};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {TLS_ROLE};"
        ))
        .unwrap();

    let connector = {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                tls.cert_der().to_vec(),
            ))
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_postgres_rustls::MakeRustlsConnect::new(config)
    };
    let mut config = db.config();
    config.user(TLS_ROLE).ssl_mode(SslMode::Require);
    // Without TLS the role is refused.
    let mut plain = config.clone();
    plain.ssl_mode(SslMode::Disable);
    let Err(refused) = plain.connect(NoTls) else {
        panic!("the TLS-only role connected without TLS");
    };
    assert!(
        refused
            .as_db_error()
            .is_some_and(|e| e.message().contains("pg_hba.conf")),
        "refused by pg_hba.conf: {refused:?}"
    );

    let ring = ring_name("tls");
    let recorder = Recorder::default();
    let start = |name: &str| {
        let mut c = config.clone();
        c.application_name(name);
        let pool = r2d2::Pool::builder()
            .max_size(4)
            .min_idle(Some(0))
            .build_unchecked(PostgresConnectionManager::new(c, connector.clone()));
        recorder.start(
            RingNode::builder(pool, ring.clone())
                .node_id(name)
                .schema(schema)
                .create_schema(false)
                .ring_size(RING_SIZE)
                .lease_ttl(TTL)
                .start_timeout(Duration::from_secs(20)),
        )
    };
    let mut nodes: Vec<RingNode> = ["t0", "t1", "t2"].iter().map(|n| start(n)).collect();
    wait_until(SETTLE, "three members over TLS to settle", || {
        settled(&nodes) && covered_exactly_once(&nodes, RING_SIZE)
    });
    nodes.push(start("t3"));
    let leaving = nodes.remove(0);
    leaving.stop().expect("a graceful leave over TLS");
    wait_until(SETTLE, "a join and a leave over TLS to settle", || {
        settled(&nodes) && covered_exactly_once(&nodes, RING_SIZE)
    });
    // Every connection of the role is encrypted.
    let row = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1",
            &[&TLS_ROLE],
        )
        .unwrap();
    let (encrypted, clear): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        encrypted >= 6,
        "the members' connections are TLS ({encrypted})"
    );
    assert_eq!(clear, 0, "no connection of the role in the clear");
    recorder.assert_no_overlap_and_tokens_increase();
    for n in nodes {
        n.stop().expect("a graceful stop");
    }
}

// ---- PostgreSQL failover --------------------------------------------------

/// A primary with a streaming standby made by `pg_basebackup`, both with
/// `synchronous_commit = on`, and the members' proxy pointing at the
/// primary.
struct Pair {
    primary: leasering_testkit::TestPostgres,
    standby: leasering_testkit::TestPostgres,
    proxy: leasering_testkit::TcpProxy,
}

fn primary_and_standby(synchronous: bool) -> Pair {
    let (primary, standby) = leasering_testkit::TestPostgres::with_standby(synchronous)
        .unwrap_or_else(|e| panic!("a primary and its standby: {e}"));
    let proxy = TcpProxy::start(([127, 0, 0, 1], primary.port()).into())
        .unwrap_or_else(|e| panic!("proxy: {e}"));
    Pair {
        primary,
        standby,
        proxy,
    }
}

/// The failover itself: the primary dies (`SIGQUIT`, as in a crash), the
/// standby is promoted and the proxy (a virtual IP, a DNS name) points at
/// it from now on.
fn fail_over(pair: &Pair) {
    pair.primary.stop_immediate().unwrap();
    pair.standby.promote().unwrap_or_else(|e| panic!("{e}"));
    pair.proxy
        .set_target(([127, 0, 0, 1], pair.standby.port()).into());
    pair.proxy.cut();
}

/// A synchronous standby promoted: nothing is lost, so the members carry
/// on without fencing, and — set up for it with `failover_grace(0)`, as a
/// deployment that only ever promotes a synchronous standby may be — a
/// join and a leave right after the failover hand over at once. (With the
/// default grace they would wait one TTL and the margin: the cost of being
/// safe against a lossy promotion, tested below.)
#[test]
fn failover_to_a_synchronous_standby_carries_on() {
    use leasering_testkit::oracle::Coverage;
    init_logs();
    let pair = primary_and_standby(true);
    let ring = ring_name("failover");
    let ttl = Duration::from_secs(3);
    let recorder = Recorder::default();
    let nodes: Arc<Mutex<Vec<RingNode>>> = Arc::new(Mutex::new(Vec::new()));
    let sampler = start_sampler(nodes.clone());
    let start = |name: &str| {
        let pool = pair
            .primary
            .pool_via(pair.proxy.port(), 4)
            .unwrap_or_else(|e| panic!("{e}"));
        recorder.start(
            crate::common::builder(pool, &ring, name)
                .ring_size(RING_SIZE)
                .lease_ttl(ttl)
                .failover_grace(Duration::ZERO),
        )
    };
    for name in ["f0", "f1", "f2", "f3"] {
        let n = start(name);
        nodes.lock().unwrap().push(n);
    }
    wait_until(SETTLE, "four members to settle", || {
        settled_and_covered(&nodes)
    });
    // Some history first: a join and a leave.
    let n = start("f4");
    nodes.lock().unwrap().push(n);
    let leaving = nodes.lock().unwrap().remove(0);
    leaving.stop().unwrap();
    wait_until(SETTLE, "a join and a leave to settle", || {
        settled_and_covered(&nodes)
    });

    let failed_at = Instant::now();
    fail_over(&pair);
    wait_until(SETTLE, "the ring to settle on the promoted standby", || {
        settled_and_covered(&nodes)
    });
    let back_in = failed_at.elapsed();
    // It carries on: a join and a leave on the new primary.
    let n = start("f5");
    nodes.lock().unwrap().push(n);
    let leaving = nodes.lock().unwrap().remove(0);
    leaving.stop().unwrap();
    wait_until(SETTLE, "a join and a leave on the new primary", || {
        settled_and_covered(&nodes)
    });

    sampler.finish().assert_no_overlap();
    recorder.assert_no_overlap_and_tokens_increase();
    let coverage = Coverage::new(&recorder.intervals(), RING_SIZE);
    let (gap, p) = coverage.worst_gap(oracle::ns(failed_at), oracle::now());
    let gap = Duration::from_nanos(gap);
    eprintln!("deploy: failover settled in {back_in:?}; longest uncovered stretch {gap:?} (partition {p})");
    // A bound of liveness, not of speed (that is the failover bench's): a
    // database outage, like the others of the chaos harness, within two
    // lease TTLs — on a loaded machine the promotion alone can outlast the
    // members' local leases.
    assert!(
        gap <= ttl * 2,
        "every partition is covered again within two lease TTLs ({:?}) of the failover: partition {p} was uncovered for {gap:?}",
        ttl * 2
    );
    for n in nodes.lock().unwrap().drain(..) {
        n.stop().expect("a graceful stop");
    }
}

/// The largest token of the acquisitions `recorder` saw that `keep`
/// accepts (by instant), or `None`.
fn tokens(recorder: &Recorder, keep: &dyn Fn(Instant) -> bool) -> Vec<u64> {
    recorder
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            leasering::Event::Acquired { token, at, .. } if keep(at) => Some(token),
            _ => None,
        })
        .collect()
}

/// Issue 11, 3(b): a failover that loses the last commits, with the
/// members running through it and nobody doing anything by hand. The
/// asynchronous standby's stream is cut, the ring churns on the old
/// primary (joins, leaves, handoffs: all of it lost), the primary dies and
/// the standby — a new timeline, behind — is promoted under the members'
/// feet. The members notice the new timeline in their renewals; those that
/// relied on something lost fence and rejoin (those whose join was lost
/// are evicted and rejoin); no claim is taken for a TTL on the new
/// timeline, so every lease of the old one has ended first; and every
/// token the new primary issues is above every token of the old one, so a
/// fenced sink that saw the lost tokens accepts the new ones. The oracle
/// (over every member's events) and the sampler see no overlap, and the
/// ring covers every partition exactly once again within the bound.
#[test]
fn a_failover_that_loses_commits_fences_and_rejoins_on_its_own() {
    init_logs();
    let pair = primary_and_standby(false);
    let ring = ring_name("lossy_auto");
    let ttl = Duration::from_secs(3);
    let recorder = Recorder::default();
    let nodes: Arc<Mutex<Vec<RingNode>>> = Arc::new(Mutex::new(Vec::new()));
    let sampler = start_sampler(nodes.clone());
    let start = |name: &str| {
        let pool = pair
            .primary
            .pool_via(pair.proxy.port(), 4)
            .unwrap_or_else(|e| panic!("{e}"));
        recorder.start(
            crate::common::builder(pool, &ring, name)
                .ring_size(RING_SIZE)
                .lease_ttl(ttl),
        )
    };
    for name in ["a0", "a1", "a2", "a3"] {
        let n = start(name);
        nodes.lock().unwrap().push(n);
    }
    wait_until(SETTLE, "four members to settle", || {
        settled_and_covered(&nodes)
    });
    // A router's observer follows the ring through the failover too. It
    // has a proxy of its own (in front of the members'), to be cut off
    // from the database across the failover.
    let obs_proxy = TcpProxy::start(pair.proxy.addr()).unwrap_or_else(|e| panic!("proxy: {e}"));
    let observer = leasering::RingObserver::builder(
        pair.primary
            .pool_via(obs_proxy.port(), 2)
            .unwrap_or_else(|e| panic!("{e}")),
        &ring,
    )
    .poll_interval(Duration::from_millis(200))
    .start()
    .unwrap_or_else(|e| panic!("observer: {e}"));
    // It agrees with the members: same epoch, same owner of every partition.
    let agrees = |nodes: &Arc<Mutex<Vec<RingNode>>>| {
        let v = observer.view();
        let m = nodes.lock().unwrap()[0].view();
        v.epoch() == m.epoch() && (0..RING_SIZE).all(|p| v.owner_of(p) == m.owner_of(p))
    };
    wait_until(SETTLE, "the observer to agree with the members", || {
        agrees(&nodes)
    });
    // The standby stops receiving: what follows is lost at the failover.
    let mut s = pair.standby.client().unwrap();
    s.batch_execute("ALTER SYSTEM SET primary_conninfo = ''")
        .unwrap();
    s.batch_execute("SELECT pg_reload_conf()").unwrap();
    let mut p = pair.primary.client().unwrap();
    wait_until(SETTLE, "the standby to stop streaming", || {
        p.query_opt("SELECT 1 FROM pg_stat_replication", &[])
            .unwrap()
            .is_none()
    });
    for round in 0..3 {
        let n = start(&format!("a{}", 4 + round));
        nodes.lock().unwrap().push(n);
        let leaving = nodes.lock().unwrap().remove(0);
        leaving.stop().unwrap();
        wait_until(SETTLE, "a join and a leave on the old primary", || {
            settled_and_covered(&nodes)
        });
    }
    wait_until(
        SETTLE,
        "the observer to follow the old primary's changes",
        || agrees(&nodes),
    );
    // Cut off until the new primary's epochs have passed the lost ones.
    obs_proxy.set_mode(ProxyMode::Stall);
    let lost_epoch: i64 = p
        .query_one(
            "SELECT epoch FROM leasering.rings WHERE ring_id = $1",
            &[&ring],
        )
        .unwrap()
        .get(0);
    let old_timeline: i64 = p
        .query_one(
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8",
            &[],
        )
        .unwrap()
        .get(0);
    drop(p);

    // The failover, with the members running; a new member right after
    // it, under an epoch the old primary had used for something else.
    let failed_at = Instant::now();
    fail_over(&pair);
    let promoted = Instant::now();
    let z = start("az");
    nodes.lock().unwrap().push(z);
    let before = tokens(&recorder, &|at| at < failed_at);
    let max_before = *before
        .iter()
        .max()
        .expect("acquisitions before the failover");
    let mut np = pair.standby.client().unwrap();
    let (kept_epoch, timeline): (i64, i64) = {
        let r = np
            .query_one(
                "SELECT (SELECT epoch FROM leasering.rings WHERE ring_id = $1),
                        ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8",
                &[&ring],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        kept_epoch < lost_epoch,
        "the promoted standby lost the last changes (epoch {kept_epoch} < {lost_epoch})"
    );
    assert_eq!(
        timeline,
        old_timeline + 1,
        "a promotion starts a new timeline"
    );
    // The members notice: each of them rejoins — evicted (its join was
    // lost), or fenced (claims or changes it relied on were: here every
    // view is at an epoch the new primary lost) — and nobody stops them.
    // (Whatever each had active is released first, as `Evicted`, or as
    // `LeaseExpired` if the promotion outlasted its local lease: the
    // oracle pairs every acquisition with its release.)
    let names: Vec<String> = nodes
        .lock()
        .unwrap()
        .iter()
        .map(|n| n.node_id().to_string())
        .collect();
    let rejoined = |name: &str| {
        recorder.events().iter().any(|(n, e)| {
            n == name && matches!(e, leasering::Event::Joined { at, .. } if *at > failed_at)
        })
    };
    wait_until(
        SETTLE,
        "every member to rejoin and the ring to cover everything again on the new primary",
        || names.iter().all(|n| rejoined(n)) && settled_and_covered(&nodes),
    );
    let back_in = failed_at.elapsed();
    let after = tokens(&recorder, &|at| at > promoted);
    let min_after = *after.iter().min().expect("acquisitions after the failover");
    assert!(
        min_after > max_before,
        "every token after the failover ({min_after} and up) is above every token before it ({max_before})"
    );
    assert!(
        min_after >= ((timeline - 1) as u64) << 32,
        "tokens on timeline {timeline} start at (timeline - 1) << 32: {min_after}"
    );
    eprintln!("deploy: lossy failover covered again in {back_in:?} (epoch {lost_epoch} lost, back to {kept_epoch}; tokens {max_before} -> {min_after})");
    // The new primary's epochs pass the lost ones; then the observer is
    // back. Its view of the lost timeline is not built on with the new
    // one's changes (which would leave `az`, joined under an epoch it had
    // already seen, out of its view): it reads the whole ring again.
    let mut np = pair.standby.client().unwrap();
    let mut round = 0;
    while np
        .query_one(
            "SELECT epoch FROM leasering.rings WHERE ring_id = $1",
            &[&ring],
        )
        .unwrap()
        .get::<_, i64>(0)
        <= lost_epoch
    {
        let n = start(&format!("ab{round}"));
        nodes.lock().unwrap().push(n);
        wait_until(SETTLE, "a join on the new primary", || {
            settled_and_covered(&nodes)
        });
        round += 1;
    }
    obs_proxy.set_mode(ProxyMode::Pass);
    obs_proxy.cut();
    wait_until(
        SETTLE,
        "the observer to agree with the members on the new primary",
        || settled(&nodes.lock().unwrap()) && agrees(&nodes),
    );
    assert!(observer.view().member("az").is_some());
    // It carries on: a join and a leave on the new primary.
    let n = start("a9");
    nodes.lock().unwrap().push(n);
    let leaving = nodes.lock().unwrap().remove(0);
    leaving.stop().unwrap();
    wait_until(SETTLE, "a join and a leave on the new primary", || {
        settled_and_covered(&nodes)
    });
    sampler.finish().assert_no_overlap();
    recorder.assert_no_overlap_and_tokens_increase();
    for n in nodes.lock().unwrap().drain(..) {
        n.stop().expect("a graceful stop");
    }
}

/// The manual recovery the README documents for a lossy restore that does
/// *not* start a new timeline (a `pg_dump` restored into a fresh cluster),
/// here after a promotion (so the automatic rules apply on top: the grace
/// period and the timeline's token floor). A failover that loses the last
/// commits (asynchronous standby, its stream cut before the members' last
/// handoffs): the members are stopped before they reach the new primary
/// (here: crashed, as they would be by the failover), the leftover state is
/// cleared and the ring's epoch raised past every token the old primary can
/// have issued, and the members start again. Every token after the
/// failover is above every token before it, and nothing overlaps.
#[test]
fn a_failover_that_loses_commits_with_the_documented_recovery() {
    init_logs();
    let pair = primary_and_standby(false);
    let ring = ring_name("lossy");
    let ttl = Duration::from_secs(3);
    let recorder = Recorder::default();
    let start = |name: &str| {
        let pool = pair
            .primary
            .pool_via(pair.proxy.port(), 4)
            .unwrap_or_else(|e| panic!("{e}"));
        recorder.start(
            crate::common::builder(pool, &ring, name)
                .ring_size(RING_SIZE)
                .lease_ttl(ttl),
        )
    };
    let mut nodes: Vec<RingNode> = ["l0", "l1", "l2", "l3"].iter().map(|n| start(n)).collect();
    wait_until(SETTLE, "four members to settle", || {
        settled(&nodes) && covered_exactly_once(&nodes, RING_SIZE)
    });
    // The standby stops receiving: what follows is lost at the failover.
    let mut s = pair.standby.client().unwrap();
    s.batch_execute("ALTER SYSTEM SET primary_conninfo = ''")
        .unwrap();
    s.batch_execute("SELECT pg_reload_conf()").unwrap();
    let mut p = pair.primary.client().unwrap();
    wait_until(SETTLE, "the standby to stop streaming", || {
        p.query_opt("SELECT 1 FROM pg_stat_replication", &[])
            .unwrap()
            .is_none()
    });
    for round in 0..3 {
        nodes.push(start(&format!("l{}", 4 + round)));
        nodes.remove(0).stop().unwrap();
        wait_until(SETTLE, "a join and a leave on the old primary", || {
            settled(&nodes) && covered_exactly_once(&nodes, RING_SIZE)
        });
    }
    let max_token = |filter: &dyn Fn(Instant) -> bool| {
        recorder
            .events()
            .into_iter()
            .filter_map(|(_, e)| match e {
                leasering::Event::Acquired { token, at, .. } if filter(at) => Some(token),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    };
    let before = max_token(&|_| true);
    let lost_epoch: i64 = p
        .query_one(
            "SELECT epoch FROM leasering.rings WHERE ring_id = $1",
            &[&ring],
        )
        .unwrap()
        .get(0);
    // The failover stops the members first.
    for n in nodes.drain(..) {
        n.crash();
    }
    fail_over(&pair);
    let mut np = pair.standby.client().unwrap();
    let kept_epoch: i64 = np
        .query_one(
            "SELECT epoch FROM leasering.rings WHERE ring_id = $1",
            &[&ring],
        )
        .unwrap()
        .get(0);
    assert!(
        kept_epoch < lost_epoch,
        "the promoted standby lost the last changes (epoch {kept_epoch} < {lost_epoch})"
    );
    // The recovery, with no member running.
    np.batch_execute(&format!(
        "BEGIN;
         DELETE FROM leasering.members WHERE ring_id = '{ring}';
         DELETE FROM leasering.vnodes WHERE ring_id = '{ring}';
         DELETE FROM leasering.join_requests WHERE ring_id = '{ring}';
         UPDATE leasering.claims SET holder = NULL, waiter = NULL WHERE ring_id = '{ring}';
         UPDATE leasering.rings SET epoch = epoch + 4294967296 WHERE ring_id = '{ring}';
         COMMIT;"
    ))
    .unwrap();
    let restarted = Instant::now();
    let nodes: Vec<RingNode> = ["l0", "l1", "l2", "l3"].iter().map(|n| start(n)).collect();
    wait_until(
        SETTLE,
        "the restarted members to settle on the new primary",
        || settled(&nodes) && covered_exactly_once(&nodes, RING_SIZE),
    );
    let after = recorder
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            leasering::Event::Acquired { token, at, .. } if at > restarted => Some(token),
            _ => None,
        })
        .min()
        .expect("acquisitions after the restart");
    assert!(
        after > before,
        "every token after the recovery ({after} and up) is above every token before the failover ({before})"
    );
    recorder.assert_no_overlap_and_tokens_increase();
    for n in nodes {
        n.stop().expect("a graceful stop");
    }
}
