//! Support for tests, benches and demos: a throwaway PostgreSQL cluster, a
//! fault-injecting TCP proxy, and the one judge of ownership histories that
//! every consumer shares.
//!
//! * [`TestPostgres`] starts a private PostgreSQL cluster in a temporary
//!   directory (or wraps an existing server named by the environment variable
//!   `LEASERING_TEST_DATABASE_URL`), and can stop, kill and restart it so that
//!   tests can exercise database outages.
//! * [`TcpProxy`] sits between a client and PostgreSQL on the loopback
//!   interface and can stall, delay, refuse or cut connections on demand
//!   (see [`ProxyMode`]).
//! * [`oracle`] turns `Acquired`/`Released` records of many runs into
//!   intervals on one clock and judges them: overlaps (all pairs, closed
//!   intervals), token order, uncovered gaps. [`Recorder`] feeds it from
//!   members in this process; [`member_log`] is the log format of member
//!   processes, and [`MemberProcess`] runs one (killed on drop, so a failing
//!   test never leaves a stopped process behind). [`Sampler`] is the second, independent check: it samples
//!   `owned_partitions()`.
//! * [`worker::Worker`] is the drain workload, the one user of drained
//!   handoffs that the chaos members, the tests and the benches share: a
//!   user's worker doing units of work on the partitions its member owns
//!   and holding each handoff back with the drain guard until the unit in
//!   progress has ended; the oracle judges its `work-start`/`work-end`
//!   records ([`History::judge_work`](oracle::History::judge_work)).
//! * [`rng::Rng`] is the seeded generator of chaos, benches and the demo.
//! * [`unique_name`] makes names that are safe to use as PostgreSQL
//!   identifiers (for example a schema per test).
//!
//! Nothing here panics on expected failures: every fallible operation returns
//! a [`TestkitError`] whose message says what went wrong and, where possible,
//! what to do about it. The exceptions are the assertions meant for tests
//! ([`Recorder::assert_no_overlap_and_tokens_increase`],
//! [`sampler::SampleReport::assert_no_overlap`], [`Recorder::start`]).
//!
//! The crate depends on `leasering` (for its events and `RingNode`) while
//! `leasering` dev-depends on it: Cargo builds the library's own tests
//! against a second copy of the library, which is fine as long as no
//! library type crosses between the two (the library's unit tests use only
//! [`TestPostgres`] and [`unique_name`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub mod debian;
pub mod fixtures;
pub mod member_log;
pub mod member_process;
pub mod oracle;
pub mod pgbouncer;
pub mod postgres;
pub mod proxy;
pub mod recorder;
pub mod rng;
pub mod sampler;
pub mod tls;
pub mod worker;

pub use self::member_process::{member_binary, MemberArgs, MemberProcess};
pub use self::pgbouncer::{PgBouncer, PoolMode};
pub use self::postgres::{instant_of, TestPostgres, TestPostgresOptions};
pub use self::proxy::{ProxyMode, TcpProxy};
pub use self::recorder::Recorder;
pub use self::sampler::Sampler;

/// The error returned by every fallible operation of the testkit.
///
/// It carries a human-readable message only; the message is meant to be shown
/// to whoever runs the tests (it includes, for instance, the tail of the
/// PostgreSQL server log when the server failed to start).
#[derive(Clone, PartialEq, Eq)]
pub struct TestkitError {
    message: String,
}

impl TestkitError {
    pub(crate) fn new(message: impl Into<String>) -> TestkitError {
        TestkitError {
            message: message.into(),
        }
    }

    /// The message describing what went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for TestkitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for TestkitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Show the message verbatim (with real line breaks) so that
        // `unwrap()`/`expect()` on a test result prints a readable log tail.
        write!(f, "TestkitError: {}", self.message)
    }
}

impl std::error::Error for TestkitError {}

/// Maximum length of a name returned by [`unique_name`]; PostgreSQL truncates
/// identifiers at 63 bytes, so 40 leaves room for suffixes added by callers.
const MAX_UNIQUE_NAME_LEN: usize = 40;

/// Makes a name that is unique within this machine (for all practical
/// purposes) and valid as an unquoted PostgreSQL identifier, e.g. a schema
/// name: `prefix_<pid>_<counter>_<time-based hex>`.
///
/// The result consists of lowercase ASCII letters, digits and underscores
/// only, starts with a letter or an underscore, and is at most 40 characters
/// long. Characters of `prefix` that are not allowed are replaced by `_`,
/// uppercase letters are lowercased, and `prefix` is shortened if needed to
/// respect the length limit (the unique suffix is always kept whole).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // 24 bits of sub-second-ish time: distinguishes processes that happen to
    // get the same pid (e.g. in different containers sharing a database).
    let time_hex = format!("{:06x}", (nanos / 1_000) & 0x00ff_ffff);
    let suffix = format!("_{}_{}_{}", std::process::id(), counter, time_hex);

    let mut clean: String = prefix
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !clean.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        clean.insert(0, 't');
    }
    let room = MAX_UNIQUE_NAME_LEN.saturating_sub(suffix.len()).max(1);
    clean.truncate(room);
    let mut name = clean + &suffix;
    // Only reachable with an absurdly large counter; keep the promise anyway.
    name.truncate(MAX_UNIQUE_NAME_LEN);
    name
}
