//! A replica that never diverges silently (issue 14), items 4, 5 and 7,
//! each against the directory source and the real S3 server (s3s-fs):
//!
//! - `--db` naming a file kvreplica did not create is refused before any
//!   write, with what the file appears to be; its bytes stay the same.
//! - A file is bound to its backup only once the backup's `differential`
//!   was read, and spellings of one source (trailing slash, …) are one
//!   source, also for files written by earlier versions.
//! - Object times far ahead of the local clock (a commit time in a log
//!   object, an object's `LastModified`) are reported and never used: not
//!   to prune history, not to hold objects back.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::fixture::{assert_rows_eq, Fixture, Spec};
use common::serve::{deno_bin, ServeProcess};
use common::{pitr_list, read_replica};
use s3_server::S3Server;

const BUCKET: &str = "kv-backup";
const PREFIX: &str = "backups/3f1c2a7e-0000-4000-8000-0000000000aa/";

/// Exit code for a replica file that cannot be used (sysexits EX_CANTCREAT).
const REPLICA_MISMATCH: i32 = 73;

/// Where a test's backup lives: a directory, or a bucket of a real S3
/// server.
enum Place {
    Dir(PathBuf),
    S3(S3Server),
}

impl Place {
    fn dir(root: &Path) -> Place {
        let dir = root.join("bucket");
        std::fs::create_dir_all(&dir).unwrap();
        Place::Dir(dir)
    }

    fn s3() -> Place {
        let server = S3Server::start();
        server.create_bucket(BUCKET);
        Place::S3(server)
    }

    /// Both places, for a test that runs against each.
    fn both(root: &Path) -> [(&'static str, Place); 2] {
        [("dir", Place::dir(root)), ("s3", Place::s3())]
    }

    /// The `--source` URL of the backup, spelled as the docs show it.
    fn url(&self) -> String {
        match self {
            Place::Dir(d) => format!("file://{}/", d.display()),
            Place::S3(_) => format!("s3://{BUCKET}/{PREFIX}"),
        }
    }

    /// A `--source` URL of the same place with another prefix/directory
    /// below it (a typo).
    fn other_url(&self, name: &str) -> String {
        match self {
            Place::Dir(d) => format!("file://{}/", d.with_file_name(name).display()),
            Place::S3(_) => format!("s3://{BUCKET}/backups/{name}/"),
        }
    }

    /// Writes one object below the backup's prefix.
    fn put(&self, rel: &str, body: &[u8]) {
        match self {
            Place::Dir(d) => {
                let path = d.join(rel);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, body).unwrap();
            }
            Place::S3(s) => s.put(BUCKET, &format!("{PREFIX}{rel}"), body),
        }
    }

    /// Sets an object's `LastModified`.
    fn set_modified(&self, rel: &str, when: SystemTime) {
        match self {
            Place::Dir(d) => std::fs::File::options()
                .write(true)
                .open(d.join(rel))
                .and_then(|f| f.set_modified(when))
                .unwrap(),
            Place::S3(s) => s.set_modified(BUCKET, &format!("{PREFIX}{rel}"), when),
        }
    }

    fn put_all(&self, objects: &[(String, Vec<u8>)]) {
        for (rel, body) in objects {
            self.put(rel, body);
        }
    }

