//! The body of an upstream HTTP/1.1 response, decoded incrementally from the connection's read
//! buffer: data is split off that buffer (no copy), a chunked body is checked as it comes
//! (RFC 9112 §7.1).

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

use super::decode::{header_map, BodyFraming, MAX_HEADERS};
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

    /// What is known of the rest of the body's length: exact for a `Content-Length` body.
    pub fn size_hint(&self) -> hyper::body::SizeHint {
        match self.state {
            State::Length(left) => hyper::body::SizeHint::with_exact(left),
            State::Done => hyper::body::SizeHint::with_exact(0),
            _ => hyper::body::SizeHint::default(),
        }
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
                State::Length(left) | State::ChunkData(left) => {
                    let (data, left) = take(buf, left);
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), left) => State::Length(left),
                        (_, 0) => State::ChunkEnd,
                        (_, left) => State::ChunkData(left),
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
                    None if buf.first().is_none_or(|&b| b == b'\r') => return Ok(Step::NeedMore),
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

/// The size a chunk-size `line` (LF included) gives: hex digits, optional spaces or tabs and
/// extensions (skipped), CRLF.
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let line = line.strip_suffix(b"\r\n").ok_or(Error::InvalidChunkSize)?;
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
    let rest = &line[digits..];
    let blank = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    match rest[blank..].split_first() {
        None => Ok(size),
        Some((b';', extensions)) if !extensions.contains(&b'\r') => Ok(size),
        Some(_) => Err(Error::InvalidChunkSize),
    }
}

