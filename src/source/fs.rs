//! A bucket copied to a local directory: keys are paths below the root.
//!
//! Used by the README demo, by tests, and by operators who mirrored a bucket
//! with their own tools. Listing reads one directory level, like the
//! mirrors that tools make of a flat bucket.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    IfChanged, Listing, Naming, ObjectMeta, ObjectStore, ObjectVersion, SourceError, StoreResult,
};

/// Reads objects from a directory.
#[derive(Debug)]
pub struct DirStore {
    /// The directory that plays the role of `<bucket>/<prefix>`.
    root: PathBuf,
    /// `file://<root>`; objects are named by their paths.
    naming: Naming,
}

impl DirStore {
    pub fn new(root: PathBuf) -> Self {
        let path = root.display().to_string();
        let naming = Naming {
            identity: format!("file://{path}"),
            url_base: format!("{}/", path.trim_end_matches('/')),
            key_prefix: String::new(),
        };
        DirStore { root, naming }
    }

    fn err(&self, path: &Path, e: std::io::Error) -> SourceError {
        let what = path.display().to_string();
        match e.kind() {
            std::io::ErrorKind::PermissionDenied => SourceError::AccessDenied {
                what,
                detail: e.to_string(),
            },
            std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut => {
                SourceError::Transient {
                    what,
                    detail: e.to_string(),
                }
            }
            _ => SourceError::Permanent {
                what,
                detail: e.to_string(),
            },
        }
    }

    /// A missing root means no backup at all; anything else missing below
    /// it is just an absent object.
    async fn missing(&self) -> Option<SourceError> {
        tokio::fs::metadata(&self.root)
            .await
            .is_err()
            .then(|| SourceError::NoSuchDirectory(self.root.display().to_string()))
    }

    /// Every file of the directory `prefix` falls in whose key starts with
    /// `prefix`, sorted by key like an object store would.
    async fn list_all(&self, prefix: &str) -> Result<Vec<ObjectMeta>, SourceError> {
        let (folder, start) = match prefix.rfind('/') {
            Some(i) => (&prefix[..=i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        let dir = self.root.join(folder);
        let mut rd = match tokio::fs::read_dir(&dir).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match self.missing().await {
                    Some(e) => Err(e),
                    None => Ok(Vec::new()),
                };
            }
            Err(e) => return Err(self.err(&dir, e)),
        };
        let mut out = Vec::new();
        while let Some(ent) = rd.next_entry().await.map_err(|e| self.err(&dir, e))? {
            let file_name = ent.file_name().to_string_lossy().into_owned();
            if !file_name.starts_with(start) {
                continue;
            }
            let meta = ent.metadata().await.map_err(|e| self.err(&ent.path(), e))?;
            if !meta.is_file() {
                continue;
            }
            let last_modified: DateTime<Utc> = meta
                .modified()
                .map(DateTime::<Utc>::from)
                .unwrap_or_else(|_| Utc::now());
            out.push(ObjectMeta {
                key: format!("{folder}{file_name}"),
                size: meta.len(),
                last_modified,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// A file's version: its modification time and size, what a directory
    /// offers instead of an ETag.
    fn version_of(meta: &std::fs::Metadata) -> ObjectVersion {
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        ObjectVersion(format!("{mtime}:{}", meta.len()))
    }
}

#[async_trait]
impl ObjectStore for DirStore {
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> StoreResult<Listing> {
        let mut rest = self
            .list_all(prefix)
            .await?
            .into_iter()
            .filter(|o| after.is_none_or(|a| o.key.as_str() > a));
        let objects: Vec<ObjectMeta> = rest.by_ref().take(limit.max(1)).collect();
        let more = rest.next().is_some();
        Ok(Listing { objects, more })
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let path = self.root.join(key);
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(&path, e)),
        }
    }

    async fn get_to_file(&self, key: &str, file: &mut tokio::fs::File) -> StoreResult<Option<u64>> {
        let path = self.root.join(key);
        let mut src = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(&path, e)),
        };
        let len = tokio::io::copy(&mut src, file)
            .await
            .map_err(|e| super::spool_error(&path.display().to_string(), e))?;
        Ok(Some(len))
    }

    async fn get_if_changed(
        &self,
        key: &str,
        known: Option<&ObjectVersion>,
    ) -> StoreResult<Option<IfChanged>> {
        let path = self.root.join(key);
        let version = match tokio::fs::metadata(&path).await {
            Ok(meta) => Self::version_of(&meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(&path, e)),
        };
        if known == Some(&version) {
            return Ok(Some(IfChanged::Unchanged));
        }
        Ok(self
            .get(key)
            .await?
            .map(|body| IfChanged::Changed { body, version }))
    }

    fn naming(&self) -> &Naming {
        &self.naming
    }
}
