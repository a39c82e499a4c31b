//! Metrics, health and readiness for a service that embeds a member.
//!
//! The library reports through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`); any recorder collects it. Here
//! `metrics-exporter-prometheus` keeps the values and renders the
//! Prometheus text format, and a small synchronous HTTP server
//! (`tiny_http`, no async runtime) serves:
//!
//! * `/metrics` — `leasering_partitions_active`, `leasering_handoff_seconds`,
//!   … (the table is in `leasering::telemetry`);
//! * `/healthz` — liveness: 200 while the process runs;
//! * `/readyz` — readiness: 200 while the member is
//!   [healthy](leasering::NodeStatus::health) (in the ring, its lease runs,
//!   its renewals are answered), else 503 with the reason.
//!
//! The example asks its own endpoints once, prints the answers and exits.
//!
//! Run: `cargo run --example server` (a throwaway PostgreSQL; or set
//! `DATABASE_URL`).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{wait_for, Database};
use leasering::{Health, RingNode};
use metrics_exporter_prometheus::PrometheusBuilder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Installed before the member starts, so that it records from the first
    // event on.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let db = Database::open();
    let node = RingNode::builder(db.pool(), "server-example")
        .ring_size(64)
        .start()?;
    wait_for(
        "the member to own the ring",
        Duration::from_secs(30),
        || node.owned_partitions().len() == 64,
    );

    let server = tiny_http::Server::http("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = server.server_addr().to_ip().expect("a TCP address");
    let probe = node.clone();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let (code, body) = match req.url() {
                "/metrics" => {
                    metrics.run_upkeep();
                    (200, metrics.render())
                }
                "/healthz" => (200, "ok\n".to_string()),
                "/readyz" => match probe.status().health {
                    Health::Healthy => (200, "ready\n".to_string()),
                    Health::Unhealthy(why) => (503, format!("not ready: {why}\n")),
                },
                _ => (404, "try /metrics, /healthz, /readyz\n".to_string()),
            };
            let _ = req.respond(tiny_http::Response::from_string(body).with_status_code(code));
        }
    });
    println!("serving on http://{addr}");

    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = get(addr, path)?;
        println!("GET {path} -> {status}");
        let shown: Vec<&str> = body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| path != "/metrics" || l.starts_with("leasering_partitions_active"))
            .collect();
        for l in shown {
            println!("    {l}");
        }
        assert!(status.contains(" 200 "), "{path}: {status}");
    }

    // After stop() the member is no longer ready.
    node.stop()?;
    let (status, body) = get(addr, "/readyz")?;
    println!("after stop: GET /readyz -> {status}: {}", body.trim());
    assert!(status.contains(" 503 "), "{status}");
    Ok(())
}

/// A minimal HTTP/1.0 GET: the status line and the body.
fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}
