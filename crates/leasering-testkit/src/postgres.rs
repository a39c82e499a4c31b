//! A throwaway PostgreSQL cluster for tests, benches and demos (see
//! [`TestPostgres`]).
//!
//! The cluster lives in a fresh directory under [`std::env::temp_dir`] and
//! listens on a free port of `127.0.0.1` only. It is tuned for speed, not
//! durability (`fsync=off`, `synchronous_commit=off`, `full_page_writes=off`).
//!
//! # Nothing left behind
//!
//! * The postmaster is started with `PR_SET_PDEATHSIG = SIGKILL`, from one
//!   dedicated thread (`leasering-pg-keeper`) that never exits: the kernel
//!   sends the signal when the *thread* that forked the child exits, so
//!   forking from a short-lived test thread would kill the server as soon as
//!   that test ended. Thus the server dies with the test process even when
//!   the latter is killed with `SIGKILL`.
//! * Dropping a [`TestPostgres`] stops its server immediately and removes its
//!   directory. The per-process instance of [`TestPostgres::shared`] is torn
//!   down by an `atexit` handler, since statics are never dropped.
//!
//! # Running as root
//!
//! PostgreSQL refuses to run as root. When the effective user is root, the
//! cluster directory is handed to the `postgres` user and `initdb` and
//! `postgres` run as that user (supplementary groups dropped).

use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ::postgres::config::Host;
use ::postgres::{Client, Config, NoTls};
use crossbeam_channel::Sender;
use parking_lot::Mutex;
use r2d2_postgres::PostgresConnectionManager;

use crate::{unique_name, TestkitError};

// Streaming standbys of a started cluster: a child module, for `Local`'s
// fields.
#[path = "standby.rs"]
mod standby;

/// Name of the environment variable that points the testkit at an existing
/// PostgreSQL server instead of starting one (see [`TestPostgres::from_env`]).
pub const DATABASE_URL_ENV: &str = "LEASERING_TEST_DATABASE_URL";

/// How long to wait for a server to accept connections, or to exit.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for a server to exit after a stop signal.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Connect timeout used in the configurations handed out.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of server log quoted in error messages.
const LOG_TAIL_LINES: usize = 30;
/// How many free ports to try when the first start loses a port race.
const PORT_ATTEMPTS: usize = 5;
/// Size of the longest Unix socket path PostgreSQL accepts (sun_path minus 1).
const MAX_SOCKET_PATH: usize = 107;

/// Prefix of the cluster directories in the temp dir.
const DIR_PREFIX: &str = "leasering_pg";

const NO_BINARIES: &str = "PostgreSQL server binaries not found (looked in `pg_config --bindir` \
     and /usr/lib/postgresql/*/bin): install Debian's package `postgresql` (apt-get install \
     postgresql) or set LEASERING_TEST_DATABASE_URL to an existing server";

/// Settings for [`TestPostgres::start_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestPostgresOptions {
    /// The server's `max_connections` (default 200).
    pub max_connections: u32,
    /// Further server settings, each passed as `-c name=value` after (and so
    /// overriding) the testkit's own settings.
    pub extra_settings: Vec<(String, String)>,
}

impl Default for TestPostgresOptions {
    fn default() -> TestPostgresOptions {
        TestPostgresOptions {
            max_connections: 200,
            extra_settings: Vec::new(),
        }
    }
}

/// A PostgreSQL server for tests: either a throwaway cluster that this
/// process started (and can stop, kill and restart), or an external server
/// named by `LEASERING_TEST_DATABASE_URL`.
///
/// The superuser of a started cluster is `postgres`, with `trust`
/// authentication, and the database is `postgres`.
///
/// All methods take `&self`, so that the per-process instance of
/// [`TestPostgres::shared`] can be used from any thread.
pub struct TestPostgres {
    inner: Inner,
}

enum Inner {
    Local(Local),
    External(External),
}

struct External {
    url: String,
    config: Config,
}

struct Local {
    bin_dir: PathBuf,
    /// The directory holding everything: `data/`, the server log and the
    /// Unix socket. Removed on teardown.
    base_dir: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    options: TestPostgresOptions,
    run_as: Option<RunAs>,
    /// The postmaster, when running. Only this handle ever reaps it, so its
    /// pid cannot be reused while it is here.
    child: Mutex<Option<Child>>,
    torn_down: AtomicBool,
}

/// The unprivileged user to run PostgreSQL as when we are root.
#[derive(Clone)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    name: String,
    home: PathBuf,
}

