//! An instance's output, kept in files that rotate: `<state>/logs/<instance>/stdout.log` and
//! `stderr.log`, each moved to `.1` (and `.1` to `.2`) when it passes its size limit.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Largest size of one log file before it rotates.
pub const MAX_LOG_BYTES: u64 = 10 << 20;
/// Rotated files kept besides the current one.
const KEPT: u32 = 2;

/// Where the logs of `instance` go under the agent's state directory.
pub fn log_dir(state_dir: &Path, instance: &str) -> PathBuf {
    state_dir.join("logs").join(instance)
}

/// Copies `output` into `path`, rotating at `max_bytes`, until the output ends. Write errors
/// are logged and the rest of the output is dropped (an instance never blocks on its logs).
pub async fn keep(mut output: impl AsyncRead + Unpin, path: PathBuf, max_bytes: u64) {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut file = None;
    let mut written = 0u64;
    loop {
        let n = match output.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if file.is_none() || written >= max_bytes {
            if file.is_some() {
                rotate(&path).await;
            }
            match open(&path).await {
                Ok((f, size)) => {
                    file = Some(f);
                    written = size;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write an instance's log");
                    file = None;
                    continue;
                }
            }
        }
        if let Some(f) = file.as_mut() {
            if f.write_all(&buffer[..n]).await.is_err() {
                file = None;
                continue;
            }
            written += n as u64;
        }
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
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    for n in (1..KEPT).rev() {
        let _ = tokio::fs::rename(numbered(n), numbered(n + 1)).await;
    }
    let _ = tokio::fs::rename(path, numbered(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_rotates_past_the_limit_and_old_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        // Three chunks of 600 bytes with a 1000-byte limit: the third starts a new file.
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(keep(reader, path.clone(), 1000));
        for byte in [b'a', b'b', b'c'] {
            writer.write_all(&[byte; 600]).await.unwrap();
            writer.flush().await.unwrap();
            // Each chunk is read on its own before the next is written.
            while tokio::fs::read(&path)
                .await
                .map_or(0, |c| c.iter().filter(|b| **b == byte).count())
                < 600
            {
                tokio::task::yield_now().await;
            }
        }
        drop(writer);
        task.await.unwrap();
        let current = tokio::fs::read_to_string(&path).await.unwrap();
        let older = tokio::fs::read_to_string(format!("{}.1", path.display()))
            .await
            .unwrap();
        assert_eq!(current, "c".repeat(600));
        assert_eq!(older, format!("{}{}", "a".repeat(600), "b".repeat(600)));
    }
}
