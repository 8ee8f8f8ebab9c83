//! The figures and their Markdown table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::Size;
use crate::run::RunArgs;

/// A keep-alive p50 above this is flagged (a Nagle/delayed-ACK stall shows as ~40 ms).
const STALL_MS: f64 = 10.0;

pub struct Report {
    pub t0: Instant,
    pub quick: bool,
    pub rounds: usize,
    pub sat: Duration,
    pub fixed: Duration,
    pub connections: usize,
    pub rates: Vec<f64>,
    pub pin: Option<(usize, usize)>,
    pub cpus: usize,
    pub idle_conns: usize,
    pub nginx_version: String,
    pub commit: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub wall: Duration,
    pub notes: Vec<String>,
    pub targets: Vec<TargetResult>,
    pub procs: Vec<ProcResult>,
}

pub struct TargetResult {
    pub name: &'static str,
    pub size: Size,
    pub share: f64,
    pub rounds: Vec<RoundNums>,
}

#[derive(Default)]
pub struct RoundNums {
    pub sat_rps: f64,
    /// CPU of the target's process tree per request (the mock's for `direct`).
    pub sat_cpu_us: f64,
    pub sat_p50: f64,
    pub sat_p99: f64,
    /// One keep-alive connection at 100 req/s (the stall probe).
    pub probe_p50: f64,
    pub probe_p99: f64,
    /// CPU use of the load side (driver + mock) during saturation, in cores.
    pub load_busy: f64,
    pub holds_per_s: f64,
    pub statuses: BTreeMap<String, u64>,
    pub rates: Vec<PhaseNums>,
}

pub struct PhaseNums {
    pub rate: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub achieved: f64,
    pub cpu_us: f64,
    pub timer_lag_ms: f64,
    pub unsent: u64,
}

pub struct ProcResult {
    pub name: String,
    pub idle_mb: f64,
    /// Context switches a second of all the process's threads while idle.
    pub idle_wakeups: f64,
    pub peak_mb: f64,
    pub conns_mb: f64,
    pub conns_ok: usize,
    pub ids_202: usize,
    pub ids_queue: usize,
    pub missing: usize,
    pub extra: usize,
    pub has_queue: bool,
    pub alive: bool,
}

impl TargetResult {
    pub fn new(name: &'static str, size: Size, share: f64) -> TargetResult {
        TargetResult {
            name,
            size,
            share,
            rounds: Vec::new(),
        }
    }
}

impl RoundNums {
    pub fn brief(&self) -> String {
        let mut s = format!(
            "sat {:>7.0} req/s {:>6.1} µs/req (load side {:.0} %)",
            self.sat_rps,
            self.sat_cpu_us,
            self.load_busy * 100.0
        );
        let _ = write!(s, " | 1 conn: p50 {:.3} ms", self.probe_p50);
        for p in &self.rates {
            let _ = write!(
                s,
                " | {}: p50 {:.3} p99 {:.3} ms",
                rate_label(p.rate),
                p.p50,
                p.p99
            );
        }
        if self.holds_per_s > 0.0 {
            let _ = write!(s, " | {:.0} holds/s", self.holds_per_s);
        }
        let _ = write!(s, " | {}", statuses_str(&self.statuses));
        s
    }
}

fn statuses_str(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{v}×{k}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn rate_label(rate: f64) -> String {
    if rate >= 1000.0 && (rate / 1000.0).fract() == 0.0 {
        format!("{}k", rate / 1000.0)
    } else {
        format!("{rate}")
    }
}

/// A table's head with one column per body size, after a blank line.
fn table_head(title: &str, sizes: &[Size]) -> String {
    let mut head = format!("\n| {title} |");
    let mut rule = "| --- |".to_string();
    for s in sizes {
        let _ = write!(head, " {} KB |", s.label().trim_end_matches('k'));
        rule.push_str(" ---: |");
    }
    format!("{head}\n{rule}")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn f(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "—".into()
    }
}

fn signed(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:+.decimals$}")
    } else {
        "—".into()
    }
}

