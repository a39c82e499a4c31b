//! The process-wide [`Client`] (issue 18): what a process costs the
//! database — one backend at rest whatever its rings, one renewal
//! statement per heartbeat — and what happens to every membership of a
//! client when its one connection is cut or stalled.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasering::{Client, ErrorKind, Event, ReleaseReason, RingNode};
use leasering_testkit::fixtures::*;
use leasering_testkit::{ProxyMode, Recorder, TcpProxy, TestPostgres};

const TTL: Duration = Duration::from_secs(3);
const SETTLE: Duration = Duration::from_secs(30);

/// One test of this binary at a time: they count the process's threads
/// and the library's connections.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Backends of the database whose `application_name` is `app`.
fn backends(db: &TestPostgres, app: &str) -> i64 {
    db.client()
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .unwrap()
        .get(0)
}

/// Samples [`backends`] of `app` every 5 ms until stopped; the maximum.
struct PeakBackends {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicI64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl PeakBackends {
    fn start(db: &'static TestPostgres, app: &str) -> PeakBackends {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicI64::new(0)),
        );
        let (s, p, app) = (stop.clone(), peak.clone(), app.to_string());
        let handle = std::thread::spawn(move || {
            let mut c = db.client().unwrap();
            while !s.load(Ordering::Relaxed) {
                let n: i64 = c
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                        &[&app],
                    )
                    .unwrap()
                    .get(0);
                p.fetch_max(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        PeakBackends {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// Connections the library holds out of `pools` (checked out, not idle).
fn held(pools: &[Pool]) -> u32 {
    pools
        .iter()
        .map(|p| {
            let s = p.state();
            s.connections - s.idle_connections
        })
        .sum()
}

/// Waits until the library holds exactly `n` connections of `pools` (the
/// borrowed ones given back), then checks that it stays so for a
/// heartbeat interval, renewals and notifications included. (A pool keeps
/// the connections given back idle until its `idle_timeout`: backends of
/// the database, not of the library; with `min_idle(Some(0))` and an idle
/// timeout they close. `app`'s backends are never fewer than held.)
fn at_rest(db: &TestPostgres, app: &str, pools: &[Pool], n: u32) {
    wait_until(
        SETTLE,
        &format!("{app}: the library to hold {n} connections at rest"),
        || held(pools) == n,
    );
    let until = Instant::now() + TTL / 3 + Duration::from_millis(200);
    while Instant::now() < until {
        let now = held(pools);
        assert!(
            now <= n,
            "{app}: the library holds {now} connections at rest, {n} expected \
             (a renewal or a notification must not need another)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let b = backends(db, app);
    assert!(
        b >= i64::from(n),
        "{app}: {b} backends, fewer than the {n} held"
    );
}

/// How many of this process's threads are leasering's (by name; Linux
/// keeps the first 15 bytes).
fn leasering_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|n| n.starts_with("leasering-"))
        .count()
}

#[test]
fn one_member_works_with_a_pool_of_two() {
    init_logs();
    let _one = one_at_a_time();
    let db = db();
    let ring = ring_name("pool2");
    let pool_a = named_pool(db, "pool2-a", 2);
    let a = builder(pool_a.clone(), &ring, "a")
        .lease_ttl(TTL)
        .start()
        .unwrap();
    wait_until(SETTLE, "a to own the ring", || {
        a.owned_partitions().len() == 1024
    });
    let b = builder(named_pool(db, "pool2-b", 2), &ring, "b")
        .lease_ttl(TTL)
        .start()
        .unwrap();
    let both = [a.clone(), b.clone()];
    wait_until(SETTLE, "a and b to share the ring", || {
        settled(&both) && covered_exactly_once(&both, 1024)
    });
    at_rest(db, "pool2-a", std::slice::from_ref(&pool_a), 1);
    b.stop().unwrap();
    wait_until(SETTLE, "a to own the ring again", || {
        a.owned_partitions().len() == 1024
    });
    a.stop().unwrap();
    assert_eq!(held(&[pool_a]), 0, "a stopped member holds no connection");
}

#[test]
fn a_process_holds_one_backend_at_rest_whatever_its_rings_and_renews_them_in_one_statement() {
    init_logs();
    let _one = one_at_a_time();
    let db = db();
    // One member, a client of its own.
    let ring = ring_name("rest1");
    let peak = PeakBackends::start(db, "rest-one");
    let pool_one = named_pool(db, "rest-one", 4);
    let one = builder(pool_one.clone(), &ring, "one")
        .lease_ttl(TTL)
        .start()
        .unwrap();
    wait_until(SETTLE, "one to own the ring", || {
        one.owned_partitions().len() == 1024
    });
    at_rest(db, "rest-one", std::slice::from_ref(&pool_one), 1);
    let peak_one = peak.finish();
    assert!(
        peak_one <= 3,
        "one member peaked at {peak_one} backends (held + borrowed for the join and the takes)"
    );
    one.stop().unwrap();

    // Eight members with a client each: eight backends.
    let ring = ring_name("rest8");
    let pools: Vec<Pool> = (0..8).map(|_| named_pool(db, "rest-eight", 4)).collect();
    let eight: Vec<RingNode> = (0..8)
        .map(|i| {
            builder(pools[i].clone(), &ring, &format!("m{i}"))
                .lease_ttl(TTL)
                .start()
                .unwrap()
        })
        .collect();
    wait_until(SETTLE, "eight members to settle", || {
        settled(&eight) && covered_exactly_once(&eight, 1024)
    });
    at_rest(db, "rest-eight", &pools, 8);
    for n in &eight {
        n.stop().unwrap();
    }

    // One client, eight rings: one backend, four threads, one renewal
    // statement for all (every row renewed at one `now()`).
    let before = leasering_threads();
    let pool_rings = named_pool(db, "rest-rings", 4);
    let client = Client::new(pool_rings.clone());
    let peak = PeakBackends::start(db, "rest-rings");
    let rings: Vec<String> = (0..8).map(|i| ring_name(&format!("rings{i}"))).collect();
    let members: Vec<RingNode> = rings
        .iter()
        .map(|r| {
            client
                .member(r)
                .node_id("p")
                .lease_ttl(TTL)
                .start()
                .unwrap()
        })
        .collect();
    assert_eq!(client.registrations(), 8);
    wait_until(SETTLE, "each member to own its ring", || {
        members.iter().all(|m| m.owned_partitions().len() == 1024)
    });
    at_rest(db, "rest-rings", std::slice::from_ref(&pool_rings), 1);
    let peak_rings = peak.finish();
    assert!(
        peak_rings <= 4,
        "one client of eight rings peaked at {peak_rings} backends"
    );
    assert_eq!(
        leasering_threads() - before,
        4,
        "one client runs four threads whatever its rings"
    );
    // Two heartbeats later every membership was renewed by one statement.
    let renewals = members[0].status().renewals;
    wait_until(SETTLE, "two renewals", || {
        members[0].status().renewals >= renewals + 2
    });
    let stamps: Vec<std::time::SystemTime> = {
        let mut c = db.client().unwrap();
        rings
            .iter()
            .map(|r| {
                c.query_one(
                    "SELECT renewed_at FROM leasering.members WHERE ring_id = $1",
                    &[r],
                )
                .unwrap()
                .get(0)
            })
            .collect()
    };
    // (Read while none renews: half an interval is left before the next.)
    assert!(
        stamps.iter().all(|s| *s == stamps[0]),
        "the eight memberships were renewed at different instants, so by more than one statement: {stamps:?}"
    );
    for m in &members {
        m.stop().unwrap();
    }
    wait_until(
        SETTLE,
        "the client's threads to stop with its last member",
        || leasering_threads() == before,
    );
    assert_eq!(client.registrations(), 0);
}

#[test]
fn a_refused_connection_keeps_the_servers_reason() {
    init_logs();
    let _one = one_at_a_time();
    // A server of its own with room for a single client of a plain role.
    let db = TestPostgres::start_with(leasering_testkit::TestPostgresOptions {
        max_connections: 6,
        extra_settings: vec![("superuser_reserved_connections".into(), "4".into())],
    })
    .unwrap();
    let mut admin = db.client().unwrap();
    admin
        .batch_execute("CREATE ROLE plain LOGIN; GRANT ALL ON DATABASE postgres TO plain; GRANT CREATE ON SCHEMA public TO plain")
        .unwrap();
    let mut config = db.config();
    config.user("plain");
    let taken = config.connect(postgres::NoTls).unwrap();
    let client = Client::connect(config, postgres::NoTls, 2).unwrap();
    let err = client
        .member(ring_name("refused"))
        .start_timeout(Duration::from_secs(2))
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Database, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("too many clients") || text.contains("remaining connection slots"),
        "the server's reason is lost: {text}"
    );
    assert!(text.contains("max_connections"), "no advice: {text}");
    drop(taken);
}

/// A client's one connection cut (and refused past the TTL), then stalled
/// past the TTL: every membership of that client fences itself — before
/// its lease ends in the database, so nothing overlaps — and rejoins once
/// the link is back; the members of other processes go on meanwhile,
/// waiting only for the claims the cut-off client held.
#[test]
fn a_cut_or_stalled_client_connection_fences_all_its_members_and_nothing_else() {
    init_logs();
    let _one = one_at_a_time();
    let db = db();
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", db.port()).parse().unwrap()).unwrap();
    // One recorder per ring: the judge of overlaps and tokens is per ring.
    let recorders: Vec<Recorder> = (0..3).map(|_| Recorder::default()).collect();
    let client = Client::new(db.pool_via(proxy.port(), 4).unwrap());
    let rings: Vec<String> = (0..3).map(|i| ring_name(&format!("cut{i}"))).collect();
    let proxied: Vec<RingNode> = rings
        .iter()
        .zip(&recorders)
        .map(|(r, recorder)| {
            recorder.start(
                client
                    .member(r)
                    .node_id("proxied")
                    .lease_ttl(TTL)
                    .stop_timeout(Duration::from_secs(2)),
            )
        })
        .collect();
    let direct: Vec<Vec<RingNode>> = rings
        .iter()
        .zip(&recorders)
        .map(|(r, recorder)| {
            (0..2)
                .map(|i| recorder.start(builder(pool(3), r, &format!("direct{i}")).lease_ttl(TTL)))
                .collect()
        })
        .collect();
    let ring_members = |i: usize| -> Vec<RingNode> {
        let mut v = direct[i].clone();
        v.push(proxied[i].clone());
        v
    };
    for i in 0..3 {
        let all = ring_members(i);
        wait_until(SETTLE, "each ring to settle with 3 members", || {
            settled(&all) && covered_exactly_once(&all, 1024)
        });
    }
    for (label, fault) in [("cut", ProxyMode::Refuse), ("stall", ProxyMode::Stall)] {
        proxy.set_mode(fault);
        if label == "cut" {
            proxy.cut();
        }
        // Every membership of the client fences itself...
        wait_until(
            TTL * 3,
            &format!("{label}: every proxied member to fence itself"),
            || proxied.iter().all(|n| n.owned_partitions().is_empty()),
        );
        // ...and the others cover each ring without it (waiting for
        // nothing but the cut-off client's claims).
        for (i, others) in direct.iter().enumerate() {
            wait_until(
                TTL * 3,
                &format!("{label}: the others to cover ring {i}"),
                || covered_exactly_once(others, 1024),
            );
        }
        proxy.set_mode(ProxyMode::Pass);
        for i in 0..3 {
            let all = ring_members(i);
            wait_until(
                SETTLE,
                &format!("{label}: the proxied member of ring {i} back"),
                || settled(&all) && covered_exactly_once(&all, 1024),
            );
        }
    }
    for recorder in &recorders {
        recorder.assert_no_overlap_and_tokens_increase();
    }
    let fenced: BTreeSet<String> = recorders
        .iter()
        .flat_map(|r| r.events())
        .filter(|(_, e): &(String, Event)| {
            matches!(
                e,
                Event::Released {
                    reason: ReleaseReason::LeaseExpired | ReleaseReason::Evicted,
                    ..
                }
            )
        })
        .map(|(n, _)| n)
        .collect();
    assert!(
        fenced.iter().all(|n| n.starts_with("proxied")),
        "only the cut-off client's members lose their lease: {fenced:?}"
    );
    for n in proxied.iter().chain(direct.iter().flatten()) {
        let _ = n.stop();
    }
}
