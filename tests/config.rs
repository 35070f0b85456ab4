//! The configuration layer through the binary: `kvreplica check-config`
//! with a config file, environment variables and flags; `*_file` secrets
//! and `$CREDENTIALS_DIRECTORY`; redaction in output and errors; validation
//! errors naming the key and the line; the example files in `config/`;
//! `sync` and `pitr` driven by a config file.
//!
//! Every child runs with an empty environment plus what the test sets, so
//! the developer's own `KVREPLICA_*`/`DENO_KV_*` variables cannot leak in.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ACCESS: &str = "client-token-0001";
const ACCESS_2: &str = "client-token-0002";
const ADMIN: &str = "admin-token-0001";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `kvreplica ARGS` with exactly the environment `env`.
fn kvreplica(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvreplica"));
    c.args(args).env_clear();
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run kvreplica")
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = kvreplica(args, env);
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `check-config`'s output, which must succeed.
fn check(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["check-config"];
    all.extend_from_slice(args);
    let r = run(&all, env);
    assert!(r.ok, "check-config {args:?} failed: {}", r.stderr);
    r.stdout
}

/// `check-config`'s error, which must be one.
fn check_err(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["check-config"];
    all.extend_from_slice(args);
    let r = run(&all, env);
    assert!(!r.ok, "check-config {args:?} succeeded:\n{}", r.stdout);
    assert!(r.stdout.is_empty(), "no settings printed on error");
    r.stderr
}

/// The line of `key = ...` in check-config's output.
fn line_of<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no `{key}` in:\n{out}"))
}

