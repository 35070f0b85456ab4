//! A test certificate authority made with the `openssl` command line (an
//! ECDSA P-256 CA and leaves for 127.0.0.1), so no certificate generator is
//! compiled into the test build.
//!
//! Use from any test file with `#[path = "common/certs.rs"] mod certs;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A test CA in a temp dir, issuing certificates for 127.0.0.1.
pub struct TestCa {
    dir: tempfile::TempDir,
    serial: u32,
}

/// Runs `openssl` with `args`, split at whitespace.
fn openssl(args: &str, cwd: &Path) {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(cwd)
        .output()
        .expect("the openssl command line (the TLS tests generate their certificates with it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req` arguments for a new ECDSA P-256 key, unencrypted.
const NEW_KEY: &str = "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            &format!(
                "{NEW_KEY} -x509 -keyout ca.key -out ca.pem -days 2 -subj /CN=kvreplica-test-CA \
                 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
            ),
            dir.path(),
        );
        std::fs::write(
            dir.path().join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        TestCa { dir, serial: 0 }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new key and certificate for 127.0.0.1: `<name>.pem`, `<name>.key`.
    pub fn issue(&mut self, name: &str) -> (PathBuf, PathBuf) {
        self.serial += 1;
        let (cert, key, csr) = (
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("{name}.csr"),
        );
        let serial = self.serial.to_string();
        openssl(
            &format!("{NEW_KEY} -keyout {key} -out {csr} -subj /CN=127.0.0.1"),
            self.dir.path(),
        );
        openssl(
            &format!(
                "x509 -req -in {csr} -CA ca.pem -CAkey ca.key -set_serial {serial} -days 2 \
                 -extfile leaf.ext -out {cert}"
            ),
            self.dir.path(),
        );
        (self.path(&cert), self.path(&key))
    }
}
