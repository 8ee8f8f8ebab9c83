//! Decide what happens to an upstream output. Pure: policy + observations in, decision out.
//!
//! The order of the checks is the contract: an output from the wrong model version is never
//! released; a paused task holds everything; refusals are recognised before confidence is
//! read; then missing and low confidence; a passing output may be sampled for audit.

use crate::confidence::Missing;
use crate::rules::raw::{OnMismatch, OnMissing, OnRefusal, OnReview};

/// `triage_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Held,
    Flagged,
    Rejected,
    Refused,
    UpstreamError,
    Timeout,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Passed,
        Outcome::Held,
        Outcome::Flagged,
        Outcome::Rejected,
        Outcome::Refused,
        Outcome::UpstreamError,
        Outcome::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Held => "held",
            Outcome::Flagged => "flagged",
            Outcome::Rejected => "rejected",
            Outcome::Refused => "refused",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Why an output went to the review queue (`triage_escalations_total{reason}`, routing key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    LowConfidence,
    MissingConfidence,
    VersionMismatch,
    Refusal,
    Audit,
    Paused,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::LowConfidence,
        Reason::MissingConfidence,
        Reason::VersionMismatch,
        Reason::Refusal,
        Reason::Audit,
        Reason::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LowConfidence => "low_confidence",
            Reason::MissingConfidence => "missing_confidence",
            Reason::VersionMismatch => "version_mismatch",
            Reason::Refusal => "refusal",
            Reason::Audit => "audit",
            Reason::Paused => "paused",
        }
    }
}

/// The knobs of one task (and variant: the threshold may be the variant's own).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub threshold: f64,
    pub on_review: OnReview,
    pub on_missing: OnMissing,
    pub on_refusal: OnRefusal,
    pub on_mismatch: OnMismatch,
    pub paused: bool,
    pub audit_rate: f64,
}

/// What the response phase saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub refusal: bool,
    pub version_mismatch: bool,
    pub confidence: Result<f64, Missing>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Release the output. `audit`: also copy it to review (reason `audit`).
    Pass { audit: bool },
    /// Release a refusal as it came (`x-triage-decision: refused`).
    Refused,
    /// Withhold the output (202) until a reviewer decides.
    Hold(Reason),
    /// Release the output flagged, and copy it to review.
    Flag(Reason),
    /// Release nothing: 502 (`version_mismatch`, or `bad_upstream_response` when missing).
    Reject(Reason),
}

impl Decision {
    pub fn outcome(self) -> Outcome {
        match self {
            Decision::Pass { .. } => Outcome::Passed,
            Decision::Refused | Decision::Hold(Reason::Refusal) => Outcome::Refused,
            Decision::Hold(_) => Outcome::Held,
            Decision::Flag(_) => Outcome::Flagged,
            Decision::Reject(_) => Outcome::Rejected,
        }
    }

    /// The review reason, when a review item must be published.
    pub fn review_reason(self) -> Option<Reason> {
        match self {
            Decision::Pass { audit: true } => Some(Reason::Audit),
            Decision::Hold(r) | Decision::Flag(r) => Some(r),
            _ => None,
        }
    }

    /// `x-triage-decision`.
    pub fn header(self) -> &'static str {
        match self {
            Decision::Pass { .. } => "pass",
            Decision::Refused => "refused",
            Decision::Hold(_) => "review",
            Decision::Flag(_) => "flag",
            Decision::Reject(_) => "error",
        }
    }
}

