//! Reading one stream's files back: its history (the last lines that pass a filter), and the
//! lines written after, across rotations. Blocking I/O: callers run it off the async threads.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use regex::Regex;

use super::format::{decode, Stream};
use super::{files, MAX_LINE_BYTES};

/// Longest record read whole (a line of [`MAX_LINE_BYTES`] with its time and tags); the rest
/// of a longer one (only in a file written before records were) is skipped.
const MAX_RECORD_BYTES: usize = MAX_LINE_BYTES + 64;

/// How much of a file is read at a time.
const CHUNK: usize = 64 * 1024;

/// A line read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// When it was written, Unix nanoseconds.
    pub time_nanos: i64,
    /// Whether it goes on in the next line.
    pub partial: bool,
    /// The line (invalid UTF-8 replaced).
    pub text: String,
}

/// Which lines a query wants.
pub struct Filter<'a> {
    /// Lines written before this (Unix nanoseconds) are left out; 0: none are.
    pub since_nanos: i64,
    /// A pattern lines must match.
    pub grep: Option<&'a Regex>,
}

impl Filter<'_> {
    /// The line of `record` if it passes.
    fn pass(&self, record: &[u8]) -> Option<Line> {
        let record = decode(record);
        if self.since_nanos > 0 && record.time_nanos < self.since_nanos {
            return None;
        }
        let text = String::from_utf8_lossy(record.text);
        if self.grep.is_some_and(|grep| !grep.is_match(&text)) {
            return None;
        }
        Some(Line {
            time_nanos: record.time_nanos,
            partial: record.partial,
            text: text.into_owned(),
        })
    }
}

/// The last lines of a stream, bounded by count and by the bytes of their text.
pub struct Tail {
    /// The lines, oldest first.
    pub lines: VecDeque<Line>,
    /// Lines that passed the filter but were left out for the byte bound (not the count).
    pub cut: usize,
    bytes: usize,
}

impl Tail {
    fn new() -> Tail {
        Tail {
            lines: VecDeque::new(),
            cut: 0,
            bytes: 0,
        }
    }

    /// Adds `line`, dropping the oldest beyond `count` lines or `budget` bytes.
    fn push(&mut self, line: Line, count: usize, budget: usize) {
        self.bytes += line.text.len();
        self.lines.push_back(line);
        while self.lines.len() > count {
            self.pop_front();
        }
        while self.bytes > budget {
            self.pop_front();
            self.cut += 1;
        }
    }

    fn pop_front(&mut self) {
        if let Some(old) = self.lines.pop_front() {
            self.bytes -= old.text.len();
        }
    }
}

/// The last `count` lines of `stream` in `dir` that pass `filter` (at most `budget` bytes of
/// text), and a follower that reads on from where they end.
pub fn history(
    dir: &Path,
    stream: Stream,
    filter: &Filter<'_>,
    count: usize,
    budget: usize,
) -> io::Result<(Tail, Follower)> {
    let mut tail = Tail::new();
    let mut follower = Follower::new(dir, stream);
    for path in files(dir, stream) {
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let inode = file.metadata()?.ino();
        let mut offset = 0;
        if count > 0 {
            read_lines(&file, &mut offset, &mut |record| {
                if let Some(line) = filter.pass(record) {
                    tail.push(line, count, budget);
                }
                true
            })?;
        } else {
            offset = file.metadata()?.len();
        }
        // The follower reads on in the last file read (the current one, unless it rotated
        // since: then it finds its way from there).
        follower.file = Some(Open {
            file,
            inode,
            offset,
        });
    }
    Ok((tail, follower))
}

/// A file being followed and where in it.
struct Open {
    file: File,
    inode: u64,
    offset: u64,
}

/// Reads a stream's new lines as they are written, across rotations.
pub struct Follower {
    dir: PathBuf,
    stream: Stream,
    file: Option<Open>,
}

