//! A backup copied to a local directory, laid out exactly like the bucket:
//! `<root>/differential`, `<root>/snapshots/*.bin`, `<root>/logs/*.bin`.
//!
//! Used by the README demo, by tests, and by operators who mirrored a bucket
//! with their own tools.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{name_from_key, Listed, Source, SourceError};
use crate::format::{LogName, SnapshotName};

/// Reads a backup from a directory.
#[derive(Debug)]
pub struct DirSource {
    /// The directory that plays the role of `<bucket>/<prefix>`.
    root: PathBuf,
}

impl DirSource {
    pub fn new(root: PathBuf) -> Self {
        DirSource { root }
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

    /// Lists `<root>/<folder>` sorted by name, like an object store would.
    async fn list<N: std::str::FromStr<Err = crate::format::FormatError> + Ord>(
        &self,
        folder: &str,
    ) -> Result<Vec<(String, Listed<N>)>, SourceError> {
        let dir = self.root.join(folder);
        let mut rd = match tokio::fs::read_dir(&dir).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if tokio::fs::metadata(&self.root).await.is_err() {
                    return Err(SourceError::NoSuchDirectory(
                        self.root.display().to_string(),
                    ));
                }
                return Ok(Vec::new());
            }
            Err(e) => return Err(self.err(&dir, e)),
        };
        let mut out = Vec::new();
        while let Some(ent) = rd.next_entry().await.map_err(|e| self.err(&dir, e))? {
            let file_name = ent.file_name().to_string_lossy().into_owned();
            let meta = ent.metadata().await.map_err(|e| self.err(&ent.path(), e))?;
            if !meta.is_file() {
                continue;
            }
            let name: N = name_from_key(&format!("{folder}/{file_name}"), &format!("{folder}/"))?;
            let last_modified: DateTime<Utc> = meta
                .modified()
                .map(DateTime::<Utc>::from)
                .unwrap_or_else(|_| Utc::now());
            out.push((
                file_name,
                Listed {
                    name,
                    size: meta.len(),
                    last_modified,
                },
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn read(&self, rel: &str) -> Result<Vec<u8>, SourceError> {
        let path = self.root.join(rel);
        tokio::fs::read(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SourceError::ListedButMissing(path.display().to_string())
            } else {
                self.err(&path, e)
            }
        })
    }
}

#[async_trait]
impl Source for DirSource {
    fn identity(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn read_differential(&self) -> Result<Option<Vec<u8>>, SourceError> {
        let path = self.root.join("differential");
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if tokio::fs::metadata(&self.root).await.is_err() {
                    return Err(SourceError::NoSuchDirectory(
                        self.root.display().to_string(),
                    ));
                }
                Ok(None)
            }
            Err(e) => Err(self.err(&path, e)),
        }
    }

    async fn list_snapshots(&self) -> Result<Vec<Listed<SnapshotName>>, SourceError> {
        Ok(self
            .list::<SnapshotName>("snapshots")
            .await?
            .into_iter()
            .map(|(_, l)| l)
            .collect())
    }

    async fn list_logs(
        &self,
        start_after: Option<&LogName>,
        limit: usize,
    ) -> Result<Vec<Listed<LogName>>, SourceError> {
        let after = start_after.map(|n| format!("{n}.bin"));
        Ok(self
            .list::<LogName>("logs")
            .await?
            .into_iter()
            .filter(|(file, _)| after.as_ref().is_none_or(|a| file > a))
            .take(limit)
            .map(|(_, l)| l)
            .collect())
    }

    async fn get_snapshot(&self, name: &SnapshotName) -> Result<Vec<u8>, SourceError> {
        self.read(&format!("snapshots/{name}.bin")).await
    }

    async fn get_log(&self, name: &LogName) -> Result<Vec<u8>, SourceError> {
        self.read(&format!("logs/{name}.bin")).await
    }
}
