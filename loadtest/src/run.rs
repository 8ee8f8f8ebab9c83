//! `run`: start the mock, nginx and three triage processes, measure every target round by
//! round, check the review queues, clean up, write the report.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::HOST;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use crate::drive::{self, Load, Target};
use crate::mock::MODEL;
use crate::procs::{self, Proc};
use crate::report::{PhaseNums, ProcResult, Report, RoundNums, TargetResult};
use crate::{Result, Size};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Measured rounds (a shorter warm-up round comes first and is not reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// A short run (~1–2 min): one round, short phases.
    #[arg(long)]
    pub quick: bool,
    /// Keep-alive connections of the driver (closed and open loop).
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Fixed rates for the open-loop latency phases, req/s.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub rates: Vec<f64>,
    /// Body sizes for direct, nginx and triage pass-through (the hold cases use 0.8k).
    #[arg(long, value_delimiter = ',', default_value = "0.8k,50k")]
    pub sizes: Vec<Size>,
    /// Seconds of closed-loop saturation per target and round (default 4, quick 2).
    #[arg(long)]
    pub sat_secs: Option<f64>,
    /// Seconds of each fixed-rate phase (default 3, quick 1.5).
    #[arg(long)]
    pub fixed_secs: Option<f64>,
    /// Idle client connections for the memory figure.
    #[arg(long, default_value_t = 1000)]
    pub idle_conns: usize,
    /// Skip nginx.
    #[arg(long)]
    pub no_nginx: bool,
    /// Skip the hyper floor (hyper server to hyper client, nothing between: what triage's
    /// HTTP stack costs alone).
    #[arg(long)]
    pub no_floor: bool,
    /// Do not pin (proxies on CPU 0, driver and mock on CPU 1).
    #[arg(long)]
    pub no_pin: bool,
    /// triage's chat task pins its model version: the request's `gpt-4o` is rewritten to
    /// the mock's dated version and the answer's `model` is checked against it.
    #[arg(long)]
    pub pin_version: bool,
    #[arg(long, default_value_t = 0)]
    pub proxy_cpu: usize,
    #[arg(long, default_value_t = 1)]
    pub load_cpu: usize,
    /// The triage binary (a release build).
    #[arg(long)]
    pub triage_bin: Option<PathBuf>,
    /// RabbitMQ for triage and for the queue check.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// Where the Markdown report goes.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

pub fn main(mut a: RunArgs) -> Result<()> {
    procs::raise_nofile_limit();
    if a.quick {
        a.rounds = 1;
    }
    a.rounds = a.rounds.max(1);
    let cpus = procs::allowed_cpus();
    let pin = !a.no_pin && cpus >= 2 && a.proxy_cpu != a.load_cpu;
    if pin {
        // Before any thread exists: the runtime and every child we start inherit it.
        procs::pin_self(a.load_cpu)?;
    }
    let rt = crate::runtime()?;
    let report = rt.block_on(run(&a, pin, cpus))?;
    let md = report.markdown();
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| Path::new(MANIFEST_DIR).join("results/latest.md"));
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&out, &md).map_err(|e| format!("{out:?}: {e}"))?;
    println!("\n{md}");
    eprintln!("report written to {}", out.display());
    Ok(())
}

/// How long the idle wake-ups are counted, every process at once, before any traffic.
const IDLE_WINDOW: Duration = Duration::from_secs(3);

/// One proxy process (or the mock) whose CPU and memory we read.
pub(crate) struct Server {
    name: &'static str,
    pub(crate) proc: Proc,
    pub(crate) data: SocketAddr,
    /// triage: the queue names (review exchange/queue, verdict exchange/queue).
    pub(crate) queues: Option<[String; 4]>,
    idle_mb: f64,
    /// Context switches per second of all its threads while idle, before any traffic.
    idle_wakeups: f64,
    /// Review ids answered 202 through this process / found in its queue.
    ids_202: HashSet<String>,
    ids_queue: HashSet<String>,
}

#[derive(Clone)]
struct Tgt {
    name: &'static str,
    size: Size,
    share: f64,
    /// Index into the servers; the mock for `direct`.
    server: usize,
}

