//! Control groups: each run of an instance gets a cgroup of its own that bounds its memory, CPU
//! time and number of processes as its definition's `resources` say, that the agent reads its
//! usage and out-of-memory kills from, and that is removed when the run ends.
//!
//! cgroup v1 (one hierarchy per controller; the node's cgroups are made under the agent's own
//! cgroup of each, `<agent's>/meridian-<tag>/<instance>`) and v2 (the unified hierarchy, with
//! `<mount>/meridian-<tag>/<instance>`) are both supported; which one is found when the agent
//! starts ([`Cgroups::detect`]): v1 when the memory controller is mounted there (hybrid hosts),
//! else v2 when its root offers the memory controller. [`Limits::of`] turns `resources` into
//! the limits, also for runtimes that write cgroups themselves (an OCI runtime's
//! `linux.resources`).

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_model::Resources;

/// The CPU period the quota is given per, in microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Most processes (threads included) one instance may run: it bounds a fork bomb, and is far
/// above what a service needs.
pub const PIDS_MAX: u64 = 4096;

/// The limits of one instance, as cgroups write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory in bytes (no swap beyond it); `None`: not limited.
    pub memory_bytes: Option<u64>,
    /// CPU time per [`CPU_PERIOD_US`], in microseconds; `None`: not limited.
    pub cpu_quota_us: Option<u64>,
    /// Most processes.
    pub pids_max: u64,
}

impl Limits {
    /// The limits `resources` ask for: memory as given, CPU as a quota per 100 ms (0.5 cores:
    /// 50 ms), and [`PIDS_MAX`] processes.
    pub fn of(resources: &Resources) -> Limits {
        Limits {
            memory_bytes: resources.memory.map(meridian_model::Memory::bytes),
            cpu_quota_us: resources
                .cpu
                .map(|cpu| u64::from(cpu.millis()) * CPU_PERIOD_US / 1000),
            pids_max: PIDS_MAX,
        }
    }

    /// The files to write in a v1 hierarchy, by controller, in order (the memory limit before
    /// memory+swap's, which may not be below it; memory+swap only where the kernel accounts
    /// swap).
    pub fn v1_files(&self) -> Vec<(Controller, &'static str, String)> {
        let mut files = Vec::new();
        if let Some(bytes) = self.memory_bytes {
            files.push((
                Controller::Memory,
                "memory.limit_in_bytes",
                bytes.to_string(),
            ));
            files.push((
                Controller::Memory,
                "memory.memsw.limit_in_bytes",
                bytes.to_string(),
            ));
        }
        if let Some(quota) = self.cpu_quota_us {
            files.push((
                Controller::Cpu,
                "cpu.cfs_period_us",
                CPU_PERIOD_US.to_string(),
            ));
            files.push((Controller::Cpu, "cpu.cfs_quota_us", quota.to_string()));
        }
        files.push((Controller::Pids, "pids.max", self.pids_max.to_string()));
        files
    }

    /// The files to write in a v2 cgroup, in order.
    pub fn v2_files(&self) -> Vec<(&'static str, String)> {
        let mut files = Vec::new();
        if let Some(bytes) = self.memory_bytes {
            files.push(("memory.max", bytes.to_string()));
            files.push(("memory.swap.max", "0".to_owned()));
        }
        if let Some(quota) = self.cpu_quota_us {
            files.push(("cpu.max", format!("{quota} {CPU_PERIOD_US}")));
        }
        files.push(("pids.max", self.pids_max.to_string()));
        files
    }
}

/// A v1 controller the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    /// `cpu`: the CFS quota.
    Cpu,
    /// `cpuacct`: CPU time used.
    Cpuacct,
    /// `memory`: the limit, usage and OOM kills.
    Memory,
    /// `pids`: the process limit.
    Pids,
    /// `freezer`: freezes an instance asleep (`scale.sleep`).
    Freezer,
}

