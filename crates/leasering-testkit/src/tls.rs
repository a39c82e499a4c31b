//! A self-signed certificate for a throwaway cluster with `ssl = on`, made
//! in-process with `rcgen` (no `openssl` tool needed), and
//! the server settings that use it: TLS on, and a `pg_hba.conf` that admits
//! the role [`TLS_ROLE`] over TCP only with TLS (`hostssl`), so that a
//! client of that role that did not negotiate TLS is refused rather than
//! served in the clear. The superuser `postgres` still connects without
//! TLS (the testkit's own readiness checks and the tests' administration).
//!
//! ```no_run
//! # fn main() -> Result<(), leasering_testkit::TestkitError> {
//! use leasering_testkit::{tls::TlsFiles, TestPostgres, TestPostgresOptions};
//! let tls = TlsFiles::self_signed()?;
//! let db = TestPostgres::start_with(TestPostgresOptions {
//!     extra_settings: tls.server_settings(),
//!     ..TestPostgresOptions::default()
//! })?;
//! // Clients trust `tls.cert()` as their CA and connect to 127.0.0.1.
//! # Ok(()) }
//! ```

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::postgres::{chown_recursive, make_base_dir, remove_dir_logged, run_as_user};
use crate::TestkitError;

/// The role the `pg_hba.conf` of [`TlsFiles::server_settings`] admits
/// over TLS only (create it yourself: it does not exist in a new cluster).
pub const TLS_ROLE: &str = "leasering_tls";

/// A certificate (for `127.0.0.1` and `localhost`, valid for a day) and its
/// key, in a directory owned by the user the server runs as; removed on
/// drop.
pub struct TlsFiles {
    dir: PathBuf,
    cert_der: Vec<u8>,
}

impl TlsFiles {
    /// Makes the key and the self-signed certificate.
    pub fn self_signed() -> Result<TlsFiles, TestkitError> {
        let run_as = run_as_user()?;
        let dir = make_base_dir(run_as.as_ref())?;
        let mut files = TlsFiles {
            dir,
            cert_der: Vec::new(),
        };
        let key = rcgen::KeyPair::generate()
            .map_err(|e| TestkitError::new(format!("could not make a TLS key: {e}")))?;
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .map_err(|e| TestkitError::new(format!("bad certificate parameters: {e}")))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        let cert = params
            .self_signed(&key)
            .map_err(|e| TestkitError::new(format!("could not sign the certificate: {e}")))?;
        files.cert_der = cert.der().to_vec();
        let write = || -> std::io::Result<()> {
            fs::write(files.cert(), cert.pem())?;
            fs::write(files.key(), key.serialize_pem())
        };
        write().map_err(|e| {
            TestkitError::new(format!(
                "could not write the certificate to {}: {e}",
                files.dir.display()
            ))
        })?;
        let hba = format!(
            "local all all trust\n\
             hostssl all {TLS_ROLE} 127.0.0.1/32 trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host replication all 127.0.0.1/32 trust\n"
        );
        let finish = || -> std::io::Result<()> {
            fs::write(files.dir.join("pg_hba.conf"), hba)?;
            // PostgreSQL refuses a key that others can read.
            fs::set_permissions(files.key(), fs::Permissions::from_mode(0o600))?;
            fs::set_permissions(files.cert(), fs::Permissions::from_mode(0o644))?;
            if let Some(u) = &run_as {
                chown_recursive(&files.dir, u.uid, u.gid)?;
            }
            Ok(())
        };
        finish().map_err(|e| {
            TestkitError::new(format!(
                "could not prepare the TLS files in {}: {e}",
                files.dir.display()
            ))
        })?;
        Ok(files)
    }

    /// The certificate (PEM): the server's, and the clients' CA.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    /// The private key (PEM).
    /// The certificate in DER form, for a client's trusted roots.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The directory holding them.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Server settings for [`TestPostgresOptions::extra_settings`](crate::TestPostgresOptions):
    /// `ssl = on` with this certificate and key, and the `hostssl`-only
    /// `pg_hba.conf`.
    pub fn server_settings(&self) -> Vec<(String, String)> {
        vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), self.cert().display().to_string()),
            ("ssl_key_file".into(), self.key().display().to_string()),
            (
                "hba_file".into(),
                self.dir.join("pg_hba.conf").display().to_string(),
            ),
        ]
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        remove_dir_logged(&self.dir);
    }
}
