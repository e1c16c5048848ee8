//! Command line: `itsur serve | worker | outbox-relay | migrate | healthcheck | all | seed |
//! jobs`.
//! Each subcommand is a thin shell that builds `Config`, `Ctx` and `Shutdown` and calls one
//! `run`; a bad or missing setting prints ONE line naming the variable and exits 2.
//!
//! L4: may use anything below; holds no business logic.

mod all;
mod boot;
mod healthcheck;
mod jobs;
mod migrate;
mod outbox_relay;
mod seed;
mod serve;
mod settings;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::ConfigError;

/// ITSUR Eats backend: one binary, the subcommand picks the role.
#[derive(Parser, Debug)]
#[command(name = "itsur", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start-up and matched once: boxing the role arguments buys nothing"
)]
enum Command {
    /// HTTP API, WebSocket gateway, /metrics and /health* (N instances behind nginx).
    Serve(serve::ServeArgs),
    /// Background jobs from Postgres, with an ops port for /metrics and /health*.
    Worker(worker::WorkerArgs),
    /// Publishes committed outbox events, with an ops port for /metrics and /health*.
    OutboxRelay(outbox_relay::RelayArgs),
    /// Applies the embedded migrations under an advisory lock (or lists them with --status).
    Migrate(migrate::MigrateArgs),
    /// Probes the local role's /health/ready: exit 0 healthy, 1 not, within 2 s.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// serve + worker + outbox-relay in one process, migrating first (one-machine installs).
    All(all::AllArgs),
    /// Loads demo data (`--demo`): a campus, vendors, menus and three logins.
    Seed(seed::SeedArgs),
    /// Operates the job queue: `enqueue`, `stats [--json]`, `retry --dead`, `cancel ID…`.
    Jobs(jobs::JobsArgs),
    /// Prints the README's settings table (generated from these definitions).
    #[command(hide = true)]
    Settings(settings::SettingsArgs),
}

/// Exit status for bad settings and command-line misuse.
const EXIT_CONFIG: u8 = 2;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_exit(&err),
    };
    match cli.command {
        Command::Serve(args) => serve::main(args),
        Command::Worker(args) => worker::main(args),
        Command::OutboxRelay(args) => outbox_relay::main(args),
        Command::Migrate(args) => migrate::main(args),
        Command::Healthcheck(args) => healthcheck::main(&args),
        Command::All(args) => all::main(args),
        Command::Seed(args) => seed::main(args),
        Command::Jobs(args) => jobs::main(args),
        Command::Settings(args) => settings::main(&args),
    }
}

/// Help and version go to stdout with status 0; every error becomes one line on stderr.
fn clap_exit(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // Printing help can only fail on a closed stdout, where there is nobody to tell.
        let _ = err.print();
        return if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(EXIT_CONFIG)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = err.render().to_string();
    let line = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    eprintln!("itsur: {line}");
    ExitCode::from(EXIT_CONFIG)
}

/// Prints a configuration error as one line and returns exit status 2.
fn config_exit(err: &ConfigError) -> ExitCode {
    eprintln!("itsur: invalid setting {err}");
    ExitCode::from(EXIT_CONFIG)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
