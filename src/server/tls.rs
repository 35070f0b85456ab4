//! TLS for both listeners: a certificate and key read from PEM files,
//! HTTP/2 and HTTP/1.1 offered by ALPN, and certificates swapped in a
//! running process without touching open connections.
//!
//! rustls with the *ring* provider: the TLS stack the object-store
//! clients already bring in, so the binary carries one.
//!
//! Rotation: a [`Certs`] is the listener's certificate resolver. Each
//! handshake asks it for the current certificate, so replacing it (a
//! reload after the files changed, or SIGHUP) takes effect for the next
//! connection, while open connections keep the session they negotiated.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{Error, InconsistentKeys, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The two settings of one listener's TLS (`server.tls_cert_file` and
/// `server.tls_key_file`, or the same under `admin`), as configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsPaths {
    /// PEM certificate chain: the server's certificate first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
    pub key_file: Option<PathBuf>,
}

impl TlsPaths {
    /// The files to serve TLS with: `None` when neither is set (plain
    /// HTTP), an error naming the missing one when only one is.
    /// `listener` is the settings table, `server` or `admin`.
    pub fn files(&self, listener: &'static str) -> Result<Option<TlsFiles>, TlsError> {
        match (&self.cert_file, &self.key_file) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (Some(_), None) => Err(TlsError::Half {
                set: "tls_cert_file",
                unset: "tls_key_file",
                listener,
            }),
            (None, Some(_)) => Err(TlsError::Half {
                set: "tls_key_file",
                unset: "tls_cert_file",
                listener,
            }),
        }
    }
}

/// A certificate chain file and its key file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why TLS cannot be served with the configured files. Each names the
/// file at fault; none carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// One of the pair is set, the other not.
    #[error("{listener}.{set} is set but {listener}.{unset} is not: TLS needs both")]
    Half {
        set: &'static str,
        unset: &'static str,
        listener: &'static str,
    },
    /// A file cannot be read (missing, permissions).
    #[error("cannot read the TLS {what} file {}: {error}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// The certificate file holds no usable PEM certificate.
    #[error("the TLS certificate file {} holds no PEM certificate ({reason})", path.display())]
    Cert { path: PathBuf, reason: String },
    /// The key file holds no usable private key.
    #[error(
        "the TLS key file {} holds no usable private key (PEM PKCS#8, PKCS#1 or SEC1 expected): {reason}",
        path.display()
    )]
    Key { path: PathBuf, reason: String },
    /// The key is not the certificate's.
    #[error(
        "the TLS key in {} does not belong to the certificate in {}",
        key.display(),
        cert.display()
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })
}

fn provider() -> CryptoProvider {
    ring::default_provider()
}

/// Reads and checks a certificate chain and its key.
fn load(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read("certificate", &files.cert)?;
    let key_pem = read("key", &files.key)?;
    let bad_cert = |reason: String| TlsError::Cert {
        path: files.cert.clone(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| bad_cert(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad_cert("no BEGIN CERTIFICATE block".into()));
    }
    let bad_key = |reason: String| TlsError::Key {
        path: files.key.clone(),
        reason,
    };
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad_key(e.to_string()))?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad_key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signer);
    // Also parses the server's certificate: one rustls cannot read would
    // fail every handshake, so it is refused here, where the error can
    // name the file.
    match certified.keys_match() {
        Ok(()) | Err(Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(Error::InconsistentKeys(_)) => {
            return Err(TlsError::Mismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        Err(other) => return Err(bad_cert(other.to_string())),
    }
    Ok(certified)
}

/// One listener's certificate, replaceable while it serves.
#[derive(Debug)]
pub struct Certs {
    current: RwLock<Current>,
}

#[derive(Debug)]
struct Current {
    files: TlsFiles,
    key: Arc<CertifiedKey>,
}

impl Certs {
    /// Reads `files`; an error names the file at fault.
    pub fn load(files: TlsFiles) -> Result<Arc<Certs>, TlsError> {
        let key = Arc::new(load(&files)?);
        Ok(Arc::new(Certs {
            current: RwLock::new(Current { files, key }),
        }))
    }

    /// Reads `files` again (they may be other files than before) and
    /// serves them from the next handshake on. `Ok(false)`: the same
    /// certificate and key as now. On an error the current ones stay.
    pub fn reload(&self, files: &TlsFiles) -> Result<bool, TlsError> {
        let new = load(files)?;
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        let same = cur.files == *files
            && cur.key.cert == new.cert
            && cur.key.key.public_key() == new.key.public_key();
        if same {
            return Ok(false);
        }
        *cur = Current {
            files: files.clone(),
            key: Arc::new(new),
        };
        Ok(true)
    }

    /// The acceptor a listener hands each connection to: HTTP/2 preferred
    /// by ALPN, HTTP/1.1 for clients that do not offer it.
    pub(crate) fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
        Some(cur.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_a_pair_names_the_missing_setting() {
        let paths = TlsPaths {
            cert_file: Some("c.pem".into()),
            key_file: None,
        };
        let e = paths.files("admin").unwrap_err().to_string();
        assert!(
            e.contains("admin.tls_cert_file is set but admin.tls_key_file is not"),
            "{e}"
        );
        assert_eq!(TlsPaths::default().files("server").unwrap(), None);
    }

    #[test]
    fn unreadable_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("missing.pem"),
            key: dir.path().join("key.pem"),
        };
        let e = Certs::load(files.clone()).unwrap_err().to_string();
        assert!(
            e.contains("certificate file") && e.contains("missing.pem"),
            "{e}"
        );
        std::fs::write(&files.cert, "not a certificate\n").unwrap();
        std::fs::write(&files.key, "").unwrap();
        let e = Certs::load(files.clone()).unwrap_err().to_string();
        assert!(
            e.contains("holds no PEM certificate") && e.contains("missing.pem"),
            "{e}"
        );
    }
}
