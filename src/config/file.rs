//! The TOML config file: a walk of its tables against the settings table,
//! with errors that name the key and the line. Unknown keys are refused,
//! listing the keys allowed there.

use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::layer::{self, Entry, Layer};
use super::table::{Setting, SETTINGS};
use super::value;
use super::{ConfigError, Origin};

/// Parses the config file at `path` (its text is `text`) into a layer.
///
/// One file serves every command, so a bad value of a key the command does
/// not use (`uses` says which it does) does not stop it: the error goes to
/// `skipped`, for a warning, and the key is left out. Unknown keys and bad
/// TOML stay errors.
pub(super) fn layer(
    path: &Path,
    text: &str,
    uses: &dyn Fn(&'static Setting) -> bool,
    skipped: &mut Vec<ConfigError>,
) -> Result<Layer, ConfigError> {
    let root = DeTable::parse(text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        line: line_of(text, e.span().map(|s| s.start).unwrap_or(0)),
        message: e.message().trim().to_string(),
    })?;
    let file = File {
        path,
        text,
        uses,
        skipped: std::cell::RefCell::new(skipped),
    };
    let mut found = Vec::new();
    file.walk(root.get_ref(), "", &mut found)?;
    let given = |s: &'static Setting| found.iter().find(|e: &&Entry| e.given_as.name == s.name);
    let mut l = Layer::default();
    for (key, file_form) in layer::slots() {
        let names = (key.name, file_form.map(|f| f.name).unwrap_or(""));
        l.put_pair(
            key,
            given(key).cloned(),
            file_form.and_then(given).cloned(),
            names,
        )?;
    }
    Ok(l)
}

struct File<'a> {
    path: &'a Path,
    text: &'a str,
    uses: &'a dyn Fn(&'static Setting) -> bool,
    skipped: std::cell::RefCell<&'a mut Vec<ConfigError>>,
}

impl File<'_> {
    fn at(&self, offset: usize) -> Origin {
        Origin::File {
            path: self.path.to_path_buf(),
            line: line_of(self.text, offset),
        }
    }

    /// Reads the keys of the table called `prefix` (`""`: the top level)
    /// into `found`.
    fn walk(
        &self,
        table: &DeTable<'_>,
        prefix: &str,
        found: &mut Vec<Entry>,
    ) -> Result<(), ConfigError> {
        for (k, v) in table.iter() {
            let name = dotted(prefix, k.get_ref());
            let origin = self.at(v.span().start);
            if let Some(key) = SETTINGS.iter().find(|s| s.name == name) {
                let checked = value::from_toml(key, v.get_ref(), &origin)
                    .and_then(|value| value::validate(key, &value, &origin).map(|()| value));
                let value = match checked {
                    Ok(value) => value,
                    Err(e) if !(self.uses)(key) => {
                        self.skipped.borrow_mut().push(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                found.push(Entry {
                    value,
                    origin,
                    given_as: key,
                });
            } else if is_table(&name) {
                match v.get_ref() {
                    DeValue::Table(t) => self.walk(t, &name, found)?,
                    other => return Err(value::wrong_type(&name, &origin, other, "a table")),
                }
            } else {
                return Err(self.unknown(k, name, prefix));
            }
        }
        Ok(())
    }

    fn unknown(
        &self,
        k: &Spanned<std::borrow::Cow<'_, str>>,
        name: String,
        prefix: &str,
    ) -> ConfigError {
        let allowed = allowed_in(prefix);
        ConfigError::UnknownKey {
            key: name,
            path: self.path.to_path_buf(),
            line: line_of(self.text, k.span().start),
            expected: if allowed.is_empty() {
                String::new()
            } else {
                format!("keys allowed here: {}", allowed.join(", "))
            },
        }
    }
}

fn dotted(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

/// Whether some setting lives in the table `name`.
fn is_table(name: &str) -> bool {
    SETTINGS.iter().any(|s| s.table() == name)
}

/// The keys allowed in table `prefix`, quoted, in the table's order:
/// settings and sub-tables.
fn allowed_in(prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for s in SETTINGS {
        let rest = match prefix {
            "" => s.name,
            p => match s.name.strip_prefix(p).and_then(|r| r.strip_prefix('.')) {
                Some(rest) => rest,
                None => continue,
            },
        };
        let first = format!("`{}`", rest.split('.').next().unwrap_or(rest));
        if !keys.contains(&first) {
            keys.push(first);
        }
    }
    keys
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