impl Controller {
    const ALL: [Controller; 5] = [
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Memory,
        Controller::Pids,
        Controller::Freezer,
    ];

    fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Freezer => "freezer",
        }
    }
}

/// Where the node's cgroups are made.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// The directory of each controller's `meridian-<tag>`.
    V1(Vec<(Controller, PathBuf)>),
    /// The unified hierarchy's `meridian-<tag>`.
    V2(PathBuf),
}

/// The agent's cgroups: one directory per instance under a directory of this agent's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    layout: Layout,
}

/// One run's cgroup (one directory per v1 controller, or one v2 directory).
#[derive(Debug)]
pub struct Cgroup {
    version: u8,
    dirs: Vec<(Controller, PathBuf)>,
}

/// What one run used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Memory in use now, in bytes.
    pub memory_bytes: u64,
}

impl Cgroups {
    /// The cgroups of the agent with `tag` (its state directory's), as this host mounts them;
    /// `None` when there are none it may use (not root, or no memory controller).
    pub fn detect(tag: &str) -> Option<Cgroups> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let cgroups = Cgroups::from_mounts(&mountinfo, &own, tag)?;
        cgroups.prepare().ok()?;
        Some(cgroups)
    }

    /// Whether this process may use cgroups ([`Cgroups::detect`] would find them), without
    /// making any.
    pub fn available() -> bool {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        rustix::process::geteuid().is_root()
            && Cgroups::from_mounts(&mountinfo, "", "probe").is_some()
    }

    /// The cgroups `mountinfo` (of `/proc/self/mountinfo`) and `own` (the agent's
    /// `/proc/self/cgroup`) say: v1 when the memory controller is mounted as v1, else v2.
    fn from_mounts(mountinfo: &str, own: &str, tag: &str) -> Option<Cgroups> {
        let name = format!("meridian-{tag}");
        let mut v1 = Vec::new();
        let mut v2 = None;
        for line in mountinfo.lines() {
            let Some((mount, kind, options)) = mount_of(line) else {
                continue;
            };
            match kind {
                "cgroup2" => v2 = v2.or(Some(mount)),
                "cgroup" => {
                    for controller in Controller::ALL {
                        if options.split(',').any(|o| o == controller.name()) {
                            let within = own_path(own, controller.name());
                            let dir = mount.join(within.trim_start_matches('/'));
                            let dir = if dir.is_dir() { dir } else { mount.clone() };
                            v1.push((controller, dir.join(&name)));
                        }
                    }
                }
                _ => {}
            }
        }
        if v1.iter().any(|(c, _)| *c == Controller::Memory) {
            v1.sort();
            return Some(Cgroups {
                layout: Layout::V1(v1),
            });
        }
        let root = v2?;
        let offered = std::fs::read_to_string(root.join("cgroup.controllers")).ok()?;
        offered
            .split_whitespace()
            .any(|c| c == "memory")
            .then(|| Cgroups {
                layout: Layout::V2(root.join(name)),
            })
    }

    /// Makes the agent's directories (and, in v2, gives them the controllers).
    fn prepare(&self) -> io::Result<()> {
        match &self.layout {
            Layout::V1(dirs) => dirs
                .iter()
                .try_for_each(|(_, dir)| std::fs::create_dir_all(dir)),
            Layout::V2(dir) => {
                std::fs::create_dir_all(dir)?;
                let controllers = "+memory +cpu +pids";
                if let Some(parent) = dir.parent() {
                    // The root of the hierarchy may delegate while it has processes.
                    std::fs::write(parent.join("cgroup.subtree_control"), controllers)?;
                }
                std::fs::write(dir.join("cgroup.subtree_control"), controllers)
            }
        }
    }

    /// The path an OCI runtime (runc's `linux.cgroupsPath`) is given for instance `key`'s
    /// cgroup, the one [`Cgroups::create`] makes: in v1 relative (runc puts it under its own
    /// cgroup of each controller, which is the agent's, as here), in v2 from the hierarchy's
    /// root.
    pub fn runtime_path(&self, key: &str) -> String {
        let named = |dir: &Path| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        match &self.layout {
            Layout::V1(dirs) => {
                let agents = dirs.first().map(|(_, d)| named(d)).unwrap_or_default();
                format!("{agents}/{key}")
            }
            Layout::V2(dir) => format!("/{}/{key}", named(dir)),
        }
    }

    /// Which version this is: 1 or 2.
    pub fn version(&self) -> u8 {
        match self.layout {
            Layout::V1(_) => 1,
            Layout::V2(_) => 2,
        }
    }

    /// The agent's directories (one per v1 controller, or one v2 directory), which hold its
    /// instances' cgroups.
    fn agents(&self) -> Vec<&Path> {
        match &self.layout {
            Layout::V1(dirs) => dirs.iter().map(|(_, d)| d.as_path()).collect(),
            Layout::V2(dir) => vec![dir.as_path()],
        }
    }

    /// The directories of instance `key`'s cgroup, by controller (one, `Memory`, in v2).
    fn dirs(&self, key: &str) -> Vec<(Controller, PathBuf)> {
        match &self.layout {
            Layout::V1(dirs) => dirs.iter().map(|(c, dir)| (*c, dir.join(key))).collect(),
            Layout::V2(dir) => vec![(Controller::Memory, dir.join(key))],
        }
    }

    /// Makes the cgroup of a run of instance `key` with `limits`, a new one: a leftover of
    /// that name (an earlier run's, or an earlier agent's) is emptied and removed first,
    /// waiting for its killed processes to exit ([`Cgroup::kill_and_remove`]); one that
    /// cannot be is an error, never joined (the run would share its memory charges, OOM
    /// count and processes). Blocks: call it off the async threads.
    pub fn create(&self, key: &str, limits: &Limits) -> io::Result<Cgroup> {
        let cgroup = Cgroup {
            version: self.version(),
            dirs: self.dirs(key),
        };
        if !cgroup.kill_and_remove() {
            return Err(io::Error::other(format!(
                "the cgroup of an earlier run, {}, could not be removed",
                cgroup
                    .dirs
                    .iter()
                    .map(|(_, d)| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for (_, dir) in &cgroup.dirs {
            std::fs::create_dir_all(dir)?;
        }
        match &self.layout {
            Layout::V1(_) => {
                for (controller, file, value) in limits.v1_files() {
                    let Some(dir) = cgroup.dir(controller) else {
                        continue;
                    };
                    let path = dir.join(file);
                    // memory+swap is there only where the kernel accounts swap.
                    if file == "memory.memsw.limit_in_bytes" && !path.exists() {
                        continue;
                    }
                    write(&path, &value)?;
                }
            }
            Layout::V2(_) => {
                let dir = &cgroup.dirs[0].1;
                for (file, value) in limits.v2_files() {
                    let path = dir.join(file);
                    if file == "memory.swap.max" && !path.exists() {
                        continue;
                    }
                    write(&path, &value)?;
                }
            }
        }
        Ok(cgroup)
    }

    /// Where the run of instance `key` is now, if it has a cgroup.
    pub fn of(&self, key: &str) -> Option<Cgroup> {
        let cgroup = Cgroup {
            version: self.version(),
            dirs: self.dirs(key),
        };
        cgroup
            .dirs
            .iter()
            .all(|(_, d)| d.is_dir())
            .then_some(cgroup)
    }

    /// Removes the agent's own directories, at its stop, once every run's cgroup is gone: in
    /// the hierarchies it limits with, and in the others, where runc makes them for a
    /// container's cgroup. One still in use (a run that did not end) stays, with a warning, for
    /// the next agent with this tag to clean up.
    pub fn remove(&self) {
        let mut dirs: Vec<PathBuf> = self.agents().into_iter().map(Path::to_owned).collect();
        if let Some(name) = dirs
            .first()
            .and_then(|d| d.file_name())
            .map(ToOwned::to_owned)
        {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            dirs.extend(hierarchy_dirs(&mountinfo, &own, Path::new(&name)));
        }
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(dir = %dir.display(), error = %e, "the agent's cgroup stays");
                }
                _ => {}
            }
        }
    }

    /// Kills what runs in the cgroups an earlier agent with this tag left, and removes them.
    pub fn remove_leftovers(&self) {
        let mut keys = std::collections::BTreeSet::new();
        for parent in self.agents() {
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            keys.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
        for key in keys {
            tracing::warn!(instance = %key, "removing a cgroup left by an earlier agent");
            let cgroup = Cgroup {
                version: self.version(),
                dirs: self.dirs(&key),
            };
            cgroup.kill_and_remove_now();
        }
    }
}

/// Directory `name` under the agent's own cgroup (from `own`, its `/proc/self/cgroup`) in every
/// cgroup hierarchy `mountinfo` (of `/proc/self/mountinfo`) shows, v1 and v2.
fn hierarchy_dirs(mountinfo: &str, own: &str, name: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(mount_of)
        .filter_map(|(mount, kind, options)| {
            let controller = match kind {
                // The v2 hierarchy's line in /proc/self/cgroup names no controller.
                "cgroup2" => "",
                "cgroup" => options.split(',').find(|o| *o != "rw" && *o != "ro")?,
                _ => return None,
            };
            let within = own_path(own, controller).trim_start_matches('/');
            Some(mount.join(within).join(name))
        })
        .collect()
}

/// The mount point, file system type and super options of a `/proc/self/mountinfo` line.
fn mount_of(line: &str) -> Option<(PathBuf, &str, &str)> {
    let (before, after) = line.split_once(" - ")?;
    let mount = before.split(' ').nth(4)?;
    let mut after = after.split(' ');
    let kind = after.next()?;
    let options = after.nth(1).unwrap_or_default();
    Some((PathBuf::from(mount), kind, options))
}

/// The agent's own cgroup in the v1 hierarchy of `controller` (from `/proc/self/cgroup`),
/// `/` if not said.
fn own_path<'a>(own: &'a str, controller: &str) -> &'a str {
    own.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then_some(path)
        })
        .next()
        .unwrap_or("/")
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// The file that freezes and thaws a run's cgroup: v1's `freezer.state`, v2's
/// `cgroup.freeze`. Every process of the run stops where it is, its memory kept, and
/// goes on when thawed (in microseconds).
#[derive(Debug, Clone)]
pub struct Freezer {
    file: PathBuf,
    values: [&'static str; 2],
    /// The file that says when the freeze is complete, and the line it says it with (v1's
    /// `freezer.state` reads `FROZEN`, v2's `cgroup.events` has `frozen 1`).
    done: (PathBuf, &'static str),
}

/// Longest a freeze may take to complete (each process stops at its next return to user
/// space, or when a sleep it is in ends).
const FREEZE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Freezer {
    /// Freezes the cgroup's processes (`true`) or thaws them. A freeze returns once it is
    /// complete (every process stopped: the CPU they use to stop is used by then); one not
    /// complete within [`FREEZE_WAIT`] is undone and is an error. Blocks (writes to and reads
    /// of the cgroup file system): call it off the async threads.
    pub fn set(&self, frozen: bool) -> io::Result<()> {
        write(&self.file, self.values[usize::from(frozen)])?;
        if !frozen {
            return Ok(());
        }
        let end = std::time::Instant::now() + FREEZE_WAIT;
        while !self.is_frozen()? {
            if std::time::Instant::now() >= end {
                write(&self.file, self.values[0])?;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: not frozen within {FREEZE_WAIT:?}",
                        self.done.0.display()
                    ),
                ));
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        Ok(())
    }

    /// Whether the freeze is complete.
    fn is_frozen(&self) -> io::Result<bool> {
        let (file, line) = &self.done;
        let text = std::fs::read_to_string(file)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
        Ok(text.lines().any(|l| l.trim() == *line))
    }
}

impl Cgroup {
    /// Its freezer, when the node has one (a v1 `freezer` hierarchy, or v2).
    pub fn freezer(&self) -> Option<Freezer> {
        match self.version {
            1 => {
                let state = self.dir(Controller::Freezer)?.join("freezer.state");
                Some(Freezer {
                    file: state.clone(),
                    values: ["THAWED", "FROZEN"],
                    done: (state, "FROZEN"),
                })
            }
            _ => {
                let dir = &self.dirs.first()?.1;
                Some(Freezer {
                    file: dir.join("cgroup.freeze"),
                    values: ["0", "1"],
                    done: (dir.join("cgroup.events"), "frozen 1"),
                })
            }
        }
    }

