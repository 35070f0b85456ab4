//! `--on-reexport rebuild`: a backup re-exported under the same prefix is
//! rebuilt beside the replica and swapped in. Clients reading over KV
//! Connect all along see the old export's state, then exactly the new
//! one's, never a mix and never an error; a watcher is woken by the switch;
//! a kill at any moment of a rebuild leaves a servable file that a restart
//! brings to the new state. An initial load never finishes into a mix of
//! two exports. Each scenario runs against a directory and a real S3
//! server (s3s-fs) on 127.0.0.1.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fixture::{Fixture, Rng, Spec};
use common::serve::{http, Method, ServeProcess, ACCESS_TOKEN};
use common::{integrity_ok_read_only, pitr_list, read_replica, Row};
use denokv_proto::datapath::{
    ReadRange, SnapshotRead, SnapshotReadOutput, Watch, WatchKey, WatchOutput,
};
use prost::Message;

const BUCKET: &str = "kv-backup";
const PREFIX: &str = "backups/reexport/";

/// Far more than any step takes on a busy two-core machine.
const WAIT: Duration = Duration::from_secs(90);

/// `$name::dir` and `$name::s3`: the scenario `$scenario` against a
/// directory and against s3s-fs.
macro_rules! on_both {
    ($name:ident, $scenario:ident) => {
        mod $name {
            #[test]
            fn dir() {
                super::$scenario("dir");
            }

            #[test]
            fn s3() {
                super::$scenario("s3");
            }
        }
    };
}

/// Objects of one export, as the fixture lists them.
type Objects = [(String, Vec<u8>)];

/// Where the backup lives: a directory source, or the folder behind an
/// s3s-fs bucket (which stores each object as a file).
struct Place {
    tmp: tempfile::TempDir,
    s3: Option<s3_server::S3Server>,
}

impl Place {
    fn new(kind: &str) -> Place {
        let s3 = (kind == "s3").then(|| {
            let s = s3_server::S3Server::start();
            s.create_bucket(BUCKET);
            s
        });
        Place {
            tmp: tempfile::tempdir().unwrap(),
            s3,
        }
    }

    fn folder(&self) -> PathBuf {
        match &self.s3 {
            Some(s) => s.root().join(BUCKET).join(PREFIX),
            None => self.tmp.path().join(PREFIX),
        }
    }

    /// Replaces whatever is under the prefix by `parts`, `differential`
    /// last, as an export writes it.
    fn export(&self, parts: &[&Objects]) {
        let folder = self.folder();
        if folder.exists() {
            std::fs::remove_dir_all(&folder).unwrap();
        }
        let mut all: Vec<&(String, Vec<u8>)> = parts.iter().flat_map(|p| p.iter()).collect();
        all.sort_by_key(|(rel, _)| rel == "differential");
        for (rel, body) in all {
            let p = folder.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
    }

    /// `--source` (and endpoint) plus `extra`.
    fn flags(&self, extra: &[&str]) -> Vec<String> {
        let mut v = match &self.s3 {
            None => vec![
                "--source".to_string(),
                format!("file://{}/{PREFIX}", self.tmp.path().display()),
            ],
            Some(s) => vec![
                "--source".to_string(),
                format!("s3://{BUCKET}/{PREFIX}"),
                "--s3-endpoint".to_string(),
                s.endpoint(),
            ],
        };
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match &self.s3 {
            None => Vec::new(),
            Some(s) => vec![
                ("AWS_ACCESS_KEY_ID", s.access_key().to_string()),
                ("AWS_SECRET_ACCESS_KEY", s.secret_key().to_string()),
            ],
        }
    }

    fn serve(&self, db: &Path, extra: &[&str]) -> ServeProcess {
        self.serve_with(db, extra, &[])
    }

    /// [`Place::serve`] with more environment variables.
    fn serve_with(&self, db: &Path, extra: &[&str], more: &[(&str, &str)]) -> ServeProcess {
        let db = db.display().to_string();
        let mut extra = extra.to_vec();
        extra.extend(["--db", &db, "--poll-interval", "100ms"]);
        let args = self.flags(&extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = self.env();
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend_from_slice(more);
        ServeProcess::start_with_env(&args, &env)
    }

    /// A one-shot `kvreplica sync`: its exit code and stderr.
    fn sync(&self, db: &Path, extra: &[&str]) -> (Option<i32>, String) {
        let mut cmd = Command::new(common::kvreplica_bin());
        cmd.arg("sync").args(self.flags(extra));
        cmd.args([Path::new("--db"), db]);
        let out = cmd
            .env_remove("RUST_LOG")
            .envs(self.env())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stderr)
    }
}

/// Where kvreplica builds the replica of a new export, beside `db`.
fn rebuild_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".rebuild");
    PathBuf::from(p)
}