async fn run(a: &RunArgs, pin: bool, cpus: usize) -> Result<Report> {
    let sat = Duration::from_secs_f64(a.sat_secs.unwrap_or(if a.quick { 2.0 } else { 4.0 }));
    let fixed = Duration::from_secs_f64(a.fixed_secs.unwrap_or(if a.quick { 1.5 } else { 3.0 }));
    let run_id = format!("{}-{}", std::process::id(), unix_secs() % 100_000);
    let dir = std::env::temp_dir().join(format!("triage-loadtest-{run_id}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{dir:?}: {e}"))?;
    let triage_bin = a
        .triage_bin
        .clone()
        .unwrap_or_else(|| Path::new(MANIFEST_DIR).join("../target/release/triage"));
    if !triage_bin.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build --release, or loadtest/run.sh)",
            triage_bin.display()
        ));
    }
    let mut rep = Report::new(a, sat, fixed, pin, cpus);
    rep.loadavg_start = loadavg();
    let started = Instant::now();

    let mut servers: Vec<Server> = Vec::new();
    let result = measure_all(
        a,
        pin,
        sat,
        fixed,
        &run_id,
        &dir,
        &triage_bin,
        &mut servers,
        &mut rep,
    )
    .await;
    // Whatever happened: stop everything, drop the queues, remove the temp dir.
    for s in servers.iter_mut() {
        s.proc.stop().await;
    }
    let queues: Vec<[String; 4]> = servers.iter().filter_map(|s| s.queues.clone()).collect();
    if let Err(e) = delete_queues(&a.amqp_url, &queues).await {
        rep.notes
            .push(format!("cleanup of the review queues failed: {e}"));
    }
    if let Err(e) = &result {
        for s in &servers {
            eprintln!(
                "--- {} log ({}):\n{}",
                s.name,
                s.proc.log.display(),
                s.proc.log_tail()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e.clone());
    }
    let _ = std::fs::remove_dir_all(&dir);
    rep.loadavg_end = loadavg();
    rep.wall = started.elapsed();
    Ok(rep)
}