    /// Flags and environment that reach this place (endpoint, keys).
    fn access(&self) -> (Vec<String>, Vec<(&'static str, String)>) {
        match self {
            Place::Dir(_) => (Vec::new(), Vec::new()),
            Place::S3(s) => (
                vec!["--s3-endpoint".into(), s.endpoint()],
                vec![
                    ("AWS_ACCESS_KEY_ID", s.access_key().to_string()),
                    ("AWS_SECRET_ACCESS_KEY", s.secret_key().to_string()),
                    ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
                ],
            ),
        }
    }

    /// `kvreplica sync --source <source> --db <db> <extra>` to its end
    /// (`extra` may spell the endpoint its own way).
    fn sync(&self, source: &str, db: &Path, extra: &[&str]) -> Output {
        let (mut flags, env) = self.access();
        if extra.contains(&"--s3-endpoint") {
            flags.clear();
        }
        let mut cmd = Command::new(common::kvreplica_bin());
        cmd.args(["sync", "--source", source, "--db"])
            .arg(db)
            .args(&flags)
            .args(extra)
            .env_remove("RUST_LOG");
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "KVREPLICA_SOURCE",
            "KVREPLICA_DB",
            "KVREPLICA_S3_ENDPOINT",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env).output().expect("running kvreplica sync")
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output, label: &str) {
    assert!(
        out.status.success(),
        "{label}: kvreplica failed ({}):\n{}",
        out.status,
        stderr(out)
    );
}

// ---------------------------------------------------------------------------
// Item 4: files that are not kvreplica replicas.

/// One kind of file that is not a replica: how to make it, and words the
/// refusal must use to say what it appears to be.
struct Foreign {
    label: &'static str,
    make: fn(&Path),
    says: &'static [&'static str],
}

fn app_database(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "create table users (id integer primary key, name text not null);
         insert into users (name) values ('ada'), ('grace');
         create table orders (id integer primary key, user integer, total real);",
    )
    .unwrap();
}

fn unrelated_kv_table(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "create table kv (key text primary key, value text);
         insert into kv values ('theme', 'dark');",
    )
    .unwrap();
}

fn deno_cli_kv_file(path: &Path) {
    let home = tempfile::tempdir().unwrap();
    let script = format!(
        "const kv = await Deno.openKv({:?}); \
         await kv.set(['app', 'user', 1], {{ name: 'ada' }}); \
         await kv.set(['app', 'count'], new Deno.KvU64(7n)); \
         kv.close();",
        path.display().to_string()
    );
    let out = Command::new(deno_bin())
        .args(["eval", "--unstable-kv", &script])
        .env("DENO_DIR", home.path())
        .env("HOME", home.path())
        .output()
        .expect("running deno");
    assert!(out.status.success(), "deno eval: {}", stderr(&out));
    assert!(path.exists(), "Deno did not create {}", path.display());
}

fn text_file(path: &Path) {
    std::fs::write(path, "name,total\nada,3\ngrace,4\n").unwrap();
}

/// The names of `path` and the files beside it that start with its name
/// (`-wal`, `-shm`, `.lock`).
fn beside(path: &Path) -> Vec<String> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&name))
        .collect();
    names.sort();
    names
}

const FOREIGN: &[Foreign] = &[
    Foreign {
        label: "another application's SQLite database",
        make: app_database,
        says: &["SQLite database", "orders", "users"],
    },
    Foreign {
        label: "a Deno CLI KV file with its own data",
        make: deno_cli_kv_file,
        says: &["Deno KV database", "2 keys"],
    },
    Foreign {
        label: "a SQLite database with an unrelated kv table",
        make: unrelated_kv_table,
        says: &["`kv` table", "not Deno KV"],
    },
    Foreign {
        label: "a text file",
        make: text_file,
        says: &["not a SQLite database"],
    },
];

#[test]
fn files_kvreplica_did_not_create_are_refused_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixture::generate(Spec::default());
    for (place_label, place) in Place::both(tmp.path()) {
        place.put_all(&fx.initial);
        for (i, kind) in FOREIGN.iter().enumerate() {
            let db = tmp.path().join(format!("{place_label}-{i}.db"));
            (kind.make)(&db);
            let before = std::fs::read(&db).unwrap();
            let beside_before = beside(&db);
            let out = place.sync(&place.url(), &db, &[]);
            let err = stderr(&out);
            let label = format!("{place_label}: {}", kind.label);
            assert_eq!(
                out.status.code(),
                Some(REPLICA_MISMATCH),
                "{label}: expected exit {REPLICA_MISMATCH}:\n{err}"
            );
            assert!(err.contains("not a kvreplica replica"), "{label}:\n{err}");
            for word in kind.says {
                assert!(err.contains(word), "{label}: no {word:?} in:\n{err}");
            }
            assert!(
                std::fs::read(&db).unwrap() == before,
                "{label}: the file's bytes changed"
            );
            assert_eq!(
                beside(&db),
                beside_before,
                "{label}: files were left beside it (lock, -wal, -shm)"
            );
        }

        // What may be written: a missing file, an empty one, and a replica
        // kvreplica made (opened again).
        let missing = tmp.path().join(format!("{place_label}-new.db"));
        let empty = tmp.path().join(format!("{place_label}-empty.db"));
        std::fs::write(&empty, b"").unwrap();
        let want = fx.state_at(fx.last_initial);
        for db in [&missing, &empty, &missing] {
            assert_ok(&place.sync(&place.url(), db, &[]), place_label);
            assert_rows_eq(&read_replica(db), &want, place_label);
        }
    }
}

