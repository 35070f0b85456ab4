//! The name of every setting in each place it can be given.

/// One setting: its key in the config file, its environment variable and
/// its flag.
#[derive(Debug, PartialEq, Eq)]
pub struct Key {
    /// Dotted TOML key, e.g. `sync.poll_interval`; errors name it.
    pub name: &'static str,
    /// The `KVREPLICA_*` variable (denokv aliases are handled beside it).
    pub env: &'static str,
    /// The command-line flag; empty for a secret that is only taken from
    /// a file on the command line (a value there would show in `ps`).
    pub flag: &'static str,
}

macro_rules! keys {
    ($($id:ident = $name:literal, $env:literal, $flag:literal;)*) => {
        $(
            #[doc = concat!("`", $name, "`")]
            pub const $id: Key = Key { name: $name, env: $env, flag: $flag };
        )*
    };
}

keys! {
    SOURCE = "source", "KVREPLICA_SOURCE", "--source";
    DB = "db", "KVREPLICA_DB", "--db";
    S3_ENDPOINT = "s3.endpoint", "KVREPLICA_S3_ENDPOINT", "--s3-endpoint";
    S3_REGION = "s3.region", "KVREPLICA_S3_REGION", "--s3-region";
    S3_PATH_STYLE = "s3.path_style", "KVREPLICA_S3_PATH_STYLE", "--s3-path-style";
    S3_ACCESS_KEY_ID = "s3.access_key_id", "KVREPLICA_S3_ACCESS_KEY_ID", "--s3-access-key-id";
    S3_SECRET_ACCESS_KEY = "s3.secret_access_key", "KVREPLICA_S3_SECRET_ACCESS_KEY", "";
    GCS_CREDENTIALS_FILE = "gcs.credentials_file", "KVREPLICA_GCS_CREDENTIALS_FILE", "--gcs-credentials-file";
    GCS_ENDPOINT = "gcs.endpoint", "KVREPLICA_GCS_ENDPOINT", "--gcs-endpoint";
    POLL_INTERVAL = "sync.poll_interval", "KVREPLICA_POLL_INTERVAL", "--poll-interval";
    SETTLE = "sync.settle", "KVREPLICA_SETTLE", "--settle";
    FETCH_CONCURRENCY = "sync.fetch_concurrency", "KVREPLICA_FETCH_CONCURRENCY", "--fetch-concurrency";
    MAX_MIB_IN_FLIGHT = "sync.max_mib_in_flight", "KVREPLICA_MAX_MIB_IN_FLIGHT", "--max-mib-in-flight";
    PAGE_SIZE = "sync.page_size", "KVREPLICA_PAGE_SIZE", "--page-size";
    REQUEST_TIMEOUT = "sync.request_timeout", "KVREPLICA_REQUEST_TIMEOUT", "--request-timeout";
    RETAIN_POINTS = "sync.retain_points", "KVREPLICA_RETAIN_POINTS", "--retain-points";
    RETAIN_FOR = "sync.retain_for", "KVREPLICA_RETAIN_FOR", "--retain-for";
    ADDR = "server.addr", "KVREPLICA_ADDR", "--addr";
    ACCESS_TOKENS = "server.access_tokens", "KVREPLICA_ACCESS_TOKEN", "--access-token";
    READERS = "server.readers", "KVREPLICA_READERS", "--readers";
    ADMIN_ADDR = "admin.addr", "KVREPLICA_ADMIN_ADDR", "--admin-addr";
    ADMIN_TOKEN = "admin.token", "KVREPLICA_ADMIN_TOKEN", "--admin-token";
    LOG_LEVEL = "log.level", "KVREPLICA_LOG_LEVEL", "--log-level";
    LOG_FORMAT = "log.format", "KVREPLICA_LOG_FORMAT", "--log-format";
}

/// `server.access_tokens_file`, the file form of `server.access_tokens`.
pub const ACCESS_TOKENS_FILE: Key = Key {
    name: "server.access_tokens_file",
    env: "KVREPLICA_ACCESS_TOKENS_FILE",
    flag: "--access-tokens-file",
};
/// `admin.token_file`
pub const ADMIN_TOKEN_FILE: Key = Key {
    name: "admin.token_file",
    env: "KVREPLICA_ADMIN_TOKEN_FILE",
    flag: "--admin-token-file",
};
/// `s3.secret_access_key_file`
pub const S3_SECRET_ACCESS_KEY_FILE: Key = Key {
    name: "s3.secret_access_key_file",
    env: "KVREPLICA_S3_SECRET_ACCESS_KEY_FILE",
    flag: "--s3-secret-access-key-file",
};
