//! Where `scripts/install-test-tools.sh` installs the test servers and
//! clients: the same default it uses, outside the clone.

use std::path::PathBuf;

/// `$KVREPLICA_TOOLS_DIR`, else `$XDG_CACHE_HOME/kvreplica-tools`, else
/// `~/.cache/kvreplica-tools`.
pub fn dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("KVREPLICA_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    match var("XDG_CACHE_HOME") {
        Some(cache) => PathBuf::from(cache).join("kvreplica-tools"),
        None => PathBuf::from(var("HOME").unwrap_or_default()).join(".cache/kvreplica-tools"),
    }
}
