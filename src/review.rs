//! Make the review item and publish it; the caller answers only once it is durable.
//!
//! The item carries everything a reviewer needs to judge the output without calling back:
//! task, variant, reason, confidence and threshold, pinned and reported versions, the
//! request (allow-listed headers, body) and the response. Configured JSON pointers are
//! redacted first. Bodies are embedded as JSON when they are JSON, else as a string.

use std::collections::BTreeMap;
use std::time::SystemTime;

use http::request;
use serde::Serialize;
use serde_json::Value;

use crate::amqp::Publisher;
use crate::decide::Reason;
use crate::metrics;
use crate::rules::{Task, Variant};
use crate::spool::{Item, Spool};

pub const SCHEMA: &str = "triage.review/v1";
const REDACTED: &str = "[redacted]";

/// What happened to the output while the item waits for a reviewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Withheld from the caller (202).
    Held,
    /// Released with `x-triage-decision: flag`.
    Flagged,
    /// Released as passing; copied for audit.
    Released,
}

/// Everything the item is made of, borrowed from the request in flight.
pub struct ReviewInput<'a> {
    pub review_id: &'a str,
    pub task: &'a Task,
    pub variant: &'a Variant,
    pub reason: Reason,
    pub disposition: Disposition,
    pub confidence: Option<f64>,
    pub reported_version: Option<&'a str>,
    pub request: &'a request::Parts,
    pub request_body: &'a [u8],
    pub response_status: u16,
    pub response_body: &'a [u8],
    pub trace_id: &'a str,
}

#[derive(Serialize)]
struct Message<'a> {
    schema: &'static str,
    review_id: &'a str,
    created_at: String,
    task: &'a str,
    variant: &'a str,
    reason: &'static str,
    disposition: Disposition,
    confidence: Option<f64>,
    confidence_source: &'static str,
    threshold: f64,
    model: Model<'a>,
    request: RequestPart<'a>,
    response: ResponsePart,
    trace_id: &'a str,
}

#[derive(Serialize)]
struct Model<'a> {
    pinned: Option<&'a str>,
    reported: Option<&'a str>,
}

#[derive(Serialize)]
struct RequestPart<'a> {
    method: &'a str,
    path: &'a str,
    headers: BTreeMap<&'a str, &'a str>,
    body: Value,
}

#[derive(Serialize)]
struct ResponsePart {
    status: u16,
    body: Value,
}

/// Encode the review item as the JSON message body.
pub fn encode(input: &ReviewInput<'_>) -> Vec<u8> {
    let headers = input
        .task
        .review_headers
        .iter()
        .filter_map(|name| {
            let value = input.request.headers.get(name)?.to_str().ok()?;
            Some((name.as_str(), value))
        })
        .collect();
    let item = Message {
        schema: SCHEMA,
        review_id: input.review_id,
        created_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        task: &input.task.name,
        variant: &input.variant.name,
        reason: input.reason.as_str(),
        disposition: input.disposition,
        confidence: input.confidence,
        confidence_source: input.task.extractor.source_name(),
        threshold: input.variant.policy.threshold,
        model: Model {
            pinned: input.variant.version.as_deref(),
            reported: input.reported_version,
        },
        request: RequestPart {
            method: input.request.method.as_str(),
            path: input.request.uri.path(),
            headers,
            body: embed(input.request_body, &input.task.redact),
        },
        response: ResponsePart {
            status: input.response_status,
            body: embed(input.response_body, &input.task.redact),
        },
        trace_id: input.trace_id,
    };
    // Serializing plain data into a Vec cannot fail; fall back to an empty object regardless.
    serde_json::to_vec(&item).unwrap_or_else(|_| b"{}".to_vec())
}

/// A body as JSON when it parses, else as a (lossy UTF-8) string; redacted either way.
fn embed(body: &[u8], redact: &[String]) -> Value {
    match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            for pointer in redact {
                if let Some(slot) = v.pointer_mut(pointer) {
                    *slot = Value::String(REDACTED.into());
                }
            }
            v
        }
        Err(_) => Value::String(String::from_utf8_lossy(body).into_owned()),
    }
}

/// The routing key of the contract: `<task>.<reason>`.
pub fn routing_key(task: &str, reason: Reason) -> String {
    format!("{task}.{}", reason.as_str())
}

/// Where a review item became durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    Confirmed,
    Spooled,
}

/// Make the item durable: the broker's confirm, else an fsync in the local spool (which
/// replays it later). `Err` means neither: the caller must not release the output.
pub async fn make_durable(
    publisher: &Publisher,
    spool: Option<&Spool>,
    item: Item,
) -> Result<Durable, String> {
    let published = publisher
        .publish(&item.routing_key, &item.review_id, &item.payload)
        .await;
    let error = match published {
        Ok(()) => {
            metrics::review_published("confirmed");
            return Ok(Durable::Confirmed);
        }
        Err(e) => e,
    };
    let spooled = match spool {
        Some(spool) => spool.append(&item).await.map_err(|e| e.to_string()),
        None => Err("no spool".to_owned()),
    };
    match spooled {
        Ok(()) => {
            metrics::review_published("spooled");
            tracing::debug!(review_id = %item.review_id, publish_error = %error, "review item spooled");
            Ok(Durable::Spooled)
        }
        Err(spool_error) => {
            metrics::review_published("failed");
            tracing::warn!(review_id = %item.review_id, routing_key = %item.routing_key,
                publish_error = %error, %spool_error, "review item could not be made durable");
            Err(format!("broker: {error}; spool: {spool_error}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeds_json_and_strings_and_redacts() {
        let v = embed(
            br#"{"a":{"secret":"x"},"b":1}"#,
            &["/a/secret".into(), "/missing".into()],
        );
        assert_eq!(v, serde_json::json!({"a":{"secret":"[redacted]"},"b":1}));
        assert_eq!(
            embed(b"plain text", &[]),
            Value::String("plain text".into())
        );
        assert_eq!(embed(&[0xff, b'a'], &[]), Value::String("\u{fffd}a".into()));
    }
}
