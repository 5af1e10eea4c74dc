//! Remote invocation when a callee dies mid-call: a fan-out from one process to 16, one of which
//! is a real `praas process serve` OS process killed with SIGKILL while the calls are in flight.

mod support;

use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use praas_dataplane::function::{ExecutionMode, Manifest};
use praas_dataplane::lifecycle::ProcessStatus;
use praas_dataplane::peer::PeerInfo;
use praas_dataplane::transport::TransportKind;
use praas_dataplane::{Client, ClientOptions, Process, ProcessConfig, Secret, ServerHandle, Status};
use praas_testkit::{example_functions, serve_on, spec, wait_until};

const APP: &str = "fan-app";
const SECRET: &str = "fan-app's secret";

/// A `praas process serve` child, killed when dropped.
struct ChildProcess(Child);

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts process `id` of the application as its own OS process on `kind`
/// ([`support::serve_process`]); returns it and its data-plane address.
fn spawn_process(kind: TransportKind, id: &str, dir: &std::path::Path) -> (ChildProcess, String) {
    let manifest = dir.join("functions.toml");
    let lib = example_functions();
    let text: String = ["sleep", "process_id"]
        .iter()
        .map(|name| format!("[[function]]\nname = \"{name}\"\nlibrary = \"{}\"\nmode = \"worker\"\n\n", lib.display()))
        .collect();
    std::fs::write(&manifest, text).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let transport = kind.to_string();
    let secret = secret.to_str().unwrap();
    let args = ["--app", APP, "--id", id, "--transport", &transport, "--secret-file", secret];
    let (child, addr) = support::serve_process(&manifest, &args);
    (ChildProcess(child), addr)
}

fn node(kind: TransportKind, manifest: &Manifest, id: &str) -> (Arc<Process>, ServerHandle) {
    let config = ProcessConfig {
        id: id.into(),
        app: APP.into(),
        secret: Secret::new(SECRET).ok(),
        workers: 2,
        ..ProcessConfig::default()
    };
    serve_on(kind, manifest, config)
}

fn info(id: &str, addr: String) -> PeerInfo {
    PeerInfo { id: id.into(), addr, rdma: None, status: ProcessStatus::Allocated }
}

fn fan_out_to_16_processes_with_one_killed_mid_call(kind: TransportKind) {
    let dir = support::temp_dir("remote-fan-out");
    let lib = example_functions();
    let manifest = Manifest {
        swap_in_on_call: true,
        functions: ["fan_out", "sleep", "process_id"]
            .iter()
            .map(|name| spec(name, &lib, None, ExecutionMode::Worker))
            .collect(),
        base_dir: std::path::PathBuf::new(),
    };
    let (hub, hub_server) = node(kind, &manifest, "hub");
    let workers: Vec<(Arc<Process>, ServerHandle)> =
        (1..=15).map(|i| node(kind, &manifest, &format!("w{i}"))).collect();
    let (child, child_addr) = spawn_process(kind, "w16", &dir);
    let mut peers: Vec<PeerInfo> = workers.iter().map(|(p, s)| info(p.id(), s.local_addr().to_string())).collect();
    peers.push(info("w16", child_addr));
    hub.peers().update(peers);
    // w16 first: once the 15 others run their call, its request has been sent.
    let list: Vec<String> = std::iter::once("w16".to_owned()).chain((1..=15).map(|i| format!("w{i}"))).collect();
    let list = list.join(",");
    let options =
        ClientOptions { timeout: Duration::from_secs(30), invocation_timeout_ms: 5000, ..ClientOptions::default() };

    // All 16 answer while w16 lives.
    let mut client = Client::connect_with(hub_server.local_addr(), options.clone()).unwrap();
    let output =
        String::from_utf8(client.invoke("fan_out", format!("{list} process_id ").as_bytes()).unwrap()).unwrap();
    assert_eq!(output.lines().next(), Some("w16 ok w16"), "{output}");
    assert_eq!(output.lines().filter(|l| l.contains(" ok ")).count(), 16, "{output}");

    let addr = hub_server.local_addr();
    let input = format!("{list} sleep 1000");
    let started = Instant::now();
    let pending = std::thread::spawn(move || {
        let mut client = Client::connect_with(addr, options).unwrap();
        client.invoke("fan_out", input.as_bytes())
    });
    wait_until(Duration::from_secs(10), "the 15 in-process callees to run their call", || {
        workers.iter().all(|(p, _)| p.in_flight() == 1)
    });
    let pid = child.0.id();
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let output = String::from_utf8(pending.join().unwrap().unwrap()).unwrap();
    let took = started.elapsed();
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 16, "{output}");
    let dead = lines[0];
    assert!(dead.starts_with(&format!("w16 err {} ", Status::Unavailable.code())), "{dead}");
    assert!(dead.contains("w16"), "{dead}");
    for (i, line) in lines[1..].iter().enumerate() {
        assert_eq!(*line, format!("w{} ok slept", i + 1));
    }
    // Within the 5 s deadline: the others' 1 s sleep, not w16's deadline.
    assert!(took < Duration::from_secs(4), "the fan-out took {took:?}");
    eprintln!("{kind}: fan-out of 16 with w16 killed mid-call answered in {took:?}: {dead}");
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mio_fan_out_to_16_processes_with_one_killed_mid_call() {
    fan_out_to_16_processes_with_one_killed_mid_call(TransportKind::Mio);
}

#[test]
fn uring_fan_out_to_16_processes_with_one_killed_mid_call() {
    if !praas_dataplane::transport::uring_available() {
        eprintln!("skipped: io_uring is unavailable on this kernel");
        return;
    }
    fan_out_to_16_processes_with_one_killed_mid_call(TransportKind::Uring);
}
