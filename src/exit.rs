//! Exit codes: which failures a restart can mend and which need an operator.
//!
//! systemd restarts a failed `kvreplica serve` every few seconds. For a
//! network hiccup that is right; for refused credentials, a wrong bucket or
//! a replica file built from another backup it only fills the journal. Such
//! failures exit with a code of their own (from `sysexits.h`), which the
//! unit lists in `RestartPreventExitStatus=`; everything else exits 1 and
//! is restarted. The error types already know which is which
//! ([`SyncError::is_permanent`], [`SourceError::is_retryable`]); this module
//! is the one place that turns them into a number.

use std::process::ExitCode;

use crate::config::ConfigError;
use crate::restore::RestoreError;
use crate::source::SourceError;
use crate::store::pitr::CheckoutError;
use crate::store::StoreError;
use crate::sync::SyncError;

/// Why the process stops, as far as a supervisor needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Anything else, possibly transient (network, disk full, a lock held by
    /// another process): worth restarting.
    Failure = 1,
    /// The backup is corrupt: an object that does not decode, a log that
    /// contradicts the replica, a re-exported backup, a late object that
    /// cannot be folded into the history (EX_DATAERR).
    CorruptBackup = 65,
    /// No backup at the source: no such bucket or directory, or nothing
    /// under the prefix (EX_NOINPUT).
    NoBackup = 66,
    /// The object store refused a request for another lasting reason
    /// (EX_UNAVAILABLE).
    Refused = 69,
    /// The replica file cannot be used for this source: built from another
    /// backup, by a newer kvreplica, or not a replica at all (another
    /// program's file, refused unchanged) (EX_CANTCREAT).
    ReplicaMismatch = 73,
    /// The object store refused the credentials (EX_NOPERM).
    AccessDenied = 77,
    /// A restore left keys that changed in the primary meanwhile
    /// (conflicts): an operator decides (EX_TEMPFAIL).
    Conflicts = 75,
    /// The configuration (file, environment, flags, source URL) is invalid
    /// (EX_CONFIG).
    BadConfig = 78,
}

/// The table printed at the end of `kvreplica --help`; the README and
/// systemd/kvreplica.service list the same codes.
pub(crate) const HELP: &str = "\
Exit codes:
  0   success
  1   a failure that may pass (network, disk, lock held): worth restarting
  2   wrong command-line usage
  65  the backup is corrupt, re-exported, or has a late object that cannot be folded in
  66  no backup at the source (no such bucket or directory, empty prefix)
  69  the object store refused a request for a lasting reason
  73  the replica file belongs to another backup or a newer kvreplica, or is not a replica
  75  a restore left keys another writer changed meanwhile (conflicts)
  77  access to the object store denied
  78  invalid configuration
Codes other than 0 and 1 need an operator: systemd/kvreplica.service does not restart them.";

impl Exit {
    /// The exit code for `err`: the first error in its chain that says
    /// what kind of failure it is decides.
    pub(crate) fn of(err: &anyhow::Error) -> Exit {
        err.chain()
            .find_map(|cause| {
                if let Some(e) = cause.downcast_ref::<SyncError>() {
                    Some(sync(e))
                } else if let Some(e) = cause.downcast_ref::<SourceError>() {
                    Some(source(e))
                } else if let Some(e) = cause.downcast_ref::<StoreError>() {
                    Some(store(e))
                } else if let Some(e) = cause.downcast_ref::<CheckoutError>() {
                    match e {
                        CheckoutError::Store(e) => Some(store(e)),
                        _ => Some(Exit::Failure),
                    }
                } else if let Some(RestoreError::Conflicts(_)) = cause.downcast_ref() {
                    Some(Exit::Conflicts)
                } else {
                    cause.downcast_ref::<ConfigError>().map(|_| Exit::BadConfig)
                }
            })
            .unwrap_or(Exit::Failure)
    }

    pub(crate) fn code(self) -> ExitCode {
        ExitCode::from(self as u8)
    }
}

