//! The region's disk copy: its regional deployments and registered endpoints, the regions'
//! summaries and the services' virtual IPs, written after every sync and change from the global control plane, and read at
//! start, so that a regional control plane restarted while the global one is away still serves
//! its region and reaches the others.

use std::path::Path;

use meridian_model::{Endpoint, RegionalDeployment};
use serde::{Deserialize, Serialize};

/// What the region knows from the global control plane.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DiskCopy {
    /// The regional deployments.
    pub deployments: Vec<RegionalDeployment>,
    /// The endpoints registered through the API in the region.
    pub endpoints: Vec<Endpoint>,
    /// Every region's last summary (other regions' healthy instances), by name.
    #[serde(default)]
    pub regions: std::collections::BTreeMap<String, crate::elsewhere::RemoteRegion>,
    /// Each service's virtual IP, so that names keep their addresses across restarts.
    #[serde(default)]
    pub vips: Vec<crate::vips::SavedVip>,
    /// Earlier deployments some instances still run (rollouts under way), so that a restarted
    /// control plane keeps them on their spec and goes on with the rollouts.
    #[serde(default)]
    pub older: Vec<RegionalDeployment>,
    /// Each service's last rollout (its phase, start and failed gate), so that a restarted
    /// control plane goes on with it, or stays on the version a failed one returned to.
    #[serde(default)]
    pub rollouts: Vec<crate::rollout::progress::SavedRollout>,
    /// The nodes being drained (`meridian node drain`), so that they stay drained.
    #[serde(default)]
    pub drained_nodes: Vec<String>,
}

/// Writes `copy` to `path` (a new file renamed over the old one, so a crash leaves one whole).
pub async fn save(path: &Path, copy: &DiskCopy) -> std::io::Result<()> {
    let text = serde_json::to_vec(copy).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let fresh = path.with_extension("json.new");
    tokio::fs::write(&fresh, text).await?;
    tokio::fs::rename(&fresh, path).await
}

/// The copy at `path`; `None` if there is none or it does not parse (which is logged).
pub fn load(path: &Path) -> Option<DiskCopy> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the region's disk copy");
            return None;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(copy) => Some(copy),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring a bad disk copy of the region");
            None
        }
    }
}
