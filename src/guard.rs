//! Rollout guardrails: per-replica sliding-window rates for one variant, and the halt.
//!
//! The hot path records one outcome per request (a few relaxed atomics, no lock) and reads
//! `halted()` when choosing a variant. The state lives outside the rule set's lifetime: a
//! reload that keeps the variant's weight and guard reuses the same `Arc<Guard>` (the halt
//! holds); a reload that changes the weight builds a fresh one (the halt clears).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::Gauge;

const SLOTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    pub max_escalation_rate: Option<f64>,
    pub max_error_rate: Option<f64>,
    pub min_requests: u64,
    pub window: Duration,
}

#[derive(Debug, Default)]
struct Slot {
    epoch: AtomicU64,
    requests: AtomicU64,
    escalations: AtomicU64,
    errors: AtomicU64,
}

#[derive(Debug)]
pub struct Guard {
    pub config: GuardConfig,
    task: Box<str>,
    variant: Box<str>,
    started: Instant,
    slot_width: Duration,
    slots: [Slot; SLOTS],
    halted: AtomicBool,
    gauge: Gauge,
}

/// Totals over the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    pub requests: u64,
    pub escalations: u64,
    pub errors: u64,
}

impl Guard {
    pub fn new(task: &str, variant: &str, config: GuardConfig, gauge: Gauge) -> Self {
        gauge.set(0.0);
        Guard {
            config,
            task: task.into(),
            variant: variant.into(),
            started: Instant::now(),
            slot_width: (config.window / SLOTS as u32).max(Duration::from_millis(10)),
            slots: Default::default(),
            halted: AtomicBool::new(false),
            gauge,
        }
    }

    pub fn halted(&self) -> bool {
        self.halted.load(Ordering::Relaxed)
    }

    fn epoch(&self) -> u64 {
        (self.started.elapsed().as_nanos() / self.slot_width.as_nanos().max(1)) as u64 + 1
    }

    /// Count one live request; halts the variant when a bound is breached.
    pub fn record(&self, escalated: bool, error: bool) {
        let epoch = self.epoch();
        let slot = &self.slots[(epoch % SLOTS as u64) as usize];
        let seen = slot.epoch.load(Ordering::Acquire);
        if seen != epoch
            && slot
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This slot's previous period has left the window. A racing increment may be
            // lost here; the window is an estimate, not a ledger.
            slot.requests.store(0, Ordering::Relaxed);
            slot.escalations.store(0, Ordering::Relaxed);
            slot.errors.store(0, Ordering::Relaxed);
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if escalated {
            slot.escalations.fetch_add(1, Ordering::Relaxed);
        }
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        if !self.halted() {
            let w = self.window_at(epoch);
            if let Some(why) = breach(&self.config, &w)
                && !self.halted.swap(true, Ordering::Relaxed)
            {
                self.gauge.set(1.0);
                tracing::warn!(
                    task = %self.task, variant = %self.variant, requests = w.requests,
                    escalations = w.escalations, errors = w.errors, why,
                    "rollout halted: this replica routes the variant's users to the first variant"
                );
            }
        }
    }

    fn window_at(&self, epoch: u64) -> Window {
        let oldest = epoch.saturating_sub(SLOTS as u64 - 1);
        self.slots
            .iter()
            .filter(|s| {
                let e = s.epoch.load(Ordering::Acquire);
                e >= oldest && e <= epoch
            })
            .fold(Window::default(), |w, s| Window {
                requests: w.requests + s.requests.load(Ordering::Relaxed),
                escalations: w.escalations + s.escalations.load(Ordering::Relaxed),
                errors: w.errors + s.errors.load(Ordering::Relaxed),
            })
    }

    pub fn window(&self) -> Window {
        self.window_at(self.epoch())
    }
}

/// Which bound a window breaches, if any. Pure.
pub fn breach(config: &GuardConfig, w: &Window) -> Option<&'static str> {
    if w.requests == 0 || w.requests < config.min_requests {
        return None;
    }
    let rate = |n: u64| n as f64 / w.requests as f64;
    if config
        .max_escalation_rate
        .is_some_and(|max| rate(w.escalations) > max)
    {
        return Some("escalation rate above max_escalation_rate");
    }
    if config
        .max_error_rate
        .is_some_and(|max| rate(w.errors) > max)
    {
        return Some("error rate above max_error_rate");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GuardConfig {
        GuardConfig {
            max_escalation_rate: Some(0.15),
            max_error_rate: Some(0.02),
            min_requests: 200,
            window: Duration::from_secs(600),
        }
    }

    #[test]
    fn no_breach_before_min_requests() {
        let w = Window {
            requests: 199,
            escalations: 199,
            errors: 199,
        };
        assert_eq!(breach(&config(), &w), None);
        let w = Window {
            requests: 200,
            escalations: 30,
            errors: 4,
        };
        assert_eq!(
            breach(&config(), &w),
            None,
            "exactly at the bounds is not above them"
        );
        let w = Window {
            requests: 200,
            escalations: 31,
            errors: 0,
        };
        assert!(breach(&config(), &w).is_some());
        let w = Window {
            requests: 200,
            escalations: 0,
            errors: 5,
        };
        assert!(breach(&config(), &w).is_some());
    }

    #[test]
    fn halts_once_the_window_breaches() {
        let g = Guard::new("t", "canary", config(), metrics::Gauge::noop());
        for _ in 0..199 {
            g.record(true, false);
        }
        assert!(!g.halted(), "not before min_requests");
        g.record(true, false);
        assert!(g.halted());
        assert_eq!(g.window().requests, 200);
    }

    #[test]
    fn old_slots_leave_the_window() {
        let cfg = GuardConfig {
            window: Duration::from_millis(100),
            min_requests: 1_000_000,
            ..config()
        };
        let g = Guard::new("t", "c", cfg, metrics::Gauge::noop());
        for _ in 0..50 {
            g.record(false, false);
        }
        assert_eq!(g.window().requests, 50);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(g.window().requests, 0);
    }
}
