//! Disk trouble under a running replica, on real filesystems mounted for
//! the test (so they bite even for root, who ignores file modes):
//!
//! - the filesystem holding the replica turns read-only in the middle of
//!   applying logs, the way the kernel does it to a failing disk (ext4 on a
//!   loop device with `errors=remount-ro`, failed on purpose through
//!   `/sys/fs/ext4/<dev>/trigger_fs_error`; a plain `mount -o remount,ro`
//!   is refused while a writer has the file open);
//! - the disk fills up (a tmpfs barely larger than the replica) while
//!   appended logs arrive, and is enlarged later.
//!
//! Each time: the sync reports a clear error naming the file, `serve` keeps
//! answering reads with the last good state, nothing is corrupt once the
//! disk is back, and the sync resumes to the backup's newest state.
//!
//! Mounting needs root (CAP_SYS_ADMIN), loop devices and the ext4 tools.
//! Each case runs twice: on the real filesystem where the system lets the
//! test mount it (else, saying why, simulated), and always simulated, so
//! the simulation never goes untested. It uses the file-size limit
//! (`RLIMIT_FSIZE`, which binds root too) of the kvreplica processes instead,
//! with SIGXFSZ ignored so a write past it fails with EFBIG: a limit of 0 for
//! the read-only disk (every write fails), the database file's size for the
//! full disk (see [`FullDisk::shrink`]), lifted when the disk comes back.
//! Both ways run the same steps and the same assertions; only the reason in
//! the error message differs (EFBIG reaches kvreplica as SQLite's bare
//! "disk I/O error"). Nothing is skipped.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fixture::{assert_rows_eq, expected_rows, Fixture, Rec, Spec};
use common::serve::{http, metadata, Method, ServeProcess, ACCESS_TOKEN};
use common::{copy_replica, integrity_ok_read_only, kvreplica_bin, pitr_list, read_replica};
use denokv_proto::datapath::{ReadRange, SnapshotRead, SnapshotReadOutput};
use prost::Message;

/// Bound on every wait for the replica.
const WAIT: Duration = Duration::from_secs(60);

/// A filesystem mounted for the test; lazily unmounted when dropped, so a
/// failing test never leaves it behind.
struct Mounted {
    dir: PathBuf,
    mounted: bool,
}

impl Mounted {
    /// `mount <args> <dir>`; the error says why when the system refuses.
    fn mount(args: &[&str], dir: &Path) -> Result<Mounted, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(args)
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`mount {} {}` failed ({}): {}",
                args.join(" "),
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mounted {
            dir: dir.to_path_buf(),
            mounted: true,
        })
    }

    /// `mount -o remount,<opts>`.
    fn remount(&self, opts: &str) {
        sh("mount", &["-o", &format!("remount,{opts}"), self.path()]);
    }

    /// Unmounts for real (nothing may hold it open).
    fn unmount(&mut self) {
        sh("umount", &[self.path()]);
        self.mounted = false;
    }

    fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Runs a system command that must succeed; returns its stdout.
fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why a case simulates its disk (asked to, or the first mount step that
/// failed), printed so a run says which path it took.
fn simulating(case: &str, why: &str) {
    println!("{case}: SIMULATED with RLIMIT_FSIZE: {why}");
    eprintln!("{case}: SIMULATED with RLIMIT_FSIZE: {why}");
}

/// Which disk a case asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The real filesystem, simulated only where mounting fails.
    Real,
    Simulated,
}

impl Want {
    /// `Err` with the reason to simulate, for [`Want::Simulated`].
    fn real(self) -> Result<(), String> {
        match self {
            Want::Real => Ok(()),
            Want::Simulated => Err("the simulated run of the case".into()),
        }
    }
}

