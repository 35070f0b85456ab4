//! The same replica served by kvreplica and by the reference, for the
//! read benchmarks driven by outside clients (`h2load`, `scan`): a
//! generated backup synced by `kvreplica serve`, a copy of its file for
//! `denokv serve --read-only` (`DENOKV_BIN`) and one for clients that open
//! the file themselves. Both servers answer from the same rows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::fixture::{Fixture, Rec};
use crate::server::{self, Server, READY_TIMEOUT};
use crate::{kvreplica_release, num};

/// What the pair serves, and the two servers.
pub struct Pair {
    /// The state both serve.
    pub state: BTreeMap<Vec<u8>, Rec>,
    pub kvreplica: Server,
    /// The database id kvreplica requires on the data path.
    pub database_id: String,
    /// Another kvreplica build (`KVREPLICA_BASELINE_BIN`, e.g. the commit
    /// before a change), serving its own sync of the same backup: for
    /// before/after figures taken side by side.
    pub baseline: Option<(Server, String)>,
    /// `None` without `DENOKV_BIN`; with the database id it requires.
    pub denokv: Option<(Server, String)>,
    /// A copy of the replica file nobody serves, for local clients.
    pub local_copy: PathBuf,
    pub rt: tokio::runtime::Runtime,
    /// Keeps the backup and the files until the pair is dropped (last, so
    /// the servers stop first).
    pub dir: tempfile::TempDir,
}

/// `VACUUM INTO`: a consistent copy of a WAL-mode file another process
/// writes to.
fn copy_db(from: &Path, to: &Path) {
    let c = rusqlite::Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.execute("vacuum into ?1", [to.to_str().unwrap()]).unwrap();
}

impl Pair {
    /// `--keys` (default 100,000) keys after `--commits` (1,000) commits.
    pub fn start(args: &[String]) -> Pair {
        let keys = num(args, "--keys", 100_000);
        let commits = num(args, "--commits", 1000);
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("backup");
        let fx = Fixture::generate(crate::read_spec(
            42,
            keys,
            commits / 2,
            commits - commits / 2,
            false,
        ));
        fx.write_initial(&src);
        let state = fx.state_at(fx.last_initial);
        let latest = hex::encode(fx.commits[fx.last_initial].versionstamp);
        let rt = crate::runtime();
        let db = dir.path().join("replica.sqlite");
        let source = format!("file://{}/", src.display());
        let (kvreplica, _, database_id, _) =
            server::start_synced(&rt, &kvreplica_release(), &source, &db, &latest);
        let baseline = std::env::var_os("KVREPLICA_BASELINE_BIN").map(|bin| {
            let db = dir.path().join("baseline.sqlite");
            let (srv, _, id, _) = server::start_synced(&rt, Path::new(&bin), &source, &db, &latest);
            (srv, id)
        });
        let local_copy = dir.path().join("local.sqlite");
        copy_db(&db, &local_copy);
        let denokv = std::env::var_os("DENOKV_BIN").map(|bin| {
            let copy = dir.path().join("denokv.sqlite");
            copy_db(&db, &copy);
            let srv = Server::start_denokv(
                Path::new(&bin),
                &copy,
                &["--read-only".to_string()],
                &[],
                READY_TIMEOUT,
            );
            let id = rt.block_on(server::database_id(&reqwest::Client::new(), &srv.kv_url));
            (srv, id)
        });
        eprintln!(
            "serving {} keys: kvreplica at {}, denokv at {}",
            state.len(),
            kvreplica.kv_url,
            denokv
                .as_ref()
                .map_or("(DENOKV_BIN not set)", |(d, _)| &d.kv_url)
        );
        Pair {
            state,
            kvreplica,
            database_id,
            baseline,
            denokv,
            local_copy,
            rt,
            dir,
        }
    }

    /// The servers by name with the database id each requires,
    /// kvreplica first.
    pub fn servers(&self) -> Vec<(&'static str, &Server, &str)> {
        let mut v = vec![("kvreplica", &self.kvreplica, self.database_id.as_str())];
        if let Some((b, id)) = &self.baseline {
            v.push(("kvreplica baseline", b, id.as_str()));
        }
        if let Some((d, id)) = &self.denokv {
            v.push(("denokv", d, id.as_str()));
        }
        v
    }
}
