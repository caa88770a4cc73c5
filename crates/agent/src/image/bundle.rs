//! One instance's OCI bundle under `<state>/containers/<key>/`: `rootfs` (an overlayfs of the
//! image's layers, read-only below, with `upper` and `work` of the instance's own above; where
//! the host refuses overlayfs, a copy of the layers, [`super::copy_root`]), an `/etc/hosts`
//! for it, and `config.json`. Runs blocking: call it from `spawn_blocking`.

use std::path::{Path, PathBuf};

use super::spec::{container_process, runtime_spec, Placement};
use super::store::Pulled;

/// A prepared bundle; [`Bundle::remove`] unmounts and deletes it.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory (runc's `--bundle`).
    pub dir: PathBuf,
}

/// What the bundle needs besides the image.
#[derive(Debug, Clone)]
pub struct BundleInput {
    /// The definition's image fields.
    pub image: meridian_model::Image,
    /// Platform variables (`PORT`, `MERIDIAN_*`, proxies).
    pub platform: Vec<(String, String)>,
    /// The definition's `env`, its secrets resolved.
    pub env: Vec<(String, String)>,
    /// The instance's id (its host name) and address (in `/etc/hosts`).
    pub hostname: String,
    /// Where the instance listens.
    pub address: std::net::Ipv4Addr,
    /// The network namespace to join, if any.
    pub netns: Option<PathBuf>,
    /// The resolver configuration to mount.
    pub resolv_conf: PathBuf,
    /// The cgroup path.
    pub cgroups_path: String,
    /// The limits of the service's `resources`.
    pub limits: crate::cgroups::Limits,
}

impl Bundle {
    /// The bundle of instance `key` under `state_dir` (not prepared yet).
    pub fn at(state_dir: &Path, key: &str) -> Bundle {
        Bundle {
            dir: state_dir.join("containers").join(key),
        }
    }

    /// Mounts the root filesystem over `pulled`'s layers and writes `/etc/hosts` and
    /// `config.json`; whatever an earlier run left there is removed first.
    pub fn prepare(&self, pulled: &Pulled, input: &BundleInput) -> Result<(), String> {
        self.remove();
        let rootfs = self.dir.join("rootfs");
        let (upper, work) = (self.dir.join("upper"), self.dir.join("work"));
        for dir in [&rootfs, &upper, &work] {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let lower: Vec<String> = pulled
            .layers
            .iter()
            .rev()
            .map(|l| l.display().to_string())
            .collect();
        let options = std::ffi::CString::new(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            upper.display(),
            work.display()
        ))
        .map_err(|_| "a layer path holds a NUL byte".to_owned())?;
        let mounted = rustix::mount::mount(
            "overlay",
            &rootfs,
            "overlay",
            rustix::mount::MountFlags::empty(),
            Some(options.as_c_str()),
        );
        if let Err(refused) = mounted {
            tracing::warn!(bundle = %self.dir.display(), error = %refused,
                "overlayfs refused: copying the image's layers for the root filesystem");
            super::copy_root::copy_layers(&pulled.layers, &rootfs).map_err(|e| {
                format!("overlayfs refused ({refused}), and copying the layers failed: {e}")
            })?;
        }
        let hosts = self.dir.join("hosts");
        let text = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
            input.address, input.hostname
        );
        std::fs::write(&hosts, text).map_err(|e| format!("{}: {e}", hosts.display()))?;
        let process = container_process(
            &input.image,
            &pulled.config,
            &input.platform,
            &input.env,
            &rootfs,
        )?;
        let placement = Placement {
            hostname: input.hostname.clone(),
            netns: input.netns.clone(),
            resolv_conf: input.resolv_conf.clone(),
            hosts,
            cgroups_path: input.cgroups_path.clone(),
            limits: input.limits,
            read_only_root: input.image.read_only_root_fs,
        };
        runtime_spec(&process, &placement)
            .and_then(|spec| spec.save(self.dir.join("config.json")))
            .map_err(|e| format!("writing config.json: {e}"))
    }

    /// Unmounts the root filesystem and deletes the bundle (the container's writable layer
    /// with it).
    pub fn remove(&self) {
        let rootfs = self.dir.join("rootfs");
        let _ = rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
