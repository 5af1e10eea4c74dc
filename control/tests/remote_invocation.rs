//! Remote invocation when a callee dies mid-call: a fan-out from one process to 16, one of which
//! is a real `praas process serve` OS process killed with SIGKILL while the calls are in flight.

mod support;

use std::process::Child;

use praas_dataplane::function::{ExecutionMode, Manifest};
use praas_dataplane::lifecycle::ProcessStatus;
use praas_dataplane::peer::PeerInfo;
use praas_dataplane::transport::TransportKind;
use praas_dataplane::{Process, ProcessConfig, Secret};
use praas_testkit::cluster::{fan_out_with_one_killed, Node};
use praas_testkit::{example_functions, spec};

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

fn node(kind: TransportKind, manifest: &Manifest, id: &str) -> Node {
    let config = ProcessConfig {
        id: id.into(),
        app: APP.into(),
        secret: Secret::new(SECRET).ok(),
        workers: 2,
        ..ProcessConfig::default()
    };
    Node::start(kind, manifest, config)
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
    let hub = node(kind, &manifest, "hub");
    let workers: Vec<Node> = (1..=15).map(|i| node(kind, &manifest, &format!("w{i}"))).collect();
    let (child, child_addr) = spawn_process(kind, "w16", &dir);
    let mut peers: Vec<PeerInfo> = workers.iter().map(Node::info).collect();
    peers.push(PeerInfo { id: "w16".into(), addr: child_addr, rdma: None, status: ProcessStatus::Allocated });
    hub.process.peers().update(peers);
    let others: Vec<&Process> = workers.iter().map(|w| &*w.process).collect();
    let pid = child.0.id();
    let kill = || {
        std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    };
    let (dead, took) = fan_out_with_one_killed(hub.server.local_addr(), "w16", &others, kill);
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
