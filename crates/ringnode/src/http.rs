//! `--http ADDR`: `GET /metrics` (Prometheus text format), `GET /healthz`
//! (the process is up: always 200) and `GET /readyz` (200 while the
//! member(s) are ready, 503 with a one-line reason otherwise), served by a
//! small synchronous server on a thread of its own.
//!
//! The library only emits through the `metrics` facade; the recorder here
//! (`metrics-exporter-prometheus`, its own hyper listener off) keeps the
//! values and renders them when scraped, and `tiny_http` answers the
//! requests without an async runtime.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::util::{AppError, AppResult};

/// Buckets of the latency histograms, in seconds: from a millisecond (a
/// handoff on loopback) to a minute (a crashed member's lease).
const BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

/// Readiness: `Ok(text)` for 200, `Err(reason)` for 503.
pub type Ready = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Installs the Prometheus recorder (before any member starts, so that
/// nothing they emit is lost) and returns the handle that renders it.
pub fn install_recorder() -> AppResult<PrometheusHandle> {
    let mut b = PrometheusBuilder::new();
    for name in [
        "leasering_handoff_seconds",
        "leasering_renewal_duration_seconds",
    ] {
        b = b
            .set_buckets_for_metric(Matcher::Full(name.into()), BUCKETS)
            .map_err(|e| AppError(format!("metrics buckets: {e}")))?;
    }
    b.install_recorder()
        .map_err(|e| AppError(format!("cannot install the metrics recorder: {e}")))
}

/// Listens on `addr` and serves the three endpoints on a background
/// thread for the rest of the process. Fails at once if `addr` cannot be
/// bound.
pub fn serve(addr: &str, metrics: PrometheusHandle, ready: Ready) -> AppResult<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| AppError(format!("cannot listen on --http {addr}: {e}")))?;
    log::info!(target: "ringnode", "serving /metrics, /healthz and /readyz on http://{addr}");
    std::thread::Builder::new()
        .name("ringnode-http".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let (code, ctype, body) = answer(req.method(), req.url(), &metrics, &ready);
                let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes())
                    .expect("a valid header");
                let resp = tiny_http::Response::from_string(body)
                    .with_status_code(code)
                    .with_header(header);
                // A client that went away is its own problem.
                let _ = req.respond(resp);
            }
        })
        .map_err(|e| AppError(format!("cannot start the http thread: {e}")))?;
    Ok(())
}

fn answer(
    method: &tiny_http::Method,
    url: &str,
    metrics: &PrometheusHandle,
    ready: &Ready,
) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if !matches!(method, tiny_http::Method::Get | tiny_http::Method::Head) {
        return (405, TEXT, "only GET\n".into());
    }
    match url.split('?').next().unwrap_or("") {
        "/metrics" => {
            // Without the exporter's own listener nobody else runs its
            // upkeep (histogram buckets, idle series): here, per scrape.
            metrics.run_upkeep();
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.render(),
            )
        }
        "/healthz" => (200, TEXT, "ok\n".into()),
        "/readyz" => match ready() {
            Ok(text) => (200, TEXT, format!("{text}\n")),
            Err(why) => (503, TEXT, format!("not ready: {why}\n")),
        },
        _ => (
            404,
            TEXT,
            "not found (try /metrics, /healthz, /readyz)\n".into(),
        ),
    }
}

/// Readiness of one member: its [`leasering::NodeStatus::health`].
pub fn member_ready(node: leasering::RingNode) -> Ready {
    Arc::new(move || {
        let st = node.status();
        match &st.health {
            leasering::Health::Healthy => Ok(format!(
                "ready: {} active partitions, epoch {}, lease left {:.1} s",
                st.active,
                st.epoch,
                st.lease_left.unwrap_or(Duration::ZERO).as_secs_f64()
            )),
            leasering::Health::Unhealthy(why) => Err(format!("{}: {why}", node.node_id())),
        }
    })
}
