//! The operator's command line: contexts of the config file reaching a real global control plane
//! (flags and environment variables winning), bad config files, and the client flags shown on
//! client commands only.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{ControlPlane, MERIDIAN};

/// The `meridian` of an operator whose home (and config folder, when `xdg` is given) are
/// folders of the test, with nothing of the test runner's environment that the CLI reads.
struct Operator {
    home: PathBuf,
    xdg: Option<PathBuf>,
}

impl Operator {
    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(MERIDIAN);
        command.args(args).env("HOME", &self.home);
        for var in [
            "MERIDIAN_API",
            "MERIDIAN_TOKEN",
            "MERIDIAN_ORG",
            "MERIDIAN_CONTEXT",
            "XDG_CONFIG_HOME",
        ] {
            command.env_remove(var);
        }
        if let Some(xdg) = &self.xdg {
            command.env("XDG_CONFIG_HOME", xdg);
        }
        command.envs(env.iter().copied());
        command.output().expect("run meridian")
    }

    /// Runs a command that must succeed; its standard output.
    fn ok_with(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.run_with(args, env);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "meridian {args:?} failed\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, &[])
    }

    /// Runs a command that must fail; its standard error.
    fn fails_with(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.run_with(args, env);
        assert!(
            !out.status.success(),
            "meridian {args:?} should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn fails(&self, args: &[&str]) -> String {
        self.fails_with(args, &[])
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// An address on the test's loopback range where nothing listens.
const NOWHERE: &str = "http://127.0.90.2:9";

#[test]
fn a_contexts_values_reach_the_api_and_flags_and_environment_win() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlPlane::start_on(&dir.path().join("data"), "127.0.90.1");
    let token = control.token.clone().expect("first start prints a token");
    let op = Operator {
        home: dir.path().join("home"),
        xdg: Some(dir.path().join("xdg")),
    };

    let none = op.fails(&["get", "regions"]);
    assert!(none.contains("no API token"), "{none}");

    let said = op.ok(&[
        "context",
        "set",
        "local",
        "--api-url",
        &control.api,
        "--token",
        &token,
    ]);
    assert!(said.contains("now the current context"), "{said}");
    let file = dir.path().join("xdg/meridian/config.yaml");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    assert!(!op.home.join(".config").exists());

    // The context's API and token reach the control plane.
    op.ok(&["region", "add", "fra", "--lat", "50.11", "--lon", "8.68"]);
    assert!(op.ok(&["get", "regions"]).contains("fra"));
    let listed = op.ok(&["context", "list"]);
    let row: Vec<&str> = listed.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        ["*", "local", control.api.as_str(), "-", "yes"],
        "{listed}"
    );
    assert!(!listed.contains(&token), "{listed}");

    // Its org is the default org: an admin token has none of its own.
    op.ok(&["org", "create", "demo"]);
    let no_org = op.fails(&["get", "apps"]);
    assert!(no_org.contains("context's org"), "{no_org}");
    op.ok(&["context", "set", "local", "--org", "demo"]);
    assert_eq!(op.ok(&["get", "apps", "-o", "json"]).trim(), "[]");
    op.ok(&["context", "set", "local", "--org", "nosuch"]);
    let missing = op.fails(&["get", "apps"]);
    assert!(missing.contains("nosuch"), "{missing}");
    // --org and MERIDIAN_ORG win over it.
    assert_eq!(
        op.ok(&["get", "apps", "--org", "demo", "-o", "json"])
            .trim(),
        "[]"
    );
    let env_org = [("MERIDIAN_ORG", "demo")];
    assert_eq!(
        op.ok_with(&["get", "apps", "-o", "json"], &env_org).trim(),
        "[]"
    );

    // Flags and environment variables win over the context's API and token; the context's
    // token goes to the context's API only.
    let withheld = op.fails(&["get", "regions", "--api", NOWHERE]);
    assert!(withheld.contains("goes to its own API only"), "{withheld}");
    let elsewhere = op.fails(&["get", "regions", "--api", NOWHERE, "--token", "x"]);
    assert!(
        elsewhere.contains(&format!("cannot reach the Meridian API at {NOWHERE}")),
        "{elsewhere}"
    );
    assert!(!elsewhere.contains("from context"), "{elsewhere}");
    let wrong = [("MERIDIAN_TOKEN", "mrd_not-a-token")];
    let refused = op.fails_with(&["get", "regions"], &wrong);
    assert!(refused.contains("401"), "{refused}");
    let wrong_in_context = op.fails(&["get", "regions", "--context", "local", "--token", "x"]);
    assert!(wrong_in_context.contains("401"), "{wrong_in_context}");

    // Another context, chosen per command or made current.
    let said = op.ok(&[
        "context",
        "set",
        "other",
        "--api-url",
        NOWHERE,
        "--token",
        "t",
    ]);
    assert!(!said.contains("current"), "{said}");
    assert!(op.ok(&["get", "regions"]).contains("fra"));
    let other = op.fails(&["get", "regions", "--context", "other"]);
    assert!(
        other.contains(NOWHERE) && other.contains("from context `other`"),
        "{other}"
    );
    let by_env = op.fails_with(&["get", "regions"], &[("MERIDIAN_CONTEXT", "other")]);
    assert!(by_env.contains(NOWHERE), "{by_env}");
    op.ok(&["context", "use", "other"]);
    assert!(op.fails(&["get", "regions"]).contains(NOWHERE));

    // A refused change writes nothing.
    let before = std::fs::read(&file).unwrap();
    let unknown = op.fails(&["context", "use", "nosuch"]);
    assert!(unknown.contains("no context `nosuch`") && unknown.contains("local, other"));
    let bad_url = op.fails(&["context", "set", "local", "--api-url", "not a url"]);
    assert!(bad_url.contains("--api-url"), "{bad_url}");
    let bad_org = op.fails(&["context", "set", "local", "--org", "Not_A_Label"]);
    assert!(bad_org.contains("--org"), "{bad_org}");
    assert_eq!(std::fs::read(&file).unwrap(), before);

    let said = op.ok(&["context", "delete", "other"]);
    assert!(said.contains("no current context"), "{said}");
    let none = op.fails(&["get", "regions"]);
    assert!(none.contains("no API token"), "{none}");
    op.ok(&["context", "use", "local"]);
    op.ok(&["context", "set", "local", "--org", ""]);
    assert!(op.ok(&["get", "regions"]).contains("fra"));
}

