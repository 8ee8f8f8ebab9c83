//! `ab`: triage binaries alternated at saturation in one sitting (A B A B …), the first the
//! baseline; with `--rate`, at a fixed rate instead (an open loop), where each request wakes
//! an idle process, as in most sidecars' day; with `--hold-share`, a share of the outputs
//! held. A full `run` moves by ±10 % between rounds on a shared machine, more than most
//! single changes save; alternating two builds of triage against the same mock, minutes
//! apart, is what shows a change of a few per cent. Each binary starts afresh every round
//! (pinned and with one worker as in `run`, its own queues), gets a warm-up, then the
//! measured load, and the order rotates from round to round. CPU comes from `/proc` split into user
//! and system time, since a change to triage's code moves the first, and the second follows
//! the kernel's network path and the machine's noise. Besides each binary's medians, the
//! report gives the median of the rounds' own ratios (B's figure over A's in the same
//! round), which the machine's drift from round to round does not move, and in how many
//! rounds B came out below A. Giving the baseline twice (`--bin a=X --bin b=Y --bin a2=X`)
//! measures the method's own noise: A against A.

use std::path::PathBuf;
use std::time::Duration;

use crate::drive::{self, Load, Target};
use crate::procs;
use crate::run::{LogFormat, Model, delete_queues, start_mock, start_triage, unix_secs};
use crate::{Result, Size};

#[derive(clap::Args)]
pub struct AbArgs {
    /// A triage binary, `LABEL=PATH` or `PATH` (labelled by its file name); give two or
    /// more, the first is the baseline.
    #[arg(long = "bin", required = true)]
    pub bins: Vec<String>,
    /// Rounds: every binary once per round.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds measured per binary and round (after 1.5 s of warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Requests a second, open loop, warm-up and measure alike; 0 (the default): closed
    /// loop, to saturation.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Share of answers the mock makes low-confidence, held for review (202, published with
    /// a confirm to the local broker); 0 (the default): every output passes.
    #[arg(long, default_value_t = 0.0)]
    pub hold_share: f64,
    /// Response body size asked of the mock.
    #[arg(long, default_value = "0.8k")]
    pub size: Size,
    /// Keep-alive connections of the driver.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    #[arg(long, default_value_t = 0)]
    pub proxy_cpu: usize,
    #[arg(long, default_value_t = 1)]
    pub load_cpu: usize,
    /// RabbitMQ for triage (it starts only once its review path is up).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// The chat task pins its model version (as `run --pin-version`).
    #[arg(long)]
    pub pin_version: bool,
    /// triage's access log on, in this format, with `TRIAGE_LOG=info` (as triage runs by
    /// default; lines go to a file); without it the access log is off and only warnings
    /// are logged.
    #[arg(long, value_enum)]
    pub access_log: Option<LogFormat>,
}

/// One binary's figures in one round.
#[derive(Clone, Copy)]
struct Sample {
    rps: f64,
    user_us: f64,
    sys_us: f64,
    /// Share of the proxy's CPU the hypervisor took while it was measured, %.
    steal_pct: f64,
}

