//! Prefix filters (`sync.include_prefixes`, `sync.exclude_prefixes`): the
//! replica stores only the keys they keep.
//!
//! A prefix is a Deno KV key; it matches every key whose tuple-encoded
//! bytes start with its encoding: the keys under it, as
//! `kv.list({ prefix })` lists them, and the key itself. Every part's
//! encoding ends itself (a string's with a 0x00 byte), so `["user"]` does
//! not match `["users"]`. A key is kept when it matches an include prefix
//! (or there are none) and no exclude prefix.
//!
//! The filter is applied where data enters the file, once: snapshot
//! ranges, applied log objects (redo and undo included), late objects
//! (and so rebuilds and checkouts, which only move what is stored). A
//! commit that touches only left-out keys still ends in the stored log,
//! as its end marker: a deletion of the empty key, which no Deno KV key
//! is (Deno refuses an empty key), so writing it changes nothing. That
//! keeps every commit a recoverable point with its time (checkouts by
//! time land where they would on the whole database) and the stored log
//! free of half commits (late objects fold in as before).
//!
//! The file records its filter in `kvr_meta.filter` (canonical form: each
//! list sorted, without duplicates or prefixes another one covers) so a
//! later run with other settings is refused before it writes
//! ([`super::StoreError::FilterMismatch`]). No record is no filter: files
//! made before filters existed keep every key.

use crate::format::LogEntry;

/// What a replica keeps: tuple-encoded key prefixes, canonical (see the
/// module docs). The default keeps every key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyFilter {
    include: Vec<Vec<u8>>,
    exclude: Vec<Vec<u8>>,
}

/// The `kvr_meta` key of the filter.
pub(super) const META_KEY: &str = "filter";

/// The key that marks the end of a commit whose last entry the filter
/// left out (see the module docs): empty, which no Deno KV key is. Readers
/// of undo and redo records skip it.
pub const COMMIT_END_MARKER: &[u8] = &[];

impl KeyFilter {
    /// A filter of tuple-encoded prefixes, put in canonical form.
    pub fn new(include: Vec<Vec<u8>>, exclude: Vec<Vec<u8>>) -> KeyFilter {
        KeyFilter {
            include: canonical(include),
            exclude: canonical(exclude),
        }
    }

    /// Keeps every key: no prefix given.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// The include prefixes, canonical.
    pub fn include(&self) -> &[Vec<u8>] {
        &self.include
    }

    /// The exclude prefixes, canonical.
    pub fn exclude(&self) -> &[Vec<u8>] {
        &self.exclude
    }

    /// Whether the replica stores `key` (tuple-encoded).
    pub fn keeps(&self, key: &[u8]) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| key.starts_with(p)))
            && !self.exclude.iter().any(|p| key.starts_with(p))
    }

    /// A log entry as the replica stores it: itself when kept, the commit
    /// end marker when it ends a commit, else nothing.
    pub(super) fn admit(&self, entry: LogEntry) -> Option<LogEntry> {
        if self.keeps(&entry.key) {
            Some(entry)
        } else if entry.stamp.is_commit_end() {
            Some(LogEntry {
                stamp: entry.stamp,
                key: COMMIT_END_MARKER.to_vec(),
                record: None,
            })
        } else {
            None
        }
    }

    /// The filter as JSON for people: `null` without one, else
    /// `{"include": [key…], "exclude": [key…]}` with keys in the JSON form
    /// of [`crate::decode`].
    pub fn to_json(&self) -> serde_json::Value {
        if self.is_empty() {
            return serde_json::Value::Null;
        }
        let keys = |l: &[Vec<u8>]| -> Vec<serde_json::Value> {
            l.iter()
                .map(|k| {
                    crate::decode::key_to_json(k)
                        .unwrap_or_else(|_| serde_json::json!({ "bytes": hex::encode(k) }))
                })
                .collect()
        };
        serde_json::json!({ "include": keys(&self.include), "exclude": keys(&self.exclude) })
    }

    /// The filter in a sentence: its JSON, or "none (every key)".
    pub fn describe(&self) -> String {
        if self.is_empty() {
            "none (every key)".into()
        } else {
            self.to_json().to_string()
        }
    }

    /// The command-line flags that give this filter (`--include-prefix
    /// '["users"]' …`), for the message that refuses another one; empty
    /// without one.
    pub fn as_flags(&self) -> String {
        let flags = |flag: &str, l: &[Vec<u8>]| -> Vec<String> {
            l.iter()
                .map(|k| {
                    let json = crate::decode::key_to_json(k)
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    // Quoted for a POSIX shell, a quote in a key too.
                    format!("{flag} '{}'", json.replace('\'', r"'\''"))
                })
                .collect()
        };
        let mut all = flags("--include-prefix", &self.include);
        all.extend(flags("--exclude-prefix", &self.exclude));
        all.join(" ")
    }

    /// The canonical stored form: `include=<hex>,<hex>;exclude=<hex>`.
    pub(crate) fn to_meta(&self) -> Vec<u8> {
        let list = |l: &[Vec<u8>]| l.iter().map(hex::encode).collect::<Vec<_>>().join(",");
        format!(
            "include={};exclude={}",
            list(&self.include),
            list(&self.exclude)
        )
        .into_bytes()
    }

    /// Reads [`KeyFilter::to_meta`]'s form.
    pub(super) fn from_meta(v: &[u8]) -> Option<KeyFilter> {
        let text = std::str::from_utf8(v).ok()?;
        let (inc, exc) = text.split_once(';')?;
        let list = |s: &str, tag: &str| -> Option<Vec<Vec<u8>>> {
            let s = s.strip_prefix(tag)?;
            s.split(',')
                .filter(|h| !h.is_empty())
                .map(|h| hex::decode(h).ok())
                .collect()
        };
        Some(KeyFilter::new(
            list(inc, "include=")?,
            list(exc, "exclude=")?,
        ))
    }
}

