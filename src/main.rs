//! triage: a confidence-thresholding router sidecar for production AI.
//!
//! `main` parses settings, sets up logging and metrics, loads the first rules (bad rules:
//! exit 64), starts the review path, serves the data and admin ports, and drains on
//! SIGTERM. The request path lives in `proxy.rs`; see the README for the map.

mod demo;

use triage::{admin, amqp, metrics, proxy, rules, server, settings, spool, upstream, verdicts};

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::watch;

use settings::{Cli, Command, LogFormat, ServeArgs};
use triage::access::AccessLogger;
use triage::logline::Lines;

/// sysexits' EX_USAGE: bad flags or rules at start.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Check { path } => check(&path),
        Command::Serve(args) => serve(*args, Box::new(|_, _| {})),
        Command::Demo(args) => demo::run(args),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match rules::load::load(path) {
        Ok(rules) => {
            let variants: usize = rules.tasks.iter().map(|t| t.rollout.variants.len()).sum();
            println!(
                "ok: {} task(s), {variants} variant(s), hash {}",
                rules.tasks.len(),
                rules.hash
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s) in {}", errors.len(), path.display());
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr from a background thread that wakes every 50 ms, not per line
/// (`logline`): a line per request written straight to stderr cost a `write` syscall each,
/// 14 % of a core at 8k req/s, and a thread woken per line still cost a wake-up and a
/// `write` each (profile in `docs/performance.md`). Should the consumer of stderr stall,
/// lines queue up to 4 MiB (two seconds of access log at 8k req/s) and are then dropped
/// rather than stalling requests. Dropping the returned guard writes what is queued
/// (waiting at most 1 s for a stalled stderr). Colours only on a terminal.
///
/// Also returns where access lines may go without the subscriber's formatter (`access`):
/// the log thread's queue, when there is one and stderr is not a terminal.
fn init_tracing(format: LogFormat) -> (Option<triage::logline::Flush>, Option<Lines>) {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match triage::logline::spawn(std::io::stderr()) {
        Ok((lines, flush)) => {
            let direct = (!terminal).then(|| lines.clone());
            install_subscriber(format, terminal, lines);
            (Some(flush), direct)
        }
        Err(e) => {
            // No thread to spare: log straight to stderr rather than not at all.
            install_subscriber(format, terminal, std::io::stderr);
            tracing::warn!(error = %e, "no log thread: logging from the request path");
            (None, None)
        }
    }
}

fn install_subscriber<W>(format: LogFormat, terminal: bool, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIAGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Called once both listeners are bound and `listening …` is printed (`triage demo` prints
/// its curl lines there).
type OnListening = Box<dyn FnOnce(SocketAddr, SocketAddr)>;

fn serve(args: ServeArgs, on_listening: OnListening) -> ExitCode {
    let (_log_flush, access_lines) = init_tracing(args.log_format);
    let json = args.log_format == LogFormat::Json;
    let access_log = AccessLogger::new(args.access_log, access_lines.map(|l| (l, json)));
    // The recorder first: rule compilation resolves metric handles against it.
    let metrics = match metrics::install() {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("error: cannot install the metrics recorder: {e}");
            return ExitCode::from(1);
        }
    };
    let token = match admin_token(&args) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let rules = match rules::load::load(&args.rules) {
        Ok(rules) => rules,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{} error(s) in {}; not starting",
                errors.len(),
                args.rules.display()
            );
            return ExitCode::from(EX_USAGE);
        }
    };
    let runtime = match build_runtime(args.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args, rules, metrics, token, access_log, on_listening)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// One worker (asked for, or one CPU available, cgroup quota included) gets tokio's
/// current-thread scheduler, as linkerd2-proxy does on one core: every task runs on the
/// thread that accepts, with no work-stealing queues and no cross-thread wake-ups between a
/// request and its upstream connection. More workers get the multi-thread scheduler.
fn build_runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build()
}

async fn run(
    args: ServeArgs,
    rules: rules::RuleSet,
    metrics_handle: metrics_exporter_prometheus::PrometheusHandle,
    token: Option<admin::Token>,
    access_log: AccessLogger,
    on_listening: OnListening,
) -> Result<(), String> {
    let data = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.admin_listen))?;
    let data_addr = data.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;

    tracing::info!(tasks = rules.tasks.len(), hash = %rules.hash, "rules loaded");
    metrics::rules_loaded(&rules.hash);
    let publisher = amqp::start(amqp::AmqpConfig {
        url: args.amqp_url.clone(),
        review_exchange: args.queues.review_exchange.clone(),
        review_queue: args.queues.review_queue.clone(),
        verdict_exchange: args.queues.verdict_exchange.clone(),
        confirm_timeout: Duration::from_millis(args.publish_timeout_ms),
    });
    let rules = Arc::new(ArcSwap::from_pointee(rules));
    let reloader = Arc::new(rules::reload::Reloader::new(
        args.rules.clone(),
        rules.clone(),
    ));
    rules::reload::spawn_triggers(
        reloader.clone(),
        Duration::from_millis(args.rules_poll_interval_ms),
    );
    verdicts::start(
        verdicts::VerdictConfig {
            url: args.amqp_url.clone(),
            exchange: args.queues.verdict_exchange.clone(),
            queue: args.queues.verdict_queue.clone(),
        },
        rules.clone(),
    );
    let spool = match spool::Spool::open(&args.spool_dir, args.spool_max_bytes) {
        Ok(spool) => {
            tracing::info!(dir = %args.spool_dir.display(), items = spool.items(), "spool open");
            spool::start_replay(spool.clone(), publisher.clone());
            Some(spool)
        }
        Err(e) => {
            tracing::error!(dir = %args.spool_dir.display(), error = %e, "cannot open the spool; holds need the broker");
            metrics::spool_error();
            None
        }
    };
    let state = Arc::new(proxy::State {
        spool,
        rules,
        upstream: upstream::UpstreamClient::new(
            Duration::from_millis(args.upstream_connect_timeout_ms),
            args.max_response_bytes,
        ),
        publisher,
        max_body_bytes: args.max_body_bytes,
        in_flight: proxy::InFlight::new(args.max_in_flight),
        shadow_slots: Arc::new(tokio::sync::Semaphore::new(args.max_shadow_in_flight)),
        draining: std::sync::atomic::AtomicBool::new(false),
        access_log,
    });
    // The exporter keeps every histogram sample until they are folded in: do it on a timer,
    // so memory stays flat when nobody scrapes /metrics. The fold runs on the runtime and
    // takes about 9 ns a sample, three samples a request: every second, at 47k req/s that
    // is a 1.3 ms pause and ~1 MB of samples (every 5 s, as before, it was 6.6 ms and ~6 MB).
    let upkeep = metrics_handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let admin_state = Arc::new(admin::Admin {
        state: state.clone(),
        metrics: metrics_handle,
        reloader,
        token,
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let grace = Duration::from_millis(args.shutdown_timeout_ms);
    let limits = server::Limits {
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
        max_headers: args.max_headers,
        max_header_bytes: args.max_header_bytes,
        grace,
    };
    let admin_task = tokio::spawn(server::serve(
        admin_listener,
        move |req| admin::handle(admin_state.clone(), req),
        shutdown_rx.clone(),
        server::Limits {
            grace: Duration::from_secs(1),
            ..limits
        },
    ));
    let data_state = state.clone();
    let data_task = tokio::spawn(server::serve(
        data,
        move |req| proxy::handle(data_state.clone(), req),
        shutdown_rx,
        limits,
    ));

    println!("listening data={data_addr} admin={admin_addr}");
    on_listening(data_addr, admin_addr);
    let _ = std::io::stdout().flush();

    wait_for_signal().await;
    let drain = Duration::from_millis(args.drain_delay_ms);
    tracing::info!(
        drain_ms = drain.as_millis() as u64,
        "SIGTERM: not ready; still serving while the endpoint is removed"
    );
    state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(drain).await;
    tracing::info!("closing the listeners; in-flight requests finish");
    let _ = shutdown_tx.send(true);
    let _ = data_task.await;
    let _ = admin_task.await;
    Ok(())
}

/// The admin bearer token: `TRIAGE_ADMIN_TOKEN`, else the `--admin-token-file`'s content.
/// Never logged, never on a command line.
fn admin_token(args: &ServeArgs) -> Result<Option<admin::Token>, String> {
    if let Ok(token) = std::env::var("TRIAGE_ADMIN_TOKEN") {
        return Ok(admin::Token::new(&token));
    }
    match &args.admin_token_file {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(path)
            .map(|t| admin::Token::new(&t))
            .map_err(|e| format!("cannot read --admin-token-file {}: {e}", path.display())),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we can still be killed; just never return.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