impl std::fmt::Debug for TestPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Local(local) => f
                .debug_struct("TestPostgres")
                .field("port", &local.port)
                .field("dir", &local.base_dir)
                .field("pid", &self.pid())
                .finish(),
            // The URL may hold a password: do not show it.
            Inner::External(_) => f
                .debug_struct("TestPostgres")
                .field("external", &DATABASE_URL_ENV)
                .finish(),
        }
    }
}

impl TestPostgres {
    /// Starts a throwaway cluster with default options and waits until it
    /// accepts connections.
    pub fn start() -> Result<TestPostgres, TestkitError> {
        TestPostgres::start_with(TestPostgresOptions::default())
    }

    /// Starts a throwaway cluster with the given options and waits until it
    /// accepts connections.
    ///
    /// Fails with an explanatory message when the PostgreSQL server binaries
    /// are missing, when running as root without a `postgres` user, or when
    /// the server does not come up (the message then quotes the server log).
    pub fn start_with(options: TestPostgresOptions) -> Result<TestPostgres, TestkitError> {
        let bin_dir = find_bin_dir()?;
        let run_as = run_as_user()?;
        let base_dir = make_base_dir(run_as.as_ref())?;
        match Local::create(bin_dir, base_dir.clone(), options, run_as) {
            Ok(local) => Ok(TestPostgres {
                inner: Inner::Local(local),
            }),
            Err(e) => {
                remove_dir_logged(&base_dir);
                Err(e)
            }
        }
    }

