//! A lean HTTP/1.1 client codec for the upstream exchange: the request head and body chunks
//! written into a reused buffer ([`encode`]), the response head parsed with httparse and its
//! body framing decided by RFC 9112 §6.3 ([`decode`]), and the response body decoded from a
//! reused buffer without copying ([`body`]). It does no I/O: the exchange that reads and writes
//! the connection, in the request's own task, uses it.

pub mod body;
pub mod decode;
pub mod encode;

use decode::{MAX_HEAD, MAX_HEADERS};

/// Why an upstream response could not be read: each names what was wrong. It is a body error
/// too (`std::error::Error + Send + Sync`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The head does not end within [`MAX_HEAD`] bytes.
    #[error("upstream response: head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The head has more than [`MAX_HEADERS`] fields.
    #[error("upstream response: more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// The head is not HTTP/1.x (httparse says where).
    #[error("upstream response: malformed head: {0}")]
    MalformedHead(httparse::Error),
    /// The status code is outside 100-999.
    #[error("upstream response: invalid status code {0}")]
    InvalidStatus(u16),
    /// A field name or value the `http` types refuse.
    #[error("upstream response: invalid header field `{0}`")]
    InvalidHeader(String),
    /// A `Content-Length` value that is not digits or does not fit 64 bits.
    #[error("upstream response: invalid content-length `{0}`")]
    InvalidContentLength(String),
    /// `Content-Length` values that differ.
    #[error("upstream response: content-length values differ (`{0}` and `{1}`)")]
    DifferingContentLengths(u64, u64),
    /// A chunk-size line that is not hex digits, optional extensions and CRLF.
    #[error("upstream response: invalid chunk size line")]
    InvalidChunkSize,
    /// A chunk size that does not fit 64 bits.
    #[error("upstream response: chunk size too large")]
    ChunkSizeOverflow,
    /// A chunk-size line (with its extensions) longer than [`body::MAX_CHUNK_LINE`].
    #[error(
        "upstream response: chunk size line longer than {} bytes",
        body::MAX_CHUNK_LINE
    )]
    ChunkLineTooLong,
    /// Chunk data not followed by CRLF.
    #[error("upstream response: chunk data not followed by CRLF")]
    MissingChunkEnd,
    /// The trailer section is malformed, has more than [`MAX_HEADERS`] fields, or is larger
    /// than [`body::MAX_TRAILERS`] bytes.
    #[error("upstream response: invalid trailers: {0}")]
    InvalidTrailers(&'static str),
    /// The connection closed before the body's end.
    #[error("upstream response: connection closed before the end of the body")]
    Truncated,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_can_end_a_body_and_say_what_was_wrong() {
        let boxed: Box<dyn std::error::Error + Send + Sync> =
            Error::InvalidContentLength("abc".into()).into();
        assert_eq!(
            boxed.to_string(),
            "upstream response: invalid content-length `abc`"
        );
    }
}
