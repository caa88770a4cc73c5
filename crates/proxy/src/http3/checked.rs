//! The QUIC side of a client connection as h3 reads it (quinn through h3-quinn), with the
//! HTTP/3 frames of each request stream followed on their way to h3, to mend two ways in which
//! h3 0.0.8 loses track of a request body:
//!
//! - An empty DATA frame, which a client may send anywhere in a body (RFC 9114 §7.2.1 allows
//!   it), is taken by h3 for the end of the body; a body frame after it then closes the whole
//!   connection (H3_FRAME_UNEXPECTED), and the upstream gets a body that ends early. Such
//!   frames carry nothing, so they are left out.
//! - A stream that ends inside a frame (a DATA frame shorter than its length says) is taken by
//!   h3 for a complete body, and reading on panics. It is a malformed request: the stream
//!   fails instead.
//!
//! And one way in which h3-quinn 0.0.10 panics: asked to stop a stream (STOP_SENDING) while a
//! read of it is under way, as the proxy does when a body turns out longer than its length.
//! Such a stream is stopped when it is dropped instead (with code 0, quinn's way).
//!
//! Only client-initiated bidirectional (request) streams are followed; control and QPACK
//! streams, and what is sent, go to h3-quinn as they are.

use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};

/// The HTTP/3 DATA frame type.
const DATA: u64 = 0x0;

/// The longest frame header: two variable-length integers of eight bytes.
const MAX_HEADER: usize = 16;

/// The error of a request stream that ends inside a frame.
#[derive(Debug, thiserror::Error)]
#[error("the request stream ended inside an HTTP/3 frame")]
pub struct Truncated;

/// A client connection for h3 ([`Connection`]), or what opens streams on it: request streams
/// come [`Checked`].
pub struct Streams<T>(T);

/// A client connection for h3.
pub type Connection = Streams<h3_quinn::Connection>;

impl Connection {
    /// The HTTP/3 side of `connection`.
    pub fn new(connection: quinn::Connection) -> Connection {
        Streams(h3_quinn::Connection::new(connection))
    }
}

/// A QUIC stream whose incoming HTTP/3 frames are followed: see the module's documentation.
pub struct Checked<S> {
    inner: S,
    frames: Frames,
    /// A read of `inner` is under way (its last poll was pending).
    reading: bool,
}

/// A checked request stream, both ways.
pub type BidiStream<B> = Checked<h3_quinn::BidiStream<B>>;

/// Where a stream is in its frames.
#[derive(Default)]
struct Frames {
    /// The part of the stream received but not yet passed on.
    rest: Bytes,
    /// Payload bytes of the current frame still to come.
    payload: u64,
    /// The start of a frame header, held back until the header is whole.
    header: [u8; MAX_HEADER],
    held: usize,
}

/// A QUIC variable-length integer at the start of `bytes`, and its length.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let length = 1usize << (first >> 6);
    let encoded = bytes.get(..length)?;
    let value = encoded[1..]
        .iter()
        .fold(u64::from(first & 0x3f), |value, byte| {
            value << 8 | u64::from(*byte)
        });
    Some((value, length))
}

/// The frame header at the start of `bytes`: type, payload length and header length; `None`
/// while it is incomplete.
fn frame_header(bytes: &[u8]) -> Option<(u64, u64, usize)> {
    let (kind, kind_length) = varint(bytes)?;
    let (length, length_length) = varint(&bytes[kind_length..])?;
    Some((kind, length, kind_length + length_length))
}

impl Frames {
    /// Whether the stream may end here: between two frames.
    fn between_frames(&self) -> bool {
        self.rest.is_empty() && self.payload == 0 && self.held == 0
    }

    /// Completes the header held back from an earlier chunk with the start of `rest`: the
    /// header to pass on, once it is whole and not that of an empty DATA frame.
    fn complete_held(&mut self) -> Option<Bytes> {
        while self.held < MAX_HEADER && !self.rest.is_empty() {
            self.header[self.held] = self.rest[0];
            self.held += 1;
            self.rest.advance(1);
            // Taken a byte at a time: once whole, the header is all that is held.
            if let Some((kind, length, _)) = frame_header(&self.header[..self.held]) {
                let header = &self.header[..std::mem::take(&mut self.held)];
                if kind == DATA && length == 0 {
                    return None;
                }
                self.payload = length;
                return Some(Bytes::copy_from_slice(header));
            }
        }
        None
    }

    /// The next part of the received bytes to pass on, if any: the longest run of whole
    /// frames, or parts of one, in which nothing is left out.
    fn next(&mut self) -> Option<Bytes> {
        if self.held > 0 {
            return self.complete_held();
        }
        let mut at = 0;
        while at < self.rest.len() {
            if self.payload > 0 {
                let taken = self.payload.min((self.rest.len() - at) as u64);
                self.payload -= taken;
                at += taken as usize;
                continue;
            }
            match frame_header(&self.rest[at..]) {
                Some((DATA, 0, size)) if at == 0 => self.rest.advance(size),
                // Passed on first; the empty frame is left out at the next call.
                Some((DATA, 0, _)) => break,
                Some((_, length, size)) => {
                    self.payload = length;
                    at += size;
                }
                None => {
                    let start = &self.rest[at..];
                    self.header[..start.len()].copy_from_slice(start);
                    self.held = start.len();
                    self.rest.truncate(at);
                    break;
                }
            }
        }
        (at > 0).then(|| self.rest.split_to(at))
    }
}

