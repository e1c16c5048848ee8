//! `itsur seed --demo`: loads the demo campus (idempotent) and prints its logins.

use std::process::ExitCode;

use clap::Args;

use super::boot;
use crate::app::Ctx;
use crate::config::{CommonArgs, Config};
use crate::service::seed;

/// Settings of `itsur seed`.
#[derive(Args, Debug)]
pub struct SeedArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Load the demo campus, vendors, menus and accounts.
    #[arg(long)]
    demo: bool,
}

#[expect(
    clippy::print_stdout,
    reason = "the demo credentials are the command's output"
)]
pub fn main(args: SeedArgs) -> ExitCode {
    if !args.demo {
        eprintln!("itsur: seed needs --demo (the only data set there is)");
        return ExitCode::from(super::EXIT_CONFIG);
    }
    let config = match Config::from_args(&args.common, None) {
        Ok(c) => c,
        Err(e) => return super::config_exit(&e),
    };
    boot::init_logging(&args.common);
    boot::block_on("seed", async move {
        let ctx = Ctx::new(config)?;
        let pending = {
            let mut conn = ctx.db.conn().await?;
            crate::store::migrations::pending_count(&mut conn).await?
        };
        if pending > 0 {
            anyhow::bail!("{pending} migrations pending: run `itsur migrate` first");
        }
        let created = seed::seed_demo(&ctx)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "{}",
            if created {
                "demo campus created"
            } else {
                "demo campus already present"
            }
        );
        for a in &seed::DEMO_ACCOUNTS {
            println!(
                "  {:<14} {:<20} password: {}",
                a.role.as_str(),
                a.email,
                a.password
            );
        }
        Ok(())
    })
}
