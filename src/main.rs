//! The `lumen` binary: parse arguments, install the log subscriber, run the command, map
//! errors to exit codes. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = lumen::cli::Cli::parse();
    install_logging();
    match lumen::commands::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(if lumen::error::is_usage(&err) {
                lumen::error::exit::USAGE
            } else {
                lumen::error::exit::FAILED
            })
        }
    }
}

/// The one subscriber: events at `info` and above on stderr (`RUST_LOG` overrides).
fn install_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .init();
}