/// Makes `cmd` ignore SIGXFSZ (so a write past the file-size limit fails
/// with EFBIG instead of killing the process) and, with `limit`, start
/// with that soft file-size limit in bytes.
fn limit_file_size(cmd: &mut Command, limit: Option<u64>) {
    // SAFETY: only async-signal-safe calls (signal, getrlimit, setrlimit)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if let Some(limit) = limit {
                let mut r = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_FSIZE, &mut r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                r.rlim_cur = limit.min(r.rlim_max);
                if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Sets the soft file-size limit of a running process (`None`: as high as
/// its hard limit): the simulated disk fills up, fails or comes back.
fn set_file_size_limit(pid: u32, limit: Option<u64>) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on valid pointers.
    unsafe {
        assert_eq!(
            libc::prlimit(pid as i32, libc::RLIMIT_FSIZE, std::ptr::null(), &mut r),
            0,
            "prlimit: {}",
            std::io::Error::last_os_error()
        );
        r.rlim_cur = limit.map_or(r.rlim_max, |l| l.min(r.rlim_max));
        assert_eq!(
            libc::prlimit(pid as i32, libc::RLIMIT_FSIZE, &r, std::ptr::null_mut()),
            0,
            "prlimit: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The disk of the read-only case: a real ext4 image the kernel turns
/// read-only, or a file-size limit of 0 on the kvreplica processes.
enum RoDisk {
    Ext4 {
        image: PathBuf,
        disk: Mounted,
        /// The device's `trigger_fs_error`, to fail it on purpose.
        fail: PathBuf,
    },
    Simulated {
        dir: PathBuf,
        /// Whether the disk is failing: new processes start with limit 0.
        failed: bool,
    },
}

impl RoDisk {
    const CASE: &'static str = "read-only filesystem";

    /// A real ext4 image when this system lets the test mount one, else the
    /// simulation (saying why).
    fn new(tmp: &Path, want: Want) -> RoDisk {
        match want.real().and_then(|()| Self::ext4(tmp)) {
            Ok(d) => d,
            Err(why) => {
                simulating(Self::CASE, &why);
                RoDisk::Simulated {
                    dir: tmp.join("disk"),
                    failed: false,
                }
            }
        }
    }

    fn ext4(tmp: &Path) -> Result<RoDisk, String> {
        for tool in ["mkfs.ext4", "e2fsck", "findmnt"] {
            if let Err(e) = Command::new(tool).arg("-V").output() {
                return Err(format!("cannot run {tool}: {e}"));
            }
        }
        let image = tmp.join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let o = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .output()
            .map_err(|e| format!("cannot run mkfs.ext4: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "mkfs.ext4 failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let disk = Self::mount(&image, &tmp.join("mnt"))
            .map_err(|e| format!("cannot mount an ext4 image: {e}"))?;
        let fail =
            Self::trigger(&disk).ok_or("this kernel has no /sys/fs/ext4/<dev>/trigger_fs_error")?;
        Ok(RoDisk::Ext4 { image, disk, fail })
    }

    fn mount(image: &Path, mnt: &Path) -> Result<Mounted, String> {
        let image = image.to_str().unwrap();
        Mounted::mount(&["-o", "loop,errors=remount-ro", image], mnt)
    }

    fn trigger(disk: &Mounted) -> Option<PathBuf> {
        let dev = sh("findmnt", &["-n", "-o", "SOURCE", disk.path()]);
        let dev = Path::new(dev.trim()).file_name()?.to_owned();
        let t = Path::new("/sys/fs/ext4").join(dev).join("trigger_fs_error");
        t.exists().then_some(t)
    }

    /// Where the replica lives.
    fn dir(&self) -> PathBuf {
        match self {
            RoDisk::Ext4 { disk, .. } => disk.dir.clone(),
            RoDisk::Simulated { dir, .. } => dir.clone(),
        }
    }

    /// Readies a kvreplica command for this disk (failing already or not).
    fn prepare(&self, cmd: &mut Command) {
        let failed = matches!(self, RoDisk::Simulated { failed: true, .. });
        limit_file_size(cmd, failed.then_some(0));
    }

    /// The disk fails under the running process `pid`: the kernel turns
    /// the filesystem read-only, or every write of the process fails.
    fn fail(&mut self, pid: u32) {
        match self {
            RoDisk::Ext4 { fail, .. } => {
                std::fs::write(fail, "kvreplica test: disk failure\n").unwrap()
            }
            RoDisk::Simulated { failed, .. } => {
                set_file_size_limit(pid, Some(0));
                *failed = true;
            }
        }
    }

    /// The disk comes back (nothing may hold it open): unmount, fsck and
    /// mount again, or lift the limit for the processes to come.
    fn come_back(&mut self) {
        match self {
            RoDisk::Ext4 { image, disk, fail } => {
                disk.unmount();
                let fsck = Command::new("e2fsck")
                    .arg("-fy")
                    .arg(&*image)
                    .output()
                    .unwrap();
                assert!(
                    fsck.status.code().is_some_and(|c| c <= 1),
                    "e2fsck: {}\n{}",
                    fsck.status,
                    String::from_utf8_lossy(&fsck.stdout)
                );
                *disk = Self::mount(image, &disk.dir).unwrap();
                *fail = Self::trigger(disk).expect("the remounted disk has no error trigger");
            }
            RoDisk::Simulated { failed, .. } => *failed = false,
        }
    }

    /// What the error must say is wrong with the disk.
    fn reasons(&self) -> &'static [&'static str] {
        match self {
            RoDisk::Ext4 { .. } => &["Read-only file system", "read-only", "readonly"],
            // EFBIG fails SQLite's write as a bare I/O error, which
            // kvreplica reports as the disk failing a write.
            RoDisk::Simulated { .. } => &["disk I/O error"],
        }
    }
}

/// The disk of the disk-full case: a tmpfs shrunk under the replica, or
/// a file-size limit at the database file's size.
enum FullDisk {
    Tmpfs(Mounted),
    Simulated {
        dir: PathBuf,
        /// The limit new processes start with while the disk is full.
        limit: Option<u64>,
    },
}

impl FullDisk {
    const CASE: &'static str = "disk full";
    const SIZE: &'static str = "size=64m";

    fn new(tmp: &Path, want: Want) -> FullDisk {
        let mnt = tmp.join("mnt");
        let mounted = want.real().and_then(|()| {
            Mounted::mount(&["-t", "tmpfs", "-o", Self::SIZE, "tmpfs"], &mnt)
                .map_err(|e| format!("cannot mount a tmpfs: {e}"))
        });
        match mounted {
            Ok(m) => FullDisk::Tmpfs(m),
            Err(why) => {
                simulating(Self::CASE, &why);
                std::fs::create_dir_all(&mnt).unwrap();
                FullDisk::Simulated {
                    dir: mnt,
                    limit: None,
                }
            }
        }
    }

    fn dir(&self) -> PathBuf {
        match self {
            FullDisk::Tmpfs(m) => m.dir.clone(),
            FullDisk::Simulated { dir, .. } => dir.clone(),
        }
    }

    fn prepare(&self, cmd: &mut Command) {
        match self {
            FullDisk::Tmpfs(_) => limit_file_size(cmd, None),
            FullDisk::Simulated { limit, .. } => limit_file_size(cmd, *limit),
        }
    }

    /// Leaves `headroom` bytes of room beyond what the replica uses now (a
    /// tmpfs) or none (the simulation), for the running process `pid`.
    /// Returns what the replica used and the room it now has.
    fn shrink(&mut self, pid: u32, db: &Path, headroom: u64) -> (u64, u64) {
        match self {
            FullDisk::Tmpfs(disk) => {
                let s = sh("stat", &["-f", "-c", "%b %f %S", disk.path()]);
                let v: Vec<u64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
                let used = (v[0] - v[1]) * v[2];
                disk.remount(&format!("size={}", used + headroom));
                (used, used + headroom)
            }
            FullDisk::Simulated { limit, .. } => {
                // The limit binds each file on its own, so it leaves no
                // headroom: at the database file's size (or the `-shm`
                // file's, 32 KiB, which a reader needs), below the end of
                // the WAL, which holds the initial load. Neither the WAL
                // nor a checkpoint into the database can grow, and the WAL
                // stays across a restart, as on a full disk.
                let used = std::fs::metadata(db).unwrap().len();
                let room = used.max(32 << 10);
                let mut wal = db.as_os_str().to_owned();
                wal.push("-wal");
                let wal = std::fs::metadata(PathBuf::from(wal)).map_or(0, |m| m.len());
                assert!(
                    wal > room,
                    "the simulated full disk needs the WAL ({wal} bytes) to reach past {room}"
                );
                *limit = Some(room);
                set_file_size_limit(pid, *limit);
                (used, room)
            }
        }
    }

    /// More room, for the running process `pid`.
    fn grow(&mut self, pid: u32) {
        match self {
            FullDisk::Tmpfs(disk) => disk.remount(Self::SIZE),
            FullDisk::Simulated { limit, .. } => {
                *limit = None;
                set_file_size_limit(pid, None);
            }
        }
    }

    fn reasons(&self) -> &'static [&'static str] {
        match self {
            FullDisk::Tmpfs(_) => &["database or disk is full", "No space left on device"],
            // A write past the limit fails with EFBIG, which SQLite reports
            // as a bare I/O error and kvreplica as the disk failing a write.
            FullDisk::Simulated { .. } => &["database or disk is full", "disk I/O error"],
        }
    }
}

/// Adds objects to the bucket directory whole, as a store makes an upload
/// visible (a reader never lists a half-written file).
fn put_all(bucket: &Path, objects: &[(String, Vec<u8>)]) {
    for (rel, body) in objects {
        let partial = bucket.join("upload.partial");
        std::fs::write(&partial, body).unwrap();
        std::fs::rename(&partial, bucket.join(rel)).unwrap();
    }
}

/// The commit index of each versionstamp (hex) of the backup.
fn commit_of(fx: &Fixture, vs: &str) -> usize {
    fx.commits
        .iter()
        .position(|c| hex::encode(c.versionstamp) == vs)
        .unwrap_or_else(|| panic!("{vs} is not a commit of the backup"))
}

fn vs_of(fx: &Fixture, i: usize) -> String {
    hex::encode(fx.commits[i].versionstamp)
}

/// `pitr list` as `fx.points` gives them: versionstamps, oldest first.
fn point_stamps(db: &Path) -> Vec<String> {
    pitr_list(db).into_iter().map(|p| p.0).collect()
}

fn want_stamps(fx: &Fixture, upto: usize) -> Vec<String> {
    fx.points(upto).into_iter().map(|p| p.1).collect()
}

/// Every entry a KV Connect client reads (all keys, paged), as
/// key hex → (value, encoding, versionstamp hex).
type Entries = BTreeMap<String, (Vec<u8>, i64, String)>;

fn kv_read_all(kv_url: &str) -> Result<Entries, String> {
    let meta = metadata(kv_url);
    if meta.status != 200 {
        return Err(format!("metadata: {} {}", meta.status, meta.text()));
    }
    let meta: serde_json::Value = serde_json::from_slice(&meta.body).unwrap();
    let db_id = meta["databaseId"].as_str().unwrap().to_string();
    let auth = format!("Bearer {ACCESS_TOKEN}");
    let mut out = Entries::new();
    let mut start = Vec::new();
    loop {
        let body = SnapshotRead {
            ranges: vec![ReadRange {
                start: start.clone(),
                end: vec![0xff],
                limit: 1000,
                reverse: false,
            }],
        }
        .encode_to_vec();
        let r = http(
            Method::Post,
            &format!("{kv_url}/v2/snapshot_read"),
            &[
                ("authorization", &auth),
                ("x-denokv-version", "3"),
                ("x-denokv-database-id", &db_id),
                ("content-type", "application/x-protobuf"),
            ],
            body,
        )?;
        if r.status != 200 {
            return Err(format!("snapshot_read: {} {}", r.status, r.text()));
        }
        let got = SnapshotReadOutput::decode(&r.body[..]).map_err(|e| e.to_string())?;
        let values = &got.ranges[0].values;
        for e in values {
            out.insert(
                hex::encode(&e.key),
                (
                    e.value.clone(),
                    e.encoding as i64,
                    hex::encode(&e.versionstamp),
                ),
            );
        }
        match values.last() {
            Some(last) if values.len() == 1000 => {
                start = last.key.clone();
                start.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// What a client should read when the replica shows `state`.
fn entries_of(state: &BTreeMap<Vec<u8>, Rec>) -> Entries {
    expected_rows(state)
        .into_iter()
        .map(|(k, r)| (k, (r.value, r.encoding, r.versionstamp)))
        .collect()
}

/// Reads through KV Connect while the sync is failing: 200, and exactly the
/// state at the commit the admin API reports. Returns that commit.
fn assert_serves_last_good_state(serve: &ServeProcess, fx: &Fixture, label: &str) -> usize {
    let mut at = None;
    for _ in 0..3 {
        let cur = current(serve);
        let i = commit_of(fx, &cur);
        let got = kv_read_all(&serve.kv_url())
            .unwrap_or_else(|e| panic!("{label}: reads fail: {e}\n{}", serve.log()));
        assert!(
            got == entries_of(&fx.state_at(i)),
            "{label}: KV Connect reads {} entries, not the state at the visible commit {i}",
            got.len()
        );
        assert!(
            at.is_none() || at == Some(i),
            "{label}: the visible state moved from commit {} to {i}; log:\n{}",
            at.unwrap_or_default(),
            serve.log()
        );
        at = Some(i);
        std::thread::sleep(Duration::from_millis(300));
    }
    at.unwrap()
}

/// The visible versionstamp from the admin API.
fn current(serve: &ServeProcess) -> String {
    let auth = format!("Bearer {}", common::serve::ADMIN_TOKEN);
    let r = http(
        Method::Get,
        &format!("{}/pitr/current", serve.admin_url()),
        &[("authorization", &auth)],
        Vec::new(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "/pitr/current: {}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["versionstamp"].as_str().unwrap().to_string()
}

/// Waits (bounded) until `log()` has `n` more `needle` lines after byte
/// `from`; returns the first such line.
fn wait_log(log: impl Fn() -> String, from: usize, needle: &str, n: usize, what: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = log();
        let after = &text[from.min(text.len())..];
        if after.matches(needle).count() >= n {
            return after
                .lines()
                .find(|l| l.contains(needle))
                .unwrap()
                .to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {WAIT:?}; log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Asserts an error message is one an operator can act on: it names the
/// replica file and says what is wrong with the disk.
fn assert_clear(msg: &str, db: &Path, what: &[&str], label: &str) {
    assert!(
        what.iter().any(|w| msg.contains(w)),
        "{label}: the error does not say the disk is {}: {msg}",
        what.join(" / ")
    );
    assert!(
        msg.contains(&db.display().to_string()),
        "{label}: the error does not name the replica file {}: {msg}",
        db.display()
    );
}

/// What a failed command printed besides its info and debug lines.
fn errors_only(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.contains(" DEBUG ") && !l.contains(" INFO "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `kvreplica serve` of `db`; `prepare` readies the command for its disk.
fn serve(source: &str, db: &Path, prepare: impl FnOnce(&mut Command)) -> ServeProcess {
    ServeProcess::start_adjusted(
        &[
            "--source",
            source,
            "--db",
            db.to_str().unwrap(),
            "--page-size",
            "2",
            "--fetch-concurrency",
            "1",
            "--poll-interval",
            "100ms",
        ],
        &[("RUST_LOG", "kvreplica=debug")],
        prepare,
    )
}

/// `kvreplica sync` of `db` in the background, its stderr in `log`;
/// `prepare` readies the command for its disk.
fn spawn_sync(
    source: &str,
    db: &Path,
    log: &Path,
    prepare: impl FnOnce(&mut Command),
) -> SyncChild {
    let mut cmd = Command::new(kvreplica_bin());
    prepare(&mut cmd);
    let mut child = cmd
        .args(["sync", "--source", source, "--db", db.to_str().unwrap()])
        .args(["--page-size", "2", "--fetch-concurrency", "1"])
        .env("RUST_LOG", "kvreplica=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Through a pipe, copied by the test: the simulated disk's file-size
    // limit would stop the child writing a file of its own.
    let mut from = child.stderr.take().unwrap();
    let mut into = std::fs::File::create(log).unwrap();
    let copier = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut into);
    });
    SyncChild { child, copier }
}

/// A background `kvreplica sync` and the thread copying its stderr.
struct SyncChild {
    child: std::process::Child,
    copier: std::thread::JoinHandle<()>,
}

/// Waits (bounded) for a background sync to exit, and for its log to be
/// complete; kills it after [`WAIT`].
fn wait_exit(sync: SyncChild, what: &str) -> std::process::ExitStatus {
    let SyncChild { mut child, copier } = sync;
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    copier.join().unwrap();
    status
}

/// `kvreplica sync` to the end; panics unless it exits 0 within [`WAIT`].
fn sync_to_end(source: &str, db: &Path, log: &Path) {
    let child = spawn_sync(source, db, log, |_| {});
    let status = wait_exit(child, "sync");
    assert!(
        status.success(),
        "sync failed ({status}):\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Checks a replica file nobody has open, on a copy of it and its `-wal`
/// and `-shm` (the original stays as the failure left it, for kvreplica's
/// own recovery): integrity, the visible state against the commit it
/// reports, every point once. Returns the visible commit.
fn check_file(fx: &Fixture, db: &Path, label: &str) -> usize {
    let copy = tempfile::tempdir().unwrap();
    let db = &copy_replica(db, copy.path());
    assert!(
        integrity_ok_read_only(db),
        "{label}: PRAGMA integrity_check failed"
    );
    let out = common::run_ok(&["pitr", "--db", db.to_str().unwrap(), "info"]);
    let info = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{label}: no {name:?} in pitr info:\n{info}"))
    };
    let visible = commit_of(fx, &field("current versionstamp:"));
    let latest = commit_of(fx, &field("latest versionstamp:"));
    assert_rows_eq(
        &read_replica(db),
        &fx.state_at(visible),
        &format!("{label}: state at the visible commit {visible}"),
    );
    assert_eq!(
        point_stamps(db),
        want_stamps(fx, latest),
        "{label}: recoverable points up to commit {latest}"
    );
    visible
}

/// The backup both cases replicate: a small snapshot and many small log
/// objects to append, so the apply takes a while with `--page-size 2`.
fn backup(seed: u64) -> Fixture {
    Fixture::generate(Spec {
        seed,
        keys: 600,
        pre_commits: 40,
        post_commits: 30,
        append_commits: 500,
        muts_per_log: 6,
        max_muts_per_commit: 8,
        ..Spec::default()
    })
}

/// The newest complete commit once the objects up to `objects[..n]` of the
/// append list are in the bucket.
fn last_complete(fx: &Fixture, n: usize) -> usize {
    let Some((name, _)) = n.checked_sub(1).map(|i| &fx.append[i]) else {
        return fx.last_initial;
    };
    let last = &name[name.len() - 4 - 24..name.len() - 4];
    let c = commit_of(fx, &last[..20]);
    if &last[20..] == "ffff" {
        c
    } else {
        c - 1
    }
}

#[test]
fn filesystem_turns_read_only_mid_sync() {
    read_only_case(Want::Real);
}

#[test]
fn filesystem_turns_read_only_mid_sync_simulated() {
    read_only_case(Want::Simulated);
}

fn read_only_case(want: Want) {
    const CASE: &str = RoDisk::CASE;
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut disk = RoDisk::new(tmp.path(), want);
    let fx = backup(61);
    let bucket = tmp.path().join("bucket");
    fx.write_initial(&bucket);
    let source = format!("file://{}/", bucket.display());
    let db = disk.dir().join("replica").join("r.sqlite");
    let half = fx.append.len() / 2;
    let first_end = last_complete(&fx, half);

    // 1. `serve` applying logs when the filesystem fails.
    let mut server = serve(&source, &db, |c| disk.prepare(c));
    server.wait_ready();
    server.wait_at(&vs_of(&fx, fx.last_initial));
    // What is on the disk so far is durable: the last good state is known.
    sh("sync", &["-f", db.to_str().unwrap()]);
    assert_eq!(
        kv_read_all(&server.kv_url()).unwrap(),
        entries_of(&fx.state_at(fx.last_initial))
    );
    let mark = server.log().len();
    put_all(&bucket, &fx.append[..half]);
    wait_log(
        || server.log(),
        mark,
        "log batch stored",
        3,
        "applied batches",
    );
    disk.fail(server.pid());
    let failed_at = server.log().len();
    let err = wait_log(
        || server.log(),
        failed_at,
        "sync round failed",
        1,
        "sync error",
    );
    let served = assert_serves_last_good_state(&server, &fx, "serve on a read-only disk");
    assert!(
        served >= fx.last_initial && served < first_end,
        "serving commit {served}: the sync finished before the disk failed, or went back"
    );
    let status = server.terminate();
    assert!(status.success(), "serve exit after SIGTERM: {status}");

    // 2. A sync started on the read-only disk.
    let log = tmp.path().join("sync.log");
    let child = spawn_sync(&source, &db, &log, |c| disk.prepare(c));
    let status = wait_exit(child, "sync on a read-only disk");
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        !status.success(),
        "sync succeeded on a read-only disk:\n{stderr}"
    );
    let last = errors_only(&stderr);

    // 3. The disk comes back: no corruption, the last good state or later,
    // and the sync resumes.
    disk.come_back();
    let back = check_file(&fx, &db, "after the disk came back");
    assert!(
        back >= fx.last_initial,
        "after the disk came back the replica is at commit {back}, before the durable state"
    );
    sync_to_end(&source, &db, &log);
    assert_eq!(check_file(&fx, &db, "resumed"), first_end);

    // 4. A one-shot sync applying logs when the filesystem fails.
    sh("sync", &["-f", db.to_str().unwrap()]);
    put_all(&bucket, &fx.append[half..]);
    let child = spawn_sync(&source, &db, &log, |c| disk.prepare(c));
    wait_log(
        || std::fs::read_to_string(&log).unwrap_or_default(),
        0,
        "log batch stored",
        3,
        "applied batches",
    );
    disk.fail(child.child.id());
    let status = wait_exit(child, "sync on a failing disk");
    let stderr_mid = std::fs::read_to_string(&log).unwrap();
    assert!(
        !status.success(),
        "sync succeeded while its disk failed:\n{stderr_mid}"
    );
    let last_mid = errors_only(&stderr_mid);
    disk.come_back();
    let back = check_file(&fx, &db, "after the second failure");
    assert!(
        back >= first_end && back < fx.last_commit(),
        "after the second failure the replica is at commit {back}, outside [{first_end}, {})",
        fx.last_commit()
    );
    sync_to_end(&source, &db, &log);
    assert_eq!(check_file(&fx, &db, "final"), fx.last_commit());
    assert_rows_eq(&read_replica(&db), &fx.state_at(fx.last_commit()), "final");
    println!(
        "{CASE}: served commit {served} while failing; run time {:?}",
        started.elapsed()
    );

    // The messages, last: a vague one fails the test only once the
    // behaviour above has been checked.
    println!("{CASE}: serve's sync error: {err}");
    println!("{CASE}: sync started on a read-only disk: {last}");
    println!("{CASE}: sync when its disk failed: {last_mid}");
    let clear_ro = disk.reasons();
    assert_clear(&err, &db, clear_ro, "serve's sync error");
    assert_clear(&last, &db, clear_ro, "sync started on a read-only disk");
    assert_clear(&last_mid, &db, clear_ro, "sync when its disk failed");
}

#[test]
fn disk_full_mid_sync() {
    disk_full_case(Want::Real);
}

#[test]
fn disk_full_mid_sync_simulated() {
    disk_full_case(Want::Simulated);
}

fn disk_full_case(want: Want) {
    const CASE: &str = FullDisk::CASE;
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut disk = FullDisk::new(tmp.path(), want);
    let fx = backup(67);
    let bucket = tmp.path().join("bucket");
    fx.write_initial(&bucket);
    let source = format!("file://{}/", bucket.display());
    let db = disk.dir().join("r.sqlite");

    let mut server = serve(&source, &db, |c| disk.prepare(c));
    server.wait_ready();
    server.wait_at(&vs_of(&fx, fx.last_initial));
    // Shrink the disk to what the replica uses plus a little.
    let headroom = 128 << 10;
    let (used, room) = disk.shrink(server.pid(), &db, headroom);
    println!("{CASE}: replica uses {used} bytes; disk shrunk to {room}");

    let mark = server.log().len();
    put_all(&bucket, &fx.append);
    let err = wait_log(|| server.log(), mark, "sync round failed", 1, "sync error");
    let served = assert_serves_last_good_state(&server, &fx, "serve on a full disk");
    assert!(
        served < fx.last_commit(),
        "the appended logs fit on the disk: make them bigger"
    );

    // Restarted on the full disk (a watchdog restart, say), it serves the
    // same state from its file at once.
    let status = server.terminate();
    assert!(status.success(), "serve exit after SIGTERM: {status}");
    let mut server = serve(&source, &db, |c| disk.prepare(c));
    let again = assert_serves_last_good_state(&server, &fx, "serve restarted on a full disk");
    assert_eq!(again, served, "the restarted replica moved on a full disk");

    // More room: the sync resumes by itself and converges.
    disk.grow(server.pid());
    server.wait_at(&vs_of(&fx, fx.last_commit()));
    assert_eq!(
        kv_read_all(&server.kv_url()).unwrap(),
        entries_of(&fx.state_at(fx.last_commit()))
    );
    let status = server.terminate();
    assert!(status.success(), "serve exit after SIGTERM: {status}");
    assert_eq!(
        check_file(&fx, &db, "after the disk grew"),
        fx.last_commit()
    );
    println!(
        "{CASE}: served commit {served} while full; run time {:?}",
        started.elapsed()
    );

    println!("{CASE}: serve's sync error: {err}");
    assert_clear(&err, &db, disk.reasons(), "serve's sync error");
}
