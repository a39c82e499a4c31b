//! Operating a ring, with real tools:
//!
//! * `ringnode demo --http` answers `/metrics` (checked by Debian's
//!   `promtool check metrics`), `/healthz` and `/readyz`, and a real
//!   `prometheus` scrapes it: its query API returns `up == 1` and the
//!   ring's partitions.
//! * `ringnode node --http` behind the testkit's TCP proxy: `/readyz` turns
//!   503 while the database link is stalled, 200 again after.
//! * `ringnode status` reads a live ring (text and JSON, with a partition
//!   waiting for a frozen member's claim, a member's metadata, a balanced
//!   ring placed by its stored table) and exits 3 for a ring not found, 4
//!   for a database unreachable.
//!
//! `prometheus` and `promtool` come from Debian's `prometheus` package;
//! without them these tests fail (they are never skipped).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use leasering::{Placement, RingNode};
use leasering_testkit::{unique_name, ProxyMode, TcpProxy, TestPostgres};

const LIMIT: Duration = Duration::from_secs(30);

fn ringnode() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ringnode"));
    c.env_remove("DATABASE_URL").env_remove("RUST_LOG");
    c
}

/// A program of Debian's `prometheus` package (installed by the testkit
/// when missing and run as root), or a failure saying what to install.
fn tool(name: &str) -> PathBuf {
    leasering_testkit::debian::program(name, "prometheus").unwrap_or_else(|e| panic!("{e}"))
}

fn unused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `GET http://127.0.0.1:port{path}`: the status code and body, or `None`
/// if nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Polls `f` every 50 ms until it gives a value, or panics after `limit`
/// with `what` and the last thing seen.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Kills a child on drop (a failed assertion leaves no process behind).
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Guard {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }
    /// Sends `sig` and waits (bounded) for a successful exit.
    fn end_with(mut self, sig: libc::c_int, what: &str) {
        let mut c = self.0.take().expect("running");
        unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(s) = c.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("{what} did not exit within {LIMIT:?} of signal {sig}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{what} exited with {status}");
    }
}

