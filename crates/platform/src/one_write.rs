//! A unary answer leaves the server in one write: headers, message and trailers together.
//!
//! h2 (`FramedWrite`) copies a DATA frame into its write buffer only when the payload is under
//! [`H2_CHAIN_THRESHOLD`] bytes. A larger payload is written straight from the message's own
//! buffer, and h2 flushes it before it buffers any other frame (hyperium/h2#711 describes
//! the same code path). A gRPC answer of 256 bytes or more therefore went out in two writes:
//! headers and message, then the trailers that carry its status. That is a second system
//! call and a second TCP segment for the server, and a second wake-up for the caller, which
//! cannot finish the call before the trailers arrive. On this project's loopback it cost an
//! answer of 425 bytes about 40 µs against an empty one, and twice the server's `writev`s
//! (docs/results.md, "one write per answer").
//!
//! Answers up to [`COALESCED_UP_TO`] bytes are handed to h2 in pieces under its threshold,
//! which it copies into one buffer with the trailers: one write. Larger ones pass as they
//! are, where the second write is small beside the answer and more frames would cost more
//! than they save.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// h2's `CHAIN_THRESHOLD` with vectored writes (a TCP socket's): payloads from this size on
/// are written from their own buffer instead of copied.
pub const H2_CHAIN_THRESHOLD: usize = 256;

/// The largest piece h2 still copies.
const PIECE: usize = H2_CHAIN_THRESHOLD - 1;

/// Messages up to this size are cut into pieces: 17 DATA frames at most, whose extra frame
/// headers (9 bytes each) and handling on both sides cost less than the write they save.
pub const COALESCED_UP_TO: usize = 4 * 1024;

/// Wraps an answer's body so its message reaches h2 in pieces it copies.
pub fn one_write<B>(response: http::Response<B>) -> http::Response<OneWrite<B>> {
    response.map(|inner| OneWrite {
        inner,
        rest: Bytes::new(),
    })
}

/// A response body whose data frames of [`H2_CHAIN_THRESHOLD`] to [`COALESCED_UP_TO`] bytes
/// are passed on in pieces under the threshold; every other frame passes unchanged.
#[derive(Debug)]
pub struct OneWrite<B> {
    inner: B,
    /// What is left of the frame being cut.
    rest: Bytes,
}

impl<B> OneWrite<B> {
    fn next_piece(&mut self) -> Frame<Bytes> {
        let piece = self.rest.split_to(PIECE.min(self.rest.len()));
        Frame::data(piece)
    }
}

impl<B> Body for OneWrite<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if !this.rest.is_empty() {
            return Poll::Ready(Some(Ok(this.next_piece())));
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        match frame.into_data() {
            Ok(data) if (H2_CHAIN_THRESHOLD..=COALESCED_UP_TO).contains(&data.len()) => {
                this.rest = data;
                Poll::Ready(Some(Ok(this.next_piece())))
            }
            Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Err(frame) => Poll::Ready(Some(Ok(frame))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt as _, StreamBody};

    use super::*;

    type Frames = StreamBody<
        futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
    >;

    /// A body of these data frames, then trailers.
    fn body(sizes: &[usize]) -> (Frames, Vec<u8>) {
        let mut frames = Vec::new();
        let mut all = Vec::new();
        for (index, size) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*size).map(|byte| (byte + index) as u8).collect();
            all.extend_from_slice(&data);
            frames.push(Ok(Frame::data(Bytes::from(data))));
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        frames.push(Ok(Frame::trailers(trailers)));
        (StreamBody::new(futures::stream::iter(frames)), all)
    }

    /// The data frames' sizes, their bytes together, and whether trailers came last.
    async fn passed_on(sizes: &[usize]) -> (Vec<usize>, Vec<u8>, Vec<u8>, bool) {
        let (inner, sent) = body(sizes);
        let mut body = OneWrite {
            inner,
            rest: Bytes::new(),
        };
        let (mut lengths, mut received, mut trailers_last) = (Vec::new(), Vec::new(), false);
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("infallible");
            assert!(!trailers_last, "nothing after the trailers");
            match frame.into_data() {
                Ok(data) => {
                    lengths.push(data.len());
                    received.extend_from_slice(&data);
                }
                Err(frame) => trailers_last = frame.is_trailers(),
            }
        }
        (lengths, sent, received, trailers_last)
    }

    #[tokio::test]
    async fn a_message_from_the_threshold_up_is_cut_into_pieces_h2_copies() {
        for size in [H2_CHAIN_THRESHOLD, 425, 2_318, COALESCED_UP_TO] {
            let (lengths, sent, received, trailers_last) = passed_on(&[size]).await;
            assert!(
                lengths.iter().all(|length| *length < H2_CHAIN_THRESHOLD),
                "{size}: {lengths:?}"
            );
            assert_eq!(lengths.len(), size.div_ceil(PIECE), "{size}: {lengths:?}");
            assert_eq!(received, sent, "{size}: the same bytes in the same order");
            assert!(trailers_last, "{size}");
        }
    }

    #[tokio::test]
    async fn small_and_large_messages_pass_as_they_are() {
        let sizes = [0, 5, PIECE, COALESCED_UP_TO + 1, 64 * 1024];
        let (lengths, sent, received, trailers_last) = passed_on(&sizes).await;
        assert_eq!(lengths, sizes);
        assert_eq!(received, sent);
        assert!(trailers_last);
    }

    #[tokio::test]
    async fn frames_after_a_cut_one_follow_it_in_order() {
        let (lengths, sent, received, _) = passed_on(&[600, 10, 300]).await;
        assert_eq!(lengths, [255, 255, 90, 10, 255, 45]);
        assert_eq!(received, sent);
    }

    #[test]
    fn the_size_hint_counts_what_is_left_of_a_cut_frame() {
        let mut body = OneWrite {
            inner: http_body_util::Full::new(Bytes::from_static(b"abc")),
            rest: Bytes::from_static(b"defgh"),
        };
        assert_eq!(body.size_hint().exact(), Some(8));
        assert!(!body.is_end_stream());
        body.rest = Bytes::new();
        assert_eq!(body.size_hint().exact(), Some(3));
    }
}