pub fn main(a: AbArgs) -> Result<()> {
    if a.bins.len() < 2 {
        return Err("give at least two --bin".into());
    }
    procs::raise_nofile_limit();
    let pin = procs::allowed_cpus() >= 2 && a.proxy_cpu != a.load_cpu;
    if pin {
        procs::pin_self(a.load_cpu)?;
    }
    let bins: Vec<(&'static str, PathBuf)> = a
        .bins
        .iter()
        .map(|b| {
            let (label, path) = match b.split_once('=') {
                Some((l, p)) => (l.to_string(), PathBuf::from(p)),
                None => {
                    let p = PathBuf::from(b);
                    let name = p
                        .file_name()
                        .map_or(b.clone(), |n| n.to_string_lossy().into());
                    (name, p)
                }
            };
            // A label lives as long as the run; start_triage names processes by `&'static str`.
            (&*Box::leak(label.into_boxed_str()), path)
        })
        .collect();
    for (_, p) in &bins {
        if !p.exists() {
            return Err(format!("{}: not found", p.display()));
        }
    }
    let rt = crate::runtime()?;
    let samples = rt.block_on(alternate(&a, &bins, pin))?;
    println!("{}", markdown(&a, &bins, &samples));
    Ok(())
}

async fn alternate(
    a: &AbArgs,
    bins: &[(&'static str, PathBuf)],
    pin: bool,
) -> Result<Vec<Vec<Sample>>> {
    let run_id = format!("ab-{}-{}", std::process::id(), unix_secs() % 100_000);
    let dir = std::env::temp_dir().join(format!("triage-loadtest-{run_id}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{dir:?}: {e}"))?;
    let (mut mock, mock_addr) = start_mock(&dir).await?;
    let prefix: Vec<String> = if pin {
        vec!["taskset".into(), "-c".into(), a.proxy_cpu.to_string()]
    } else {
        Vec::new()
    };
    let mut samples = vec![Vec::new(); bins.len()];
    let mut result = Ok(());
    'rounds: for round in 1..=a.rounds.max(1) {
        // Each round starts one binary later (A B, B A, …): whatever a position in the
        // round costs (the broker still tearing down the last binary's connection and
        // queues, say) falls on every binary alike.
        for k in 0..bins.len() {
            let i = (k + round - 1) % bins.len();
            let (label, bin) = &bins[i];
            // Let the last binary's exit and cleanup settle first.
            tokio::time::sleep(Duration::from_secs(1)).await;
            match one(a, label, bin, &dir, mock_addr, &run_id, &prefix).await {
                Ok(s) => {
                    eprintln!(
                        "round {round} {label:>16}: {:>8.0} req/s  user {:5.2}  sys {:5.2}  total {:5.2} µs/req  steal {:4.1} %",
                        s.rps,
                        s.user_us,
                        s.sys_us,
                        s.user_us + s.sys_us,
                        s.steal_pct
                    );
                    samples[i].push(s);
                }
                Err(e) => {
                    result = Err(e);
                    break 'rounds;
                }
            }
        }
    }
    mock.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| samples)
}

/// Start one binary, warm it up, measure it, stop it and drop its queues.
async fn one(
    a: &AbArgs,
    label: &'static str,
    bin: &std::path::Path,
    dir: &std::path::Path,
    mock: std::net::SocketAddr,
    run_id: &str,
    prefix: &[String],
) -> Result<Sample> {
    let model = Model {
        addr: mock,
        pin_version: a.pin_version,
        access_log: a.access_log,
    };
    let mut server = start_triage(bin, dir, label, model, &a.amqp_url, run_id, prefix).await?;
    let load = |secs: f64| -> Result<Load> {
        Ok(Load {
            target: Target::new(server.data, "/v1/chat/completions")?,
            size: a.size,
            hold_share: a.hold_share,
            connections: a.connections,
            rate: a.rate,
            duration: Duration::from_secs_f64(secs),
        })
    };
    let pid = server.proc.pid;
    let measured = async {
        drive::run(&load(1.5)?).await;
        let (u0, s0) = procs::cpu_ticks_split(pid);
        let (st0, all0) = procs::cpu_steal_ticks(a.proxy_cpu);
        let out = drive::run(&load(a.secs)?).await;
        let (u1, s1) = procs::cpu_ticks_split(pid);
        let (st1, all1) = procs::cpu_steal_ticks(a.proxy_cpu);
        // Held outputs answer 202; nothing else is expected.
        let held = if a.hold_share > 0.0 {
            out.count(202)
        } else {
            0
        };
        let n = out.count(200) + held;
        if n == 0 || n != out.completed {
            return Err(format!(
                "{label}: expected only 200s{}, got {} ({} transport errors)",
                if a.hold_share > 0.0 { " and 202s" } else { "" },
                out.statuses_str(),
                out.errors
            ));
        }
        let us = |ticks: u64| ticks as f64 / procs::clk_tck() * 1e6 / n as f64;
        Ok(Sample {
            rps: out.rate(),
            user_us: us(u1.saturating_sub(u0)),
            sys_us: us(s1.saturating_sub(s0)),
            steal_pct: 100.0 * st1.saturating_sub(st0) as f64
                / all1.saturating_sub(all0).max(1) as f64,
        })
    }
    .await;
    server.proc.stop().await;
    if let Some(q) = server.queues.take() {
        let _ = delete_queues(&a.amqp_url, &[q]).await;
    }
    measured
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A measure's name and how to read it off a sample.
type Measure = (&'static str, fn(&Sample) -> f64);

fn markdown(a: &AbArgs, bins: &[(&'static str, PathBuf)], samples: &[Vec<Sample>]) -> String {
    let med = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
    let (rps, how) = if a.rate > 0.0 {
        ("achieved req/s", format!("at {} req/s (open loop)", a.rate))
    } else {
        (
            "saturation req/s",
            "at saturation (closed loop)".to_string(),
        )
    };
    let measures: [Measure; 4] = [
        (rps, |s| s.rps),
        ("user CPU µs/req", |s| s.user_us),
        ("system CPU µs/req", |s| s.sys_us),
        ("total CPU µs/req", |s| s.user_us + s.sys_us),
    ];
    let mut md = format!(
        "A/B {how}: {} rounds, {} body, {} connections, {} s per binary and round{}{}{}; medians (range), and the median of the rounds' own ratios.\n\n| measure |",
        a.rounds.max(1),
        a.size.label(),
        a.connections,
        a.secs,
        if a.pin_version {
            ", the chat task pinning its model version"
        } else {
            ""
        },
        if a.hold_share > 0.0 {
            format!(", {} % of outputs held", a.hold_share * 100.0)
        } else {
            String::new()
        },
        match a.access_log {
            Some(format) => format!(
                ", the access log on ({}, `TRIAGE_LOG=info`)",
                format.as_str()
            ),
            None => String::new(),
        }
    );
    for (label, _) in bins {
        md.push_str(&format!(" {label} |"));
    }
    for (label, _) in &bins[1..] {
        md.push_str(&format!(" {label} / {} |", bins[0].0));
    }
    for (label, _) in &bins[1..] {
        md.push_str(&format!(" {label} / {}, round by round |", bins[0].0));
    }
    md.push_str("\n| --- |");
    md.push_str(&" ---: |".repeat(3 * bins.len() - 2));
    md.push('\n');
    for (name, f) in measures {
        md.push_str(&format!("| {name} |"));
        for (i, runs) in samples.iter().enumerate() {
            let v: Vec<f64> = runs.iter().map(f).collect();
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            let prec = if name.ends_with("req/s") { 0 } else { 2 };
            md.push_str(&format!(
                " {:.prec$} ({:.prec$}–{:.prec$}) |",
                med(i, f),
                lo,
                hi
            ));
        }
        for i in 1..bins.len() {
            md.push_str(&format!(" {:.3}× |", med(i, f) / med(0, f)));
        }
        // Paired: each round's ratio, so that drift of the machine between rounds cancels.
        for runs in &samples[1..] {
            let ratios: Vec<f64> = runs
                .iter()
                .zip(&samples[0])
                .map(|(b, a)| f(b) / f(a))
                .collect();
            let below = ratios.iter().filter(|&&r| r < 1.0).count();
            md.push_str(&format!(
                " {:.3}× ({below} of {} below 1) |",
                median(ratios.clone()),
                ratios.len()
            ));
        }
        md.push('\n');
    }
    // Time the hypervisor took from the proxy's CPU: where it differs between binaries, so
    // may their figures, whatever the code did.
    md.push_str("\nSteal on the proxy's CPU while measured, median (max):");
    for (i, (label, _)) in bins.iter().enumerate() {
        let max = samples[i].iter().map(|s| s.steal_pct).fold(0.0, f64::max);
        md.push_str(&format!(
            " {label} {:.1} % ({max:.1} %);",
            med(i, |s| s.steal_pct)
        ));
    }
    md.pop();
    md.push_str(".\n");
    md
}
