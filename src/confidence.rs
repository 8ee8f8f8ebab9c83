//! Extract a confidence in [0, 1] from what the probe found (or a response header).
//!
//! Pure: the inputs are the probe's slots and the response headers, the output a number or
//! the reason there is none. Anything that is not a finite number in range is "missing";
//! the decision phase, not this one, chooses what missing means.

use http::{HeaderMap, HeaderName};

use crate::probe::Found;
use crate::rules::raw::Aggregate;

/// A compiled confidence source; slots index into the task's probe output.
#[derive(Debug, Clone)]
pub enum Extractor {
    JsonPointer { slot: usize },
    Header { name: HeaderName },
    OpenaiLogprobs { slot: usize, aggregate: Aggregate },
    Max { slot: usize },
    SoftmaxMax { slot: usize },
}

impl Extractor {
    /// The `source` name of the rules file, as reported in review items.
    pub fn source_name(&self) -> &'static str {
        match self {
            Extractor::JsonPointer { .. } => "json_pointer",
            Extractor::Header { .. } => "header",
            Extractor::OpenaiLogprobs { .. } => "openai_logprobs",
            Extractor::Max { .. } => "max",
            Extractor::SoftmaxMax { .. } => "softmax_max",
        }
    }
}

/// Why there is no confidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The value is not there (or the body is not JSON).
    Absent,
    /// Present, but not a number (a string, null, NaN, an array with a non-number…).
    NotANumber,
    /// A number outside [0, 1] (or a log-probability above 0).
    OutOfRange,
}

impl Missing {
    pub fn as_str(self) -> &'static str {
        match self {
            Missing::Absent => "absent",
            Missing::NotANumber => "not_a_number",
            Missing::OutOfRange => "out_of_range",
        }
    }
}

/// Extract the confidence. `found` is `None` when the body was not JSON.
pub fn extract(
    extractor: &Extractor,
    found: Option<&[Found]>,
    headers: &HeaderMap,
) -> Result<f64, Missing> {
    let slot = |slot: usize| found.and_then(|f| f.get(slot)).unwrap_or(&Found::Absent);
    match extractor {
        Extractor::JsonPointer { slot: s } => match slot(*s) {
            Found::Number(n) => in_unit_range(*n),
            Found::Absent => Err(Missing::Absent),
            _ => Err(Missing::NotANumber),
        },
        Extractor::Header { name } => {
            let value = headers.get(name).ok_or(Missing::Absent)?;
            let text = value.to_str().map_err(|_| Missing::NotANumber)?;
            let n: f64 = text.trim().parse().map_err(|_| Missing::NotANumber)?;
            in_unit_range(n)
        }
        Extractor::OpenaiLogprobs { slot: s, aggregate } => {
            numbers(slot(*s)).and_then(|v| from_logprobs(v, *aggregate))
        }
        Extractor::Max { slot: s } => numbers(slot(*s)).and_then(max_probability),
        Extractor::SoftmaxMax { slot: s } => numbers(slot(*s)).and_then(softmax_max),
    }
}

fn numbers(found: &Found) -> Result<&[f64], Missing> {
    match found {
        Found::Numbers(v) if !v.is_empty() => Ok(v),
        Found::Absent => Err(Missing::Absent),
        _ => Err(Missing::NotANumber),
    }
}

fn in_unit_range(n: f64) -> Result<f64, Missing> {
    if n.is_nan() || n.is_infinite() {
        Err(Missing::NotANumber)
    } else if (0.0..=1.0).contains(&n) {
        Ok(n)
    } else {
        Err(Missing::OutOfRange)
    }
}

/// `exp(mean)` or `exp(min)` of token log-probabilities. A log-probability is at most 0.
pub fn from_logprobs(logprobs: &[f64], aggregate: Aggregate) -> Result<f64, Missing> {
    if logprobs.is_empty() {
        return Err(Missing::Absent);
    }
    if logprobs
        .iter()
        .any(|x| !x.is_finite() && *x != f64::NEG_INFINITY)
    {
        return Err(Missing::NotANumber);
    }
    if logprobs.iter().any(|x| *x > 0.0) {
        return Err(Missing::OutOfRange);
    }
    let agg = match aggregate {
        Aggregate::Mean => logprobs.iter().sum::<f64>() / logprobs.len() as f64,
        Aggregate::Min => logprobs.iter().copied().fold(f64::INFINITY, f64::min),
    };
    in_unit_range(agg.exp())
}

/// The largest of a list of probabilities.
pub fn max_probability(probabilities: &[f64]) -> Result<f64, Missing> {
    if probabilities.is_empty() {
        return Err(Missing::Absent);
    }
    if probabilities.iter().any(|x| !x.is_finite()) {
        return Err(Missing::NotANumber);
    }
    in_unit_range(
        probabilities
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max),
    )
}

