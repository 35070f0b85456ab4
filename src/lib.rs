//! kvreplica keeps a live, read-only replica of a Deno KV database from the
//! backups Deno Deploy writes to a bucket.
//!
//! # Layout
//! One module per concept; data flows one way, from the bucket to the
//! clients: `source` → `backup` → `format` → `sync` → `store` →
//! `server`/`admin`. This list is the project's map (README.md points here);
//! modules marked *(internal)* are private to the crate.
//!
//! Reading the bucket:
//! - [`source`]: the object-store seam: one small `ObjectStore` trait (list
//!   with start-after, get, get to a file, get-if-changed) with one implementation per
//!   backend (directory, S3, GCS), their error classification, the retry
//!   wrapper, the source URL and the one factory (`source::open`).
//! - [`backup`]: the bucket layout, alone: `differential`, `snapshots/`,
//!   `logs/`, `.bin`, and which keys are which objects.
//! - [`format`](mod@format): object names, versionstamps and the protobuf
//!   payloads, decoded entry by entry from memory or a file (`format::wire`
//!   walks a message one field at a time).
//!
//! Keeping the replica:
//! - [`sync`]: the engine: initial snapshot, poll rounds, applying logs,
//!   retention, its retry policy.
//! - [`store`]: the SQLite replica file: the visible `kv` table in the Deno
//!   CLI's layout, redo/undo history, recoverable points, sync cursor and
//!   source binding, the log objects consumed (to fold in a late one),
//!   and the state at any point read without moving it (`store::view`), the
//!   history's commits per interval and around a moment (`store::timeline`).
//! - `rebuild` *(internal)*: after a re-export, a replica of the new
//!   export built beside the file while the old one is served, then
//!   copied in in one transaction (`sync.on_reexport = "rebuild"`).
//! - [`checkout`]: point-in-time checkout of a replica the engine runs on
//!   (move the visible state, wake watchers, count it).
//! - `clock` *(internal)*: times from the bucket (`LastModified`, commit
//!   times) checked against the local clock: one far ahead is reported and
//!   never used to settle or prune.
//! - `health` *(internal)*: the engine's liveness (last good round, last
//!   error, last sign of life) read by readiness, and whether the store is
//!   held with no progress, read by the watchdog.
//! - `progress` *(internal)*: sync progress counters and their reporting
//!   (a bar on a terminal, log lines otherwise).
//! - [`metrics`]: the Prometheus registry, one function per event.
//!
//! Reading it back:
//! - [`decode`]: what the replica stores, readable: tuple-encoded keys to
//!   JSON parts and back, V8-serialized/KvU64/bytes values to JSON with a
//!   tagged form for what JSON cannot say (used by `kvreplica export`).
//! - [`inspect`]: what changed between two points and the entries of one
//!   state, decoded and paged, read without moving the replica (`pitr
//!   diff`, `get`, `GET /pitr/diff`, `GET /kv`).
//! - [`export`]: the state at a point, decoded, streamed one entry per
//!   line in one read transaction: `kvreplica export` and the admin API's
//!   `GET /export` (`export::http`).
//! - [`restore`]: the state at a point put back into the primary over KV
//!   Connect: a KV Connect client (`restore::client`), the plan (set,
//!   delete, leave per key) and its guarded, batched apply (`kvreplica
//!   restore`, `POST /restore`).
//!
//! Serving it:
//! - [`server`]: the read-only KV Connect server (`Deno.openKv(url)`): the
//!   accept loop and its limits (both listeners), TLS with certificate
//!   rotation (`server::tls`), reads, watch.
//! - [`admin`]: the HTTP admin API (point-in-time recovery, health, metrics,
//!   `/status`).
//! - `timeline` *(internal)*: the history at a glance over the admin API:
//!   commits per interval (`GET /pitr/timeline`) and the commits around a
//!   moment with their mutation counts (`GET /pitr/commits`), read from
//!   `store::timeline`.
//! - [`console`]: the operator console, a web page on the admin listener
//!   (timeline, diffs, browse, checkout, restore plan) compiled into the
//!   binary; its data comes from the admin API behind the token.
//! - [`auth`]: bearer tokens shared by both listeners.
//!
//! Running it:
//! - `config` *(internal)*: every setting declared once in one table, and
//!   what is derived from it: flags, environment, file, precedence with
//!   origins, `check-config`, the reload's restart list, README's table.
//! - `reload` *(internal)*: hot reload of tokens, poll interval, log
//!   level and TLS certificates on a changed file or SIGHUP.
//! - `notify` *(internal)*: systemd readiness, status and watchdog.
//! - `logging` *(internal)*: structured logs (plain or JSON) with a
//!   changeable level.
//! - `exit` *(internal)*: exit codes that tell a supervisor (systemd's
//!   `RestartPreventExitStatus=`) whether a restart can help.
//! - [`cli`]: the `kvreplica` command line: parses and wires, nothing more.

pub mod admin;
pub mod auth;
pub mod backup;
pub mod checkout;
pub mod cli;
mod clock;
mod config;
pub mod console;
pub mod decode;
mod exit;
pub mod export;
pub mod format;
mod health;
pub mod inspect;
mod logging;
pub mod metrics;
mod notify;
mod progress;
mod rebuild;
mod reload;
pub mod restore;
pub mod server;
pub mod source;
pub mod store;
pub mod sync;
mod timeline;

#[cfg(test)]
mod tests {
    /// The `# Layout` map above names every module of the crate, so that a
    /// new module cannot be added without saying what it owns.
    #[test]
    fn the_layout_names_every_module() {
        let text = include_str!("lib.rs");
        let (docs, code) = text.split_once("\npub mod ").expect("module list");
        let layout = docs.split_once("# Layout").expect("a # Layout section").1;
        let code = format!("pub mod {code}");
        let modules: Vec<&str> = code
            .lines()
            .take_while(|l| !l.starts_with("#[cfg(test)]"))
            .filter_map(|l| l.trim_start_matches("pub ").strip_prefix("mod "))
            .filter_map(|l| l.strip_suffix(';'))
            .collect();
        assert!(modules.len() >= 17, "modules found: {modules:?}");
        for m in modules {
            assert!(
                layout.contains(&format!("[`{m}`]"))
                    || layout.contains(&format!("`{m}` *(internal)*")),
                "src/lib.rs's # Layout does not name module `{m}`"
            );
        }
    }
}
