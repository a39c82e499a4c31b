//! A throwaway PgBouncer in front of a [`TestPostgres`]: Debian's
//! `pgbouncer` (1.18 on bookworm) in session or transaction mode, on a free
//! loopback port, with `trust` authentication. It refuses to run as root, so
//! as root it runs as the `postgres` user (like the server itself). Killed
//! and its directory removed on drop.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ::postgres::{Config, NoTls};
use r2d2_postgres::PostgresConnectionManager;

use crate::postgres::{
    chown_recursive, free_port, make_base_dir, remove_dir_logged, run_as_user, wait_exit,
};
use crate::{TestPostgres, TestkitError};

/// PgBouncer's `pool_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per client connection, for the client's whole
    /// session: LISTEN, session settings and prepared statements work.
    Session,
    /// A server connection per transaction: nothing outlives a transaction.
    Transaction,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// A running PgBouncer.
pub struct PgBouncer {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    mode: PoolMode,
    user: String,
    dbname: String,
}

fn find_pgbouncer() -> Result<PathBuf, TestkitError> {
    crate::debian::program("pgbouncer", "pgbouncer")
}

impl PgBouncer {
    /// Starts PgBouncer in `mode` in front of `db` (which must be a server
    /// reachable over TCP on `db.host():db.port()`), with at most
    /// `server_pool` server connections per database and user, and waits
    /// until it answers a query (at most 30 s).
    pub fn start(
        db: &TestPostgres,
        mode: PoolMode,
        server_pool: u32,
    ) -> Result<PgBouncer, TestkitError> {
        let exe = find_pgbouncer()?;
        let run_as = run_as_user()?;
        let dir = make_base_dir(run_as.as_ref())?;
        let base = db.config();
        let user = base.get_user().unwrap_or("postgres").to_string();
        let dbname = base.get_dbname().unwrap_or("postgres").to_string();
        let port = free_port()?;
        let ini = format!(
            "[databases]\n\
             * = host={host} port={pgport}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = {mode}\n\
             max_client_conn = 10000\n\
             default_pool_size = {server_pool}\n\
             reserve_pool_size = 0\n\
             server_login_retry = 1\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             logfile = {dir}/pgbouncer.log\n\
             log_connections = 0\n\
             log_disconnections = 0\n\
             admin_users = {user}\n",
            host = db.host(),
            pgport = db.port(),
            dir = dir.display(),
            mode = mode.as_str(),
        );
        let write = || -> std::io::Result<()> {
            fs::write(dir.join("pgbouncer.ini"), ini)?;
            fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"\"\n"))?;
            if let Some(u) = &run_as {
                chown_recursive(&dir, u.uid, u.gid)?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            remove_dir_logged(&dir);
            return Err(TestkitError::new(format!(
                "could not write pgbouncer's configuration in {}: {e}",
                dir.display()
            )));
        }
        let mut cmd = Command::new(&exe);
        cmd.arg(dir.join("pgbouncer.ini"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(u) = &run_as {
            cmd.uid(u.uid).gid(u.gid);
        }
        let child = cmd.spawn().map_err(|e| {
            remove_dir_logged(&dir);
            TestkitError::new(format!("could not run {}: {e}", exe.display()))
        })?;
        let mut bouncer = PgBouncer {
            child: Some(child),
            dir,
            port,
            mode,
            user,
            dbname,
        };
        bouncer.wait_ready()?;
        log::debug!("testkit: pgbouncer ({}) on port {port}", mode.as_str());
        Ok(bouncer)
    }

    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(TestkitError::new(format!(
                        "pgbouncer exited during startup ({status}); its log:\n{}",
                        self.log_tail()
                    )));
                }
            }
            let last = match self.config().connect(NoTls) {
                Ok(mut c) => match c.simple_query("SELECT 1") {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(TestkitError::new(format!(
                    "pgbouncer did not answer on port {} within 30 s (last error: {last}); its log:\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of PgBouncer's log.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its pool mode.
    pub fn mode(&self) -> PoolMode {
        self.mode
    }

    /// A connection configuration through PgBouncer.
    pub fn config(&self) -> Config {
        let mut config = Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .connect_timeout(Duration::from_secs(5));
        config
    }

    /// A pool of at most `max_size` connections through PgBouncer, opened
    /// lazily, whose sessions carry `application_name` = `app`.
    pub fn pool(
        &self,
        app: &str,
        max_size: u32,
    ) -> Result<r2d2::Pool<PostgresConnectionManager<NoTls>>, TestkitError> {
        let mut config = self.config();
        config.application_name(app);
        Ok(r2d2::Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(5))
            .build_unchecked(PostgresConnectionManager::new(config, NoTls)))
    }

    /// A line of `SHOW <what>` of PgBouncer's admin console (`STATS`,
    /// `POOLS`, ...), as text, for diagnostics.
    pub fn show(&self, what: &str) -> Result<String, TestkitError> {
        let mut config = self.config();
        config.dbname("pgbouncer");
        let mut c = config
            .connect(NoTls)
            .map_err(|e| TestkitError::new(format!("pgbouncer admin console: {e}")))?;
        let msgs = c
            .simple_query(&format!("SHOW {what}"))
            .map_err(|e| TestkitError::new(format!("SHOW {what}: {e}")))?;
        let mut out = String::new();
        for m in msgs {
            if let ::postgres::SimpleQueryMessage::Row(r) = m {
                let cols: Vec<String> = (0..r.len())
                    .map(|i| format!("{}={}", r.columns()[i].name(), r.get(i).unwrap_or("")))
                    .collect();
                out.push_str(&cols.join(" "));
                out.push('\n');
            }
        }
        Ok(out)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on a child this handle owns and has not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = wait_exit(&mut child, Duration::from_secs(10));
        }
        remove_dir_logged(&self.dir);
    }
}
