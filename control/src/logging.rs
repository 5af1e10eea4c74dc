//! Logs of the `praas` binary: to standard error, levels from `RUST_LOG` (`info` when unset or
//! invalid), as human-readable text or as one JSON object per line (`--log-format json` on
//! `praas control serve` and `praas process serve`). The control plane starts its processes with
//! its own format, so a data folder's logs are all of one kind.

use thiserror::Error;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines: time, level, target, message and fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`) and the
    /// spans it is in, for log collectors.
    Json,
}

impl LogFormat {
    /// Its name on the command line (`text`, `json`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoggingError {
    /// A global subscriber was set before.
    #[error("cannot set up logging: {0}")]
    AlreadySet(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Sends this process's `tracing` events to standard error in `format`, at the levels `RUST_LOG`
/// names (`info` without it).
pub fn init(format: LogFormat) -> Result<(), LoggingError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).try_init(),
    }
    .map_err(LoggingError::AlreadySet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_have_their_command_line_names() {
        use clap::ValueEnum;
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(LogFormat::from_str(format.name(), false), Ok(format));
        }
        assert_eq!(LogFormat::default(), LogFormat::Text);
    }
}
