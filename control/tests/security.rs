//! The control plane on a shared login node: every attack of issue 13 tried again against a real
//! control plane (`praas control serve` as a child OS process), as another user of the machine
//! or a careless owner would.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use praas_control::api_token::ApiToken;
use praas_control::cli::{Api, ApiCallError};
use praas_control::model::{ProcessRecord, ProcessStatus};
use proptest::prelude::*;
use support::{api_of, praas, temp_dir, ControlPlaneProcess};

fn status_of<T: std::fmt::Debug>(result: Result<T, ApiCallError>) -> u16 {
    let error = result.expect_err("the request should have been refused");
    error.status().unwrap_or_else(|| panic!("no HTTP status in {error}"))
}

/// An API client that presents no token, or a wrong one.
fn strangers(cp: &ControlPlaneProcess) -> [Api; 2] {
    [
        Api::with_token(&cp.http, Duration::from_secs(30), None),
        Api::with_token(&cp.http, Duration::from_secs(30), Some(ApiToken::generate())),
    ]
}

/// Sends one raw HTTP/1.1 request and returns the answer's status line (empty if the server
/// closed without one).
fn raw_request(http: &str, request: &[u8]) -> String {
    let addr = http.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn requests_without_the_token_get_401_and_change_nothing() {
    let cp = ControlPlaneProcess::start("sec-401", &[]);
    cp.create_example_app("victim");
    let _: ProcessRecord = cp.api.put("/apps/victim/processes/p", &serde_json::json!({})).unwrap();
    for stranger in strangers(&cp) {
        assert_eq!(status_of(stranger.get::<serde_json::Value>("/apps")), 401);
        assert_eq!(status_of(stranger.get::<serde_json::Value>("/apps/victim")), 401);
        assert_eq!(status_of(stranger.get::<serde_json::Value>("/apps/victim/client-key")), 401);
        assert_eq!(status_of(stranger.get::<serde_json::Value>("/apps/victim/processes")), 401);
        assert_eq!(status_of(stranger.invoke("victim", "counter", Some("p"), b"")), 401);
        assert_eq!(status_of(stranger.post::<serde_json::Value>("/apps/victim/processes/p/stop")), 401);
        assert_eq!(status_of(stranger.post::<serde_json::Value>("/apps/victim/processes/p/swap")), 401);
        assert_eq!(status_of(stranger.delete::<serde_json::Value>("/apps/victim/processes/p")), 401);
        assert_eq!(status_of(stranger.delete::<serde_json::Value>("/apps/victim")), 401);
        let body = serde_json::json!({"manifest": "[[function]]\nname = \"f\"\nlibrary = \"/tmp/x.so\"\n"});
        assert_eq!(status_of(stranger.put::<serde_json::Value>("/apps/intruder", &body)), 401);
        assert_eq!(status_of(stranger.get::<serde_json::Value>("/no/such/route")), 401);
    }
    // A body announced at 1 GiB is refused before a byte of it is read.
    let line = raw_request(
        &cp.http,
        b"PUT /apps/big HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\nContent-Type: application/json\r\n\r\n{",
    );
    assert!(line.starts_with("HTTP/1.1 401"), "{line:?}");
    // A token in the wrong scheme or a prefix of it does not pass either.
    let token = ApiToken::read(&cp.data_dir.join("api-token")).unwrap();
    let request = format!("GET /apps HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\n\r\n", token.as_str());
    assert!(raw_request(&cp.http, request.as_bytes()).starts_with("HTTP/1.1 401"));
    let request = format!("GET /apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", &token.as_str()[..32]);
    assert!(raw_request(&cp.http, request.as_bytes()).starts_with("HTTP/1.1 401"));

    // Nothing changed: the process runs, its counter never moved, no application was added.
    assert_eq!(cp.process("victim", "p").status, ProcessStatus::Allocated);
    assert_eq!(cp.invoke("victim", Some("p"), "counter", b"").unwrap(), b"1");
    let apps: Vec<praas_control::controller::AppView> = cp.api.get("/apps").unwrap();
    assert_eq!(apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["victim"]);
}

/// `(uid, gid)` of the unprivileged user `praas-other` that scripts/setup.sh creates.
fn other_user() -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, "praas-other"]).output().unwrap();
        assert!(out.status.success(), "no user praas-other: run scripts/setup.sh (as root) first");
        String::from_utf8(out.stdout).unwrap().trim().parse::<u32>().unwrap()
    };
    (id("-u"), id("-g"))
}

