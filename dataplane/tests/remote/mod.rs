//! The remote-invocation test cases between real processes, over a [`Fabric`]: run over TCP on
//! both transports by `remote_invocation.rs`, and over RDMA on a real device by `rdma.rs`
//! (`scripts/test-rdma.sh`, in the SoftRoCE VM). Each process is served in the test process
//! and invoked by a TCP client; what is tested is the call from one process to another, over
//! the wire the fabric names, which each case checks the callers' counts of answered calls by
//! wire for ([`Fabric::assert_calls`]).

/// Instantiates every case of this module with the fabric's macro (`over_tcp`, `over_rdma`):
/// the one list of them.
macro_rules! every_case {
    ($fabric:ident) => {
        $fabric!(
            remote_invocation_is_byte_exact_from_0_b_to_16_mib,
            every_error_reaches_the_caller_with_its_status,
            the_callers_deadline_travels_and_a_late_answer_is_dropped,
            a_calls_b_which_calls_a_with_one_worker_each,
            fan_out_gathers_from_16_processes_in_about_one_round_trip,
            wait_any_returns_the_first_answer_to_arrive,
            impostor_peers_are_refused,
            a_version_1_c_library_still_loads_and_runs,
        );
    };
}

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use praas_dataplane::function::{ExecutionMode, Manifest};
use praas_dataplane::lifecycle::ProcessStatus;
use praas_dataplane::peer::PeerInfo;
use praas_dataplane::transport::TransportKind;
use praas_dataplane::{Client, ClientOptions, FunctionRegistry, ProcessConfig, Secret, Status};
use praas_testkit::cluster::{introduce, remote_error, Node};
use praas_testkit::{c_functions, c_functions_v1, example_manifest, pattern, spec, wait_until};

const APP: &str = "remote-app";
const SECRET: &str = "a secret only remote-app's processes know";
const LONG: Duration = Duration::from_secs(30);

/// What the processes of a case serve, and so the wire their calls go over.
#[derive(Debug, Clone, Copy)]
pub enum Fabric {
    /// TCP on loopback, served by this transport.
    Tcp(TransportKind),
    /// RDMA on the device with this address: each process serves TCP on loopback (mio, for its
    /// clients and as the fallback) and RDMA, as `praas process serve --rdma-listen` does.
    #[cfg(feature = "rdma")]
    #[allow(dead_code)] // constructed by rdma.rs only
    Rdma(IpAddr),
}

impl From<TransportKind> for Fabric {
    fn from(kind: TransportKind) -> Self {
        Self::Tcp(kind)
    }
}

impl Fabric {
    /// Serves `manifest` as the process `config` describes.
    pub fn start(self, manifest: &Manifest, config: ProcessConfig) -> Node {
        match self {
            Self::Tcp(kind) => Node::start(kind, manifest, config),
            #[cfg(feature = "rdma")]
            Self::Rdma(ip) => {
                let node = Node::start(TransportKind::Mio, manifest, config);
                let transport = praas_dataplane::transport::rdma::bind_with_peers(
                    SocketAddr::new(ip, 0),
                    std::sync::Arc::clone(&node.process),
                    praas_dataplane::RdmaOptions::default(),
                )
                .expect("bind the RDMA transport");
                let rdma = praas_dataplane::Transport::spawn(Box::new(transport)).expect("the RDMA transport starts");
                node.serving_rdma(rdma)
            }
        }
    }