/// The value of a one-sample instant query of Prometheus's HTTP API.
fn query(port: u16, promql: &str) -> Result<f64, String> {
    let enc: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (code, body) =
        get(port, &format!("/api/v1/query?query={enc}")).ok_or("no answer from prometheus")?;
    if code != 200 {
        return Err(format!("{code}: {body}"));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    let value = v["data"]["result"][0]["value"][1]
        .as_str()
        .ok_or(format!("no sample yet: {body}"))?;
    value.parse().map_err(|e| format!("{e}: {body}"))
}

#[test]
fn the_demo_serves_metrics_health_and_readiness_and_prometheus_scrapes_it() {
    let promtool = tool("promtool");
    let prometheus = tool("prometheus");
    let http = unused_port();
    let mut demo = Guard(Some(
        ringnode()
            .args(["demo", "--plain", "--nodes", "3", "--seconds", "60"])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ringnode demo"),
    ));
    // The demo starts its members one after the other: ready (200) comes
    // with the first, all three a little later.
    let ready = wait_for(
        LIMIT,
        "the demo's /readyz to answer 200 for 3 members",
        || match get(http, "/readyz") {
            Some((200, body)) if body.starts_with("ready: 3 live members") => Ok(body),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(ready.starts_with("ready: 3 live members"), "{ready}");
    assert_eq!(get(http, "/healthz"), Some((200, "ok\n".into())));
    // Renewals come a third of the lease TTL after the joins.
    let scrape = wait_for(
        LIMIT,
        "a scrape with partitions, renewals, handoffs",
        || {
            let (code, scrape) = get(http, "/metrics").ok_or("no answer")?;
            let missing: Vec<&str> = [
                "leasering_partitions_active{",
                "leasering_renewals_total{",
                "leasering_handoff_seconds_bucket{",
                "# HELP leasering_epoch ",
            ]
            .into_iter()
            .filter(|s| !scrape.contains(s))
            .collect();
            if code == 200 && missing.is_empty() {
                Ok(scrape)
            } else {
                Err(format!("{code}, missing {missing:?}"))
            }
        },
    );
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\non:\n{scrape}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus with a throwaway configuration and storage.
    let dir = std::env::temp_dir().join(unique_name("ringnode-prometheus"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: ringnode\n    static_configs:\n      \
             - targets: ['127.0.0.1:{http}']\n"
        ),
    )
    .unwrap();
    let web = unused_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let prom = Guard(Some(
        Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus"),
    ));
    let log_of = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    let up = wait_for(LIMIT, "prometheus to scrape the demo (up == 1)", || {
        query(web, "up{job=\"ringnode\"}").and_then(|v| {
            if v == 1.0 {
                Ok(v)
            } else {
                Err(format!("up = {v}"))
            }
        })
    });
    assert_eq!(up, 1.0, "{}", log_of());
    // Waited for whole: a scrape taken while a handoff was in flight may
    // sum less.
    let active = wait_for(
        LIMIT,
        "prometheus to have the ring's 1024 partitions",
        || {
            query(web, "sum(leasering_partitions_active{ring=\"demo\"})").and_then(|v| {
                if v == 1024.0 {
                    Ok(v)
                } else {
                    Err(format!("sum = {v}"))
                }
            })
        },
    );
    assert_eq!(active, 1024.0);
    prom.end_with(libc::SIGTERM, "prometheus");
    let _ = std::fs::remove_dir_all(&dir);
    // `q` on stdin ends the demo (and its throwaway PostgreSQL) cleanly.
    writeln!(demo.child().stdin.as_mut().unwrap(), "q").unwrap();
    demo.end_with(0, "ringnode demo");
}

#[test]
fn readyz_turns_503_while_the_database_link_stalls() {
    let db = TestPostgres::shared().unwrap_or_else(|e| panic!("{e}"));
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", db.port()).parse().unwrap()).unwrap();
    let http = unused_port();
    let ring = unique_name("readyz");
    let node = Guard(Some(
        ringnode()
            .args([
                "node",
                "--plain",
                "--node-id",
                "behind-proxy",
                "--ring-size",
                "64",
            ])
            .args(["--lease-ttl", "1s", "--ring-id", &ring])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .arg("--database-url")
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                proxy.port()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ringnode node"),
    ));
    let readyz = |want: u16| {
        move || match get(http, "/readyz") {
            Some((code, body)) if code == want => Ok(body),
            other => Err(format!("{other:?}")),
        }
    };
    let body = wait_for(LIMIT, "/readyz 200", readyz(200));
    assert!(body.starts_with("ready: "), "{body}");
    proxy.set_mode(ProxyMode::Stall);
    let body = wait_for(LIMIT, "/readyz 503 while the link stalls", readyz(503));
    assert!(
        body.starts_with("not ready: behind-proxy: ") && !body.trim_end().contains('\n'),
        "one line naming the member: {body:?}"
    );
    assert_eq!(get(http, "/healthz").map(|r| r.0), Some(200));
    proxy.set_mode(ProxyMode::Pass);
    wait_for(LIMIT, "/readyz 200 after the stall", readyz(200));
    node.end_with(libc::SIGINT, "ringnode node");
}

fn status(args: &[&str]) -> (i32, String, String) {
    let out = ringnode()
        .arg("status")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ringnode status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn status_reads_a_live_ring_and_has_exit_codes_for_missing_ring_and_database() {
    // A server of its own: the exit-code checks need a known schema set.
    let db = TestPostgres::start().unwrap_or_else(|e| panic!("{e}"));
    let url = db.url();
    let ring = unique_name("status");
    let ttl = Duration::from_secs(10);
    // `alpha` is frozen below while `beta` joins, for a TTL of beta's: long
    // enough that the join and the status checks never come near its end.
    // Its local lease must outlast the freeze: it runs more than half its
    // TTL after its last renewal.
    let alpha_ttl = ttl * 3;
    let start_in = |ring: &str,
                    id: &str,
                    placement: Placement,
                    metadata: Option<&str>,
                    ttl: Duration|
     -> RingNode {
        let mut b = RingNode::builder(db.pool(4).unwrap(), ring.to_string())
            .node_id(id)
            .ring_size(64)
            .placement(placement)
            .lease_ttl(ttl);
        if let Some(md) = metadata {
            b = b.metadata(md);
        }
        b.start().unwrap()
    };
    let start = |id: &str| {
        start_in(
            &ring,
            id,
            Placement::Hashed,
            (id == "beta").then_some("zone=a"),
            if id == "alpha" { alpha_ttl } else { ttl },
        )
    };
    let a = start("alpha");
    let deadline = Instant::now() + LIMIT;
    while a.owned_partitions().len() < 64 {
        assert!(Instant::now() < deadline, "alpha never owned the ring");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, text, err) = status(&["--database-url", &url, "--ring-id", &ring]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains(&format!("ring {ring:?}")), "{text}");
    assert!(
        text.contains("64 partitions (hashed placement), 1 members"),
        "{text}"
    );
    assert!(text.contains("alpha"), "{text}");
    assert!(text.contains("no partition waits for a claim"), "{text}");

    // `alpha` frozen while `beta` joins: beta's share waits for alpha's
    // claims until the freeze ends (everything below up to the metadata
    // happens within it).
    a.pause_threads_for(ttl);
    let b = start("beta");
    let json: serde_json::Value = wait_for(LIMIT, "beta waiting on alpha", || {
        let (code, out, err) = status(&["--database-url", &url, "--ring-id", &ring, "--json"]);
        if code != 0 {
            return Err(err);
        }
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        let waiting = v["waiting"].as_array().cloned().unwrap_or_default();
        if !waiting.is_empty()
            && waiting
                .iter()
                .all(|w| w["assigned_to"] == "beta" && w["held_by"] == "alpha")
        {
            Ok(v)
        } else {
            Err(out)
        }
    });
    assert_eq!(json["ring_id"], ring.as_str());
    assert_eq!(json["ring_size"], 64);
    assert_eq!(json["placement"], "hashed");
    let members = json["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{json}");
    assert_eq!(members[0]["node_id"], "alpha");
    assert_eq!(members[0]["partitions_claimed"], 64, "{json}");
    assert_eq!(members[0]["vnodes"], 8);
    assert!(members[0]["metadata"].is_null());
    let left = members[0]["lease_left_seconds"].as_f64().unwrap();
    assert!(left > 0.0 && left <= alpha_ttl.as_secs_f64(), "{json}");
    assert!(json["epoch"].as_i64().unwrap() >= 2, "{json}");
    let (code, text, _) = status(&["--database-url", &url, "--ring-id", &ring]);
    assert_eq!(code, 0);
    assert!(text.contains("beta waits for"), "{text}");
    assert!(text.contains("(held by alpha)"), "{text}");

    // The metadata a member started with.
    let (code, out, err) = status(&["--database-url", &url, "--ring-id", &ring, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["members"][1]["metadata"], "zone=a", "{v}");
    assert!(text.contains("zone=a"), "{text}");

    // A balanced ring: status places partitions by the stored table, so a
    // settled ring has nobody waiting (placing them by the vnodes, as a
    // hashed ring, would show most of them waiting).
    let bring = unique_name("status_balanced");
    let b1 = start_in(&bring, "b1", Placement::Balanced, None, ttl);
    let b2 = start_in(&bring, "b2", Placement::Balanced, None, ttl);
    let b3 = start_in(&bring, "b3", Placement::Balanced, None, ttl);
    let v = wait_for(
        Duration::from_secs(20),
        "the balanced ring to settle",
        || {
            let (code, out, err) = status(&["--database-url", &url, "--ring-id", &bring, "--json"]);
            if code != 0 {
                return Err(err);
            }
            let v: serde_json::Value =
                serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
            let claimed: Vec<i64> = v["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["partitions_claimed"].as_i64().unwrap())
                .collect();
            if v["waiting"].as_array().is_some_and(|w| w.is_empty())
                && claimed.iter().sum::<i64>() == 64
            {
                Ok(v)
            } else {
                Err(out)
            }
        },
    );
    assert_eq!(v["placement"], "balanced");
    let claimed: Vec<i64> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["partitions_claimed"].as_i64().unwrap())
        .collect();
    assert!(claimed.iter().all(|c| *c == 21 || *c == 22), "{v}");
    for n in [b1, b2, b3] {
        n.stop().unwrap();
    }

    // Exit codes: 3 for a ring (or schema) not found, 4 for no database.
    let (code, _, err) = status(&["--database-url", &url, "--ring-id", "no-such-ring"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not found") && err.contains(&ring), "{err}");
    let (code, _, err) = status(&["--database-url", &url, "--schema", "nowhere"]);
    assert_eq!(code, 3, "{err}");
    let dead = format!(
        "host=127.0.0.1 port={} user=postgres connect_timeout=2",
        unused_port()
    );
    let (code, _, err) = status(&["--database-url", &dead]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("database unreachable"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    b.stop().unwrap();
    a.stop().unwrap();
}
