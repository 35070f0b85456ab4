//! `kvreplica sync` and `kvreplica pitr` end to end on directory sources:
//! checkouts of the sample backups' recorded states and of every point of
//! a generated backup, corrupt input of every kind, source binding. The
//! scenarios every source must pass (samples, SIGKILL resume, follow) are
//! in `conformance.rs`.

mod common;

use std::path::Path;

use common::fixture::{assert_rows_eq, Fixture, Rng, Spec};
use common::{integrity_ok, pitr_list, read_replica, run, run_ok, Sample};

fn db_arg(db: &Path) -> String {
    db.display().to_string()
}

fn sync_ok(source: &str, db: &Path) {
    run_ok(&["sync", "--source", source, "--db", &db_arg(db)]);
}

fn check_sample(name: &str) {
    let sample = Sample::load(name);
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let db = tmp.path().join("replica.sqlite");
    let source = sample.install_initial(&bucket);

    sync_ok(&source, &db);
    sample.json0.assert_final(&read_replica(&db));
    assert_eq!(
        pitr_list(&db),
        sample.json0.points(),
        "{name}: points after initial sync"
    );

    sample.install_append(&bucket);
    sync_ok(&source, &db);
    sample.json1.assert_final(&read_replica(&db));
    assert_eq!(
        pitr_list(&db),
        sample.json1.points(),
        "{name}: points after append"
    );

    // Every sampled state the generator recorded, by checkout. The initial
    // point is not recoverable (states before it are not consistent), so
    // checking it out must be refused.
    for (point, state) in sample.json1.states() {
        let out = run(&["pitr", "--db", &db_arg(&db), "checkout", &point]);
        if point == sample.json1.initial_point() {
            assert!(
                !out.status.success(),
                "{name}: checkout of the initial point"
            );
            continue;
        }
        assert!(
            out.status.success(),
            "{name}: checkout {point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        sample
            .json1
            .assert_state(&read_replica(&db), state, &format!("{name} at {point}"));
    }
    run_ok(&["pitr", "--db", &db_arg(&db), "checkout", "latest"]);
    sample.json1.assert_final(&read_replica(&db));
    assert!(integrity_ok(&db));
}

#[test]
fn sample_1_syncs_to_its_expected_contents() {
    check_sample("sample-1");
}

#[test]
fn sample_2_syncs_to_its_expected_contents() {
    check_sample("sample-2");
}

fn rfc3339_ms(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[test]
fn generated_backup_round_trips_byte_for_byte() {
    let fx = Fixture::generate(Spec::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("prefix");
    fx.write_initial(&dir);
    let db = tmp.path().join("r.sqlite");
    let source = format!("file://{}/", dir.display());

    sync_ok(&source, &db);
    assert_rows_eq(
        &read_replica(&db),
        &fx.state_at(fx.last_initial),
        "initial bucket",
    );
    let want: Vec<(String, String)> = fx
        .points(fx.last_initial)
        .into_iter()
        .map(|(_, vs, ms)| (vs, rfc3339_ms(ms)))
        .collect();
    assert_eq!(pitr_list(&db), want);

    fx.write_append(&dir);
    sync_ok(&source, &db);
    assert_rows_eq(
        &read_replica(&db),
        &fx.state_at(fx.last_commit()),
        "after append",
    );
    assert_eq!(pitr_list(&db).len(), fx.points(fx.last_commit()).len());
}

#[test]
fn checkout_reaches_every_point_in_random_order() {
    let fx = Fixture::generate(Spec {
        seed: 7,
        post_commits: 30,
        append_commits: 0,
        ..Spec::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("prefix");
    fx.write_initial(&dir);
    let db = tmp.path().join("r.sqlite");
    sync_ok(&format!("file://{}/", dir.display()), &db);

    let mut points = fx.points(fx.last_initial);
    let mut rng = Rng::new(99);
    for i in (1..points.len()).rev() {
        points.swap(i, rng.below(i + 1));
    }
    for (index, vs, _) in &points {
        run_ok(&["pitr", "--db", &db_arg(&db), "checkout", vs]);
        assert_rows_eq(
            &read_replica(&db),
            &fx.state_at(*index),
            &format!("at {vs}"),
        );
    }
    // By time: the newest point at or before it.
    let (index, _, ms) = points[points.len() / 2];
    run_ok(&["pitr", "--db", &db_arg(&db), "checkout", &rfc3339_ms(ms)]);
    let newest_at_time = fx
        .points(fx.last_initial)
        .into_iter()
        .filter(|p| p.2 <= ms)
        .map(|p| p.0)
        .max()
        .unwrap();
    assert!(newest_at_time >= index);
    assert_rows_eq(&read_replica(&db), &fx.state_at(newest_at_time), "by time");
    run_ok(&["pitr", "--db", &db_arg(&db), "checkout", "latest"]);
    assert_rows_eq(&read_replica(&db), &fx.state_at(fx.last_initial), "latest");
    assert!(integrity_ok(&db));
}

/// Syncs the initial bucket, damages the bucket with `damage`, syncs again
/// and checks: non-zero exit, a message naming `object`, the replica
/// unchanged.
fn corrupt_case(label: &str, damage: impl FnOnce(&Fixture, &Path), object: &str) {
    let fx = Fixture::generate(Spec {
        seed: 21,
        append_commits: 20,
        split_commits: false,
        ..Spec::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("prefix");
    fx.write_initial(&dir);
    let db = tmp.path().join("r.sqlite");
    let source = format!("file://{}/", dir.display());
    sync_ok(&source, &db);
    let before = read_replica(&db);
    let points_before = pitr_list(&db);

    damage(&fx, &dir);
    let out = run(&["sync", "--source", &source, "--db", &db_arg(&db)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{label}: sync succeeded on corrupt input"
    );
    let object = if object.is_empty() {
        fx.append[0].0.clone()
    } else {
        object.to_string()
    };
    assert!(
        stderr.contains(&object),
        "{label}: the error does not name {object}:\n{stderr}"
    );
    assert_eq!(read_replica(&db), before, "{label}: the replica changed");
    assert_eq!(pitr_list(&db), points_before, "{label}: the points changed");
    assert!(integrity_ok(&db));
}

#[test]
fn corrupt_log_objects_stop_sync_and_keep_the_last_good_state() {
    // Not protobuf at all.
    corrupt_case(
        "garbage",
        |fx, dir| {
            fx.write_append(dir);
            std::fs::write(dir.join(&fx.append[0].0), b"\xff\xff\xff garbage").unwrap();
        },
        "",
    );
    // Cut short.
    corrupt_case(
        "truncated",
        |fx, dir| {
            fx.write_append(dir);
            let body = &fx.append[0].1;
            std::fs::write(dir.join(&fx.append[0].0), &body[..body.len() / 2]).unwrap();
        },
        "",
    );
    // An object that claims a range starting before the previous one ended.
    corrupt_case(
        "overlap",
        |fx, dir| {
            let (rel, body) = &fx.append[0];
            let prev_last = {
                let last = fx
                    .initial
                    .iter()
                    .rev()
                    .find(|(r, _)| r.starts_with("logs/"))
                    .unwrap();
                last.0[last.0.len() - 4 - 24..last.0.len() - 4].to_string()
            };
            let name = rel.trim_start_matches("logs/");
            let parts: Vec<&str> = name.trim_end_matches(".bin").split('_').collect();
            let bad = format!(
                "logs/{}_{}_{}_{}.bin",
                parts[0], parts[1], prev_last, parts[3]
            );
            std::fs::write(dir.join(&bad), body).unwrap();
        },
        "logs/",
    );
    // A name that is not a backup object name.
    corrupt_case(
        "bad name",
        |_, dir| {
            std::fs::write(dir.join("logs/zz_not_a_log.bin"), b"").unwrap();
        },
        "zz_not_a_log",
    );
}

#[test]
fn out_of_order_entries_are_reported() {
    corrupt_case(
        "out of order",
        |fx, dir| {
            use prost::Message;
            let (rel, body) = &fx.append[0];
            let mut m = denokv_proto::backup::BackupMutationRange::decode(body.as_slice()).unwrap();
            assert!(m.entries.len() >= 2, "fixture object has one entry");
            m.entries.swap(0, 1);
            std::fs::write(dir.join(rel), m.encode_to_vec()).unwrap();
        },
        "",
    );
}

#[test]
fn corrupt_initial_backups_fail_with_the_object_named() {
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "differential not hex",
            Box::new(|dir: &Path| {
                std::fs::write(dir.join("differential"), b"not-a-stamp").unwrap()
            }),
            "differential",
        ),
        (
            "snapshot pairs mismatch",
            Box::new(|dir: &Path| {
                use prost::Message;
                let p = dir.join("snapshots/0001_0000000000000042_0000000000000000.bin");
                let body = std::fs::read(&p).unwrap();
                let mut m =
                    denokv_proto::backup::BackupSnapshotRange::decode(body.as_slice()).unwrap();
                m.metadata_list.pop();
                std::fs::write(&p, m.encode_to_vec()).unwrap();
            }),
            "snapshots/0001_0000000000000042_0000000000000000.bin",
        ),
        (
            "empty prefix",
            Box::new(|dir: &Path| {
                std::fs::remove_dir_all(dir).unwrap();
                std::fs::create_dir_all(dir).unwrap();
            }),
            "no backup",
        ),
    ];
    for (label, damage, needle) in cases {
        let fx = Fixture::generate(Spec::default());
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("prefix");
        fx.write_initial(&dir);
        damage(&dir);
        let db = tmp.path().join("r.sqlite");
        let out = run(&[
            "sync",
            "--source",
            &format!("file://{}/", dir.display()),
            "--db",
            &db_arg(&db),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{label}: sync succeeded");
        assert!(
            stderr.to_lowercase().contains(&needle.to_lowercase()),
            "{label}: error does not mention {needle:?}:\n{stderr}"
        );
    }
}

#[test]
fn a_replica_is_bound_to_its_source() {
    let fx = Fixture::generate(Spec::default());
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    fx.write_initial(&a);
    fx.write_initial(&b);
    let db = tmp.path().join("r.sqlite");
    sync_ok(&format!("file://{}/", a.display()), &db);
    let out = run(&[
        "sync",
        "--source",
        &format!("file://{}/", b.display()),
        "--db",
        &db_arg(&db),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("delete"), "no way out offered:\n{stderr}");
}
