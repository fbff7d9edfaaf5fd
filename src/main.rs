//! The `lumen` binary: parse arguments, run the command, map errors to exit codes.
//! Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = lumen::cli::Cli::parse();
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
