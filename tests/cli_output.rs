//! What the commands print: piped into a reader that has already gone away
//! (`kvreplica pitr info | head -1`) they exit quietly, with status 0 and
//! no panic, and a checkout still happens; `pitr list` marks the points
//! that share a time.

mod common;

use std::process::{Command, Stdio};

use common::{kvreplica_bin, run_ok, Sample};

/// Runs `kvreplica <args>` with stdout a pipe whose reading end is closed
/// before the command starts, so that its first write fails with EPIPE
/// (what `| head -1` does to a longer output, without the race).
fn run_into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(kvreplica_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .env("KVREPLICA_ACCESS_TOKEN", "access-token-for-pipe-tests")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The sample backup in a scratch directory, synced into `r.sqlite` there;
/// the source URL.
fn synced() -> (Sample, tempfile::TempDir, String) {
    let sample = Sample::load("sample-1");
    let tmp = tempfile::tempdir().unwrap();
    let source = sample.install_initial(&tmp.path().join("bucket"));
    let db = tmp.path().join("r.sqlite");
    run_ok(&["sync", "--source", &source, "--db", db.to_str().unwrap()]);
    (sample, tmp, source)
}

#[test]
fn printing_commands_exit_quietly_when_the_reader_is_gone() {
    let (sample, tmp, source) = synced();
    let db = tmp.path().join("r.sqlite");
    let db = db.to_str().unwrap();
    let point = sample.json0.points()[1].0.clone();
    for args in [
        vec!["pitr", "--db", db, "info"],
        vec!["pitr", "--db", db, "list"],
        vec!["pitr", "--db", db, "checkout", &point],
        vec!["check-config", "--source", &source, "--db", db],
    ] {
        let (status, stderr) = run_into_closed_pipe(&args);
        assert_eq!(status.code(), Some(0), "kvreplica {args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "kvreplica {args:?}: {stderr}"
        );
    }
    // The checkout was made even though its line could not be printed.
    let info = run_ok(&["pitr", "--db", db, "info"]);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains(&format!("current versionstamp: {point}")),
        "{info}"
    );
}

#[test]
fn pitr_list_marks_points_that_share_a_time() {
    let (sample, tmp, _) = synced();
    let db = tmp.path().join("r.sqlite");
    let db = db.to_str().unwrap();
    let points = sample.json0.points();
    let out = run_ok(&["pitr", "--db", db, "list"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut want = String::new();
    for (vs, time) in points.iter().rev() {
        let n = points.iter().filter(|p| &p.1 == time).count();
        want += &match n {
            1 => format!("{vs}\t{time}\n"),
            n => format!("{vs}\t{time}\t{n} points at this time\n"),
        };
    }
    assert_eq!(text, want);
    assert!(text.contains("points at this time"), "{text}");
}

#[test]
fn a_failed_sync_reports_its_error_and_no_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");
    let source = format!("file://{}/no-such-bucket/", tmp.path().display());
    let out = common::run(&["sync", "--source", &source, "--db", db.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("error:"), "{stderr}");
    assert!(!stderr.contains("sync finished"), "{stderr}");
}

/// On a terminal the progress line is cleared before the next log line:
/// the line that says the sync finished holds nothing of the spinner.
#[test]
fn on_a_terminal_the_progress_line_is_cleared_before_the_summary() {
    let sample = Sample::load("sample-1");
    let tmp = tempfile::tempdir().unwrap();
    let source = sample.install_initial(&tmp.path().join("bucket"));
    let db = tmp.path().join("r.sqlite");
    let cmd = format!(
        "{} sync --source {source} --db {}",
        kvreplica_bin(),
        db.display()
    );
    // util-linux script(1) gives the command a pseudo-terminal.
    let out = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env_remove("RUST_LOG")
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text
        .split('\n')
        .find(|l| l.contains("sync finished"))
        .unwrap_or_else(|| panic!("no summary in {text:?}"));
    // What the terminal shows of that line: the text after the last
    // carriage return, after an erase-line sequence.
    let before = &line[..line.find("sync finished").unwrap()];
    let shown = before.rsplit('\r').next().unwrap().replace("\x1b[2K", "");
    assert!(!shown.contains("snapshot ranges"), "{line:?}");
    // And the bar is gone by then: no erase of its line comes later (it
    // would wipe whatever line the terminal shows last).
    let after = &text[text.find("sync finished").unwrap()..];
    assert!(
        !after.contains("\x1b[2K"),
        "the progress line is cleared only after the summary: {after:?}"
    );
}
