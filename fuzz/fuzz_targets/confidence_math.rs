//! The pure aggregations on arbitrary f64 bit patterns (NaN, ±inf, subnormals, -0.0), which
//! no JSON body can produce. Never a panic; any Ok within [0, 1].
#![no_main]

use libfuzzer_sys::fuzz_target;
use triage::confidence::{from_logprobs, max_probability, softmax_max};
use triage::rules::raw::Aggregate;

fuzz_target!(|data: &[u8]| {
    let values: Vec<f64> = data
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    for (what, result) in [
        (
            "from_logprobs(mean)",
            from_logprobs(&values, Aggregate::Mean),
        ),
        ("from_logprobs(min)", from_logprobs(&values, Aggregate::Min)),
        ("max_probability", max_probability(&values)),
        ("softmax_max", softmax_max(&values)),
    ] {
        if let Ok(c) = result {
            assert!((0.0..=1.0).contains(&c), "{what} gave {c} for {values:?}");
        }
    }
});