fn assert_no_secret(text: &str) {
    for secret in [ACCESS, ACCESS_2, ADMIN, "s3-secret-key-value"] {
        assert!(!text.contains(secret), "a secret shows in:\n{text}");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const BASE: &str = r#"
source = "s3://file-bucket/prefix/"
db = "/var/lib/kvreplica/file.sqlite"

[sync]
poll_interval = "2s"
page_size = 500

[server]
addr = "127.0.0.1:7001"
access_tokens = ["client-token-0001"]

[log]
level = "warn"
"#;

#[test]
fn precedence_is_flag_then_environment_then_file_then_default() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "k.toml", BASE);

    let out = check(&["--config", &config], &[]);
    assert_eq!(
        line_of(&out, "poll_interval"),
        r#"poll_interval = "2s"                            # file line 6"#
    );
    assert!(line_of(&out, "page_size").ends_with("# file line 7"));
    assert!(line_of(&out, "addr").starts_with(r#"addr = "127.0.0.1:7001""#));
    assert!(line_of(&out, "settle").ends_with("# default"));
    assert!(line_of(&out, "level").starts_with(r#"level = "warn""#));

    let env = [
        ("KVREPLICA_CONFIG", config.as_str()),
        ("KVREPLICA_POLL_INTERVAL", "3s"),
        ("KVREPLICA_ADDR", "127.0.0.1:7002"),
        ("KVREPLICA_DB", "/env.sqlite"),
        ("RUST_LOG", "debug"),
    ];
    let out = check(&[], &env);
    let poll = line_of(&out, "poll_interval");
    assert!(
        poll.starts_with(r#"poll_interval = "3s""#)
            && poll.ends_with("# env KVREPLICA_POLL_INTERVAL"),
        "{poll}"
    );
    assert!(line_of(&out, "addr").starts_with(r#"addr = "127.0.0.1:7002""#));
    assert!(line_of(&out, "db").starts_with(r#"db = "/env.sqlite""#));
    assert!(line_of(&out, "level").ends_with("# env RUST_LOG"));
    assert!(line_of(&out, "page_size").ends_with("# file line 7"));

    let out = check(
        &[
            "--poll-interval",
            "4s",
            "--addr",
            "127.0.0.1:7003",
            "--db",
            "/flag.sqlite",
            "--log-level",
            "error",
        ],
        &env,
    );
    let poll = line_of(&out, "poll_interval");
    assert!(
        poll.starts_with(r#"poll_interval = "4s""#) && poll.ends_with("# flag --poll-interval"),
        "{poll}"
    );
    assert!(line_of(&out, "addr").starts_with(r#"addr = "127.0.0.1:7003""#));
    assert!(line_of(&out, "db").ends_with("# flag --db"));
    assert!(line_of(&out, "level").starts_with(r#"level = "error""#));
    assert!(line_of(&out, "page_size").ends_with("# file line 7"));
}

#[test]
fn the_flags_and_variables_of_before_still_work() {
    let env = [
        ("DENO_KV_S3_BUCKET", "deno-bucket"),
        ("DENO_KV_S3_PREFIX", "backups/x/"),
        ("DENO_KV_SQLITE_PATH", "/deno.sqlite"),
        ("DENO_KV_S3_ENDPOINT", "http://127.0.0.1:9000"),
        ("DENO_KV_ACCESS_TOKEN", ACCESS),
        ("KVREPLICA_ADMIN_TOKEN", ADMIN),
        ("KVREPLICA_POLL_INTERVAL", "50ms"),
    ];
    let out = check(&[], &env);
    assert!(line_of(&out, "source").starts_with(r#"source = "s3://deno-bucket/backups/x/""#));
    assert!(line_of(&out, "source").ends_with("# env DENO_KV_S3_BUCKET"));
    assert!(line_of(&out, "db").starts_with(r#"db = "/deno.sqlite""#));
    assert!(line_of(&out, "endpoint").starts_with(r#"endpoint = "http://127.0.0.1:9000""#));
    assert!(line_of(&out, "access_tokens").ends_with("# env DENO_KV_ACCESS_TOKEN"));
    assert!(line_of(&out, "token").ends_with("# env KVREPLICA_ADMIN_TOKEN"));
    assert!(line_of(&out, "poll_interval").starts_with(r#"poll_interval = "50ms""#));
    assert_no_secret(&out);

    let out = check(
        &[
            "--source",
            "file:///srv/backup/",
            "--db",
            "/r.sqlite",
            "--access-token",
            ACCESS,
            "--access-token",
            ACCESS_2,
            "--admin-token",
            ADMIN,
            "--settle",
            "2s",
            "--fetch-concurrency",
            "1",
            "--page-size",
            "3",
            "--retain-points",
            "10",
            "--retain-for",
            "7d",
            "--readers",
            "2",
            "--s3-path-style",
            "true",
        ],
        &[],
    );
    assert!(line_of(&out, "access_tokens")
        .starts_with(r#"access_tokens = ["<redacted>", "<redacted>"]"#));
    assert!(line_of(&out, "retain_for").starts_with(r#"retain_for = "7days""#));
    assert!(line_of(&out, "path_style").starts_with("path_style = true"));
    assert_no_secret(&out);
}

#[test]
fn secrets_come_from_files_in_the_credentials_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    write(
        &creds,
        "access-tokens",
        &format!("# current and next\n{ACCESS}\n{ACCESS_2}\n"),
    );
    write(&creds, "admin-token", &format!("{ADMIN}\n"));
    write(&creds, "s3-secret", "s3-secret-key-value\n");
    let config = write(
        tmp.path(),
        "k.toml",
        r#"
source = "s3://b/p/"
db = "/r.sqlite"
[s3]
access_key_id = "AKIAIOSFODNN7EXAMPLE"
secret_access_key_file = "s3-secret"
[server]
access_tokens_file = "access-tokens"
[admin]
token_file = "admin-token"
"#,
    );
    let creds_dir = creds.display().to_string();
    let out = check(
        &["--config", &config],
        &[("CREDENTIALS_DIRECTORY", &creds_dir)],
    );
    assert!(line_of(&out, "access_tokens_file").starts_with(&format!(
        "access_tokens_file = \"{creds_dir}/access-tokens\""
    )));
    assert!(line_of(&out, "token_file")
        .starts_with(&format!("token_file = \"{creds_dir}/admin-token\"")));
    assert!(
        line_of(&out, "secret_access_key_file").starts_with(&format!(
            "secret_access_key_file = \"{creds_dir}/s3-secret\""
        ))
    );
    assert!(line_of(&out, "access_key_id").contains("AKIAIOSFODNN7EXAMPLE"));
    assert_no_secret(&out);

    // Without the credentials directory the relative names do not resolve.
    let e = check_err(&["--config", &config], &[]);
    assert!(
        e.contains("s3.secret_access_key_file") && e.contains("line 6"),
        "{e}"
    );

    // The environment's _FILE variables work the same way.
    let out = check(
        &["--source", "s3://b/p/", "--db", "/r.sqlite"],
        &[
            ("CREDENTIALS_DIRECTORY", &creds_dir),
            ("KVREPLICA_ACCESS_TOKENS_FILE", "access-tokens"),
            ("KVREPLICA_ADMIN_TOKEN_FILE", "admin-token"),
        ],
    );
    assert!(line_of(&out, "access_tokens_file").ends_with("# env KVREPLICA_ACCESS_TOKENS_FILE"));
    assert_no_secret(&out);
}

#[test]
fn secrets_never_show_in_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        // A secret of the wrong type.
        format!("source = \"s3://b/p/\"\ndb = \"/r\"\n[server]\naccess_tokens = \"{ACCESS}\"\n"),
        // The admin token equal to an access token.
        format!(
            "source = \"s3://b/p/\"\ndb = \"/r\"\n[server]\naccess_tokens = [\"{ACCESS}\"]\n\
             [admin]\ntoken = \"{ACCESS}\"\n"
        ),
        // A token with a space, and one given twice.
        format!("source = \"s3://b/p/\"\ndb = \"/r\"\n[server]\naccess_tokens = [\"{ACCESS} {ACCESS_2}\"]\n"),
        format!(
            "source = \"s3://b/p/\"\ndb = \"/r\"\n[server]\naccess_tokens = [\"{ACCESS}\"]\n\
             [admin]\ntoken = \"{ADMIN}\"\ntoken_file = \"x\"\n"
        ),
        // Unquoted: a TOML syntax error on a secret's line.
        format!("[admin]\ntoken = {ADMIN}\n"),
    ];
    for (i, text) in cases.iter().enumerate() {
        let config = write(tmp.path(), &format!("c{i}.toml"), text);
        let e = check_err(&["--config", &config], &[]);
        assert!(e.contains(&config), "{e}");
        assert_no_secret(&e);
    }
    let e = check_err(
        &[
            "--source",
            "s3://b/p/",
            "--db",
            "/r",
            "--access-token",
            ADMIN,
        ],
        &[("KVREPLICA_ADMIN_TOKEN", ADMIN)],
    );
    assert!(e.contains("admin.token"), "{e}");
    assert_no_secret(&e);
}

#[test]
fn validation_errors_name_the_key_and_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let head = "source = \"s3://b/p/\"\ndb = \"/r.sqlite\"\n[server]\naccess_tokens = [\"client-token-0001\"]\n";
    // (text after the 4 head lines, key named, line)
    let cases: &[(&str, &str, usize)] = &[
        (
            "[sync]\npoll_intervall = \"1s\"\n",
            "sync.poll_intervall",
            6,
        ),
        ("readers = 2\n[metrics]\n", "metrics", 6),
        ("readers = \"two\"\n", "server.readers", 5),
        ("readers = 0\n", "server.readers", 5),
        (
            "[sync]\npoll_interval = \"soon\"\n",
            "sync.poll_interval",
            6,
        ),
        ("[sync]\npoll_interval = \"0s\"\n", "sync.poll_interval", 6),
        ("[sync]\nrequest_timeout = 30\n", "sync.request_timeout", 6),
        ("[sync]\npage_size = 5000\n", "sync.page_size", 6),
        (
            "[sync]\nfetch_concurrency = 0\n",
            "sync.fetch_concurrency",
            6,
        ),
        (
            "[sync]\nmax_mib_in_flight = -1\n",
            "sync.max_mib_in_flight",
            6,
        ),
        ("[sync]\nretain_points = 0\n", "sync.retain_points", 6),
        ("[sync]\nretain_for = \"forever\"\n", "sync.retain_for", 6),
        ("addr = \"0.0.0.0\"\n", "server.addr", 5),
        // A host name needs its port (`localhost:4513` is an address).
        ("[admin]\naddr = \"localhost\"\n", "admin.addr", 6),
        ("[admin]\ntoken = \"short\"\n", "admin.token", 6),
        ("[admin]\ntoken = \"client-token-0001\"\n", "admin.token", 6),
        (
            "[admin]\ntoken = \"admin-token-0001\"\ntoken_file = \"f\"\n",
            "admin.token_file",
            6,
        ),
        (
            "access_tokens_file = \"f\"\n",
            "server.access_tokens_file",
            4,
        ),
        (
            "[admin]\ntoken_file = \"/nonexistent/admin\"\n",
            "admin.token_file",
            6,
        ),
        (
            "[gcs]\ncredentials_file = \"/nonexistent/key.json\"\n",
            "gcs.credentials_file",
            6,
        ),
        ("[s3]\nregion = \"\"\n", "s3.region", 6),
        ("[s3]\npath_style = \"yes\"\n", "s3.path_style", 6),
        ("[log]\nlevel = \"loud\"\n", "log.level", 6),
        ("[log]\nformat = \"xml\"\n", "log.format", 6),
        ("[sync]\nsettle = \"1s\n", "not valid TOML", 6),
    ];
    for (i, (tail, key, line)) in cases.iter().enumerate() {
        let config = write(tmp.path(), &format!("c{i}.toml"), &format!("{head}{tail}"));
        let e = check_err(&["--config", &config], &[]);
        assert!(
            e.contains(key) && e.contains(&config) && e.contains(&format!("line {line}")),
            "case {i}: {e:?} should name {key} at line {line}"
        );
    }

    let config = write(tmp.path(), "src.toml", "source = \"ftp://b/\"\n");
    let e = check_err(&["--config", &config], &[]);
    assert!(e.contains("source") && e.contains("line 1"), "{e}");
    let e = check_err(
        &[
            "--config",
            &tmp.path().join("none.toml").display().to_string(),
        ],
        &[],
    );
    assert!(e.contains("cannot read the config file"), "{e}");

    // Errors outside the file name the variable or the flag.
    let base = [
        "--source",
        "s3://b/p/",
        "--db",
        "/r",
        "--access-token",
        ACCESS,
    ];
    let e = check_err(&base, &[("KVREPLICA_SETTLE", "later")]);
    assert!(
        e.contains("sync.settle") && e.contains("KVREPLICA_SETTLE"),
        "{e}"
    );
    let e = check_err(&base, &[("KVREPLICA_S3_PATH_STYLE", "maybe")]);
    assert!(e.contains("s3.path_style"), "{e}");
    let mut args = base.to_vec();
    args.extend(["--addr", "127.0.0.1:4600", "--admin-addr", "127.0.0.1:4600"]);
    let e = check_err(&args, &[]);
    assert!(e.contains("admin.addr"), "{e}");
    let e = check_err(&["--db", "/r", "--access-token", ACCESS], &[]);
    assert!(e.contains("source is not set"), "{e}");
    let e = check_err(&["--source", "s3://b/p/", "--access-token", ACCESS], &[]);
    assert!(e.contains("db is not set"), "{e}");
    let e = check_err(&["--source", "s3://b/p/", "--db", "/r"], &[]);
    assert!(e.contains("server.access_tokens is not set"), "{e}");
    let e = check_err(
        &base,
        &[("KVREPLICA_S3_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")],
    );
    assert!(e.contains("s3.secret_access_key is not set"), "{e}");
    let e = check_err(
        &base,
        &[
            ("KVREPLICA_ACCESS_TOKEN", ACCESS),
            ("KVREPLICA_ACCESS_TOKENS_FILE", "f"),
        ],
    );
    assert!(e.contains("KVREPLICA_ACCESS_TOKENS_FILE"), "{e}");
}

#[test]
fn the_example_configs_are_valid() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "access-token", &format!("{ACCESS}\n"));
    write(tmp.path(), "admin-token", &format!("{ADMIN}\n"));
    write(tmp.path(), "gcs-key.json", "{}\n");
    let creds = tmp.path().display().to_string();
    for name in [
        "kvreplica-s3.toml",
        "kvreplica-gcs.toml",
        "kvreplica-dir.toml",
    ] {
        let config = root().join("config").join(name).display().to_string();
        // As under the systemd unit: the secrets are credentials.
        let out = check(&["--config", &config], &[("CREDENTIALS_DIRECTORY", &creds)]);
        assert!(out.contains(&format!("# Config file: {config}")), "{out}");
        assert!(
            line_of(&out, "access_tokens_file").contains(&format!("{creds}/access-token")),
            "{out}"
        );
        assert_no_secret(&out);
    }
}

#[test]
fn sync_and_pitr_take_a_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let backup = root().join("examples/sample-backup");
    let db = tmp.path().join("replica.sqlite");
    let config = write(
        tmp.path(),
        "k.toml",
        &format!(
            "source = \"file://{}/\"\ndb = {:?}\n[server]\naccess_tokens_file = \"/unread\"\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n",
            backup.display(),
            db.display().to_string()
        ),
    );
    let r = run(&["sync", "--config", &config], &[]);
    assert!(r.ok, "sync failed: {}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
    }
    assert!(db.exists());

    let r = run(&["pitr", "--config", &config, "info"], &[]);
    assert!(r.ok, "pitr failed: {}", r.stderr);
    assert!(r.stdout.contains("current versionstamp"), "{}", r.stdout);
}

#[test]
fn serve_refuses_a_bad_config_before_starting() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(
        tmp.path(),
        "k.toml",
        &format!("{BASE}[admin]\ntoken = \"{ACCESS}\"\n"),
    );
    let r = run(&["serve", "--config", &config], &[]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("admin.token") && r.stderr.contains("line 16"),
        "{}",
        r.stderr
    );
    assert_no_secret(&r.stderr);
}

/// A bad value reads the same from a flag, a variable and the file: the
/// key, where it came from, and what to write instead.
#[test]
fn a_bad_value_gets_one_message_wherever_it_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [("KVREPLICA_ACCESS_TOKEN", ACCESS)];
    let base = ["--source", "file:///tmp/b/", "--db", "/tmp/r.sqlite"];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(extra).copied().collect()
    }
    let reason = |e: &str, key: &str| -> String {
        let line = e
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no {key} in {e}"));
        let from_key = &line[line.find(key).unwrap()..];
        from_key
            .split_once(": ")
            .map(|(_, r)| r.to_string())
            .unwrap_or_default()
    };
    for (key, flag, var, value) in [
        (
            "sync.poll_interval",
            "--poll-interval",
            "KVREPLICA_POLL_INTERVAL",
            "5 parsecs",
        ),
        ("server.addr", "--addr", "KVREPLICA_ADDR", "nowhere"),
        (
            "admin.addr",
            "--admin-addr",
            "KVREPLICA_ADMIN_ADDR",
            "127.0.0.1:port",
        ),
    ] {
        let from_flag = check_err(&with(&base, &[flag, value]), &env);
        let mut env_too = env.to_vec();
        env_too.push((var, value));
        let from_env = check_err(&with(&base, &[]), &env_too);
        let (table, leaf) = key.split_once('.').unwrap();
        let config = write(
            tmp.path(),
            "bad.toml",
            &format!("[{table}]\n{leaf} = {value:?}\n"),
        );
        let from_file = check_err(&with(&base, &["--config", &config]), &env);
        assert!(
            from_flag.contains(&format!("{key} from flag {flag}")),
            "{from_flag}"
        );
        assert!(
            from_env.contains(&format!("{key} from environment variable {var}")),
            "{from_env}"
        );
        assert!(
            from_file.contains(&format!("{key} in {config} line 2")),
            "{from_file}"
        );
        let r = reason(&from_flag, key);
        assert_eq!(r, reason(&from_env, key), "{from_flag}\n{from_env}");
        assert_eq!(r, reason(&from_file, key), "{from_flag}\n{from_file}");
        assert!(
            !r.contains("expected number") && !r.contains("invalid socket"),
            "{r}"
        );
        assert!(r.contains("write"), "{r}");
    }
}

/// Host names and `:PORT` are listener addresses, from a flag, a variable
/// or the file.
#[test]
fn addresses_take_host_names_and_the_port_alone() {
    let env = [("KVREPLICA_ACCESS_TOKEN", ACCESS)];
    let base = ["--source", "file:///tmp/b/", "--db", "/tmp/r.sqlite"];
    let out = check(
        &[
            &base[..],
            &["--addr", "localhost:4512", "--admin-addr", ":4513"],
        ]
        .concat(),
        &env,
    );
    assert!(line_of(&out, "addr").contains("127.0.0.1:4512"), "{out}");
    assert!(out.contains("0.0.0.0:4513"), "{out}");
    let mut env_too = env.to_vec();
    env_too.push(("KVREPLICA_ADDR", ":4600"));
    let out = check(&base, &env_too);
    assert!(line_of(&out, "addr").contains("0.0.0.0:4600"), "{out}");
}

/// `source` (the example backup) and `db` (in `dir`) as config lines.
fn sample_config(dir: &Path) -> String {
    format!(
        "source = \"file://{}/\"\ndb = {:?}\n",
        root().join("examples/sample-backup").display(),
        dir.join("replica.sqlite").display().to_string()
    )
}

/// `sync` and `pitr` do not use the `[server]` and `[admin]` keys: a bad
/// value there is reported as a warning and they go on; an unknown key is
/// still an error.
#[test]
fn sync_and_pitr_go_on_over_a_bad_key_they_do_not_use() {
    let tmp = tempfile::tempdir().unwrap();
    let backup_and_db = sample_config(tmp.path());
    let config = write(
        tmp.path(),
        "k.toml",
        &format!(
            "{backup_and_db}[server]\naddr = \"nowhere\"\nreaders = 0\n\
             [admin]\naddr = \"127.0.0.1:port\"\n"
        ),
    );
    let r = run(&["sync", "--config", &config], &[]);
    assert!(r.ok, "sync failed: {}", r.stderr);
    assert!(r.stderr.contains("WARN"), "{}", r.stderr);
    assert!(
        r.stderr.contains("server.addr") && r.stderr.contains("line 4"),
        "{}",
        r.stderr
    );
    let r = run(&["pitr", "--config", &config, "info"], &[]);
    assert!(r.ok, "pitr failed: {}", r.stderr);
    assert!(r.stdout.contains("current versionstamp"), "{}", r.stdout);
    // serve and check-config use them: still an error.
    let e = check_err(
        &["--config", &config],
        &[("KVREPLICA_ACCESS_TOKEN", ACCESS)],
    );
    assert!(e.contains("server.addr") || e.contains("admin.addr"), "{e}");
    // An unknown key is an error for every command.
    let typo = write(
        tmp.path(),
        "typo.toml",
        &format!("{backup_and_db}[server]\nadress = \"x\"\n"),
    );
    for args in [
        vec!["sync", "--config", &typo],
        vec!["pitr", "--config", &typo, "info"],
    ] {
        let r = run(&args, &[]);
        assert!(
            !r.ok && r.stderr.contains("unknown key `server.adress`"),
            "{args:?}: {}",
            r.stderr
        );
    }
    // sync --help names every key it reads, db included.
    let help = run(&["sync", "--help"], &[]).stdout;
    let config_help: String = help
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("--config"))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || !l.trim_start().starts_with('-'))
        .map(|(_, l)| l.trim())
        .collect::<Vec<_>>()
        .join(" ");
    for key in ["source", "db", "[s3]", "[gcs]", "[sync]", "[log]"] {
        assert!(config_help.contains(key), "{key} missing: {config_help}");
    }
}

/// The README's install steps (section "Run under systemd"), run as written
/// in a scratch root: `/etc` and `/etc/systemd/system` moved under it, the
/// `kvreplica` group left out, and the steps that need root and systemd
/// (`useradd`, `systemctl`, `journalctl`) skipped. `check-config` runs from
/// the repository, not from the config's directory, as an operator would.
#[test]
fn the_readme_install_steps_work_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Run under systemd")
        .nth(1)
        .expect("a Run under systemd section");
    let steps = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("an sh block of install steps");
    assert!(steps.contains("check-config"), "{steps}");
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().display().to_string();
    std::fs::create_dir_all(tmp.path().join("etc/systemd/system")).unwrap();
    let bin = env!("CARGO_BIN_EXE_kvreplica");
    let mut ran = 0;
    for line in steps.lines() {
        let line = line.trim();
        if line.is_empty()
            || ["useradd ", "systemctl ", "journalctl "]
                .iter()
                .any(|c| line.starts_with(c))
        {
            continue;
        }
        let line = line
            .replace(" -g kvreplica", "")
            .replace("/etc/", &format!("{scratch}/etc/"))
            .replace("kvreplica check-config", &format!("{bin} check-config"));
        let out = Command::new("sh")
            .args(["-ec", &line])
            .current_dir(root())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README step failed: {line}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 5, "{steps}");
}

/// Outside systemd a relative secret file that is not found says where
/// it was looked for and how to set `$CREDENTIALS_DIRECTORY`.
#[test]
fn a_relative_secret_file_outside_systemd_says_how_to_find_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = root()
        .join("config/kvreplica-s3.toml")
        .display()
        .to_string();
    let e = check_err(&["--config", &config], &[]);
    assert!(e.contains("access-token"), "{e}");
    assert!(e.contains("$CREDENTIALS_DIRECTORY"), "{e}");
    assert!(
        e.contains(&format!(
            "CREDENTIALS_DIRECTORY={} kvreplica check-config",
            root().join("config").display()
        )),
        "{e}"
    );
    // Under systemd (the variable set) the message is the plain one.
    let creds = tmp.path().display().to_string();
    let e = check_err(&["--config", &config], &[("CREDENTIALS_DIRECTORY", &creds)]);
    assert!(!e.contains("is looked up in"), "{e}");
}

/// Every command line the README shows keeps tokens off it: a token as a
/// flag value or in curl's arguments is visible to every local user in the
/// process list. The file forms are shown instead.
#[test]
fn the_readme_keeps_tokens_off_command_lines() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut in_code = false;
    for (n, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        for bad in [
            "--access-token ",
            "--admin-token ",
            "Bearer $",
            "token \"$(",
        ] {
            assert!(
                !line.contains(bad),
                "README.md line {}: a token on a command line ({bad:?}): {line}",
                n + 1
            );
        }
    }
    for form in [
        "--access-tokens-file",
        "--admin-token-file",
        "KVREPLICA_ACCESS_TOKENS_FILE",
    ] {
        assert!(readme.contains(form), "README.md does not show {form}");
    }
}
