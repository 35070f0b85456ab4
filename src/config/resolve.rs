//! Resolution: the layers read, checked and overlaid, every setting of the
//! table stored into [`Settings`] with its origin; then the rules that
//! span settings (secrets read from files, key pairs, listeners, tokens).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::layer::{self, Entry, Layer};
use super::table::{Kind, Setting, SETTINGS};
use super::value::{bad, SecretInput, TokensInput, Value};
use super::{absolute, file, secret_path, ConfigError, Inputs, Origin, Purpose, Secret, Settings};
use crate::auth;
use crate::source::s3::S3Credentials;
use crate::source::{GcsOptions, RemoteOptions, S3Options, SourceUrl};
use crate::sync::SyncOptions;

/// Resolves settings with `env` standing for the environment (tests pass a
/// map). Reads the config file and the secret files.
pub fn resolve_with(
    inputs: &Inputs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let config_path = inputs.config.as_deref().map(absolute);
    let mut r = Resolution {
        credentials_dir: env("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        origins: BTreeMap::new(),
        secret_files: BTreeMap::new(),
        watched: Vec::new(),
    };
    let mut skipped = Vec::new();
    let file_layer = match &config_path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::ReadConfig {
                path: path.clone(),
                error,
            })?;
            r.watched.push(path.clone());
            file::layer(path, &text, &used_by(inputs.purpose), &mut skipped)?
        }
        None => Layer::default(),
    };
    let env_layer = layer::from_env(&env)?;
    let flag_layer = layer::from_flags(&inputs.flags)?;
    for l in [&file_layer, &env_layer, &flag_layer] {
        l.validate()?;
    }
    let merged = file_layer.overlaid(env_layer).overlaid(flag_layer);

    let mut s = Settings::built_in(Arc::new(Inputs {
        config: config_path,
        ..inputs.clone()
    }));
    r.store(&mut s, &merged)?;
    r.s3_credentials(&mut s, &merged)?;
    if inputs.purpose == Purpose::Serve {
        r.listeners(&s, &merged)?;
        r.access_tokens(&mut s, &merged)?;
        r.admin_token(&mut s, &merged)?;
    }
    for key in SETTINGS {
        let is_set = key.get.is_some_and(|get| get(&s).is_some());
        if is_set && !r.origins.contains_key(key.name) {
            r.origins.insert(key.name, Origin::Default);
        }
    }
    s.origins = r.origins;
    s.secret_files = r.secret_files;
    s.watched = r.watched;
    s.ignored = skipped.iter().map(ToString::to_string).collect();
    Ok(s)
}

/// Whether the command `purpose` stands for uses a key: its flag (or its
/// file form's) is one of the command's.
fn used_by(purpose: Purpose) -> impl Fn(&'static Setting) -> bool {
    let command = match purpose {
        Purpose::Sync => super::SYNC,
        Purpose::Serve => super::SERVE,
    };
    move |key| {
        let slot = key.slot();
        [Some(slot), slot.file_form()]
            .into_iter()
            .flatten()
            .any(|s| s.flag.as_ref().is_some_and(|f| f.commands & command != 0))
    }
}

impl Settings {
    /// The built-in settings: every default, and placeholders for the
    /// required keys (which resolution always sets or refuses).
    pub(super) fn built_in(inputs: Arc<Inputs>) -> Settings {
        let addr = |a: &str| a.parse().expect("built-in default addresses parse");
        Settings {
            source: SourceUrl::Dir {
                root: PathBuf::new(),
            },
            db: PathBuf::new(),
            s3: S3Options::default(),
            s3_credentials: None,
            gcs: GcsOptions::default(),
            remote: RemoteOptions::default(),
            sync: SyncOptions::default(),
            // Every interface, denokv's port.
            addr: addr("0.0.0.0:4512"),
            access_tokens: Vec::new(),
            // Loopback only; the admin API can move the replica.
            admin_addr: addr("127.0.0.1:4513"),
            admin_token: None,
            readers: crate::server::default_readers(),
            tls: Default::default(),
            max_connections_per_address: crate::server::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            admin_tls: Default::default(),
            log: super::LogSettings {
                level: "info".into(),
                format: super::LogFormat::default(),
            },
            origins: BTreeMap::new(),
            secret_files: BTreeMap::new(),
            watched: Vec::new(),
            ignored: Vec::new(),
            inputs,
        }
    }
}

