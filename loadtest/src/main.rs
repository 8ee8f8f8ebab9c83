//! loadtest: the performance harness for triage (issue 7).
//!
//! ```sh
//! loadtest/run.sh                 # build release, full run (~5–8 min), table in loadtest/results/latest.md
//! loadtest/run.sh --quick         # ~1–2 min: one round, short phases
//! cargo run -p loadtest --release -- mock --listen 127.0.0.1:8000
//! cargo run -p loadtest --release -- floor --listen 127.0.0.1:8081 --upstream 127.0.0.1:8000
//! cargo run -p loadtest --release -- drive --url http://127.0.0.1:8080/v1/chat/completions --rate 1000
//! cargo run -p loadtest --release -- run --rounds 3
//! cargo run -p loadtest --release -- ab --bin base=/tmp/triage.before --bin target/release/triage
//! ```
//!
//! Subcommands:
//!
//! - `mock`: a mock model server (hyper, HTTP/1.1 keep-alive, `TCP_NODELAY`, one
//!   current-thread runtime, every response body precomputed at start).
//!   `POST /v1/chat/completions` answers an OpenAI `chat.completion` with token logprobs
//!   (confidence = exp(mean logprob)); `POST /v1/classify` answers
//!   `{"label", "probabilities", "model"}` (confidence = the largest probability).
//!   Per request, header or query parameter (header wins), else the flag's default:
//!   `x-size` / `?size=` — `0.8k`, `5k` or `50k` (response body size);
//!   `x-hold-share` / `?hold=` — the share of answers whose confidence (0.5) falls below the
//!   0.85 threshold, the rest are at 0.95; deterministic on a request counter
//!   (0.1 = every 10th answer);
//!   `x-delay-ms` / `?delay_ms=` — a fixed delay before answering.
//!   `--stall` reproduces the 40 ms Nagle/delayed-ACK stall (no `TCP_NODELAY`, head and
//!   body in two writes), to check that the driver catches it. `--confidence-header`
//!   also gives each answer's confidence as an `x-confidence` header, for a triage task
//!   with `source: header` (see `docs/performance.md` for what it measured).
//!   Prints `listening ADDR` on stdout.
//!
//! - `drive`: the load driver. Open loop (`--rate R`): request i is due at t0 + i/R, spread
//!   over `--connections` keep-alive connections (request i on connection i mod C). A request
//!   whose connection is still busy at its due time waits, and its latency counts from the
//!   due time (coordinated omission corrected). When the connection was idle, latency counts
//!   from the timer's wake-up instead, so the driver's 1 ms timer granularity is not charged
//!   to the system under test (the timer lag is reported). Closed loop (`--rate 0`): each
//!   connection sends back to back. HDR histograms; p50/p90/p99/p99.9, achieved rate, status
//!   counts, and the review ids of 202 answers (`x-triage-review-id`, `--ids-out FILE`).
//!
//! - `floor`: the hyper floor, a yardstick. hyper's HTTP/1 server in front, hyper's
//!   HTTP/1 client behind (one upstream connection per client connection, no pool), the
//!   request and the answer passed through as they come (the body streamed, never read
//!   into a buffer or parsed), `TCP_NODELAY` on both sides, one current-thread runtime.
//!   What a proxy built on hyper and tokio cannot go below: triage minus the floor is
//!   triage's own work, the floor minus nginx is the HTTP stack's.
//!
//! - `run`: the whole comparison in one process. It pins itself (the driver) to CPU 1 and
//!   starts the mock there; the proxies (nginx with one worker, triage with
//!   `--worker-threads 1`) run under `taskset -c 0`. Targets: `direct` (to the mock), `nginx`
//!   (plain reverse proxy, upstream keepalive 32; installed with apt when missing, skipped
//!   with a note when it cannot be), `hyper-floor` (the `floor` subcommand, pinned like the
//!   proxies; `--no-floor` skips it), `triage-pass` (every output passes), `triage-hold10`
//!   (10 % held), `triage-hold100` (every output held: real RabbitMQ, publisher confirms),
//!   each triage case its own process and queue. Bodies 0.8 KB and 50 KB for
//!   direct/nginx/triage-pass (`--sizes 0.8k,5k,50k` adds 5 KB), 0.8 KB for the hold cases.
//!   Rounds are interleaved (every target once per round), a shorter warm-up round first and
//!   not reported. Per target and round: saturation req/s (closed loop, 32 connections); a
//!   stall probe (one keep-alive connection at 100 req/s: nothing queues, so a p50 over
//!   10 ms is a stall); p50/p99 at 1k and 5k req/s (open loop) and the latency added over
//!   direct in the same round; CPU per request of the proxy process tree (utime+stime from
//!   /proc/PID/stat, at saturation and at each fixed rate); confirmed holds/s. Per proxy
//!   process: idle RSS, idle wake-ups (context switches a second of all its threads over
//!   3 s before any traffic), peak RSS (VmHWM), RSS with 1,000 open idle client connections
//!   (each sent one request). Correctness: every 202's review id must be in the review queue
//!   (drained after each round; missing must be 0). A fixed-rate p50 over 10 ms is flagged as a stall, or
//!   as overload when the target cannot sustain that rate. Writes the Markdown table
//!   (medians over rounds, ratios triage/nginx, the floor against nginx and triage against
//!   the floor, the issue's goals, notes, per-round figures)
//!   to `loadtest/results/latest.md` (`--out`) and stdout. Queues and exchanges get unique
//!   names per run and are deleted afterwards. Needs RabbitMQ at `--amqp-url` (default
//!   guest@127.0.0.1:5672) and a release build of triage (`--triage-bin`, default
//!   `target/release/triage`). Knobs: `--rounds`, `--quick`, `--sat-secs`, `--fixed-secs`,
//!   `--rates`, `--connections`, `--idle-conns`, `--no-nginx`, `--no-floor`, `--no-pin`,
//!   `--pin-version` (triage's chat task pins its model version, as a deployment would: the
//!   request's `gpt-4o` is rewritten to the mock's dated version in place, and the answer's
//!   `model` is checked; off by default, so that runs compare with earlier sessions').
//!
//! - `ab`: two or more triage binaries (`--bin LABEL=PATH`, the first the baseline)
//!   alternated at saturation, A B A B … for `--rounds` (default 5), each started afresh,
//!   pinned and with one worker as in `run`, warmed up, then measured in a closed loop:
//!   req/s and CPU per request split into user and system time, medians and ranges, each
//!   binary's ratio to the baseline, the median of the rounds' own ratios, and the
//!   hypervisor's steal on the proxy's CPU. For a change worth a few per cent, which a full
//!   `run` cannot see through its ±10 % between rounds. `--rate R` measures at R req/s in
//!   an open loop instead, where an idle process is woken for every request;
//!   `--hold-share S` has that share of outputs held (202s, real confirms). `--size`,
//!   `--pin-version` as in `run`.

