//! Reading a request body at the edge: bounded by its limit, within a
//! deadline, and hashed (SHA-256) as it streams in, so the signature's
//! payload hash is checked without a second pass over the bytes.

use axum::body::{Body, Bytes};
use bytes::BytesMut;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More bytes than the limit.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// The body did not arrive in time.
    #[error("the body did not arrive within the deadline")]
    TimedOut,
    /// The connection failed or the framing was bad.
    #[error("could not read the request body: {0}")]
    Read(#[source] axum::Error),
}

/// A body read whole, with its SHA-256.
#[derive(Debug)]
pub struct HashedBody {
    /// The bytes.
    pub bytes: Bytes,
    /// Their SHA-256.
    pub sha256: [u8; 32],
}

/// How much of an authenticated caller's body over its limit is read and
/// dropped before the 413, so that a client that sends its whole body
/// before reading (boto3) gets the answer instead of a reset.
pub const DRAIN_PAST_LIMIT: u64 = 16 * 1024 * 1024;

/// Reads `body` (expected to be `size_hint` bytes, when declared) up to
/// `limit` bytes, before `deadline`, hashing each chunk as it arrives.
pub async fn read_hashed(
    body: &mut Body,
    limit: usize,
    size_hint: Option<u64>,
    deadline: Instant,
) -> Result<HashedBody, BodyError> {
    let capacity = size_hint.map_or(0, |n| usize::try_from(n).unwrap_or(limit).min(limit));
    let mut buf = BytesMut::with_capacity(capacity);
    let mut hasher = Sha256::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers carry nothing the API uses.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        hasher.update(&data);
        buf.extend_from_slice(&data);
    }
    Ok(HashedBody {
        bytes: buf.freeze(),
        sha256: hasher.finalize().into(),
    })
}

/// Reads and drops the rest of `body`, at most `max` bytes, before
/// `deadline`. Returns whether the body ended.
pub async fn drain(body: &mut Body, max: u64, deadline: Instant) -> bool {
    let mut seen = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => return true,
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    seen += data.len() as u64;
                    if seen > max {
                        return false;
                    }
                }
            }
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn later(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn hashes_bounds_and_times_out() {
        let got = read_hashed(&mut Body::from("abc"), 3, Some(3), later(1000))
            .await
            .unwrap();
        assert_eq!(&got.bytes[..], b"abc");
        assert_eq!(hex::encode(got.sha256), hex::encode(Sha256::digest(b"abc")));
        assert!(matches!(
            read_hashed(&mut Body::from("abcd"), 3, None, later(1000)).await,
            Err(BodyError::TooLarge(3))
        ));
        assert!(drain(&mut Body::from("abcd"), 4, later(1000)).await);
        assert!(!drain(&mut Body::from("abcd"), 3, later(1000)).await);
        // A body that never ends.
        assert!(matches!(
            read_hashed(&mut Body::new(Stalled), 10, None, later(50)).await,
            Err(BodyError::TimedOut)
        ));
        assert!(!drain(&mut Body::new(Stalled), 10, later(50)).await);
    }

    /// A body whose next chunk never comes.
    struct Stalled;

    impl hyper::body::Body for Stalled {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Pending
        }
    }
}