/// The replica a fresh `sync` builds from `objects` alone, in `dir`: its
/// visible rows and its recoverable points.
fn built_alone(objects: &[&Objects], dir: &Path) -> (BTreeMap<String, Row>, Vec<(String, String)>) {
    let place = Place::new("dir");
    place.export(objects);
    let db = dir.join("alone.sqlite");
    let (code, stderr) = place.sync(&db, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    (read_replica(&db), pitr_list(&db))
}

/// What each scenario starts from: two exports of different databases
/// for one prefix, the old one a replica follows and the new one that
/// replaces it (more snapshot ranges, whose first names are the old
/// ones'); an empty place for them; the replica file's path; and the rows
/// and points of a replica built from the new export alone.
struct Scene {
    old: Fixture,
    new: Fixture,
    place: Place,
    db: PathBuf,
    new_rows: BTreeMap<String, Row>,
    new_points: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
}

impl Scene {
    fn new(kind: &str, new_keys: usize) -> Scene {
        let old = Fixture::generate(Spec::default());
        let new = Fixture::generate(Spec {
            seed: 7,
            keys: new_keys,
            ranges: 6,
            pre_commits: 90,
            ..Spec::default()
        });
        assert_ne!(old.dv, new.dv);
        let tmp = tempfile::tempdir().unwrap();
        let (new_rows, new_points) = built_alone(&[&new.initial, &new.append], tmp.path());
        Scene {
            old,
            new,
            place: Place::new(kind),
            db: tmp.path().join("r.sqlite"),
            new_rows,
            new_points,
            _tmp: tmp,
        }
    }
}

/// A state as KV Connect serves it: hex key → (value, encoding,
/// versionstamp hex).
type Served = BTreeMap<String, (Vec<u8>, i64, String)>;

fn served(rows: &BTreeMap<String, Row>) -> Served {
    rows.iter()
        .map(|(k, r)| {
            (
                k.clone(),
                (r.value.clone(), r.encoding, r.versionstamp.clone()),
            )
        })
        .collect()
}

/// A KV Connect client as the data path sees it: the URL and the headers
/// every request carries.
#[derive(Clone)]
struct Client {
    base: String,
    headers: Vec<(&'static str, String)>,
}

impl Client {
    fn connect(kv_url: &str) -> Client {
        let meta = common::serve::metadata(kv_url);
        assert_eq!(meta.status, 200, "metadata: {}", meta.text());
        let meta: serde_json::Value = serde_json::from_slice(&meta.body).unwrap();
        Client {
            base: kv_url.to_string(),
            headers: vec![
                ("authorization", format!("Bearer {ACCESS_TOKEN}")),
                ("x-denokv-version", "3".to_string()),
                (
                    "x-denokv-database-id",
                    meta["databaseId"].as_str().unwrap().to_string(),
                ),
                ("content-type", "application/x-protobuf".to_string()),
            ],
        }
    }

    /// Everything visible, in one snapshot read; the error says why not.
    fn read_all(&self) -> Result<Served, String> {
        let body = SnapshotRead {
            ranges: vec![ReadRange {
                start: vec![],
                end: vec![0xff],
                limit: 1000,
                reverse: false,
            }],
        }
        .encode_to_vec();
        let headers: Vec<(&str, &str)> =
            self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = http(
            Method::Post,
            &format!("{}/v2/snapshot_read", self.base),
            &headers,
            body,
        )?;
        if r.status != 200 {
            return Err(format!("snapshot_read answered {}: {}", r.status, r.text()));
        }
        let out = SnapshotReadOutput::decode(&r.body[..]).map_err(|e| e.to_string())?;
        let values = &out.ranges.first().ok_or("no range in the answer")?.values;
        assert!(values.len() < 1000, "the read covers every key");
        Ok(values
            .iter()
            .map(|e| {
                (
                    hex::encode(&e.key),
                    (
                        e.value.clone(),
                        e.encoding as i64,
                        hex::encode(&e.versionstamp),
                    ),
                )
            })
            .collect())
    }

    /// Watches `keys` until a frame shows each with the entry `want` has
    /// for it, or `WAIT` passes. Returns the data frames received and
    /// whether `want` was reached.
    fn watch_until(&self, keys: Vec<Vec<u8>>, want: Served, ready: Arc<AtomicBool>) -> (u32, bool) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut req = reqwest::Client::new()
                .post(format!("{}/v2/watch", self.base))
                .body(
                    Watch {
                        keys: keys.iter().map(|k| WatchKey { key: k.clone() }).collect(),
                    }
                    .encode_to_vec(),
                );
            for (k, v) in &self.headers {
                req = req.header(*k, v);
            }
            let mut resp = req.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200, "watch");
            let deadline = tokio::time::Instant::now() + WAIT;
            let mut buf: Vec<u8> = Vec::new();
            let mut seen: Vec<Option<(Vec<u8>, i64, String)>> = vec![None; keys.len()];
            let mut frames = 0;
            loop {
                while buf.len() >= 4 {
                    let n = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
                    if buf.len() < 4 + n {
                        break;
                    }
                    let frame: Vec<u8> = buf.drain(..4 + n).skip(4).collect();
                    if n == 0 {
                        continue;
                    }
                    frames += 1;
                    let out = WatchOutput::decode(&frame[..]).unwrap();
                    for (slot, k) in seen.iter_mut().zip(out.keys) {
                        if k.changed {
                            *slot = k
                                .entry_if_changed
                                .map(|e| (e.value, e.encoding as i64, hex::encode(e.versionstamp)));
                        }
                    }
                    ready.store(true, Ordering::SeqCst);
                    let reached = keys
                        .iter()
                        .zip(&seen)
                        .all(|(k, s)| want.get(&hex::encode(k)) == s.as_ref());
                    if reached {
                        return (frames, true);
                    }
                }
                match tokio::time::timeout_at(deadline, resp.chunk()).await {
                    Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk),
                    _ => return (frames, false),
                }
            }
        })
    }
}

