//! The layout of a Deno Deploy backup, the one place that knows object
//! names: `<prefix>differential`, `<prefix>snapshots/<name>.bin` and
//! `<prefix>logs/<name>.bin`.
//!
//! [`Backup`] reads that layout from any [`ObjectStore`] (through the retry
//! wrapper), so the backends only speak their API and the sync engine only
//! speaks of snapshots and logs. The names themselves ([`SnapshotName`],
//! [`LogName`]) and the payloads are parsed in [`crate::format`].

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::format::{FormatError, LogName, SnapshotName};
use crate::source::retry::{RetryPolicy, Retrying};
use crate::source::{Body, IfChanged, ObjectMeta, ObjectStore, ObjectVersion, SourceError};

/// The object holding the differential versionstamp.
const DIFFERENTIAL: &str = "differential";

/// The folder of snapshot ranges.
const SNAPSHOTS: &str = "snapshots/";

/// The folder of mutation-log objects.
const LOGS: &str = "logs/";

/// The suffix of every snapshot and log object.
const SUFFIX: &str = ".bin";

/// Most keys asked for in one listing request; stores cap it further.
const PAGE: usize = 1000;

/// The key of a snapshot range object, below the backup's prefix.
pub fn snapshot_key(name: &SnapshotName) -> String {
    format!("{SNAPSHOTS}{name}{SUFFIX}")
}

/// The key of a mutation-log object, below the backup's prefix.
pub fn log_key(name: &LogName) -> String {
    format!("{LOGS}{name}{SUFFIX}")
}

/// A listed object with what the sync loop needs to schedule it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed<N> {
    pub name: N,
    /// Object size in bytes, used to bound the bytes in flight.
    pub size: u64,
    /// When the store says the object was written; guards against
    /// consuming a log past an object that is still being uploaded.
    pub last_modified: DateTime<Utc>,
}

/// A read-only view of one backup (bucket + prefix, or directory).
#[derive(Debug)]
pub struct Backup {
    store: Retrying,
}

impl Backup {
    /// Reads the backup `store` holds, retrying transient failures by
    /// `policy`.
    pub fn new(store: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Self {
        Backup {
            store: Retrying::new(store, policy),
        }
    }

    /// A stable description of the bucket and prefix, stored in the replica
    /// so that a file built from one backup is never synced from another.
    pub fn identity(&self) -> String {
        self.store.naming().identity.clone()
    }

    /// How `<prefix>differential` is named in messages and logs.
    pub fn differential_name(&self) -> String {
        self.store.naming().describe(DIFFERENTIAL)
    }

    /// How a log object is named in messages and logs: its whole key in
    /// the store, so the operator can find it.
    pub fn describe_log(&self, name: &LogName) -> String {
        self.store.naming().describe(&log_key(name))
    }

    /// Reads `<prefix>differential`; `None` while it does not exist yet.
    pub async fn read_differential(&self) -> Result<Option<Vec<u8>>, SourceError> {
        match self.store.get(DIFFERENTIAL).await? {
            Some(body) => Ok(Some(body)),
            None => {
                self.check_exists().await?;
                Ok(None)
            }
        }
    }

    /// Reads `<prefix>differential` unless it is still the version `known`
    /// (one cheap request, no body); `None` while it does not exist yet.
    pub async fn differential_if_changed(
        &self,
        known: Option<&ObjectVersion>,
    ) -> Result<Option<IfChanged>, SourceError> {
        match self.store.get_if_changed(DIFFERENTIAL, known).await? {
            Some(answer) => Ok(Some(answer)),
            None => {
                self.check_exists().await?;
                Ok(None)
            }
        }
    }

    /// A missing object does not say whether the bucket (or directory)
    /// exists: not every server says `NoSuchBucket` on an object GET (s3s
    /// says `NoSuchKey`, GCS a bare 404). A listing does, and needs only
    /// list permission.
    async fn check_exists(&self) -> Result<(), SourceError> {
        self.store.list(DIFFERENTIAL, None, 1).await.map(|_| ())
    }

    /// Lists every snapshot range (all pages), in name order.
    pub async fn list_snapshots(&self) -> Result<Vec<Listed<SnapshotName>>, SourceError> {
        self.list_folder(SNAPSHOTS, None, usize::MAX, true).await
    }

    /// Lists up to `limit` log objects whose names sort after `start_after`
    /// (from the first when `None`), in name order.
    pub async fn list_logs(
        &self,
        start_after: Option<&LogName>,
        limit: usize,
    ) -> Result<Vec<Listed<LogName>>, SourceError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.list_folder(LOGS, start_after.map(log_key), limit, false)
            .await
    }