/// Bookkeeping while one resolution runs: origins, files read.
struct Resolution {
    /// systemd's `$CREDENTIALS_DIRECTORY`, for relative `*_file` paths.
    credentials_dir: Option<PathBuf>,
    origins: BTreeMap<&'static str, Origin>,
    secret_files: BTreeMap<&'static str, PathBuf>,
    watched: Vec<PathBuf>,
}

impl Resolution {
    /// Stores every setting the table can store by itself, refusing a
    /// missing required one.
    fn store(&mut self, s: &mut Settings, merged: &Layer) -> Result<(), ConfigError> {
        for key in SETTINGS {
            let Some(set) = key.set else { continue };
            let Some(e) = merged.get(key.name) else {
                if let Some(hint) = key.required {
                    return Err(ConfigError::Missing {
                        key: key.name,
                        hint,
                    });
                }
                continue;
            };
            let value = match (key.kind, &e.value) {
                (Kind::KeyFile, Value::Path(p)) => Value::Path(self.key_file(key, &e.origin, p)?),
                (_, v) => v.clone(),
            };
            self.origins.insert(key.name, e.origin.clone());
            set(s, value);
        }
        Ok(())
    }

    /// Static S3 keys: the id and the secret key come together or not at
    /// all.
    fn s3_credentials(&mut self, s: &mut Settings, merged: &Layer) -> Result<(), ConfigError> {
        let (id_key, secret_key) = ("s3.access_key_id", "s3.secret_access_key");
        s.s3_credentials = match (merged.get(id_key), merged.get(secret_key)) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    key: "s3.secret_access_key",
                    hint: "s3.access_key_id is set, so its secret is needed too \
                           (s3.secret_access_key or s3.secret_access_key_file)",
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    key: "s3.access_key_id",
                    hint: "an S3 secret access key is set, so its access key id is needed too",
                })
            }
            (Some(id), Some(secret)) => {
                self.origins.insert(id_key, id.origin.clone());
                Some(S3Credentials {
                    access_key_id: id.value.plain(),
                    secret_access_key: self.secret(secret)?.expose().to_string(),
                    session_token: None,
                })
            }
        };
        Ok(())
    }

    /// The two listeners need addresses of their own.
    fn listeners(&self, s: &Settings, merged: &Layer) -> Result<(), ConfigError> {
        if s.addr == s.admin_addr && s.addr.port() != 0 {
            let key = super::table::setting("admin.addr");
            let origin = merged
                .get(key.name)
                .map_or(Origin::Default, |e| e.origin.clone());
            return Err(bad(
                key,
                &origin,
                format!(
                    "{} is server.addr too: the admin API needs a listener of its own",
                    s.admin_addr
                ),
            ));
        }
        Ok(())
    }

    /// The access tokens `serve` needs, read and checked.
    fn access_tokens(&mut self, s: &mut Settings, merged: &Layer) -> Result<(), ConfigError> {
        let key = super::table::setting("server.access_tokens");
        let given = merged.get(key.name).ok_or(ConfigError::Missing {
            key: key.name,
            hint: "clients need a token: set server.access_tokens or server.access_tokens_file \
                   in the config file, KVREPLICA_ACCESS_TOKEN, KVREPLICA_ACCESS_TOKENS_FILE or \
                   DENO_KV_ACCESS_TOKEN, or pass --access-token TOKEN (clients send it as \
                   DENO_KV_ACCESS_TOKEN)",
        })?;
        let tokens = self.tokens(given)?;
        for t in &tokens {
            auth::validate("an access token", t.expose())
                .map_err(|e| bad(key, &given.origin, e.to_string()))?;
        }
        s.access_tokens = tokens.iter().map(|t| t.expose().to_string()).collect();
        Ok(())
    }

    /// The admin token, read, checked and distinct from every access token.
    fn admin_token(&mut self, s: &mut Settings, merged: &Layer) -> Result<(), ConfigError> {
        let key = super::table::setting("admin.token");
        let Some(given) = merged.get(key.name) else {
            return Ok(());
        };
        let token = self.secret(given)?;
        let bad = |reason: String| bad(key, &given.origin, reason);
        auth::validate("the admin token", token.expose()).map_err(|e| bad(e.to_string()))?;
        if s.access_tokens.iter().any(|t| t == token.expose()) {
            return Err(bad(
                "the admin token equals an access token; it must differ from \
                            every one, so that data clients cannot move the replica"
                    .into(),
            ));
        }
        s.admin_token = Some(token.expose().to_string());
        Ok(())
    }

    /// For a relative secret file that could not be read outside systemd:
    /// where it was looked for and how to point kvreplica at the
    /// credentials (the example configs name them relatively, as
    /// `LoadCredential=` wants). Empty otherwise.
    fn lookup_hint(&self, given: &Path, origin: &Origin) -> String {
        if self.credentials_dir.is_some() || !given.is_relative() {
            return String::new();
        }
        let dir = match origin {
            Origin::File { path, .. } => path
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "<directory of the secret files>".into()),
            _ => "<directory of the secret files>".into(),
        };
        format!(
            "\n  a relative secret file is looked up in $CREDENTIALS_DIRECTORY, which systemd sets \
             for LoadCredential=; it is not set here, so the working directory was used. \
             Outside systemd, set it to the directory that holds the files, e.g.\n    \
             CREDENTIALS_DIRECTORY={dir} kvreplica check-config …\n  or name the file by \
             its absolute path"
        )
    }

    /// Reads the file `given` names for its secret (resolved against
    /// `$CREDENTIALS_DIRECTORY`).
    fn read(&mut self, given: &Entry, file: &Path) -> Result<(String, PathBuf), ConfigError> {
        let path = secret_path(file, self.credentials_dir.as_deref());
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::SecretFile {
            key: given.given_as.name,
            origin: given.origin.clone(),
            path: path.clone(),
            error,
            hint: self.lookup_hint(file, &given.origin),
        })?;
        self.watched.push(path.clone());
        self.secret_files
            .insert(given.given_as.slot().name, path.clone());
        Ok((text, path))
    }

    /// A single secret: the value, or the file's content without the
    /// trailing newline editors and `echo` add.
    fn secret(&mut self, given: &Entry) -> Result<Secret, ConfigError> {
        self.origins
            .insert(given.given_as.slot().name, given.origin.clone());
        match &given.value {
            Value::Secret(SecretInput::File(p)) => {
                let (text, path) = self.read(given, p)?;
                let value = text.trim_end_matches(['\n', '\r']);
                if value.is_empty() {
                    let reason = format!("{} is empty", path.display());
                    return Err(bad(given.given_as, &given.origin, reason));
                }
                Ok(Secret::new(value))
            }
            Value::Secret(SecretInput::Value(v)) => Ok(v.clone()),
            other => unreachable!("a secret holds {other:?}"),
        }
    }

    /// Access tokens: the values, or a file with one per line (blank lines
    /// and lines starting with `#` skipped).
    fn tokens(&mut self, given: &Entry) -> Result<Vec<Secret>, ConfigError> {
        self.origins
            .insert(given.given_as.slot().name, given.origin.clone());
        match &given.value {
            Value::Tokens(TokensInput::File(p)) => {
                let (text, path) = self.read(given, p)?;
                let tokens: Vec<Secret> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(Secret::new)
                    .collect();
                if tokens.is_empty() {
                    let reason = format!("{} holds no token (one per line)", path.display());
                    return Err(bad(given.given_as, &given.origin, reason));
                }
                Ok(tokens)
            }
            Value::Tokens(TokensInput::Values(v)) => Ok(v.clone()),
            other => unreachable!("tokens hold {other:?}"),
        }
    }

    /// A key file the source reads itself: resolved like a secret file and
    /// checked to be readable now, rather than at the first request.
    fn key_file(
        &mut self,
        key: &'static Setting,
        origin: &Origin,
        given: &Path,
    ) -> Result<PathBuf, ConfigError> {
        let path = secret_path(given, self.credentials_dir.as_deref());
        std::fs::File::open(&path).map_err(|error| ConfigError::SecretFile {
            key: key.name,
            origin: origin.clone(),
            path: path.clone(),
            error,
            hint: self.lookup_hint(given, origin),
        })?;
        self.watched.push(path.clone());
        Ok(path)
    }
}