/// `audit_draw` is a uniform sample in [0, 1); the output is audited when it is below the rate.
pub fn decide(policy: &Policy, obs: &Observation, audit_draw: f64) -> Decision {
    if obs.version_mismatch {
        return match policy.on_mismatch {
            OnMismatch::Reject => Decision::Reject(Reason::VersionMismatch),
            OnMismatch::Review => Decision::Hold(Reason::VersionMismatch),
        };
    }
    if policy.paused {
        return Decision::Hold(Reason::Paused);
    }
    if obs.refusal {
        return match policy.on_refusal {
            OnRefusal::Pass => Decision::Refused,
            OnRefusal::Review => Decision::Hold(Reason::Refusal),
        };
    }
    let review = |reason| match policy.on_review {
        OnReview::Hold => Decision::Hold(reason),
        OnReview::Flag => Decision::Flag(reason),
    };
    match obs.confidence {
        Err(_) => match policy.on_missing {
            OnMissing::Review => review(Reason::MissingConfidence),
            OnMissing::Reject => Decision::Reject(Reason::MissingConfidence),
        },
        Ok(c) if c < policy.threshold => review(Reason::LowConfidence),
        Ok(_) => Decision::Pass {
            audit: audit_draw < policy.audit_rate,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            threshold: 0.85,
            on_review: OnReview::Hold,
            on_missing: OnMissing::Review,
            on_refusal: OnRefusal::Pass,
            on_mismatch: OnMismatch::Reject,
            paused: false,
            audit_rate: 0.0,
        }
    }

    fn obs(confidence: Result<f64, Missing>) -> Observation {
        Observation {
            refusal: false,
            version_mismatch: false,
            confidence,
        }
    }

    #[test]
    fn threshold_edges() {
        let p = policy();
        assert_eq!(
            decide(&p, &obs(Ok(0.85)), 0.5),
            Decision::Pass { audit: false }
        );
        assert_eq!(
            decide(&p, &obs(Ok(0.8499)), 0.5),
            Decision::Hold(Reason::LowConfidence)
        );
        assert_eq!(
            decide(&p, &obs(Ok(1.0)), 0.5),
            Decision::Pass { audit: false }
        );
        let flag = Policy {
            on_review: OnReview::Flag,
            ..p
        };
        assert_eq!(
            decide(&flag, &obs(Ok(0.1)), 0.5),
            Decision::Flag(Reason::LowConfidence)
        );
        let zero = Policy {
            threshold: 0.0,
            ..p
        };
        assert_eq!(
            decide(&zero, &obs(Ok(0.0)), 0.5),
            Decision::Pass { audit: false }
        );
    }

    #[test]
    fn missing_follows_policy() {
        let p = policy();
        let m = obs(Err(Missing::NotANumber));
        assert_eq!(
            decide(&p, &m, 0.5),
            Decision::Hold(Reason::MissingConfidence)
        );
        let reject = Policy {
            on_missing: OnMissing::Reject,
            ..p
        };
        assert_eq!(
            decide(&reject, &m, 0.5),
            Decision::Reject(Reason::MissingConfidence)
        );
    }

    #[test]
    fn order_mismatch_then_pause_then_refusal() {
        let p = Policy {
            paused: true,
            ..policy()
        };
        let all = Observation {
            refusal: true,
            version_mismatch: true,
            confidence: Ok(1.0),
        };
        assert_eq!(
            decide(&p, &all, 0.5),
            Decision::Reject(Reason::VersionMismatch)
        );
        let no_mismatch = Observation {
            version_mismatch: false,
            ..all
        };
        assert_eq!(
            decide(&p, &no_mismatch, 0.5),
            Decision::Hold(Reason::Paused)
        );
        let unpaused = Policy { paused: false, ..p };
        assert_eq!(decide(&unpaused, &no_mismatch, 0.5), Decision::Refused);
        let review = Policy {
            on_refusal: OnRefusal::Review,
            ..unpaused
        };
        let d = decide(&review, &no_mismatch, 0.5);
        assert_eq!(d, Decision::Hold(Reason::Refusal));
        assert_eq!(d.outcome(), Outcome::Refused);
    }

    #[test]
    fn audit_draw_below_rate_audits() {
        let p = Policy {
            audit_rate: 0.2,
            ..policy()
        };
        assert_eq!(
            decide(&p, &obs(Ok(0.9)), 0.19),
            Decision::Pass { audit: true }
        );
        assert_eq!(
            decide(&p, &obs(Ok(0.9)), 0.2),
            Decision::Pass { audit: false }
        );
        assert_eq!(
            Decision::Pass { audit: true }.review_reason(),
            Some(Reason::Audit)
        );
    }
}
