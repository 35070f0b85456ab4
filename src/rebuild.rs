//! Rebuilding a replica after its backup was re-exported under the same
//! prefix (`sync.on_reexport = "rebuild"`).
//!
//! The new export shares nothing with the old one: its logs do not continue
//! the replica's history. So a second replica is built from it, from
//! nothing, in `<db>.rebuild` beside the file (same directory, so the same
//! file system), by an engine of its own, while the old state keeps being
//! served. Once that replica has caught up with the bucket, its content is
//! copied into the live file in one write transaction (see
//! `store::swap`): readers see the old state or the new one, never a mix
//! and never an error; watchers are woken once.
//!
//! Crash safety: during a rebuild the live file is written only by that
//! one transaction, so a kill at any moment leaves a servable file (the old
//! export before the commit, the new one after). `<db>.rebuild` is resumed by the next
//! rebuild (its initial load is resumable, and one from an export that has
//! been replaced since is emptied and started again); one left after a
//! swap committed is deleted by the next start.
//!
//! What the swap replaces: everything in the file. The visible state, the
//! sync cursor and the binding become the new export's; the recoverable
//! history (PITR points) starts again at the new export's initial point,
//! because the old points are states of another export that its logs
//! cannot reach; a pinned (checked-out) replica is unpinned, for the same
//! reason, and follows the new export (a warning names the point it was
//! pinned at).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::store::{Store, StoreError};
use crate::sync::{OnReexport, SyncError, Syncer};

/// `<db>.rebuild`: where the replica of a new export is built.
pub(crate) fn path_beside(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".rebuild");
    PathBuf::from(p)
}

/// Deletes the replica at `path` with its companion files, if any.
fn remove_replica(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal", ".lock"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %Path::new(&p).display(), error = %e, "cannot delete"),
        }
    }
}

/// Deletes a `<db>.rebuild` that a run left after its swap committed (a
/// kill between the swap and the clean-up): the live file already holds
/// that export. One whose swap did not happen is kept for the next rebuild
/// to resume, unless `db` holds the same export already.
pub(crate) fn discard_leftover(db: &Path, live: &Store) {
    let path = path_beside(db);
    if !path.exists() {
        return;
    }
    let Ok(conn) = crate::store::open_read_only(&path) else {
        return;
    };
    let rebuilt = crate::store::read_state(&conn).ok();
    drop(conn);
    if rebuilt.is_some_and(|r| r.dv.is_some() && r.dv == live.state().dv) {
        tracing::info!(file = %path.display(), "deleting a rebuilt replica already swapped in");
        remove_replica(&path);
    }
}

/// Builds a replica of the bucket's current export beside `live`'s file
/// and swaps it in, retrying what a retry may mend. Returns once swapped;
/// errors only when no retry can help (refused credentials, a bucket that
/// no longer exists). Cancel-safe: dropped at any await, it leaves
/// `<db>.rebuild` to be resumed.
pub(crate) async fn rebuild(live: &Syncer) -> Result<(), SyncError> {
    let db = live
        .locked(|s| s.path().to_path_buf())
        .await
        .map_err(SyncError::Task)?;
    let path = path_beside(&db);
    let mut failures = 0u32;
    loop {
        match build(live, &path).await {
            Ok(rebuilt) => return swap(live, &path, rebuilt).await,
            Err(e) => {
                let start_over = matches!(
                    e,
                    SyncError::Reexported { .. }
                        | SyncError::Store(
                            StoreError::BoundToOtherSource { .. }
                                | StoreError::FilterMismatch { .. }
                                | StoreError::NotAReplica { .. }
                                | StoreError::SchemaTooNew { .. }
                                | StoreError::Corrupt(_)
                        )
                );
                if e.is_permanent() && !start_over && !matches!(e, SyncError::EmptySource(_)) {
                    live.health().set_rebuilding(None);
                    return Err(e);
                }
                if start_over {
                    // Built from an export that is gone too, with another
                    // prefix filter, or not ours: start again from nothing.
                    remove_replica(&path);
                }
                failures += 1;
                let pause = live.retry_pause(failures);
                tracing::error!(error = %e, kind = e.kind(), retry_in = ?pause, "rebuild failed; retrying");
                live.health()
                    .set_rebuilding(Some(format!("failed, retrying in {pause:?}: {e}")));
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Brings `<db>.rebuild` to the newest point of the bucket's export.
async fn build(live: &Syncer, path: &Path) -> Result<Store, SyncError> {
    let open = path.to_path_buf();
    let store = tokio::task::spawn_blocking(move || Store::open(&open))
        .await
        .map_err(|e| SyncError::Task(e.to_string()))??;
    let opts = crate::sync::SyncOptions {
        on_reexport: OnReexport::Rebuild,
        ..live.options().clone()
    };
    let rebuilt = Syncer::new(live.source().clone(), store, opts)?;
    // The new engine reset the process's gauges: they describe the file
    // served, which is still the old one.
    crate::metrics::opened(&live.state());
    tracing::info!(file = %path.display(), "building a replica of the new export");
    let report = async {
        loop {
            live.health()
                .set_rebuilding(Some(describe(path, &rebuilt.state())));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let work = async {
        rebuilt.initial().await?;
        rebuilt.catch_up().await
    };
    tokio::select! {
        r = work => r?,
        _ = report => unreachable!("the report loop never ends"),
    }
    live.health()
        .set_rebuilding(Some(describe(path, &rebuilt.state())));
    rebuilt
        .into_store()
        .ok_or_else(|| SyncError::Task("the rebuilt store is still in use".into()))
}

/// The progress of a rebuild, for `/readyz`.
fn describe(path: &Path, s: &crate::store::SyncState) -> String {
    let ranges = match s.snapshot_ranges {
        Some((loaded, total)) => format!("{loaded} of {total} snapshot ranges loaded"),
        None => "snapshot ranges not listed yet".into(),
    };
    let log = match (s.visible(), s.cursor) {
        (Some(v), _) => format!("initial load complete, caught up to {v}"),
        (None, Some(c)) => format!("log read up to {c}"),
        (None, None) => "no log read yet".into(),
    };
    format!("{ranges}, {log} (in {})", path.display())
}

/// Copies the caught-up replica `rebuilt` into `live`'s file in one
/// transaction, deletes `path` and follows the new export.
async fn swap(live: &Syncer, path: &Path, rebuilt: Store) -> Result<(), SyncError> {
    let before = live.state();
    let swapped = live
        .locked(move |s| {
            let out = s.replace_with(&rebuilt);
            drop(rebuilt);
            out
        })
        .await
        .map_err(SyncError::Task)?
        .map_err(SyncError::Store)?;
    remove_replica(path);
    live.follow_anew();
    let after = live.state();
    tracing::info!(
        from = %before.visible().map(|v| v.to_string()).unwrap_or_default(),
        to = %after.visible().map(|v| v.to_string()).unwrap_or_default(),
        pages = swapped.pages,
        took_ms = swapped.took.as_millis() as u64,
        wal_bytes = swapped.wal_bytes,
        checkpoint_ms = swapped.checkpoint.as_millis() as u64,
        "switched to the replica of the new export"
    );
    if before.pinned {
        tracing::warn!(
            pinned_at = %before.visible().map(|v| v.to_string()).unwrap_or_default(),
            "the replica was pinned to a point of the old export; it now follows the new \
             export, whose history starts at its initial point"
        );
    }
    Ok(())
}