    fn dir(&self, controller: Controller) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, d)| d.as_path())
    }

    /// The `cgroup.procs` files a process writes `0` to to join the cgroup (each hierarchy's),
    /// ready for a `pre_exec` hook (no allocation there).
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|(_, dir)| {
                CString::new(dir.join("cgroup.procs").as_os_str().as_encoded_bytes()).ok()
            })
            .collect()
    }

    /// How often the kernel's OOM killer killed a process of this cgroup.
    fn oom_kills(&self) -> u64 {
        let file = match self.version {
            1 => "memory.oom_control",
            _ => "memory.events",
        };
        let Some(dir) = self.dir(Controller::Memory) else {
            return 0;
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| field(&text, "oom_kill"))
            .unwrap_or(0)
    }

    /// The CPU time and memory used.
    pub fn usage(&self) -> Usage {
        let read = |controller: Controller, file: &str| {
            self.dir(controller)
                .and_then(|dir| std::fs::read_to_string(dir.join(file)).ok())
        };
        let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok());
        match self.version {
            1 => Usage {
                cpu_seconds: number(read(Controller::Cpuacct, "cpuacct.usage"))
                    .map_or(0.0, |ns| ns as f64 / 1e9),
                memory_bytes: number(read(Controller::Memory, "memory.usage_in_bytes"))
                    .unwrap_or(0),
            },
            _ => Usage {
                cpu_seconds: read(Controller::Memory, "cpu.stat")
                    .and_then(|text| field(&text, "usage_usec"))
                    .map_or(0.0, |us| us as f64 / 1e6),
                memory_bytes: number(read(Controller::Memory, "memory.current")).unwrap_or(0),
            },
        }
    }

    /// Ends the run's cgroup, off the async threads: reads how often the OOM killer killed
    /// in it ([`Cgroup::oom_kills`]; returned), then kills every process left and removes it,
    /// waiting up to two seconds for them to be gone.
    pub async fn end(self) -> u64 {
        let ended = tokio::task::spawn_blocking(move || {
            let oom_kills = self.oom_kills();
            if !self.kill_and_remove() {
                tracing::warn!(cgroup = ?self.dirs, "a cgroup could not be removed");
            }
            oom_kills
        })
        .await;
        ended.unwrap_or(0)
    }

    /// Kills what runs in the cgroup and removes it, waiting up to two seconds for the killed
    /// processes to exit (the kernel refuses to remove a cgroup until they have, and freeing
    /// their memory takes a moment); whether it is gone. Blocks.
    fn kill_and_remove(&self) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !self.kill_and_remove_now() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Kills what runs in the cgroup and tries to remove its directories once; whether they
    /// are all gone.
    fn kill_and_remove_now(&self) -> bool {
        // A frozen process does not act on SIGKILL until thawed (an instance asleep, left by
        // an agent that was killed).
        if let Some(freezer) = self.freezer().filter(|f| f.file.exists()) {
            let _ = freezer.set(false);
        }
        let mut gone = true;
        for (_, dir) in &self.dirs {
            if !dir.exists() {
                continue;
            }
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            gone &= std::fs::remove_dir(dir).is_ok();
        }
        gone
    }
}

