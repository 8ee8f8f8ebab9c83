//! Processes: pinning, descriptor limits, CPU and memory from /proc, children we start.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::Result;

/// Raise the soft limit on open files to the hard limit (1,000 idle connections and more).
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Number of CPUs this process may run on.
pub fn allowed_cpus() -> usize {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        libc::CPU_COUNT(&set) as usize
    }
}

/// Pin the calling thread (and so every thread it starts later) to one CPU.
pub fn pin_self(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "sched_setaffinity(cpu {cpu}): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Clock ticks per second of utime/stime (USER_HZ, normally 100).
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of one process (all its threads, living and exited), in ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let (user, system) = cpu_ticks_split(pid);
    user + system
}

/// utime and stime of one process (all its threads, living and exited), in ticks.
pub fn cpu_ticks_split(pid: u32) -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0, 0);
    };
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return (0, 0);
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (get(14), get(15))
}

/// One CPU's (steal, total) ticks from `/proc/stat`: what the hypervisor took from it, out
/// of everything it counted.
pub fn cpu_steal_ticks(cpu: usize) -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu}");
    let Some(line) = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
    else {
        return (0, 0);
    };
    // user nice system idle iowait irq softirq steal guest guest_nice
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let steal = f.get(7).copied().unwrap_or(0);
    // guest and guest_nice are already counted in user and nice.
    (steal, f.iter().take(8).sum())
}

/// The process and its descendants (nginx: master + worker).
pub fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        let children = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children"))
            .ok()
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|| children_by_scan(p));
        out.extend(children);
        i += 1;
    }
    out
}

fn children_by_scan(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

pub fn tree_cpu_ticks(pid: u32) -> u64 {
    tree(pid).into_iter().map(cpu_ticks).sum()
}

/// Context switches (voluntary and not) of every thread of the process tree so far: how
/// often its threads went to sleep and were woken, the cost of a process that idles.
pub fn tree_switches(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .flat_map(|p| {
            std::fs::read_dir(format!("/proc/{p}/task"))
                .into_iter()
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        })
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// A `/proc/PID/status` field in kB (`VmRSS:`, `VmHWM:`).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Summed over the process tree, in MB.
pub fn tree_mb(pid: u32, field: &str) -> f64 {
    tree(pid)
        .into_iter()
        .map(|p| status_kb(p, field))
        .sum::<u64>() as f64
        / 1024.0
}

/// A child we started; stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Proc {
    pub pid: u32,
    child: Option<Child>,
    pub log: std::path::PathBuf,
}

impl Proc {
    /// Start `argv` with stderr to `log`; when `ready_prefix` is given, wait (up to 30 s)
    /// for a stdout line starting with it and return the line's rest.
    pub async fn start(
        name: &str,
        argv: &[String],
        env: &[(&str, &str)],
        log: &Path,
        ready_prefix: Option<&str>,
    ) -> Result<(Proc, String)> {
        let (prog, args) = argv.split_first().ok_or("empty command")?;
        let err = std::fs::File::create(log).map_err(|e| format!("{log:?}: {e}"))?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{name}: spawn {prog}: {e}"))?;
        let pid = child.id().ok_or_else(|| format!("{name}: no pid"))?;
        let stdout = child.stdout.take();
        let mut proc = Proc {
            pid,
            child: Some(child),
            log: log.to_path_buf(),
        };
        let mut rest = String::new();
        if let Some(stdout) = stdout {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(prefix) = ready_prefix {
                let found = tokio::time::timeout(Duration::from_secs(30), async {
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Some(r) = line.strip_prefix(prefix) {
                            return Some(r.trim().to_string());
                        }
                    }
                    None
                })
                .await;
                match found {
                    Ok(Some(r)) => rest = r,
                    _ => {
                        let tail = proc.log_tail();
                        proc.stop().await;
                        return Err(format!("{name} did not start:\n{tail}"));
                    }
                }
            }
            // Keep draining stdout so the child never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        }
        Ok((proc, rest))
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: a signal to our own child's pid (not yet reaped, so not reused).
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill().await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            // SAFETY: as in stop(): our own, unreaped child.
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.start_kill();
        }
    }
}