/// `/readyz` as the admin sees it: status and body.
fn readyz(serve: &ServeProcess) -> (u16, String) {
    let (status, body) = serve.admin(Method::Get, "/readyz", serde_json::Value::Null);
    (status, body.to_string())
}

/// Waits until the replica file `db` holds `want`.
fn wait_rows(db: &Path, want: &BTreeMap<String, Row>, serve: &ServeProcess) {
    let deadline = Instant::now() + WAIT;
    while read_replica(db) != *want {
        assert!(
            Instant::now() < deadline,
            "the replica never reached the new export's state; /readyz: {:?}; log:\n{}",
            readyz(serve),
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Serving a replica of the old export with `--on-reexport rebuild`, the
/// backup is replaced by a new export: readers and a watcher over KV
/// Connect all along. The replica switches once, to exactly the state a
/// replica built from the new export alone has, with its history; no read
/// fails or sees anything else; the watcher is woken with the new state.
fn switch(kind: &str) {
    let sc = Scene::new(kind, 400);
    let old = &sc.old;
    let (place, db, new) = (&sc.place, sc.db.as_path(), &sc.new);
    let (new_rows, new_points) = (sc.new_rows.clone(), sc.new_points.clone());
    place.export(&[&old.initial]);
    let mut serve = place.serve(db, &["--on-reexport", "rebuild"]);
    serve.wait_ready();
    let old_rows = read_replica(db);
    assert!(!old_rows.is_empty());
    assert_ne!(old_rows, new_rows);
    let (old_state, new_state) = (served(&old_rows), served(&new_rows));

    let client = Client::connect(&serve.kv_url());
    assert_eq!(client.read_all().unwrap(), old_state, "served before");
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            std::thread::spawn(move || {
                // Consecutive equal reads collapse into one: the list is
                // the sequence of states seen, with read counts.
                let mut seen: Vec<(Served, u64)> = Vec::new();
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match client.read_all() {
                        Ok(s) => match seen.last_mut() {
                            Some((last, n)) if *last == s => *n += 1,
                            _ => seen.push((s, 1)),
                        },
                        Err(e) => failures.push(e),
                    }
                }
                (seen, failures)
            })
        })
        .collect();
    // Keys whose entry differs between the exports: the watcher must see
    // them move to the new export's entries.
    let keys: Vec<Vec<u8>> = new_state
        .iter()
        .filter(|(k, v)| old_state.get(*k) != Some(*v))
        .take(3)
        .map(|(k, _)| hex::decode(k).unwrap())
        .collect();
    assert_eq!(keys.len(), 3);
    let watching = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (client, want, watching) = (client.clone(), new_state.clone(), watching.clone());
        std::thread::spawn(move || client.watch_until(keys, want, watching))
    };
    let deadline = Instant::now() + WAIT;
    while !watching.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the watch's first frame never came"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    place.export(&[&new.initial, &new.append]);
    wait_rows(db, &new_rows, &serve);
    let deadline = Instant::now() + WAIT;
    while readyz(&serve).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again: {:?}",
            readyz(&serve)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        let (seen, failures) = r.join().unwrap();
        assert!(failures.is_empty(), "reads failed: {failures:?}");
        let labels: Vec<(&str, u64)> = seen
            .iter()
            .map(|(s, n)| {
                let label = if *s == old_state {
                    "old"
                } else if *s == new_state {
                    "new"
                } else {
                    "a state of neither export"
                };
                (label, *n)
            })
            .collect();
        assert_eq!(
            labels.iter().map(|l| l.0).collect::<Vec<_>>(),
            ["old", "new"],
            "each reader sees the old state, then the new one: {labels:?}"
        );
    }
    let (frames, woken) = watcher.join().unwrap();
    assert!(
        woken,
        "the watcher saw the new export's entries ({frames} frames)"
    );
    assert_eq!(client.read_all().unwrap(), new_state);
    assert_eq!(pitr_list(db), new_points, "the new export's history");
    assert!(!rebuild_path(db).exists(), "the rebuilt file is gone");
    let log = serve.log();
    assert!(
        log.contains("switched to the replica of the new export"),
        "{log}"
    );
    assert!(serve.terminate().success());
}