#[allow(clippy::too_many_arguments)]
async fn measure_all(
    a: &RunArgs,
    pin: bool,
    sat: Duration,
    fixed: Duration,
    run_id: &str,
    dir: &Path,
    triage_bin: &Path,
    servers: &mut Vec<Server>,
    rep: &mut Report,
) -> Result<()> {
    let proxy_prefix: Vec<String> = if pin {
        vec!["taskset".into(), "-c".into(), a.proxy_cpu.to_string()]
    } else {
        Vec::new()
    };
    // The mock: inherits our CPU (the load CPU).
    let (mock, mock_addr) = start_mock(dir).await?;
    servers.push(Server::new("mock", mock, mock_addr, None));
    eprintln!("mock at {mock_addr}");

    if a.pin_version {
        rep.notes.push(format!(
            "triage's chat task pins its model version (--pin-version): each request's `gpt-4o` becomes `{MODEL}`, and each answer's `model` is checked."
        ));
    }
    // nginx.
    let nginx = if a.no_nginx {
        rep.notes.push("nginx skipped (--no-nginx).".into());
        None
    } else {
        match start_nginx(dir, mock_addr, &proxy_prefix).await {
            Ok((p, addr, version)) => {
                rep.nginx_version = version;
                servers.push(Server::new("nginx", p, addr, None));
                eprintln!("nginx at {addr}");
                Some(servers.len() - 1)
            }
            Err(e) => {
                rep.notes.push(format!("nginx skipped: {e}"));
                eprintln!("nginx skipped: {e}");
                None
            }
        }
    };

    // The hyper floor: hyper in front and behind, nothing between (floor.rs), pinned as the
    // proxies are.
    let floor = if a.no_floor {
        None
    } else {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut argv = proxy_prefix.clone();
        argv.extend([
            exe.display().to_string(),
            "floor".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--upstream".into(),
            mock_addr.to_string(),
        ]);
        let (p, addr) = Proc::start(
            "hyper-floor",
            &argv,
            &[],
            &dir.join("floor.log"),
            Some("listening "),
        )
        .await?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("hyper-floor said {addr:?}: {e}"))?;
        servers.push(Server::new("hyper-floor", p, addr, None));
        eprintln!("hyper-floor at {addr}");
        Some(servers.len() - 1)
    };

    // triage: one process per case, so each has its own peak RSS and queue.
    let mut triage_idx = BTreeMap::new();
    for name in ["triage-pass", "triage-hold10", "triage-hold100"] {
        let s = start_triage(
            triage_bin,
            dir,
            name,
            Model {
                addr: mock_addr,
                pin_version: a.pin_version,
                access_log: None,
            },
            &a.amqp_url,
            run_id,
            &proxy_prefix,
        )
        .await?;
        eprintln!("{name} at {}", s.data);
        servers.push(s);
        triage_idx.insert(name, servers.len() - 1);
    }
    // Idle RSS: settled, before any traffic.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in servers.iter_mut() {
        s.idle_mb = procs::tree_mb(s.proc.pid, "VmRSS:");
    }
    // Idle wake-ups: every process at once, over the same seconds.
    let before: Vec<u64> = servers
        .iter()
        .map(|s| procs::tree_switches(s.proc.pid))
        .collect();
    tokio::time::sleep(IDLE_WINDOW).await;
    for (s, before) in servers.iter_mut().zip(before) {
        let woke = procs::tree_switches(s.proc.pid).saturating_sub(before);
        s.idle_wakeups = woke as f64 / IDLE_WINDOW.as_secs_f64();
    }

    // The targets, in round order: per size direct, nginx, triage-pass; then the holds.
    let mut tgts = Vec::new();
    for &size in &a.sizes {
        tgts.push(Tgt {
            name: "direct",
            size,
            share: 0.0,
            server: 0,
        });
        if let Some(i) = nginx {
            tgts.push(Tgt {
                name: "nginx",
                size,
                share: 0.0,
                server: i,
            });
        }
        if let Some(i) = floor {
            tgts.push(Tgt {
                name: "hyper-floor",
                size,
                share: 0.0,
                server: i,
            });
        }
        tgts.push(Tgt {
            name: "triage-pass",
            size,
            share: 0.0,
            server: triage_idx["triage-pass"],
        });
    }
    tgts.push(Tgt {
        name: "triage-hold10",
        size: Size::S08k,
        share: 0.1,
        server: triage_idx["triage-hold10"],
    });
    tgts.push(Tgt {
        name: "triage-hold100",
        size: Size::S08k,
        share: 1.0,
        server: triage_idx["triage-hold100"],
    });

    // One request through each target before anything is timed.
    for t in &tgts {
        sanity(t, servers).await?;
    }

    let mut results: Vec<TargetResult> = tgts
        .iter()
        .map(|t| TargetResult::new(t.name, t.size, t.share))
        .collect();
    let amqp = Connection::connect(&a.amqp_url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("RabbitMQ at {}: {e}", a.amqp_url))?;

    for round in 0..=a.rounds {
        let warm = round == 0;
        let (sat_d, fixed_d) = if warm {
            (sat / 2, fixed / 2)
        } else {
            (sat, fixed)
        };
        eprintln!(
            "{} ({:.0} s elapsed)",
            if warm {
                "warm-up round".to_string()
            } else {
                format!("round {round}/{}", a.rounds)
            },
            rep_elapsed(rep)
        );
        for (ti, t) in tgts.iter().enumerate() {
            let nums = measure(a, t, servers, sat_d, fixed_d).await;
            eprintln!("  {:<15} {:>4} {}", t.name, t.size.label(), nums.brief());
            if !warm {
                results[ti].rounds.push(nums);
            }
            // Let the proxies' and the broker's background work settle between targets.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        // Drain the review queues between rounds (not timed).
        for s in servers.iter_mut() {
            if let Some(q) = &s.queues {
                drain(&amqp, &q[1], Duration::from_millis(700), &mut s.ids_queue).await?;
            }
        }
    }

    // Peak RSS under load, before the idle-connection test.
    let mut procs_out = Vec::new();
    for s in servers.iter_mut() {
        let alive = s.proc.alive();
        procs_out.push(ProcResult {
            name: s.name.to_string(),
            idle_mb: s.idle_mb,
            idle_wakeups: s.idle_wakeups,
            peak_mb: procs::tree_mb(s.proc.pid, "VmHWM:"),
            conns_mb: f64::NAN,
            conns_ok: 0,
            ids_202: 0,
            ids_queue: 0,
            missing: 0,
            extra: 0,
            has_queue: s.queues.is_some(),
            alive,
        });
    }
    // RSS with N open, idle client connections (each sent one request), per proxy.
    for (i, s) in servers.iter().enumerate() {
        if i == 0 || a.idle_conns == 0 {
            continue;
        }
        let load = Load {
            target: Target::new(s.data, "/v1/chat/completions")?,
            size: Size::S08k,
            hold_share: 0.0,
            connections: 1,
            rate: 0.0,
            duration: Duration::ZERO,
        };
        let (kept, out) = drive::open_idle(&load, a.idle_conns, 100).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        procs_out[i].conns_mb = procs::tree_mb(s.proc.pid, "VmRSS:");
        procs_out[i].conns_ok = kept.len();
        eprintln!(
            "  {} with {} idle connections: {:.1} MB ({})",
            s.name,
            kept.len(),
            procs_out[i].conns_mb,
            out.statuses_str()
        );
        drop(kept);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Correctness: every 202's review id must be in the queue.
    for (i, s) in servers.iter_mut().enumerate() {
        let Some(q) = s.queues.clone() else { continue };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            drain(&amqp, &q[1], Duration::from_millis(700), &mut s.ids_queue).await?;
            let missing = s.ids_202.difference(&s.ids_queue).count();
            if missing == 0 || Instant::now() > deadline {
                break;
            }
        }
        let p = &mut procs_out[i];
        p.ids_202 = s.ids_202.len();
        p.ids_queue = s.ids_queue.len();
        p.missing = s.ids_202.difference(&s.ids_queue).count();
        p.extra = s.ids_queue.difference(&s.ids_202).count();
    }
    let _ = amqp.close(200, "loadtest done".into()).await;
    rep.targets = results;
    rep.procs = procs_out;
    Ok(())
}

