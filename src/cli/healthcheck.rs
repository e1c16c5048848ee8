//! `itsur healthcheck`: GET the local role's `/health/ready` → exit 0 (200) or 1 (anything
//! else, or no answer) within the deadline. Loads no Config beyond the address, so it works
//! as a Docker `HEALTHCHECK` with no flags: it probes the address the role in the same
//! container was told to use (`BIND_ADDR` / `METRICS_BIND`), else every role's default port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::config::{DEFAULT_BIND, DEFAULT_RELAY_METRICS_BIND, DEFAULT_WORKER_METRICS_BIND};

/// Settings of `itsur healthcheck`.
#[derive(Args, Debug)]
pub struct HealthcheckArgs {
    /// Full URL to probe, e.g. http://127.0.0.1:8080/health/ready (overrides the addresses).
    #[arg(long, env = "HEALTHCHECK_URL")]
    url: Option<String>,
    /// The API address of a local `serve`/`all` (probed instead of the default 8080).
    #[arg(long = "bind", env = "BIND_ADDR", value_name = "BIND_ADDR")]
    bind: Option<SocketAddr>,
    /// The ops address of a local `worker`/`outbox-relay` (probed instead of 9464/9465).
    #[arg(long, env = "METRICS_BIND")]
    metrics_bind: Option<SocketAddr>,
    /// Overall deadline in milliseconds.
    #[arg(long, env = "HEALTHCHECK_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    timeout_ms: u64,
}

/// A wildcard bind address is probed on loopback.
fn local(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

fn targets(args: &HealthcheckArgs) -> Vec<String> {
    if let Some(url) = &args.url {
        return vec![url.clone()];
    }
    let explicit: Vec<SocketAddr> = args.bind.into_iter().chain(args.metrics_bind).collect();
    let addrs = if explicit.is_empty() {
        [
            DEFAULT_BIND,
            DEFAULT_WORKER_METRICS_BIND,
            DEFAULT_RELAY_METRICS_BIND,
        ]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
    } else {
        explicit
    };
    addrs
        .into_iter()
        .map(|a| format!("http://{}/health/ready", local(a)))
        .collect()
}

pub fn main(args: &HealthcheckArgs) -> ExitCode {
    let deadline = Duration::from_millis(args.timeout_ms);
    let urls = targets(args);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("itsur healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    let healthy = rt.block_on(async {
        let Ok(client) = reqwest::Client::builder()
            .timeout(deadline)
            .connect_timeout(deadline)
            .no_proxy()
            .build()
        else {
            return false;
        };
        let probes = urls.iter().map(|url| {
            let client = client.clone();
            async move {
                match client.get(url).send().await {
                    Ok(res) if res.status().is_success() => Ok(()),
                    Ok(res) => Err(format!("{url}: {}", res.status())),
                    Err(e) if e.is_timeout() => {
                        Err(format!("{url}: no answer within {deadline:?}"))
                    }
                    Err(e) => Err(format!("{url}: {}", e.without_url())),
                }
            }
        });
        // Healthy when any probed role answers ready: a container runs one role.
        let all = futures_util::future::join_all(probes);
        match tokio::time::timeout(deadline, all).await {
            Ok(results) => {
                let ok = results.iter().any(Result::is_ok);
                if !ok {
                    for e in results.iter().filter_map(|r| r.as_ref().err()) {
                        eprintln!("itsur healthcheck: {e}");
                    }
                }
                ok
            }
            Err(_) => {
                eprintln!("itsur healthcheck: no answer within {deadline:?}");
                false
            }
        }
    });
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
