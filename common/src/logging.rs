//! Logging for both programs: text (the default) or JSON lines on stderr, filtered by `RUST_LOG`
//! or the program's default, with the filter changeable while the program runs (`PUT
//! /debug/flags/v` with a klog verbosity, as Kubernetes components take it, or a filter).

use std::sync::OnceLock;

use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `2026-12-03T18:00:00Z  INFO target: message key=value` (colored on a terminal).
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`), `span`.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown log format {other:?} (text or json)")),
        }
    }
}

struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    /// Directives for chatty dependencies, kept below the chosen level.
    quiet: String,
}

static LOGGING: OnceLock<Logging> = OnceLock::new();

/// Starts logging in `format` at `RUST_LOG`, or else `info` with `quiet` (directives such as
/// `h2=warn` for chatty dependencies).
pub fn init(format: Format, quiet: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| directive("info", quiet).into());
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let started = match format {
        Format::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
        Format::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if started.is_ok() {
        let _ = LOGGING.set(Logging {
            handle,
            quiet: quiet.to_owned(),
        });
    }
}

fn directive(level: &str, quiet: &str) -> String {
    if quiet.is_empty() {
        level.to_owned()
    } else {
        format!("{level},{quiet}")
    }
}

/// The filter a klog verbosity stands for: 0–3 `info`, 4–5 `debug`, 6 and more `trace`.
pub fn verbosity_level(v: u8) -> &'static str {
    match v {
        0..=3 => "info",
        4..=5 => "debug",
        _ => "trace",
    }
}

/// Sets the filter from `spec`: a klog verbosity (`4`) or a filter (`debug`,
/// `skiff_agent::proxy=trace`); returns the filter now in force.
pub fn set_filter(spec: &str) -> Result<String, String> {
    let logging = LOGGING.get().ok_or("logging was not started")?;
    let spec = spec.trim();
    let wanted = match spec.parse::<u8>() {
        Ok(v) => directive(verbosity_level(v), &logging.quiet),
        Err(_) if spec.is_empty() => return Err("no verbosity or filter given".into()),
        Err(_) => spec.to_owned(),
    };
    let filter = EnvFilter::try_new(&wanted).map_err(|e| format!("invalid filter {wanted:?}: {e}"))?;
    logging.handle.reload(filter).map_err(|e| e.to_string())?;
    tracing::info!(filter = %wanted, "log filter changed");
    Ok(wanted)
}

/// What `PUT /debug/flags/v` answers (upstream's words for a verbosity).
pub fn set_filter_answer(body: &[u8]) -> Result<String, String> {
    let spec = std::str::from_utf8(body).map_err(|_| "the body is not text".to_owned())?;
    let now = set_filter(spec)?;
    Ok(match spec.trim().parse::<u8>() {
        Ok(v) => format!("successfully set klog.logging.verbosity to {v} (log filter {now})"),
        Err(_) => format!("successfully set the log filter to {now}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosities_map_to_levels_and_formats_parse() {
        assert_eq!(verbosity_level(2), "info");
        assert_eq!(verbosity_level(4), "debug");
        assert_eq!(verbosity_level(9), "trace");
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert!("yaml".parse::<Format>().is_err());
        assert_eq!(directive("debug", "h2=warn"), "debug,h2=warn");
    }
}
