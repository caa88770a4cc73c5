//! The edge's BGP speaker: the local BIRD, driven through its control socket. At start the
//! edge writes its part of BIRD's configuration and has BIRD read it (`configure`); then it
//! announces and withdraws by enabling and disabling the static protocols that hold the
//! anycast routes (no configuration to parse on the way, so that a withdrawal works whatever
//! state the rest of BIRD's configuration is in), and writes each choice to the state file
//! those protocols include, for the next `configure`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::bird::{Bird, BirdError};
use super::bird_config::{self, CONFIG_FILE, STATE_FILE};
use super::options::AnycastOptions;

/// How long a command to BIRD may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long BIRD may take to have the edge's protocols once it read its configuration.
const CONFIGURE_WAIT: Duration = Duration::from_secs(2);

/// What the driver needs of a speaker.
pub trait Speaker: Send {
    /// Announces (`true`) or withdraws the prefixes.
    fn set(&mut self, announce: bool) -> impl Future<Output = Result<(), String>> + Send;
    /// What the speaker actually does: whether it announces, and how many of its BGP sessions
    /// are established (of how many).
    fn state(&mut self) -> impl Future<Output = Result<SpeakerState, String>> + Send;
}

/// What a speaker actually does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpeakerState {
    /// Whether every static protocol is up (the routes are offered to the peers).
    pub announced: bool,
    /// BGP sessions established.
    pub established: usize,
    /// BGP sessions configured.
    pub sessions: usize,
}

/// The local BIRD as a speaker.
pub struct BirdSpeaker {
    bird: Bird,
    /// The static protocols holding the routes.
    statics: Vec<String>,
    /// The pattern matching the BGP protocols.
    peers: String,
    state_file: PathBuf,
}

/// Why the speaker could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A file could not be written.
    #[error("--bgp-dir: cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// BIRD did not take the configuration.
    #[error("{0}")]
    Bird(#[from] BirdError),
    /// BIRD took it but has not the edge's protocols: its configuration lacks the include.
    #[error("BIRD has no protocol {protocol} after reading its configuration: its configuration must include {include} (see docs/anycast.md)")]
    NotIncluded {
        /// The protocol missing.
        protocol: String,
        /// The file to include.
        include: String,
    },
}

impl BirdSpeaker {
    /// Writes the edge's configuration for BIRD (withdrawn) into `options.bgp.dir`, has BIRD
    /// read it, and checks that BIRD now has the edge's protocols.
    pub async fn install(
        options: &AnycastOptions,
        location: &str,
    ) -> Result<BirdSpeaker, SetupError> {
        let dir = &options.bgp.dir;
        let write_error = |path: &Path| {
            let path = path.display().to_string();
            move |source| SetupError::Write { path, source }
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(write_error(dir))?;
        let dir = tokio::fs::canonicalize(dir)
            .await
            .map_err(write_error(dir))?;
        let state_file = dir.join(STATE_FILE);
        write_atomically(&state_file, bird_config::state_text(false))
            .await
            .map_err(write_error(&state_file))?;
        let config = dir.join(CONFIG_FILE);
        let text = bird_config::render(options, location, &state_file);
        write_atomically(&config, &text)
            .await
            .map_err(write_error(&config))?;
        let bird = Bird::new(&options.bgp.socket, COMMAND_TIMEOUT);
        bird.command("configure").await?;
        let statics = bird_config::static_protocols(options);
        // `configure` may answer before the new configuration is in force.
        let deadline = tokio::time::Instant::now() + CONFIGURE_WAIT;
        for protocol in &statics {
            loop {
                match bird.protocols(protocol).await {
                    Ok(rows) if rows.iter().any(|row| &row.name == protocol) => break,
                    Ok(_) | Err(BirdError::Refused { .. })
                        if tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(_) | Err(BirdError::Refused { .. }) => {
                        return Err(SetupError::NotIncluded {
                            protocol: protocol.clone(),
                            include: config.display().to_string(),
                        })
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(BirdSpeaker {
            bird,
            statics,
            peers: format!("{}_peer*", options.bgp.name),
            state_file,
        })
    }

    /// Withdraws the routes of a BIRD the edge set up before, knowing only its socket, its
    /// state file and its static protocols (what the guard knows).
    pub fn for_guard(socket: &Path, state_file: &Path, statics: Vec<String>) -> BirdSpeaker {
        BirdSpeaker {
            bird: Bird::new(socket, COMMAND_TIMEOUT),
            statics,
            peers: String::new(),
            state_file: state_file.to_owned(),
        }
    }

    /// The state file (for the guard).
    pub fn state_file(&self) -> &Path {
        &self.state_file
    }

    /// The static protocols (for the guard).
    pub fn statics(&self) -> &[String] {
        &self.statics
    }
}

impl Speaker for BirdSpeaker {
    async fn set(&mut self, announce: bool) -> Result<(), String> {
        // The file first: a `configure` between the two keeps the new choice.
        write_atomically(&self.state_file, bird_config::state_text(announce))
            .await
            .map_err(|e| format!("cannot write {}: {e}", self.state_file.display()))?;
        let verb = if announce { "enable" } else { "disable" };
        for protocol in &self.statics {
            self.bird
                .command(&format!("{verb} \"{protocol}\""))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn state(&mut self) -> Result<SpeakerState, String> {
        let mut state = SpeakerState::default();
        let statics = self
            .bird
            .protocols(&format!("{}*", common_prefix(&self.statics)))
            .await
            .map_err(|e| e.to_string())?;
        state.announced = self
            .statics
            .iter()
            .all(|name| statics.iter().any(|row| &row.name == name && row.up));
        if !self.peers.is_empty() {
            let peers = self
                .bird
                .protocols(&self.peers)
                .await
                .map_err(|e| e.to_string())?;
            state.sessions = peers.len();
            state.established = peers
                .iter()
                .filter(|row| row.up && row.info.split_whitespace().any(|w| w == "Established"))
                .count();
        }
        Ok(state)
    }
}

/// The longest common prefix of `names` (`meridian_anycast` of `…4` and `…6`).
fn common_prefix(names: &[String]) -> &str {
    let Some(first) = names.first() else {
        return "";
    };
    let mut len = first.len();
    for name in &names[1..] {
        len = first
            .bytes()
            .zip(name.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    &first[..len]
}

/// Writes `text` to `path` through a temporary file renamed over it: BIRD never reads half.
async fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    tokio::fs::write(&temporary, text).await?;
    tokio::fs::rename(&temporary, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statics_share_a_prefix() {
        let names = [
            "meridian_anycast4".to_owned(),
            "meridian_anycast6".to_owned(),
        ];
        assert_eq!(common_prefix(&names), "meridian_anycast");
        assert_eq!(common_prefix(&names[..1]), "meridian_anycast4");
    }
}
