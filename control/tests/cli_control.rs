//! The `praas app`, `praas process` and `praas invoke --app` commands against a real control plane.

mod support;

use std::process::Output;

use support::{praas, ControlPlaneProcess};

fn run(cp: &ControlPlaneProcess, args: &[&str]) -> Output {
    praas().arg("--control").arg(&cp.http).args(args).output().expect("praas runs")
}

fn ok(cp: &ControlPlaneProcess, args: &[&str]) -> String {
    let out = run(cp, args);
    assert!(out.status.success(), "praas {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn json(cp: &ControlPlaneProcess, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(ok(cp, &all).trim()).expect("one JSON object")
}

#[test]
fn apps_and_processes_from_the_command_line() {
    let cp = ControlPlaneProcess::start("cli-control", &[]);
    cp.create_example_app("template");
    let manifest = cp.data_dir.join("manifests/template/functions.toml");
    let manifest = manifest.to_str().unwrap();

    let table = ok(&cp, &["app", "create", "cliapp", "--manifest", manifest, "--vcpus", "1", "--memory-mb", "4096"]);
    assert!(table.starts_with("APPLICATION") && table.contains("cliapp"), "{table}");
    let apps = json(&cp, &["app", "list"]);
    let names: Vec<&str> = apps.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cliapp", "template"]);

    let created = json(&cp, &["process", "create", "cliapp", "w1"]);
    assert_eq!(created["status"], "ALLOCATED");
    let listed = ok(&cp, &["process", "list", "cliapp"]);
    assert!(listed.contains("w1") && listed.contains("ALLOCATED"), "{listed}");

    assert_eq!(ok(&cp, &["invoke", "--app", "cliapp", "--process", "w1", "counter"]), "1");
    assert_eq!(
        ok(&cp, &["invoke", "--app", "cliapp", "echo", "--input", "via the control plane"]),
        "via the control plane"
    );

    let swapped = json(&cp, &["process", "swap", "cliapp", "w1"]);
    assert_eq!(swapped["status"], "SWAPPED_OUT");
    assert!(swapped["swap"]["bytes"].as_u64().unwrap() > 0);
    let table = ok(&cp, &["process", "list", "cliapp"]);
    assert!(table.contains("SWAPPED_OUT") && table.contains(" B in "), "{table}");
    assert_eq!(json(&cp, &["process", "swapin", "cliapp", "w1"])["status"], "ALLOCATED");
    assert_eq!(ok(&cp, &["invoke", "--app", "cliapp", "--process", "w1", "counter"]), "2");
    // --direct: looked up, then straight to the process's data plane (it serves no RDMA here).
    assert_eq!(ok(&cp, &["invoke", "--app", "cliapp", "--process", "w1", "--direct", "counter"]), "3");
    let out = run(&cp, &["invoke", "--app", "cliapp", "--direct", "counter"]);
    assert_eq!(out.status.code(), Some(2), "--direct needs a process name");

    // Invalid transitions and unknown names: exit code 1 and the reason.
    let out = run(&cp, &["process", "swapin", "cliapp", "w1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 409"));
    let out = run(&cp, &["app", "delete", "cliapp"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has 1 processes"));
    let out = run(&cp, &["process", "create", "nosuchapp", "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 404"));

    assert_eq!(json(&cp, &["process", "stop", "cliapp", "w1"])["status"], "CLOSED");
    ok(&cp, &["process", "delete", "cliapp", "w1"]);
    ok(&cp, &["app", "delete", "cliapp"]);
    assert_eq!(json(&cp, &["app", "list"]).as_array().unwrap().len(), 1);

    // No control plane there: a clear error, no hang.
    let out = praas().args(["--control", "http://127.0.0.1:1", "app", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the control plane"));
}

#[test]
fn with_client_auth_only_clients_with_the_client_key_reach_processes() {
    let cp = ControlPlaneProcess::start("client-auth", &["--client-auth"]);
    cp.create_example_app("guarded");
    let created = json(&cp, &["process", "create", "guarded", "p1"]);
    assert_eq!(created["status"], "ALLOCATED");
    let addr = created["data_addr"].as_str().expect("a data-plane address").to_owned();

    // The control plane and `praas invoke --direct` authenticate by themselves.
    assert_eq!(ok(&cp, &["invoke", "--app", "guarded", "--process", "p1", "counter"]), "1");
    assert_eq!(ok(&cp, &["invoke", "--app", "guarded", "--process", "p1", "--direct", "counter"]), "2");
    assert_eq!(ok(&cp, &["invoke", "--app", "guarded", "echo", "--input", "routed"]), "routed");

    // Straight to the process without the key: refused.
    let out = run(&cp, &["invoke", "--process", &addr, "echo", "--input", "anonymous"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("unauthenticated") && stderr.contains("client key"), "{stderr}");

    // With the key the control plane hands out: served, from the CLI and from the SDK.
    let key = ok(&cp, &["app", "client-key", "guarded"]).trim().to_owned();
    assert_eq!(key.len(), 64, "{key}");
    // From a file (never on the command line), and from the environment.
    let file = cp.data_dir.join("credentials");
    std::fs::write(&file, format!("guarded:{key}\n")).unwrap();
    assert_eq!(ok(&cp, &["invoke", "--process", &addr, "--credentials-file", file.to_str().unwrap(), "counter"]), "3");
    let out = praas()
        .args(["--control", &cp.http, "invoke", "--process", &addr, "noop"])
        .env("PRAAS_CLIENT_CREDENTIALS", format!("guarded:{key}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let options = praas_dataplane::ClientOptions {
        credentials: Some(praas_dataplane::Credentials { app: "guarded".into(), name: "sdk".into(), key }),
        ..praas_dataplane::ClientOptions::default()
    };
    let mut client = praas_dataplane::Client::connect_with(addr.as_str(), options).expect("authenticated");
    assert_eq!(client.invoke("counter", b"").unwrap(), b"4");
    std::fs::write(&file, "guarded:0000").unwrap();
    let out = run(&cp, &["invoke", "--process", &addr, "--credentials-file", file.to_str().unwrap(), "counter"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("unauthenticated"), "{stderr}");
    assert_eq!(client.invoke("counter", b"").unwrap(), b"5", "the process serves on");
}