on_both!(a_reexport_is_rebuilt_and_swapped_in, switch);

/// SIGKILL at random moments of a rebuild, several times, restarting each
/// time: every kill leaves a file that holds exactly the old export's
/// state or the new one's (intact, servable), and the replica ends at the
/// new export's state. Half the rounds kill at a random delay after the
/// rebuild shows in `/readyz` (which may fall after the swap); the others
/// park the rebuild inside a random one of its transactions with the test
/// hook (`KVREPLICA_TEST_PARK_IN_TXN`, see src/store/testhook.rs) and kill
/// it there, a moment a delay rarely hits.
fn kill_during_rebuild(kind: &str) {
    let sc = Scene::new(kind, 3000);
    let (old, new, place, db) = (&sc.old, &sc.new, &sc.place, sc.db.as_path());
    let new_rows = sc.new_rows.clone();
    place.export(&[&old.initial]);
    // One download at a time: a rebuild of several transactions.
    let flags = ["--on-reexport", "rebuild", "--fetch-concurrency", "1"];
    let mut serve = place.serve(db, &flags);
    serve.wait_ready();
    assert!(serve.terminate().success());
    let old_rows = read_replica(db);
    let old_state = served(&old_rows);
    place.export(&[&new.initial, &new.append]);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Rng::new(seed);
    let mut parked = 0;
    for round in 0..6 {
        let park = (round % 2 == 0).then(|| 1 + rng.below(4));
        let env = park.map(|n| n.to_string());
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|n| ("KVREPLICA_TEST_PARK_IN_TXN", n.as_str()))
            .collect();
        let serve = place.serve_with(db, &flags, &env);
        let deadline = Instant::now() + WAIT;
        let what = loop {
            let log = serve.log();
            if park.is_some() && log.contains("parked before COMMIT") {
                // The old state is served and readiness says a rebuild is
                // under way, with its progress.
                let (status, body) = readyz(&serve);
                assert_eq!(status, 503, "{body}");
                assert!(
                    body.contains("rebuilding from a re-exported backup")
                        && body.contains("snapshot ranges"),
                    "{body}"
                );
                assert_eq!(
                    Client::connect(&serve.kv_url()).read_all(),
                    Ok(old_state.clone())
                );
                break "parked";
            }
            if park.is_none() && readyz(&serve).1.contains("rebuilding") {
                let delay = Duration::from_millis(rng.below(300) as u64);
                std::thread::sleep(delay);
                break "after a delay";
            }
            if read_replica(db) == new_rows {
                break "swapped";
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no rebuild seen; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let killed = Command::new("kill")
            .args(["-KILL", &serve.pid().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        drop(serve);
        assert!(integrity_ok_read_only(db), "round {round}: intact");
        let rows = read_replica(db);
        assert!(
            rows == old_rows || rows == new_rows,
            "round {round} (seed {seed}, killed {what}): the file holds one export's state"
        );
        if what == "parked" {
            assert!(rows == old_rows, "parked inside the rebuild: the old state");
            parked += 1;
        }
    }
    assert!(parked >= 1, "seed {seed}");
    let serve = place.serve(db, &flags);
    wait_rows(db, &new_rows, &serve);
    let deadline = Instant::now() + WAIT;
    while readyz(&serve).0 != 200 {
        assert!(Instant::now() < deadline, "not ready: {:?}", readyz(&serve));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!rebuild_path(db).exists(), "the rebuilt file is gone");
    assert!(serve.terminate().success());
}

on_both!(
    a_rebuild_killed_at_any_moment_leaves_a_servable_file,
    kill_during_rebuild
);

/// Ranges of the snapshot ranges table: (loaded, recorded).
fn ranges_loaded(db: &Path) -> (i64, i64) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(
        "select coalesce(sum(loaded), 0), count(*) from kvr_snapshot_ranges",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// An initial load stops half way (a corrupt range of the old export);
/// the backup is then re-exported, with ranges of the same names. Resuming
/// with `stop` fails naming what changed and loads nothing of the new
/// export; a one-shot `sync` with `rebuild` starts the load again from the
/// new export and ends at exactly its state, exit 0.
fn initial_load_across_a_reexport(kind: &str) {
    let mut sc = Scene::new(kind, 400);
    let old = &mut sc.old;
    let (place, db, new) = (&sc.place, sc.db.as_path(), &sc.new);
    let (new_rows, new_points) = (sc.new_rows.clone(), sc.new_points.clone());
    let mut ranges: Vec<usize> = (0..old.initial.len())
        .filter(|i| old.initial[*i].0.starts_with("snapshots/"))
        .collect();
    ranges.sort_by_key(|i| old.initial[*i].0.clone());
    assert!(ranges.len() >= 4);
    old.initial[ranges[2]].1 = b"not a snapshot range".to_vec();
    place.export(&[&old.initial]);
    let (code, stderr) = place.sync(db, &[]);
    assert_eq!(code, Some(65), "the corrupt range stops the load: {stderr}");
    let half = ranges_loaded(db);
    assert!(half.0 < half.1, "{half:?}");
    let rows = read_replica(db);

    place.export(&[&new.initial, &new.append]);
    let (code, stderr) = place.sync(db, &[]);
    assert_eq!(code, Some(65), "{stderr}");
    assert!(
        stderr.contains("re-exported") && stderr.contains("differential changed"),
        "{stderr}"
    );
    assert_eq!(ranges_loaded(db), half, "nothing of the new export loaded");
    assert_eq!(read_replica(db), rows);

    let (code, stderr) = place.sync(db, &["--on-reexport", "rebuild"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(read_replica(db), new_rows);
    assert_eq!(pitr_list(db), new_points);
}

on_both!(
    an_initial_load_never_mixes_two_exports,
    initial_load_across_a_reexport
);

/// A one-shot `sync` of a complete replica, pinned to a point, whose
/// backup was re-exported: exit 65 with `stop`; with `rebuild` the new
/// export is built beside it and copied in, exit 0, exactly the new
/// export's state and history, following again (a warning names the pin).
fn one_shot_sync(kind: &str) {
    let sc = Scene::new(kind, 400);
    let old = &sc.old;
    let (place, db, new) = (&sc.place, sc.db.as_path(), &sc.new);
    let (new_rows, new_points) = (sc.new_rows.clone(), sc.new_points.clone());
    place.export(&[&old.initial, &old.append]);
    let (code, stderr) = place.sync(db, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    // Pinned to an older point of the old export.
    let pin = pitr_list(db)[0].0.clone();
    common::run_ok(&["pitr", "--db", &db.display().to_string(), "checkout", &pin]);
    let info = || {
        let out = common::run_ok(&["pitr", "--db", &db.display().to_string(), "info"]);
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(info().contains("pinned"), "{}", info());
    place.export(&[&new.initial, &new.append]);
    let (code, stderr) = place.sync(db, &[]);
    assert_eq!(code, Some(65), "{stderr}");
    let (code, stderr) = place.sync(db, &["--on-reexport", "rebuild"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("was pinned") && stderr.contains(&pin),
        "{stderr}"
    );
    assert_eq!(read_replica(db), new_rows);
    assert_eq!(
        pitr_list(db),
        new_points,
        "the old export's points are gone"
    );
    assert!(!info().contains("pinned"), "following again: {}", info());
    assert!(!rebuild_path(db).exists());
    // Caught up: the next sync has nothing to rebuild.
    let (code, stderr) = place.sync(db, &[]);
    assert_eq!(code, Some(0), "{stderr}");
}

on_both!(a_one_shot_sync_rebuilds_in_place, one_shot_sync);
