//! kvreplica keeps a live, read-only replica of a Deno KV database from the
//! backups Deno Deploy writes to a bucket.
//!
//! # Layout
//! Data flows one way: source → format → sync → store → server/admin.
//! - [`source`]: where backups are read from (directory, S3), with retries.
//! - [`format`]: object names, versionstamps and the protobuf payloads.
//! - [`store`]: the SQLite replica file: the visible `kv` table in the Deno
//!   CLI's layout, redo/undo history, sync cursor and source binding.
//! - [`sync`]: the engine that loads the initial snapshot and applies logs.
//! - [`server`]: the read-only KV Connect server (`Deno.openKv(url)`).
//! - [`admin`]: the HTTP admin API (point-in-time recovery, health, metrics).
//! - [`auth`]: bearer tokens shared by both listeners.
//! - [`reload`]: hot reload of tokens, poll interval and log level.
//! - [`config`]: settings from the TOML file, environment and flags, with
//!   secrets from `*_file` paths.
//! - [`logging`]: structured logs (plain or JSON) with a changeable level.
//! - [`cli`]: the `kvreplica` command line.
//! - `exit`: exit codes that tell a supervisor whether a restart can help.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
mod exit;
pub mod format;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod progress;
pub mod reload;
pub mod server;
pub mod source;
pub mod store;
pub mod sync;
