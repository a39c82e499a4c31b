//! Programs from Debian's packages that some tests run (PgBouncer,
//! Prometheus and promtool): found on `PATH` or in `/usr/sbin`, and — when
//! missing on a machine where the tests run as root with `apt-get`, as on a
//! fresh CI machine — installed the way `.ci/run` installs them, so that
//! the README's test command needs nothing but PostgreSQL's server
//! binaries. Elsewhere a missing program is an error that says which
//! package to install; a test never skips for want of one.

use std::path::PathBuf;
use std::process::Command;

use crate::TestkitError;

/// The path of `program`, from Debian's package `package`, installing the
/// package first if it is missing and this process may (root, `apt-get`).
///
/// ```no_run
/// let pgbouncer = leasering_testkit::debian::program("pgbouncer", "pgbouncer").unwrap();
/// ```
pub fn program(program: &str, package: &str) -> Result<PathBuf, TestkitError> {
    if let Some(p) = find(program) {
        return Ok(p);
    }
    let advice = format!(
        "`{program}` not found on PATH or in /usr/sbin: install Debian's package `{package}` \
         (apt-get install {package}; .ci/run does, and the tests do when run as root)"
    );
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || find("apt-get").is_none() {
        return Err(TestkitError::new(advice));
    }
    install(package).map_err(|e| TestkitError::new(format!("{advice}: {e}")))?;
    find(program).ok_or_else(|| TestkitError::new(advice))
}

fn find(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/bin".into());
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// `apt-get install` (after `apt-get update` if the first try fails: a
/// fresh machine has no package lists), one test at a time: apt holds a
/// lock of its own, and parallel tests would fail on it.
fn install(package: &str) -> Result<(), String> {
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = APT.lock().unwrap_or_else(|e| e.into_inner());
    log::info!("testkit: installing Debian's package {package}");
    let apt = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| format!("could not run apt-get: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "apt-get {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let install = ["install", "-y", "-qq", package];
    if apt(&install).is_ok() {
        return Ok(());
    }
    apt(&["update", "-qq"])?;
    apt(&install)
}
