//! `watch`: a streaming answer that reports changes of up to ten keys.
//!
//! Each stream is one small task. It sleeps on the sync engine's
//! visible-commit channel, which moves when an apply transaction commits or
//! a checkout moves the state, and only then re-reads its keys: an idle
//! replica costs no SQLite reads however many clients watch it. Changes
//! that land while a read is in flight are collapsed into the next frame,
//! which the protocol allows (each frame is one consistent state).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use denokv_proto::datapath::{KvEntry, SnapshotReadStatus, WatchKeyOutput, WatchOutput};
use prost::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::KvConnect;
use crate::metrics::{self, METRICS};

/// Keep-alive period: the reference server's, and well under the idle
/// timeouts of common proxies (60 s and up).
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// Frames buffered per stream before the task waits for the client: a
/// slow reader holds back only its own task.
const FRAME_BUFFER: usize = 4;

/// One frame: a 4-byte little-endian length, then the message.
fn frame(msg: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(4 + msg.len());
    out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    out.extend_from_slice(msg);
    Bytes::from(out)
}

/// Counts an open stream in the `watch_streams` gauge for as long as it
/// lives, however the task ends.
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        METRICS.watch_streams.inc();
        OpenStream
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        METRICS.watch_streams.dec();
    }
}

/// Starts watching `keys`; the returned receiver yields the body's chunks
/// and ends when the server shuts down or a read fails. Dropping it (the
/// client went away) ends the task. `place` (one of the server's watch
/// stream permits) is held until the task ends.
pub(super) fn start(
    kv: Arc<KvConnect>,
    keys: Vec<Vec<u8>>,
    place: OwnedSemaphorePermit,
) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(FRAME_BUFFER);
    tokio::spawn(async move {
        let _place = place;
        let _open = OpenStream::new();
        let mut visible = kv.visible.clone();
        let closing = kv.closing.subscribe();
        let mut closing = std::pin::pin!(async move {
            let mut closing = closing;
            // The guard `wait_for` returns is not `Send`: drop it here.
            let _ = closing.wait_for(|c| *c).await;
        });
        let mut last: Option<Vec<Option<Vec<u8>>>> = None;
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Mark the current commit seen before reading, so a commit that
            // lands during the read wakes the loop again.
            visible.borrow_and_update();
            let now_ms = chrono::Utc::now().timestamp_millis();
            // A watch names a handful of keys: a short read.
            let entries = match kv
                .pool
                .read_here(|c| super::read::read_keys(c, &keys, now_ms))
                .await
            {
                Ok(e) => e,
                Err(e) => {
                    metrics::error("watch_read");
                    tracing::error!(error = %e, "watch: reading the watched keys failed; closing the stream");
                    return;
                }
            };
            let stamps: Vec<Option<Vec<u8>>> = entries
                .iter()
                .map(|e| e.as_ref().map(|e| e.versionstamp.clone()))
                .collect();
            if let Some(msg) = changes(last.as_deref(), &stamps, entries) {
                if tx.send(frame(&msg.encode_to_vec())).await.is_err() {
                    return;
                }
                last = Some(stamps);
            }
            loop {
                tokio::select! {
                    changed = visible.changed() => {
                        if changed.is_err() {
                            return; // the sync engine is gone: shutting down
                        }
                        break;
                    }
                    _ = keepalive.tick() => {
                        if tx.send(frame(&[])).await.is_err() {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                    _ = &mut closing => return,
                }
            }
        }
    });
    rx
}

/// The frame to send after a read, if any: on the first read, and then
/// whenever some key's versionstamp differs from the last frame's. Every
/// frame reports every key as changed, with its current entry (none when
/// absent): the Deno CLI reads `changed = false` as "the key is gone", so
/// marking unchanged keys would make it report deletions that did not
/// happen. Clients skip keys whose versionstamp did not move.
fn changes(
    last: Option<&[Option<Vec<u8>>]>,
    stamps: &[Option<Vec<u8>>],
    entries: Vec<Option<KvEntry>>,
) -> Option<WatchOutput> {
    if last.is_some_and(|prev| prev == stamps) {
        return None;
    }
    Some(WatchOutput {
        status: SnapshotReadStatus::SrSuccess as i32,
        keys: entries
            .into_iter()
            .map(|entry| WatchKeyOutput {
                changed: true,
                entry_if_changed: entry,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(vs: u8) -> KvEntry {
        KvEntry {
            key: vec![1],
            value: vec![vs],
            encoding: 3,
            versionstamp: vec![0, 0, 0, 0, 0, 0, 0, vs, 0, 0],
        }
    }

    #[test]
    fn a_frame_when_anything_moved_reporting_every_key() {
        let e1 = entry(1);
        let first = changes(
            None,
            &[Some(e1.versionstamp.clone()), None],
            vec![Some(e1.clone()), None],
        )
        .expect("first frame");
        assert!(first.keys.iter().all(|k| k.changed));
        assert_eq!(first.keys[0].entry_if_changed.as_ref(), Some(&e1));
        assert_eq!(first.keys[1].entry_if_changed, None);

        let prev = [Some(e1.versionstamp.clone()), None];
        assert!(changes(Some(&prev), &prev, vec![Some(e1.clone()), None]).is_none());

        // One key moved: the unchanged one is still reported, with its
        // entry, never as changed-without-entry (a deletion to the client).
        let e2 = entry(2);
        let next = [Some(e1.versionstamp.clone()), Some(e2.versionstamp.clone())];
        let out = changes(Some(&prev), &next, vec![Some(e1.clone()), Some(e2.clone())]).unwrap();
        assert!(out.keys.iter().all(|k| k.changed));
        assert_eq!(out.keys[0].entry_if_changed.as_ref(), Some(&e1));
        assert_eq!(out.keys[1].entry_if_changed.as_ref(), Some(&e2));

        // A deleted key: reported with no entry.
        let gone = [Some(e1.versionstamp.clone()), None];
        let out = changes(Some(&next), &gone, vec![Some(e1), None]).unwrap();
        assert!(out.keys[1].changed && out.keys[1].entry_if_changed.is_none());
    }

    #[test]
    fn frames_are_length_prefixed_little_endian() {
        assert_eq!(&frame(&[])[..], &[0, 0, 0, 0]);
        assert_eq!(&frame(&[9, 8, 7])[..], &[3, 0, 0, 0, 9, 8, 7]);
    }
}