fn rep_elapsed(rep: &Report) -> f64 {
    rep.t0.elapsed().as_secs_f64()
}

impl Server {
    fn new(
        name: &'static str,
        proc: Proc,
        data: SocketAddr,
        queues: Option<[String; 4]>,
    ) -> Server {
        Server {
            name,
            proc,
            data,
            queues,
            idle_mb: 0.0,
            idle_wakeups: 0.0,
            ids_202: HashSet::new(),
            ids_queue: HashSet::new(),
        }
    }
}

/// Saturation, then each fixed rate, with CPU per request of the target's process.
async fn measure(
    a: &RunArgs,
    t: &Tgt,
    servers: &mut [Server],
    sat: Duration,
    fixed: Duration,
) -> RoundNums {
    let server = &servers[t.server];
    let (pid, mock_pid) = (server.proc.pid, servers[0].proc.pid);
    let self_pid = std::process::id();
    let tck = procs::clk_tck();
    let load = |rate: f64, duration: Duration| Load {
        target: Target::new(server.data, "/v1/chat/completions").unwrap_or_else(|_| Target {
            addr: server.data,
            host: hyper::header::HeaderValue::from_static("localhost"),
            path: hyper::Uri::from_static("/v1/chat/completions"),
        }),
        size: t.size,
        hold_share: t.share,
        connections: a.connections,
        rate,
        duration,
    };
    let mut ids = Vec::new();
    let mut nums = RoundNums::default();

    // Closed loop to saturation.
    let (c0, m0, s0) = (
        procs::tree_cpu_ticks(pid),
        procs::cpu_ticks(mock_pid),
        procs::cpu_ticks(self_pid),
    );
    let out = drive::run(&load(0.0, sat)).await;
    let (c1, m1, s1) = (
        procs::tree_cpu_ticks(pid),
        procs::cpu_ticks(mock_pid),
        procs::cpu_ticks(self_pid),
    );
    let secs = out.elapsed.as_secs_f64().max(1e-9);
    nums.sat_rps = out.rate();
    nums.sat_cpu_us = per_request_us(c1 - c0, out.completed, tck);
    nums.sat_p50 = out.ms(0.5);
    nums.sat_p99 = out.ms(0.99);
    nums.load_busy = if t.server == 0 {
        // direct: the mock is the target; the load side is the driver alone.
        (s1 - s0) as f64 / tck / secs
    } else {
        ((m1 - m0) + (s1 - s0)) as f64 / tck / secs
    };
    nums.holds_per_s = out.count(202) as f64 / secs;
    merge_statuses(&mut nums.statuses, &out);
    ids.extend(out.ids);

    // Stall probe: one keep-alive connection at 100 req/s. Nothing queues here, so a p50
    // of tens of ms can only be a stall (Nagle + delayed ACK: ~40 ms per request).
    let out = drive::run(&Load {
        connections: 1,
        ..load(100.0, Duration::from_millis(500))
    })
    .await;
    nums.probe_p50 = out.ms(0.5);
    nums.probe_p99 = out.ms(0.99);
    merge_statuses(&mut nums.statuses, &out);
    ids.extend(out.ids);

    for &rate in &a.rates {
        let c0 = procs::tree_cpu_ticks(pid);
        let out = drive::run(&load(rate, fixed)).await;
        let c1 = procs::tree_cpu_ticks(pid);
        let lag = if out.timer_wakes > 0 {
            out.timer_lag_sum.as_secs_f64() * 1e3 / out.timer_wakes as f64
        } else {
            0.0
        };
        nums.rates.push(PhaseNums {
            rate,
            p50: out.ms(0.5),
            p90: out.ms(0.9),
            p99: out.ms(0.99),
            p999: out.ms(0.999),
            // Over the time it took: a target that falls behind finishes late.
            achieved: out.completed as f64 / out.elapsed.max(fixed).as_secs_f64(),
            cpu_us: per_request_us(c1 - c0, out.completed, tck),
            timer_lag_ms: lag,
            unsent: out.unsent,
        });
        merge_statuses(&mut nums.statuses, &out);
        ids.extend(out.ids);
    }
    servers[t.server].ids_202.extend(ids);
    nums
}