impl Report {
    pub fn new(a: &RunArgs, sat: Duration, fixed: Duration, pin: bool, cpus: usize) -> Report {
        Report {
            t0: Instant::now(),
            quick: a.quick,
            rounds: a.rounds,
            sat,
            fixed,
            connections: a.connections,
            rates: a.rates.clone(),
            pin: pin.then_some((a.proxy_cpu, a.load_cpu)),
            cpus,
            idle_conns: a.idle_conns,
            nginx_version: String::new(),
            commit: git_commit(),
            loadavg_start: String::new(),
            loadavg_end: String::new(),
            wall: Duration::ZERO,
            notes: Vec::new(),
            targets: Vec::new(),
            procs: Vec::new(),
        }
    }

    fn target(&self, name: &str, size: Size) -> Option<&TargetResult> {
        self.targets
            .iter()
            .find(|t| t.name == name && t.size == size)
    }

    /// Median over rounds of `get` for a target.
    fn med(&self, name: &str, size: Size, get: impl Fn(&RoundNums) -> f64) -> f64 {
        self.target(name, size)
            .map(|t| median(t.rounds.iter().map(&get).collect()))
            .unwrap_or(f64::NAN)
    }

    /// Median over rounds of (target − direct of the same size, same round).
    fn added(&self, t: &TargetResult, get: impl Fn(&RoundNums) -> f64) -> f64 {
        let Some(d) = self.target("direct", t.size) else {
            return f64::NAN;
        };
        median(
            t.rounds
                .iter()
                .zip(&d.rounds)
                .map(|(r, dr)| get(r) - get(dr))
                .collect(),
        )
    }

    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let kind = if self.quick { "quick run" } else { "full run" };
        let _ = writeln!(
            o,
            "# triage load test — {} ({kind})\n",
            utc_string(crate::run::unix_secs())
        );
        let pin = match self.pin {
            Some((p, l)) => format!(
                "proxies pinned to CPU {p} (`taskset`, one worker), driver and mock on CPU {l}"
            ),
            None => "not pinned (fewer than 2 CPUs, or --no-pin)".into(),
        };
        let rates: Vec<String> = self.rates.iter().map(|r| rate_label(*r)).collect();
        let _ = writeln!(
            o,
            "{} CPUs, load average {} at start, {} at end; {pin}. triage {}; {}. \
             {} measured round(s) after a warm-up, targets interleaved round by round; \
             saturation: closed loop, {} connections, {:.1} s; fixed rates {} req/s: open loop, \
             {} connections, {:.1} s each, latency from each request's intended send time. \
             Wall time {:.0} s. Figures are medians over rounds; \"+\" columns are added \
             over `direct` (same body, same round). CPU is utime+stime of the process tree \
             from /proc (USER_HZ {}), per request served.\n",
            self.cpus,
            self.loadavg_start,
            self.loadavg_end,
            self.commit,
            if self.nginx_version.is_empty() {
                "nginx not measured".to_string()
            } else {
                self.nginx_version.clone()
            },
            self.rounds,
            self.connections,
            self.sat.as_secs_f64(),
            rates.join(" and "),
            self.connections,
            self.fixed.as_secs_f64(),
            self.wall.as_secs_f64(),
            crate::procs::clk_tck(),
        );

