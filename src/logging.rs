//! Structured logs on stderr through `tracing`: plain text or one JSON
//! object per line, with a level filter that can be changed while the
//! process runs (a config reload).
//!
//! Plain logs are journald-friendly: when stderr is the journal's stream
//! (systemd sets `JOURNAL_STREAM` to its device and inode), lines carry a
//! `<N>` syslog priority prefix, so `journalctl -p warning` works, and no
//! timestamp or colour, which the journal adds or does not want.
//!
//! The level is a filter in `RUST_LOG` syntax (`info`,
//! `warn,kvreplica=debug`); where it comes from (config, `RUST_LOG`, flag)
//! is decided by [`crate::config`].

use std::fmt;
use std::str::FromStr;

use tracing::Level;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (`tracing`'s default format).
    #[default]
    Plain,
    /// One JSON object per line, fields at the top level, for log shippers.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "plain" => Ok(LogFormat::Plain),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "{s:?} is not a log format: use \"plain\" or \"json\""
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Plain => "plain",
            LogFormat::Json => "json",
        })
    }
}

/// Why logging could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The filter does not parse.
    #[error("log level {level:?}: {reason}")]
    BadLevel { level: String, reason: String },
    /// A global subscriber was installed before.
    #[error("logging is already set up: {0}")]
    AlreadySet(String),
    /// The subscriber holding the filter is gone.
    #[error("cannot change the log level: {0}")]
    Reload(String),
}

/// The level names a filter directive may end in.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a level from the config strictly: every comma-separated directive
/// is a level name or `target=level`. (`RUST_LOG` itself also allows a bare
/// target, which in a config file is almost always a misspelt level.)
pub fn validate_level(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("empty log level: use trace, debug, info, warn, error or off".into());
    }
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let name = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.contains(&name.trim().to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} is not a level: use one of trace, debug, info, warn, error, off, \
                 or target=level (e.g. \"info,kvreplica=debug\")"
            ));
        }
    }
    filter(level).map(|_| ()).map_err(|e| e.to_string())
}

/// Checks a filter in `RUST_LOG`'s own syntax, as loosely as `tracing` reads
/// it.
pub fn validate_filter(level: &str) -> Result<(), String> {
    filter(level).map(|_| ()).map_err(|e| e.to_string())
}

fn filter(level: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::try_new(level).map_err(|e| LogError::BadLevel {
        level: level.to_string(),
        reason: e.to_string(),
    })
}

/// Changes the level filter of the installed logger at run time.
#[derive(Clone)]
pub struct LogHandle {
    /// The reloadable filter layer installed by [`init`].
    filter: reload::Handle<EnvFilter, Registry>,
}

impl fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogHandle").finish_non_exhaustive()
    }
}

impl LogHandle {
    /// Replaces the level filter (`RUST_LOG` syntax) of every log line from
    /// now on. A filter that does not parse leaves the current one in place.
    /// On a reload, pass the new [`crate::config::Settings`]' `log.level`:
    /// it already accounts for `RUST_LOG`, `KVREPLICA_LOG_LEVEL` and
    /// `--log-level`, which win over the file.
    pub fn set_level(&self, level: &str) -> Result<(), LogError> {
        let new = filter(level)?;
        self.filter
            .reload(new)
            .map_err(|e| LogError::Reload(e.to_string()))
    }
}

/// Installs the process-wide logger on stderr with `format` and the level
/// filter `level` (`RUST_LOG` syntax). Call once, early; the handle changes
/// the level later.
pub fn init(format: LogFormat, level: &str) -> Result<LogHandle, LogError> {
    let (filter_layer, handle) = reload::Layer::new(filter(level)?);
    let journal = stderr_is_journal();
    let output: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Plain if journal => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .event_format(SyslogPriority(
                tracing_subscriber::fmt::format().without_time(),
            ))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Plain => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(output)
        .try_init()
        .map_err(|e| LogError::AlreadySet(e.to_string()))?;
    Ok(LogHandle { filter: handle })
}

/// The logger of commands that have no log settings (`pitr`,
/// `check-config`): plain, `RUST_LOG` else `info`.
pub fn init_default() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .filter(|l| filter(l).is_ok())
        .unwrap_or_else(|| "info".into());
    // Only fails when a logger exists already, which is then used.
    let _ = init(LogFormat::Plain, &level);
}

/// True when stderr is the stream systemd connected to the journal: the
/// `JOURNAL_STREAM` it sets (`<device>:<inode>`) names stderr's file.
fn stderr_is_journal() -> bool {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
            return false;
        };
        let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
            return false;
        };
        match std::fs::File::from(fd).metadata() {
            Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
            Err(_) => false,
        }
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Prefixes each line with its syslog priority (`<3>` error … `<7>` debug),
/// which journald strips and records as the entry's priority.
struct SyslogPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPriority<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_checked_strictly() {
        for ok in [
            "info",
            "WARN",
            "warn,kvreplica=debug",
            "kvreplica::sync=trace",
        ] {
            assert!(validate_level(ok).is_ok(), "{ok}");
        }
        for bad in ["", "verbose", "info,kvreplica", "kvreplica=loud"] {
            assert!(validate_level(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for f in [LogFormat::Plain, LogFormat::Json] {
            assert_eq!(f.to_string().parse::<LogFormat>().unwrap(), f);
        }
        assert!("yaml".parse::<LogFormat>().is_err());
    }
}
