//! RFC 6901 JSON pointers from arbitrary strings. Input: the pointer, then optionally a NUL
//! byte and a JSON body that a probe with that pointer (as a Kind::One slot and, through
//! every element, as a Kind::Many slot) is run on.
//!
//! Checked: never a panic; Ok exactly for "" and strings starting with '/'; one step per
//! '/'; re-escaping the steps gives the pointer back; a token is an array index only when
//! it is "0" or digits without a leading zero (RFC 6901 `array-index`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use triage::probe::{Kind, Probe, Step, parse_pointer};

fn rfc_index(key: &str) -> Option<usize> {
    let canonical = key == "0"
        || (!key.is_empty() && !key.starts_with('0') && key.bytes().all(|b| b.is_ascii_digit()));
    if canonical { key.parse().ok() } else { None }
}

fuzz_target!(|data: &[u8]| {
    let (pointer, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(pointer) = std::str::from_utf8(pointer) else {
        return;
    };
    let parsed = parse_pointer(pointer);
    if pointer.is_empty() {
        assert_eq!(parsed, Ok(Vec::new()));
    }
    if !pointer.is_empty() && !pointer.starts_with('/') {
        assert!(
            parsed.is_err(),
            "{pointer:?} accepted without a leading '/'"
        );
    }
    let Ok(steps) = parsed else {
        return;
    };
    assert_eq!(steps.len(), pointer.matches('/').count(), "{pointer:?}");
    let mut rebuilt = String::new();
    for step in &steps {
        let Step::Token { key, index } = step else {
            panic!("parse_pointer produced Step::Each for {pointer:?}");
        };
        assert_eq!(
            *index,
            rfc_index(key),
            "index of token {key:?} in {pointer:?}"
        );
        rebuilt.push('/');
        rebuilt.push_str(&key.replace('~', "~0").replace('/', "~1"));
    }
    assert_eq!(rebuilt, pointer);

    let mut probe = Probe::default();
    let one = probe.add(&steps, Kind::One);
    let mut each = steps.clone();
    each.push(Step::Each);
    let many = probe.add(&each, Kind::Many);
    assert_eq!(
        probe.add(&steps, Kind::One),
        one,
        "the same path twice gets one slot"
    );
    if let Ok(found) = probe.run(body) {
        assert_eq!(found.len(), 2);
        assert!(one != many);
    }
});
