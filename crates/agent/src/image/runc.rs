//! runc, run in the foreground: `runc run` stays the container's parent and forwards the
//! signals it gets (SIGTERM for a graceful stop) to the container's first process. Each agent
//! keeps runc's state under its own state directory (`--root`), so that it lists and cleans up
//! only its own containers.

use std::path::Path;

use tokio::process::Command;

/// The runc binary (Debian's `runc`; crun refuses hosts with hybrid cgroups).
const RUNC: &str = "runc";

/// Whether runc is installed.
pub fn available() -> bool {
    std::process::Command::new(RUNC)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `runc run` of the bundle in `bundle` as container `id`, its state under `root`. `--keep`:
/// when the container ends, runc leaves it (and its cgroup) for [`remove`], so that the agent
/// reads first whether the OOM killer ended it.
pub fn run(root: &Path, bundle: &Path, id: &str) -> Command {
    let mut command = Command::new(RUNC);
    command
        .arg("--root")
        .arg(root)
        .arg("run")
        .arg("--keep")
        .arg("--bundle")
        .arg(bundle)
        .arg(id);
    command
}

/// Kills container `id` and deletes it (whatever state it is in); quiet when it is gone.
pub async fn remove(root: &Path, id: &str) {
    for args in [&["kill", id, "KILL"][..], &["delete", "--force", id][..]] {
        let _ = Command::new(RUNC)
            .arg("--root")
            .arg(root)
            .args(args)
            .output()
            .await;
    }
}

/// Removes every container an earlier agent left under `root`.
pub async fn remove_leftovers(root: &Path) {
    let Ok(output) = Command::new(RUNC)
        .arg("--root")
        .arg(root)
        .args(["list", "--quiet"])
        .output()
        .await
    else {
        return;
    };
    for id in String::from_utf8_lossy(&output.stdout).split_whitespace() {
        tracing::warn!(
            container = id,
            "removing a container left by an earlier agent"
        );
        remove(root, id).await;
    }
}