#[test]
fn a_bad_config_file_is_named_with_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let op = Operator {
        home: dir.path().to_owned(),
        xdg: None,
    };
    // Without XDG_CONFIG_HOME the file is under ~/.config.
    op.ok(&["context", "set", "a", "--api-url", NOWHERE]);
    let file = dir.path().join(".config/meridian/config.yaml");
    assert_eq!(mode(&file), 0o600);
    let shown = file.display().to_string();

    for (text, field) in [
        (
            "contexts:\n  prod:\n    api-url: not a url\n",
            "contexts.prod.api-url",
        ),
        ("contexts:\n  prod:\n    apiurl: http://x\n", "apiurl"),
        ("current-context: gone\n", "current-context"),
        (
            "contexts:\n  prod:\n    api-url: http://x\n    org: Shop\n",
            "contexts.prod.org",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        for args in [&["get", "regions"][..], &["context", "list"]] {
            let err = op.fails(args);
            assert!(
                err.contains(&shown) && err.contains(field),
                "{args:?}: {err}"
            );
        }
        let err = op.fails(&["context", "set", "b", "--api-url", NOWHERE]);
        assert!(err.contains(field), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    }

    // A file others may read is used, with a warning.
    std::fs::write(
        &file,
        format!("contexts:\n  a:\n    api-url: {NOWHERE}\n    token: t\n"),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let listed = op.run_with(&["context", "list"], &[]);
    assert!(listed.status.success());
    let warning = String::from_utf8_lossy(&listed.stderr);
    assert!(warning.contains("chmod 600"), "{warning}");
}

/// The lines of `meridian <args> --help` that document a flag.
fn flags(args: &[&str]) -> Vec<String> {
    let op = Operator {
        home: PathBuf::from("/nonexistent"),
        xdg: None,
    };
    let mut all = args.to_vec();
    all.push("--help");
    op.ok(&all)
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn client_flags_are_shown_on_client_commands_only() {
    let documents = |lines: &[String], flag: &str| lines.iter().any(|l| l.contains(flag));
    for command in [
        &["get"][..],
        &["get", "services"],
        &["deploy"],
        &["status"],
        &["region", "add"],
        &["rollout", "status"],
        &["node", "list"],
        &["join-token"],
        &["top"],
        &["logs"],
    ] {
        let lines = flags(command);
        for flag in ["--api <", "--token <", "--context <", "--output <"] {
            assert!(
                documents(&lines, flag),
                "{command:?} lacks {flag}: {lines:?}"
            );
        }
    }
    for command in [
        &["dev"][..],
        &["proxy"],
        &["agent"],
        &["gateway"],
        &["edge"],
        &["dns"],
        &["context"],
    ] {
        let lines = flags(command);
        for flag in ["--api <", "--token <", "--context <", "--output <"] {
            assert!(
                !documents(&lines, flag),
                "{command:?} shows {flag}: {lines:?}"
            );
        }
    }
    // A regional control plane has its own: the global API it gets its CA from.
    let control = flags(&["control"]);
    assert!(documents(&control, "--api <"));
    assert!(!documents(&control, "--context <") && !documents(&control, "--output <"));
}

/// What bash's completion of `meridian` offers for `words` (the last one being completed).
fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
    let current = words.len() - 1;
    let previous = if current > 0 { words[current - 1] } else { "" };
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}' && COMP_WORDS=({}) && COMP_CWORD={current} && \
         _meridian meridian '{}' '{previous}' && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words[current],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn completion_scripts_complete_subcommands_flags_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let op = Operator {
        home: dir.path().to_owned(),
        xdg: None,
    };
    let bash = op.ok(&["completions", "bash"]);
    let script = dir.path().join("meridian.bash");
    std::fs::write(&script, &bash).unwrap();
    assert_eq!(
        bash_completes(&script, &["meridian", "cont"]),
        ["control", "context"]
    );
    let context = bash_completes(&script, &["meridian", "context", ""]);
    for sub in ["list", "use", "set", "delete"] {
        assert!(context.iter().any(|w| w == sub), "{context:?}");
    }
    assert_eq!(
        bash_completes(&script, &["meridian", "get", "services", "--o"]),
        ["--org", "--output"]
    );
    assert_eq!(
        bash_completes(&script, &["meridian", "get", "services", "-o", ""]),
        ["table", "json"]
    );

    let zsh = op.ok(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef meridian"), "{}", &zsh[..40]);
    assert!(zsh.contains("'--context=[") && zsh.contains("(completions)"));
    let fish = op.ok(&["completions", "fish"]);
    assert!(fish.contains("complete -c meridian") && fish.contains("-a \"context\""));
    let refused = op.fails(&["completions", "tcsh"]);
    assert!(refused.contains("bash") && refused.contains("zsh") && refused.contains("fish"));
}
