//! The verdict loop: reviewers' decisions, consumed from a shared durable queue, counted as
//! `triage_verdicts_total{task,variant,reason,verdict}` and `triage_verdict_latency_seconds`.
//! Control plane, on its own AMQP connection.
//!
//! Each verdict is acked only after it is counted, so a crash loses no unacked verdict (the
//! broker redelivers it to whichever replica consumes next) and an acked one is never seen
//! again. A redelivery this replica already counted (its ack was lost) is recognised by its
//! review id and not counted twice. A malformed verdict is rejected without requeue, which
//! dead-letters it to `<verdict queue>.dead`; it never stops the consumer. Labels stay
//! bounded: a task or variant the running rules don't know is counted as `_unknown`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use serde::Deserialize;

use crate::amqp;
use crate::decide::Reason;
use crate::metrics;
use crate::rules::RuleSet;

pub const SCHEMA: &str = "triage.verdict/v1";
const DEDUPE_WINDOW: usize = 100_000;
/// An ack or reject that has not gone out by then means the link is broken: reconnect (the
/// broker redelivers what is unacked, and the review-id window keeps it from counting twice).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("no ack sent within {0:?}")]
    AckTimeout(Duration),
}

#[derive(Debug, Clone)]
pub struct VerdictConfig {
    pub url: String,
    pub exchange: String,
    pub queue: String,
}

#[derive(Debug, Deserialize)]
struct Verdict {
    schema: String,
    review_id: String,
    task: String,
    #[serde(default)]
    variant: Option<String>,
    reason: String,
    verdict: String,
}

/// A verdict ready to count: labels checked against the rules and the fixed sets.
#[derive(Debug, PartialEq)]
pub struct Counted {
    pub review_id: String,
    pub task: String,
    pub variant: String,
    pub reason: &'static str,
    pub verdict: &'static str,
    /// Seconds from the review item's creation (the UUIDv7's timestamp) to now.
    pub latency: Option<f64>,
}

/// Parse and check one verdict message. Pure apart from reading the clock.
pub fn parse(body: &[u8], rules: &RuleSet) -> Result<Counted, String> {
    let v: Verdict = serde_json::from_slice(body).map_err(|e| format!("not a verdict: {e}"))?;
    if v.schema != SCHEMA {
        return Err(format!("unknown schema {:?}", v.schema));
    }
    let verdict = ["approved", "corrected", "rejected"]
        .into_iter()
        .find(|x| *x == v.verdict)
        .ok_or_else(|| format!("unknown verdict {:?}", v.verdict))?;
    let reason = Reason::ALL
        .into_iter()
        .find(|r| r.as_str() == v.reason)
        .ok_or_else(|| format!("unknown reason {:?}", v.reason))?
        .as_str();
    let id = uuid::Uuid::parse_str(&v.review_id)
        .map_err(|_| format!("review_id {:?} is not a UUID", v.review_id))?;
    let (task, variant) = match rules.tasks.iter().find(|t| *t.name == v.task) {
        Some(t) => {
            let variant = v
                .variant
                .as_deref()
                .and_then(|name| t.rollout.variants.iter().find(|x| *x.name == *name));
            (
                t.name.to_string(),
                variant.map_or_else(|| "_unknown".to_owned(), |x| x.name.to_string()),
            )
        }
        None => ("_unknown".to_owned(), "_unknown".to_owned()),
    };
    let latency = id.get_timestamp().and_then(|ts| {
        let (secs, nanos) = ts.to_unix();
        let created = UNIX_EPOCH + Duration::new(secs, nanos);
        SystemTime::now()
            .duration_since(created)
            .ok()
            .map(|d| d.as_secs_f64())
    });
    Ok(Counted {
        review_id: id.to_string(),
        task,
        variant,
        reason,
        verdict,
        latency,
    })
}

/// Review ids counted recently, to skip a redelivery whose ack was lost.
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == DEDUPE_WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

