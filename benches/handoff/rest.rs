//! The **at rest** measure: what the [`MEMBERS`] members of the join
//! measure's ring cost the database when nothing changes — statements
//! (`pg_stat_statements`) and transactions (`pg_stat_database.xact_commit`)
//! per member per second over a window, the database's CPU, and the most
//! called statements — and its table in the report.

use std::time::Duration;

use leasering_testkit::TestPostgres;

use super::support::*;
use super::MEMBERS;

/// What the members cost the database at rest.
pub(crate) struct AtRest {
    /// The window measured, in seconds.
    secs: f64,
    /// Transactions per member per second.
    pub(crate) xact_rate: f64,
    /// Statements per member per second (with `pg_stat_statements`).
    pub(crate) stmt_rate: Option<f64>,
    /// The most called statements (with `pg_stat_statements`).
    top: Vec<(i64, String)>,
    db_cpu_pct: f64,
}

/// Measures the database's load over `window` while the members in this
/// process (the join measure's ring) are at rest.
pub(crate) fn at_rest(db: &TestPostgres, pss: bool, window: Duration) -> AtRest {
    // Past one renewal interval (every member's heartbeat has opened its
    // connection) and past PostgreSQL's delayed flush of the busy phase's
    // transaction counts (up to 10 s after a backend goes idle).
    std::thread::sleep(Duration::from_secs(12));
    reset_statements(db);
    let c0 = db_counters(db, pss);
    std::thread::sleep(window);
    let c1 = db_counters(db, pss);
    let secs = (c1.at.unwrap() - c0.at.unwrap()).as_secs_f64();
    let per = |d: i64| d as f64 / MEMBERS as f64 / secs;
    // Our two statistics reads per snapshot are transactions too.
    let xact_rate = per(c1.xact_commit - c0.xact_commit - 2);
    let stmt_rate = c1.statements.zip(c0.statements).map(|(a, b)| per(a - b));
    let top = if pss {
        top_statements(db, 5)
    } else {
        Vec::new()
    };
    let db_cpu_pct = (c1.cpu_s - c0.cpu_s) / secs * 100.0;
    AtRest {
        secs,
        xact_rate,
        stmt_rate,
        top,
        db_cpu_pct,
    }
}

/// The at-rest table, the database's CPU and the most called statements.
pub(crate) fn print_at_rest(rest: &AtRest) {
    let AtRest {
        secs,
        xact_rate,
        stmt_rate,
        ref top,
        db_cpu_pct,
    } = *rest;
    println!("At rest, {MEMBERS} members, TTL 30 s (renewal every 10 s), over {secs:.1} s:");
    print_table(
        &[
            "measure",
            "per member per s",
            "per member per renewal interval",
        ],
        &[
            vec![
                "statements (pg_stat_statements)".into(),
                stmt_rate.map_or("n/a".into(), |r| f(r, 3)),
                stmt_rate.map_or("n/a".into(), |r| f(r * 10.0, 2)),
            ],
            vec![
                "transactions (xact_commit)".into(),
                f(xact_rate, 3),
                f(xact_rate * 10.0, 2),
            ],
        ],
    );
    println!("database CPU at rest: {db_cpu_pct:.2} % of one core");
    for (calls, q) in top {
        println!("  {calls:>6} calls: {q}");
    }
}
