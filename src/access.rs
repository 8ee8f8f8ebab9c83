//! The access log: one line per request, read off the answer's own `x-triage-*` headers.
//! Never a prompt or an output.
//!
//! The line is written here, by hand, in the shape of the process's other log lines (text
//! or JSON), and handed to the log thread ([`crate::logline`]) whole. Through the tracing
//! subscriber's formatter it cost ~1 µs on the request path (every field through
//! `core::fmt`, floats through `Debug`); with the default `--access-log info` the line was
//! 18 % of a 0.8 KB request's CPU (`loadtest ab`, see `docs/performance.md`). `TRIAGE_LOG`
//! still decides whether the line is written. On a terminal (coloured lines) or without a
//! log thread, the line goes through tracing as before.
//!
//! The fields, in order, each only when there is a value: `task`, `variant`, `decision`,
//! `status`, `confidence`, `review_id`, `trace_id`, `upstream_ms`, `overhead_ms` (both with
//! microsecond precision).

use std::io::Write;
use std::time::{Duration, SystemTime};

use http::Response;
use http::header::HeaderName;

use crate::logline::Lines;
use crate::proxy::{Body, X_CONFIDENCE, X_DECISION, X_REVIEW_ID, X_VARIANT};
use crate::rules::Task;

const TARGET: &str = "triage::access";

/// At which level the one-line-per-request log goes (`--access-log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLog {
    Off,
    Debug,
    Info,
}

/// Where the access lines go, and how they are written.
pub struct AccessLogger {
    level: AccessLog,
    /// The log thread's queue and whether lines are JSON; `None`: through tracing.
    direct: Option<(Lines, bool)>,
}

/// One request's line, borrowed from the answer.
struct Entry<'a> {
    level: tracing::Level,
    task: &'a str,
    variant: Option<&'a str>,
    decision: Option<&'a str>,
    status: u16,
    /// As the `x-triage-confidence` header spells it (a JSON number).
    confidence: Option<&'a str>,
    review_id: Option<&'a str>,
    trace_id: Option<&'a str>,
    upstream: Duration,
    overhead: Duration,
}

impl AccessLogger {
    /// `direct`: the log thread's queue and whether the log is JSON, when lines may skip
    /// the subscriber's formatter (not on a terminal).
    pub fn new(level: AccessLog, direct: Option<(Lines, bool)>) -> Self {
        AccessLogger { level, direct }
    }

    /// Whether lines are wanted at all (then the request's trace id is worth reading).
    pub fn on(&self) -> bool {
        self.level != AccessLog::Off
    }

    pub fn log(
        &self,
        task: &Task,
        response: &Response<Body>,
        trace_id: Option<&str>,
        upstream: Duration,
        overhead: Duration,
    ) {
        let level = match self.level {
            AccessLog::Off => return,
            AccessLog::Debug if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) => {
                tracing::Level::DEBUG
            }
            AccessLog::Info if tracing::enabled!(target: TARGET, tracing::Level::INFO) => {
                tracing::Level::INFO
            }
            _ => return,
        };
        let h = |name: &HeaderName| response.headers().get(name).and_then(|v| v.to_str().ok());
        let entry = Entry {
            level,
            task: &task.name,
            variant: h(&X_VARIANT),
            decision: h(&X_DECISION),
            status: response.status().as_u16(),
            confidence: h(&X_CONFIDENCE).filter(|c| is_json_number(c)),
            review_id: h(&X_REVIEW_ID),
            trace_id,
            upstream,
            overhead,
        };
        match &self.direct {
            Some((lines, json)) => {
                let mut line = Vec::with_capacity(320);
                entry.write(&mut line, SystemTime::now(), *json);
                lines.send(&line, false);
            }
            None => entry.trace(),
        }
    }
}

