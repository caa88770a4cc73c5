//! One record of an instance's log file, in the CRI logging format:
//! `2024-05-01T12:00:00.123456789Z stdout F the line`.

use std::time::SystemTime;

/// An instance's output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// Both, standard output first.
    pub const BOTH: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    /// Its name: `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    /// Its current file's name.
    pub fn file_name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout.log",
            Stream::Stderr => "stderr.log",
        }
    }
}

/// Appends the record of `line` (without its end; `partial` when it goes on in the next
/// record) written at `time` to `out`.
pub fn encode(out: &mut Vec<u8>, time: &str, stream: Stream, partial: bool, line: &[u8]) {
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// `time` as records write it.
pub fn record_time(time: SystemTime) -> String {
    humantime::format_rfc3339_nanos(time).to_string()
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// When it was written, Unix nanoseconds (0 if its time could not be read).
    pub time_nanos: i64,
    /// Whether the line goes on in the next record.
    pub partial: bool,
    /// The line.
    pub text: &'a [u8],
}

/// The record of `line` (without its end). A line that is not a record (written before
/// records were) is kept whole, of unknown time.
pub fn decode(line: &[u8]) -> Record<'_> {
    let whole = Record {
        time_nanos: 0,
        partial: false,
        text: line,
    };
    let mut parts = line.splitn(4, |b| *b == b' ');
    let (Some(time), Some(_stream), Some(tag), text) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return whole;
    };
    let Some(time) = std::str::from_utf8(time)
        .ok()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
    else {
        return whole;
    };
    let partial = match tag {
        b"P" => true,
        b"F" => false,
        _ => return whole,
    };
    Record {
        time_nanos: meridian_model::logs::unix_nanos(time),
        partial,
        text: text.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let time =
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_000_000_001);
        let mut out = Vec::new();
        encode(
            &mut out,
            &record_time(time),
            Stream::Stderr,
            true,
            b"a b  c",
        );
        assert_eq!(out, b"2023-11-14T22:13:20.000000001Z stderr P a b  c\n");
        let record = decode(&out[..out.len() - 1]);
        assert_eq!(
            record,
            Record {
                time_nanos: 1_700_000_000_000_000_001,
                partial: true,
                text: b"a b  c"
            }
        );
        let empty = decode(b"2023-11-14T22:13:20.000000001Z stdout F ");
        assert_eq!((empty.text, empty.partial), (&b""[..], false));
    }

    #[test]
    fn a_line_that_is_not_a_record_is_kept_whole() {
        for line in [&b"plain old output"[..], b"", b"2023 stdout F x"] {
            assert_eq!(decode(line).text, line);
            assert_eq!(decode(line).time_nanos, 0);
        }
    }
}