        // Table 1: per target.
        let last_rate = self.rates.last().copied().unwrap_or(0.0);
        let mut head = "| target | body | sat req/s | CPU µs/req (sat) |".to_string();
        let mut rule = "| --- | --- | ---: | ---: |".to_string();
        for r in &rates {
            let _ = write!(head, " CPU µs/req @{r} |");
            rule.push_str(" ---: |");
        }
        head.push_str(" keep-alive p50, 1 conn @100/s ms |");
        rule.push_str(" ---: |");
        for r in &rates {
            let _ = write!(head, " p50 / p99 @{r} ms | + p50 / + p99 @{r} ms |");
            rule.push_str(" ---: | ---: |");
        }
        head.push_str(" holds/s (sat) | statuses |");
        rule.push_str(" ---: | --- |");
        let _ = writeln!(o, "{head}\n{rule}");
        for t in &self.targets {
            let direct = t.name == "direct";
            let mock = if direct { " (mock)" } else { "" };
            let mut row = format!(
                "| {} | {} KB | {} | {}{mock} |",
                t.name,
                t.size.label().trim_end_matches('k'),
                f(self.med(t.name, t.size, |r| r.sat_rps), 0),
                f(self.med(t.name, t.size, |r| r.sat_cpu_us), 1),
            );
            for i in 0..self.rates.len() {
                let cpu = |r: &RoundNums| r.rates.get(i).map(|p| p.cpu_us).unwrap_or(f64::NAN);
                let _ = write!(row, " {}{mock} |", f(self.med(t.name, t.size, cpu), 1));
            }
            let _ = write!(
                row,
                " {} |",
                f(self.med(t.name, t.size, |r| r.probe_p50), 3)
            );
            for i in 0..self.rates.len() {
                let get50 = |r: &RoundNums| r.rates.get(i).map(|p| p.p50).unwrap_or(f64::NAN);
                let get99 = |r: &RoundNums| r.rates.get(i).map(|p| p.p99).unwrap_or(f64::NAN);
                let _ = write!(
                    row,
                    " {} / {} |",
                    f(self.med(t.name, t.size, get50), 3),
                    f(self.med(t.name, t.size, get99), 3)
                );
                if direct {
                    row.push_str(" — |");
                } else {
                    let _ = write!(
                        row,
                        " {} / {} |",
                        signed(self.added(t, get50), 3),
                        signed(self.added(t, get99), 3)
                    );
                }
            }
            let holds = if t.share > 0.0 {
                f(self.med(t.name, t.size, |r| r.holds_per_s), 0)
            } else {
                "—".into()
            };
            let mut all = BTreeMap::new();
            for r in &t.rounds {
                for (k, v) in &r.statuses {
                    *all.entry(k.clone()).or_insert(0u64) += v;
                }
            }
            let _ = writeln!(row, " {holds} | {} |", statuses_str(&all));
            o.push_str(&row);
        }

        // Table 2: per process.
        let _ = writeln!(
            o,
            "\n| process | idle RSS MB | idle wake-ups/s | peak RSS (VmHWM) MB | RSS with {} idle conns MB | 202 answers | review ids in queue | missing | extra |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            self.idle_conns
        );
        for p in &self.procs {
            let q = |x: usize| {
                if p.has_queue {
                    x.to_string()
                } else {
                    "—".into()
                }
            };
            let conns = if p.name == "mock" {
                "—".to_string()
            } else if p.conns_ok < self.idle_conns && p.conns_mb.is_finite() {
                format!("{} ({} conns only)", f(p.conns_mb, 1), p.conns_ok)
            } else {
                f(p.conns_mb, 1)
            };
            let missing = if p.has_queue && p.missing > 0 {
                format!("**{}**", p.missing)
            } else {
                q(p.missing)
            };
            let _ = writeln!(
                o,
                "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.name,
                if p.alive { "" } else { " (died)" },
                f(p.idle_mb, 1),
                f(p.idle_wakeups, 1),
                f(p.peak_mb, 1),
                conns,
                q(p.ids_202),
                q(p.ids_queue),
                missing,
                q(p.extra)
            );
        }