// ---------------------------------------------------------------------------
// Item 5: binding a file to its backup.

fn stored_source(db: &Path) -> Option<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    use rusqlite::OptionalExtension;
    conn.query_row("select v from kvr_meta where k = 'source'", [], |r| {
        r.get::<_, Vec<u8>>(0)
    })
    .optional()
    .unwrap()
    .map(|v| String::from_utf8(v).unwrap())
}

fn set_stored_source(db: &Path, source: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute(
        "insert or replace into kvr_meta (k, v) values ('source', ?)",
        [source.as_bytes()],
    )
    .unwrap();
}

#[test]
fn a_file_is_bound_only_once_the_differential_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixture::generate(Spec::default());
    let want = fx.state_at(fx.last_initial);
    for (label, place) in Place::both(tmp.path()) {
        place.put_all(&fx.initial);
        let url = place.url();
        let db = tmp.path().join(format!("{label}.db"));

        // A mistyped source fails and binds nothing.
        let out = place.sync(&place.other_url("typo"), &db, &[]);
        assert!(!out.status.success(), "{label}: a typo must fail");
        assert_eq!(stored_source(&db), None, "{label}: bound to the typo");

        // The corrected source, spelled without the trailing slash.
        let bare = url.trim_end_matches('/');
        assert_ok(&place.sync(bare, &db, &[]), label);
        assert_rows_eq(&read_replica(&db), &want, label);
        let bound = stored_source(&db).expect("bound after the first load");

        // Other spellings of the same backup are the same backup.
        assert_ok(&place.sync(&url, &db, &[]), label);
        if let Place::S3(s) = &place {
            // The endpoint with a trailing slash, the region spelled out.
            let out = place.sync(
                &url,
                &db,
                &[
                    "--s3-endpoint",
                    &format!("{}/", s.endpoint()),
                    "--s3-region",
                    "us-east-1",
                ],
            );
            assert_ok(&out, label);
        }
        assert_eq!(stored_source(&db).as_deref(), Some(bound.as_str()));

        // Another backup is still refused, naming the way out.
        let out = place.sync(&place.other_url(&format!("{label}-other")), &db, &[]);
        assert_eq!(
            out.status.code(),
            Some(REPLICA_MISMATCH),
            "{label}:\n{}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("delete"),
            "{label}:\n{}",
            stderr(&out)
        );

        // A file written by an earlier version stored the URL as typed:
        // every spelling of it is still accepted, and it is not rewritten.
        let typed = if bound.ends_with('/') {
            bound.trim_end_matches('/').to_string()
        } else {
            format!("{bound}/")
        };
        set_stored_source(&db, &typed);
        assert_ok(&place.sync(bare, &db, &[]), label);
        assert_ok(&place.sync(&url, &db, &[]), label);
        assert_eq!(stored_source(&db).as_deref(), Some(typed.as_str()));

        // An earlier version also bound a file whose first sync failed:
        // such a file holds nothing yet and follows the corrected source.
        let early = tmp.path().join(format!("{label}-early.db"));
        let out = place.sync(&place.other_url("typo"), &early, &[]);
        assert!(!out.status.success());
        set_stored_source(&early, &place.other_url("typo"));
        assert_ok(&place.sync(&url, &early, &[]), label);
        assert_rows_eq(&read_replica(&early), &want, label);
    }
}

