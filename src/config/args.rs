//! The command-line flags of the settings, generated from the table: one
//! clap argument per setting a command takes, with its value name, its
//! help text and, in brackets, its default, config key and environment
//! variables.
//!
//! Flags that set a config key are all optional and carry no clap default:
//! the defaults, the config file and the environment are applied by
//! resolution, so that a flag always wins and an unset flag never hides
//! the file.

use std::path::PathBuf;

use clap::builder::ValueParser;
use clap::{value_parser, Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

use super::table::{Commands, Kind, Setting, SETTINGS};
use super::Flags;

/// `--config` and the flags of every setting that command `C`
/// ([`super::SYNC`] or [`super::SERVE`]) takes; flatten it into the
/// command's arguments.
#[derive(Clone, Debug, Default)]
pub struct SettingArgs<const C: Commands> {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// The values given.
    pub flags: Flags,
}

impl<const C: Commands> SettingArgs<C> {
    /// What the settings are resolved from: the config file (`--config`,
    /// else `$KVREPLICA_CONFIG`) and these flags, for the command `C`
    /// stands for. [`super::Inputs::resolve`] gives the settings; keep them
    /// (or these inputs) to resolve again on a reload.
    pub fn inputs(&self) -> super::Inputs {
        super::Inputs {
            config: super::config_path(self.config.clone()),
            flags: self.flags.clone(),
            purpose: match C {
                super::SYNC => super::Purpose::Sync,
                _ => super::Purpose::Serve,
            },
        }
    }
}

/// `--config`, whose help says which keys the command uses.
fn config_arg(c: Commands) -> Arg {
    let help = match c {
        super::SYNC => {
            "TOML config file; flags and environment variables override its keys. Sync reads \
             source, db, [s3], [gcs], [sync] and [log]; a bad value of another key (e.g. \
             [server]) is a warning, an unknown key an error [env: KVREPLICA_CONFIG]"
        }
        _ => {
            "TOML config file (see config/ for examples); flags and environment variables \
             override its keys [env: KVREPLICA_CONFIG]"
        }
    };
    Arg::new("config")
        .long("config")
        .value_name("PATH")
        .help(help)
        .action(ArgAction::Set)
        .value_parser(value_parser!(PathBuf))
}

/// The settings command `c` takes as flags, in `--help` order.
fn taken(c: Commands) -> Vec<&'static Setting> {
    let mut keys: Vec<&'static Setting> = SETTINGS
        .iter()
        .filter(|s| s.flag.as_ref().is_some_and(|f| f.commands & c != 0))
        .collect();
    keys.sort_by_key(|s| s.flag.as_ref().map(|f| f.position));
    keys
}

/// The clap argument of `key`.
fn arg(key: &'static Setting) -> Arg {
    let flag = key.flag.as_ref().expect("only settings with a flag");
    let mut bracket = Vec::new();
    if let Some(default) = key.default_text() {
        bracket.push(format!("default: {default}"));
    }
    bracket.push(format!("config: {}", key.name));
    bracket.push(format!("env: {}", key.env_names().join(", else ")));
    Arg::new(key.name)
        .long(flag.long.trim_start_matches('-'))
        .value_name(flag.value_name)
        .help(format!("{} [{}]", key.help(), bracket.join("; ")))
        .action(match key.kind {
            Kind::Tokens | Kind::Prefixes => ArgAction::Append,
            _ => ArgAction::Set,
        })
        .value_parser(parser(key.kind))
}

/// Takes a flag's value as typed: it is parsed and checked at resolution,
/// by the same code as a variable's or the file's, so that a bad value
/// gets one message wherever it is given (clap's own parsers said
/// "expected number at 0" or "invalid socket address syntax").
fn parser(kind: Kind) -> ValueParser {
    match kind {
        Kind::Path | Kind::KeyFile | Kind::FileOf { .. } => value_parser!(PathBuf),
        _ => value_parser!(String),
    }
}

impl<const C: Commands> FromArgMatches for SettingArgs<C> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Flags::default();
        for key in taken(C) {
            for raw in m.get_raw(key.name).into_iter().flatten() {
                flags.add(key.name, raw.to_string_lossy());
            }
        }
        let config = m.get_one::<PathBuf>("config").cloned();
        Ok(SettingArgs { config, flags })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl<const C: Commands> Args for SettingArgs<C> {
    fn augment_args(cmd: Command) -> Command {
        let cmd = cmd.arg(config_arg(C));
        taken(C).into_iter().fold(cmd, |cmd, key| cmd.arg(arg(key)))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// `--db` and `--config` of `kvreplica pitr` (global: every subcommand
/// takes them), from the table's `db`.
#[derive(Clone, Debug, Default)]
pub struct PitrDbArgs {
    /// `--db`.
    pub db: Option<PathBuf>,
    /// `--config`.
    pub config: Option<PathBuf>,
}

impl PitrDbArgs {
    /// The replica file: `--db`, else `db`'s variables, else `db` in the
    /// config file.
    pub fn resolve(&self) -> Result<PathBuf, super::ConfigError> {
        let config = super::config_path(self.config.clone());
        super::resolve_db(config.as_deref(), self.db.clone())
    }
}

impl FromArgMatches for PitrDbArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(PitrDbArgs {
            db: m.get_one::<PathBuf>("db").cloned(),
            config: m.get_one::<PathBuf>("config").cloned(),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for PitrDbArgs {
    fn augment_args(cmd: Command) -> Command {
        let db = super::table::setting("db");
        let path = |name: &'static str, help: String| {
            Arg::new(name)
                .long(name)
                .value_name("PATH")
                .help(help)
                .global(true)
                .action(ArgAction::Set)
                .value_parser(value_parser!(PathBuf))
        };
        let env = db.env_names().join(", else ");
        cmd.arg(path(
            "db",
            format!(
                "The replica SQLite file [env: {env}; else `{}` in the --config file]",
                db.name
            ),
        ))
        .arg(path(
            "config",
            format!(
                "TOML config file of the replica, to find `{}` in [env: KVREPLICA_CONFIG]",
                db.name
            ),
        ))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}