    /// The external server named by the environment variable
    /// `LEASERING_TEST_DATABASE_URL` (a libpq-style `key=value` string or a
    /// `postgresql://` URL), or `None` when the variable is unset or empty.
    ///
    /// Nothing is checked beyond the syntax: the first connection tells
    /// whether the server is there. Such a handle cannot be stopped, killed or
    /// restarted: those methods return an error.
    pub fn from_env() -> Result<Option<TestPostgres>, TestkitError> {
        let url = match std::env::var(DATABASE_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => url,
            Ok(_) | Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(TestkitError::new(format!(
                    "{DATABASE_URL_ENV} is not valid UTF-8"
                )))
            }
        };
        let config = url.parse::<Config>().map_err(|e| {
            TestkitError::new(format!(
                "{DATABASE_URL_ENV} is not a valid PostgreSQL connection string: {e}"
            ))
        })?;
        Ok(Some(TestPostgres {
            inner: Inner::External(External { url, config }),
        }))
    }

    /// The one server of this process, started on first use: the external
    /// server of `LEASERING_TEST_DATABASE_URL` if set, else a throwaway
    /// cluster with default options.
    ///
    /// If starting fails, this and every later call return the same error.
    /// A started cluster is stopped and removed when the process exits
    /// normally (an `atexit` handler), and killed by the kernel if the process
    /// dies otherwise.
    ///
    /// Tests sharing it should not stop or kill it; give each test its own
    /// schema (see [`unique_name`]) instead.
    pub fn shared() -> Result<&'static TestPostgres, TestkitError> {
        static SHARED: OnceLock<Result<TestPostgres, String>> = OnceLock::new();
        extern "C" fn teardown_shared() {
            // A panic must not unwind into C; teardown never panics anyway.
            let _ = std::panic::catch_unwind(|| {
                if let Some(Ok(pg)) = SHARED.get() {
                    pg.teardown();
                }
            });
        }
        SHARED
            .get_or_init(|| {
                let result = match TestPostgres::from_env() {
                    Ok(Some(pg)) => Ok(pg),
                    Ok(None) => TestPostgres::start(),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(pg) => {
                        if !pg.is_external() {
                            // SAFETY: registering a plain extern "C" function.
                            if unsafe { libc::atexit(teardown_shared) } != 0 {
                                log::warn!(
                                    "testkit: atexit registration failed; the shared \
                                     PostgreSQL directory will be left behind"
                                );
                            }
                        }
                        Ok(pg)
                    }
                    Err(e) => Err(e.message().to_string()),
                }
            })
            .as_ref()
            .map_err(|m| TestkitError::new(m.clone()))
    }

    /// Whether this handle is an external server (from
    /// `LEASERING_TEST_DATABASE_URL`) rather than a cluster started here.
    pub fn is_external(&self) -> bool {
        matches!(self.inner, Inner::External(_))
    }

    /// A libpq-style connection string, e.g.
    /// `host=127.0.0.1 port=5433 user=postgres dbname=postgres connect_timeout=5`
    /// (for an external server, the string it was given).
    pub fn url(&self) -> String {
        match &self.inner {
            Inner::Local(local) => format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout={}",
                local.port,
                CONNECT_TIMEOUT.as_secs()
            ),
            Inner::External(ext) => ext.url.clone(),
        }
    }

    /// The host the server listens on (`127.0.0.1` for a started cluster; the
    /// first host, or `localhost`, for an external server).
    pub fn host(&self) -> String {
        match &self.inner {
            Inner::Local(_) => Ipv4Addr::LOCALHOST.to_string(),
            Inner::External(ext) => match ext.config.get_hosts().first() {
                Some(Host::Tcp(host)) => host.clone(),
                Some(Host::Unix(path)) => path.display().to_string(),
                None => "localhost".to_string(),
            },
        }
    }

    /// The TCP port the server listens on (for an external server, its first
    /// port, or 5432).
    pub fn port(&self) -> u16 {
        match &self.inner {
            Inner::Local(local) => local.port,
            Inner::External(ext) => ext.config.get_ports().first().copied().unwrap_or(5432),
        }
    }

    /// A connection configuration for the server (connect timeout 5 s for a
    /// started cluster).
    pub fn config(&self) -> Config {
        match &self.inner {
            Inner::Local(local) => {
                let mut config = Config::new();
                config
                    .host("127.0.0.1")
                    .port(local.port)
                    .user("postgres")
                    .dbname("postgres")
                    .connect_timeout(CONNECT_TIMEOUT);
                config
            }
            Inner::External(ext) => ext.config.clone(),
        }
    }

    /// A connection pool of at most `max_size` connections to the server.
    ///
    /// Connections are opened lazily (the pool keeps no idle minimum), and
    /// checking one out waits at most 5 s.
    pub fn pool(
        &self,
        max_size: u32,
    ) -> Result<r2d2::Pool<PostgresConnectionManager<NoTls>>, TestkitError> {
        make_pool(self.config(), max_size)
    }

    /// Like [`pool`](Self::pool), but connecting to `127.0.0.1:<port>`
    /// instead of the server itself, with the same user, password and
    /// database: for going through a [`TcpProxy`](super::TcpProxy).
    pub fn pool_via(
        &self,
        port: u16,
        max_size: u32,
    ) -> Result<r2d2::Pool<PostgresConnectionManager<NoTls>>, TestkitError> {
        make_pool(self.config_via(port), max_size)
    }

    /// A pool of at most `max_size` connections whose sessions carry
    /// `application_name` = `app` (so that the database can tell members
    /// apart), opened lazily; both connecting and checking a connection out
    /// give up after `timeout`. Built unchecked: it never waits for the
    /// server here.
    pub fn named_pool(
        &self,
        app: &str,
        max_size: u32,
        timeout: Duration,
    ) -> Result<r2d2::Pool<PostgresConnectionManager<NoTls>>, TestkitError> {
        if max_size == 0 {
            return Err(TestkitError::new("a pool needs max_size of at least 1"));
        }
        let mut config = self.config();
        config.application_name(app).connect_timeout(timeout);
        Ok(r2d2::Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            .connection_timeout(timeout)
            .build_unchecked(PostgresConnectionManager::new(config, NoTls)))
    }

    /// Opens one connection to the server.
    pub fn client(&self) -> Result<Client, TestkitError> {
        self.config()
            .connect(NoTls)
            .map_err(|e| TestkitError::new(format!("could not connect to the test server: {e}")))
    }

    /// The postmaster's process id, while this process runs it (`None` for an
    /// external server or a stopped cluster).
    pub fn pid(&self) -> Option<u32> {
        match &self.inner {
            Inner::Local(local) => {
                let mut child = local.child.lock();
                reap_if_exited(&mut child);
                child.as_ref().map(Child::id)
            }
            Inner::External(_) => None,
        }
    }

    /// Whether the postmaster started here is alive. For an external server,
    /// whether a connection can be opened right now.
    pub fn is_running(&self) -> bool {
        match &self.inner {
            Inner::Local(_) => self.pid().is_some(),
            Inner::External(ext) => ext.config.connect(NoTls).is_ok(),
        }
    }

    /// Stops the server with a fast shutdown (`SIGINT`: clients are
    /// disconnected, then a checkpoint) and waits for it to exit, at most
    /// 30 s (after which it is killed and an error returned).
    ///
    /// Does nothing if the server is not running; fails for an external
    /// server.
    pub fn stop_fast(&self) -> Result<(), TestkitError> {
        self.local("stop_fast")?.stop(libc::SIGINT, "fast shutdown")
    }

    /// Stops the server with an immediate shutdown (`SIGQUIT`: no checkpoint,
    /// crash recovery on the next start) and waits for it to exit, at most
    /// 30 s (after which it is killed and an error returned).
    ///
    /// Does nothing if the server is not running; fails for an external
    /// server.
    pub fn stop_immediate(&self) -> Result<(), TestkitError> {
        self.local("stop_immediate")?
            .stop(libc::SIGQUIT, "immediate shutdown")
    }

    /// Kills the server: `SIGKILL` to the postmaster and to all its child
    /// processes, as in a machine crash. Waits until they are gone and cleans
    /// up what they left (stale `postmaster.pid`, shared memory segment), so
    /// that [`start_again`](Self::start_again) works.
    ///
    /// Does nothing if the server is not running; fails for an external
    /// server.
    pub fn kill(&self) -> Result<(), TestkitError> {
        let local = self.local("kill")?;
        let mut guard = local.child.lock();
        reap_if_exited(&mut guard);
        match guard.take() {
            Some(mut child) => local.hard_kill(&mut child),
            None => Ok(()),
        }
    }

    /// Starts the server again on the same data directory and port, after a
    /// stop or a kill, and waits until it accepts connections (at most 30 s).
    ///
    /// Fails if it is already running, if the port has been taken meanwhile,
    /// or for an external server.
    pub fn start_again(&self) -> Result<(), TestkitError> {
        let local = self.local("start_again")?;
        if local.torn_down.load(Ordering::SeqCst) {
            return Err(TestkitError::new("the test server has been torn down"));
        }
        let mut guard = local.child.lock();
        reap_if_exited(&mut guard);
        if let Some(child) = guard.as_ref() {
            return Err(TestkitError::new(format!(
                "the test server is already running (postmaster pid {})",
                child.id()
            )));
        }
        let child = local
            .start_server(local.port)
            .map_err(StartError::into_error)?;
        *guard = Some(child);
        Ok(())
    }

    fn local(&self, what: &str) -> Result<&Local, TestkitError> {
        match &self.inner {
            Inner::Local(local) => Ok(local),
            Inner::External(_) => Err(TestkitError::new(format!(
                "cannot {what}: the test server is external (named by {DATABASE_URL_ENV}), \
                 and the testkit does not manage its process; unset {DATABASE_URL_ENV} to \
                 run tests that stop, kill or restart the server"
            ))),
        }
    }

    fn config_via(&self, port: u16) -> Config {
        let base = self.config();
        let mut config = Config::new();
        config.host("127.0.0.1").port(port);
        if let Some(user) = base.get_user() {
            config.user(user);
        }
        if let Some(password) = base.get_password() {
            config.password(password);
        }
        if let Some(dbname) = base.get_dbname() {
            config.dbname(dbname);
        }
        if let Some(options) = base.get_options() {
            config.options(options);
        }
        if let Some(name) = base.get_application_name() {
            config.application_name(name);
        }
        config.ssl_mode(base.get_ssl_mode());
        config.connect_timeout(
            base.get_connect_timeout()
                .copied()
                .unwrap_or(CONNECT_TIMEOUT),
        );
        config
    }

    /// Stops the server immediately (killing it if needed) and removes its
    /// directory. Idempotent, never panics.
    fn teardown(&self) {
        let Inner::Local(local) = &self.inner else {
            return;
        };
        if local.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        // At exit another thread may in theory hold the lock; do not hang.
        match local
            .child
            .try_lock_for(STOP_TIMEOUT + Duration::from_secs(5))
        {
            Some(mut guard) => {
                reap_if_exited(&mut guard);
                if let Some(mut child) = guard.take() {
                    if let Err(e) =
                        local.stop_child(&mut child, libc::SIGQUIT, "immediate shutdown")
                    {
                        log::warn!("testkit: {e}");
                    }
                }
            }
            None => {
                log::warn!("testkit: could not lock the test server to stop it; leaving it");
                return;
            }
        }
        remove_dir_logged(&local.base_dir);
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn make_pool(
    config: Config,
    max_size: u32,
) -> Result<r2d2::Pool<PostgresConnectionManager<NoTls>>, TestkitError> {
    if max_size == 0 {
        return Err(TestkitError::new("a pool needs max_size of at least 1"));
    }
    r2d2::Pool::builder()
        .max_size(max_size)
        .min_idle(Some(0))
        .connection_timeout(CONNECT_TIMEOUT)
        .build(PostgresConnectionManager::new(config, NoTls))
        .map_err(|e| TestkitError::new(format!("could not build a connection pool: {e}")))
}

/// The `Instant` at which a wall-clock time (a database timestamp, say)
/// happens on this machine: for comparing `timestamptz` values of a local
/// server with the library's `Instant`s.
pub fn instant_of(ts: SystemTime) -> Instant {
    let (now_sys, now) = (SystemTime::now(), Instant::now());
    match ts.duration_since(now_sys) {
        Ok(ahead) => now + ahead,
        Err(e) => now - e.duration(),
    }
}

/// Why a start attempt failed.
enum StartError {
    /// The server could not bind its port (another process took it).
    PortTaken(TestkitError),
    Other(TestkitError),
}

impl StartError {
    fn into_error(self) -> TestkitError {
        match self {
            StartError::PortTaken(e) | StartError::Other(e) => e,
        }
    }
}

impl Local {
    /// Runs initdb in `base_dir` and starts the server on a free port.
    fn create(
        bin_dir: PathBuf,
        base_dir: PathBuf,
        options: TestPostgresOptions,
        run_as: Option<RunAs>,
    ) -> Result<Local, TestkitError> {
        let data_dir = base_dir.join("data");
        let log_path = base_dir.join("postgres.log");
        let mut local = Local {
            bin_dir,
            base_dir,
            data_dir,
            log_path,
            port: 0,
            options,
            run_as,
            child: Mutex::new(None),
            torn_down: AtomicBool::new(false),
        };
        local.initdb()?;
        let mut attempt = 0;
        let child = loop {
            attempt += 1;
            let port = free_port()?;
            match local.start_server(port) {
                Ok(child) => {
                    local.port = port;
                    break child;
                }
                Err(StartError::PortTaken(e)) if attempt < PORT_ATTEMPTS => {
                    log::debug!("testkit: port {port} was taken, trying another: {e}");
                }
                Err(e) => return Err(e.into_error()),
            }
        };
        log::debug!(
            "testkit: PostgreSQL started on port {} in {} (pid {})",
            local.port,
            local.base_dir.display(),
            child.id()
        );
        *local.child.get_mut() = Some(child);
        Ok(local)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.current_dir(&self.base_dir)
            .stdin(Stdio::null())
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST");
        if let Some(user) = &self.run_as {
            // std drops the supplementary groups (setgroups(0)) when a uid is
            // set and no groups are given.
            cmd.uid(user.uid)
                .gid(user.gid)
                .env("HOME", &user.home)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
        }
        cmd
    }

    fn initdb(&self) -> Result<(), TestkitError> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = cmd.output().map_err(|e| {
            TestkitError::new(format!(
                "could not run {}: {e}",
                self.bin_dir.join("initdb").display()
            ))
        })?;
        if output.status.success() {
            return Ok(());
        }
        Err(TestkitError::new(format!(
            "initdb failed ({}) for {}:\n{}{}",
            output.status,
            self.data_dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }

    /// Spawns the postmaster on `port` and waits until it accepts
    /// connections. On failure the postmaster is killed.
    fn start_server(&self, port: u16) -> Result<Child, StartError> {
        let other = |msg: String| StartError::Other(TestkitError::new(msg));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| other(format!("could not open {}: {e}", self.log_path.display())))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = writeln!(
            log,
            "---- leasering testkit: starting postgres on port {port} ----"
        );
        let log_err = log
            .try_clone()
            .map_err(|e| other(format!("could not duplicate the log file handle: {e}")))?;

        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(port.to_string());
        let socket_len = self.base_dir.as_os_str().len() + "/.s.PGSQL.65535.lock".len();
        if socket_len <= MAX_SOCKET_PATH {
            cmd.arg("-k").arg(&self.base_dir);
        } else {
            // Path too long for a Unix socket: TCP only.
            cmd.args(["-c", "unix_socket_directories="]);
        }
        let mut settings: Vec<(String, String)> = [
            ("listen_addresses", "127.0.0.1"),
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("shared_buffers", "32MB"),
            ("huge_pages", "off"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        settings.push((
            "max_connections".to_string(),
            self.options.max_connections.to_string(),
        ));
        settings.extend(self.options.extra_settings.iter().cloned());
        for (key, value) in &settings {
            cmd.arg("-c").arg(format!("{key}={value}"));
        }
        cmd.stdout(log).stderr(log_err);
        set_parent_death_signal(&mut cmd);

        let mut child = spawn_from_keeper(cmd).map_err(|e| {
            other(format!(
                "could not start {}: {e}",
                self.bin_dir.join("postgres").display()
            ))
        })?;

        match self.wait_ready(&mut child, port, log_start) {
            Ok(()) => Ok(child),
            Err(e) => {
                // Make sure no half-started server stays around.
                if let Err(kill_err) = self.hard_kill(&mut child) {
                    log::warn!("testkit: {kill_err}");
                }
                Err(e)
            }
        }
    }

    fn wait_ready(&self, child: &mut Child, port: u16, log_start: u64) -> Result<(), StartError> {
        let mut config = Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_error;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let log = read_log_from(&self.log_path, log_start);
                    let msg = format!(
                        "PostgreSQL exited during startup ({status}) on port {port}; \
                         end of the server log:\n{}",
                        tail_lines(&log, LOG_TAIL_LINES)
                    );
                    let taken = log.contains("could not bind")
                        || log.contains("Address already in use")
                        || log.contains("could not create any TCP/IP sockets");
                    return Err(if taken {
                        StartError::PortTaken(TestkitError::new(msg))
                    } else {
                        StartError::Other(TestkitError::new(msg))
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(StartError::Other(TestkitError::new(format!(
                        "could not check on the PostgreSQL process: {e}"
                    ))))
                }
            }
            match config.connect(NoTls) {
                Ok(mut client) => match client.simple_query("SELECT 1") {
                    Ok(_) => return Ok(()),
                    Err(e) => last_error = e.to_string(),
                },
                Err(e) => last_error = e.to_string(),
            }
            if Instant::now() >= deadline {
                let log = read_log_from(&self.log_path, log_start);
                return Err(StartError::Other(TestkitError::new(format!(
                    "PostgreSQL did not accept connections on port {port} within {} s \
                     (last error: {last_error}); end of the server log:\n{}",
                    READY_TIMEOUT.as_secs(),
                    tail_lines(&log, LOG_TAIL_LINES)
                ))));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn stop(&self, signal: libc::c_int, what: &str) -> Result<(), TestkitError> {
        let mut guard = self.child.lock();
        reap_if_exited(&mut guard);
        match guard.take() {
            Some(mut child) => self.stop_child(&mut child, signal, what),
            None => Ok(()),
        }
    }

    /// Sends `signal` to the postmaster and waits for it to exit; kills it
    /// (and its children) if it has not exited within the stop timeout.
    fn stop_child(
        &self,
        child: &mut Child,
        signal: libc::c_int,
        what: &str,
    ) -> Result<(), TestkitError> {
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        // The child is not reaped yet, so its pid is still ours.
        // SAFETY: plain syscall.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        match wait_exit(child, STOP_TIMEOUT) {
            Some(status) => {
                log::debug!("testkit: PostgreSQL stopped by {what} ({status})");
                Ok(())
            }
            None => {
                let kill_result = self.hard_kill(child);
                Err(TestkitError::new(format!(
                    "PostgreSQL did not exit within {} s of {what}, so it was killed{}; \
                     end of the server log:\n{}",
                    STOP_TIMEOUT.as_secs(),
                    match kill_result {
                        Ok(()) => String::new(),
                        Err(e) => format!(" (not cleanly: {e})"),
                    },
                    self.log_tail()
                )))
            }
        }
    }

    /// SIGKILLs the postmaster and all its children, waits until they are
    /// gone and removes their leftovers so that a restart works.
    fn hard_kill(&self, child: &mut Child) -> Result<(), TestkitError> {
        if let Ok(Some(_)) = child.try_wait() {
            // Already dead: its children notice the postmaster's death and
            // exit by themselves; the next start waits for them if needed.
            return Ok(());
        }
        let pid = child.id();
        // Freeze the postmaster so that it forks no new child meanwhile; then
        // kill the children (which stay its children while it is stopped),
        // then the postmaster.
        // SAFETY: plain syscalls on a pid we have not reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        // kill() returns before the target actually stops; a fork in
        // progress completes first. Wait (briefly) until it is stopped.
        let stop_deadline = Instant::now() + Duration::from_secs(1);
        while !matches!(proc_stat(pid), Some(('T' | 't' | 'Z' | 'X', _)) | None)
            && Instant::now() < stop_deadline
        {
            thread::sleep(Duration::from_millis(1));
        }
        let children = child_pids(pid);
        for &c in &children {
            // SAFETY: plain syscall; these are unreaped children of a stopped
            // process, so their pids cannot have been reused.
            unsafe { libc::kill(c as libc::pid_t, libc::SIGKILL) };
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        if wait_exit(child, STOP_TIMEOUT).is_none() {
            return Err(TestkitError::new(format!(
                "PostgreSQL (pid {pid}) did not die within {} s of SIGKILL",
                STOP_TIMEOUT.as_secs()
            )));
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let alive: Vec<u32> = children
                .iter()
                .copied()
                .filter(|&c| process_alive(c))
                .collect();
            if alive.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::new(format!(
                    "processes of the killed PostgreSQL server are still alive: {alive:?}"
                )));
            }
            thread::sleep(Duration::from_millis(5));
        }
        self.remove_stale_lock(pid);
        Ok(())
    }

    /// After a kill: removes the shared memory segment recorded in
    /// `postmaster.pid` (if no process uses it) and the file itself.
    fn remove_stale_lock(&self, pid: u32) {
        let lock_path = self.data_dir.join("postmaster.pid");
        let Ok(contents) = fs::read_to_string(&lock_path) else {
            return;
        };
        let mut lines = contents.lines();
        if lines.next().and_then(|l| l.trim().parse::<u32>().ok()) != Some(pid) {
            // Not written by the process we killed: leave it to PostgreSQL.
            return;
        }
        if let Some((key, id)) = contents.lines().nth(6).and_then(parse_shm_line) {
            remove_shm_segment(key, id);
        }
        if let Err(e) = fs::remove_file(&lock_path) {
            log::warn!("testkit: could not remove {}: {e}", lock_path.display());
        }
    }

    fn log_tail(&self) -> String {
        tail_lines(&read_log_from(&self.log_path, 0), LOG_TAIL_LINES)
    }
}

/// Removes a System V shared memory segment if it still has the given key
/// and nobody is attached to it.
fn remove_shm_segment(key: libc::key_t, id: libc::c_int) {
    // SAFETY: shmid_ds is plain data; shmctl only writes into it.
    unsafe {
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        if libc::shmctl(id, libc::IPC_STAT, &mut ds) != 0 {
            return;
        }
        if ds.shm_perm.__key != key || ds.shm_nattch != 0 {
            return;
        }
        if libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) != 0 {
            log::warn!(
                "testkit: could not remove shared memory segment {id}: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Clears the slot if the process in it has exited (reaping it).
fn reap_if_exited(slot: &mut Option<Child>) {
    if let Some(child) = slot.as_mut() {
        match child.try_wait() {
            Ok(Some(status)) => {
                log::debug!("testkit: PostgreSQL had exited ({status})");
                *slot = None;
            }
            Ok(None) => {}
            Err(e) => log::warn!("testkit: could not check on PostgreSQL: {e}"),
        }
    }
}

/// Waits for the child to exit, at most `timeout`.
pub(crate) fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => {
                log::warn!("testkit: could not wait for PostgreSQL: {e}");
                return None;
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// State character and parent pid of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether the process exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// The pids of the direct children of `parent`.
fn child_pids(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| matches!(proc_stat(pid), Some((_, ppid)) if ppid == parent))
        .collect()
}

/// Asks the kernel to SIGKILL the child when the thread that forked it
/// exits. Must come after the uid switch (a credential change clears it),
/// which is the case: std runs `pre_exec` closures after setuid.
fn set_parent_death_signal(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes async-signal-safe syscalls and does not
    // allocate.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent died between fork and prctl: do not outlive it.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

struct SpawnRequest {
    command: Command,
    reply: Sender<io::Result<Child>>,
}

/// Spawns `command` from the `leasering-pg-keeper` thread, which never exits,
/// so that the parent-death signal only fires when the whole process dies.
fn spawn_from_keeper(command: Command) -> io::Result<Child> {
    static KEEPER: OnceLock<Result<Sender<SpawnRequest>, String>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<SpawnRequest>();
        thread::Builder::new()
            .name("leasering-pg-keeper".to_string())
            .spawn(move || {
                // The sender lives in a static and is never dropped, so this
                // loop (and the thread) never ends.
                for mut request in rx.iter() {
                    let result = request.command.spawn();
                    let _ = request.reply.send(result);
                }
            })
            .map(|_| tx)
            .map_err(|e| format!("could not start the leasering-pg-keeper thread: {e}"))
    });
    let keeper = keeper.as_ref().map_err(|m| io::Error::other(m.clone()))?;
    let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
    keeper
        .send(SpawnRequest {
            command,
            reply: reply_tx,
        })
        .map_err(|_| io::Error::other("the leasering-pg-keeper thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the leasering-pg-keeper thread did not answer"))?
}

/// The directory holding `initdb` and `postgres`.
fn find_bin_dir() -> Result<PathBuf, TestkitError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Ok(output) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        if output.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            if has_server(&dir) {
                return Ok(dir);
            }
        }
    }
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(parse_version) else {
                continue;
            };
            let dir = entry.path().join("bin");
            if has_server(&dir) && best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, dir));
            }
        }
    }
    best.map(|(_, dir)| dir)
        .ok_or_else(|| TestkitError::new(NO_BINARIES))
}

