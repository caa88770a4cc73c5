//! The body of an upstream HTTP/1.1 response, decoded incrementally from the connection's read
//! buffer: data is split off that buffer (no copy), a chunked body is checked as it comes
//! (RFC 9112 §7.1).

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::decode::{BodyFraming, MAX_HEADERS};
use super::Error;

/// Most bytes in a chunk-size line, extensions and CRLF included.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Most bytes in a trailer section, its final empty line included.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// What [`BodyDecoder::decode`] took from the buffer.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Body data.
    Data(Bytes),
    /// The trailer fields of a chunked body (only when there are some); the body ends next.
    Trailers(HeaderMap),
    /// The buffer holds no more of the body: read more into it.
    NeedMore,
    /// The body has ended; what is left in the buffer is not part of it.
    End,
}

/// Decodes a response body from a buffer that the connection's reads append to.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes of a `Content-Length` body are still to come.
    Length(u64),
    /// Everything up to the connection's end.
    UntilClose,
    /// Before a chunk-size line.
    ChunkSize,
    /// This many bytes of the current chunk are still to come.
    ChunkData(u64),
    /// Before the CRLF after a chunk's data.
    ChunkEnd,
    /// Before the trailer section (after the last chunk).
    Trailers,
    /// The body has ended.
    Done,
}

impl BodyDecoder {
    /// A decoder for a body delimited by `framing`.
    pub fn new(framing: BodyFraming) -> BodyDecoder {
        let state = match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => State::Done,
            BodyFraming::Length(length) => State::Length(length),
            BodyFraming::Chunked => State::ChunkSize,
            BodyFraming::UntilClose => State::UntilClose,
        };
        BodyDecoder { state }
    }

    /// Whether the body has ended.
    pub fn is_end(&self) -> bool {
        self.state == State::Done
    }

    /// Takes the next piece of the body from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, Error> {
        loop {
            match self.state {
                State::Done => return Ok(Step::End),
                State::Length(_) | State::UntilClose | State::ChunkData(_) if buf.is_empty() => {
                    return Ok(Step::NeedMore)
                }
                State::UntilClose => return Ok(Step::Data(buf.split().freeze())),
                State::Length(left) => {
                    let (data, left) = take(buf, left);
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(Step::Data(data));
                }
                State::ChunkData(left) => {
                    let (data, left) = take(buf, left);
                    self.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                    return Ok(Step::Data(data));
                }
                State::ChunkSize => {
                    let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
                    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
                        return if window.len() == MAX_CHUNK_LINE {
                            Err(Error::ChunkLineTooLong)
                        } else {
                            Ok(Step::NeedMore)
                        };
                    };
                    let size = chunk_size(&buf[..=lf])?;
                    buf.advance(lf + 1);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => match buf.get(..2) {
                    Some(b"\r\n") => {
                        buf.advance(2);
                        self.state = State::ChunkSize;
                    }
                    None if buf.first().is_none_or(|&b| b == b'\r') => {
                        return Ok(Step::NeedMore)
                    }
                    _ => return Err(Error::MissingChunkEnd),
                },
                State::Trailers => {
                    let Some((len, trailers)) = trailers(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    buf.advance(len);
                    self.state = State::Done;
                    if !trailers.is_empty() {
                        return Ok(Step::Trailers(trailers));
                    }
                }
            }
        }
    }

    /// The connection has no more to read: the end of a body delimited by the connection's
    /// end, an error for a body not complete yet.
    pub fn eof(&mut self) -> Result<(), Error> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(Error::Truncated),
        }
    }
}

/// Splits off the front of `buf` at most `left` bytes; returns them and how many are left.
fn take(buf: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let n = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
    (buf.split_to(n).freeze(), left - n as u64)
}

/// The size a chunk-size `line` (LF included) gives: hex digits, optional whitespace and
/// extensions (skipped), CRLF.
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let line = line
        .strip_suffix(b"\r\n")
        .ok_or(Error::InvalidChunkSize)?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Error::InvalidChunkSize);
    }
    let size = line[..digits].iter().try_fold(0u64, |size, &d| {
        // A hex digit: its value fits.
        let value = (d as char).to_digit(16).unwrap_or_default();
        size.checked_mul(16)?.checked_add(u64::from(value))
    });
    let size = size.ok_or(Error::ChunkSizeOverflow)?;
    let rest = line[digits..].trim_ascii_start();
    match rest.split_first() {
        None => Ok(size),
        Some((b';', extensions)) if !extensions.contains(&b'\r') => Ok(size),
        Some(_) => Err(Error::InvalidChunkSize),
    }
}

/// The trailer section at the front of `buf` and its length, once it is complete.
fn trailers(buf: &[u8]) -> Result<Option<(usize, HeaderMap)>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let len = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((len, _))) if len <= MAX_TRAILERS => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_TRAILERS => return Ok(None),
        Ok(_) => return Err(Error::InvalidTrailers("larger than 16 KiB")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::InvalidTrailers("more than 100 fields"))
        }
        Err(_) => return Err(Error::InvalidTrailers("malformed field")),
    };
    let mut trailers = HeaderMap::new();
    for field in fields.iter().take_while(|field| !field.name.is_empty()) {
        let name = HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(field.value);
        let (Ok(name), Ok(value)) = (name, value) else {
            return Err(Error::InvalidTrailers("malformed field"));
        };
        trailers.append(name, value);
    }
    Ok(Some((len, trailers)))
}
