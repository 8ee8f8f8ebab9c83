//! A whole HTTP body in one buffer: the request triage forwards and the answer it observes
//! are both read to their end before anything else happens to them.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

#[derive(Debug)]
pub enum Error {
    /// More than the limit arrived (or was about to).
    TooLarge,
    Read(hyper::Error),
}

/// Read `body` to its end, refusing more than `limit` bytes (at once, unread, when its
/// `content-length` says more). A body that comes in one frame (a small one usually does)
/// is kept as it came, without a copy. One in several frames is gathered into one buffer,
/// sized up front from its `content-length` (capped at `limit`, so a false one cannot make
/// it reserve more), not grown frame by frame.
pub async fn read(body: &mut Incoming, limit: usize) -> Result<Bytes, Error> {
    let declared = body.size_hint().exact();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Error::TooLarge);
    }
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Error::Read)?.into_data() else {
            continue; // trailers
        };
        len = len.saturating_add(data.len());
        if len > limit {
            return Err(Error::TooLarge);
        }
        match &first {
            None => first = Some(data),
            Some(head) => {
                if rest.is_empty() {
                    let declared = declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit));
                    rest.reserve(declared.min(limit).max(len));
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    })
}