        // Table 3: ratios triage / nginx.
        let sizes: Vec<Size> = {
            let mut v: Vec<Size> = self
                .targets
                .iter()
                .filter(|t| t.name == "triage-pass")
                .map(|t| t.size)
                .collect();
            v.dedup();
            v
        };
        let has_nginx = self.targets.iter().any(|t| t.name == "nginx");
        let ratio = |tname: &str, tsize: Size, nsize: Size, get: &dyn Fn(&RoundNums) -> f64| {
            self.med(tname, tsize, get) / self.med("nginx", nsize, get)
        };
        if has_nginx {
            let _ = writeln!(o, "{}", table_head("ratio triage / nginx", &sizes));
            type Getter = Box<dyn Fn(&RoundNums) -> f64>;
            let mut rows: Vec<(String, &str, Getter)> = vec![(
                "CPU per request at saturation, pass".into(),
                "triage-pass",
                Box::new(|r: &RoundNums| r.sat_cpu_us),
            )];
            // Every fixed rate: a sidecar mostly lives at the low ones, where each request
            // wakes an idle process.
            for (i, &rate) in self.rates.iter().enumerate() {
                rows.push((
                    format!("CPU per request at {} req/s, pass", rate_label(rate)),
                    "triage-pass",
                    Box::new(move |r: &RoundNums| {
                        r.rates.get(i).map(|p| p.cpu_us).unwrap_or(f64::NAN)
                    }),
                ));
            }
            rows.extend::<[(String, &str, Getter); 3]>([
                (
                    "saturation req/s, pass".into(),
                    "triage-pass",
                    Box::new(|r: &RoundNums| r.sat_rps),
                ),
                (
                    "CPU per request at saturation, 10 % held".into(),
                    "triage-hold10",
                    Box::new(|r: &RoundNums| r.sat_cpu_us),
                ),
                (
                    "CPU per request at saturation, 100 % held".into(),
                    "triage-hold100",
                    Box::new(|r: &RoundNums| r.sat_cpu_us),
                ),
            ]);
            for (label, tname, get) in &rows {
                let mut row = format!("| {label} |");
                for s in &sizes {
                    // The hold cases run at 0.8 KB only.
                    let tsize = if *tname == "triage-pass" {
                        *s
                    } else {
                        Size::S08k
                    };
                    let v = if self.target(tname, tsize).is_some()
                        && (*tname == "triage-pass" || *s == Size::S08k)
                    {
                        format!("{:.2}×", ratio(tname, tsize, *s, get.as_ref()))
                    } else {
                        "—".into()
                    };
                    let _ = write!(row, " {v} |");
                }
                let _ = writeln!(o, "{row}");
            }
        }

        // Table 4: the hyper floor, which prices the HTTP stack apart from triage's own work.
        let has_floor = self.targets.iter().any(|t| t.name == "hyper-floor");
        if has_floor {
            let _ = writeln!(o, "{}", table_head("the hyper floor", &sizes));
            type Getter = fn(&RoundNums) -> f64;
            let sat_cpu: Getter = |r| r.sat_cpu_us;
            let fixed_cpu: Getter = |r| r.rates.last().map(|p| p.cpu_us).unwrap_or(f64::NAN);
            let sat_rps: Getter = |r| r.sat_rps;
            let at = rate_label(last_rate);
            let rows: [(String, &str, &str, Getter, bool); 7] = [
                (
                    "CPU per request at saturation: floor / nginx".into(),
                    "hyper-floor",
                    "nginx",
                    sat_cpu,
                    false,
                ),
                (
                    "CPU per request at saturation: triage / floor".into(),
                    "triage-pass",
                    "hyper-floor",
                    sat_cpu,
                    false,
                ),
                (
                    "CPU per request at saturation: triage − floor (µs)".into(),
                    "triage-pass",
                    "hyper-floor",
                    sat_cpu,
                    true,
                ),
                (
                    format!("CPU per request at {at} req/s: floor / nginx"),
                    "hyper-floor",
                    "nginx",
                    fixed_cpu,
                    false,
                ),
                (
                    format!("CPU per request at {at} req/s: triage / floor"),
                    "triage-pass",
                    "hyper-floor",
                    fixed_cpu,
                    false,
                ),
                (
                    "saturation req/s: floor / nginx".into(),
                    "hyper-floor",
                    "nginx",
                    sat_rps,
                    false,
                ),
                (
                    "saturation req/s: triage / floor".into(),
                    "triage-pass",
                    "hyper-floor",
                    sat_rps,
                    false,
                ),
            ];
            for (label, num, den, get, difference) in rows {
                let mut row = format!("| {label} |");
                for &size in &sizes {
                    let v = if self.target(num, size).is_some() && self.target(den, size).is_some()
                    {
                        let (a, b) = (self.med(num, size, get), self.med(den, size, get));
                        if difference {
                            f(a - b, 1)
                        } else {
                            format!("{:.2}×", a / b)
                        }
                    } else {
                        "—".into()
                    };
                    let _ = write!(row, " {v} |");
                }
                let _ = writeln!(o, "{row}");
            }
        }