impl Follower {
    /// A follower of `stream` in `dir` from its first line (no file yet, or a new instance).
    pub fn new(dir: &Path, stream: Stream) -> Follower {
        Follower {
            dir: dir.to_owned(),
            stream,
            file: None,
        }
    }

    /// Gives each line written since the last read that passes `filter` to `each` (until it
    /// says stop), across rotations. Returns whether lines may have been lost: the file being
    /// read was rotated away (the oldest kept is read next).
    pub fn read_new(
        &mut self,
        filter: &Filter<'_>,
        each: &mut dyn FnMut(Line) -> bool,
    ) -> io::Result<bool> {
        let current = self.dir.join(self.stream.file_name());
        let mut lost = false;
        let go_on = std::cell::Cell::new(true);
        let mut pass = |record: &[u8]| {
            if let Some(line) = filter.pass(record) {
                go_on.set(each(line));
            }
            go_on.get()
        };
        loop {
            let open = match &mut self.file {
                Some(open) => open,
                None => match File::open(&current) {
                    Ok(file) => {
                        let inode = file.metadata()?.ino();
                        self.file.insert(Open {
                            file,
                            inode,
                            offset: 0,
                        })
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(lost),
                    Err(e) => return Err(e),
                },
            };
            read_lines(&open.file, &mut open.offset, &mut pass)?;
            let now = match std::fs::metadata(&current) {
                Ok(metadata) => metadata.ino(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(lost),
                Err(e) => return Err(e),
            };
            if now == open.inode {
                return Ok(lost);
            }
            // Rotated: what was written before the move, then the file after this one.
            read_lines(&open.file, &mut open.offset, &mut pass)?;
            let kept = files(&self.dir, self.stream);
            let inodes: Vec<Option<u64>> = kept
                .iter()
                .map(|path| std::fs::metadata(path).ok().map(|m| m.ino()))
                .collect();
            // The file after this one; if this one is gone, every file kept is newer (the
            // oldest goes first), and those between may be gone too.
            let after = match inodes.iter().position(|i| *i == Some(open.inode)) {
                Some(at) => at + 1,
                None => {
                    lost = true;
                    0
                }
            };
            let next = kept[after..]
                .iter()
                .find(|path| path.exists())
                .unwrap_or(&current);
            let file = match File::open(next) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.file = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let inode = file.metadata()?.ino();
            self.file = Some(Open {
                file,
                inode,
                offset: 0,
            });
            if !go_on.get() {
                return Ok(lost);
            }
        }
    }
}

/// Gives `each` the complete lines of `file` from `offset` on (without their end; at most
/// [`MAX_RECORD_BYTES`] of each), moving `offset` past each, until the file ends or `each`
/// says stop. Bytes after the last line's end are left for the next read.
fn read_lines(
    file: &File,
    offset: &mut u64,
    each: &mut dyn FnMut(&[u8]) -> bool,
) -> io::Result<()> {
    let mut chunk = vec![0u8; CHUNK];
    let mut line: Vec<u8> = Vec::new();
    let mut at = *offset;
    loop {
        let n = file.read_at(&mut chunk, at)?;
        if n == 0 {
            return Ok(());
        }
        let mut rest = &chunk[..n];
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            take_capped(&mut line, &rest[..end]);
            at += end as u64 + 1;
            *offset = at;
            if !each(&line) {
                return Ok(());
            }
            line.clear();
            rest = &rest[end + 1..];
        }
        take_capped(&mut line, rest);
        at += rest.len() as u64;
    }
}

/// Appends what of `bytes` fits in a record to `line`.
fn take_capped(line: &mut Vec<u8>, bytes: &[u8]) {
    let room = MAX_RECORD_BYTES.saturating_sub(line.len());
    line.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::format::{encode, record_time};
    use super::super::numbered;
    use super::*;

    /// Appends records of `texts`, written at `nanos`, to `path`.
    fn append(path: &Path, nanos: i64, texts: &[&str]) {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos as u64);
        let mut out = Vec::new();
        for text in texts {
            encode(
                &mut out,
                &record_time(time),
                Stream::Stdout,
                false,
                text.as_bytes(),
            );
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(&out).unwrap();
    }

    fn texts(lines: impl IntoIterator<Item = Line>) -> Vec<String> {
        lines.into_iter().map(|l| l.text).collect()
    }

    /// What `follower` reads now, and whether it lost lines.
    fn read(follower: &mut Follower, filter: &Filter<'_>) -> (Vec<String>, bool) {
        let mut got = Vec::new();
        let lost = follower
            .read_new(filter, &mut |line| {
                got.push(line.text);
                true
            })
            .unwrap();
        (got, lost)
    }

    const ALL: Filter<'static> = Filter {
        since_nanos: 0,
        grep: None,
    };

