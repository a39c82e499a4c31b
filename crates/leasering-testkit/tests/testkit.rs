//! Tests of the testkit itself, against the real PostgreSQL binaries.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use leasering_testkit::{unique_name, ProxyMode, TcpProxy, TestPostgres, TestPostgresOptions};
use postgres::{Client, Config, NoTls};

const DEADLINE: Duration = Duration::from_secs(20);
/// The child program of the process tests (`src/bin/testkit-helper.rs`).
const HELPER: &str = env!("CARGO_BIN_EXE_testkit-helper");

/// Polls `condition` every 10 ms until it holds; panics after `DEADLINE`.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn shared() -> &'static TestPostgres {
    TestPostgres::shared().expect("shared test server")
}

fn target(pg: &TestPostgres) -> SocketAddr {
    (pg.host().as_str(), pg.port())
        .to_socket_addrs()
        .expect("resolve server address")
        .next()
        .expect("server address")
}

/// A configuration reaching `pg` through 127.0.0.1:`port`.
fn config_via(pg: &TestPostgres, port: u16) -> Config {
    let base = pg.config();
    let mut config = Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(base.get_user().unwrap_or("postgres"))
        .dbname(base.get_dbname().unwrap_or("postgres"))
        .connect_timeout(Duration::from_secs(2));
    if let Some(password) = base.get_password() {
        config.password(password);
    }
    config
}

fn select_int(client: &mut Client, value: i32) -> i32 {
    client
        .query_one("SELECT $1::int4", &[&value])
        .expect("query")
        .get(0)
}

fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .next()
                .unwrap_or("X")
                .to_string();
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

fn child_pids(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat[stat.rfind(')')? + 1..].to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// The cluster directory of a postmaster: the parent of its data directory,
/// which is its working directory.
fn cluster_dir(pid: u32) -> PathBuf {
    let data = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("postmaster cwd");
    data.parent().expect("cluster dir").to_path_buf()
}

#[test]
fn unique_name_is_a_valid_identifier() {
    let a = unique_name("Lease-Test");
    let b = unique_name("Lease-Test");
    assert_ne!(a, b);
    for name in [
        &a,
        &b,
        &unique_name(""),
        &unique_name("9lives"),
        &unique_name(&"x".repeat(100)),
    ] {
        assert!(name.len() <= 40, "{name} too long");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name} has bad characters"
        );
        assert!(
            name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_'),
            "{name} starts badly"
        );
    }
    assert!(a.starts_with("lease_test_"), "{a}");

    let mut client = shared().client().unwrap();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {a}; CREATE TABLE {a}.t (x int); DROP SCHEMA {a} CASCADE"
        ))
        .unwrap();
}

#[test]
fn shared_returns_the_same_instance() {
    let a = TestPostgres::shared().unwrap();
    let b = TestPostgres::shared().unwrap();
    assert!(std::ptr::eq(a, b));
}

#[test]
fn pool_runs_select_one() {
    let pool = shared().pool(4).unwrap();
    let mut conn = pool.get().unwrap();
    let one: i32 = conn.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    assert!(shared().pool(0).is_err());
}

