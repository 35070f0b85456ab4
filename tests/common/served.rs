//! A generated backup in a directory bucket, and a `kvreplica serve`
//! (with the test tokens) synced to its newest point: the starting point
//! of the tests that look at a served replica through its admin API and
//! its console.

use std::path::PathBuf;

use super::fixture::{Fixture, Spec};
use super::serve::ServeProcess;

/// A generated backup written to `<tmp>/prefix/`, not served yet.
pub struct Generated {
    pub tmp: tempfile::TempDir,
    pub fx: Fixture,
    /// `file://…/prefix/`.
    pub source: String,
    /// Where the replica goes: `<tmp>/replica.sqlite`.
    pub db: PathBuf,
}

impl Generated {
    /// The default workload of seed `seed`, without later objects.
    pub fn new(seed: u64) -> Generated {
        Generated::with_spec(Spec {
            seed,
            append_commits: 0,
            ..Spec::default()
        })
    }

    /// The workload `spec`.
    pub fn with_spec(spec: Spec) -> Generated {
        let fx = Fixture::generate(spec);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("prefix");
        fx.write_initial(&dir);
        Generated {
            source: format!("file://{}/", dir.display()),
            db: tmp.path().join("replica.sqlite"),
            tmp,
            fx,
        }
    }

    /// `--source` and `--db` for this bucket.
    pub fn args(&self) -> [String; 4] {
        [
            "--source".into(),
            self.source.clone(),
            "--db".into(),
            self.db.display().to_string(),
        ]
    }
}

/// [`Generated`] served, at its newest point.
pub struct Served {
    pub tmp: tempfile::TempDir,
    pub fx: Fixture,
    pub db: PathBuf,
    pub serve: ServeProcess,
    /// (commit index, versionstamp hex, time ms) of every recoverable
    /// point, oldest first.
    pub points: Vec<(usize, String, u64)>,
}

impl Served {
    pub fn start(seed: u64) -> Served {
        let g = Generated::new(seed);
        let args = g.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut serve = ServeProcess::start(&args);
        serve.wait_ready();
        let points = g.fx.points(g.fx.last_initial);
        serve.wait_at(&points.last().unwrap().1);
        Served {
            tmp: g.tmp,
            fx: g.fx,
            db: g.db,
            serve,
            points,
        }
    }
}
