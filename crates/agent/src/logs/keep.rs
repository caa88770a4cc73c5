//! Keeping an instance's output: each line a record, in a file that rotates at its limit.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::format::{encode, record_time, Stream};
use super::{numbered, KEPT, MAX_LINE_BYTES};

/// Largest size of one log file before it rotates.
pub const MAX_LOG_BYTES: u64 = 10 << 20;

/// Copies `output` (the instance's `stream`) into `path` as records, rotating at `max_bytes`,
/// until the output ends. Write errors are logged and the rest of the output is dropped (an
/// instance never blocks on its logs). The lines of one read from the pipe share its time.
pub async fn keep(
    mut output: impl AsyncRead + Unpin,
    path: PathBuf,
    stream: Stream,
    max_bytes: u64,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut lines = Lines::default();
    let mut file = None;
    let mut written = 0u64;
    let mut out = Vec::new();
    loop {
        let n = match output.read(&mut buffer).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let time = record_time(SystemTime::now());
        out.clear();
        if n == 0 {
            lines.finish(&mut out, &time, stream);
        } else {
            lines.push(&buffer[..n], &mut out, &time, stream);
        }
        if !out.is_empty() {
            write(&path, &mut file, &mut written, &out, max_bytes).await;
        }
        if n == 0 {
            return;
        }
    }
}

/// Writes `records` to the file (opened, or rotated first when it holds `max_bytes`).
async fn write(
    path: &Path,
    file: &mut Option<tokio::fs::File>,
    written: &mut u64,
    records: &[u8],
    max_bytes: u64,
) {
    if file.is_none() || *written >= max_bytes {
        if file.is_some() {
            rotate(path).await;
        }
        match open(path).await {
            Ok((f, size)) => {
                *file = Some(f);
                *written = size;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write an instance's log");
                *file = None;
                return;
            }
        }
    }
    if let Some(f) = file.as_mut() {
        if f.write_all(records).await.is_err() {
            *file = None;
            return;
        }
        *written += records.len() as u64;
    }
}

/// The line being read: output up to its end, at most [`MAX_LINE_BYTES`] of it.
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// Adds `bytes` of output; appends the record of each line they complete (and of each
    /// [`MAX_LINE_BYTES`] of a longer line, marked partial) to `out`.
    fn push(&mut self, mut bytes: &[u8], out: &mut Vec<u8>, time: &str, stream: Stream) {
        while !bytes.is_empty() {
            let room = MAX_LINE_BYTES - self.pending.len();
            match bytes.iter().take(room).position(|b| *b == b'\n') {
                Some(end) => {
                    self.pending.extend_from_slice(&bytes[..end]);
                    encode(out, time, stream, false, &self.pending);
                    self.pending.clear();
                    bytes = &bytes[end + 1..];
                }
                None if bytes.len() < room => {
                    self.pending.extend_from_slice(bytes);
                    return;
                }
                None => {
                    self.pending.extend_from_slice(&bytes[..room]);
                    bytes = &bytes[room..];
                    // Cut before a character that the limit splits; its start goes on.
                    let cut = char_boundary(&self.pending);
                    let rest = self.pending.split_off(cut);
                    encode(out, time, stream, true, &self.pending);
                    self.pending = rest;
                }
            }
        }
    }

    /// The output ended: appends the record of what is left of the last line, if anything.
    fn finish(&mut self, out: &mut Vec<u8>, time: &str, stream: Stream) {
        if !self.pending.is_empty() {
            encode(out, time, stream, false, &self.pending);
            self.pending.clear();
        }
    }
}

/// Where to cut `full` (a whole record's worth of bytes) so that no UTF-8 character is split:
/// before its last character if that one is incomplete, else at its end.
fn char_boundary(full: &[u8]) -> usize {
    let Some(start) = full.iter().rposition(|b| (b & 0b1100_0000) != 0b1000_0000) else {
        return full.len();
    };
    let width = match full[start] {
        b if b >= 0xF0 => 4,
        b if b >= 0xE0 => 3,
        b if b >= 0xC0 => 2,
        _ => 1,
    };
    if start + width > full.len() {
        start
    } else {
        full.len()
    }
}

async fn open(path: &Path) -> std::io::Result<(tokio::fs::File, u64)> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    let size = file.metadata().await?.len();
    Ok((file, size))
}

/// `path.1` → `path.2`, …, `path` → `path.1`.
async fn rotate(path: &Path) {
    for n in (1..KEPT).rev() {
        let _ = tokio::fs::rename(numbered(path, n), numbered(path, n + 1)).await;
    }
    let _ = tokio::fs::rename(path, numbered(path, 1)).await;
}

#[cfg(test)]
mod tests {
    use super::super::format::decode;
    use super::*;

    /// The texts and partial marks of the records in `file`.
    fn records(file: &[u8]) -> Vec<(String, bool)> {
        file.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let record = decode(l);
                assert!(record.time_nanos > 0, "{}", String::from_utf8_lossy(l));
                (
                    String::from_utf8_lossy(record.text).into_owned(),
                    record.partial,
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn output_rotates_past_the_limit_and_old_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        // Lines of 600 bytes (records of ~640) with a 1000-byte limit: two lines a file.
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(keep(reader, path.clone(), Stream::Stdout, 1000));
        for byte in *b"abcdefg" {
            let mut line = vec![byte; 600];
            line.push(b'\n');
            writer.write_all(&line).await.unwrap();
            writer.flush().await.unwrap();
            // Each line is kept before the next is written.
            let wanted = String::from_utf8(vec![byte; 600]).unwrap();
            while !std::fs::read(&path).is_ok_and(|c| records(&c).iter().any(|(t, _)| *t == wanted))
            {
                tokio::task::yield_now().await;
            }
        }
        drop(writer);
        task.await.unwrap();
        let text = |path: &Path| records(&std::fs::read(path).unwrap());
        let line = |byte: u8| (String::from_utf8(vec![byte; 600]).unwrap(), false);
        // The oldest two lines went with the file they were in.
        assert_eq!(text(&path), [line(b'g')]);
        assert_eq!(text(&numbered(&path, 1)), [line(b'e'), line(b'f')]);
        assert_eq!(text(&numbered(&path, 2)), [line(b'c'), line(b'd')]);
    }

    #[test]
    fn lines_are_records_and_long_ones_are_cut_without_splitting_characters() {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        let time = "2024-05-01T12:00:00.000000000Z";
        lines.push(b"one\ntw", &mut out, time, Stream::Stdout);
        lines.push(b"o\n", &mut out, time, Stream::Stdout);
        // A line of MAX_LINE_BYTES - 1 ASCII bytes and a 3-byte character: the character
        // does not fit and goes on in the next record.
        let mut long = vec![b'x'; MAX_LINE_BYTES - 1];
        long.extend_from_slice("€ end".as_bytes());
        lines.push(&long, &mut out, time, Stream::Stdout);
        lines.push(b"\nlast", &mut out, time, Stream::Stdout);
        lines.finish(&mut out, time, Stream::Stdout);
        let got = records(&out);
        assert_eq!(
            got[..2],
            [("one".to_owned(), false), ("two".to_owned(), false)]
        );
        assert_eq!(got[2], ("x".repeat(MAX_LINE_BYTES - 1), true));
        assert_eq!(got[3], ("€ end".to_owned(), false));
        assert_eq!(got[4], ("last".to_owned(), false));
        assert_eq!(got.len(), 5);
    }
}