impl<S> Checked<S> {
    /// `inner`, from its first byte.
    fn new(inner: S) -> Checked<S> {
        Checked {
            inner,
            frames: Frames::default(),
            reading: false,
        }
    }
}

impl<S: quic::RecvStream<Buf = Bytes>> quic::RecvStream for Checked<S> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        loop {
            if let Some(part) = self.frames.next() {
                return Poll::Ready(Ok(Some(part)));
            }
            if !self.frames.rest.is_empty() {
                continue;
            }
            let read = self.inner.poll_data(cx);
            self.reading = read.is_pending();
            match ready!(read) {
                Ok(Some(chunk)) => self.frames.rest = chunk,
                Ok(None) if self.frames.between_frames() => return Poll::Ready(Ok(None)),
                Ok(None) => {
                    return Poll::Ready(Err(StreamErrorIncoming::Unknown(Box::new(Truncated))))
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn stop_sending(&mut self, error_code: u64) {
        if !self.reading {
            self.inner.stop_sending(error_code);
        }
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

impl<B: Buf> quic::SendStream<B> for BidiStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.inner.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.inner.reset(reset_code);
    }

    fn send_id(&self) -> StreamId {
        self.inner.send_id()
    }
}

impl<B: Buf> quic::BidiStream<B> for BidiStream<B> {
    type SendStream = h3_quinn::SendStream<B>;
    type RecvStream = Checked<h3_quinn::RecvStream>;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        let (send, recv) = self.inner.split();
        let recv = Checked {
            inner: recv,
            frames: self.frames,
            reading: self.reading,
        };
        (send, recv)
    }
}

impl<B: Buf> quic::Connection<B> for Connection {
    type RecvStream = h3_quinn::RecvStream;
    type OpenStreams = Streams<h3_quinn::OpenStreams>;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        quic::Connection::<B>::poll_accept_recv(&mut self.0, cx)
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        let stream = ready!(quic::Connection::<B>::poll_accept_bidi(&mut self.0, cx))?;
        Poll::Ready(Ok(Checked::new(stream)))
    }

    fn opener(&self) -> Self::OpenStreams {
        Streams(quic::Connection::<B>::opener(&self.0))
    }
}

impl<B, T> quic::OpenStreams<B> for Streams<T>
where
    B: Buf,
    T: quic::OpenStreams<
        B,
        BidiStream = h3_quinn::BidiStream<B>,
        SendStream = h3_quinn::SendStream<B>,
    >,
{
    type BidiStream = BidiStream<B>;
    type SendStream = h3_quinn::SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        let stream = ready!(self.0.poll_open_bidi(cx))?;
        Poll::Ready(Ok(Checked::new(stream)))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        self.0.poll_open_send(cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        self.0.close(code, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of type `kind` with `payload`, its header in minimal encoding.
    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        assert!(kind < 64 && payload.len() < 64);
        [&[kind, payload.len() as u8][..], payload].concat()
    }

    /// What passes on of `stream` received in chunks ending at `cuts`, and whether the stream
    /// may end after it.
    fn pass(stream: &[u8], cuts: &[usize]) -> (Vec<u8>, bool) {
        let mut frames = Frames::default();
        let mut passed = Vec::new();
        let mut start = 0;
        for end in cuts.iter().copied().chain([stream.len()]) {
            frames.rest = Bytes::copy_from_slice(&stream[start..end]);
            start = end;
            loop {
                match frames.next() {
                    Some(part) => passed.extend_from_slice(&part),
                    None if frames.rest.is_empty() => break,
                    None => {}
                }
            }
        }
        (passed, frames.between_frames())
    }

    #[test]
    fn empty_data_frames_are_left_out_wherever_the_chunks_end() {
        let headers = frame(0x1, b"head");
        let grease = frame(0x21, b"");
        let (data, empty) = (frame(0x0, b"body"), frame(0x0, b""));
        // An empty DATA frame in non-minimal encodings as well.
        let long_empty = vec![0x40, 0x00, 0x80, 0x00, 0x00, 0x00];
        let trailers = frame(0x1, b"tail");
        let stream = [
            &headers[..],
            &empty,
            &data,
            &long_empty,
            &grease,
            &empty,
            &data,
            &trailers,
            &empty,
        ]
        .concat();
        let expected = [&headers[..], &data, &grease, &data, &trailers].concat();
        for cut in 0..=stream.len() {
            assert_eq!(
                pass(&stream, &[cut]),
                (expected.clone(), true),
                "cut at {cut}"
            );
            for second in cut..=stream.len() {
                assert_eq!(pass(&stream, &[cut, second]).0, expected);
            }
        }
        // Byte by byte.
        let cuts: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(pass(&stream, &cuts), (expected, true));
    }

    #[test]
    fn a_stream_may_end_only_between_frames() {
        let stream = [frame(0x1, b"head"), frame(0x0, b"body")].concat();
        for end in 0..=stream.len() {
            let (_, may_end) = pass(&stream[..end], &[]);
            assert_eq!(may_end, [0, 6, stream.len()].contains(&end), "end at {end}");
        }
    }
}
