//! The OCI runtime configuration (`config.json`) of an image instance: what runs (the image's
//! configuration overridden by the definition's fields) and how it is confined.
//!
//! Confinement by default: every capability dropped but [`CAPABILITIES`], `no_new_privs`, the
//! masked and read-only paths of runc's default configuration, namespaces of its own (pid,
//! ipc, uts, mount; network: the instance's), a pids limit, and optionally a read-only root
//! with a writable tmpfs `/tmp`; the service's `resources` as memory and CPU limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, MountBuilder, RootBuilder, Spec, UserBuilder,
};
use oci_spec::OciSpecError;

/// The capabilities a container keeps: binding ports below 1024. Every other one is dropped.
pub const CAPABILITIES: [Capability; 1] = [Capability::NetBindService];

/// The `PATH` of a container whose image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What runs in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerProcess {
    /// The command line.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// The working directory.
    pub cwd: String,
    /// The user and group ids.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
}

/// The container's process: the definition's `command`/`args`/`working_dir`/`user` over the
/// image's `Entrypoint`/`Cmd`/`WorkingDir`/`User`; `platform` variables (`PORT`,
/// `MERIDIAN_*`, proxies) over the image's `Env`, and the definition's `env` (its secrets
/// resolved) over those. A
/// `command` without `args` drops the image's `Cmd` (as Kubernetes does). A user name is looked
/// up in the root filesystem's `/etc/passwd` (and a group name in `/etc/group`).
pub fn container_process(
    image: &meridian_model::Image,
    config: &ImageConfiguration,
    platform: &[(String, String)],
    env_of_definition: &[(String, String)],
    rootfs: &Path,
) -> Result<ContainerProcess, String> {
    let defaults = config.config().clone().unwrap_or_default();
    let entrypoint = defaults.entrypoint().clone().unwrap_or_default();
    let cmd = defaults.cmd().clone().unwrap_or_default();
    let mut args = match (&image.command, &image.args) {
        (Some(command), Some(args)) => [command.clone(), args.clone()].concat(),
        (Some(command), None) => command.clone(),
        (None, Some(args)) => [entrypoint, args.clone()].concat(),
        (None, None) => [entrypoint, cmd].concat(),
    };
    if args.is_empty() {
        return Err("the image has no entrypoint or command and the definition none".into());
    }
    args.shrink_to_fit();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), DEFAULT_PATH.into());
    for pair in defaults.env().iter().flatten() {
        if let Some((key, value)) = pair.split_once('=') {
            env.insert(key.to_owned(), value.to_owned());
        }
    }
    env.extend(platform.iter().cloned());
    env.extend(env_of_definition.iter().cloned());
    let cwd = image
        .working_dir
        .clone()
        .or_else(|| defaults.working_dir().clone().filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".into());
    let user = image
        .user
        .clone()
        .or_else(|| defaults.user().clone().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "0:0".into());
    let (uid, gid) = resolve_user(&user, rootfs)?;
    Ok(ContainerProcess {
        args,
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd,
        uid,
        gid,
    })
}

/// `USER[:GROUP]`, each a number or a name in the image's `/etc/passwd` / `/etc/group`; a user
/// without a group gets its primary group (0 when it is a number not in `/etc/passwd`).
fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32), String> {
    let (name, group) = match user.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && (f[0] == name || (name.parse::<u32>().is_ok() && f[2] == name)));
    let uid = match (name.parse::<u32>(), &entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(fields)) => fields[2]
            .parse()
            .map_err(|_| format!("bad /etc/passwd entry for `{name}`"))?,
        (Err(_), None) => return Err(format!("user `{name}` is not in the image's /etc/passwd")),
    };
    let gid = match group {
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
                groups
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() > 2 && f[0] == group)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| format!("group `{group}` is not in the image's /etc/group"))?
            }
        },
        None => entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    Ok((uid, gid))
}