#[test]
fn another_unix_user_is_refused() {
    // SAFETY: geteuid(2) has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test switches to another user: run it as root (CI does)");
    let (uid, gid) = other_user();
    let cp = ControlPlaneProcess::start("sec-other-user", &[]);
    cp.create_example_app("mine");
    let _: ProcessRecord = cp.api.put("/apps/mine/processes/p", &serde_json::json!({})).unwrap();
    // The other user runs a copy of the binary in a folder everyone may enter: the build's own
    // folder may sit below one only its owner can (a CI checkout under /root, say).
    let shared = tempfile_dir_for_everyone();
    let binary = shared.join("praas");
    std::fs::copy(std::env::var_os("PRAAS_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_praas").into()), &binary)
        .unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_other = |args: &[&str]| {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(&binary);
        command
            .args(["--control", &cp.http])
            .args(args)
            .uid(uid)
            .gid(gid)
            .env_clear()
            .env("HOME", "/nonexistent")
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null());
        command.output().unwrap()
    };
    for args in [
        &["app", "list"][..],
        &["app", "client-key", "mine"],
        &["process", "list", "mine"],
        &["process", "stop", "mine", "p"],
        &["invoke", "--app", "mine", "--process", "p", "counter"],
    ] {
        let out = as_other(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("HTTP 401"), "{args:?} as praas-other: {stderr}");
    }
    // Nor can that user read the token, the database or a log from the data folder.
    for file in ["api-token", "control.redb", "logs/mine.p.log"] {
        use std::os::unix::process::CommandExt;
        let out =
            Command::new("cat").arg(cp.data_dir.join(file)).uid(uid).gid(gid).stdin(Stdio::null()).output().unwrap();
        assert!(!out.status.success() && out.stdout.is_empty(), "praas-other read {file}");
    }
    let _ = std::fs::remove_dir_all(&shared);
    // The owner still can, without flags: the CLI finds the published token.
    let out = praas().args(["--control", &cp.http, "app", "list"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(cp.process("mine", "p").status, ProcessStatus::Allocated);
}

/// A fresh folder below the system's temporary folder that every user may enter and read (0755).
fn tempfile_dir_for_everyone() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "praas-other-user-{}-{}",
        std::process::id(),
        praas_dataplane::state::now_ns()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A shared library whose constructor creates `marker` as soon as it is loaded.
fn constructor_library(dir: &Path, marker: &Path) -> PathBuf {
    let source = dir.join("evil.c");
    std::fs::write(
        &source,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void pwn(void) {{ FILE *f = fopen(\"{}\", \"w\"); \
             if (f) fclose(f); }}\nint evil(void) {{ return 0; }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let library = dir.join("libevil.so");
    let status = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&library).arg(&source).status().unwrap();
    assert!(status.success(), "cc builds the library");
    library
}

#[test]
fn libraries_load_only_from_uploads_and_function_roots() {
    let outside = temp_dir("sec-outside");
    let marker = outside.join("constructor-ran");
    let evil = constructor_library(&outside, &marker);
    let root = temp_dir("sec-root");
    std::fs::copy(praas_testkit::example_functions(), root.join("libfunctions.so")).unwrap();

    let cp = ControlPlaneProcess::start("sec-library", &["--function-root", root.to_str().unwrap()]);
    for library in [evil.display().to_string(), "../../../../../../../../tmp/libevil.so".into(), "libevil.so".into()] {
        let manifest = format!("[[function]]\nname = \"evil\"\nlibrary = \"{library}\"\n");
        let result = cp.api.put::<serde_json::Value>("/apps/x", &serde_json::json!({"manifest": manifest}));
        let error = result.as_ref().unwrap_err().to_string();
        assert_eq!(status_of(result), 400);
        assert!(error.contains(&library), "the refusal names the path: {error}");
    }
    assert_eq!(status_of(cp.api.put::<ProcessRecord>("/apps/x/processes/p", &serde_json::json!({}))), 404);
    assert!(!marker.exists(), "the library's constructor never ran");

    // Inside the root, named in place (absolute or relative to it): served.
    let inside = root.join("libfunctions.so").display().to_string();
    for (app, library) in [("rooted", inside.as_str()), ("relative", "libfunctions.so")] {
        let manifest = format!("[[function]]\nname = \"echo\"\nlibrary = \"{library}\"\nmode = \"inline\"\n");
        let _: serde_json::Value =
            cp.api.put(&format!("/apps/{app}"), &serde_json::json!({"manifest": manifest})).unwrap();
        let _: ProcessRecord = cp.api.put(&format!("/apps/{app}/processes/p"), &serde_json::json!({})).unwrap();
        assert_eq!(cp.invoke(app, Some("p"), "echo", b"in place").unwrap(), b"in place");
    }
    // A symbolic link inside the root that points outside it is refused too.
    std::os::unix::fs::symlink(&evil, root.join("liblink.so")).unwrap();
    let manifest = "[[function]]\nname = \"evil\"\nlibrary = \"liblink.so\"\n";
    assert_eq!(status_of(cp.api.put::<serde_json::Value>("/apps/y", &serde_json::json!({"manifest": manifest}))), 400);
    // And an upload that names a path out of the application's folder.
    let upload = praas_control::api::UploadedFile::new("../../libevil.so".into(), b"\x7fELF");
    let manifest = "[[function]]\nname = \"evil\"\nlibrary = \"../../libevil.so\"\n";
    let body = serde_json::json!({"manifest": manifest, "files": [upload]});
    assert_eq!(status_of(cp.api.put::<serde_json::Value>("/apps/z", &body)), 400);
    assert!(!marker.exists(), "the library's constructor never ran");
    let _ = std::fs::remove_dir_all(&outside);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_example_file_functions_stay_in_the_state_folder() {
    let cp = ControlPlaneProcess::start("sec-files", &[]);
    cp.create_example_app("files");
    let _: ProcessRecord = cp.api.put("/apps/files/processes/p", &serde_json::json!({})).unwrap();
    for name in ["/etc/shadow", "../../../control.redb", "../../../api-token", ".hidden", "a/b"] {
        let result = cp.invoke("files", Some("p"), "file_read", name.as_bytes());
        assert!(
            result.is_err(),
            "file_read {name:?} answered {:?}",
            result.map(|b| String::from_utf8_lossy(&b).into_owned())
        );
    }
    assert_eq!(cp.invoke("files", Some("p"), "file_write", b"notes.txt kept").unwrap(), b"written");
    assert_eq!(cp.invoke("files", Some("p"), "file_read", b"notes.txt").unwrap(), b"kept");
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Every folder under `root` is 0700 and every file 0600.
fn assert_owner_only(root: &Path) {
    let mut seen = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            assert_eq!(mode(&path), 0o700, "{}", path.display());
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if meta.is_file() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        seen += 1;
    }
    assert!(seen > 1, "{} is empty", root.display());
}

#[test]
fn data_files_are_owner_only_whatever_the_umask() {
    let data_dir = temp_dir("sec-modes");
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    // SAFETY: umask(2) only sets this process's mask; it is restored right after the start, and
    // the control plane inherits the permissive one (the worst case it must cope with).
    let before = unsafe { libc::umask(0) };
    let cp = ControlPlaneProcess::start_in(data_dir.clone(), &[]);
    // SAFETY: as above.
    unsafe { libc::umask(before) };
    cp.create_example_app("modes");
    let _: ProcessRecord = cp.api.put("/apps/modes/processes/p", &serde_json::json!({})).unwrap();
    cp.invoke("modes", Some("p"), "state_put", b"k=v").unwrap();
    assert_eq!(cp.invoke("modes", Some("p"), "file_write", b"notes.txt x").unwrap(), b"written");
    let _: ProcessRecord = cp.api.post("/apps/modes/processes/p/swap").unwrap();
    assert_eq!(mode(&data_dir), 0o700, "the data folder was tightened");
    for file in ["control.redb", "api-token", "logs/modes.p.log", "apps/modes/functions.toml"] {
        assert_eq!(mode(&data_dir.join(file)), 0o600, "{file}");
    }
    for folder in ["logs", "apps", "processes", "swap"] {
        assert_owner_only(&data_dir.join(folder));
    }
}

/// `PRAAS_SECRET` from the environment of a running OS process.
fn environment_secret(pid: u32) -> String {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"PRAAS_SECRET="))
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
        .expect("the process has its secret in its environment")
}

#[test]
fn secrets_stay_out_of_logs_command_lines_and_answers() {
    let data_dir = temp_dir("sec-secrets");
    let stderr_path = data_dir.with_extension("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut child = praas()
        .args(["control", "serve", "--listen", "127.0.0.1:0", "--metrics-ms", "50", "--data-dir"])
        .arg(&data_dir)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let http = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_owned();
    let api = api_of(&http, &data_dir);
    let cp = ControlPlaneProcess::adopt(child, http.clone(), data_dir.clone());
    cp.create_example_app("quiet");
    let p: ProcessRecord = api.put("/apps/quiet/processes/p", &serde_json::json!({})).unwrap();
    assert_eq!(cp.invoke("quiet", Some("p"), "counter", b"").unwrap(), b"1");
    let _: ProcessRecord = api.post("/apps/quiet/processes/p/swap").unwrap();
    let _: ProcessRecord = api.post("/apps/quiet/processes/p/swapin").unwrap();
    let p2: ProcessRecord = api.get("/apps/quiet/processes/p").unwrap();
    let pid = p2.pid.unwrap();
    assert_ne!(Some(pid), p.pid);

    let secret = environment_secret(pid);
    let token = std::fs::read_to_string(data_dir.join("api-token")).unwrap().trim().to_owned();
    assert_eq!(secret.len(), 64);
    let client_key = praas_dataplane::auth::client_key(&secret);
    let mut places: Vec<(String, Vec<u8>)> = Vec::new();
    for pid in [pid, cp.child.id()] {
        places.push((format!("cmdline of {pid}"), std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()));
    }
    places.push(("the control plane's log".into(), std::fs::read(&stderr_path).unwrap()));
    for entry in std::fs::read_dir(data_dir.join("logs")).unwrap() {
        let path = entry.unwrap().path();
        places.push((path.display().to_string(), std::fs::read(&path).unwrap()));
    }
    for route in ["/apps", "/apps/quiet", "/apps/quiet/processes", "/apps/quiet/processes/p"] {
        let answer: serde_json::Value = api.get(route).unwrap();
        places.push((format!("GET {route}"), answer.to_string().into_bytes()));
    }
    assert!(places.iter().any(|(_, bytes)| String::from_utf8_lossy(bytes).contains("quiet")), "the logs say something");
    for (place, bytes) in &places {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(&secret), "the application's secret is in {place}");
        assert!(!text.contains(&token), "the API token is in {place}");
        assert!(!text.contains(&client_key), "the client key is in {place}");
    }
    // The one route that hands out the client key (not the secret) does.
    let key: serde_json::Value = api.get("/apps/quiet/client-key").unwrap();
    assert_eq!(key["client_key"], client_key.as_str());
    let _ = std::fs::remove_file(&stderr_path);
}

#[test]
fn names_that_could_become_options_or_break_manifests_are_refused() {
    let cp = ControlPlaneProcess::start("sec-names", &[]);
    cp.create_example_app("ok");
    let manifest = "[[function]]\nname = \"echo\"\nlibrary = \"libx.so\"\n";
    for app in ["-rf", "--help", "..", ".hidden", "a%20b", "%C3%A9"] {
        let result =
            cp.api.put::<serde_json::Value>(&format!("/apps/{app}"), &serde_json::json!({"manifest": manifest}));
        assert_eq!(status_of(result), 400, "application {app:?}");
    }
    for process in ["--help", "-rf", "-", "a%7Fb"] {
        let result = cp.api.put::<ProcessRecord>(&format!("/apps/ok/processes/{process}"), &serde_json::json!({}));
        assert_eq!(status_of(result), 400, "process {process:?}");
    }
    // Function names with a control, combining or invisible character are refused with the
    // application, not at every process start.
    let library = praas_testkit::example_functions();
    let bytes = std::fs::read(&library).unwrap();
    for name in ["ec\u{7f}ho", "e\u{301}cho", "ec\u{200b}ho", "-echo", "two words", ""] {
        let manifest = toml_manifest(name);
        let upload = praas_control::api::UploadedFile::new("libx.so".into(), &bytes);
        let body = serde_json::json!({"manifest": manifest, "files": [upload]});
        let result = cp.api.put::<serde_json::Value>("/apps/weird", &body);
        assert_eq!(status_of(result), 400, "function {name:?}");
    }
    assert_eq!(status_of(cp.api.get::<serde_json::Value>("/apps/weird")), 404);
    let _: ProcessRecord = cp.api.put("/apps/ok/processes/p", &serde_json::json!({})).unwrap();
    assert_eq!(cp.invoke("ok", Some("p"), "echo", b"still serving").unwrap(), b"still serving");
}

/// A manifest with one function of `name` in `libx.so`, written by the TOML library.
fn toml_manifest(name: &str) -> String {
    let mut function = toml::Table::new();
    function.insert("name".into(), name.into());
    function.insert("library".into(), "libx.so".into());
    function.insert("symbol".into(), "echo".into());
    let mut manifest = toml::Table::new();
    manifest.insert("function".into(), toml::Value::Array(vec![toml::Value::Table(function)]));
    toml::to_string(&manifest).unwrap()
}

#[test]
fn resources_beyond_the_node_are_refused_with_the_limit() {
    let cp = ControlPlaneProcess::start("sec-resources", &[]);
    cp.create_example_app("sized");
    let cpus = std::thread::available_parallelism().unwrap().get();
    let huge: [(serde_json::Value, &str); 6] = [
        (serde_json::json!({"vcpus": 4294967295u32, "memory_mb": 1024}), "CPUs"),
        (serde_json::json!({"vcpus": 2000, "memory_mb": 1024}), "CPUs"),
        (serde_json::json!({"vcpus": 200000, "memory_mb": 1024}), "CPUs"),
        (serde_json::json!({"vcpus": 1, "memory_mb": 18446744073709551615u64}), "MiB"),
        (serde_json::json!({"vcpus": 0, "memory_mb": 1024}), "positive"),
        (serde_json::json!({"vcpus": 1, "memory_mb": 0}), "positive"),
    ];
    for (resources, limit) in &huge {
        let result =
            cp.api.put::<ProcessRecord>("/apps/sized/processes/p", &serde_json::json!({"resources": resources}));
        let error = result.as_ref().unwrap_err().to_string();
        assert_eq!(status_of(result), 400, "{resources}");
        assert!(error.contains(limit), "{resources}: {error}");
        if *limit == "CPUs" {
            assert!(error.contains(&format!("{cpus} CPUs")), "the limit is in the message: {error}");
        }
        let body = serde_json::json!({"manifest": "", "resources": resources});
        assert_eq!(status_of(cp.api.put::<serde_json::Value>("/apps/big", &body)), 400, "{resources}");
    }
    // Out of range for the field's type: a bad request too, not a crash.
    let body = serde_json::json!({"resources": {"vcpus": 4294967296u64, "memory_mb": 1}});
    assert_eq!(status_of(cp.api.put::<ProcessRecord>("/apps/sized/processes/p", &body)), 400);
    let processes: Vec<ProcessRecord> = cp.api.get("/apps/sized/processes").unwrap();
    assert!(processes.is_empty(), "no process was started: {processes:?}");
    let ok = serde_json::json!({"resources": {"vcpus": cpus, "memory_mb": 1024}});
    let p: ProcessRecord = cp.api.put("/apps/sized/processes/p", &ok).unwrap();
    assert_eq!(p.status, ProcessStatus::Allocated);
}

/// Route templates of the API, `{}` standing for a generated path segment.
const ROUTES: [&str; 12] = [
    "/apps",
    "/apps/{}",
    "/apps/{}/client-key",
    "/apps/{}/processes",
    "/apps/{}/processes/{}",
    "/apps/{}/processes/{}/swap",
    "/apps/{}/processes/{}/swapin",
    "/apps/{}/processes/{}/stop",
    "/apps/{}/invoke/{}",
    "/apps/{}/invoke/{}?process={}",
    "/{}",
    "/apps/{}/processes/{}/{}",
];

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("fuzz".to_owned()),
        Just("p".to_owned()),
        Just("echo".to_owned()),
        Just("counter".to_owned()),
        Just("..".to_owned()),
        Just("--help".to_owned()),
        Just("%00".to_owned()),
        Just("%ZZ".to_owned()),
        "[a-zA-Z0-9_.%-]{0,80}",
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let number = prop_oneof![
        Just(serde_json::json!(0)),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(u32::MAX)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!(1e308)),
        Just(serde_json::json!("1")),
        (1u64..4).prop_map(|n| serde_json::json!(n)),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (number.clone(), number.clone()).prop_map(|(v, m)| {
            serde_json::to_vec(&serde_json::json!({"resources": {"vcpus": v, "memory_mb": m}})).unwrap()
        }),
        ("[ -~\n]{0,200}", number).prop_map(|(manifest, v)| {
            serde_json::to_vec(
                &serde_json::json!({"manifest": manifest, "files": [{"path": manifest, "content": "!!"}],
                "resources": {"vcpus": v, "memory_mb": 1}}),
            )
            .unwrap()
        }),
        Just(b"{\"manifest\": 1}".to_vec()),
        Just(b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec()),
    ]
}

/// One generated request: method, route, its segments, body, whether it carries the token, and
/// its transfer encoding (none: a Content-Length).
type Generated = (&'static str, usize, Vec<String>, Vec<u8>, bool, Option<&'static str>);

fn generated_request() -> impl Strategy<Value = Generated> {
    (
        prop_oneof![Just("GET"), Just("PUT"), Just("POST"), Just("DELETE"), Just("PATCH"), Just("OPTIONS")],
        0..ROUTES.len(),
        proptest::collection::vec(segment(), 3),
        body(),
        any::<bool>(),
        prop_oneof![Just(None), Just(Some("chunked")), Just(Some("gzip"))],
    )
}

fn send_generated(cp: &ControlPlaneProcess, token: &ApiToken, generated: &Generated) {
    let (method, route, segments, body, authenticated, encoding) = generated;
    let mut path = ROUTES[*route].to_owned();
    for segment in segments {
        path = path.replacen("{}", segment, 1);
    }
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if *authenticated {
        request.push_str(&format!("Authorization: Bearer {}\r\n", token.as_str()));
    }
    match encoding {
        Some(encoding) => request.push_str(&format!("Transfer-Encoding: {encoding}\r\n")),
        None => request.push_str(&format!("Content-Length: {}\r\n", body.len())),
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    raw_request(&cp.http, &bytes);
}

#[test]
fn requests_of_any_shape_never_abort_the_control_plane() {
    // One control plane for every generated case, with an application `fuzz` of two short
    // functions and a process `p` for the generated requests to reach.
    let mut cp = ControlPlaneProcess::start("sec-fuzz", &[]);
    let library = praas_testkit::example_functions();
    let manifest = "[[function]]\nname = \"echo\"\nlibrary = \"libf.so\"\nmode = \"inline\"\n\n\
                    [[function]]\nname = \"counter\"\nlibrary = \"libf.so\"\n";
    let upload = praas_control::api::UploadedFile::new("libf.so".into(), &std::fs::read(library).unwrap());
    let resources = serde_json::json!({"vcpus": 1, "memory_mb": 1024});
    let body = serde_json::json!({"manifest": manifest, "files": [upload], "resources": resources});
    let _: serde_json::Value = cp.api.put("/apps/fuzz", &body).unwrap();
    let _: ProcessRecord = cp.api.put("/apps/fuzz/processes/p", &serde_json::json!({})).unwrap();
    let token = ApiToken::read(&cp.data_dir.join("api-token")).unwrap();

    let config = ProptestConfig { cases: 160, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(generated_request(), 1..4), |requests| {
        for generated in &requests {
            send_generated(&cp, &token, generated);
        }
        // Whatever it was sent, it still answers.
        let apps: Vec<praas_control::controller::AppView> =
            cp.api.get("/apps").map_err(|e| TestCaseError::fail(format!("GET /apps after {requests:?}: {e}")))?;
        prop_assert!(apps.iter().any(|a| a.name == "fuzz"));
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    assert!(cp.child_running(), "the control plane is alive");
}
