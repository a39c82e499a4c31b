//! What the integration tests share beyond the testkit's fixtures: the
//! binary's logger, which also counts the errors only a pooler makes.
#![allow(dead_code)]

pub use leasering_testkit::fixtures::*;

/// The binary's logger: env_logger (as `RUST_LOG` says), plus the count of
/// [`pooler_errors`]. Every test that wants logs calls this; the first call
/// installs it.
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let inner = env_logger::Builder::from_default_env()
            .is_test(true)
            .build();
        let max = inner.filter().max(log::LevelFilter::Warn);
        if log::set_boxed_logger(Box::new(CountingLog(inner))).is_ok() {
            log::set_max_level(max);
        }
    });
}

/// Warnings and errors of the library that say a prepared statement or a
/// portal did not follow a connection through a pooler (PgBouncer in
/// transaction mode hands each transaction any server connection), since
/// the process started: the deployment tests assert there are none. Only a
/// pooler makes these (a test that restarts the database gets new
/// connections, which prepare their statements again).
pub fn pooler_errors() -> u64 {
    POOLER_ERRORS.load(std::sync::atomic::Ordering::SeqCst)
}

static POOLER_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct CountingLog(env_logger::Logger);

impl log::Log for CountingLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn || self.0.enabled(m)
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.level() <= log::Level::Warn && r.target().starts_with("leasering") {
            let text = r.args().to_string();
            if ["prepared statement", "portal"]
                .iter()
                .any(|s| text.contains(s))
            {
                POOLER_ERRORS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                eprintln!("pooler error: {text}");
            }
        }
        if self.0.enabled(r.metadata()) {
            self.0.log(r);
        }
    }
    fn flush(&self) {}
}
