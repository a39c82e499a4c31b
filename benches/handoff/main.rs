//! Handoff latency and database load on a throwaway PostgreSQL (loopback,
//! fsync off):
//!
//! * **join**: 16 members (TTL 30 s); a 17th calls `start()`; the time until
//!   every partition is active on exactly one member and the joiner holds
//!   its whole share (replayed from every member's events, on one clock).
//! * **leave**: that joiner calls `stop()`; the time until each of its
//!   partitions is active on one of the others.
//! * **crash**: a member *process* (the testkit's
//!   `leasering-member` bin) on a ring of 16 with TTL 2 s is killed with
//!   `kill -9` at a random moment of its renewal cycle; the time until its
//!   partitions are active elsewhere, also as a multiple of the TTL.
//! * **join / leave by pool**: the same cycle, three ways of giving the
//!   joiner its pool, interleaved rep by rep so that the machine's load
//!   falls on all three alike. `join`/`leave`: one pool shared by every
//!   joiner (after the discarded first rep its connections, and their
//!   backends' caches, are reused: a rep opens no connection). `join_warm`/
//!   `leave_warm`: a fresh pool per joiner whose connections are all open
//!   before `start()` is timed — what a service that builds its pool at
//!   process start has (r2d2's default `build()`). `join_cold`/`leave_cold`:
//!   a fresh, lazily connecting pool per joiner — `start()` and the leave
//!   pay for forking PostgreSQL backends.
//! * **at rest**: statements and transactions per member per second of the
//!   16 members (`pg_stat_statements`, `pg_stat_database.xact_commit`).
//! * **frozen member** (the crate docs, guarantee 5): 3 in-process members and
//!   one member *process*, TTL 10 s; the process is frozen (`SIGSTOP`) and,
//!   while it is, members join and leave again: the time from `start()`
//!   until the joiner holds every partition of its share whose claim the
//!   frozen member does *not* hold, and from `stop()` until the leaver's
//!   partitions are active elsewhere.
//! * **drain** (the crate docs, guarantee 6): members with a drain timeout,
//!   each with the testkit's drain workload ([`Worker`], as in
//!   `tests/it/one_owner/claims.rs`) doing 200 ms units of user work on its partitions;
//!   members join and leave until over 1,000 partitions have moved between
//!   owners; the user work of two members on one partition must never
//!   intersect (the oracle's [`History::judge_work`] over the workers'
//!   `work-start`/`work-end` records). Latency: from the old owner's
//!   `Released` to the new owner's `Acquired`, which includes the drain
//!   (the rest of the unit in progress, until its `work-end`) and then the
//!   claim's move.
//!
//! Every run also checks, from the merged events (and the member processes'
//! logs), with the testkit's oracle, that no partition was ever active on
//! two members at once.
//!
//! `LEASERING_BENCH_QUICK=1` shortens the run; `LEASERING_BENCH_REPS`,
//! `LEASERING_BENCH_CRASH_REPS`, `LEASERING_BENCH_FROZEN_REPS` and
//! `LEASERING_BENCH_DRAIN_HANDOFFS` set the repetitions.
//! `LEASERING_BENCH_HANDOFF_ONLY=drain` runs the drain section alone (its
//! table, its counts and its `handoff drain` line); `=burst` the bursts
//! (`burst.rs`), `=budget` the move budget's joins (`budget.rs`:
//! `LEASERING_BENCH_BUDGET_REPS` reps each, without a budget and with
//! `max_moving` 64 and 16), `=notifications` the notifications a change
//! costs (`notifications.rs`), `=join` the join and leave cycles.
//!
//! Each section has a file of its own — `join.rs`, `rest.rs` (at rest),
//! `frozen.rs`, `drain.rs`, `crash.rs`, beside the three above, with the
//! in-process fleet they share in `fleet.rs`; this file picks the sections,
//! runs them in turn and prints the report.

mod budget;
mod burst;
mod crash;
mod drain;
mod fleet;
mod frozen;
mod join;
mod notifications;
mod rest;
#[path = "../support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use leasering_testkit::member_log::{parse_events, Ev};
use leasering_testkit::{MemberArgs, MemberProcess, TestPostgres};
use support::*;

