//! The `header` confidence source on arbitrary header value bytes (invalid values skipped,
//! as the HTTP stack would never hand them over). Never a panic; any confidence in [0, 1].
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use triage::confidence::{Extractor, extract};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let name = HeaderName::from_static("x-confidence");
    let ex = Extractor::Header { name: name.clone() };
    let mut headers = HeaderMap::new();
    headers.insert(name.clone(), value.clone());
    let one = extract(&ex, None, &headers);
    if let Ok(c) = one {
        assert!((0.0..=1.0).contains(&c), "{c} from {value:?}");
    }
    // A repeated header: the first value is the one read, whatever follows.
    headers.append(name, HeaderValue::from_static("0.5"));
    assert_eq!(extract(&ex, None, &headers), one);
});
