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
    /// What the probe learnt of the response body (see `Observed::walked_json`).
    pub response_walked_json: Option<bool>,
    pub trace_id: &'a str,
}

/// Encode the review item as the JSON message body, by hand: a body that is JSON goes in
/// byte for byte (no parse into a `Value` and back), unless it has pointers to redact.
pub fn encode(input: &ReviewInput<'_>) -> Vec<u8> {
    let (task, variant) = (input.task, input.variant);
    let mut out = Vec::with_capacity(768 + input.request_body.len() + input.response_body.len());
    let mut w = Writer(&mut out);
    w.open();
    w.field("schema", &SCHEMA);
    w.field("review_id", &input.review_id);
    w.field(
        "created_at",
        &humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    );
    w.field("task", &&*task.name);
    w.field("variant", &&*variant.name);
    w.field("reason", &input.reason.as_str());
    w.field("disposition", &input.disposition);
    w.field("confidence", &input.confidence);
    w.field("confidence_source", &task.extractor.source_name());
    w.field("threshold", &variant.policy.threshold);
    w.key("model");
    w.open();
    w.field("pinned", &variant.version.as_deref());
    w.field("reported", &input.reported_version);
    w.close();
    w.key("request");
    w.open();
    w.field("method", &input.request.method.as_str());
    w.field("path", &input.request.uri.path());
    let headers: BTreeMap<&str, &str> = task
        .review_headers
        .iter()
        .filter_map(|name| {
            let value = input.request.headers.get(name)?.to_str().ok()?;
            Some((name.as_str(), value))
        })
        .collect();
    w.field("headers", &headers);
    w.key("body");
    w.embed(input.request_body, None, &task.redact);
    w.close();
    w.key("response");
    w.open();
    w.field("status", &input.response_status);
    w.key("body");
    w.embed(
        input.response_body,
        input.response_walked_json,
        &task.redact,
    );
    w.close();
    w.field("trace_id", &input.trace_id);
    w.close();
    out
}

/// Appends a JSON object's pieces; tracks only whether a comma is due.
struct Writer<'o>(&'o mut Vec<u8>);

impl Writer<'_> {
    fn open(&mut self) {
        self.0.push(b'{');
    }

    fn close(&mut self) {
        self.0.push(b'}');
    }

    fn key(&mut self, key: &str) {
        if self.0.last() != Some(&b'{') {
            self.0.push(b',');
        }
        self.value(&key);
        self.0.push(b':');
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        self.key(key);
        self.value(value);
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) {
        // Writing plain data (strings, numbers, string maps) into a Vec cannot fail; should
        // it ever, a `null` keeps the document well-formed.
        let mark = self.0.len();
        if serde_json::to_writer(&mut *self.0, value).is_err() {
            self.0.truncate(mark);
            self.0.extend_from_slice(b"null");
        }
    }

    /// A body as JSON when it is JSON (verbatim where it can be, else through a `Value`,
    /// redacted), else as a (lossy UTF-8) string.
    /// `walked`: the probe's verdict on the body, when it already checked it.
    fn embed(&mut self, body: &[u8], walked: Option<bool>, redact: &[String]) {
        if redact.is_empty() && verbatim(body, walked) {
            self.0.extend_from_slice(body);
        } else {
            self.value(&embed(body, redact));
        }
    }
}

/// Whether a body can go into the message byte for byte: JSON, UTF-8, and no surrogate
/// escape `\uD800`–`\uDFFF` (a lone one would make strict consumers such as serde_json refuse
/// the whole message; those bodies take the `Value` path, which checks the pairs).
fn verbatim(body: &[u8], walked: Option<bool>) -> bool {
    let mut rest = body;
    while let Some(at) = rest.iter().position(|&b| b == b'\\') {
        let escape = rest.get(at + 1..at + 4).unwrap_or_default();
        if matches!(
            escape,
            [b'u', b'd' | b'D', b'8' | b'9' | b'a'..=b'f' | b'A'..=b'F']
        ) {
            return false;
        }
        rest = rest.get(at + 1..).unwrap_or_default();
    }
    match walked {
        // The probe's checks passed: only UTF-8 is left (it skips strings without it).
        Some(true) => std::str::from_utf8(body).is_ok(),
        Some(false) => false,
        None => crate::probe::is_json(body),
    }
}

/// A body as a `Value` when it parses, else as a (lossy UTF-8) string; redacted either way.
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

    /// What `Writer::embed` writes for a body, parsed back as serde_json would.
    fn written(body: &[u8], redact: &[String]) -> (Vec<u8>, Value) {
        written_after(body, None, redact)
    }

    /// The same, for a body the probe already checked (`walked`).
    fn written_after(body: &[u8], walked: Option<bool>, redact: &[String]) -> (Vec<u8>, Value) {
        let mut out = Vec::new();
        let mut w = Writer(&mut out);
        w.open();
        w.key("body");
        w.embed(body, walked, redact);
        w.close();
        let v: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
        (out, v["body"].clone())
    }

    #[test]
    fn json_bodies_go_in_byte_for_byte_and_the_message_stays_strict_json() {
        // Key order and number spelling as the model wrote them.
        let body = br#"{"z":1.50,"a":[true,null],"m":"\u00e9"}"#;
        let (out, v) = written(body, &[]);
        assert_eq!(out, [&b"{\"body\":"[..], body, b"}"].concat());
        assert_eq!(v["m"], "é");
        // A surrogate pair takes the `Value` path, and arrives whole.
        assert_eq!(written(br#"["\ud83d\ude00"]"#, &[]).1[0], "😀");
        // Whitespace around a JSON body is kept and harmless.
        assert_eq!(written(b" [1, 2]\n", &[]).1, serde_json::json!([1, 2]));
        // Not JSON, not UTF-8, a lone surrogate: a string, and the message still parses.
        assert_eq!(written(b"{\"a\":", &[]).1, "{\"a\":");
        assert_eq!(written(b"\"\xff\"", &[]).1, "\"\u{fffd}\"");
        assert_eq!(written(br#"{"a":"\ud800"}"#, &[]).1, r#"{"a":"\ud800"}"#);
        assert_eq!(written(br#"["\uDC00"]"#, &[]).1, r#"["\uDC00"]"#);
        // The probe's verdict is trusted for structure, not for UTF-8; a refusal sends the
        // body through the `Value` path (which here re-spells 1.50).
        let body = br#"{"z":1.50}"#;
        assert_eq!(
            written_after(body, Some(true), &[]).0,
            [&b"{\"body\":"[..], body, b"}"].concat()
        );
        assert_eq!(
            written_after(body, Some(false), &[]).0,
            br#"{"body":{"z":1.5}}"#
        );
        assert_eq!(
            written_after(b"[\"\xff\"]", Some(true), &[]).1,
            "[\"\u{fffd}\"]"
        );
        // Redaction goes through a `Value`.
        let (_, v) = written(br#"{"a":{"secret":"x"},"b":1}"#, &["/a/secret".into()]);
        assert_eq!(v, serde_json::json!({"a":{"secret":"[redacted]"},"b":1}));
    }
}
