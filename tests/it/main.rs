//! The integration tests: one test binary, one module per guarantee, all
//! against a real PostgreSQL (the testkit's throwaway server, started once
//! for the process by [`common::db`] and shared by every test that does not
//! need a server of its own: the ones that stop, restart or fail over the
//! database start their own). Each test works in a ring (or a schema) of its
//! own, so they run in parallel.
//!
//! | module | what it shows |
//! |---|---|
//! | [`one_owner`] | at every instant a partition has at most one owner, and tokens fence stale writers: claims and drained handoffs, `kill -9`, SIGSTOP past the TTL, the database stopped, connections cut or stalled, and the chaos harness |
//! | [`every_partition_owned`] | soon exactly one owner: joins, leaves and convergence, a member's end (`stop`, `Drop`, `crash`), event times |
//! | [`controls`] | placement (hashed, balanced, weights, the move budget) and its controls (readiness, cordon, capacity, zones, pins), routing by observers |
//! | [`deployment`] | real deployments: PgBouncer in session and transaction mode, TLS, a shared pool, a failover to a standby |
//! | [`bad_input`] | every bad input gets a typed error naming the value, never a panic |
//!
//! Five suites keep a binary of their own, because each installs or counts
//! something process-wide: `tests/resources.rs` (what a process costs the
//! database: it counts the process's threads, so no other test may start
//! any meanwhile), `tests/soak.rs` (a counting global allocator),
//! `tests/log_kv.rs` (a `log` logger), `tests/tracing.rs` (a `tracing`
//! subscriber) and `tests/metrics.rs` (a `metrics` recorder). This binary's
//! logger is [`common::init_logs`]'s.
//!
//! Run one module with a filter: `cargo test --test it one_owner::chaos`.

mod common;

mod bad_input;

/// At most one owner at every instant; tokens fence stale writers.
mod one_owner {
    mod chaos;
    mod chaos_found;
    mod claims;
    mod faults;
}

/// Soon exactly one owner: joins, leaves, a member's end, event times.
mod every_partition_owned {
    mod event_times;
    mod lifecycle;
    mod membership;
}

/// Placement and its controls, and routing.
mod controls {
    mod eligibility;
    mod placement;
}

/// Real deployments: poolers, TLS, failover.
mod deployment {
    mod deploy;
}
