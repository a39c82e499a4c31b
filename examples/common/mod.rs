//! What every example needs: a PostgreSQL to talk to. With `DATABASE_URL`
//! set (`host=… user=… dbname=…`), that one; otherwise a throwaway server
//! started from PostgreSQL's binaries by `leasering-testkit` (removed when
//! the example ends), so that `cargo run --example worker` works on a
//! machine with only PostgreSQL's server installed.

#![allow(dead_code)]

use std::time::Duration;

use r2d2_postgres::postgres::{Config, NoTls};
use r2d2_postgres::PostgresConnectionManager;

pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// The database of an example: its connection settings, and the
/// throwaway server if one was started (kept alive with it).
pub struct Database {
    config: Config,
    _server: Option<leasering_testkit::TestPostgres>,
}

impl Database {
    /// `DATABASE_URL`, or a throwaway server.
    pub fn open() -> Database {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let config = url
                .parse()
                .expect("DATABASE_URL is not a connection string");
            return Database {
                config,
                _server: None,
            };
        }
        let server = leasering_testkit::TestPostgres::start().unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
        Database {
            config: server.config(),
            _server: Some(server),
        }
    }

    /// A pool for one process: a library client holds one connection at
    /// rest and borrows a second while partitions move; `min_idle(0)` keeps
    /// no idle connection the library does not use.
    pub fn pool(&self) -> Pool {
        r2d2::Pool::builder()
            .max_size(4)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(10))
            .build(PostgresConnectionManager::new(self.config.clone(), NoTls))
            .expect("connect to PostgreSQL")
    }

    /// A plain connection (for the examples' own tables).
    pub fn client(&self) -> r2d2_postgres::postgres::Client {
        self.config.connect(NoTls).expect("connect to PostgreSQL")
    }
}

/// Waits until `cond` holds, at most `limit`; panics naming `what`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
