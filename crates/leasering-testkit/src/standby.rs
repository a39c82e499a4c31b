//! Streaming standbys of a started cluster, for failover tests: a copy made
//! with `pg_basebackup -R` (which writes `standby.signal` and the
//! `primary_conninfo` of the primary), started on a free port as a hot
//! standby, and promoted on demand.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{
    free_port, make_base_dir, Inner, Local, StartError, TestPostgres, TestPostgresOptions,
};
use crate::TestkitError;

impl TestPostgres {
    /// A streaming standby of this cluster (which must be one this process
    /// started): `pg_basebackup -X stream -R` of the running server into a
    /// new directory, started on a free port with `options` (take care not
    /// to give it `synchronous_standby_names`: once promoted it would wait
    /// for a standby of its own). Returns once it accepts (read-only)
    /// connections.
    pub fn start_standby(
        &self,
        options: TestPostgresOptions,
    ) -> Result<TestPostgres, TestkitError> {
        let primary = self.local("start a standby of")?;
        let base_dir = make_base_dir(primary.run_as.as_ref())?;
        let mut local = Local {
            bin_dir: primary.bin_dir.clone(),
            data_dir: base_dir.join("data"),
            log_path: base_dir.join("postgres.log"),
            base_dir,
            port: 0,
            options,
            run_as: primary.run_as.clone(),
            child: Mutex::new(None),
            torn_down: AtomicBool::new(false),
        };
        let standby_guard = TestPostgres {
            inner: Inner::Local(Local {
                bin_dir: local.bin_dir.clone(),
                base_dir: local.base_dir.clone(),
                data_dir: local.data_dir.clone(),
                log_path: local.log_path.clone(),
                port: 0,
                options: local.options.clone(),
                run_as: local.run_as.clone(),
                child: Mutex::new(None),
                torn_down: AtomicBool::new(false),
            }),
        };
        let out = local
            .command("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args(["-U", "postgres", "-X", "stream", "-R", "-c", "fast", "-D"])
            .arg(&local.data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| TestkitError::new(format!("could not run pg_basebackup: {e}")))?;
        if !out.status.success() {
            return Err(TestkitError::new(format!(
                "pg_basebackup failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut attempt = 0;
        let child = loop {
            attempt += 1;
            let port = free_port()?;
            match local.start_server(port) {
                Ok(child) => {
                    local.port = port;
                    break child;
                }
                Err(StartError::PortTaken(_)) if attempt < 5 => {}
                Err(e) => return Err(e.into_error()),
            }
        };
        *local.child.get_mut() = Some(child);
        // The guard (which removed the directory had we failed) is done.
        if let Inner::Local(g) = &standby_guard.inner {
            g.torn_down.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        drop(standby_guard);
        log::debug!(
            "testkit: standby of port {} on port {} in {}",
            primary.port,
            local.port,
            local.base_dir.display()
        );
        Ok(TestPostgres {
            inner: Inner::Local(local),
        })
    }

    /// The data directory of a cluster this process started.
    pub fn data_dir(&self) -> Option<&Path> {
        match &self.inner {
            Inner::Local(l) => Some(&l.data_dir),
            Inner::External(_) => None,
        }
    }

    /// A throwaway primary (`wal_level = replica`, `synchronous_commit =
    /// on`) and a streaming standby of it, started and streaming: as a
    /// *synchronous* standby (`synchronous_standby_names = '*'`: a commit
    /// returns once the standby has it, so promoting it loses nothing) or
    /// an asynchronous one. Returns `(primary, standby)`.
    pub fn with_standby(synchronous: bool) -> Result<(TestPostgres, TestPostgres), TestkitError> {
        let options = TestPostgresOptions {
            extra_settings: vec![
                ("synchronous_commit".into(), "on".into()),
                ("full_page_writes".into(), "on".into()),
                ("wal_level".into(), "replica".into()),
            ],
            ..TestPostgresOptions::default()
        };
        let primary = TestPostgres::start_with(options.clone())?;
        let standby = primary.start_standby(options)?;
        let mut c = primary.client()?;
        let fail = |what: &str, e: postgres::Error| TestkitError::new(format!("{what}: {e}"));
        if synchronous {
            // Two statements: ALTER SYSTEM cannot run in a multi-statement batch.
            c.batch_execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
                .map_err(|e| fail("synchronous_standby_names", e))?;
            c.batch_execute("SELECT pg_reload_conf()")
                .map_err(|e| fail("pg_reload_conf", e))?;
        }
        let want = if synchronous { "sync" } else { "async" };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let streaming = c
                .query_opt(
                    "SELECT 1 FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = $1",
                    &[&want],
                )
                .map_err(|e| fail("pg_stat_replication", e))?
                .is_some();
            if streaming {
                return Ok((primary, standby));
            }
            if Instant::now() > deadline {
                return Err(TestkitError::new(format!(
                    "the standby did not stream from the primary ({want}) within 60 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Promotes a standby to primary (`pg_promote`, which switches it to a
    /// new timeline) and waits until it accepts writes, at most 60 s.
    pub fn promote(&self) -> Result<(), TestkitError> {
        let mut c = self.client()?;
        c.simple_query("SELECT pg_promote(true, 60)")
            .map_err(|e| TestkitError::new(format!("pg_promote: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let in_recovery: bool = c
                .query_one("SELECT pg_is_in_recovery()", &[])
                .map_err(|e| TestkitError::new(format!("after pg_promote: {e}")))?
                .get(0);
            if !in_recovery {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestkitError::new(
                    "the standby was still in recovery 60 s after pg_promote",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
