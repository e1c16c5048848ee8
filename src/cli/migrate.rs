//! `itsur migrate [--status]`: applies (or lists) the embedded migrations under an advisory
//! lock. Opens no pools; waits for Postgres with backoff up to `--wait-secs`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::boot;
use crate::config::{Environment, LogFormat, Secret, effective_log_format};
use crate::store::migrations;
use crate::store::pg_url::check_pg_url;

/// Settings of `itsur migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Postgres primary to migrate.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// List applied and pending migrations instead of applying them.
    #[arg(long)]
    status: bool,
    /// Give up when Postgres has not answered after this many seconds.
    #[arg(long, env = "MIGRATE_WAIT_SECS", default_value_t = 60)]
    wait_secs: u64,
    /// Log format (json | pretty).
    #[arg(long, env = "LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Deployment environment (dev selects pretty logs by default).
    #[arg(long = "env", env = "ITSUR_ENV", value_name = "ITSUR_ENV", value_enum, default_value_t = Environment::Prod)]
    environment: Environment,
}

#[expect(
    clippy::print_stdout,
    reason = "the migration list is the command's output"
)]
pub fn main(args: MigrateArgs) -> ExitCode {
    // The same check as every other role: scheme, sslmode, sslrootcert, unknown options.
    if let Err(e) = check_pg_url("DATABASE_URL", &args.database_url) {
        return super::config_exit(&e);
    }
    let format = effective_log_format(args.log_format, args.environment);
    crate::telemetry::init_tracing(format, "info");
    boot::block_on("migrate", async move {
        let url = Secret::new(args.database_url);
        let deadline = tokio::time::sleep(Duration::from_secs(args.wait_secs));
        if !crate::store::pool::wait_for_postgres(&url, Duration::from_secs(3), deadline).await {
            anyhow::bail!(
                "DATABASE_URL: postgres did not answer within {}s",
                args.wait_secs
            );
        }
        if args.status {
            let status = migrations::status(url.expose().clone()).await?;
            for v in &status.applied {
                println!("applied  {v}");
            }
            for v in &status.pending {
                println!("pending  {v}");
            }
            println!(
                "{} applied, {} pending",
                status.applied.len(),
                status.pending.len()
            );
        } else {
            let applied = migrations::run(url.expose().clone()).await?;
            for v in &applied {
                println!("applied  {v}");
            }
            if applied.is_empty() {
                println!("schema is current");
            }
        }
        Ok(())
    })
}
