//! Network namespaces made by a test and removed with everything in them when it ends (also
//! when it fails), veth links between them, and running the test's own code inside one: a
//! thread moved into a namespace makes its sockets there, and the processes it starts run
//! there.

use std::path::Path;
use std::process::Command;

/// Runs `ip` with `args`; panics with what it said if it fails.
pub fn ip(args: &[&str]) {
    run("ip", args);
}

/// Runs `program` with `args`; panics with what it said if it fails.
pub fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Network namespaces named `<prefix>-<name>`; on drop, the processes in them are killed and
/// they are deleted (with their links).
pub struct Namespaces {
    prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    /// Makes the namespaces `<prefix>-<name>` for each of `names` (loopback up), after removing
    /// any with the prefix that an earlier run left.
    pub fn create(prefix: &str, names: &[&str]) -> Namespaces {
        remove_all(prefix);
        let mut made = Namespaces {
            prefix: prefix.to_owned(),
            names: Vec::new(),
        };
        for name in names {
            let full = format!("{prefix}-{name}");
            ip(&["netns", "add", &full]);
            made.names.push(full.clone());
            ip(&["-n", &full, "link", "set", "lo", "up"]);
        }
        made
    }

    /// The full name of namespace `name`.
    pub fn name(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Links namespace `a` (interface `a_if`) to `b` (interface `b_if`) with a veth pair, both
    /// ends up.
    pub fn link(&self, (a, a_if): (&str, &str), (b, b_if): (&str, &str)) {
        let (a, b) = (self.name(a), self.name(b));
        ip(&[
            "-n", &a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b,
        ]);
        ip(&["-n", &a, "link", "set", a_if, "up"]);
        ip(&["-n", &b, "link", "set", b_if, "up"]);
    }

    /// Adds `address` (with its prefix length) to `interface` in namespace `name`; IPv6 ones
    /// without duplicate address detection (usable at once).
    pub fn address(&self, name: &str, interface: &str, address: &str) {
        let full = self.name(name);
        let mut args = vec!["-n", &full, "addr", "add", address, "dev", interface];
        if address.contains(':') {
            args.push("nodad");
        }
        ip(&args);
    }

    /// Adds a route in namespace `name` (`ip route add <route…>`; `-6` first for IPv6).
    pub fn route(&self, name: &str, route: &[&str]) {
        let full = self.name(name);
        let mut args = vec!["-n", full.as_str()];
        let family = route.first() == Some(&"-6");
        if family {
            args.push("-6");
        }
        args.extend(["route", "add"]);
        args.extend(&route[usize::from(family)..]);
        ip(&args);
    }

    /// Runs `program` with `args` in namespace `name`; panics if it fails.
    pub fn exec(&self, name: &str, program: &str, args: &[&str]) {
        let full = self.name(name);
        let mut all = vec!["netns", "exec", full.as_str(), program];
        all.extend(args);
        ip(&all);
    }

    /// A command that runs `program` in namespace `name`.
    pub fn command(&self, name: &str, program: impl AsRef<Path>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name(name)])
            .arg(program.as_ref());
        command
    }

    /// Runs `f` on a thread of its own inside namespace `name`: its sockets are made there,
    /// and the processes it starts (directly, not through `ip netns exec`) run there. A panic
    /// in `f` is the caller's.
    pub fn within<T: Send>(&self, name: &str, f: impl FnOnce() -> T + Send) -> T {
        within(&self.name(name), f)
    }

    /// [`Namespaces::within`] on a thread that runs on while the caller goes on.
    pub fn spawn_within<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path(name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    fn path(&self, name: &str) -> String {
        format!("/run/netns/{}", self.name(name))
    }
}

/// Runs `f` on a thread of its own inside the namespace named `full_name` (see
/// [`Namespaces::within`]).
pub fn within<T: Send>(full_name: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{full_name}");
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || {
            enter(&path);
            f()
        });
        match thread.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &str) {
    let namespace = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&namespace),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap_or_else(|e| panic!("entering {path}: {e}"));
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            remove(name);
        }
    }
}

/// Kills the processes in namespace `name` and deletes it.
fn remove(name: &str) {
    if let Ok(listed) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "delete", name]).status();
}

/// Removes every namespace whose name starts with `<prefix>-` (left by an earlier run that was
/// killed before it could).
fn remove_all(prefix: &str) {
    let Ok(listed) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let own = format!("{prefix}-");
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if name.starts_with(&own) {
            eprintln!("removing namespace {name}, left by an earlier run");
            remove(name);
        }
    }
}
