//! Processes of one application served inside the test process, that know each other as the
//! control plane would tell them ([`Node`], [`introduce`]), for the tests of messages and remote
//! invocations between processes.

use std::sync::Arc;

use praas_dataplane::lifecycle::ProcessStatus;
use praas_dataplane::peer::PeerInfo;
use praas_dataplane::transport::TransportKind;
use praas_dataplane::{ClientError, Manifest, Process, ProcessConfig, ServerHandle, Status};

/// One process and the servers it is reached at (stopped when dropped).
pub struct Node {
    /// The process.
    pub process: Arc<Process>,
    /// Its server on a loopback port.
    pub server: ServerHandle,
    /// Its RDMA transport, if it serves RDMA too ([`Node::serving_rdma`]).
    pub rdma: Option<ServerHandle>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("process", &self.process.id())
            .field("addr", &self.server.local_addr())
            .field("rdma", &self.rdma.as_ref().map(ServerHandle::local_addr))
            .finish()
    }
}

impl Node {
    /// Serves `manifest` as a process configured by `config` over `kind`.
    pub fn start(kind: TransportKind, manifest: &Manifest, config: ProcessConfig) -> Self {
        let (process, server) = crate::serve_on(kind, manifest, config);
        Self { process, server, rdma: None }
    }

    /// The node serving RDMA too, on `rdma` (the process's RDMA transport, started), as
    /// `praas process serve --rdma-listen` serves: its peers learn that address.
    pub fn serving_rdma(self, rdma: ServerHandle) -> Self {
        Self { rdma: Some(rdma), ..self }
    }

    /// How its peers know it: ALLOCATED, at its server's address (and its RDMA address).
    pub fn info(&self) -> PeerInfo {
        PeerInfo {
            id: self.process.id().to_owned(),
            addr: self.server.local_addr().to_string(),
            rdma: self.rdma.as_ref().map(|rdma| rdma.local_addr().to_string()),
            status: ProcessStatus::Allocated,
        }
    }
}

/// Tells every node about all of them, as the control plane's peer update would.
pub fn introduce(nodes: &[Node]) {
    let infos: Vec<PeerInfo> = nodes.iter().map(Node::info).collect();
    for node in nodes {
        node.process.peers().update(infos.clone());
    }
}

/// The status and message of an error response; panics on any other error.
#[track_caller]
pub fn remote_error(err: ClientError) -> (Status, String) {
    match err {
        ClientError::Remote { status, message } => (status, message),
        other => panic!("expected an error response, got {other:?}"),
    }
}

/// A fan-out by `hub`'s `fan_out` example function (a 5 s deadline) to `killed`, a process in
/// an OS process of its own, first, and the processes `others`, served in this process: asserts
/// that all answer while `killed` lives; then, while a fan-out of 1 s `sleep`s is in flight,
/// calls `kill` once every one of `others` runs its call (so `killed` has its request), and
/// asserts that `killed` fails with `UNAVAILABLE`, naming it, and the others answer, all within
/// 4 s (the others' sleep, not the deadline). Returns the killed one's line and the time taken.
pub fn fan_out_with_one_killed(
    hub: std::net::SocketAddr,
    killed: &str,
    others: &[&Process],
    kill: impl FnOnce(),
) -> (String, std::time::Duration) {
    use std::time::{Duration, Instant};
    let ids: Vec<&str> = std::iter::once(killed).chain(others.iter().map(|p| p.id())).collect();
    let list = ids.join(",");
    let options = praas_dataplane::ClientOptions {
        timeout: Duration::from_secs(30),
        invocation_timeout_ms: 5000,
        ..praas_dataplane::ClientOptions::default()
    };
    let connect = || praas_dataplane::Client::connect_with(hub, options.clone()).expect("connect to the hub");
    let output = connect().invoke("fan_out", format!("{list} process_id ").as_bytes()).expect("fan_out");
    let expected: Vec<String> = ids.iter().map(|id| format!("{id} ok {id}")).collect();
    assert_eq!(String::from_utf8_lossy(&output), expected.join("\n"), "all answer while {killed} lives");

    let mut client = connect();
    let input = format!("{list} sleep 1000");
    let started = Instant::now();
    let pending = std::thread::spawn(move || client.invoke("fan_out", input.as_bytes()));
    crate::wait_until(Duration::from_secs(10), "the callees in this process to run their call", || {
        others.iter().all(|p| p.in_flight() == 1)
    });
    kill();
    let output = pending.join().expect("the fan-out's client thread").expect("fan_out answers");
    let took = started.elapsed();
    let output = String::from_utf8(output).expect("UTF-8 lines");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), ids.len(), "{output}");
    let dead = lines[0];
    assert!(dead.starts_with(&format!("{killed} err {} ", Status::Unavailable.code())), "{dead}");
    assert!(dead[killed.len()..].contains(killed), "the error names the process: {dead}");
    for (line, id) in lines[1..].iter().zip(&ids[1..]) {
        assert_eq!(*line, format!("{id} ok slept"));
    }
    assert!(took < Duration::from_secs(4), "the fan-out took {took:?}");
    (dead.to_owned(), took)
}