pub fn start(config: VerdictConfig, rules: Arc<ArcSwap<RuleSet>>) {
    tokio::spawn(async move {
        let mut seen = Seen {
            set: HashSet::new(),
            order: VecDeque::new(),
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match consume(&config, &rules, &mut seen).await {
                Ok(()) => tracing::warn!("verdict consumer stopped; reconnecting"),
                Err(e) => tracing::warn!(error = %e, "verdict consumer failed; reconnecting"),
            }
            tokio::time::sleep(backoff + backoff.mul_f64(fastrand::f64() * 0.5)).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    });
}

async fn consume(
    config: &VerdictConfig,
    rules: &ArcSwap<RuleSet>,
    seen: &mut Seen,
) -> Result<(), ConsumeError> {
    let conn = amqp::open(&config.url, "triage-verdicts").await?;
    let channel = conn.create_channel().await?;
    amqp::declare_queue(&channel, &config.exchange, &config.queue, &[]).await?;
    channel.basic_qos(64, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            config.queue.as_str().into(),
            "triage-verdicts".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %config.queue, "consuming verdicts");
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let parsed = parse(&delivery.data, &rules.load_full());
        match parsed {
            Ok(v) => {
                if seen.insert(&v.review_id) {
                    metrics::verdict(&v.task, &v.variant, v.reason, v.verdict, v.latency);
                }
                bounded(delivery.acker.ack(BasicAckOptions::default())).await?;
            }
            Err(why) => {
                tracing::warn!(error = %why, "malformed verdict dead-lettered");
                metrics::verdict_malformed();
                bounded(delivery.acker.reject(BasicRejectOptions { requeue: false })).await?;
            }
        }
    }
    Ok(())
}

async fn bounded<T>(
    op: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, ConsumeError> {
    match tokio::time::timeout(ACK_TIMEOUT, op).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ConsumeError::AckTimeout(ACK_TIMEOUT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::compile::{SourceFile, compile};

    fn rules() -> RuleSet {
        let yaml = r#"
version: 1
upstreams: { u: { url: "http://127.0.0.1:1" } }
tasks:
  - name: t
    upstream: u
    confidence: { source: max, pointer: /p }
    threshold: 0.5
    rollout: { variants: [ { name: stable, version: a, weight: 100 } ] }
"#;
        compile(
            &[SourceFile {
                name: "r.yaml".into(),
                text: yaml.into(),
            }],
            None,
        )
        .unwrap()
    }

    fn verdict(task: &str, variant: &str, reason: &str, verdict: &str) -> Vec<u8> {
        let id = uuid::Uuid::now_v7().to_string();
        serde_json::to_vec(&serde_json::json!({"schema": SCHEMA, "review_id": id, "task": task,
            "variant": variant, "reason": reason, "verdict": verdict, "reviewer": "ann", "output": null}))
        .unwrap()
    }

    #[test]
    fn valid_verdicts_and_bounded_labels() {
        let r = rules();
        let c = parse(&verdict("t", "stable", "audit", "approved"), &r).unwrap();
        assert_eq!(
            (c.task.as_str(), c.variant.as_str(), c.reason, c.verdict),
            ("t", "stable", "audit", "approved")
        );
        assert!(c.latency.is_some_and(|l| (0.0..5.0).contains(&l)));
        let c = parse(&verdict("gone", "x", "low_confidence", "corrected"), &r).unwrap();
        assert_eq!(
            (c.task.as_str(), c.variant.as_str()),
            ("_unknown", "_unknown")
        );
    }

    #[test]
    fn malformed_verdicts_are_refused() {
        let r = rules();
        assert!(parse(b"not json", &r).is_err());
        assert!(parse(&verdict("t", "stable", "audit", "maybe"), &r).is_err());
        assert!(parse(&verdict("t", "stable", "vibes", "approved"), &r).is_err());
        let no_schema = br#"{"review_id":"x","task":"t","reason":"audit","verdict":"approved"}"#;
        assert!(parse(no_schema, &r).is_err());
    }

    #[test]
    fn seen_forgets_the_oldest() {
        let mut s = Seen {
            set: HashSet::new(),
            order: VecDeque::new(),
        };
        assert!(s.insert("a"));
        assert!(!s.insert("a"));
    }
}
