//! `kvreplica check-config` output: the effective settings as TOML in the
//! config file's layout, each value followed by its origin, secrets
//! replaced by `<redacted>`.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use super::keys::{self, Key};
use super::Settings;

/// Column the origin comments line up at.
const COMMENT_COLUMN: usize = 48;

const REDACTED: &str = "\"<redacted>\"";

pub(super) fn render(s: &Settings) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Effective kvreplica configuration; secrets are redacted."
    );
    match &s.inputs.config {
        Some(p) => {
            let _ = writeln!(out, "# Config file: {}", p.display());
        }
        None => out.push_str("# No config file.\n"),
    }
    out.push_str("# Precedence: flag > environment > file > default.\n\n");

    let mut r = Renderer { s, out };
    r.value(&keys::SOURCE, Some(string(&s.source.to_string())));
    r.value(&keys::DB, Some(path(&s.db)));

    r.table("s3");
    r.value(&keys::S3_ENDPOINT, s.s3.endpoint.as_deref().map(string));
    r.value(&keys::S3_REGION, s.s3.region.as_deref().map(string));
    r.value(&keys::S3_PATH_STYLE, s.s3.path_style.map(|b| b.to_string()));
    r.value(
        &keys::S3_ACCESS_KEY_ID,
        s.s3_credentials.as_ref().map(|c| string(&c.access_key_id)),
    );
    r.secret(
        &keys::S3_SECRET_ACCESS_KEY,
        &keys::S3_SECRET_ACCESS_KEY_FILE,
        s.s3_credentials.as_ref().map(|_| REDACTED.to_string()),
    );

    r.table("gcs");
    r.value(
        &keys::GCS_CREDENTIALS_FILE,
        s.gcs.credentials_file.as_deref().map(path),
    );
    r.value(&keys::GCS_ENDPOINT, s.gcs.endpoint.as_deref().map(string));

    r.table("sync");
    r.value(&keys::POLL_INTERVAL, Some(duration(s.sync.poll_interval)));
    r.value(&keys::SETTLE, Some(duration(s.sync.settle)));
    r.value(
        &keys::FETCH_CONCURRENCY,
        Some(s.sync.fetch_concurrency.to_string()),
    );
    r.value(
        &keys::MAX_MIB_IN_FLIGHT,
        Some((s.sync.max_bytes_in_flight >> 20).to_string()),
    );
    r.value(&keys::PAGE_SIZE, Some(s.sync.page_size.to_string()));
    r.value(
        &keys::REQUEST_TIMEOUT,
        Some(duration(s.remote.request_timeout)),
    );
    r.value(
        &keys::RETAIN_POINTS,
        s.sync.retention.max_points.map(|n| n.to_string()),
    );
    r.value(&keys::RETAIN_FOR, s.sync.retention.max_age.map(duration));

    r.table("server");
    r.value(&keys::ADDR, Some(string(&s.addr.to_string())));
    let tokens = (!s.access_tokens.is_empty())
        .then(|| format!("[{}]", vec![REDACTED; s.access_tokens.len()].join(", ")));
    r.secret(&keys::ACCESS_TOKENS, &keys::ACCESS_TOKENS_FILE, tokens);
    r.value(&keys::READERS, Some(s.readers.to_string()));

    r.table("admin");
    r.value(&keys::ADMIN_ADDR, Some(string(&s.admin_addr.to_string())));
    r.secret(
        &keys::ADMIN_TOKEN,
        &keys::ADMIN_TOKEN_FILE,
        s.admin_token.as_ref().map(|_| REDACTED.to_string()),
    );

    r.table("log");
    r.value(&keys::LOG_LEVEL, Some(string(&s.log.level)));
    r.value(&keys::LOG_FORMAT, Some(string(&s.log.format.to_string())));
    r.out
}

struct Renderer<'a> {
    s: &'a Settings,
    out: String,
}

impl Renderer<'_> {
    fn table(&mut self, name: &str) {
        let _ = write!(self.out, "\n[{name}]\n");
    }

    /// `leaf = value  # origin`, or a commented line for an unset key.
    fn value(&mut self, key: &Key, value: Option<String>) {
        let leaf = key.name.rsplit('.').next().unwrap_or(key.name);
        match (value, self.s.origin(key.name)) {
            (Some(v), Some(origin)) => self.line(&format!("{leaf} = {v}"), &origin.short()),
            (Some(v), None) => self.line(&format!("{leaf} = {v}"), "default"),
            (None, _) => {
                let _ = writeln!(self.out, "# {leaf} is not set");
            }
        }
    }

    /// A secret: the file it was read from, else `<redacted>`.
    fn secret(&mut self, key: &Key, file_key: &Key, value: Option<String>) {
        match self.s.secret_files.get(key.name) {
            Some(file) => {
                let leaf = file_key.name.rsplit('.').next().unwrap_or(file_key.name);
                let origin = self
                    .s
                    .origin(key.name)
                    .map(|o| o.short())
                    .unwrap_or_default();
                self.line(&format!("{leaf} = {}", path(file)), &origin);
            }
            None => self.value(key, value),
        }
    }

    fn line(&mut self, text: &str, comment: &str) {
        let pad = COMMENT_COLUMN.saturating_sub(text.chars().count()).max(2);
        let _ = writeln!(self.out, "{text}{:pad$}# {comment}", "");
    }
}

fn duration(d: Duration) -> String {
    string(&humantime::format_duration(d).to_string())
}

fn path(p: &Path) -> String {
    string(&p.to_string_lossy())
}

/// A TOML basic string.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn strings_are_escaped() {
        assert_eq!(super::string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(super::string("x\u{1}"), "\"x\\u0001\"");
    }
}