        // Goals from issue 7.
        let _ = writeln!(o, "\n**Issue 7 targets** (this run):\n");
        let mut goal = |ok: Option<bool>, text: String| {
            let mark = match ok {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not measured",
            };
            let _ = writeln!(o, "- {mark}: {text}");
        };
        let finite = |x: f64| x.is_finite().then_some(x);
        if has_nginx {
            let cpu = |s: Size| ratio("triage-pass", s, s, &|r: &RoundNums| r.sat_cpu_us);
            let r08 = finite(cpu(Size::S08k));
            goal(
                r08.map(|r| r <= 1.0),
                format!(
                    "CPU per request, 0.8 KB pass, at most nginx's: {}×",
                    f(cpu(Size::S08k), 2)
                ),
            );
            let r50 = finite(cpu(Size::S50k));
            goal(
                r50.map(|r| r <= 1.5),
                format!(
                    "CPU per request, 50 KB pass, at most 1.5× nginx's: {}×",
                    f(cpu(Size::S50k), 2)
                ),
            );
            let sat = ratio("triage-pass", Size::S08k, Size::S08k, &|r: &RoundNums| {
                r.sat_rps
            });
            goal(
                finite(sat).map(|r| r >= 1.0),
                format!(
                    "saturation req/s through triage (0.8 KB pass) at least nginx's: {}×",
                    f(sat, 2)
                ),
            );
        } else {
            goal(None, "ratios against nginx (nginx not measured)".into());
        }
        if let Some(t) = self.target("triage-pass", Size::S08k)
            && !self.rates.is_empty()
        {
            let i = self.rates.iter().position(|r| *r == 1000.0).unwrap_or(0);
            let a99 = self.added(t, |r| r.rates.get(i).map(|p| p.p99).unwrap_or(f64::NAN));
            goal(
                finite(a99).map(|x| x < 0.3),
                format!(
                    "added p99 over direct at {} req/s under 0.3 ms: {} ms",
                    rate_label(self.rates[i]),
                    signed(a99, 3)
                ),
            );
        }
        let holds = self.med("triage-hold100", Size::S08k, |r| r.holds_per_s);
        goal(
            finite(holds).map(|h| h >= 5000.0),
            format!(
                "100 % held: at least 5,000 confirmed holds/s: {}/s",
                f(holds, 0)
            ),
        );
        if let Some(p) = self.procs.iter().find(|p| p.name == "triage-pass") {
            goal(
                finite(p.idle_mb).map(|m| m < 32.0),
                format!("RSS idle under 32 MB: {} MB", f(p.idle_mb, 1)),
            );
            goal(
                finite(p.conns_mb).map(|m| m < 96.0 && p.conns_ok >= self.idle_conns),
                format!(
                    "RSS with {} open client connections under 96 MB: {} MB",
                    p.conns_ok,
                    f(p.conns_mb, 1)
                ),
            );
        }
        let missing: usize = self.procs.iter().map(|p| p.missing).sum();
        let answered: usize = self.procs.iter().map(|p| p.ids_202).sum();
        goal(
            Some(missing == 0 && self.procs.iter().any(|p| p.has_queue)),
            format!(
                "every 202's review id arrived in the queue: {answered} answered, {missing} missing"
            ),
        );

