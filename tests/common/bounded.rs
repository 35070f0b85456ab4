//! Running the `kvreplica` binary with a bounded wall time: a test that
//! waits on a process that never stops fails instead of hanging CI.
//!
//! Use from any test file with `#[path = "common/bounded.rs"] mod bounded;`
//! — this file depends on no other test module.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` (stdin and stdout closed, stderr captured), killing it and
/// failing the test after `limit` with the tail of its stderr. Returns its
/// exit status and stderr.
pub fn run(cmd: &mut Command, limit: Duration) -> (ExitStatus, Vec<u8>) {
    run_watching(cmd, limit, |_| {})
}

/// [`run`], calling `watch` with the process id every 20 ms while it runs
/// (and once more just before it is found to have exited).
pub fn run_watching(
    cmd: &mut Command,
    limit: Duration,
    mut watch: impl FnMut(u32),
) -> (ExitStatus, Vec<u8>) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kvreplica");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        watch(child.id());
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
            let lines: Vec<&str> = stderr.lines().collect();
            panic!(
                "{cmd:?} did not stop within {limit:?}; stderr tail:\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}