    /// The address its processes listen on.
    fn ip(self) -> IpAddr {
        match self {
            Self::Tcp(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            #[cfg(feature = "rdma")]
            Self::Rdma(ip) => ip,
        }
    }

    /// Input sizes for the byte-exact case: over RDMA, also those on either side of where a
    /// request (24-byte header, the callee's name of 4 to 11 bytes, the input) and an answer
    /// (header, output) stop fitting a receive slot and go by rendezvous (announced, granted,
    /// written).
    fn sizes(self) -> Vec<usize> {
        let sizes = vec![0, 1, 100, 4095, 65_536, 1 << 20, 16 << 20];
        match self {
            Self::Tcp(_) => sizes,
            #[cfg(feature = "rdma")]
            Self::Rdma(_) => {
                let slot = praas_dataplane::RdmaOptions::default().recv_size;
                sizes.into_iter().chain((slot - 24 - 11 - 1)..=(slot - 24 + 1)).chain([(1 << 20) + 7]).collect()
            }
        }
    }

    /// Asserts that `node`'s callees answered `calls` remote invocations of its so far, all over
    /// this fabric's wire.
    #[track_caller]
    pub fn assert_calls(self, node: &Node, calls: u64) {
        self.assert_calls_within(node, calls..=calls);
    }

    /// Asserts that `node`'s callees answered a number in `calls` of its remote invocations so
    /// far, all over this fabric's wire.
    #[track_caller]
    fn assert_calls_within(self, node: &Node, calls: std::ops::RangeInclusive<u64>) {
        let counts = node.process.peers().remote_calls();
        let (this, other) = match self {
            Self::Tcp(_) => (counts.tcp, counts.rdma),
            #[cfg(feature = "rdma")]
            Self::Rdma(_) => (counts.rdma, counts.tcp),
        };
        assert!(
            calls.contains(&this) && other == 0,
            "the remote calls of {} by wire: {counts:?}, expected {calls:?} over {self:?}",
            node.process.id()
        );
    }

    /// A process of the application with `workers` workers.
    fn process(self, manifest: &Manifest, id: &str, secret: &str, workers: usize) -> Node {
        let config = ProcessConfig {
            id: id.into(),
            app: APP.into(),
            secret: Secret::new(secret).ok(),
            workers,
            ..ProcessConfig::default()
        };
        self.start(manifest, config)
    }

    /// Processes of one application that know each other, as the control plane would tell them.
    fn cluster(self, ids: &[&str], workers: usize) -> Vec<Node> {
        let manifest = manifest();
        let nodes: Vec<Node> = ids.iter().map(|id| self.process(&manifest, id, SECRET, workers)).collect();
        introduce(&nodes);
        nodes
    }
}

/// A client of `node` whose invocations carry a deadline of `timeout_ms`.
fn client_of(node: &Node, timeout_ms: u32) -> Client {
    let options = ClientOptions { timeout: LONG, invocation_timeout_ms: timeout_ms, ..ClientOptions::default() };
    Client::connect_with(node.server.local_addr(), options).expect("connect")
}

/// The example functions, the C ones (`c_remote_call`, `c_fan_out`, `c_echo`), and an inline
/// `remote_call`.
fn manifest() -> Manifest {
    let c = c_functions();
    let mut manifest = example_manifest();
    manifest.functions.push(spec("c_remote_call", &c, None, ExecutionMode::Worker));
    manifest.functions.push(spec("c_fan_out", &c, None, ExecutionMode::Worker));
    manifest.functions.push(spec("c_echo", &c, None, ExecutionMode::Inline));
    let lib = praas_testkit::example_functions();
    manifest.functions.push(spec("inline_remote_call", &lib, Some("remote_call"), ExecutionMode::Inline));
    manifest
}

/// `process function ` then `input`: the input of `remote_call` and `c_remote_call`.
fn call_input(process: &str, function: &str, input: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{process} {function} ").into_bytes();
    bytes.extend_from_slice(input);
    bytes
}

/// A peer announced as running at addresses nothing listens on.
fn unreachable_peer(fabric: Fabric, id: &str) -> PeerInfo {
    let listener = std::net::TcpListener::bind(SocketAddr::new(fabric.ip(), 0)).unwrap();
    let closed = listener.local_addr().unwrap().to_string();
    drop(listener);
    let rdma = match fabric {
        Fabric::Tcp(_) => None,
        #[cfg(feature = "rdma")]
        Fabric::Rdma(_) => Some(closed.clone()),
    };
    PeerInfo { id: id.into(), addr: closed, rdma, status: ProcessStatus::Allocated }
}

pub fn remote_invocation_is_byte_exact_from_0_b_to_16_mib(fabric: Fabric) {
    let nodes = fabric.cluster(&["r0", "r1"], 4);
    let mut client = client_of(&nodes[0], 0);
    let sizes = fabric.sizes();
    let callers = [("remote_call", "echo"), ("remote_call", "echo_worker"), ("c_remote_call", "c_echo")];
    for (seed, &size) in sizes.iter().enumerate() {
        let data = pattern(size, seed as u64);
        for (caller, callee) in callers {
            let output = client.invoke(caller, &call_input("r1", callee, &data)).unwrap();
            assert!(output == data, "{caller} -> {callee}: {size} bytes came back as {} different bytes", output.len());
        }
    }
    // Connections are kept: the calls from r0's workers opened at most one per worker.
    let opened = nodes[1].process.connections().open();
    assert!(opened <= 6, "{opened} connections at r1 (4 workers' peer connections and the client's)");
    fabric.assert_calls(&nodes[0], (sizes.len() * callers.len()) as u64);
}

pub fn every_error_reaches_the_caller_with_its_status(fabric: Fabric) {
    let nodes = fabric.cluster(&["e0", "e1"], 4);
    let mut peers = vec![nodes[0].info(), nodes[1].info()];
    peers.push(PeerInfo {
        id: "stored".into(),
        addr: "127.0.0.1:1".into(),
        rdma: None,
        status: ProcessStatus::SwappedOut,
    });
    peers.push(unreachable_peer(fabric, "dead"));
    nodes[0].process.peers().update(peers);
    let mut client = client_of(&nodes[0], 0);
    let started = Instant::now();
    for caller in ["remote_call", "c_remote_call"] {
        let (status, message) = remote_error(client.invoke(caller, &call_input("nobody", "echo", b"x")).unwrap_err());
        assert_eq!(status, Status::NotFound, "{message}");
        assert!(message.contains("unknown process \"nobody\""), "{message}");
        let (status, message) = remote_error(client.invoke(caller, &call_input("e1", "no_such_fn", b"x")).unwrap_err());
        assert_eq!(status, Status::UnknownFunction, "{message}");
        assert!(message.contains("unknown function \"no_such_fn\""), "{message}");
        let (status, message) =
            remote_error(client.invoke(caller, &call_input("e1", "fail", b"it went wrong")).unwrap_err());
        assert_eq!(status, Status::FunctionFailed, "{message}");
        assert!(message.contains("it went wrong"), "{message}");
        let (status, message) = remote_error(client.invoke(caller, &call_input("e1", "panic", b"boom")).unwrap_err());
        assert_eq!(status, Status::Panicked, "{message}");
        let (status, message) = remote_error(client.invoke(caller, &call_input("stored", "echo", b"x")).unwrap_err());
        assert_eq!(status, Status::Unavailable, "{message}");
        assert!(message.contains("swapped out"), "{message}");
        let (status, message) = remote_error(client.invoke(caller, &call_input("dead", "echo", b"x")).unwrap_err());
        assert_eq!(status, Status::Unavailable, "{message}");
        assert!(message.contains("unreachable"), "{message}");
    }
    // An inline function would block the I/O thread: refused, saying what to do.
    let (status, message) =
        remote_error(client.invoke("inline_remote_call", &call_input("e1", "echo", b"x")).unwrap_err());
    assert_eq!(status, Status::Unsupported, "{message}");
    assert!(message.contains("mode = \"worker\""), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10), "errors took {:?}", started.elapsed());
    // The callee serves on after all that.
    assert_eq!(client.invoke("remote_call", &call_input("e1", "echo", b"fine")).unwrap(), b"fine");
    // e1 answered the unknown function, the failure and the panic for each caller, and the echo.
    fabric.assert_calls(&nodes[0], 7);
}