fn merge_statuses(into: &mut BTreeMap<String, u64>, out: &drive::Outcome) {
    for (k, v) in &out.statuses {
        *into.entry(k.to_string()).or_default() += v;
    }
    if out.errors > 0 {
        *into.entry("error".into()).or_default() += out.errors;
    }
    if out.unsent > 0 {
        *into.entry("unsent".into()).or_default() += out.unsent;
    }
}

fn per_request_us(ticks: u64, requests: u64, tck: f64) -> f64 {
    if requests == 0 {
        return f64::NAN;
    }
    ticks as f64 / tck * 1e6 / requests as f64
}

/// One request through the target: it must answer 200 or 202.
async fn sanity(t: &Tgt, servers: &mut [Server]) -> Result<()> {
    let s = &mut servers[t.server];
    let load = Load {
        target: Target::new(s.data, "/v1/chat/completions")?,
        size: t.size,
        hold_share: t.share,
        connections: 1,
        rate: 0.0,
        duration: Duration::ZERO,
    };
    let (kept, out) = drive::open_idle(&load, 1, 1).await;
    drop(kept);
    s.ids_202.extend(out.ids.iter().cloned());
    if out.count(200) + out.count(202) != 1 {
        return Err(format!(
            "{} ({}): the first request got {} — see {}:\n{}",
            t.name,
            s.data,
            out.statuses_str(),
            s.proc.log.display(),
            s.proc.log_tail()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// nginx

fn find_in_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

async fn start_nginx(
    dir: &Path,
    mock: SocketAddr,
    prefix_cmd: &[String],
) -> Result<(Proc, SocketAddr, String)> {
    let nginx = match find_in_path("nginx") {
        Some(p) => p,
        None => {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                return Err("not installed, and not root to apt-get install it".into());
            }
            eprintln!("nginx not found: apt-get install -y nginx");
            let log = dir.join("apt.log");
            let apt = |args: &'static [&'static str]| {
                let log = log.clone();
                async move {
                    let out = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .ok()?;
                    let err = out.try_clone().ok()?;
                    tokio::process::Command::new("apt-get")
                        .args(args)
                        .env("DEBIAN_FRONTEND", "noninteractive")
                        .stdout(out)
                        .stderr(err)
                        .status()
                        .await
                        .ok()
                        .map(|s| s.success())
                }
            };
            if apt(&["install", "-y", "nginx"]).await != Some(true) {
                let _ = apt(&["update"]).await;
                let _ = apt(&["install", "-y", "nginx"]).await;
            }
            find_in_path("nginx").ok_or("apt-get install -y nginx failed")?
        }
    };
    let version = tokio::process::Command::new(&nginx)
        .arg("-v")
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    let port = free_port()?;
    let prefix = dir.join("nginx");
    for sub in ["logs", "tmp"] {
        std::fs::create_dir_all(prefix.join(sub)).map_err(|e| e.to_string())?;
    }
    let p = prefix.display();
    // A plain reverse proxy, tuned as one would for this job: one worker, upstream
    // keep-alive, no access log, buffers large enough for a 50 KB answer in memory.
    let conf = format!(
        r#"worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/client;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream model {{
        server {mock};
        keepalive 32;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 16k;
            proxy_buffers 8 16k;
        }}
    }}
}}
"#
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let mut argv: Vec<String> = prefix_cmd.to_vec();
    argv.extend([
        nginx.display().to_string(),
        "-c".into(),
        conf_path.display().to_string(),
        "-p".into(),
        prefix.display().to_string(),
        "-g".into(),
        "daemon off;".into(),
    ]);
    let (mut proc, _) = Proc::start("nginx", &argv, &[], &dir.join("nginx.log"), None).await?;
    let addr: SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if !proc.alive() || Instant::now() > deadline {
            let tail = proc.log_tail();
            let elog = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
            proc.stop().await;
            return Err(format!("did not start: {tail} {elog}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The worker is forked after the listen socket: wait for it.
    for _ in 0..100 {
        if procs::tree(proc.pid).len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((proc, addr, version))
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The mock model server, a child of this process (so on the load CPU when pinned).
pub(crate) async fn start_mock(dir: &Path) -> Result<(Proc, SocketAddr)> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (mock, addr) = Proc::start(
        "mock",
        &[
            exe.display().to_string(),
            "mock".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ],
        &[],
        &dir.join("mock.log"),
        Some("listening "),
    )
    .await?;
    let addr = addr
        .parse()
        .map_err(|e| format!("mock said {addr:?}: {e}"))?;
    Ok((mock, addr))
}

// ---------------------------------------------------------------------------------------
// triage

/// What triage's rules say about the mock.
#[derive(Clone, Copy)]
pub(crate) struct Model {
    pub addr: SocketAddr,
    /// The chat task pins its model version (`--pin-version`).
    pub pin_version: bool,
    /// The access log on, at `info`, in this format (`text` or `json`), as triage runs by
    /// default; `None`: off, and only warnings logged (as `run` measures triage, and as
    /// nginx runs with `access_log off`).
    pub access_log: Option<LogFormat>,
}

/// triage's log format (`TRIAGE_LOG_FORMAT`).
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

pub(crate) async fn start_triage(
    bin: &Path,
    dir: &Path,
    name: &'static str,
    model: Model,
    amqp_url: &str,
    run_id: &str,
    prefix_cmd: &[String],
) -> Result<Server> {
    let Model {
        addr: mock,
        pin_version,
        access_log,
    } = model;
    let home = dir.join(name);
    let rules_dir = home.join("rules");
    let spool = home.join("spool");
    for d in [&rules_dir, &spool] {
        std::fs::create_dir_all(d).map_err(|e| format!("{d:?}: {e}"))?;
    }
    let pin = if pin_version {
        format!(
            "\n    model: {{ pinned: {MODEL}, request_field: /model, aliases: [gpt-4o], response_field: /model }}"
        )
    } else {
        String::new()
    };
    let rules = format!(
        r#"version: 1
upstreams:
  model: {{ url: "http://{mock}", timeout_ms: 30000 }}
tasks:
  - name: chat
    match: {{ path_prefix: /v1/chat/completions, method: POST }}
    upstream: model{pin}
    confidence: {{ source: openai_logprobs, aggregate: mean }}
    threshold: 0.85
    on_review: hold
  - name: classify
    match: {{ path_prefix: /v1/classify, method: POST }}
    upstream: model
    confidence: {{ source: max, pointer: /probabilities }}
    threshold: 0.85
    on_review: hold
"#
    );
    let rules_path = rules_dir.join("rules.yaml");
    std::fs::write(&rules_path, rules).map_err(|e| e.to_string())?;
    let base = format!("loadtest.{run_id}.{name}");
    let queues = [
        format!("{base}.review"),
        format!("{base}.review"),
        format!("{base}.verdicts"),
        format!("{base}.verdicts.metrics"),
    ];
    let mut argv: Vec<String> = prefix_cmd.to_vec();
    argv.extend([
        bin.display().to_string(),
        "serve".into(),
        "--rules".into(),
        rules_path.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--worker-threads".into(),
        "1".into(),
        "--access-log".into(),
        if access_log.is_some() { "info" } else { "off" }.into(),
        "--spool-dir".into(),
        spool.display().to_string(),
        "--review-exchange".into(),
        queues[0].clone(),
        "--review-queue".into(),
        queues[1].clone(),
        "--verdict-exchange".into(),
        queues[2].clone(),
        "--verdict-queue".into(),
        queues[3].clone(),
        "--drain-delay-ms".into(),
        "0".into(),
        "--shutdown-timeout-ms".into(),
        "2000".into(),
    ]);
    let (proc, rest) = Proc::start(
        name,
        &argv,
        &[
            ("TRIAGE_AMQP_URL", amqp_url),
            (
                "TRIAGE_LOG",
                if access_log.is_some() { "info" } else { "warn" },
            ),
            (
                "TRIAGE_LOG_FORMAT",
                access_log.map_or("text", LogFormat::as_str),
            ),
        ],
        &home.join("stderr.log"),
        Some("listening "),
    )
    .await?;
    // "data=ADDR admin=ADDR"
    let field = |key: &str| -> Result<SocketAddr> {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .ok_or_else(|| format!("{name}: no {key} in {rest:?}"))?
            .parse()
            .map_err(|e| format!("{name}: {rest:?}: {e}"))
    };
    let (data, admin) = (field("data=")?, field("admin=")?);
    let server = Server::new(name, proc, data, Some(queues));
    // Ready with the broker connected, so holds go to RabbitMQ rather than the spool.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, v)) = get_json(admin, "/readyz").await
            && v["review_path"]["broker"] == true
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{name}: not ready with the broker within 30 s:\n{}",
                server.proc.log_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(server)
}

async fn get_json(addr: SocketAddr, path: &str) -> Option<(u16, serde_json::Value)> {
    let mut s = drive::connect(addr).await.ok()?;
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = path.parse().ok()?;
    req.headers_mut()
        .insert(HOST, addr.to_string().parse().ok()?);
    s.ready().await.ok()?;
    let resp = s.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, serde_json::from_slice(&body).unwrap_or_default()))
}

// ---------------------------------------------------------------------------------------
// RabbitMQ

/// Consume everything in `queue` (no ack: taken off the queue) until it stays quiet for
/// `idle`; the review ids (message_id, else the body's review_id) go into `into`.
async fn drain(
    conn: &Connection,
    queue: &str,
    idle: Duration,
    into: &mut HashSet<String>,
) -> Result<()> {
    let e = |e: lapin::Error| format!("draining {queue}: {e}");
    let ch = conn.create_channel().await.map_err(e)?;
    ch.basic_qos(5000, BasicQosOptions::default())
        .await
        .map_err(e)?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(e)?;
    while let Ok(Some(Ok(d))) = tokio::time::timeout(idle, consumer.next()).await {
        let id = d
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_string())
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&d.data)
                    .ok()
                    .and_then(|v| v["review_id"].as_str().map(str::to_string))
            });
        if let Some(id) = id {
            into.insert(id);
        }
    }
    let _ = ch.close(200, "drained".into()).await;
    Ok(())
}

pub(crate) async fn delete_queues(url: &str, all: &[[String; 4]]) -> Result<()> {
    if all.is_empty() {
        return Ok(());
    }
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())?;
    for [rx, rq, vx, vq] in all {
        for q in [
            rq.clone(),
            format!("{rq}.dead"),
            vq.clone(),
            format!("{vq}.dead"),
        ] {
            if let Ok(ch) = conn.create_channel().await {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
                let _ = ch.close(200, "ok".into()).await;
            }
        }
        for x in [
            rx.clone(),
            format!("{rx}.dead"),
            vx.clone(),
            format!("{vx}.dead"),
        ] {
            if let Ok(ch) = conn.create_channel().await {
                let _ = ch
                    .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
                let _ = ch.close(200, "ok".into()).await;
            }
        }
    }
    let _ = conn.close(200, "loadtest cleanup".into()).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