        // Flags and notes.
        let mut notes = self.notes.clone();
        let mut stalls = 0;
        for t in &self.targets {
            for (ri, r) in t.rounds.iter().enumerate() {
                if r.probe_p50 > STALL_MS {
                    stalls += 1;
                    notes.push(format!(
                        "**STALL** {} {} round {}: keep-alive p50 {:.1} ms on one connection at 100 req/s (p99 {:.1} ms), where nothing queues: the 40 ms Nagle/delayed-ACK stall looks like this{}.",
                        t.name,
                        t.size.label(),
                        ri + 1,
                        r.probe_p50,
                        r.probe_p99,
                        if t.share > 0.0 { " (or a slow broker confirm: held requests wait on one)" } else { "" }
                    ));
                }
                for p in &r.rates {
                    if p.p50 > STALL_MS {
                        let overloaded =
                            r.sat_rps < 1.05 * p.rate || p.achieved < 0.9 * p.rate || p.unsent > 0;
                        notes.push(if overloaded {
                            format!(
                                "{} {} round {}: p50 {:.1} ms at {} req/s: overloaded (saturates at {:.0} req/s; {:.0} req/s achieved), not a stall.",
                                t.name, t.size.label(), ri + 1, p.p50, rate_label(p.rate), r.sat_rps, p.achieved
                            )
                        } else {
                            stalls += 1;
                            format!(
                                "**STALL?** {} {} round {}: keep-alive p50 {:.1} ms at {} req/s (p90 {:.1}, p99.9 {:.1}) although it saturates at {:.0} req/s.",
                                t.name, t.size.label(), ri + 1, p.p50, rate_label(p.rate), p.p90, p.p999, r.sat_rps
                            )
                        });
                    }
                }
            }
            let busy = median(t.rounds.iter().map(|r| r.load_busy).collect());
            if t.name != "direct" && busy > 0.85 {
                notes.push(format!(
                    "{} {}: the load core (driver + mock) was {:.0} % busy at saturation: the req/s figure may be bounded by the load side, not by the proxy.",
                    t.name,
                    t.size.label(),
                    busy * 100.0
                ));
            }
            let lag = median(
                t.rounds
                    .iter()
                    .flat_map(|r| r.rates.iter().map(|p| p.timer_lag_ms))
                    .collect(),
            );
            if lag > 1.5 {
                notes.push(format!(
                    "{} {}: the driver's timer woke {lag:.2} ms late on average (busy load core); those waits are not charged to the target.",
                    t.name,
                    t.size.label()
                ));
            }
            let expected: &[&str] = match t.share {
                s if s <= 0.0 => &["200"],
                s if s >= 1.0 => &["202"],
                _ => &["200", "202"],
            };
            for r in &t.rounds {
                for (k, v) in &r.statuses {
                    if !expected.contains(&k.as_str()) {
                        notes.push(format!(
                            "{} {}: {v} answers with status {k} (expected only {}).",
                            t.name,
                            t.size.label(),
                            expected.join("/")
                        ));
                    }
                }
            }
        }
        if stalls == 0 {
            notes.push(format!(
                "No stall: on one keep-alive connection at 100 req/s, and at every fixed rate a target can sustain, p50 stayed under {STALL_MS} ms."
            ));
        }
        if let Some(d) = self.target("direct", Size::S08k) {
            let mock = median(d.rounds.iter().map(|r| r.sat_cpu_us).collect());
            notes.push(format!(
                "The mock costs {} µs of CPU per request (0.8 KB, at saturation).",
                f(mock, 1)
            ));
        }
        notes.dedup();
        let _ = writeln!(o, "\nNotes:\n");
        for n in &notes {
            let _ = writeln!(o, "- {n}");
        }