fn sync(e: &SyncError) -> Exit {
    match e {
        SyncError::Source(e) => source(e),
        SyncError::Store(e) => store(e),
        SyncError::Format(_) | SyncError::Reexported { .. } | SyncError::LateObject { .. } => {
            Exit::CorruptBackup
        }
        SyncError::EmptySource(_) => Exit::NoBackup,
        // The missing object may still land (a late upload): worth retrying.
        SyncError::Task(_) | SyncError::LogGap { .. } | SyncError::LateGap { .. } => Exit::Failure,
    }
}

fn source(e: &SourceError) -> Exit {
    match e {
        SourceError::ListedButMissing(_) | SourceError::Transient { .. } => Exit::Failure,
        SourceError::NoSuchBucket(_) | SourceError::NoSuchDirectory(_) => Exit::NoBackup,
        SourceError::AccessDenied { .. } => Exit::AccessDenied,
        SourceError::Permanent { .. } => Exit::Refused,
        SourceError::Format(_) => Exit::CorruptBackup,
        SourceError::Config(_) => Exit::BadConfig,
    }
}

fn store(e: &StoreError) -> Exit {
    match e {
        StoreError::BoundToOtherSource { .. }
        | StoreError::SchemaTooNew { .. }
        | StoreError::NotAReplica { .. } => Exit::ReplicaMismatch,
        StoreError::Corrupt(_) | StoreError::Object(_) => Exit::CorruptBackup,
        // The settings ask for another filter than the file was built
        // with: the configuration must change (or the file go).
        StoreError::FilterMismatch { .. } => Exit::BadConfig,
        StoreError::Sqlite(_)
        | StoreError::Io { .. }
        | StoreError::Write { .. }
        | StoreError::Locked { .. }
        | StoreError::InitialIncomplete => Exit::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_sync_errors_never_exit_1_and_transient_ones_do() {
        let permanent = [
            SyncError::EmptySource("s3://b/p/".into()),
            SyncError::Source(SourceError::AccessDenied {
                what: "b".into(),
                detail: "403".into(),
            }),
            SyncError::Source(SourceError::NoSuchBucket("b".into())),
            SyncError::Source(SourceError::Permanent {
                what: "b".into(),
                detail: "400".into(),
            }),
            SyncError::Store(StoreError::BoundToOtherSource {
                path: "r.db".into(),
                bound: "a".into(),
                requested: "b".into(),
            }),
            SyncError::Reexported {
                what: "differential changed".into(),
                backup: "s3://b/p/".into(),
                db: "r.db".into(),
            },
        ];
        for e in permanent {
            assert!(e.is_permanent(), "{e}");
            assert_ne!(Exit::of(&e.into()), Exit::Failure);
        }
        let transient = SyncError::Source(SourceError::Transient {
            what: "b".into(),
            detail: "503".into(),
        });
        assert!(!transient.is_permanent());
        assert_eq!(Exit::of(&transient.into()), Exit::Failure);
    }

    #[test]
    fn context_does_not_hide_the_cause() {
        let e = anyhow::Error::from(StoreError::SchemaTooNew {
            found: 9,
            supported: 1,
            path: "r.db".into(),
        })
        .context("opening replica r.db");
        assert_eq!(Exit::of(&e), Exit::ReplicaMismatch);
        let e = anyhow::Error::from(StoreError::NotAReplica {
            path: "app.db".into(),
            what: "another application's SQLite database (tables: users)".into(),
        })
        .context("opening replica app.db");
        assert_eq!(Exit::of(&e), Exit::ReplicaMismatch);
        assert_eq!(Exit::of(&anyhow::anyhow!("anything")), Exit::Failure);
    }

    #[test]
    fn help_lists_every_code() {
        for exit in [
            Exit::Failure,
            Exit::CorruptBackup,
            Exit::NoBackup,
            Exit::Refused,
            Exit::ReplicaMismatch,
            Exit::Conflicts,
            Exit::AccessDenied,
            Exit::BadConfig,
        ] {
            let line = format!("\n  {:<3} ", exit as u8);
            assert!(HELP.contains(&line), "{exit:?} missing from HELP");
        }
    }
}