/// The largest softmax probability of a list of logits, computed stably:
/// `max_i softmax(x)_i = 1 / Σ_j exp(x_j - max(x))`.
pub fn softmax_max(logits: &[f64]) -> Result<f64, Missing> {
    if logits.is_empty() {
        return Err(Missing::Absent);
    }
    if logits.iter().any(|x| !x.is_finite()) {
        return Err(Missing::NotANumber);
    }
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits.iter().map(|x| (x - max).exp()).sum();
    in_unit_range(1.0 / sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn logprob_aggregates() {
        let lp = [-0.1f64, -0.3];
        let mean = from_logprobs(&lp, Aggregate::Mean).unwrap();
        assert!((mean - (-0.2f64).exp()).abs() < 1e-12);
        let min = from_logprobs(&lp, Aggregate::Min).unwrap();
        assert!((min - (-0.3f64).exp()).abs() < 1e-12);
        assert_eq!(from_logprobs(&[], Aggregate::Mean), Err(Missing::Absent));
        assert_eq!(
            from_logprobs(&[0.5], Aggregate::Mean),
            Err(Missing::OutOfRange)
        );
        assert_eq!(from_logprobs(&[f64::NEG_INFINITY], Aggregate::Min), Ok(0.0));
    }

    #[test]
    fn softmax_is_stable_for_huge_logits() {
        let c = softmax_max(&[1000.0, 1000.0]).unwrap();
        assert!((c - 0.5).abs() < 1e-12);
        let c = softmax_max(&[-1e300, 0.0]).unwrap();
        assert!((c - 1.0).abs() < 1e-12);
        let c = softmax_max(&[2.0, 1.0, 0.1]).unwrap();
        assert!((c - 0.659_001_138_5).abs() < 1e-9);
    }

    #[test]
    fn max_probability_edges() {
        assert_eq!(max_probability(&[0.2, 0.8]), Ok(0.8));
        assert_eq!(max_probability(&[0.2, 1.2]), Err(Missing::OutOfRange));
        assert_eq!(max_probability(&[-0.5]), Err(Missing::OutOfRange));
        assert_eq!(max_probability(&[f64::NAN]), Err(Missing::NotANumber));
    }

    #[test]
    fn header_values() {
        let ex = Extractor::Header {
            name: HeaderName::from_static("x-confidence"),
        };
        let mut h = HeaderMap::new();
        assert_eq!(extract(&ex, None, &h), Err(Missing::Absent));
        for (v, want) in [
            ("0.9", Ok(0.9)),
            (" 1 ", Ok(1.0)),
            ("NaN", Err(Missing::NotANumber)),
            ("inf", Err(Missing::NotANumber)),
            ("high", Err(Missing::NotANumber)),
            ("-0.1", Err(Missing::OutOfRange)),
            ("1.01", Err(Missing::OutOfRange)),
        ] {
            h.insert("x-confidence", v.parse().unwrap());
            assert_eq!(extract(&ex, None, &h), want, "{v}");
        }
    }

    fn extractors() -> (crate::probe::Probe, Vec<Extractor>) {
        use crate::probe::{Kind, Probe, Step, parse_pointer};
        let mut probe = Probe::default();
        let conf = probe.add(&parse_pointer("/confidence").unwrap(), Kind::One);
        let mut lp = parse_pointer("/choices/0/logprobs/content").unwrap();
        lp.push(Step::Each);
        lp.push(Step::token("logprob"));
        let lp = probe.add(&lp, Kind::Many);
        let mut arr = parse_pointer("/probabilities").unwrap();
        arr.push(Step::Each);
        let arr = probe.add(&arr, Kind::Many);
        let list = vec![
            Extractor::JsonPointer { slot: conf },
            Extractor::OpenaiLogprobs {
                slot: lp,
                aggregate: Aggregate::Mean,
            },
            Extractor::OpenaiLogprobs {
                slot: lp,
                aggregate: Aggregate::Min,
            },
            Extractor::Max { slot: arr },
            Extractor::SoftmaxMax { slot: arr },
        ];
        (probe, list)
    }

    proptest! {
        #[test]
        fn any_json_in_never_a_panic_and_in_range_or_missing(doc in crate::probe::testing::json()) {
            let (probe, list) = extractors();
            let body = serde_json::to_vec(&doc).unwrap();
            let found = probe.run(&body).ok();
            prop_assert!(found.is_some(), "valid JSON is always walked");
            for ex in &list {
                if let Ok(c) = extract(ex, found.as_deref(), &HeaderMap::new()) {
                    prop_assert!((0.0..=1.0).contains(&c), "{c} from {doc}");
                }
            }
        }

        #[test]
        fn any_bytes_in_never_a_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let (probe, list) = extractors();
            let found = probe.run(&body).ok();
            for ex in &list {
                if let Ok(c) = extract(ex, found.as_deref(), &HeaderMap::new()) {
                    prop_assert!((0.0..=1.0).contains(&c));
                }
            }
        }

        #[test]
        fn pure_extractors_stay_in_range(v in proptest::collection::vec(any::<f64>(), 0..64)) {
            for c in [
                from_logprobs(&v, Aggregate::Mean),
                from_logprobs(&v, Aggregate::Min),
                max_probability(&v),
                softmax_max(&v),
            ]
            .into_iter()
            .flatten()
            {
                prop_assert!((0.0..=1.0).contains(&c), "{c}");
            }

        }
    }
}