/// Where the container is and what it joins.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The container's host name.
    pub hostname: String,
    /// The network namespace to join (`/run/netns/NAME`); `None` shares the host's network.
    pub netns: Option<PathBuf>,
    /// Bound read-only over `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// Bound read-only over `/etc/hosts`.
    pub hosts: PathBuf,
    /// The cgroup path runc uses (see `Cgroups::runtime_path`).
    pub cgroups_path: String,
    /// The limits of the service's `resources` (and the pids limit).
    pub limits: crate::cgroups::Limits,
    /// Whether the root filesystem is read-only (`/tmp` is then a tmpfs).
    pub read_only_root: bool,
}

/// The runtime configuration, starting from runc's defaults (`runc spec`): mounts, masked and
/// read-only paths, devices.
pub fn runtime_spec(
    process: &ContainerProcess,
    placement: &Placement,
) -> Result<Spec, OciSpecError> {
    let mut spec = Spec::default();
    let caps: oci_spec::runtime::Capabilities = CAPABILITIES.into_iter().collect();
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(process.args.clone()));
    p.set_env(Some(process.env.clone()));
    p.set_cwd(PathBuf::from(&process.cwd));
    p.set_user(
        UserBuilder::default()
            .uid(process.uid)
            .gid(process.gid)
            .build()?,
    );
    p.set_no_new_privileges(Some(true));
    p.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            .inheritable(oci_spec::runtime::Capabilities::new())
            .ambient(oci_spec::runtime::Capabilities::new())
            .build()?,
    ));
    spec.set_process(Some(p));
    spec.set_hostname(Some(placement.hostname.clone()));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(placement.read_only_root)
            .build()?,
    ));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let bind = |source: &Path, destination: &str| {
        MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(source)
            .options(vec![
                "rbind".into(),
                "ro".into(),
                "nosuid".into(),
                "nodev".into(),
            ])
            .build()
    };
    mounts.push(bind(&placement.resolv_conf, "/etc/resolv.conf")?);
    mounts.push(bind(&placement.hosts, "/etc/hosts")?);
    if placement.read_only_root {
        mounts.push(
            MountBuilder::default()
                .destination("/tmp")
                .typ("tmpfs")
                .source("tmpfs")
                .options(vec!["nosuid".into(), "nodev".into(), "mode=1777".into()])
                .build()?,
        );
    }
    spec.set_mounts(Some(mounts));
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces: Vec<LinuxNamespace> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::Network)
        .collect();
    if let Some(path) = &placement.netns {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path)
                .build()?,
        );
    }
    linux.set_namespaces(Some(namespaces));
    linux.set_cgroups_path(Some(PathBuf::from(&placement.cgroups_path)));
    let limits = &placement.limits;
    let mut memory = LinuxMemoryBuilder::default();
    if let Some(bytes) = limits.memory_bytes.map(signed) {
        // `swap` is memory and swap together: no swap beyond the memory limit.
        memory = memory.limit(bytes).swap(bytes);
    }
    let mut cpu = LinuxCpuBuilder::default().period(crate::cgroups::CPU_PERIOD_US);
    if let Some(quota) = limits.cpu_quota_us.map(signed) {
        cpu = cpu.quota(quota);
    }
    linux.set_resources(Some(
        LinuxResourcesBuilder::default()
            .devices(vec![LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()?])
            .pids(
                LinuxPidsBuilder::default()
                    .limit(signed(limits.pids_max))
                    .build()?,
            )
            .memory(memory.build()?)
            .cpu(cpu.build()?)
            .build()?,
    ));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// A limit as the runtime specification's signed number (saturating).
fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(json: serde_json::Value) -> meridian_model::Image {
        let mut base = serde_json::json!({"ref": "hello"});
        for (k, v) in json.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn config() -> ImageConfiguration {
        serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {"Entrypoint": ["/hello"], "Cmd": ["--quiet"], "Env": ["PATH=/bin", "A=image"],
                       "WorkingDir": "/srv", "User": "app"}
        }))
        .unwrap()
    }

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/srv:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "app:x:1001:\nstaff:x:50:\n").unwrap();
        dir
    }

    #[test]
    fn the_image_gives_the_defaults() {
        let root = rootfs();
        let platform = [("PORT".to_owned(), "8080".to_owned())];
        let p = container_process(
            &image(serde_json::json!({})),
            &config(),
            &platform,
            &[],
            root.path(),
        )
        .unwrap();
        assert_eq!(p.args, ["/hello", "--quiet"]);
        assert_eq!(p.env, ["A=image", "PATH=/bin", "PORT=8080"]);
        assert_eq!((p.cwd.as_str(), p.uid, p.gid), ("/srv", 1000, 1001));
    }

    #[test]
    fn the_definition_overrides_the_image() {
        let root = rootfs();
        let platform = [("A".to_owned(), "platform".to_owned())];
        let only_command = image(serde_json::json!({"command": ["/other"]}));
        let definition = [("A".to_owned(), "def".to_owned())];
        let p = container_process(&only_command, &config(), &platform, &[], root.path()).unwrap();
        assert_eq!(
            p.args,
            ["/other"],
            "a command without args drops the image's Cmd"
        );
        let all = image(serde_json::json!({"args": ["-v"],
                                            "working_dir": "/", "user": "0:staff"}));
        let p = container_process(&all, &config(), &platform, &definition, root.path()).unwrap();
        assert_eq!(p.args, ["/hello", "-v"]);
        assert!(p.env.contains(&"A=def".to_owned()), "{:?}", p.env);
        assert_eq!((p.cwd.as_str(), p.uid, p.gid), ("/", 0, 50));
        let ghost = image(serde_json::json!({"user": "ghost"}));
        let err = container_process(&ghost, &config(), &platform, &[], root.path()).unwrap_err();
        assert!(err.contains("ghost"), "{err}");
    }

    #[test]
    fn the_runtime_configuration_is_confined() {
        let process = ContainerProcess {
            args: vec!["/hello".into()],
            env: vec![],
            cwd: "/".into(),
            uid: 1000,
            gid: 1000,
        };
        let placement = Placement {
            hostname: "web-0".into(),
            netns: Some("/run/netns/mrd-x".into()),
            resolv_conf: "/etc/netns/mrd-x/resolv.conf".into(),
            hosts: "/b/hosts".into(),
            cgroups_path: "meridian/x".into(),
            limits: crate::cgroups::Limits::of(
                &serde_json::from_value(serde_json::json!({"cpu": 0.5, "memory": "64Mi"})).unwrap(),
            ),
            read_only_root: true,
        };
        let spec = serde_json::to_value(runtime_spec(&process, &placement).unwrap()).unwrap();
        let caps = &spec["process"]["capabilities"];
        assert_eq!(
            caps["bounding"],
            serde_json::json!(["CAP_NET_BIND_SERVICE"])
        );
        assert_eq!(
            (&caps["ambient"], &caps["inheritable"]),
            (&serde_json::json!([]), &serde_json::json!([]))
        );
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["root"]["readonly"], true);
        let resources = &spec["linux"]["resources"];
        assert_eq!(resources["pids"]["limit"], crate::cgroups::PIDS_MAX);
        assert_eq!(resources["memory"]["limit"], 64 << 20);
        assert_eq!(resources["memory"]["swap"], 64 << 20);
        assert_eq!(
            (&resources["cpu"]["quota"], &resources["cpu"]["period"]),
            (&serde_json::json!(50_000), &serde_json::json!(100_000))
        );
        assert!(spec["linux"]["maskedPaths"]
            .as_array()
            .is_some_and(|m| !m.is_empty()));
        let network: Vec<_> = spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["type"] == "network")
            .collect();
        assert_eq!(
            network,
            [&serde_json::json!({"type": "network", "path": "/run/netns/mrd-x"})]
        );
        let destinations: Vec<_> = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert!(["/etc/resolv.conf", "/etc/hosts", "/tmp"]
            .iter()
            .all(|d| destinations.contains(d)));
    }
}