fn parse_version(name: &str) -> Option<Vec<u64>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// When we are root: the `postgres` user to run PostgreSQL as.
pub(crate) fn run_as_user() -> Result<Option<RunAs>, TestkitError> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    lookup_user("postgres").map(Some).ok_or_else(|| {
        TestkitError::new(
            "running as root, which PostgreSQL refuses, and there is no `postgres` user to run \
             it as: create one (apt-get install postgresql creates it), run the tests as \
             another user, or set LEASERING_TEST_DATABASE_URL to an existing server",
        )
    })
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let c_name = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: getpwnam_r writes into `pwd` and `buf`, which outlive the
    // pointers it returns; we copy everything out before they go away.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() {
            return None;
        }
        let home = if pwd.pw_dir.is_null() {
            PathBuf::from("/")
        } else {
            PathBuf::from(OsStr::from_encoded_bytes_unchecked(
                CStr::from_ptr(pwd.pw_dir).to_bytes(),
            ))
        };
        Some(RunAs {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            name: name.to_string(),
            home,
        })
    }
}

/// Creates a fresh, private directory for a cluster under the temp dir,
/// owned by the user PostgreSQL will run as.
pub(crate) fn make_base_dir(run_as: Option<&RunAs>) -> Result<PathBuf, TestkitError> {
    let tmp = std::env::temp_dir();
    if let Some(user) = run_as {
        check_reachable(&tmp, user)?;
    }
    sweep_leftovers(&tmp);
    let dir = loop {
        let dir = tmp.join(unique_name(DIR_PREFIX));
        match fs::create_dir(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(TestkitError::new(format!(
                    "could not create a directory in {}: {e}",
                    tmp.display()
                )))
            }
        }
    };
    let prepare = || -> io::Result<()> {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        if let Some(user) = run_as {
            chown_recursive(&dir, user.uid, user.gid)?;
        }
        Ok(())
    };
    if let Err(e) = prepare() {
        remove_dir_logged(&dir);
        return Err(TestkitError::new(format!(
            "could not prepare {}: {e}",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Removes cluster directories (and their shared memory segments) left
/// behind by test processes that died without running their teardown (e.g.
/// killed by a signal: the kernel then kills the postmaster, but nobody
/// removes its files). A directory is left alone while the process that
/// created it, or the postmaster recorded in it, is alive.
fn sweep_leftovers(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|n| n.strip_prefix('_'))
        else {
            continue;
        };
        let Some(owner) = rest.split('_').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let dir = entry.path();
        let lock = fs::read_to_string(dir.join("data").join("postmaster.pid")).unwrap_or_default();
        let postmaster = lock
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok());
        if postmaster.is_some_and(process_alive) {
            continue;
        }
        if let Some((key, id)) = lock.lines().nth(6).and_then(parse_shm_line) {
            remove_shm_segment(key, id);
        }
        log::debug!("testkit: removing leftover {}", dir.display());
        remove_dir_logged(&dir);
    }
}

/// Parses line 7 of `postmaster.pid`: "<shm key> <shm id>".
fn parse_shm_line(line: &str) -> Option<(libc::key_t, libc::c_int)> {
    let mut fields = line.split_whitespace();
    let key = fields.next()?.parse().ok()?;
    let id = fields.next()?.parse().ok()?;
    Some((key, id))
}

/// Checks that `user` can traverse every directory down to `dir`.
fn check_reachable(dir: &Path, user: &RunAs) -> Result<(), TestkitError> {
    for ancestor in dir.ancestors() {
        let Ok(meta) = fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.mode();
        let ok = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(TestkitError::new(format!(
                "the temporary directory {} is not reachable by the `{}` user that PostgreSQL \
                 runs as ({} is not searchable): set TMPDIR to a directory such as /tmp",
                dir.display(),
                user.name,
                ancestor.display()
            )));
        }
    }
    Ok(())
}

pub(crate) fn chown_recursive(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

pub(crate) fn remove_dir_logged(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("testkit: could not remove {}: {e}", dir.display());
        }
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, TestkitError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| TestkitError::new(format!("could not find a free port: {e}")))
}

/// The server log from byte `offset` on (at most its last 64 KiB).
fn read_log_from(path: &Path, offset: u64) -> String {
    const MAX: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::from("(no server log)");
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = offset.max(len.saturating_sub(MAX));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::from("(server log unreadable)");
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