pub fn the_callers_deadline_travels_and_a_late_answer_is_dropped(fabric: Fabric) {
    let nodes = fabric.cluster(&["d0", "d1"], 4);
    let mut client = client_of(&nodes[0], 300);
    // A slow callee: TIMEOUT for the caller on time.
    let started = Instant::now();
    let (status, message) =
        remote_error(client.invoke("remote_call", &call_input("d1", "sleep", b"1500")).unwrap_err());
    let took = started.elapsed();
    assert_eq!(status, Status::Timeout, "{message}");
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(1), "TIMEOUT after {took:?}");
    // The deadline travelled: d1's own get waits no longer than the caller's 300 ms, so its
    // worker is free again long before the get's 60 s.
    let started = Instant::now();
    let (status, _) =
        remote_error(client.invoke("remote_call", &call_input("d1", "msg_get", b"* never 60000")).unwrap_err());
    assert_eq!(status, Status::Timeout);
    wait_until(Duration::from_secs(5), "d1's msg_get to give its worker back", || {
        nodes[1].process.in_flight() <= 1 // the sleep may still run
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    // The late answers (the sleep's "slept") are dropped, never taken for a later call's.
    wait_until(Duration::from_secs(5), "d1's sleep to finish", || nodes[1].process.in_flight() == 0);
    let mut patient = client_of(&nodes[0], 0);
    for n in 0..8 {
        let input = format!("after {n}");
        assert_eq!(
            patient.invoke("remote_call", &call_input("d1", "echo_worker", input.as_bytes())).unwrap(),
            input.as_bytes()
        );
    }
    // The sleep's late answer is not counted as answered; the get's own TIMEOUT, cut by d1 at
    // the same deadline, may arrive just before the caller's wait ends (then it is) or after.
    fabric.assert_calls_within(&nodes[0], 8..=9);
}

pub fn a_calls_b_which_calls_a_with_one_worker_each(fabric: Fabric) {
    let nodes = fabric.cluster(&["a", "b"], 1);
    let mut client = client_of(&nodes[0], 5000);
    let started = Instant::now();
    // a.remote_call -> b.remote_call -> a.process_id: a's only worker waits for b, b's only worker
    // waits for a.
    let output = client.invoke("remote_call", b"b remote_call a process_id ").unwrap();
    assert_eq!(output, b"a");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    // In C, and deeper: a -> b -> a -> b.
    let output = client.invoke("c_remote_call", b"b c_remote_call a remote_call b process_id ").unwrap();
    assert_eq!(output, b"b");
    // Both serve on.
    assert_eq!(client_of(&nodes[1], 0).invoke("echo_worker", b"free").unwrap(), b"free");
    assert_eq!(client.invoke("echo_worker", b"free").unwrap(), b"free");
    // a called b once in the first chain and twice in the second; b called a once in each.
    fabric.assert_calls(&nodes[0], 3);
    fabric.assert_calls(&nodes[1], 2);
}

pub fn fan_out_gathers_from_16_processes_in_about_one_round_trip(fabric: Fabric) {
    let ids: Vec<String> = std::iter::once("hub".to_owned()).chain((1..=16).map(|i| format!("w{i}"))).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let nodes = fabric.cluster(&refs, 2);
    let list = ids[1..].join(",");
    let mut client = client_of(&nodes[0], 10_000);
    // Each process answers with its own id (and the hub's connections to them are open).
    let output = client.invoke("fan_out", format!("{list} process_id ").as_bytes()).unwrap();
    let expected: Vec<String> = ids[1..].iter().map(|id| format!("{id} ok {id}")).collect();
    assert_eq!(String::from_utf8(output).unwrap(), expected.join("\n"));
    // Sixteen 200 ms calls, gathered as they complete: one round of 200 ms, not sixteen.
    for caller in ["fan_out", "c_fan_out"] {
        let started = Instant::now();
        let output = client.invoke(caller, format!("{list} sleep 200").as_bytes()).unwrap();
        let took = started.elapsed();
        let text = String::from_utf8(output).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        let mut expected: Vec<String> = ids[1..].iter().map(|id| format!("{id} ok slept")).collect();
        expected.sort_unstable();
        assert_eq!(lines, expected, "{caller}");
        assert!(took < Duration::from_millis(1600), "{caller}: 16 x 200 ms took {took:?}");
        eprintln!("{caller}: 16 x sleep 200 ms gathered in {took:?}");
    }
    fabric.assert_calls(&nodes[0], 3 * 16);
}

pub fn wait_any_returns_the_first_answer_to_arrive(fabric: Fabric) {
    let nodes = fabric.cluster(&["q0", "q1", "q2"], 2);
    let mut client = client_of(&nodes[0], 10_000);
    // q2 has a message under k, q1 none: q1's get waits its 2 s for one, q2's returns at once.
    // q1's call is submitted first; `c_fan_out` writes the answers in the order
    // `praas_remote_wait` returns them.
    assert_eq!(client.invoke("msg_put", b"q2 k for q2").unwrap(), b"stored");
    let started = Instant::now();
    let output = client.invoke("c_fan_out", b"q1,q2 msg_get * k 2000").unwrap();
    let took = started.elapsed();
    let text = String::from_utf8(output).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], "q2 ok q0 for q2", "the first answer to arrive comes first: {text}");
    assert!(lines[1].starts_with(&format!("q1 err {}", Status::Timeout.code())), "{text}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(5), "took {took:?}");
    fabric.assert_calls(&nodes[0], 2);
}

