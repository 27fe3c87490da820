//! Log set-up: human-readable on a terminal, JSON lines otherwise. The
//! audit trail is not a log level: it is its own typed stream (`audit`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Environment variable with the log filter (tracing `EnvFilter` syntax).
pub const LOG_ENV: &str = "BASTION_LOG";

/// Sets up logging for the monitor and the CLI; returns the filter and
/// format so that workers can log the same way.
pub fn init_monitor() -> (String, bool) {
    let filter = std::env::var(LOG_ENV).unwrap_or_else(|_| "info".to_string());
    let json = !std::io::stderr().is_terminal();
    init(&filter, json);
    (filter, json)
}

/// Sets up logging in a worker, as the monitor told it to.
pub fn init_worker(filter: &str, json: bool) {
    init(filter, json);
}

fn init(filter: &str, json: bool) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    // A second initialisation (tests) is harmless.
    let _ = result;
}
