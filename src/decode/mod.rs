//! Decoding what the replica stores into something people can read: keys
//! (Deno KV's tuple encoding) to a JSON array of typed parts and back, and
//! values (V8-serialized, KvU64, bytes) to JSON, with a documented tagged
//! form for what plain JSON cannot say (README, "Export the data").
//!
//! Everything that shows data (`kvreplica export`, and later diffs,
//! browsing and prefix filters) goes through this one module, so a key or
//! a value reads the same everywhere; `EntryRef` renders a whole entry.

mod entry;
mod key;
mod value;

pub use entry::{key_json, EntryRef, CSV_HEADER};
pub use key::{key_from_json, key_to_json, parse_key, parse_keys, KeyError};
pub use value::{decode_value, ValueEncoding};