/// The trailer section at the front of `buf` and its length, once it is complete.
fn trailers(buf: &[u8]) -> Result<Option<(usize, HeaderMap)>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let malformed = Error::InvalidTrailers("malformed field");
    match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((len, fields))) if len <= MAX_TRAILERS => {
            let trailers = header_map(fields).map_err(|_| malformed)?;
            Ok(Some((len, trailers)))
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_TRAILERS => Ok(None),
        Ok(_) => Err(Error::InvalidTrailers("larger than 16 KiB")),
        Err(httparse::Error::TooManyHeaders) => Err(Error::InvalidTrailers("more than 100 fields")),
        Err(_) => Err(malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNKED: &[u8] = b"5\r\nhello\r\n6;name=value;x\r\n world\r\n00A \r\n, and more\r\n\
        0\r\nx-checksum: abc\r\nGrpc-Status: 0\r\n\r\n";

    /// What decoding `input` in pieces of the sizes `cuts` gives (the rest of the input
    /// follows the last cut): the body's data, its trailers, and what was left in the buffer.
    fn decode_in_pieces(
        framing: BodyFraming,
        input: &[u8],
        cuts: &[usize],
    ) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), Error> {
        let mut decoder = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut pieces = cuts
            .iter()
            .scan(0, |at, &cut| {
                let piece = &input[*at..cut];
                *at = cut;
                Some(piece)
            })
            .chain(std::iter::once(&input[cuts.last().copied().unwrap_or(0)..]));
        loop {
            match decoder.decode(&mut buf)? {
                Step::Data(bytes) => {
                    assert!(!bytes.is_empty(), "no empty data frames");
                    data.extend_from_slice(&bytes);
                }
                Step::Trailers(map) => trailers = Some(map),
                Step::End => {
                    assert!(decoder.is_end());
                    return Ok((data, trailers, buf));
                }
                Step::NeedMore => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => {
                        decoder.eof()?;
                        return Ok((data, trailers, buf));
                    }
                },
            }
        }
    }

    fn chunked(input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), Error> {
        decode_in_pieces(BodyFraming::Chunked, input, &[])
    }

    #[test]
    fn a_chunked_body_decodes_whole_or_split_anywhere() {
        for cuts in (0..=CHUNKED.len())
            .map(|cut| vec![cut])
            .chain([(1..CHUNKED.len()).collect()])
        {
            let mut input = CHUNKED.to_vec();
            input.extend_from_slice(b"HTTP/1.1 next");
            let (data, trailers, left) =
                decode_in_pieces(BodyFraming::Chunked, &input, &cuts).unwrap();
            assert_eq!(data, b"hello world, and more", "cuts {cuts:?}");
            let trailers = trailers.unwrap();
            assert_eq!(trailers.len(), 2);
            assert_eq!(trailers["x-checksum"], "abc");
            assert_eq!(trailers["grpc-status"], "0");
            // Only pieces up to the body's end were read; the rest is not part of it.
            assert!(b"HTTP/1.1 next".ends_with(&left), "cuts {cuts:?}");
        }
    }

    #[test]
    fn a_chunked_body_without_trailers_just_ends() {
        let (data, trailers, left) = chunked(b"3\r\nabc\r\n0\r\n\r\n").unwrap();
        assert_eq!(
            (data.as_slice(), trailers, &left[..]),
            (&b"abc"[..], None, &b""[..])
        );
    }

    #[test]
    fn data_is_split_off_the_buffer_not_copied() {
        let mut buf = BytesMut::from(&b"4\r\nabcd\r\n"[..]);
        let start = buf.as_ptr() as usize;
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked);
        let Step::Data(data) = decoder.decode(&mut buf).unwrap() else {
            panic!("no data");
        };
        assert_eq!(data.as_ptr() as usize, start + 3);

        let mut buf = BytesMut::from(&b"abcdef"[..]);
        let start = buf.as_ptr() as usize;
        let mut decoder = BodyDecoder::new(BodyFraming::Length(4));
        let Step::Data(data) = decoder.decode(&mut buf).unwrap() else {
            panic!("no data");
        };
        assert_eq!((data.as_ptr() as usize, &data[..]), (start, &b"abcd"[..]));
        assert_eq!(decoder.decode(&mut buf).unwrap(), Step::End);
        assert_eq!(&buf[..], b"ef");
    }

    #[test]
    fn chunk_sizes_are_hex_and_must_fit_64_bits() {
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked);
        let mut buf = BytesMut::from(&b"FFFFFFFFFFFFFFFF\r\nabc"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), Step::Data("abc".into()));
        assert_eq!(decoder.decode(&mut buf).unwrap(), Step::NeedMore);
        assert_eq!(decoder.eof(), Err(Error::Truncated));

        assert_eq!(chunk_size(b"00000000000000000001\r\n"), Ok(1));
        for huge in [
            &b"10000000000000000\r\n"[..],
            b"fffffffffffffffffffffffff\r\n",
        ] {
            assert_eq!(chunked(huge).unwrap_err(), Error::ChunkSizeOverflow);
        }
    }

    #[test]
    fn malformed_chunk_lines_are_refused() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"-1\r\n",
            b"+1\r\n",
            b"0x5\r\n",
            b" 5\r\n",
            b"5 x\r\n",
            b"5\n",
            b"5;a\rb\r\n",
            b"5\r\r\n",
        ] {
            assert_eq!(
                chunked(bad).unwrap_err(),
                Error::InvalidChunkSize,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(chunk_size(b"5 \t;ext=\"q\"\r\n"), Ok(5));
    }

    #[test]
    fn a_chunk_line_must_end_within_4_kib() {
        let mut line = b"5;".to_vec();
        line.resize(MAX_CHUNK_LINE - 2, b'x');
        line.extend_from_slice(b"\r\n");
        assert_eq!(chunk_size(&line), Ok(5));
        let mut input = line.clone();
        input.insert(2, b'x');
        let error = chunked(&input).unwrap_err();
        assert_eq!(error, Error::ChunkLineTooLong);
        assert_eq!(
            error.to_string(),
            "upstream response: chunk size line longer than 4096 bytes"
        );
    }

    #[test]
    fn chunk_data_must_end_with_crlf() {
        for bad in [
            &b"3\r\nabcX\r\n"[..],
            b"3\r\nabc\rX",
            b"3\r\nabc\n0\r\n\r\n",
        ] {
            assert_eq!(chunked(bad).unwrap_err(), Error::MissingChunkEnd);
        }
    }

    #[test]
    fn trailers_are_limited() {
        let mut many = b"0\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            chunked(&many).unwrap_err(),
            Error::InvalidTrailers("more than 100 fields")
        );

        let mut large = b"0\r\nx-big: ".to_vec();
        large.resize(MAX_TRAILERS + 10, b'a');
        assert_eq!(
            chunked(&large).unwrap_err(),
            Error::InvalidTrailers("larger than 16 KiB")
        );
        for bad in [&b"0\r\nx a: 1\r\n\r\n"[..], b"0\r\nx: 1\r\n 2\r\n\r\n"] {
            assert_eq!(
                chunked(bad).unwrap_err(),
                Error::InvalidTrailers("malformed field")
            );
        }
    }

    #[test]
    fn a_body_cut_short_is_an_error() {
        for input in [
            &b"5\r\nhel"[..],
            b"5\r\nhello",
            b"5\r\nhello\r\n",
            b"0\r\nx: 1\r\n",
        ] {
            assert_eq!(chunked(input).unwrap_err(), Error::Truncated);
        }
        assert_eq!(
            decode_in_pieces(BodyFraming::Length(10), b"hello", &[2]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn a_length_body_ends_at_its_length() {
        let (data, trailers, left) =
            decode_in_pieces(BodyFraming::Length(5), b"hello, next", &[1, 3]).unwrap();
        assert_eq!(
            (&data[..], trailers, &left[..]),
            (&b"hello"[..], None, &b", next"[..])
        );
        for framing in [BodyFraming::Length(0), BodyFraming::Empty] {
            let (data, _, left) = decode_in_pieces(framing, b"next", &[0]).unwrap();
            assert_eq!((&data[..], &left[..]), (&b""[..], &b""[..]));
        }
    }

    #[test]
    fn an_until_close_body_is_everything_up_to_the_end() {
        let (data, _, _) =
            decode_in_pieces(BodyFraming::UntilClose, b"all of it", &[3, 4]).unwrap();
        assert_eq!(data, b"all of it");
    }

    proptest::proptest! {
        /// Whatever the chunks and however the input is cut, a chunked body decodes to the
        /// same data and trailers.
        #[test]
        fn encoded_chunks_decode_to_the_same_body(
            chunks in proptest::collection::vec(proptest::collection::vec(0u8.., 0..40), 0..8),
            cuts in proptest::collection::vec(0usize..400, 0..6),
            trailer in proptest::option::of("[a-z0-9]{1,8}"),
        ) {
            let mut wire = Vec::new();
            for chunk in chunks.iter().filter(|chunk| !chunk.is_empty()) {
                wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n");
            if let Some(value) = &trailer {
                wire.extend_from_slice(format!("x-t: {value}\r\n").as_bytes());
            }
            wire.extend_from_slice(b"\r\n");
            let trailers = trailer.map(|value| {
                let mut map = HeaderMap::new();
                map.insert("x-t", http::HeaderValue::from_str(&value).unwrap());
                map
            });
            let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut.min(wire.len())).collect();
            cuts.sort_unstable();
            let (data, decoded, left) =
                decode_in_pieces(BodyFraming::Chunked, &wire, &cuts).unwrap();
            proptest::prop_assert_eq!(data, chunks.concat());
            proptest::prop_assert_eq!(decoded, trailers);
            proptest::prop_assert!(left.is_empty());
        }
    }
}
