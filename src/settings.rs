//! Command line and environment, parsed once at start. Nothing here is reloadable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "triage",
    version,
    about = "Confidence-thresholding router sidecar for production AI"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar.
    Serve(Box<ServeArgs>),
    /// Validate rules: exit 0, or exit 1 with every error and where it is.
    Check {
        /// A .yaml/.yml/.json file, or a directory of them.
        path: PathBuf,
    },
    /// A first look: the sidecar, a simulated model upstream and the example rules, in one
    /// process; prints ready-to-run curl lines.
    Demo(DemoArgs),
}

/// RabbitMQ's own default: `guest` on the local broker.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `triage demo`: every other setting is `serve`'s default (or its environment variable).
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Data-plane listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin listen address (health, metrics, admin).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin_listen: SocketAddr,
    /// RabbitMQ URL; when nothing answers there, review items go to a temporary spool.
    #[arg(
        long,
        env = "TRIAGE_AMQP_URL",
        default_value = DEFAULT_AMQP_URL,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub amqp_url: String,
    #[command(flatten)]
    pub queues: Queues,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Rules: a .yaml/.yml/.json file, or a directory of them.
    #[arg(long, env = "TRIAGE_RULES")]
    pub rules: PathBuf,
    /// Data-plane listen address.
    #[arg(long, env = "TRIAGE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Admin listen address (health, metrics, admin).
    #[arg(long, env = "TRIAGE_ADMIN_LISTEN", default_value = "0.0.0.0:9901")]
    pub admin_listen: SocketAddr,
    /// RabbitMQ URL (amqp:// or amqps://). Prefer the environment variable: it holds a password.
    #[arg(
        long,
        env = "TRIAGE_AMQP_URL",
        default_value = DEFAULT_AMQP_URL,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub amqp_url: String,
    /// Directory of the local review spool.
    #[arg(long, env = "TRIAGE_SPOOL_DIR", default_value = "./triage-spool")]
    pub spool_dir: PathBuf,
    /// Largest total size of the spool; beyond it holds fail closed (503).
    #[arg(long, env = "TRIAGE_SPOOL_MAX_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub spool_max_bytes: u64,
    /// File holding the admin bearer token (or set TRIAGE_ADMIN_TOKEN to the token itself).
    #[arg(long, env = "TRIAGE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub queues: Queues,
    /// Largest request body accepted (413 beyond).
    #[arg(long, env = "TRIAGE_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest upstream response body read (502 bad_upstream_response beyond).
    #[arg(long, env = "TRIAGE_MAX_RESPONSE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_response_bytes: usize,
    /// Deadline from accept to the first byte, and from the first byte to the end of the
    /// request head; an idle keep-alive connection is closed after it too.
    #[arg(long, env = "TRIAGE_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// HTTP/2: ping an idle connection this often (and close it if the ping is not answered
    /// within the header read timeout).
    #[arg(long, env = "TRIAGE_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// Most request headers accepted (431 beyond).
    #[arg(long, env = "TRIAGE_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,
    /// Largest request head in bytes (431 beyond).
    #[arg(long, env = "TRIAGE_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Concurrent requests in flight; beyond it requests get a fast 503 `overloaded`.
    #[arg(long, env = "TRIAGE_MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Shadow copies in flight; beyond it copies are skipped (`triage_shadow_dropped_total`).
    #[arg(long, env = "TRIAGE_MAX_SHADOW_IN_FLIGHT", default_value_t = 256)]
    pub max_shadow_in_flight: usize,
    /// Deadline for a review publish and its broker confirm.
    #[arg(long, env = "TRIAGE_PUBLISH_TIMEOUT_MS", default_value_t = 2_000)]
    pub publish_timeout_ms: u64,
    /// Upstream TCP connect timeout (the response timeout is per upstream, in the rules).
    #[arg(
        long,
        env = "TRIAGE_UPSTREAM_CONNECT_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    pub upstream_connect_timeout_ms: u64,
    /// After SIGTERM, keep accepting requests this long with `/readyz` at 503, so that
    /// Kubernetes removes the endpoint before the listener closes.
    #[arg(long, env = "TRIAGE_DRAIN_DELAY_MS", default_value_t = 5_000)]
    pub drain_delay_ms: u64,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "TRIAGE_SHUTDOWN_TIMEOUT_MS", default_value_t = 25_000)]
    pub shutdown_timeout_ms: u64,
    /// Re-read the rules this often even without a file event (0: never). A safety net for
    /// volumes where file events do not arrive; unchanged content is a no-op.
    #[arg(long, env = "TRIAGE_RULES_POLL_INTERVAL_MS", default_value_t = 30_000)]
    pub rules_poll_interval_ms: u64,
    /// Runtime worker threads (default: one per CPU, cgroup quota counted); with one, the
    /// current-thread scheduler.
    #[arg(long, env = "TRIAGE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// One structured line per request (task, variant, decision, status, confidence, review
    /// id, trace id, durations) at this level; never prompt or output text.
    #[arg(long, env = "TRIAGE_ACCESS_LOG", value_enum, default_value_t = crate::access::AccessLog::Info)]
    pub access_log: crate::access::AccessLog,
    /// Log format on stderr.
    #[arg(long, env = "TRIAGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The contract's RabbitMQ names, shared by `serve` and `demo`.
#[derive(Debug, Clone, Args)]
pub struct Queues {
    #[arg(long, env = "TRIAGE_REVIEW_EXCHANGE", default_value = "triage.review")]
    pub review_exchange: String,
    #[arg(long, env = "TRIAGE_REVIEW_QUEUE", default_value = "triage.review")]
    pub review_queue: String,
    #[arg(
        long,
        env = "TRIAGE_VERDICT_EXCHANGE",
        default_value = "triage.verdicts"
    )]
    pub verdict_exchange: String,
    #[arg(
        long,
        env = "TRIAGE_VERDICT_QUEUE",
        default_value = "triage.verdicts.metrics"
    )]
    pub verdict_queue: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
