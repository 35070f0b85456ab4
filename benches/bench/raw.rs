//! The machine's own limits, measured without kvreplica's engine: how fast
//! the S3 server hands out the backup's objects, and how fast SQLite takes
//! the same rows in one transaction. The sync's rates are reported as a
//! fraction of these.

use std::time::{Duration, Instant};

use futures::StreamExt;
use s3::creds::Credentials;
use s3::{Bucket, Region};

/// Where a backup lies in an S3-compatible server, and who may read it.
#[derive(Clone)]
pub struct S3Place {
    pub endpoint: String,
    pub bucket: String,
    /// Ends with `/`.
    pub prefix: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Place {
    pub fn bucket(&self) -> Box<Bucket> {
        let region = Region::Custom {
            region: "us-east-1".into(),
            endpoint: self.endpoint.clone(),
        };
        let creds = Credentials::new(
            Some(&self.access_key),
            Some(&self.secret_key),
            None,
            None,
            None,
        )
        .expect("static credentials");
        Bucket::new(&self.bucket, region, creds)
            .expect("an S3 client")
            .with_path_style()
    }

    /// Every object under the prefix with its size, in name order.
    pub async fn list(&self) -> Vec<(String, u64)> {
        let pages = self
            .bucket()
            .list(self.prefix.clone(), None)
            .await
            .expect("listing the backup");
        let mut out: Vec<(String, u64)> = pages
            .into_iter()
            .flat_map(|p| p.contents)
            .map(|o| (o.key, o.size))
            .collect();
        out.sort();
        out
    }
}

/// Time of one `ListObjectsV2` of `logs/` starting after its last object
/// (it answers nothing): what every poll round of a caught-up replica asks.
/// Real S3 answers from an index; a server that walks its directory (as
/// s3s-fs does) takes time that grows with the number of objects.
pub async fn s3_list_tail(place: &S3Place) -> Duration {
    let bucket = place.bucket();
    let prefix = format!("{}logs/", place.prefix);
    let last = place
        .list()
        .await
        .into_iter()
        .map(|(k, _)| k)
        .rfind(|k| k.starts_with(&prefix))
        .expect("a log object");
    let t = Instant::now();
    let (page, _) = bucket
        .list_page(prefix, None, None, Some(last), Some(1000))
        .await
        .expect("listing the log");
    assert!(page.contents.is_empty(), "objects after the last one");
    t.elapsed()
}

/// One pass of GETs over every object of a backup.
pub struct GetPass {
    pub objects: usize,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// GETs every object under the prefix, `concurrency` at a time, with the
/// same S3 client library the sync uses (one client, pooled connections),
/// reading every body to the end.
pub async fn s3_get_all(place: &S3Place, concurrency: usize) -> GetPass {
    let objects = place.list().await;
    let bucket = place.bucket();
    let t = Instant::now();
    let bytes: u64 = futures::stream::iter(objects.iter())
        .map(|(key, size)| {
            let bucket = &bucket;
            async move {
                let body = bucket
                    .get_object(key)
                    .await
                    .expect("GET of a listed object");
                assert_eq!(body.as_slice().len() as u64, *size, "{key}: size");
                *size
            }
        })
        .buffer_unordered(concurrency.max(1))
        .fold(0u64, |a, b| async move { a + b })
        .await;
    GetPass {
        objects: objects.len(),
        bytes,
        elapsed: t.elapsed(),
    }
}

/// One row as the sync writes it: a put, or a delete (`value` absent).
pub struct Row {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub encoding: i64,
    pub version: i64,
}

/// Writes `rows` in order (a put as an upsert, a clear as a delete) into a
/// fresh table laid out like the replica's `kv` (same columns, same index),
/// in one transaction with prepared statements: the fastest way SQLite
/// takes these rows, with none of the sync's bookkeeping (undo records,
/// points, cursor). Returns the time of the writes and the commit.
pub fn sqlite_bulk_insert(rows: &[Row], dir: &std::path::Path) -> Duration {
    let path = dir.join("raw-insert.sqlite");
    let cleanup = || {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("raw-insert.sqlite{suffix}")));
        }
    };
    cleanup();
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.pragma_update(None, "synchronous", "normal").unwrap();
    conn.execute_batch(
        "create table kv (
           k blob primary key, v blob not null, v_encoding integer not null,
           version integer not null, seq integer not null default 0,
           expiration_ms integer not null default -1
         ) without rowid;
         create index kv_expiration_ms_idx on kv (expiration_ms);",
    )
    .unwrap();
    let t = Instant::now();
    let tx = conn.transaction().unwrap();
    {
        let mut put = tx
            .prepare(
                "insert or replace into kv (k, v, v_encoding, version, seq, expiration_ms)
                 values (?1, ?2, ?3, ?4, 0, -1)",
            )
            .unwrap();
        let mut delete = tx.prepare("delete from kv where k = ?1").unwrap();
        for r in rows {
            match &r.value {
                Some(v) => put
                    .execute(rusqlite::params![r.key, v, r.encoding, r.version])
                    .unwrap(),
                None => delete.execute([&r.key]).unwrap(),
            };
        }
    }
    tx.commit().unwrap();
    let elapsed = t.elapsed();
    drop(conn);
    cleanup();
    elapsed
}
