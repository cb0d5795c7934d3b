//! tracer-node entry point: parse the configuration, start logging, run.

use std::process::ExitCode;

use clap::{error::ErrorKind, Parser};
use tracing_subscriber::EnvFilter;

/// sysexits EX_USAGE: the configuration is wrong.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let config = match tracer_node::Config::try_parse() {
        Ok(config) => config,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EX_USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = config.validate() {
        eprintln!("tracer-node: {e}");
        return ExitCode::from(EX_USAGE);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime at start-up");
    match runtime.block_on(tracer_node::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tracer-node failed");
            eprintln!("tracer-node: {e}");
            if e.is_config() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
