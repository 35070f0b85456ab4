//! Replacing a replica's whole content in one write transaction, for a
//! rebuild after a re-export (see `crate::rebuild`) and for restarting an
//! initial load from scratch.
//!
//! The content is copied with SQLite's online backup API *into* the live
//! file rather than renaming a new file over it: the file keeps its path,
//! inode, lock and `-wal`/`-shm`, and the copy of every page is one write
//! transaction of the WAL. A reader (the server's pool holds connections
//! open for the life of the process) sees the old state or the new one,
//! never a mix and never an error: its read transaction keeps the snapshot
//! it started with, and the next one finds the new schema cookie and
//! re-reads the schema. Renaming a new file over a WAL database would
//! leave open connections on the old inode and pair the new file with the
//! old `-wal`. A crash before the commit leaves the old state, after it the
//! new one.
//!
//! The cost is one copy of every page through the WAL: the WAL grows to
//! about the size of the new replica until the checkpoint that runs right
//! after the copy (see [`Store::replace_with`]) truncates it. Measured on a
//! 102k-key replica (13–14 MB, release build, ext4): the copy took 44–90
//! ms, the WAL grew to 13.3–14.0 MB, the checkpoint took 48–89 ms, during
//! which reads went on.

use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::Connection;

use super::{read_state, schema, Store, StoreError};

/// What a swap cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Swapped {
    /// Pages copied into the file.
    pub pages: u64,
    /// Time of the copy transaction.
    pub took: Duration,
    /// Size of the `-wal` right after the copy committed, before the
    /// checkpoint.
    pub wal_bytes: u64,
    /// Time of the checkpoint that follows (the store is still held).
    pub checkpoint: Duration,
}

/// Pages copied per backup step (16 MiB of 4 KiB pages).
const PAGES_PER_STEP: std::os::raw::c_int = 4096;

/// Longest wait for readers of the old state before the WAL is truncated.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(1);

/// A busy destination (another writer: never the engine's own readers)
/// is retried this many times, 100 ms apart.
const BUSY_RETRIES: u32 = 100;

impl Store {
    /// Replaces everything in this file (visible state, history, cursor,
    /// binding) with the content of `from`, in one write transaction, then
    /// checkpoints the WAL.
    pub(crate) fn replace_with(&mut self, from: &Store) -> Result<Swapped, StoreError> {
        self.copy_from(&from.conn)
    }

    /// Empties the file down to kvreplica's schema (nothing loaded, no
    /// binding; the prefix filter stays), in one write transaction: an
    /// initial load that found the backup re-exported starts again from
    /// nothing, and a crash leaves either the old partial load or the
    /// empty file, both resumable.
    pub(crate) fn reset(&mut self) -> Result<(), StoreError> {
        let mut empty = Connection::open_in_memory()?;
        schema::migrate(&mut empty)?;
        if !self.state.filter.is_empty() {
            let filter = self.state.filter.to_meta();
            super::set_meta(&empty, super::filter::META_KEY, &filter)?;
        }
        self.copy_from(&empty).map(|_| ())
    }

    fn copy_from(&mut self, from: &Connection) -> Result<Swapped, StoreError> {
        let started = Instant::now();
        let pages = {
            let backup = Backup::new(from, &mut self.conn)?;
            let mut tries = 0;
            loop {
                // The destination's write transaction stays open from the
                // first step to the last, which commits: stepping in
                // chunks changes nothing for readers and lets the
                // watchdog see progress through a long copy.
                match backup.step(PAGES_PER_STEP)? {
                    StepResult::Done => break,
                    StepResult::More => crate::health::STORE_WORK.progress(),
                    StepResult::Busy | StepResult::Locked if tries < BUSY_RETRIES => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    other => {
                        return Err(StoreError::Write {
                            path: self.path.display().to_string(),
                            reason: format!("copying the rebuilt replica in: {other:?}"),
                        })
                    }
                }
            }
            backup.progress().pagecount as u64
        };
        let took = started.elapsed();
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        // Bring the pages home and give the WAL its space back. It waits
        // for readers still on the old state, at most a second: one that
        // stays longer leaves the WAL as it is, which is harmless (the
        // next automatic checkpoint moves the pages).
        let checkpoint = Instant::now();
        self.conn.busy_timeout(CHECKPOINT_WAIT)?;
        if let Err(e) = self
            .conn
            .query_row("pragma wal_checkpoint(truncate)", [], |_| Ok(()))
        {
            tracing::debug!(error = %e, "checkpoint after the swap did not complete");
        }
        self.conn.busy_timeout(super::BUSY_TIMEOUT)?;
        self.state = read_state(&self.conn)?;
        Ok(Swapped {
            pages,
            took,
            wal_bytes,
            checkpoint: checkpoint.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Versionstamp;

    fn journal_mode(s: &Store) -> String {
        s.conn
            .query_row("pragma journal_mode", [], |r| r.get(0))
            .unwrap()
    }

    /// A reader inside a read transaction keeps the old state through the
    /// swap and sees the new one, whole, in its next transaction; the file
    /// stays in WAL mode; a reset leaves an empty, unbound replica.
    #[test]
    fn a_swap_is_one_transaction_for_readers_and_keeps_the_file_a_wal_replica() {
        let dir = tempfile::tempdir().unwrap();
        let mut live = Store::open(&dir.path().join("live.sqlite")).unwrap();
        live.bind("file:///old/", Versionstamp([1; 10])).unwrap();
        let mut new = Store::open(&dir.path().join("new.sqlite")).unwrap();
        new.bind("file:///old/", Versionstamp([2; 10])).unwrap();
        let reader = super::super::open_read_only(live.path()).unwrap();
        let dv = |c: &Connection| -> Vec<u8> {
            c.query_row("select v from kvr_meta where k = 'dv'", [], |r| r.get(0))
                .unwrap()
        };
        reader.execute_batch("begin").unwrap();
        assert_eq!(dv(&reader), vec![1; 10]);
        let swapped = live.replace_with(&new).unwrap();
        assert!(swapped.pages > 0);
        assert_eq!(
            dv(&reader),
            vec![1; 10],
            "the old state until the reader's transaction ends"
        );
        reader.execute_batch("commit").unwrap();
        assert_eq!(dv(&reader), vec![2; 10], "then the new one");
        assert_eq!(live.state(), new.state());
        assert_eq!(journal_mode(&live), "wal");

        live.reset().unwrap();
        assert_eq!(live.state(), &crate::store::SyncState::default());
        assert_eq!(journal_mode(&live), "wal");
        drop(live);
        let reopened = Store::open(&dir.path().join("live.sqlite")).unwrap();
        assert_eq!(reopened.state(), &crate::store::SyncState::default());
    }
}