    /// Fetches one snapshot range's bytes; a listed range that is missing is
    /// retried.
    pub async fn get_snapshot(&self, name: &SnapshotName) -> Result<Vec<u8>, SourceError> {
        self.store.get_listed(&snapshot_key(name)).await
    }

    /// Fetches one log object's bytes; a listed object that is missing is
    /// retried.
    pub async fn get_log(&self, name: &LogName) -> Result<Vec<u8>, SourceError> {
        self.store.get_listed(&log_key(name)).await
    }

    /// [`Backup::get_snapshot`], to a temporary file instead of memory
    /// when `to_file` (a range too large to hold).
    pub async fn fetch_snapshot(
        &self,
        name: &SnapshotName,
        to_file: bool,
    ) -> Result<Body, SourceError> {
        self.get_listed(&snapshot_key(name), to_file).await
    }

    /// [`Backup::get_log`], to a temporary file when `to_file`.
    pub async fn fetch_log(&self, name: &LogName, to_file: bool) -> Result<Body, SourceError> {
        self.get_listed(&log_key(name), to_file).await
    }

    async fn get_listed(&self, key: &str, to_file: bool) -> Result<Body, SourceError> {
        if to_file {
            self.store.get_listed_to_file(key).await
        } else {
            self.store.get_listed(key).await.map(Body::Bytes)
        }
    }

    /// Lists `folder` after `start_after`, page after page, until `limit`
    /// names are collected or the listing ends. With `whole`, a store that
    /// says more follow but lists nothing is an error (the rest would be
    /// silently dropped); without, the caller lists again later.
    async fn list_folder<N>(
        &self,
        folder: &str,
        start_after: Option<String>,
        limit: usize,
        whole: bool,
    ) -> Result<Vec<Listed<N>>, SourceError>
    where
        N: std::str::FromStr<Err = FormatError>,
    {
        let mut out = Vec::new();
        let mut cursor = start_after;
        loop {
            let want = limit.saturating_sub(out.len()).min(PAGE);
            let page = self.store.list(folder, cursor.as_deref(), want).await?;
            let last = page.objects.last().map(|o| o.key.clone());
            for obj in page.objects {
                // start-after is exclusive; a store that disagrees must not
                // make us apply an object twice.
                if cursor.as_ref().is_some_and(|c| obj.key <= *c) {
                    continue;
                }
                // The folder itself, as the consoles' "create folder" leaves
                // it, is no backup object.
                if obj.key == folder {
                    continue;
                }
                if out.len() == limit {
                    break;
                }
                out.push(self.listed(folder, obj)?);
            }
            if out.len() >= limit || !page.more {
                return Ok(out);
            }
            match last {
                Some(last) => cursor = Some(last),
                None if whole => {
                    return Err(SourceError::Permanent {
                        what: self.store.naming().describe(folder),
                        detail: "the store said the listing is truncated but listed nothing \
                                 to continue after"
                            .into(),
                    })
                }
                None => return Ok(out),
            }
        }
    }

    /// A listed object as the sync loop needs it.
    fn listed<N>(&self, folder: &str, obj: ObjectMeta) -> Result<Listed<N>, SourceError>
    where
        N: std::str::FromStr<Err = FormatError>,
    {
        // The parser names the bad stem; the operator needs the whole key.
        let bad = |reason: String| FormatError::BadName {
            name: self.store.naming().key_in_store(&obj.key),
            reason,
        };
        let stem = obj
            .key
            .strip_prefix(folder)
            .unwrap_or(&obj.key)
            .strip_suffix(SUFFIX)
            .ok_or_else(|| bad(format!("backup objects end in {SUFFIX}")))?;
        let name = stem.parse::<N>().map_err(|e| match e {
            FormatError::BadName { reason, .. } => bad(reason),
            other => other,
        })?;
        Ok(Listed {
            name,
            size: obj.size,
            last_modified: obj.last_modified,
        })
    }
}