/// Sorted, without duplicates, without a prefix that another one in the
/// list covers (`["a", "b"]` under `["a"]`): one stored form per meaning
/// of a list.
fn canonical(mut l: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    l.sort();
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(l.len());
    for p in l {
        // Sorted: a prefix sorts before everything it covers, so only the
        // last kept one can cover `p`.
        if out.last().is_none_or(|q| !p.starts_with(q)) {
            out.push(p);
        }
    }
    out
}

/// Prefixes as a user writes them in one string (an environment
/// variable, a flag): one JSON key (`["users"]`, see [`crate::decode`]) or
/// a JSON array of keys (`[["users"], ["orders"]]`), tuple-encoded.
pub fn parse_prefixes(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let keys = crate::decode::parse_keys(text).map_err(|e| e.to_string())?;
    keys.into_iter().map(not_empty).collect()
}

/// One prefix given as a JSON value (a TOML array, converted).
pub fn prefix_from_json(key: &serde_json::Value) -> Result<Vec<u8>, String> {
    not_empty(crate::decode::key_from_json(key).map_err(|e| e.to_string())?)
}

/// Refuses the empty key: as a prefix it would match every key.
fn not_empty(key: Vec<u8>) -> Result<Vec<u8>, String> {
    if key.is_empty() {
        return Err(
            "[] is the empty key, which matches every key: leave the setting unset to \
                    keep every key"
                .into(),
        );
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::LogStamp;

    fn k(text: &str) -> Vec<u8> {
        crate::decode::parse_key(text).unwrap()
    }

    #[test]
    fn a_prefix_keeps_its_keys_and_itself_not_a_longer_string() {
        let f = KeyFilter::new(vec![k(r#"["users"]"#)], vec![k(r#"["users", "x"]"#)]);
        assert!(f.keeps(&k(r#"["users"]"#)));
        assert!(f.keeps(&k(r#"["users", 1]"#)));
        assert!(!f.keeps(&k(r#"["users", "x"]"#)));
        assert!(!f.keeps(&k(r#"["users", "x", 2]"#)));
        assert!(f.keeps(&k(r#"["users", "xy"]"#)));
        assert!(!f.keeps(&k(r#"["users2"]"#)));
        assert!(!f.keeps(&k(r#"["user"]"#)));
        assert!(KeyFilter::default().keeps(&k(r#"["any"]"#)));
        let only_out = KeyFilter::new(vec![], vec![k(r#"["tmp"]"#)]);
        assert!(only_out.keeps(&k(r#"["users"]"#)) && !only_out.keeps(&k(r#"["tmp", 1]"#)));
    }

    #[test]
    fn the_stored_form_is_canonical_and_reads_back() {
        let a = KeyFilter::new(
            vec![
                k(r#"["b"]"#),
                k(r#"["a"]"#),
                k(r#"["a", 1]"#),
                k(r#"["b"]"#),
            ],
            vec![],
        );
        let b = KeyFilter::new(vec![k(r#"["a"]"#), k(r#"["b"]"#)], vec![]);
        assert_eq!(a, b);
        assert_eq!(a.to_meta(), b.to_meta());
        assert_eq!(KeyFilter::from_meta(&a.to_meta()), Some(a.clone()));
        let empty = KeyFilter::default();
        assert_eq!(KeyFilter::from_meta(&empty.to_meta()), Some(empty));
        assert_eq!(
            a.as_flags(),
            r#"--include-prefix '["a"]' --include-prefix '["b"]'"#
        );
        let quote = KeyFilter::new(vec![], vec![k(r#"["it's"]"#)]);
        assert_eq!(quote.as_flags(), r#"--exclude-prefix '["it'\''s"]'"#);
    }

    #[test]
    fn a_left_out_commit_end_becomes_the_marker_and_other_entries_go() {
        let f = KeyFilter::new(vec![k(r#"["keep"]"#)], vec![]);
        let mut stamp = [0u8; 12];
        stamp[9] = 1;
        let entry = |end: bool, key: &str| {
            let mut s = stamp;
            if end {
                s[10] = 0xff;
                s[11] = 0xff;
            }
            LogEntry {
                stamp: LogStamp(s),
                key: k(key),
                record: None,
            }
        };
        assert!(f.admit(entry(false, r#"["other"]"#)).is_none());
        let marker = f.admit(entry(true, r#"["other"]"#)).unwrap();
        assert_eq!(marker.key, COMMIT_END_MARKER);
        assert_eq!(
            f.admit(entry(false, r#"["keep", 1]"#)).unwrap().key,
            k(r#"["keep", 1]"#)
        );
    }

    #[test]
    fn the_empty_key_is_no_prefix() {
        let e = parse_prefixes("[]").unwrap_err();
        assert!(e.contains("matches every key"), "{e}");
        let e = parse_prefixes(r#"[["a"], []]"#).unwrap_err();
        assert!(e.contains("matches every key"), "{e}");
        assert!(parse_prefixes(r#"["a", {"bigint": "x"}]"#).is_err());
        assert_eq!(
            parse_prefixes(r#"[["a"], ["b"]]"#).unwrap(),
            vec![k(r#"["a"]"#), k(r#"["b"]"#)]
        );
    }
}
