//! `kvreplica check-config` output: the effective settings as TOML in the
//! config file's layout, each value followed by its origin, secrets
//! replaced by `<redacted>` (or the file they were read from).

use std::fmt::Write;

use super::table::{Kind, Setting, SETTINGS};
use super::value::string;
use super::Settings;

/// Column the origin comments line up at.
const COMMENT_COLUMN: usize = 48;

pub(super) fn render(s: &Settings) -> String {
    let mut out = String::new();
    out.push_str("# Effective kvreplica configuration; secrets are redacted.\n");
    match &s.inputs.config {
        Some(p) => {
            let _ = writeln!(out, "# Config file: {}", p.display());
        }
        None => out.push_str("# No config file.\n"),
    }
    out.push_str("# Precedence: flag > environment > file > default.\n\n");

    let mut table = "";
    for key in SETTINGS {
        if matches!(key.kind, Kind::FileOf { .. }) {
            continue;
        }
        if key.table() != table {
            table = key.table();
            let _ = write!(out, "\n[{table}]\n");
        }
        setting(&mut out, s, key);
    }
    out
}

/// `leaf = value  # origin`; for a secret read from a file, the file; a
/// commented line for an unset key.
fn setting(out: &mut String, s: &Settings, key: &'static Setting) {
    let origin = s.origin(key.name).map(|o| o.short());
    let origin = origin.as_deref().unwrap_or("default");
    if let Some(file) = s.secret_files.get(key.name) {
        let leaf = key.file_form().map_or(key.leaf(), |f| f.leaf());
        let text = format!("{leaf} = {}", string(&file.to_string_lossy()));
        return line(out, &text, origin);
    }
    match key.get.and_then(|get| get(s)) {
        Some(v) => line(out, &format!("{} = {}", key.leaf(), v.toml()), origin),
        None => {
            let _ = writeln!(out, "# {} is not set", key.leaf());
        }
    }
}

fn line(out: &mut String, text: &str, comment: &str) {
    let pad = COMMENT_COLUMN.saturating_sub(text.chars().count()).max(2);
    let _ = writeln!(out, "{text}{:pad$}# {comment}", "");
}
