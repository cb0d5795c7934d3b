//! Entry point of the OCI runtime hook: parse the command line, run, and fail open.

use std::{os::fd::AsFd, process::ExitCode, time::Instant};

use clap::{error::ErrorKind, Parser};
use runtime_hook::{Cli, Outcome};

/// Exit code of `--strict` usage and input errors (sysexits EX_USAGE / EX_DATAERR).
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;

fn main() -> ExitCode {
    let start = Instant::now();
    let args: Vec<_> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let strict = args.iter().any(|a| a == "--strict");
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("bad usage");
            eprintln!("runtime-hook: {first}; {}", if strict { "failing (--strict)" } else { "container left alone" });
            return if strict { ExitCode::from(EX_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    // A dup of fd 0 as a plain File: unbuffered, so polling the fd tells the truth.
    let stdin = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            eprintln!("runtime-hook: cannot use stdin: {e}; container left alone");
            return if cli.strict { ExitCode::from(EX_DATAERR) } else { ExitCode::SUCCESS };
        }
    };
    match runtime_hook::run(&cli, stdin, start) {
        Ok(Outcome::Ignored | Outcome::Delivered) => ExitCode::SUCCESS,
        Ok(Outcome::Refused(why)) => {
            eprintln!("runtime-hook: tracer-node refused the event: {why}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Spooled { reason, path }) => {
            eprintln!("runtime-hook: {reason}; spooled to {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e @ runtime_hook::HookError::Spool { .. }) => {
            // Nothing else can be done without stalling the container: say it loudly.
            eprintln!("runtime-hook: EVENT LOST: {e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("runtime-hook: {e}; {}", if cli.strict { "failing (--strict)" } else { "container left alone" });
            if cli.strict {
                ExitCode::from(EX_DATAERR)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
