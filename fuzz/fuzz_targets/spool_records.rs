//! Spool segment parsing on arbitrary bytes (a torn or corrupted segment file). Never a
//! panic; what it returns is exactly a prefix of the input, re-framed byte for byte, and
//! `torn` is false only when that prefix is the whole input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use triage::spool::{frame, records};

fuzz_target!(|data: &[u8]| {
    let (recs, torn) = records(data);
    let mut rebuilt = Vec::new();
    for r in &recs {
        rebuilt.extend_from_slice(&frame(r));
    }
    assert!(rebuilt.len() <= data.len());
    assert_eq!(
        &data[..rebuilt.len()],
        &rebuilt[..],
        "records are not a prefix"
    );
    assert_eq!(torn, rebuilt.len() != data.len(), "torn flag disagrees");
    // Appending an intact record to an intact segment keeps every record.
    if !torn {
        let mut more = data.to_vec();
        more.extend_from_slice(&frame(b"tail"));
        let (again, torn_again) = records(&more);
        assert!(!torn_again);
        assert_eq!(again.len(), recs.len() + 1);
    }
});
