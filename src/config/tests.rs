//! Resolution against a fake environment and files in a temporary
//! directory: precedence, `*_file` secrets, redaction, every validation
//! error.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

const ACCESS: &str = "client-token-0001";
const ACCESS_2: &str = "client-token-0002";
const ADMIN: &str = "admin-token-0001";

/// Settings of `serve` with source, replica file and an access token
/// given as flags, `flags` applied after them, in environment `env`.
pub(super) fn serve_settings(flags: impl FnOnce(&mut Flags), env: &[(&str, &str)]) -> Settings {
    let mut c = Case::serve().flags(flags);
    for (name, value) in env {
        c = c.env(name, value);
    }
    c.ok()
}

/// One resolution's inputs.
struct Case {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
    inputs: Inputs,
}

impl Case {
    /// No key set anywhere.
    fn bare() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
            env: HashMap::new(),
            inputs: Inputs {
                config: None,
                flags: Flags::default(),
                purpose: Purpose::Serve,
            },
        }
    }

    /// Source, replica file and an access token given as flags.
    fn serve() -> Case {
        let mut c = Case::bare();
        c.inputs.flags.set("source", "file:///srv/backup/");
        c.inputs
            .flags
            .set("db", "/var/lib/kvreplica/replica.sqlite");
        c.inputs.flags.set("server.access_tokens", ACCESS);
        c
    }

    /// Writes the config file.
    fn file(mut self, text: &str) -> Case {
        let path = self.write("kvreplica.toml", text);
        self.inputs.config = Some(path);
        self
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn config_path(&self) -> String {
        self.dir.path().join("kvreplica.toml").display().to_string()
    }

    fn env(mut self, name: &str, value: &str) -> Case {
        self.env.insert(name.into(), value.into());
        self
    }

    fn flags(mut self, f: impl FnOnce(&mut Flags)) -> Case {
        f(&mut self.inputs.flags);
        self
    }

    fn resolve(&self) -> Result<Settings, ConfigError> {
        resolve_with(&self.inputs, &|name| self.env.get(name).cloned())
    }

    fn ok(&self) -> Settings {
        self.resolve()
            .unwrap_or_else(|e| panic!("unexpected error: {e}"))
    }

    /// The error message, checked to name `key` (and to leak no secret).
    fn err(&self, key: &str) -> String {
        let e = match self.resolve() {
            Ok(s) => panic!("expected an error about {key}, got {s:?}"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(key), "{e:?} does not name {key}");
        for secret in [
            ACCESS,
            ACCESS_2,
            ADMIN,
            "secret-token-value",
            "s3-secret-key-value",
        ] {
            assert!(!e.contains(secret), "{e:?} shows a secret");
        }
        e
    }

    /// The error message, checked to name `key`, the config file and `line`.
    fn err_at(&self, key: &str, line: usize) -> String {
        let e = self.err(key);
        assert!(
            e.contains(&self.config_path()) && e.contains(&format!("line {line}")),
            "{e:?} does not point at line {line} of the config file"
        );
        e
    }
}

#[test]
fn defaults_are_those_of_the_flags_before() {
    let s = Case::serve().ok();
    assert_eq!(s.sync.poll_interval, Duration::from_secs(1));
    assert_eq!(s.sync.settle, Duration::ZERO);
    assert_eq!(s.sync.fetch_concurrency, 64);
    assert_eq!(s.sync.max_bytes_in_flight, 16 << 20);
    assert_eq!(s.sync.page_size, 1000);
    assert_eq!(s.remote.request_timeout, Duration::from_secs(30));
    assert!(s.sync.retention.is_unlimited());
    assert_eq!(s.addr, "0.0.0.0:4512".parse().unwrap());
    assert_eq!(s.admin_addr, "127.0.0.1:4513".parse().unwrap());
    assert_eq!(s.readers, crate::server::default_readers());
    assert_eq!(s.admin_token, None);
    assert_eq!(
        s.log,
        LogSettings {
            level: "info".into(),
            format: LogFormat::Plain
        }
    );
    assert_eq!(s.s3.endpoint, None);
    assert_eq!(s.s3.path_style, None);
    assert!(s.s3_credentials.is_none());
    assert_eq!(s.origin("sync.poll_interval"), Some(&Origin::Default));
    assert_eq!(s.origin("source"), Some(&Origin::Flag("--source")));
    assert_eq!(s.origin("s3.region"), None);
    assert!(s.watched_files().is_empty());
}

#[test]
fn flags_beat_environment_beats_file_beats_defaults() {
    let file = r#"
source = "s3://from-file/p/"
db = "/file.sqlite"
[sync]
poll_interval = "2s"
page_size = 100
[server]
addr = "127.0.0.1:1001"
readers = 5
access_tokens = ["client-token-0001"]
[log]
level = "warn"
"#;
    let only_file = Case::bare().file(file);
    let s = only_file.ok();
    assert_eq!(s.source.to_string(), "s3://from-file/p/");
    assert_eq!(s.db, PathBuf::from("/file.sqlite"));
    assert_eq!(s.sync.poll_interval, Duration::from_secs(2));
    assert_eq!(s.sync.page_size, 100);
    assert_eq!(s.addr, "127.0.0.1:1001".parse().unwrap());
    assert_eq!(s.readers, 5);
    assert_eq!(s.log.level, "warn");
    assert_eq!(
        s.origin("sync.poll_interval"),
        Some(&Origin::File {
            path: PathBuf::from(only_file.config_path()),
            line: 5
        })
    );

    let with_env = Case::bare()
        .file(file)
        .env("KVREPLICA_SOURCE", "gs://from-env/p/")
        .env("KVREPLICA_DB", "/env.sqlite")
        .env("KVREPLICA_POLL_INTERVAL", "3s")
        .env("KVREPLICA_ADDR", "127.0.0.1:1002")
        .env("KVREPLICA_LOG_LEVEL", "debug");
    let s = with_env.ok();
    assert_eq!(s.source.to_string(), "gs://from-env/p/");
    assert_eq!(s.db, PathBuf::from("/env.sqlite"));
    assert_eq!(s.sync.poll_interval, Duration::from_secs(3));
    assert_eq!(s.sync.page_size, 100, "a key the environment leaves alone");
    assert_eq!(s.addr, "127.0.0.1:1002".parse().unwrap());
    assert_eq!(s.log.level, "debug");
    assert_eq!(
        s.origin("sync.poll_interval"),
        Some(&Origin::Env("KVREPLICA_POLL_INTERVAL"))
    );

    let s = with_env
        .flags(|f| {
            f.set("source", "file:///from-flag/");
            f.set("db", "/flag.sqlite");
            f.set("sync.poll_interval", "4s");
            f.set("server.addr", "127.0.0.1:1003");
            f.set("server.readers", "7");
            f.set("log.level", "error");
        })
        .ok();
    assert_eq!(s.source.to_string(), "file:///from-flag/");
    assert_eq!(s.db, PathBuf::from("/flag.sqlite"));
    assert_eq!(s.sync.poll_interval, Duration::from_secs(4));
    assert_eq!(s.addr, "127.0.0.1:1003".parse().unwrap());
    assert_eq!(s.readers, 7);
    assert_eq!(s.log.level, "error");
    assert_eq!(
        s.origin("sync.poll_interval"),
        Some(&Origin::Flag("--poll-interval"))
    );
    assert_eq!(s.sync.page_size, 100);
}

#[test]
fn kvreplica_names_beat_denokv_names() {
    let c = Case::bare()
        .env("DENO_KV_S3_BUCKET", "deno-bucket")
        .env("DENO_KV_S3_PREFIX", "backups/x")
        .env("DENO_KV_SQLITE_PATH", "/deno.sqlite")
        .env("DENO_KV_S3_ENDPOINT", "http://127.0.0.1:9000")
        .env("DENO_KV_ACCESS_TOKEN", ACCESS)
        .env("RUST_LOG", "kvreplica=trace");
    let s = c.ok();
    assert_eq!(s.source.to_string(), "s3://deno-bucket/backups/x/");
    assert_eq!(s.db, PathBuf::from("/deno.sqlite"));
    assert_eq!(s.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(s.access_tokens, vec![ACCESS.to_string()]);
    assert_eq!(s.log.level, "kvreplica=trace", "RUST_LOG's own syntax");
    assert_eq!(s.origin("db"), Some(&Origin::Env("DENO_KV_SQLITE_PATH")));

    let s = c
        .env("KVREPLICA_SOURCE", "s3://own/p/")
        .env("KVREPLICA_DB", "/own.sqlite")
        .env("KVREPLICA_S3_ENDPOINT", "http://127.0.0.1:9001")
        .env("KVREPLICA_ACCESS_TOKEN", ACCESS_2)
        .env("KVREPLICA_LOG_LEVEL", "warn")
        .ok();
    assert_eq!(s.source.to_string(), "s3://own/p/");
    assert_eq!(s.db, PathBuf::from("/own.sqlite"));
    assert_eq!(s.s3.endpoint.as_deref(), Some("http://127.0.0.1:9001"));
    assert_eq!(s.access_tokens, vec![ACCESS_2.to_string()]);
    assert_eq!(s.log.level, "warn");
}

#[test]
fn rust_log_beats_the_file_level() {
    let c = Case::serve().file("[log]\nlevel = \"warn\"\n");
    assert_eq!(c.ok().log.level, "warn");
    assert_eq!(c.env("RUST_LOG", "debug").ok().log.level, "debug");
}

#[test]
fn every_key_can_come_from_the_environment() {
    let c = Case::bare()
        .env("KVREPLICA_SOURCE", "s3://b/p/")
        .env("KVREPLICA_DB", "/r.sqlite")
        .env("KVREPLICA_S3_ENDPOINT", "http://127.0.0.1:9000")
        .env("KVREPLICA_S3_REGION", "eu-west-1")
        .env("KVREPLICA_S3_PATH_STYLE", "false")
        .env("KVREPLICA_S3_ACCESS_KEY_ID", "AKIAEXAMPLE")
        .env("KVREPLICA_S3_SECRET_ACCESS_KEY", "s3-secret-key-value")
        .env("KVREPLICA_GCS_ENDPOINT", "http://127.0.0.1:4443")
        .env("KVREPLICA_POLL_INTERVAL", "250ms")
        .env("KVREPLICA_SETTLE", "2s")
        .env("KVREPLICA_FETCH_CONCURRENCY", "3")
        .env("KVREPLICA_MAX_MIB_IN_FLIGHT", "8")
        .env("KVREPLICA_PAGE_SIZE", "50")
        .env("KVREPLICA_REQUEST_TIMEOUT", "5s")
        .env("KVREPLICA_RETAIN_POINTS", "10")
        .env("KVREPLICA_RETAIN_FOR", "7d")
        .env("KVREPLICA_ADDR", "127.0.0.1:5000")
        .env("KVREPLICA_ACCESS_TOKEN", ACCESS)
        .env("KVREPLICA_READERS", "2")
        .env("KVREPLICA_ADMIN_ADDR", "127.0.0.1:5001")
        .env("KVREPLICA_ADMIN_TOKEN", ADMIN)
        .env("KVREPLICA_LOG_LEVEL", "debug")
        .env("KVREPLICA_LOG_FORMAT", "json");
    let key_file = c.write("gcs.json", "{}");
    let s = c
        .env("KVREPLICA_GCS_CREDENTIALS_FILE", key_file.to_str().unwrap())
        .ok();
    assert_eq!(s.s3.region.as_deref(), Some("eu-west-1"));
    assert_eq!(s.s3.path_style, Some(false));
    let keys = s.s3_credentials.as_ref().unwrap();
    assert_eq!(keys.access_key_id, "AKIAEXAMPLE");
    assert_eq!(keys.secret_access_key, "s3-secret-key-value");
    assert_eq!(s.gcs.credentials_file.as_deref(), Some(key_file.as_path()));
    assert_eq!(s.gcs.endpoint.as_deref(), Some("http://127.0.0.1:4443"));
    assert_eq!(s.sync.poll_interval, Duration::from_millis(250));
    assert_eq!(s.sync.settle, Duration::from_secs(2));
    assert_eq!(s.sync.fetch_concurrency, 3);
    assert_eq!(s.sync.max_bytes_in_flight, 8 << 20);
    assert_eq!(s.sync.page_size, 50);
    assert_eq!(s.remote.request_timeout, Duration::from_secs(5));
    assert_eq!(s.sync.retention.max_points, Some(10));
    assert_eq!(
        s.sync.retention.max_age,
        Some(Duration::from_secs(7 * 86400))
    );
    assert_eq!(s.admin_addr, "127.0.0.1:5001".parse().unwrap());
    assert_eq!(s.admin_token.as_deref(), Some(ADMIN));
    assert_eq!(s.readers, 2);
    assert_eq!(s.log.format, LogFormat::Json);
    assert!(s.open_source().is_ok());
}

#[test]
fn secrets_from_files_lose_the_trailing_newline() {
    let c = Case::serve();
    let admin = c.write("admin-token", &format!("{ADMIN}\n"));
    let tokens = c.write(
        "tokens",
        &format!("# rotated on Monday\n{ACCESS}\r\n\n  {ACCESS_2}  \n"),
    );
    let s3 = c.write("s3-secret", "s3-secret-key-value\n");
    let s = c
        .flags(|f| f.unset("server.access_tokens"))
        .file(&format!(
            "[s3]\naccess_key_id = \"AKIAEXAMPLE\"\nsecret_access_key_file = {s3:?}\n\
             [server]\naccess_tokens_file = {tokens:?}\n[admin]\ntoken_file = {admin:?}\n"
        ))
        .ok();
    assert_eq!(s.admin_token.as_deref(), Some(ADMIN));
    assert_eq!(
        s.access_tokens,
        vec![ACCESS.to_string(), ACCESS_2.to_string()]
    );
    assert_eq!(
        s.s3_credentials.as_ref().unwrap().secret_access_key,
        "s3-secret-key-value"
    );
    let mut watched = s.watched_files().to_vec();
    watched.sort();
    let mut expected = vec![admin, s3, tokens, s.inputs().config.clone().unwrap()];
    expected.sort();
    assert_eq!(watched, expected);
}

#[test]
fn relative_secret_files_are_found_in_the_credentials_directory() {
    let c = Case::serve();
    std::fs::create_dir(c.dir.path().join("creds")).unwrap();
    c.write("creds/admin", ADMIN);
    c.write("creds/tokens", ACCESS_2);
    c.write("creds/gcs.json", "{}");
    let creds = c.dir.path().join("creds");
    let s = c
        .flags(|f| f.unset("server.access_tokens"))
        .env("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())
        .env("KVREPLICA_ADMIN_TOKEN_FILE", "admin")
        .env("KVREPLICA_ACCESS_TOKENS_FILE", "tokens")
        .env("KVREPLICA_GCS_CREDENTIALS_FILE", "gcs.json")
        .ok();
    assert_eq!(s.admin_token.as_deref(), Some(ADMIN));
    assert_eq!(s.access_tokens, vec![ACCESS_2.to_string()]);
    assert_eq!(s.gcs.credentials_file, Some(creds.join("gcs.json")));
    assert!(s.watched_files().contains(&creds.join("admin")));
}

#[test]
fn a_higher_layer_replaces_both_forms_of_a_secret() {
    let c = Case::serve();
    let admin = c.write("admin", ADMIN);
    let c = c.file(&format!("[admin]\ntoken_file = {admin:?}\n"));
    assert_eq!(c.ok().admin_token.as_deref(), Some(ADMIN));
    let s = c
        .flags(|f| f.set("admin.token", "admin-token-from-flag"))
        .ok();
    assert_eq!(s.admin_token.as_deref(), Some("admin-token-from-flag"));
    assert!(s.watched_files().iter().all(|p| p != &admin));
}

#[test]
fn secrets_are_redacted() {
    let c = Case::serve().flags(|f| {
        f.add("server.access_tokens", ACCESS_2);
        f.set("admin.token", ADMIN);
    });
    let s = c
        .env("KVREPLICA_S3_ACCESS_KEY_ID", "AKIAEXAMPLE")
        .env("KVREPLICA_S3_SECRET_ACCESS_KEY", "s3-secret-key-value")
        .ok();
    for shown in [format!("{s:?}"), s.render(), format!("{:?}", s.inputs())] {
        for secret in [ACCESS, ACCESS_2, ADMIN, "s3-secret-key-value"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("<redacted>"), "{shown}");
    }
    assert!(s.render().contains("access_key_id = \"AKIAEXAMPLE\""));
    assert_eq!(format!("{}", Secret::new("x")), "<redacted>");
}

#[test]
fn rendered_settings_name_each_origin() {
    let c = Case::serve()
        .file("[sync]\nsettle = \"5s\"\n")
        .env("KVREPLICA_POLL_INTERVAL", "2s");
    let out = c.ok().render();
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in {out}"))
            .to_string()
    };
    assert!(line("settle").ends_with("# file line 2"), "{out}");
    assert!(line("poll_interval").ends_with("# env KVREPLICA_POLL_INTERVAL"));
    assert!(line("source").ends_with("# flag --source"));
    assert!(line("page_size").ends_with("# default"));
    assert!(out.contains("# retain_points is not set"));
    // The output is TOML in the file's own layout.
    let back: toml::Table = toml::from_str(&out).unwrap();
    assert_eq!(back["sync"]["settle"].as_str(), Some("5s"));
}

#[test]
fn sync_needs_no_token_and_reads_no_secret() {
    let mut c = Case::serve()
        .flags(|f| f.unset("server.access_tokens"))
        .env("KVREPLICA_ADMIN_TOKEN_FILE", "/nonexistent/admin");
    c.inputs.purpose = Purpose::Sync;
    let s = c.ok();
    assert!(s.access_tokens.is_empty() && s.admin_token.is_none());
}

#[test]
fn reload_reads_the_files_again() {
    let c = Case::serve();
    let admin = c.write("admin", ADMIN);
    let c = c.file(&format!(
        "[sync]\npoll_interval = \"2s\"\n[admin]\ntoken_file = {admin:?}\n"
    ));
    let before = c.ok();
    std::fs::write(
        c.inputs.config.as_ref().unwrap(),
        "[sync]\npoll_interval = \"5s\"\n",
    )
    .unwrap();
    // The reload reads the real environment; the flags (source, db, token)
    // are kept.
    let after = before.reload().unwrap();
    assert_eq!(after.sync.poll_interval, Duration::from_secs(5));
    assert_eq!(after.admin_token, None);
    assert_eq!(after.access_tokens, vec![ACCESS.to_string()]);
    std::fs::write(
        c.inputs.config.as_ref().unwrap(),
        "[sync]\npoll_interval = \"0s\"\n",
    )
    .unwrap();
    assert!(before.reload().is_err());
}

#[test]
fn pitr_finds_the_replica_in_the_config_file() {
    let c = Case::bare().file("db = \"/from-file.sqlite\"\n");
    let config = c.inputs.config.clone().unwrap();
    assert_eq!(
        resolve_db(Some(&config), Some("/flag.sqlite".into())).unwrap(),
        PathBuf::from("/flag.sqlite")
    );
    if std::env::var_os("KVREPLICA_DB").is_none()
        && std::env::var_os("DENO_KV_SQLITE_PATH").is_none()
    {
        assert_eq!(
            resolve_db(Some(&config), None).unwrap(),
            PathBuf::from("/from-file.sqlite")
        );
        assert!(resolve_db(None, None)
            .unwrap_err()
            .to_string()
            .contains("db"));
    }
}

// ---- Every validation error: the key, and the line when in the file. ----

#[test]
fn unreadable_config_file() {
    let mut c = Case::serve();
    c.inputs.config = Some(c.dir.path().join("missing.toml"));
    let e = c.err("missing.toml");
    assert!(e.contains("cannot read the config file"), "{e}");
}

#[test]
fn toml_syntax_error() {
    Case::serve()
        .file("[sync]\npoll_interval = \"1s\"\nsettle = \"2s\n")
        .err_at("not valid TOML", 3);
}

#[test]
fn unknown_keys() {
    let e = Case::serve()
        .file("[sync]\n\npoll_intervall = \"1s\"\n")
        .err_at("unknown key `sync.poll_intervall`", 3);
    assert!(e.contains("`poll_interval`"), "lists the keys allowed: {e}");
    Case::serve()
        .file("# comment\nverbose = true\n")
        .err_at("unknown key `verbose`", 2);
    Case::serve()
        .file("[sync]\n[metrics]\nport = 1\n")
        .err_at("unknown key `metrics`", 2);
    Case::serve()
        .file("[server]\naddr = \"127.0.0.1:1\"\n[server.tls]\n")
        .err_at("server.tls", 3);
}

#[test]
fn wrong_types() {
    Case::serve()
        .file("[sync]\npage_size = \"10\"\n")
        .err_at("sync.page_size", 2);
    let e = Case::serve()
        .file("[server]\naccess_tokens = \"secret-token-value\"\n")
        .err_at("server.access_tokens", 2);
    assert!(e.contains("array"), "{e}");
    Case::serve()
        .file("[s3]\npath_style = \"yes\"\n")
        .err_at("s3.path_style", 2);
    Case::serve().file("sync = 5\n").err_at("sync", 1);
}

#[test]
fn bad_durations() {
    Case::serve()
        .file("[sync]\nsettle = \"1 fortnight\"\n")
        .err_at("sync.settle", 2);
    let e = Case::serve()
        .env("KVREPLICA_POLL_INTERVAL", "soon")
        .err("sync.poll_interval");
    assert!(
        e.contains("KVREPLICA_POLL_INTERVAL") && e.contains("soon"),
        "{e}"
    );
    Case::serve()
        .file("[sync]\npoll_interval = \"0s\"\n")
        .err_at("sync.poll_interval", 2);
    Case::serve()
        .flags(|f| f.set("sync.request_timeout", "0s"))
        .err("sync.request_timeout");
    Case::serve()
        .file("[sync]\nretain_for = \"0s\"\n")
        .err_at("sync.retain_for", 2);
}

#[test]
fn a_bad_value_is_an_error_even_when_overridden() {
    Case::serve()
        .file("[sync]\npoll_interval = \"often\"\n")
        .env("KVREPLICA_POLL_INTERVAL", "1s")
        .err_at("sync.poll_interval", 2);
}

#[test]
fn bad_addresses() {
    Case::serve()
        .file("[server]\naddr = \"localhost\"\n")
        .err_at("server.addr", 2);
    let e = Case::serve()
        .env("KVREPLICA_ADMIN_ADDR", "127.0.0.1")
        .err("admin.addr");
    assert!(e.contains("KVREPLICA_ADMIN_ADDR"), "{e}");
    Case::serve()
        .file("[server]\naddr = \"127.0.0.1:4600\"\n[admin]\naddr = \"127.0.0.1:4600\"\n")
        .err_at("admin.addr", 4);
}

#[test]
fn numbers_out_of_range() {
    for (toml, key, line) in [
        ("[sync]\npage_size = 0\n", "sync.page_size", 2),
        ("[sync]\n\npage_size = 1001\n", "sync.page_size", 3),
        (
            "[sync]\nfetch_concurrency = 0\n",
            "sync.fetch_concurrency",
            2,
        ),
        (
            "[sync]\nmax_mib_in_flight = 0\n",
            "sync.max_mib_in_flight",
            2,
        ),
        ("[sync]\nretain_points = 0\n", "sync.retain_points", 2),
        (
            "[sync]\nfetch_concurrency = -4\n",
            "sync.fetch_concurrency",
            2,
        ),
        ("[server]\nreaders = 0\n", "server.readers", 2),
    ] {
        Case::serve().file(toml).err_at(key, line);
    }
    Case::serve()
        .env("KVREPLICA_READERS", "many")
        .err("server.readers");
    Case::serve()
        .flags(|f| f.set("sync.page_size", "5000"))
        .err("sync.page_size");
}

#[test]
fn bad_or_missing_source_and_db() {
    Case::bare()
        .flags(|f| f.set("server.access_tokens", ACCESS))
        .file("db = \"/r.sqlite\"\nsource = \"ftp://host/backup/\"\n")
        .err_at("source", 2);
    Case::serve()
        .env("KVREPLICA_SOURCE", "file://relative/")
        .flags(|f| f.unset("source"))
        .err("source");
    let e = Case::bare()
        .flags(|f| f.set("db", "/r.sqlite"))
        .err("source is not set");
    assert!(e.contains("--source"), "{e}");
    Case::bare()
        .flags(|f| f.set("source", "s3://b/p/"))
        .err("db is not set");
    Case::serve().file("db = \"\"\n").err_at("db", 1);
}

#[test]
fn missing_or_bad_access_tokens() {
    let e = Case::serve()
        .flags(|f| f.unset("server.access_tokens"))
        .err("server.access_tokens is not set");
    assert!(e.contains("DENO_KV_ACCESS_TOKEN"), "{e}");
    let e = Case::serve()
        .flags(|f| f.unset("server.access_tokens"))
        .file("[server]\n\naccess_tokens = [\"short\"]\n")
        .err_at("server.access_tokens", 3);
    assert!(e.contains("12"), "{e}");
    Case::serve()
        .flags(|f| f.unset("server.access_tokens"))
        .file("[server]\naccess_tokens = []\n")
        .err_at("server.access_tokens", 2);
    Case::serve()
        .flags(|f| f.set("server.access_tokens", "has white space in it"))
        .err("server.access_tokens");
}

#[test]
fn bad_admin_tokens() {
    let e = Case::serve()
        .file(&format!("[admin]\ntoken = {ACCESS:?}\n"))
        .err_at("admin.token", 2);
    assert!(e.contains("differ"), "{e}");
    Case::serve()
        .file("[admin]\ntoken = \"tiny\"\n")
        .err_at("admin.token", 2);
    Case::serve()
        .env("KVREPLICA_ADMIN_TOKEN", "tiny")
        .err("KVREPLICA_ADMIN_TOKEN");
}

#[test]
fn a_secret_given_twice_in_one_place() {
    let e = Case::serve()
        .file(&format!(
            "[admin]\ntoken = {ADMIN:?}\ntoken_file = \"/run/admin\"\n"
        ))
        .err_at("admin.token_file", 2);
    assert!(e.contains("admin.token"), "{e}");
    Case::serve()
        .file("[server]\naccess_tokens = [\"client-token-0001\"]\naccess_tokens_file = \"t\"\n")
        .err_at("server.access_tokens_file", 2);
    Case::serve()
        .env("KVREPLICA_ADMIN_TOKEN", ADMIN)
        .env("KVREPLICA_ADMIN_TOKEN_FILE", "/run/admin")
        .err("KVREPLICA_ADMIN_TOKEN_FILE");
    Case::serve()
        .env("KVREPLICA_ACCESS_TOKEN", ACCESS)
        .env("KVREPLICA_ACCESS_TOKENS_FILE", "/run/tokens")
        .err("KVREPLICA_ACCESS_TOKENS_FILE");
    Case::serve()
        .flags(|f| f.set("server.access_tokens_file", "/run/tokens"))
        .err("--access-tokens-file");
    Case::serve()
        .env("KVREPLICA_S3_SECRET_ACCESS_KEY", "s3-secret-key-value")
        .env("KVREPLICA_S3_SECRET_ACCESS_KEY_FILE", "/run/s3")
        .err("KVREPLICA_S3_SECRET_ACCESS_KEY_FILE");
}

#[test]
fn unreadable_or_empty_secret_files() {
    let e = Case::serve()
        .file("[admin]\n\ntoken_file = \"/nonexistent/admin-token\"\n")
        .err_at("admin.token_file", 3);
    assert!(e.contains("/nonexistent/admin-token"), "{e}");
    let c = Case::serve();
    let empty = c.write("empty", "\n");
    c.file(&format!("[admin]\ntoken_file = {empty:?}\n"))
        .err_at("admin.token_file", 2);
    let c = Case::serve();
    let comments = c.write("tokens", "# none yet\n\n");
    c.flags(|f| f.unset("server.access_tokens"))
        .env("KVREPLICA_ACCESS_TOKENS_FILE", comments.to_str().unwrap())
        .err("server.access_tokens_file");
    Case::serve()
        .file("[gcs]\ncredentials_file = \"/nonexistent/key.json\"\n")
        .err_at("gcs.credentials_file", 2);
    Case::serve()
        .flags(|f| f.set("server.access_tokens_file", "/nonexistent/tokens"))
        .flags(|f| f.unset("server.access_tokens"))
        .err("--access-tokens-file");
}

#[test]
fn s3_keys_come_in_pairs() {
    Case::serve()
        .file("[s3]\naccess_key_id = \"AKIAEXAMPLE\"\n")
        .err("s3.secret_access_key is not set");
    Case::serve()
        .env("KVREPLICA_S3_SECRET_ACCESS_KEY", "s3-secret-key-value")
        .err("s3.access_key_id is not set");
}

#[test]
fn bad_log_settings() {
    Case::serve()
        .file("[log]\nlevel = \"verbose\"\n")
        .err_at("log.level", 2);
    let e = Case::serve()
        .env("KVREPLICA_LOG_FORMAT", "yaml")
        .err("log.format");
    assert!(e.contains("json"), "{e}");
    Case::serve()
        .file("[log]\nformat = \"xml\"\n")
        .err_at("log.format", 2);
}

#[test]
fn bad_booleans_and_empty_strings() {
    Case::serve()
        .env("KVREPLICA_S3_PATH_STYLE", "maybe")
        .err("s3.path_style");
    Case::serve()
        .file("[s3]\nregion = \"\"\n")
        .err_at("s3.region", 2);
    Case::serve()
        .file("[gcs]\nendpoint = \" \"\n")
        .err_at("gcs.endpoint", 2);
}
