//! One layer of settings (the file, the environment or the flags): the keys
//! it sets, each parsed and with its origin. Layers are checked one by one,
//! then overlaid. The environment and flag layers are read here, by a walk
//! of the settings table; the file's is in [`super::file`].

use std::collections::BTreeMap;
use std::fmt;

use super::table::{self, Kind, Setting, SETTINGS};
use super::value::{self, Value};
use super::{ConfigError, Origin};

/// A value, where it came from, and which setting it was given as (the
/// secret itself or its `*_file` form), for errors.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub value: Value,
    pub origin: Origin,
    pub given_as: &'static Setting,
}

/// The keys one layer sets, by position in [`SETTINGS`]. The two forms of a
/// secret (value, file) share the secret's slot, so a higher layer
/// replaces both.
#[derive(Clone, Debug)]
pub(super) struct Layer {
    slots: Vec<Option<Entry>>,
}

impl Default for Layer {
    fn default() -> Self {
        Layer {
            slots: vec![None; SETTINGS.len()],
        }
    }
}

impl Layer {
    /// What this layer sets for `name` (a setting that is not a file form).
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.slots[table::index(name)].as_ref()
    }

    /// Every setting this layer sets, in table order.
    pub fn entries(&self) -> impl Iterator<Item = (&'static Setting, &Entry)> {
        SETTINGS
            .iter()
            .zip(&self.slots)
            .filter_map(|(s, e)| e.as_ref().map(|e| (s, e)))
    }

    /// Sets the slot of `e.given_as`.
    fn put(&mut self, e: Entry) {
        let i = table::index(e.given_as.slot().name);
        self.slots[i] = Some(e);
    }

    /// Fills the slot of `key` from one of its two forms; both given in
    /// this layer is an error naming the two (as this layer spells them).
    pub fn put_pair(
        &mut self,
        key: &'static Setting,
        value: Option<Entry>,
        file: Option<Entry>,
        names: (&'static str, &'static str),
    ) -> Result<(), ConfigError> {
        match (value, file) {
            (Some(v), Some(_)) => Err(ConfigError::Conflict {
                key: key.name,
                first: names.0,
                second: names.1,
                origin: v.origin,
            }),
            (Some(e), None) | (None, Some(e)) => {
                self.put(e);
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }

    /// This layer with every key `high` sets taken from `high`.
    pub fn overlaid(self, high: Layer) -> Layer {
        let slots = self
            .slots
            .into_iter()
            .zip(high.slots)
            .map(|(low, high)| high.or(low))
            .collect();
        Layer { slots }
    }

    /// Checks the range of every value this layer sets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.entries()
            .try_for_each(|(_, e)| value::validate(e.given_as, &e.value, &e.origin))
    }
}

/// The settings that have their own slot, each with its `*_file` form if
/// it has one: the unit every layer reads.
pub(super) fn slots() -> impl Iterator<Item = (&'static Setting, Option<&'static Setting>)> {
    SETTINGS
        .iter()
        .filter(|s| !matches!(s.kind, Kind::FileOf { .. }))
        .map(|s| (s, s.file_form()))
}

/// The environment layer. `env` returns `None` for unset and empty
/// variables. kvreplica's own variable wins over denokv's; only the own
/// one conflicts with the `*_FILE` form.
pub(super) fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Layer, ConfigError> {
    let read = |key: &'static Setting, names: &[&'static str]| {
        let found = names.iter().find_map(|n| env(n).map(|v| (v, *n)));
        let found = found.or_else(|| {
            let fallback = key.env_fallback.filter(|_| names.len() == key.env.len())?;
            (fallback.read)(env)
        });
        found
            .map(|(raw, name)| {
                let origin = Origin::Env(name);
                let value = value::parse(key, &raw, &origin)?;
                Ok((
                    Entry {
                        value,
                        origin,
                        given_as: key,
                    },
                    name,
                ))
            })
            .transpose()
    };
    let mut layer = Layer::default();
    for (key, file) in slots() {
        let Some(file) = file else {
            if let Some((e, _)) = read(key, key.env)? {
                layer.put(e);
            }
            continue;
        };
        let own = read(key, &key.env[..1])?;
        let file_given = read(file, file.env)?;
        let names = (key.env[0], file.env[0]);
        match (own, file_given) {
            (None, None) => {
                if let Some((e, _)) = read(key, &key.env[1..])? {
                    layer.put(e);
                }
            }
            (own, file_given) => {
                layer.put_pair(key, own.map(|o| o.0), file_given.map(|f| f.0), names)?
            }
        }
    }
    Ok(layer)
}

/// Values given on the command line, by setting name (a file form under
/// its own name); the CLI fills it from the flags of the table, tests by
/// hand. Every value is a string as typed (clap checks nothing but paths),
/// parsed here like an environment variable's, for one message.
#[derive(Clone, Default)]
pub struct Flags {
    given: BTreeMap<&'static str, Vec<String>>,
}

impl Flags {
    /// Sets setting `name` as if its flag was given once with `value`.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.given
            .insert(table::setting(name).name, vec![value.into()]);
    }

    /// Adds a value to a repeatable flag (`--access-token`).
    pub fn add(&mut self, name: &str, value: impl Into<String>) {
        self.given
            .entry(table::setting(name).name)
            .or_default()
            .push(value.into());
    }

    /// Forgets the flag of setting `name`.
    pub fn unset(&mut self, name: &str) {
        self.given.remove(name);
    }

    /// The values given for `key`.
    fn get(&self, key: &'static Setting) -> Option<&[String]> {
        self.given.get(key.name).map(Vec::as_slice)
    }
}

/// Shows the flags given, secret values as `<redacted>`.
impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, values) in &self.given {
            let secret = matches!(table::setting(name).kind, Kind::Secret | Kind::Tokens);
            let values: Vec<&str> = match secret {
                true => vec!["<redacted>"; values.len()],
                false => values.iter().map(String::as_str).collect(),
            };
            map.entry(name, &values);
        }
        map.finish()
    }
}

/// The flag layer.
pub(super) fn from_flags(flags: &Flags) -> Result<Layer, ConfigError> {
    let read = |key: &'static Setting| -> Result<Option<Entry>, ConfigError> {
        let (Some(flag), Some(raw)) = (&key.flag, flags.get(key)) else {
            return Ok(None);
        };
        let origin = Origin::Flag(flag.long);
        let value = match key.kind {
            Kind::Tokens => Value::Tokens(value::TokensInput::Values(
                raw.iter().map(super::Secret::new).collect(),
            )),
            // Repeated: every flag's keys.
            Kind::Prefixes => {
                let mut all = Vec::new();
                for raw in raw {
                    match value::parse(key, raw, &origin)? {
                        Value::Prefixes(p) => all.extend(p),
                        other => unreachable!("prefixes parse as {other:?}"),
                    }
                }
                Value::Prefixes(all)
            }
            _ => match raw.last() {
                Some(raw) => value::parse(key, raw, &origin)?,
                None => return Ok(None),
            },
        };
        Ok(Some(Entry {
            value,
            origin,
            given_as: key,
        }))
    };
    let long = |s: &'static Setting| s.flag.as_ref().map(|f| f.long).unwrap_or(s.name);
    let mut layer = Layer::default();
    for (key, file) in slots() {
        let file_given = file.map(read).transpose()?.flatten();
        let names = (long(key), file.map(long).unwrap_or(""));
        layer.put_pair(key, read(key)?, file_given, names)?;
    }
    Ok(layer)
}