impl Entry<'_> {
    /// The line as tracing-subscriber's text or JSON format lays out an event of target
    /// `triage::access` and message `request`, newline included. The two differ in the
    /// head, the tail and how a field is introduced (`,"name":` or ` name=`); values are
    /// written alike, strings quoted (but for the text line's `task`).
    fn write(&self, out: &mut Vec<u8>, now: SystemTime, json: bool) {
        let at = humantime::format_rfc3339_micros(now);
        let level = self.level.as_str();
        // Writing into a `Vec` cannot fail.
        if json {
            let _ = write!(
                out,
                r#"{{"timestamp":"{at}","level":"{level}","message":"request","task":"#
            );
            string(out, self.task);
        } else {
            let _ = write!(out, "{at} {level:>5} {TARGET}: request task={}", self.task);
        }
        let name = |out: &mut Vec<u8>, name: &str| {
            let _ = if json {
                write!(out, r#","{name}":"#)
            } else {
                write!(out, " {name}=")
            };
        };
        let strings = |out: &mut Vec<u8>, fields: [(&str, Option<&str>); 2]| {
            for (field, value) in fields {
                if let Some(value) = value {
                    name(out, field);
                    string(out, value);
                }
            }
        };
        strings(
            out,
            [("variant", self.variant), ("decision", self.decision)],
        );
        name(out, "status");
        let _ = write!(out, "{}", self.status);
        if let Some(c) = self.confidence {
            name(out, "confidence");
            out.extend_from_slice(c.as_bytes());
        }
        strings(
            out,
            [("review_id", self.review_id), ("trace_id", self.trace_id)],
        );
        name(out, "upstream_ms");
        let _ = write!(out, "{}", Millis(self.upstream));
        name(out, "overhead_ms");
        let _ = write!(out, "{}", Millis(self.overhead));
        if json {
            let _ = write!(out, r#","target":"{TARGET}"}}"#);
        }
        out.push(b'\n');
    }

    /// The same line through the tracing subscriber (a terminal's colours; no log thread).
    fn trace(&self) {
        let confidence = self.confidence.and_then(|c| c.parse::<f64>().ok());
        let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
        let (upstream_ms, overhead_ms) = (ms(self.upstream), ms(self.overhead));
        let Entry {
            task,
            variant,
            decision,
            status,
            review_id,
            trace_id,
            ..
        } = *self;
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(target: TARGET, $level, task = %task, variant, decision, status,
                    confidence, review_id, trace_id, upstream_ms, overhead_ms, "request")
            };
        }
        if self.level == tracing::Level::DEBUG {
            line!(tracing::Level::DEBUG);
        } else {
            line!(tracing::Level::INFO);
        }
    }
}

/// A duration in milliseconds with microsecond precision: `12.345`.
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self.0.as_micros();
        write!(f, "{}.{:03}", micros / 1000, micros % 1000)
    }
}

/// A JSON string (quoted, escaped): both formats quote string values this way.
fn string(out: &mut Vec<u8>, value: &str) {
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// What the confidence header holds is a finite number as `Display` writes it (digits, a
/// point, a leading minus; never an exponent): anything else (`NaN`, `inf`) is left out of
/// the line rather than break a JSON one. Checked by bytes, no parse.
fn is_json_number(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    digits.starts_with(|c: char| c.is_ascii_digit())
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|&b| b == b'.').count() <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            level: tracing::Level::INFO,
            task: "chat",
            variant: Some("stable"),
            decision: Some("review"),
            status: 202,
            confidence: Some("0.2"),
            review_id: Some("01a21051-e587-72ca-8f90-4146760ea3ed"),
            trace_id: Some("say \"hi\"\n"),
            upstream: Duration::from_micros(1_830_991),
            overhead: Duration::from_nanos(86_139),
        }
    }

    fn written(entry: &Entry<'_>, json: bool) -> String {
        let mut out = Vec::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_034_132_079_395);
        entry.write(&mut out, at, json);
        String::from_utf8(out).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn text_lines_read_like_the_subscribers() {
        assert_eq!(
            written(&entry(), false),
            "2025-11-25T01:28:52.079395Z  INFO triage::access: request task=chat \
             variant=\"stable\" decision=\"review\" status=202 confidence=0.2 \
             review_id=\"01a21051-e587-72ca-8f90-4146760ea3ed\" trace_id=\"say \\\"hi\\\"\\n\" \
             upstream_ms=1830.991 overhead_ms=0.086\n"
        );
        let bare = Entry {
            level: tracing::Level::DEBUG,
            variant: None,
            decision: None,
            confidence: None,
            review_id: None,
            trace_id: None,
            ..entry()
        };
        assert_eq!(
            written(&bare, false),
            "2025-11-25T01:28:52.079395Z DEBUG triage::access: request task=chat status=202 \
             upstream_ms=1830.991 overhead_ms=0.086\n"
        );
    }

    #[test]
    fn json_lines_parse_with_every_field_in_order() {
        let line = written(&entry(), true);
        assert!(line.ends_with("}\n") && !line[..line.len() - 1].contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            v,
            serde_json::json!({
                "timestamp": "2025-11-25T01:28:52.079395Z", "level": "INFO",
                "message": "request", "task": "chat", "variant": "stable",
                "decision": "review", "status": 202, "confidence": 0.2,
                "review_id": "01a21051-e587-72ca-8f90-4146760ea3ed",
                "trace_id": "say \"hi\"\n", "upstream_ms": 1830.991, "overhead_ms": 0.086,
                "target": "triage::access"
            })
        );
        let keys: Vec<&str> = line
            .match_indices("\":")
            .map(|(i, _)| &line[line[..i].rfind('"').map_or(0, |q| q + 1)..i])
            .collect();
        assert_eq!(
            keys,
            [
                "timestamp",
                "level",
                "message",
                "task",
                "variant",
                "decision",
                "status",
                "confidence",
                "review_id",
                "trace_id",
                "upstream_ms",
                "overhead_ms",
                "target"
            ]
        );
    }

    #[test]
    fn only_numbers_go_in_as_the_confidence() {
        assert!(is_json_number("0.95") && is_json_number("1") && is_json_number("-0.5"));
        assert!(!is_json_number("NaN") && !is_json_number("inf") && !is_json_number(""));
        assert!(!is_json_number("0.9,\"x\":1"));
    }
}
