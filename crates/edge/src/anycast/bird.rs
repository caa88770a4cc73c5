//! A client of BIRD's control socket (what `birdc` speaks): one connection per command, the
//! reply read to its last line. Each reply line is a four-digit code then `-` (more follow) or
//! a space (the last one), or a space and the text of the code before; codes from 8000 are
//! errors. Bounded: a reply longer than [`MAX_REPLY_BYTES`] or slower than the timeout fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The longest reply read.
const MAX_REPLY_BYTES: usize = 1 << 20;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    /// The socket could not be reached or read.
    #[error("BIRD's control socket {socket}: {source}")]
    Io {
        /// The socket.
        socket: String,
        /// Why.
        source: std::io::Error,
    },
    /// BIRD took too long.
    #[error("BIRD's control socket {0}: no answer in time")]
    Timeout(String),
    /// BIRD said something that is not a reply.
    #[error("BIRD's control socket {socket}: {what}")]
    Garbled {
        /// The socket.
        socket: String,
        /// What was wrong.
        what: String,
    },
    /// BIRD refused the command.
    #[error("BIRD refused `{command}`: {code} {text}")]
    Refused {
        /// The command.
        command: String,
        /// Its error code.
        code: u16,
        /// Its message.
        text: String,
    },
}

/// A reply's lines, each with its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply(pub Vec<(u16, String)>);

impl Reply {
    /// The text of the lines with `code`.
    pub fn lines(&self, code: u16) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(c, _)| *c == code)
            .map(|(_, text)| text.as_str())
    }
}

/// A protocol's row in `show protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolRow {
    /// Its name.
    pub name: String,
    /// Whether it is up.
    pub up: bool,
    /// The Since and Info columns (a BGP session's state: `Established`, `Active`, …).
    pub info: String,
}

/// The rows of a `show protocols` reply (code 1002).
pub fn protocol_rows(reply: &Reply) -> Vec<ProtocolRow> {
    reply
        .lines(1002)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?.to_owned();
            let (_proto, _table) = (fields.next()?, fields.next()?);
            let up = fields.next()? == "up";
            let info = fields.collect::<Vec<_>>().join(" ");
            Some(ProtocolRow { name, up, info })
        })
        .collect()
}

/// The client of one BIRD.
#[derive(Debug, Clone)]
pub struct Bird {
    socket: PathBuf,
    timeout: Duration,
}

impl Bird {
    /// A client of the socket at `socket`, each command bounded by `timeout`.
    pub fn new(socket: &Path, timeout: Duration) -> Bird {
        Bird {
            socket: socket.to_owned(),
            timeout,
        }
    }

    /// Sends `command` and reads its reply; a reply with an error code is an error.
    pub async fn command(&self, command: &str) -> Result<Reply, BirdError> {
        let socket = self.socket.display().to_string();
        match tokio::time::timeout(self.timeout, self.exchange(command)).await {
            Ok(result) => result,
            Err(_) => Err(BirdError::Timeout(socket)),
        }
    }

    async fn exchange(&self, command: &str) -> Result<Reply, BirdError> {
        let socket = self.socket.display().to_string();
        let io = |source| BirdError::Io {
            socket: socket.clone(),
            source,
        };
        let stream = UnixStream::connect(&self.socket).await.map_err(io)?;
        let mut stream = BufReader::new(stream);
        // The greeting: `0001 BIRD <version> ready.`
        read_reply(&mut stream, &socket).await?;
        stream
            .get_mut()
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(io)?;
        let reply = read_reply(&mut stream, &socket).await?;
        if let Some((code, text)) = reply.0.iter().find(|(code, _)| *code >= 8000) {
            return Err(BirdError::Refused {
                command: command.to_owned(),
                code: *code,
                text: text.clone(),
            });
        }
        Ok(reply)
    }

    /// `show protocols` of the protocols named by `pattern` (a BIRD pattern: `name*`).
    pub async fn protocols(&self, pattern: &str) -> Result<Vec<ProtocolRow>, BirdError> {
        let reply = self
            .command(&format!("show protocols \"{pattern}\""))
            .await?;
        Ok(protocol_rows(&reply))
    }
}