#[test]
fn stop_start_and_kill_a_cluster() {
    // Started from a thread that then exits: the server must survive it
    // (the parent-death signal is tied to the keeper thread).
    let pg = thread::spawn(|| {
        TestPostgres::start_with(TestPostgresOptions {
            max_connections: 30,
            extra_settings: vec![("work_mem".to_string(), "7MB".to_string())],
        })
    })
    .join()
    .unwrap()
    .unwrap();
    thread::sleep(Duration::from_millis(100));
    assert!(pg.is_running());
    assert!(!pg.is_external());
    let pid = pg.pid().unwrap();
    let dir = cluster_dir(pid);
    assert!(dir.join("data").join("PG_VERSION").is_file());

    let mut client = pg.client().unwrap();
    let max: String = client
        .query_one("SHOW max_connections", &[])
        .unwrap()
        .get(0);
    assert_eq!(max, "30");
    let work_mem: String = client.query_one("SHOW work_mem", &[]).unwrap().get(0);
    assert_eq!(work_mem, "7MB");
    client
        .batch_execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        .unwrap();
    assert!(pg.start_again().is_err(), "start_again while running");

    // Fast stop, then start again on the same port and data.
    pg.stop_fast().unwrap();
    assert!(!pg.is_running());
    assert_eq!(pg.pid(), None);
    assert!(!process_alive(pid));
    assert!(pg.client().is_err());
    assert!(client.simple_query("SELECT 1").is_err());
    pg.stop_fast().unwrap(); // already stopped: fine
    pg.start_again().unwrap();
    let mut client = pg.client().unwrap();
    let kept: i32 = client.query_one("SELECT x FROM kept", &[]).unwrap().get(0);
    assert_eq!(kept, 42);

    // Kill (with a connection open), then start again (crash recovery).
    let pid = pg.pid().unwrap();
    let children = child_pids(pid);
    assert!(!children.is_empty());
    pg.kill().unwrap();
    assert!(!pg.is_running());
    assert!(!process_alive(pid));
    for child in children {
        assert!(!process_alive(child), "backend {child} outlived kill()");
    }
    assert!(client.simple_query("SELECT 1").is_err());
    pg.start_again().unwrap();
    let mut client = pg.client().unwrap();
    let kept: i32 = client.query_one("SELECT x FROM kept", &[]).unwrap().get(0);
    assert_eq!(kept, 42);

    // Immediate stop, start again, then drop removes everything.
    pg.stop_immediate().unwrap();
    pg.start_again().unwrap();
    let pid = pg.pid().unwrap();
    drop(client);
    drop(pg);
    assert!(!process_alive(pid));
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn proxy_pass_forwards_queries() {
    let pg = shared();
    let proxy = TcpProxy::start(target(pg)).unwrap();
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    assert_eq!(proxy.addr().port(), proxy.port());

    let mut client = config_via(pg, proxy.port()).connect(NoTls).unwrap();
    assert_eq!(select_int(&mut client, 7), 7);
    wait_until("the proxy counts one connection", || {
        proxy.connections() == 1
    });

    let pool = pg.pool_via(proxy.port(), 2).unwrap();
    let mut conn = pool.get().unwrap();
    assert_eq!(select_int(&mut conn, 8), 8);
    // A larger result, to cross several chunks.
    let n: i64 = client
        .query("SELECT repeat('x', 1000) FROM generate_series(1, 500)", &[])
        .unwrap()
        .len() as i64;
    assert_eq!(n, 500);

    proxy.set_mode(ProxyMode::Delay(Duration::from_millis(20)));
    assert_eq!(select_int(&mut client, 9), 9);
    proxy.set_mode(ProxyMode::Pass);

    drop(conn);
    drop(pool);
    drop(proxy);
    // The proxy closed its connections when dropped.
    assert!(client.simple_query("SELECT 1").is_err());
}

#[test]
fn proxy_stall_holds_traffic_until_pass() {
    let pg = shared();
    let proxy = TcpProxy::start(target(pg)).unwrap();
    let mut client = config_via(pg, proxy.port()).connect(NoTls).unwrap();
    assert_eq!(select_int(&mut client, 1), 1);

    proxy.set_mode(ProxyMode::Stall);
    assert_eq!(proxy.mode(), ProxyMode::Stall);
    assert!(client.is_valid(Duration::from_millis(300)).is_err());
    assert_eq!(proxy.connections(), 1, "a stall keeps the connection open");

    proxy.set_mode(ProxyMode::Pass);
    client.is_valid(Duration::from_secs(10)).unwrap();
    assert_eq!(select_int(&mut client, 2), 2);

    // stall_for: stalled now, passing again by itself later (long enough
    // that "now" is still within it when checked on a loaded machine).
    proxy.stall_for(Duration::from_secs(2)).unwrap();
    assert_eq!(proxy.mode(), ProxyMode::Stall);
    client.is_valid(Duration::from_secs(10)).unwrap();
    wait_until("stall_for ends", || proxy.mode() == ProxyMode::Pass);
    assert_eq!(select_int(&mut client, 3), 3);
}

#[test]
fn proxy_cut_closes_existing_connections() {
    let pg = shared();
    let proxy = TcpProxy::start(target(pg)).unwrap();
    let mut old = config_via(pg, proxy.port()).connect(NoTls).unwrap();
    assert_eq!(select_int(&mut old, 1), 1);
    wait_until("one connection", || proxy.connections() == 1);

    proxy.cut();
    assert_eq!(proxy.connections(), 0);
    assert!(old.simple_query("SELECT 1").is_err());

    let mut new = config_via(pg, proxy.port()).connect(NoTls).unwrap();
    assert_eq!(select_int(&mut new, 2), 2);
    wait_until("one connection again", || proxy.connections() == 1);
}

#[test]
fn proxy_refuse_rejects_new_connections_only() {
    let pg = shared();
    let proxy = TcpProxy::start(target(pg)).unwrap();
    let mut existing = config_via(pg, proxy.port()).connect(NoTls).unwrap();

    proxy.set_mode(ProxyMode::Refuse);
    assert!(config_via(pg, proxy.port()).connect(NoTls).is_err());
    assert_eq!(select_int(&mut existing, 5), 5);

    proxy.set_mode(ProxyMode::Pass);
    let mut new = config_via(pg, proxy.port()).connect(NoTls).unwrap();
    assert_eq!(select_int(&mut new, 6), 6);
}

#[test]
fn proxy_to_a_closed_port_closes_the_client() {
    // Nothing listens on the target: the client sees the connection end.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let proxy = TcpProxy::start(addr).unwrap();
    let mut config = Config::new();
    config
        .host("127.0.0.1")
        .port(proxy.port())
        .user("postgres")
        .connect_timeout(Duration::from_secs(2));
    assert!(config.connect(NoTls).is_err());
    wait_until("no connection", || proxy.connections() == 0);
}

/// Runs the helper program in a child process.
fn run_helper(mode: &str) -> (std::process::Child, u32, PathBuf) {
    let mut child = Command::new(HELPER)
        .arg(mode)
        .env_remove("LEASERING_TEST_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut found = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some((_, rest)) = line.split_once("POSTMASTER ") {
            let (pid, dir) = rest.trim().split_once(' ').unwrap();
            found = Some((pid.parse().unwrap(), PathBuf::from(dir)));
            break;
        }
    }
    // Keep draining, so that the helper can print its summary.
    thread::spawn(move || lines.for_each(drop));
    let (pid, dir) = found.expect("helper did not report a postmaster");
    (child, pid, dir)
}