/// The number after `name` on its line of a flat-keyed file (`oom_kill 3`).
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

/// Makes `command`'s process join `cgroup` before it executes its program: whatever it runs
/// then starts inside, with no moment outside its limits.
#[allow(unsafe_code)]
pub fn join_before_exec(command: &mut tokio::process::Command, cgroup: &Cgroup) {
    let files = cgroup.procs_files();
    // SAFETY: the hook runs in the child between fork and exec, where only async-signal-safe
    // work is allowed: it makes open and write system calls (rustix, no libc buffering) on
    // paths made before the fork, and allocates nothing (an error is made from an errno).
    unsafe {
        command.pre_exec(move || join(&files));
    }
}

/// Joins the cgroups whose `cgroup.procs` files are `files` (writing `0` moves the writer).
fn join(files: &[CString]) -> io::Result<()> {
    use rustix::fs::{open, Mode, OFlags};
    for file in files {
        let fd = open(
            file.as_c_str(),
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::io::write(&fd, b"0")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: serde_json::Value) -> Resources {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn resources_become_the_files_of_each_version() {
        let limits = Limits::of(&resources(
            serde_json::json!({"cpu": 0.5, "memory": "256Mi"}),
        ));
        assert_eq!(
            limits.v1_files(),
            [
                (
                    Controller::Memory,
                    "memory.limit_in_bytes",
                    "268435456".to_owned()
                ),
                (
                    Controller::Memory,
                    "memory.memsw.limit_in_bytes",
                    "268435456".to_owned()
                ),
                (Controller::Cpu, "cpu.cfs_period_us", "100000".to_owned()),
                (Controller::Cpu, "cpu.cfs_quota_us", "50000".to_owned()),
                (Controller::Pids, "pids.max", "4096".to_owned()),
            ]
        );
        let as_v2 = |limits: Limits| -> Vec<(&str, String)> { limits.v2_files() };
        assert_eq!(
            as_v2(limits),
            [
                ("memory.max", "268435456".to_owned()),
                ("memory.swap.max", "0".to_owned()),
                ("cpu.max", "50000 100000".to_owned()),
                ("pids.max", "4096".to_owned()),
            ]
        );
        // Nothing asked: only the process limit.
        let none = Limits::of(&Resources::default());
        assert_eq!(as_v2(none), [("pids.max", "4096".to_owned())]);
        let small = Limits::of(&resources(serde_json::json!({"cpu": "10m"})));
        assert_eq!(small.cpu_quota_us, Some(1000), "the kernel's least quota");
    }

    /// A run's cgroup is a new one, never the cgroup of an earlier run of that name whose
    /// process still holds memory: that one is emptied and removed first, though its killed
    /// process takes a moment to exit and until then the kernel refuses to remove it.
    #[tokio::test]
    async fn a_run_never_joins_the_cgroup_of_an_earlier_one() {
        use std::os::unix::fs::MetadataExt;
        if !Cgroups::available() {
            assert_ne!(
                std::env::var("MERIDIAN_TEST_STRICT").as_deref(),
                Ok("1"),
                "cgroups need root and a memory controller"
            );
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let cgroups = Cgroups::detect(&crate::netns::tag(state.path())).unwrap();
        let key = "acme.shop.web-0";
        let _removed = Removed(cgroups.clone(), key);
        let limits = Limits::of(&resources(serde_json::json!({"memory": "48Mi"})));
        let earlier = cgroups.create(key, &limits).unwrap();
        // The earlier run: a shell holding 24 MiB.
        let mut command = tokio::process::Command::new("sh");
        command.args([
            "-c",
            "x=$(head -c 25165824 /dev/zero | tr '\\0' a); sleep 600",
        ]);
        join_before_exec(&mut command, &earlier);
        let mut process = command.kill_on_drop(true).spawn().unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while earlier.usage().memory_bytes < 24 << 20 {
            assert!(std::time::Instant::now() < end, "{:?}", earlier.usage());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let memory = |cgroup: &Cgroup| cgroup.dir(Controller::Memory).unwrap().to_owned();
        let earlier_inode = std::fs::metadata(memory(&earlier)).unwrap().ino();

        let run = tokio::task::spawn_blocking({
            let cgroups = cgroups.clone();
            move || cgroups.create(key, &limits)
        })
        .await
        .unwrap()
        .unwrap();
        assert_ne!(
            std::fs::metadata(memory(&run)).unwrap().ino(),
            earlier_inode,
            "the earlier run's cgroup was joined"
        );
        let procs = std::fs::read_to_string(memory(&run).join("cgroup.procs")).unwrap();
        assert_eq!(procs, "", "processes of the earlier run are in the new one");
        assert!(process.wait().await.is_ok());

        assert_eq!(run.end().await, 0);
    }

    /// A run's freezer freezes its processes and thaws them (memory kept, no CPU meanwhile).
    #[tokio::test]
    async fn a_run_is_frozen_and_thawed() {
        if !Cgroups::available() {
            assert_ne!(std::env::var("MERIDIAN_TEST_STRICT").as_deref(), Ok("1"));
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let cgroups = Cgroups::detect(&crate::netns::tag(state.path())).unwrap();
        let key = "acme.shop.sleepy-0";
        let _removed = Removed(cgroups.clone(), key);
        let run = cgroups
            .create(key, &Limits::of(&Resources::default()))
            .unwrap();
        let mut command = tokio::process::Command::new("sh");
        command.args(["-c", "while :; do :; done"]);
        join_before_exec(&mut command, &run);
        let mut process = command.kill_on_drop(true).spawn().unwrap();
        let freezer = run.freezer().unwrap();
        freezer.set(true).unwrap();
        let frozen = |run: &Cgroup| {
            let cpu = run.usage().cpu_seconds;
            std::thread::sleep(Duration::from_millis(200));
            run.usage().cpu_seconds == cpu
        };
        // Once the freeze returns, not a microsecond more is used (the figure of a sleeping
        // instance's CPU is read from then on).
        assert!(frozen(&run), "CPU used after the freeze returned");
        let end = std::time::Instant::now() + Duration::from_secs(20);
        freezer.set(false).unwrap();
        while frozen(&run) {
            assert!(std::time::Instant::now() < end, "no CPU used thawed");
        }
        // Frozen again, as an agent killed while its instance slept leaves it: still removed.
        freezer.set(true).unwrap();
        assert_eq!(run.end().await, 0);
        assert!(process.wait().await.is_ok());
    }

    /// At the agent's stop, once its runs ended, nothing of it stays in the hierarchy.
    #[test]
    fn the_agents_directories_go_at_its_stop() {
        if !Cgroups::available() {
            assert_ne!(std::env::var("MERIDIAN_TEST_STRICT").as_deref(), Ok("1"));
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let cgroups = Cgroups::detect(&crate::netns::tag(state.path())).unwrap();
        let mut dirs: Vec<PathBuf> = cgroups.agents().into_iter().map(Path::to_owned).collect();
        assert!(dirs.iter().all(|d| d.is_dir()), "{dirs:?}");
        // As runc makes them, for a container's cgroup, in every other hierarchy.
        let name = dirs[0].file_name().unwrap().to_owned();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        for dir in hierarchy_dirs(&mountinfo, &own, Path::new(&name)) {
            if !dir.exists() && std::fs::create_dir(&dir).is_ok() {
                dirs.push(dir);
            }
        }
        cgroups.remove();
        assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
    }

    /// When dropped, removes the cgroup of instance `.1` (killing what is left in it) and the
    /// agent's directories, whatever the test left.
    struct Removed(Cgroups, &'static str);

    impl Drop for Removed {
        fn drop(&mut self) {
            let run = Cgroup {
                version: self.0.version(),
                dirs: self.0.dirs(self.1),
            };
            run.kill_and_remove();
            self.0.remove();
        }
    }

    const HYBRID: &str = "\
35 25 0:30 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
36 25 0:31 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw,cpu
37 25 0:32 / /sys/fs/cgroup/cpuacct rw,relatime shared:12 - cgroup cgroup rw,cpuacct
38 25 0:33 / /sys/fs/cgroup/memory rw,relatime shared:13 - cgroup cgroup rw,memory
39 25 0:34 / /sys/fs/cgroup/pids rw,relatime shared:14 - cgroup cgroup rw,pids
40 25 0:35 / /sys/fs/cgroup/systemd rw,relatime shared:15 - cgroup cgroup rw,name=systemd
";

    #[test]
    fn the_agents_directory_is_named_in_every_hierarchy_under_its_own_cgroup() {
        let own = "4:memory:/m\n9:name=systemd:/s\n2:cpu:/\n0::/u\n";
        let dirs = hierarchy_dirs(HYBRID, own, Path::new("meridian-t"));
        let dirs: Vec<&str> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(
            dirs,
            [
                "/sys/fs/cgroup/unified/u/meridian-t",
                "/sys/fs/cgroup/cpu/meridian-t",
                "/sys/fs/cgroup/cpuacct/meridian-t",
                "/sys/fs/cgroup/memory/m/meridian-t",
                "/sys/fs/cgroup/pids/meridian-t",
                "/sys/fs/cgroup/systemd/s/meridian-t",
            ]
        );
    }

    #[test]
    fn a_hybrid_host_uses_its_v1_controllers_under_the_agents_own_cgroups() {
        let own = "4:memory:/no/such/dir\n8:pids:/\n1:cpu:/\n2:cpuacct:/\n0::/\n";
        let cgroups = Cgroups::from_mounts(HYBRID, own, "t").unwrap();
        let Layout::V1(dirs) = &cgroups.layout else {
            panic!("{cgroups:?}")
        };
        let dir = |c: Controller| dirs.iter().find(|(d, _)| *d == c).unwrap().1.clone();
        assert_eq!(
            dir(Controller::Cpu),
            Path::new("/sys/fs/cgroup/cpu/meridian-t")
        );
        // A cgroup of its own not visible here: the hierarchy's root.
        assert_eq!(
            dir(Controller::Memory),
            Path::new("/sys/fs/cgroup/memory/meridian-t")
        );
        assert_eq!(cgroups.version(), 1);
        assert_eq!(own_path(own, "memory"), "/no/such/dir");
        assert!(Cgroups::from_mounts("", own, "t").is_none());
    }

    /// A cgroup made in a plain directory: the files written are the limits.
    #[test]
    fn a_run_s_cgroup_gets_its_limits_and_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let cgroups = Cgroups {
            layout: Layout::V2(root.path().join("meridian-t")),
        };
        let limits = Limits::of(&resources(serde_json::json!({"cpu": 2, "memory": "1Gi"})));
        let cgroup = cgroups.create("acme.shop.web-0", &limits).unwrap();
        let dir = root.path().join("meridian-t/acme.shop.web-0");
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(read("memory.max"), "1073741824");
        assert_eq!(read("cpu.max"), "200000 100000");
        assert_eq!(read("pids.max"), "4096");
        assert!(
            !dir.join("memory.swap.max").exists(),
            "only where swap is accounted"
        );
        assert_eq!(
            cgroup.procs_files(),
            [CString::new(dir.join("cgroup.procs").to_str().unwrap()).unwrap()]
        );
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cgroup.oom_kills(), 1);
        assert!(cgroups.of("acme.shop.web-0").is_some());
        // A real cgroup's files go with it; a plain directory's must be emptied here.
        for entry in std::fs::read_dir(&dir).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        assert!(cgroup.kill_and_remove_now());
        assert!(cgroups.of("acme.shop.web-0").is_none());
    }
}