/// Reads one reply: lines up to the first whose code is followed by a space.
async fn read_reply(stream: &mut BufReader<UnixStream>, socket: &str) -> Result<Reply, BirdError> {
    let mut lines = Vec::new();
    let mut read = 0;
    let mut code = 0;
    loop {
        let mut line = String::new();
        let n = stream
            .read_line(&mut line)
            .await
            .map_err(|source| BirdError::Io {
                socket: socket.to_owned(),
                source,
            })?;
        let garbled = |what: &str| BirdError::Garbled {
            socket: socket.to_owned(),
            what: what.to_owned(),
        };
        if n == 0 {
            return Err(garbled("the reply ended early"));
        }
        read += n;
        if read > MAX_REPLY_BYTES {
            return Err(garbled("the reply is too long"));
        }
        let line = line.trim_end_matches('\n');
        match parse_line(line) {
            Some(Line::Continued(text)) => lines.push((code, text.to_owned())),
            Some(Line::Coded(c, text, last)) => {
                code = c;
                lines.push((c, text.to_owned()));
                if last {
                    return Ok(Reply(lines));
                }
            }
            None => return Err(garbled(&format!("`{line}` is not a reply line"))),
        }
    }
}

/// One line of a reply.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// `DDDD-text` (`false`: more follow) or `DDDD text` (`true`: the last).
    Coded(u16, &'a str, bool),
    /// ` text`: more text of the code before.
    Continued(&'a str),
}

fn parse_line(line: &str) -> Option<Line<'_>> {
    if let Some(text) = line.strip_prefix(' ') {
        return Some(Line::Continued(text));
    }
    let (code, rest) = (line.get(..4)?, line.get(4..)?);
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code = code.parse().ok()?;
    match rest.as_bytes().first() {
        Some(b'-') => Some(Line::Coded(code, &rest[1..], false)),
        Some(b' ') => Some(Line::Coded(code, &rest[1..], true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_carry_their_codes() {
        assert_eq!(
            parse_line("0009-meridian_anycast4: disabled"),
            Some(Line::Coded(9, "meridian_anycast4: disabled", false))
        );
        assert_eq!(parse_line("0000 "), Some(Line::Coded(0, "", true)));
        assert_eq!(parse_line(" more"), Some(Line::Continued("more")));
        assert_eq!(
            parse_line("9001 syntax error"),
            Some(Line::Coded(9001, "syntax error", true))
        );
        assert_eq!(parse_line("BIRD"), None);
        assert_eq!(parse_line("00x1 a"), None);
    }

    #[test]
    fn protocol_rows_say_which_are_up() {
        let reply = Reply(vec![
            (2002, "Name       Proto      Table      State  Since         Info".into()),
            (1002, "meridian_anycast4 Static     master4    up     06:25:52.423  ".into()),
            (1002, "meridian_peer1 BGP        ---        up     06:25:49.080  Established   ".into()),
            (1002, "meridian_peer2 BGP        ---        start  06:25:47.268  Active        Socket: Connection refused".into()),
            (0, String::new()),
        ]);
        let rows = protocol_rows(&reply);
        assert_eq!(rows.len(), 3);
        assert!(rows[0].up && rows[1].up && !rows[2].up);
        assert_eq!(rows[1].info, "06:25:49.080 Established");
        assert_eq!(
            rows[2].info,
            "06:25:47.268 Active Socket: Connection refused"
        );
    }

    #[tokio::test]
    async fn a_command_reads_the_whole_reply_and_errors_are_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bird.ctl");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let mut stream = BufReader::new(stream);
                stream
                    .get_mut()
                    .write_all(b"0001 BIRD 2.0.12 ready.\n")
                    .await
                    .unwrap();
                let mut command = String::new();
                stream.read_line(&mut command).await.unwrap();
                let answer: &[u8] = match command.trim() {
                    "disable \"meridian_anycast4\"" => b"0009-meridian_anycast4: disabled\n0000 \n",
                    _ => b"9001 syntax error, unexpected CF_SYM_UNDEFINED\n",
                };
                stream.get_mut().write_all(answer).await.unwrap();
            }
        });
        let bird = Bird::new(&path, Duration::from_secs(5));
        let reply = bird.command("disable \"meridian_anycast4\"").await.unwrap();
        assert_eq!(
            reply.lines(9).collect::<Vec<_>>(),
            ["meridian_anycast4: disabled"]
        );
        let refused = bird.command("disable nothing").await.unwrap_err();
        assert!(
            matches!(refused, BirdError::Refused { code: 9001, .. }),
            "{refused}"
        );
        let missing = Bird::new(&dir.path().join("none"), Duration::from_secs(5));
        assert!(matches!(
            missing.command("show status").await,
            Err(BirdError::Io { .. })
        ));
    }
}