// ---------------------------------------------------------------------------
// Item 7: clocks in the bucket.

/// A year: far more than any clock skew.
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// `body` (a log object) with its commit time moved to `ms`.
fn with_commit_time(body: &[u8], ms: u64) -> Vec<u8> {
    use prost::Message;
    let mut range = denokv_proto::backup::BackupMutationRange::decode(body).unwrap();
    range.timestamp_ms = ms;
    range.encode_to_vec()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn object_times_ahead_of_the_local_clock_neither_prune_nor_stall() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixture::generate(Spec::default());
    let last = fx.last_commit();
    let last_vs = hex::encode(fx.commits[last].versionstamp);
    let n = fx.append.len();
    assert!(n >= 3, "the fixture appends {n} log objects");
    // The next to last object says it was committed a year from now; the
    // last one was stored (LastModified) a year from now.
    let future_commit = &fx.append[n - 2].0;
    let future_stored = &fx.append[n - 1].0;
    let mut objects = fx.initial.clone();
    objects.extend(fx.append.iter().cloned());
    let i = objects.len() - 2;
    objects[i].1 = with_commit_time(&objects[i].1, now_ms() + YEAR.as_millis() as u64);

    // The same backup with its true times, synced with the same retention:
    // what the replica must equal.
    let clean = Place::dir(&tmp.path().join("clean"));
    clean.put_all(&fx.initial);
    clean.put_all(&fx.append);
    let clean_db = tmp.path().join("clean.db");
    let retain = ["--retain-for", "1h"];
    assert_ok(&clean.sync(&clean.url(), &clean_db, &retain), "clean");
    let clean_points: Vec<String> = pitr_list(&clean_db).into_iter().map(|p| p.0).collect();
    assert!(clean_points.len() > 10, "{clean_points:?}");
    assert_rows_eq(&read_replica(&clean_db), &fx.state_at(last), "clean");

    for (label, place) in Place::both(tmp.path()) {
        place.put_all(&objects);
        place.set_modified(future_stored, SystemTime::now() + YEAR);

        let db = tmp.path().join(format!("{label}.db"));
        let out = place.sync(&place.url(), &db, &retain);
        assert_ok(&out, label);
        let err = stderr(&out);
        assert_rows_eq(&read_replica(&db), &fx.state_at(last), label);
        let points: Vec<String> = pitr_list(&db).into_iter().map(|p| p.0).collect();
        assert_eq!(
            points, clean_points,
            "{label}: retention pruned by a future time"
        );
        for object in [future_commit, future_stored] {
            let name = object.trim_start_matches("logs/").trim_end_matches(".bin");
            let warnings = err
                .lines()
                .filter(|l| l.contains("WARN") && l.contains(name))
                .count();
            assert_eq!(warnings, 1, "{label}: one warning for {name}:\n{err}");
        }

        // Following with a settle window: the object stored "in the future"
        // is applied once it has been listed for the settle window, with one
        // warning however many rounds see it, and counted in /metrics.
        let served = tmp.path().join(format!("{label}-serve.db"));
        let (flags, env) = place.access();
        let mut args: Vec<String> = vec![
            "--source".into(),
            place.url(),
            "--db".into(),
            served.display().to_string(),
            "--settle".into(),
            "1s".into(),
            "--poll-interval".into(),
            "200ms".into(),
        ];
        args.extend(flags);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut serve = ServeProcess::start_with_env(&args, &env);
        serve.wait_at(&last_vs);
        std::thread::sleep(Duration::from_millis(600));
        let m = serve.metrics();
        let counted: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("kvreplica_future_object_times_total"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(counted, 2.0, "{label}: {m:?}");
        let log = serve.log();
        let name = future_stored
            .trim_start_matches("logs/")
            .trim_end_matches(".bin");
        let warnings = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(name))
            .count();
        assert_eq!(warnings, 1, "{label}: one warning for {name}:\n{log}");
        serve.terminate();
        assert_rows_eq(&read_replica(&served), &fx.state_at(last), label);
    }
}