        // Per round, for the record.
        let _ = writeln!(o, "\n<details><summary>Per round</summary>\n");
        let mut head = "| target | body | round | sat req/s | CPU µs/req (sat) |".to_string();
        let mut rule = "| --- | --- | ---: | ---: | ---: |".to_string();
        for r in &rates {
            let _ = write!(head, " p50 / p90 / p99 / p99.9 @{r} ms | achieved @{r} |");
            rule.push_str(" ---: | ---: |");
        }
        let _ = writeln!(o, "{head}\n{rule}");
        for t in &self.targets {
            for (ri, r) in t.rounds.iter().enumerate() {
                let mut row = format!(
                    "| {} | {} | {} | {} | {} |",
                    t.name,
                    t.size.label(),
                    ri + 1,
                    f(r.sat_rps, 0),
                    f(r.sat_cpu_us, 1)
                );
                for p in &r.rates {
                    let _ = write!(
                        row,
                        " {} / {} / {} / {} | {} |",
                        f(p.p50, 3),
                        f(p.p90, 3),
                        f(p.p99, 3),
                        f(p.p999, 3),
                        f(p.achieved, 0)
                    );
                }
                let _ = writeln!(o, "{row}");
            }
        }
        let _ = writeln!(o, "\n</details>");
        o
    }
}

fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .map(|s| !s.is_empty())
                .unwrap_or(false);
            format!(
                "commit {c}{}",
                if dirty { " (+ local changes)" } else { "" }
            )
        }
        None => "commit unknown".into(),
    }
}

/// `YYYY-MM-DD HH:MM UTC` from Unix seconds (civil-from-days).
fn utc_string(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc() {
        assert_eq!(utc_string(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_string(1_763_900_000), "2025-11-23 12:13 UTC");
    }

    /// One round of `name` at 0.8 KB, with the given CPU per request at each fixed rate.
    fn target(name: &'static str, sat_cpu: f64, cpu_at: [f64; 2]) -> TargetResult {
        let phase = |rate, cpu_us| PhaseNums {
            rate,
            p50: 0.2,
            p90: 0.3,
            p99: 0.4,
            p999: 0.5,
            achieved: rate,
            cpu_us,
            timer_lag_ms: 0.0,
            unsent: 0,
        };
        let mut t = TargetResult::new(name, Size::S08k, 0.0);
        t.rounds.push(RoundNums {
            sat_rps: 10_000.0,
            sat_cpu_us: sat_cpu,
            rates: vec![phase(1000.0, cpu_at[0]), phase(5000.0, cpu_at[1])],
            ..RoundNums::default()
        });
        t
    }

    #[test]
    fn cpu_per_request_is_reported_at_every_fixed_rate() {
        let report = Report {
            t0: Instant::now(),
            quick: true,
            rounds: 1,
            sat: Duration::from_secs(1),
            fixed: Duration::from_secs(1),
            connections: 32,
            rates: vec![1000.0, 5000.0],
            pin: None,
            cpus: 2,
            idle_conns: 0,
            nginx_version: "nginx/test".into(),
            commit: "test".into(),
            loadavg_start: String::new(),
            loadavg_end: String::new(),
            wall: Duration::ZERO,
            notes: Vec::new(),
            targets: vec![
                target("direct", 5.0, [20.0, 8.0]),
                target("nginx", 10.0, [40.0, 16.0]),
                target("triage-pass", 12.0, [60.0, 20.0]),
            ],
            procs: Vec::new(),
        };
        let md = report.markdown();
        let row = |start: &str| {
            md.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            row("| target |").starts_with(
                "| target | body | sat req/s | CPU µs/req (sat) | CPU µs/req @1k | \
                 CPU µs/req @5k |"
            ),
            "{md}"
        );
        assert!(
            row("| nginx | 0.8 KB |")
                .starts_with("| nginx | 0.8 KB | 10000 | 10.0 | 40.0 | 16.0 |"),
            "{md}"
        );
        assert!(row("| CPU per request at saturation, pass |").contains("| 1.20× |"));
        assert!(row("| CPU per request at 1k req/s, pass |").contains("| 1.50× |"));
        assert!(row("| CPU per request at 5k req/s, pass |").contains("| 1.25× |"));
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![f64::NAN]).is_nan());
    }
}
