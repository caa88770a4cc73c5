//! Content coders for the edge's own compression: Brotli, zstd and gzip behind one interface
//! that takes content in pieces and gives back what is coded so far, so that a body can be
//! coded as it streams through in bounded memory (each coder keeps a window of its own, at
//! most [`STREAM_WINDOW_LOG`] bits for a stream), or whole in one go for a stored response.

use std::io::{self, Write};

use brotli::CompressorWriter;
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use meridian_cache::encoding::Coding;

/// Log2 of the largest window a streaming coder keeps (256 KiB): bounds the memory of each
/// response coded on the fly.
pub const STREAM_WINDOW_LOG: u32 = 18;

/// Log2 of the window a coder of a whole stored response keeps (4 MiB, Brotli's default).
const WHOLE_WINDOW_LOG: u32 = 22;

/// Brotli's internal buffer, in bytes.
const BROTLI_BUFFER: usize = 16 << 10;

/// How hard a coder works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    /// For content coded as it streams through, once per response: fast levels (Brotli 4,
    /// zstd 3, gzip 5), a small window.
    Stream,
    /// For stored content, coded once for many answers: denser levels (Brotli 6, zstd 6,
    /// gzip 6).
    Whole,
}

/// A coder of one content (see the module's documentation).
pub enum Encoder {
    /// Brotli (boxed: its state is large).
    Brotli(Box<CompressorWriter<Vec<u8>>>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    /// gzip.
    Gzip(GzEncoder<Vec<u8>>),
}

impl Encoder {
    /// A coder for `coding` with `effort`; `None` for identity.
    pub fn new(coding: Coding, effort: Effort) -> io::Result<Option<Encoder>> {
        let (brotli, zstd, gzip, window) = match effort {
            Effort::Stream => (4, 3, 5, STREAM_WINDOW_LOG),
            Effort::Whole => (6, 6, 6, WHOLE_WINDOW_LOG),
        };
        Ok(Some(match coding {
            Coding::Brotli => Encoder::Brotli(Box::new(CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                brotli,
                window,
            ))),
            Coding::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), zstd)?;
                encoder.window_log(window)?;
                Encoder::Zstd(encoder)
            }
            Coding::Gzip => Encoder::Gzip(GzEncoder::new(Vec::new(), Compression::new(gzip))),
            Coding::Identity => return Ok(None),
        }))
    }

    /// Codes `content`; what is coded so far (often nothing: coders gather input first).
    pub fn write(&mut self, content: &[u8]) -> io::Result<Bytes> {
        let out = match self {
            Encoder::Brotli(writer) => {
                writer.write_all(content)?;
                writer.get_mut()
            }
            Encoder::Zstd(writer) => {
                writer.write_all(content)?;
                writer.get_mut()
            }
            Encoder::Gzip(writer) => {
                writer.write_all(content)?;
                writer.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }

    /// Ends the coding; the rest of the coded content.
    pub fn finish(self) -> io::Result<Bytes> {
        let out = match self {
            Encoder::Brotli(writer) => writer.into_inner(),
            Encoder::Zstd(writer) => writer.finish()?,
            Encoder::Gzip(writer) => writer.finish()?,
        };
        Ok(Bytes::from(out))
    }
}

/// `content` coded whole with `coding` (blocking: CPU work to run off the async workers);
/// `None` for identity.
pub fn code_whole(content: &[u8], coding: Coding) -> io::Result<Option<Bytes>> {
    let Some(mut encoder) = Encoder::new(coding, Effort::Whole)? else {
        return Ok(None);
    };
    let head = encoder.write(content)?;
    let tail = encoder.finish()?;
    if head.is_empty() {
        return Ok(Some(tail));
    }
    let mut whole = Vec::with_capacity(head.len() + tail.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(&tail);
    Ok(Some(Bytes::from(whole)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn decode(coding: Coding, coded: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            Coding::Brotli => brotli::Decompressor::new(coded, 4096)
                .read_to_end(&mut out)
                .unwrap(),
            Coding::Zstd => zstd::stream::read::Decoder::new(coded)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap(),
            Coding::Gzip => flate2::read::GzDecoder::new(coded)
                .read_to_end(&mut out)
                .unwrap(),
            Coding::Identity => unreachable!(),
        };
        out
    }

    #[test]
    fn each_coding_round_trips_whole_and_in_pieces() {
        let content: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {} of meridian\n", i % 977).into_bytes())
            .collect();
        for coding in [Coding::Brotli, Coding::Zstd, Coding::Gzip] {
            let whole = code_whole(&content, coding).unwrap().unwrap();
            assert!(whole.len() < content.len() / 10, "{coding:?}");
            assert_eq!(decode(coding, &whole), content, "{coding:?} whole");
            let mut encoder = Encoder::new(coding, Effort::Stream).unwrap().unwrap();
            let mut streamed = Vec::new();
            for piece in content.chunks(16 << 10) {
                streamed.extend_from_slice(&encoder.write(piece).unwrap());
            }
            // Coded output comes out before the end: the coder does not hold it all.
            assert!(!streamed.is_empty(), "{coding:?} held everything");
            streamed.extend_from_slice(&encoder.finish().unwrap());
            assert_eq!(decode(coding, &streamed), content, "{coding:?} streamed");
        }
        assert!(code_whole(b"x", Coding::Identity).unwrap().is_none());
    }
}
