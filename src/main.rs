//! The `lumen` binary: parse arguments, install the log subscriber, run the command, map
//! errors to exit codes. Everything else lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    let cli = lumen::cli::Cli::parse();
    if let Err(err) = install_logging(&cli.log) {
        // No log yet: the one place that writes stderr directly.
        eprintln!("error: {err:#}");
        return ExitCode::from(lumen::error::exit::USAGE);
    }
    match lumen::commands::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(if lumen::error::is_usage(&err) {
                lumen::error::exit::USAGE
            } else {
                lumen::error::exit::FAILED
            })
        }
    }
}

/// The one subscriber (see `lumen::logging`), and the `log` crate's records routed into it.
fn install_logging(args: &lumen::cli::LogArgs) -> anyhow::Result<()> {
    let opts = lumen::logging::LogOptions::from_args(args, std::io::stderr().is_terminal());
    if opts.verbosity < 0 {
        lumen::progress::hide_all();
    }
    lumen::logging::subscriber(&opts)?.try_init()?;
    Ok(())
}
