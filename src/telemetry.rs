//! Logging and metrics plumbing shared by every role: the tracing subscriber (json | pretty,
//! filtered by `RUST_LOG`) and the Prometheus recorder whose handle renders `/metrics`.
//!
//! Leaf utility: depends only on `config`. Metric names used in more than one module are the
//! constants below (DESIGN.md's names, as written).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Counter: HTTP requests by `method`, `path` (route pattern) and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// Histogram: HTTP request latency by `method` and `path`.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
/// Gauge: connections checked out / idle per pool (`pool` = primary | read | redis, `state`).
pub const POOL_CONNECTIONS: &str = "pool_connections";
/// Gauge: 1 when the process is ready to take traffic.
pub const READY: &str = "itsur_ready";
/// Counter: requests refused with 429, by `bucket`.
pub const RATE_LIMIT_REJECTIONS_TOTAL: &str = "rate_limit_rejections_total";
/// Counter: rate-limit decisions taken in process because Redis was failing.
pub const RATE_LIMIT_FALLBACK_TOTAL: &str = "rate_limit_fallback_total";
/// Gauge: circuit-breaker state by `name` (0 closed, 1 half-open, 2 open).
pub const CIRCUIT_BREAKER_STATE: &str = "circuit_breaker_state";
/// Counter: requests refused with 503 before running, by `reason` (`in_flight`, `deadline`).
pub const HTTP_REQUESTS_SHED_TOTAL: &str = "http_requests_shed_total";
/// Counter: push-provider calls by `provider` and `outcome`.
pub const PUSH_SEND_TOTAL: &str = "push_send_total";
/// Gauge: build information (`version` label), always 1.
pub const BUILD_INFO: &str = "itsur_build_info";
/// Gauge: 1 while the read replica (`DATABASE_READ_URL`) answers, 0 while reads fall back to
/// the primary; absent without a replica.
pub const DB_REPLICA_UP: &str = "db_replica_up";
/// Counter: reads served by the primary because the read replica was down.
pub const DB_READ_FALLBACK_TOTAL: &str = "db_read_fallback_total";

/// Gauges exported at zero from the start (`realtime::hub`, `outbox::relay`, `jobs::runner`).
const ZERO_AT_START_GAUGES: [&str; 5] = [
    "active_socket_connections",
    "outbox_pending",
    "outbox_dead",
    "outbox_lag_seconds",
    "jobs_workers_alive",
];

/// Latency buckets (seconds) for every `_seconds` histogram: 1 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Dependencies whose debug/trace output carries secrets, capped at `info` whatever
/// `RUST_LOG` says: tokio-postgres logs every statement's parameters at debug (password
/// hashes, token hashes, e-mails); hyper/h2 trace request headers (bearer tokens of outbound
/// calls). Checked by the e2e secrets test, which runs with `RUST_LOG=debug`.
const SECRET_LEAKING_TARGETS: [&str; 4] = [
    "tokio_postgres=info",
    "hyper=info",
    "h2=info",
    "reqwest=info",
];

/// Installs the global tracing subscriber. Safe to call more than once: later calls (tests
/// building several contexts in one process) keep the first subscriber.
pub fn init_tracing(format: LogFormat, filter: &str) {
    let mut filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    for cap in SECRET_LEAKING_TARGETS {
        if let Ok(directive) = cap.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init fails only when a subscriber is already installed, which is fine to keep.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Installs the Prometheus recorder once per process and returns its handle.
///
/// The `metrics` facade is process-global by design, so the recorder is too; the handle is
/// then passed around through `app::Ctx` like everything else. Tests that build many
/// contexts in one process get the same handle each time.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => {
                    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
                    // Gauges and counters exist from the start, at zero, instead of appearing
                    // on first use: a dashboard or alert sees "0 sockets", not "no data".
                    // (Names as their owners spell them: this leaf module imports none.)
                    for gauge in ZERO_AT_START_GAUGES {
                        metrics::gauge!(gauge).set(0.0);
                    }
                    for result in ["created", "replayed", "rejected", "failed"] {
                        metrics::counter!("order_creation_total", "result" => result).absolute(0);
                    }
                    handle
                }
                // Another recorder is already installed (only possible in tests that install
                // their own); fall back to a detached one so rendering still works.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}