pub fn impostor_peers_are_refused(fabric: Fabric) {
    let manifest = manifest();
    let nodes = fabric.cluster(&["i0", "i1"], 2);
    // A process of the same application's name with another secret, announced as i1 to i0, and
    // one that knows the real i1 and calls it.
    let impostor = fabric.process(&manifest, "i1", "not the secret", 2);
    let mut peers = vec![nodes[0].info(), impostor.info()];
    peers[1].id = "i1".into();
    nodes[0].process.peers().update(peers);
    let (status, message) =
        remote_error(client_of(&nodes[0], 0).invoke("remote_call", &call_input("i1", "echo", b"x")).unwrap_err());
    assert_eq!(status, Status::Unauthenticated, "{message}");
    impostor.process.peers().update(vec![nodes[1].info()]);
    let (status, message) =
        remote_error(client_of(&impostor, 0).invoke("remote_call", &call_input("i1", "echo", b"x")).unwrap_err());
    assert_eq!(status, Status::Unauthenticated, "{message}");
    assert!(message.contains("authentication"), "{message}");
    // The real one still works both ways.
    nodes[0].process.peers().update(vec![nodes[0].info(), nodes[1].info()]);
    assert_eq!(client_of(&nodes[0], 0).invoke("remote_call", &call_input("i1", "echo", b"ok")).unwrap(), b"ok");
    assert_eq!(client_of(&nodes[1], 0).invoke("remote_call", &call_input("i0", "echo", b"ok")).unwrap(), b"ok");
    fabric.assert_calls(&nodes[0], 1);
    fabric.assert_calls(&nodes[1], 1);
    fabric.assert_calls(&impostor, 0);
}

