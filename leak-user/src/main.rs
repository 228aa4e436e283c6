//! `leak` command line: parse, set up logging, run, map errors to one line and an exit code.
use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;
use leak_user::cli::Cli;

fn main() -> ExitCode {
    let args = match leak_user::cli::expand_config(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("leak: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    init_logging(cli.verbose);
    // A bug must still end in one line, not a backtrace (RUST_BACKTRACE=1 restores it).
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("leak: internal error: {info}: please report it");
        }));
    }
    match leak_user::run(cli.command.into()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("leak: {}", e.message());
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_logging(verbose: u8) {
    let ours = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let default = format!("warn,leak_user={ours},leak={ours}");
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format(|buf, record| {
            writeln!(buf, "leak: {}: {}", record.level().as_str().to_lowercase(), record.args())
        })
        .init();
}
