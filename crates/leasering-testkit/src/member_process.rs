//! A member process (`tests/bin/member.rs` of the library) run by a test or
//! a bench, killed when its handle drops.
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
    /// The member binary (`env!("CARGO_BIN_EXE_leasering-member")`).
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