mod ab;
mod drive;
mod floor;
mod mock;
mod procs;
mod report;
mod run;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Mock model server, load driver and runner for triage"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mock model server (chat completions with logprobs, classifier).
    Mock(mock::MockArgs),
    /// Load driver: open loop at a fixed rate, or closed loop to saturation.
    Drive(drive::DriveArgs),
    /// The hyper floor: hyper server to hyper client and nothing between (see floor.rs).
    Floor(floor::FloorArgs),
    /// The interleaved comparison: direct, nginx, triage pass/10 % held/100 % held.
    Run(run::RunArgs),
    /// Two or more triage binaries alternated at saturation (A B A B …), first = baseline.
    Ab(ab::AbArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Mock(a) => mock::main(a),
        Cmd::Drive(a) => drive::main(a),
        Cmd::Floor(a) => floor::main(a),
        Cmd::Run(a) => run::main(a),
        Cmd::Ab(a) => ab::main(a),
    };
    if let Err(e) = result {
        eprintln!("loadtest: {e}");
        std::process::exit(1);
    }
}

/// Errors are reported, not handled: a string is enough.
pub type Result<T> = std::result::Result<T, String>;

/// Bind `addr` and print `listening ADDR` on stdout (the runner waits for that line).
pub async fn listen(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("bind {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening {bound}");
    Ok(listener)
}

/// The next connection; a failed accept (out of descriptors, say) backs off instead of
/// spinning.
pub async fn accept(listener: &tokio::net::TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
}

/// A current-thread runtime: the load side must stay on one core.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

/// Body sizes the mock serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Size {
    S08k,
    S5k,
    S50k,
}

impl Size {
    pub const ALL: [Size; 3] = [Size::S08k, Size::S5k, Size::S50k];

    pub fn parse(s: &str) -> Option<Size> {
        match s.trim().to_ascii_lowercase().as_str() {
            "0.8k" | "0.8kb" | "800" | "0.8" => Some(Size::S08k),
            "5k" | "5kb" | "5000" | "5" => Some(Size::S5k),
            "50k" | "50kb" | "50000" | "50" => Some(Size::S50k),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Size::S08k => "0.8k",
            Size::S5k => "5k",
            Size::S50k => "50k",
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Size::S08k => 800,
            Size::S5k => 5_000,
            Size::S50k => 50_000,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size> {
        Size::parse(s).ok_or_else(|| format!("unknown size {s:?}: 0.8k, 5k or 50k"))
    }
}