use drain::{drain, drain_line, drain_rows, drain_title, print_drain_counts};
use frozen::frozen_member;

const RING_SIZE: u32 = 1024;
const MEMBERS: usize = 16;

/// The complete lines of a member process's event log.
fn read_log(path: &Path) -> Vec<Ev> {
    parse_events(&std::fs::read_to_string(path).unwrap_or_default()).0
}

fn spawn_member(
    db: &TestPostgres,
    ring: &str,
    name: &str,
    ttl: Duration,
    events: &Path,
) -> MemberProcess {
    let url = db.url();
    let args = MemberArgs {
        exe: leasering_testkit::member_binary(),
        url: &url,
        ring,
        node: name,
        ttl,
        schema: "leasering",
        events,
    };
    MemberProcess::spawn(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A row of statistics, in `unit`s.
fn stat_row(name: &str, s: &Stats, unit: f64) -> Vec<String> {
    vec![
        name.to_string(),
        s.n.to_string(),
        f(s.min / unit, 2),
        f(s.p50 / unit, 2),
        f(s.p90 / unit, 2),
        f(s.p99 / unit, 2),
        f(s.max / unit, 2),
    ]
}

fn main() {
    // RUST_LOG=leasering=info shows the library's own account of each step.
    let _ = env_logger::builder().format_timestamp_micros().try_init();
    print_machine("handoff");
    let q = quick();
    let reps = env_usize("LEASERING_BENCH_REPS", if q { 20 } else { 150 });
    let crash_reps = env_usize("LEASERING_BENCH_CRASH_REPS", if q { 3 } else { 10 });
    let frozen_reps = env_usize("LEASERING_BENCH_FROZEN_REPS", if q { 20 } else { 200 });
    let drain_handoffs = env_usize("LEASERING_BENCH_DRAIN_HANDOFFS", if q { 200 } else { 1000 });
    let rest_window =
        Duration::from_secs(env_usize("LEASERING_BENCH_REST_S", if q { 12 } else { 30 }) as u64);

    let (db, pss) = start_pg(300, &[]);
    println!(
        "# PostgreSQL {} (loopback, fsync off){}",
        pg_version(&db),
        if pss { ", pg_stat_statements on" } else { "" }
    );
    let burst_rounds = env_usize("LEASERING_BENCH_BURST_ROUNDS", if q { 10 } else { 40 });
    let run_bursts = || -> Vec<burst::Burst> {
        [2, 4]
            .into_iter()
            .map(|k| burst::burst(&db, pss, k, burst_rounds))
            .collect()
    };
    let budget_reps = env_usize("LEASERING_BENCH_BUDGET_REPS", if q { 1 } else { 3 });
    let run_budgets = || -> Vec<budget::Budgeted> {
        [None, Some(64), Some(16)]
            .into_iter()
            .map(|m| budget::budget(&db, m, budget_reps))
            .collect()
    };
    let only = std::env::var("LEASERING_BENCH_HANDOFF_ONLY").unwrap_or_default();
    match only.as_str() {
        "" | "join" => {}
        "budget" => {
            let budgets = run_budgets();
            budget::report(&budgets);
            println!("loadavg after: {}", loadavg());
            return;
        }
        "notifications" => {
            notifications::notifications(&db, if q { 10 } else { 40 });
            return;
        }
        "burst" => {
            let bursts = run_bursts();
            burst::report(&bursts);
            println!("loadavg after: {}", loadavg());
            return;
        }
        "drain" => {
            let drained = drain(&db, drain_handoffs);
            println!();
            println!("{}", drain_title(&drained));
            print_table(
                &["measure", "n", "min", "p50", "p90", "p99", "max"],
                &drain_rows(&drained),
            );
            print_drain_counts(&drained);
            println!("loadavg after: {}", loadavg());
            println!();
            println!("{}", drain_line(&drained));
            return;
        }
        other => panic!(
            "LEASERING_BENCH_HANDOFF_ONLY={other}: the sections that run alone are `join`, `drain`, `burst`, `budget` and `notifications`"
        ),
    }

    // ---- join and leave ----------------------------------------------------
    let (fleet, joins) = join::join_leave(&db, reps);
    let mut failures = joins.failures();
    let overlaps = joins.overlaps;
    if only == "join" {
        join::print_join_only(&joins, failures);
        for (_, n) in &fleet.nodes {
            let _ = n.stop();
        }
        return;
    }

    // ---- at rest ---------------------------------------------------------------
    let rest = rest::at_rest(&db, pss, rest_window);
    for (_, n) in &fleet.nodes {
        n.stop().unwrap_or_else(|e| panic!("stop: {e}"));
    }
    let dir = std::env::temp_dir().join(format!("leasering-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // ---- version 2: a frozen member, drained handoffs ------------------------
    let frozen = frozen_member(&db, frozen_reps, &dir);
    let drained = drain(&db, drain_handoffs);
    let bursts = run_bursts();
    let budgets = run_budgets();
    notifications::notifications(&db, if q { 10 } else { 40 });

    // ---- crash (kill -9 of a member process) ----------------------------------
    let crash = crash::crash(&db, crash_reps, &dir);
    failures += crash.failures;
    let crash_overlaps = crash.overlaps;
    let _ = std::fs::remove_dir_all(&dir);

    // ---- report -------------------------------------------------------------------
    let al = stats(&crash.after_lease_ms);
    println!();
    println!("Handoff latency, {MEMBERS} members + 1, ring {RING_SIZE}, TTL 30 s ({} join/leave cycles per pool), crash TTL 2 s ({} kills):", joins.cycles(), crash.kills());
    let mut rows = join::join_rows(&joins);
    rows.extend(crash::crash_rows(&crash));
    print_table(&["measure", "n", "min", "p50", "p90", "p99", "max"], &rows);
    println!(
        "overlaps: join/leave {overlaps}, crash {crash_overlaps}; failed repetitions: {failures}"
    );
    println!();
    rest::print_at_rest(&rest);
    println!("targets (DESIGN §9): join p50 <= 10 ms, p99 <= 50 ms; leave p50 <= 5 ms, p99 <= 25 ms; crash <= TTL + 200 ms; at rest <= 1 statement per member per renewal interval (0.1/s)");
    println!();
    let dl = stats(&drained.latency_ms);
    println!(
        "Version 2. {} {}",
        frozen::frozen_title(&frozen),
        drain_title(&drained),
    );
    let mut rows = frozen::frozen_rows(&frozen);
    rows.extend(drain_rows(&drained));
    print_table(&["measure", "n", "min", "p50", "p90", "p99", "max"], &rows);
    frozen::print_frozen_counts(&frozen);
    print_drain_counts(&drained);
    println!("targets (DESIGN §10): join while a member is frozen p99 <= 50 ms; 0 user-work overlaps over >= 1,000 drained handoffs");
    burst::report(&bursts);
    budget::report(&budgets);
    println!("loadavg after: {}", loadavg());
    println!();
    join::print_join_lines(&joins);
    frozen::print_frozen_lines(&frozen);
    println!("{}", drain_line(&drained));
    for b in &bursts {
        println!("{}", burst::burst_line(b));
    }
    for b in &bursts {
        println!("{}", burst::burst_cost_line(b));
    }
    println!("{}", crash::crash_line(&crash));
    let (stmt_rate, xact_rate) = (rest.stmt_rate, rest.xact_rate);
    println!(
        "db_load statements_per_member_per_s={:.3} ttl_s=30",
        stmt_rate.unwrap_or(xact_rate)
    );
    println!("handoff_extra overlaps={} failed_reps={failures} xacts_per_member_per_s={xact_rate:.3} crash_after_lease_end_p50_ms={:.1} crash_after_lease_end_max_ms={:.1}", overlaps + crash_overlaps, al.p50, al.max);
    println!(
        "handoff_v2_extra frozen_overlaps={} frozen_late_joins={} drain_ownership_overlaps={} drain_p99_ms={:.2} drain_unguarded_releases={}",
        frozen.overlaps + frozen.regressions,
        frozen.late,
        drained.overlaps + drained.regressions,
        dl.p99,
        drained.unguarded
    );
    drop(db);
}
