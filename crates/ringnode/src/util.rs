//! Small helpers: durations for humans, colours of members, database URLs,
//! and one-line errors. (The seeded generator is the testkit's.)

use std::fmt;
use std::time::{Duration, Instant};

use r2d2_postgres::postgres;

/// An error for the user: one line, no panic.
#[derive(Debug)]
pub struct AppError(pub String);

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever the source said.
        let mut first = true;
        for line in self.0.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !first {
                f.write_str("; ")?;
            }
            f.write_str(line)?;
            first = false;
        }
        Ok(())
    }
}

impl std::error::Error for AppError {}

impl From<leasering::Error> for AppError {
    fn from(e: leasering::Error) -> AppError {
        AppError(e.to_string())
    }
}

impl From<std::io::Error> for AppError {
    fn from(e: std::io::Error) -> AppError {
        AppError(format!("terminal: {e}"))
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// `1.23 ms`, `845 µs`, `3.07 s`, `2 m 05 s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 0.1 {
        format!("{:.2} ms", s * 1e3)
    } else if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else if s < 60.0 {
        format!("{s:.2} s")
    } else {
        let whole = d.as_secs();
        format!("{} m {:02} s", whole / 60, whole % 60)
    }
}

/// `h:mm:ss` or `m:ss`.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// Seconds since `start` (negative for earlier instants), for log stamps.
pub fn since(start: Instant, at: Instant) -> f64 {
    if at >= start {
        (at - start).as_secs_f64()
    } else {
        -(start - at).as_secs_f64()
    }
}

/// The colour slot of a member: `N` for the demo's `node-N`, else a hash of
/// the id (stable across processes, so every terminal of `ringnode node`
/// paints a member alike).
pub fn slot_of(node_id: &str) -> usize {
    if let Some(n) = node_id
        .strip_prefix("node-")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return n;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node_id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % 997) as usize
}

/// Parses a database URL (libpq `key=value` or `postgresql://`), with a
/// connect timeout if it has none.
pub fn parse_database_url(url: &str) -> AppResult<postgres::Config> {
    let mut cfg: postgres::Config = url
        .parse()
        .map_err(|e| AppError(format!("invalid --database-url: {}", with_sources(&e))))?;
    if cfg.get_hosts().is_empty() {
        return Err(AppError(
            "invalid --database-url: it names no host (example: host=localhost user=postgres, \
             or postgresql://user@localhost/db)"
                .into(),
        ));
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(5));
    }
    Ok(cfg)
}

/// An error and its sources, `a: b: c`, each said once.
pub fn with_sources(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// Where a configuration points, without its password.
pub fn describe_target(cfg: &postgres::Config) -> String {
    use postgres::config::Host;
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("?");
    let db = cfg.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{db}")
}

/// Connects once, so that a bad address fails at once with the driver's
/// reason rather than after the start timeout. Returns the server version.
pub fn preflight(cfg: &postgres::Config) -> AppResult<String> {
    let mut client = cfg.connect(postgres::NoTls).map_err(|e| {
        AppError(format!(
            "cannot connect to the database {}: {}",
            describe_target(cfg),
            with_sources(&e)
        ))
    })?;
    let version = client
        .query_one("SHOW server_version", &[])
        .ok()
        .and_then(|r| r.try_get::<_, String>(0).ok())
        .unwrap_or_default();
    Ok(version
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humans() {
        assert_eq!(human(Duration::from_micros(845)), "845 µs");
        assert_eq!(human(Duration::from_micros(1234)), "1.23 ms");
        assert_eq!(human(Duration::from_millis(3070)), "3.07 s");
        assert_eq!(clock(Duration::from_secs(65)), "1:05");
    }

    #[test]
    fn slots() {
        assert_eq!(slot_of("node-3"), 3);
        assert_eq!(slot_of("worker-a"), slot_of("worker-a"));
    }

    #[test]
    fn errors_are_one_line() {
        let e = AppError("first\n  second\n\nthird".into());
        assert_eq!(e.to_string(), "first; second; third");
    }

    #[test]
    fn urls() {
        assert!(parse_database_url("host=localhost user=postgres").is_ok());
        assert!(parse_database_url("postgresql://u@h:5433/db").is_ok());
        assert!(parse_database_url("not a url").is_err());
        assert!(parse_database_url("user=postgres").is_err());
    }
}