    #[test]
    fn history_is_the_last_lines_that_pass_across_files_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join("stdout.log");
        append(&numbered(&current, 2), 1_000, &["a1 GET", "a2 POST"]);
        append(&numbered(&current, 1), 2_000, &["b1 GET"]);
        append(&current, 3_000, &["c1 GET", "c2 POST"]);
        let (tail, _) = history(dir.path(), Stream::Stdout, &ALL, 100, 1 << 20).unwrap();
        assert_eq!(
            texts(tail.lines),
            ["a1 GET", "a2 POST", "b1 GET", "c1 GET", "c2 POST"]
        );
        let grep = Regex::new("GET").unwrap();
        let since = Filter {
            since_nanos: 2_000,
            grep: Some(&grep),
        };
        let (tail, _) = history(dir.path(), Stream::Stdout, &since, 100, 1 << 20).unwrap();
        assert_eq!(texts(tail.lines), ["b1 GET", "c1 GET"]);
        let (tail, _) = history(dir.path(), Stream::Stdout, &ALL, 2, 1 << 20).unwrap();
        assert_eq!(
            (texts(tail.lines), tail.cut),
            (vec!["c1 GET".to_owned(), "c2 POST".to_owned()], 0)
        );
        // A budget of 13 bytes holds the last two lines; the three before are cut for it.
        let (tail, _) = history(dir.path(), Stream::Stdout, &ALL, 100, 13).unwrap();
        assert_eq!((tail.lines.len(), tail.cut), (2, 3));
    }

    #[test]
    fn a_follower_reads_new_lines_across_rotations_and_says_when_it_fell_behind() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join("stdout.log");
        // No file yet: nothing, then everything once it is there.
        let mut follower = Follower::new(dir.path(), Stream::Stdout);
        assert_eq!(read(&mut follower, &ALL), (vec![], false));
        append(&current, 1, &["one"]);
        assert_eq!(read(&mut follower, &ALL), (vec!["one".to_owned()], false));
        // A line half written is read once whole.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&current)
            .unwrap()
            .write_all(b"1970-01-01T00:00:00.000000002Z stdout F tw")
            .unwrap();
        assert_eq!(read(&mut follower, &ALL), (vec![], false));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&current)
            .unwrap()
            .write_all(b"o\n")
            .unwrap();
        assert_eq!(read(&mut follower, &ALL), (vec!["two".to_owned()], false));
        // Rotated once, with a line before and after: both, in order, nothing lost.
        append(&current, 3, &["three"]);
        std::fs::rename(&current, numbered(&current, 1)).unwrap();
        append(&current, 4, &["four"]);
        assert_eq!(
            read(&mut follower, &ALL),
            (vec!["three".to_owned(), "four".to_owned()], false)
        );
        // Rotated three times while it did not read: the file it was in is gone; it goes on
        // with the oldest kept and says that lines may have been lost.
        for (n, text) in [(5, "five"), (6, "six"), (7, "seven")] {
            std::fs::rename(numbered(&current, 1), numbered(&current, 2)).unwrap();
            std::fs::rename(&current, numbered(&current, 1)).unwrap();
            append(&current, n, &[text]);
        }
        let all = ["five", "six", "seven"].map(str::to_owned).to_vec();
        assert_eq!(read(&mut follower, &ALL), (all, true));
    }
}
