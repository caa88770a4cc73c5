//! Hostile input: schemathesis generates requests from `/openapi.json` (valid and invalid) against
//! a real control plane; it must find no 5xx, no undocumented status, and no response that breaks
//! the documented schema. Needs `st` (PyPI `schemathesis`); with MERIDIAN_TEST_STRICT=1 a missing
//! `st` fails the test instead of skipping it.

mod support;

use std::process::Command;

use support::{Cli, ControlPlane};

#[test]
fn schemathesis_finds_no_server_errors_or_schema_violations() {
    if Command::new("st").arg("--version").output().is_err() {
        assert!(
            !support::strict(),
            "schemathesis (`st`) is not installed: pip install schemathesis"
        );
        eprintln!("skipped: schemathesis (`st`) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let control = ControlPlane::start(dir.path());
    let token = control.token.clone().unwrap();
    let cli = Cli {
        api: control.api.clone(),
        token: token.clone(),
    };
    // A region and an org, so that generated definitions and tokens can also be accepted.
    cli.ok(&["region", "add", "fra", "--lat", "50.11", "--lon", "8.68"]);
    cli.ok(&["org", "create", "acme"]);

    let out = Command::new("st")
        .current_dir(dir.path())
        .args(["run", &format!("{}/openapi.json", control.api)])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
        ])
        // The long poll may legitimately wait 30 s per request; it has its own tests.
        .args(["--exclude-path", "/v1/changes"])
        .args(["--max-examples", "40", "--seed", "20261122"])
        .args([
            "--generation-database",
            "none",
            "--no-color",
            "--request-timeout",
            "20",
        ])
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
    // The control plane is still healthy after the barrage.
    let after = cli.json(&["get", "regions"]);
    assert!(after.is_array(), "{after}");
}
