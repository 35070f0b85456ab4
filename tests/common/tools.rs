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

/// Whether process `pid` holds the listening TCP socket on 127.0.0.1:`port`.
///
/// A test server is started on a port found free a moment before, so two
/// servers started at once can be told the same port: the loser fails to
/// bind, but a readiness probe sent to that port is answered by the
/// winner. Reading the kernel's socket table (`/proc/net/tcp`) and the
/// process's descriptors tells the two apart. Linux only, as are the tests.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    // Rows: sl local_address rem_address st ... inode; 0100007F is
    // 127.0.0.1 in the kernel's byte order, 0A is LISTEN.
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            (cols.len() > 9 && cols[1] == local && cols[3] == "0A").then(|| cols[9].to_string())
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let holds = |pid: u32| {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .map(|target| {
                    let target = target.to_string_lossy();
                    inodes.iter().any(|i| target == format!("socket:[{i}]"))
                })
                .unwrap_or(false)
        })
    };
    // The process or one of its descendants (a wrapper script may sit in
    // between).
    let mut pending = vec![pid];
    let mut seen = 0;
    while let Some(p) = pending.pop() {
        if holds(p) {
            return true;
        }
        seen += 1;
        if seen > 64 {
            break;
        }
        pending.extend(children(p));
    }
    false
}

/// Direct children of `pid`, from `/proc/<pid>/task/*/children`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}