pub fn a_version_1_c_library_still_loads_and_runs(fabric: Fabric) {
    let v1 = c_functions_v1();
    let mut manifest = example_manifest();
    for name in ["c_echo", "c_reverse", "c_counter", "c_call_echo", "c_process_id", "c_msg_put", "c_msg_get"] {
        manifest.functions.push(spec(name, &v1, None, ExecutionMode::Worker));
    }
    let nodes: Vec<Node> = ["v0", "v1"].iter().map(|id| fabric.process(&manifest, id, SECRET, 2)).collect();
    introduce(&nodes);
    let (mut c0, mut c1) = (client_of(&nodes[0], 0), client_of(&nodes[1], 0));
    assert_eq!(c0.invoke("c_echo", b"built against v1").unwrap(), b"built against v1");
    assert_eq!(c0.invoke("c_reverse", b"abc").unwrap(), b"cba");
    assert_eq!(c0.invoke("c_process_id", b"").unwrap(), b"v0");
    assert_eq!(c0.invoke("c_call_echo", b"local").unwrap(), b"local");
    assert_eq!(c0.invoke("c_msg_put", b"v1 k from a v1 library").unwrap(), b"stored");
    assert_eq!(c1.invoke("c_msg_get", b"* k 1000").unwrap(), b"v0 from a v1 library");
    // The v1 library has no remote entries (a function of it that would call one does not
    // load); a v2 function beside it calls into it remotely.
    let mut remote = Manifest { functions: Vec::new(), ..example_manifest() };
    remote.functions.push(spec("c_remote_call", &v1, None, ExecutionMode::Worker));
    let err = FunctionRegistry::load(&remote).expect_err("the v1 library has no c_remote_call");
    assert!(err.to_string().contains("no symbol \"c_remote_call\""), "{err}");
    assert_eq!(c1.invoke("remote_call", &call_input("v0", "c_reverse", b"xyz")).unwrap(), b"zyx");
    fabric.assert_calls(&nodes[1], 1);
}
