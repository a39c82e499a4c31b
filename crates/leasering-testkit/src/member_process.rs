//! A member process (this crate's `leasering-member` bin, found by
//! [`member_binary`]) run by a test or a bench, killed when its handle drops.
//!
//! Why a handle and not a bare [`Child`]: a test that panics while its
//! member process is stopped with `SIGSTOP` would otherwise leave the
//! process stopped for ever, and with it the test binary's inherited output
//! pipe — `cargo test` then waits on that pipe without end. Dropping a
//! [`MemberProcess`] continues, kills and reaps the process, so a failing
//! test fails instead of hanging.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::TestkitError;

/// A running member process; killed (`SIGCONT`, then `SIGKILL`) and reaped
/// on drop unless it already exited.
#[derive(Debug)]
pub struct MemberProcess {
    child: Child,
    exited: bool,
}

/// What a member process is started with: the arguments of
/// `leasering-member <url> <ring> <node> <ttl_ms> <schema> <events>`.
#[derive(Debug, Clone, Copy)]
pub struct MemberArgs<'a> {
    /// The member binary ([`member_binary`]).
    pub exe: &'a str,
    /// The connection string of the database.
    pub url: &'a str,
    /// The ring to join.
    pub ring: &'a str,
    /// The member's node id.
    pub node: &'a str,
    /// Its lease TTL.
    pub ttl: Duration,
    /// The schema of the ring's tables.
    pub schema: &'a str,
    /// The file its events are logged to (see [`crate::member_log`]).
    pub events: &'a Path,
}

impl MemberProcess {
    /// Starts the member process and waits for its `ready` line (it has
    /// joined the ring).
    pub fn spawn(args: MemberArgs<'_>) -> Result<MemberProcess, TestkitError> {
        MemberProcess::spawn_with(args, &[])
    }

    /// Like [`spawn`](Self::spawn), with further arguments after the six
    /// positional ones (flags such as `--transaction-pooling` or
    /// `--extra-rings=N`).
    pub fn spawn_with(args: MemberArgs<'_>, extra: &[&str]) -> Result<MemberProcess, TestkitError> {
        let events = args.events.to_str().ok_or_else(|| {
            TestkitError::new(format!("the events path {:?} is not UTF-8", args.events))
        })?;
        let child = Command::new(args.exe)
            .args([
                args.url,
                args.ring,
                args.node,
                &args.ttl.as_millis().to_string(),
                args.schema,
                events,
            ])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                TestkitError::new(format!(
                    "could not start the member process {}: {e}",
                    args.exe
                ))
            })?;
        let mut member = MemberProcess {
            child,
            exited: false,
        };
        let stdout = member.child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map_err(|e| {
            TestkitError::new(format!("reading member {}'s first line: {e}", args.node))
        })?;
        if !line.starts_with("ready") {
            return Err(TestkitError::new(format!(
                "member {} did not start: it said {line:?} instead of \"ready\"",
                args.node
            )));
        }
        Ok(member)
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (for example `libc::SIGSTOP`) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on a pid this handle owns and has not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Asks the member to leave gracefully (its standard input closes) and
    /// waits for it to exit.
    pub fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        self.exited = true;
    }

    /// Kills the process with `SIGKILL` and reaps it.
    pub fn kill(mut self) {
        self.reap();
    }

    fn reap(&mut self) {
        if !self.exited {
            self.signal(libc::SIGCONT);
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
            self.exited = true;
        }
    }
}

impl Drop for MemberProcess {
    fn drop(&mut self) {
        self.reap();
    }
}

/// The path of the member binary (`leasering-member`, this crate's bin),
/// built up to date for the calling test or bench on the first call.
///
/// A test or bench of another package cannot name another package's bin
/// (`env!("CARGO_BIN_EXE_…")` is for a package's own), and Cargo builds a
/// dependency's bins only for that package's own tests: so the first call
/// runs `cargo build -p leasering-testkit --bin leasering-member` (with
/// `--release` when the caller was built in `target/release`, as benches
/// are), which is a no-op after `cargo test --workspace` and takes a few
/// seconds after a change. Cargo has released its build lock by the time it
/// runs a test, so this does not wait on the caller's own `cargo test`.
/// The binary lands next to the caller's `deps/` folder, in the same target
/// folder (`CARGO_TARGET_DIR` is inherited).
///
/// Panics, saying what failed, if the build fails: no test can run a member
/// process without it.
pub fn member_binary() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| match build_member_binary() {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    })
}

fn build_member_binary() -> Result<String, TestkitError> {
    let exe = std::env::current_exe()
        .map_err(|e| TestkitError::new(format!("where is this test binary? {e}")))?;
    // target/<profile>/deps/<test>-<hash>, or target/<profile>/<bench>.
    let profile_dir = exe
        .ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "debug" || n == "release"))
        .ok_or_else(|| {
            TestkitError::new(format!(
                "{} is not in a target/debug or target/release folder: build the member \
                 with `cargo build -p leasering-testkit --bin leasering-member` and run it yourself",
                exe.display()
            ))
        })?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--quiet", "--manifest-path", manifest]);
    cmd.args(["-p", "leasering-testkit", "--bin", "leasering-member"]);
    if release {
        cmd.arg("--release");
    }
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        TestkitError::new(format!(
            "could not run {cargo} to build leasering-member: {e}"
        ))
    })?;
    if !out.status.success() {
        return Err(TestkitError::new(format!(
            "`cargo build -p leasering-testkit --bin leasering-member` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let path = profile_dir.join("leasering-member");
    if !path.exists() {
        return Err(TestkitError::new(format!(
            "built leasering-member, but it is not at {} (a different CARGO_TARGET_DIR?)",
            path.display()
        )));
    }
    Ok(path.to_string_lossy().into_owned())
}