/// Removes what a postmaster killed by the kernel left behind.
fn clean_up_after(dir: &Path) {
    if let Ok(lock) = std::fs::read_to_string(dir.join("data/postmaster.pid")) {
        if let Some(id) = lock
            .lines()
            .nth(6)
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|id| id.parse::<libc::c_int>().ok())
        {
            // SAFETY: plain syscall.
            unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn postmaster_dies_with_a_killed_test_process() {
    let (mut helper, pid, dir) = run_helper("kill");
    let children = child_pids(pid);
    helper.kill().unwrap();
    helper.wait().unwrap();
    wait_until("the orphaned postmaster dies", || !process_alive(pid));
    wait_until("its children die", || {
        children.iter().all(|&c| !process_alive(c))
    });
    clean_up_after(&dir);
}

#[test]
fn shared_cluster_is_removed_at_exit() {
    let (mut helper, pid, dir) = run_helper("exit");
    let status = helper.wait().unwrap();
    assert!(status.success());
    // atexit stopped it and removed its directory before the process ended.
    assert!(!process_alive(pid));
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn external_server_from_env() {
    let pg = shared();
    let status = Command::new(HELPER)
        .arg("external")
        .env("LEASERING_TEST_DATABASE_URL", pg.url())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the external-server checks failed");
}

#[test]
fn a_failed_start_reports_the_server_log() {
    let options = TestPostgresOptions {
        extra_settings: vec![("no_such_setting".to_string(), "1".to_string())],
        ..TestPostgresOptions::default()
    };
    let err = TestPostgres::start_with(options).unwrap_err();
    assert!(
        err.message()
            .contains("unrecognized configuration parameter"),
        "{err}"
    );
}
