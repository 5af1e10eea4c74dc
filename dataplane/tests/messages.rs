//! Messages between real processes over real sockets: put/get, ordering, authentication, and the
//! errors a sender meets (unknown, dead, silent, swapped-out peers).

#[macro_use]
mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use praas_dataplane::auth;
use praas_dataplane::function::ExecutionMode;
use praas_dataplane::lifecycle::ProcessStatus;
use praas_dataplane::mailbox::{Mailbox, MailboxError};
use praas_dataplane::peer::{PeerError, PeerInfo};
use praas_dataplane::protocol::{encode_frame, Header, MessageKind, HEADER_LEN};
use praas_dataplane::swap::SwapStore;
use praas_dataplane::transport::TransportKind;
use praas_dataplane::{Client, ClientError, ClientOptions, Process, ProcessConfig, Secret, Status};
use praas_testkit::cluster::{introduce, remote_error, Node};
use praas_testkit::{c_functions, example_manifest, linux, spec, wait_until};

const APP: &str = "ring-app";
const SECRET: &str = "a secret only ring-app's processes know";
const LONG: Duration = Duration::from_secs(30);

fn config(id: &str, app: &str, secret: &str) -> ProcessConfig {
    ProcessConfig {
        id: id.into(),
        app: app.into(),
        secret: Secret::new(secret).ok(),
        workers: 4,
        ..ProcessConfig::default()
    }
}

/// A process of the ring's application.
fn start(kind: TransportKind, id: &str, app: &str, secret: &str) -> Node {
    Node::start(kind, &example_manifest(), config(id, app, secret))
}

/// A client of `node` with long timeouts.
fn client(node: &Node) -> Client {
    let options = ClientOptions { timeout: LONG, ..ClientOptions::default() };
    Client::connect_with(node.server.local_addr(), options).expect("connect")
}

/// Processes of one application that know each other, as the control plane would tell them.
fn cluster(kind: TransportKind, ids: &[&str]) -> Vec<Node> {
    let nodes: Vec<Node> = ids.iter().map(|id| start(kind, id, APP, SECRET)).collect();
    introduce(&nodes);
    nodes
}

fn ten_thousand_messages_go_around_a_ring_in_order_per_key(kind: TransportKind) {
    const KEYS: usize = 4;
    const PER_KEY: usize = 2500;
    let nodes = cluster(kind, &["p0", "p1", "p2"]);
    let procs: Vec<Arc<Process>> = nodes.iter().map(|n| Arc::clone(&n.process)).collect();
    let started = Instant::now();
    praas_testkit::message_ring(&procs, KEYS, PER_KEY, LONG);
    for process in &procs {
        assert!(process.mailbox().is_empty(), "{} has undelivered messages", process.id());
    }
    eprintln!("{} messages, 3 hops each, in {:?}", KEYS * PER_KEY, started.elapsed());
}

fn same_key_is_queued_not_dropped_and_put_returns_once_stored(kind: TransportKind) {
    let nodes = cluster(kind, &["a0", "a1"]);
    let (sender, receiver) = (&nodes[0].process, &nodes[1].process);
    for (n, text) in ["first", "second", "third"].iter().enumerate() {
        sender.peers().put("a1", "same", text.as_bytes(), LONG).unwrap();
        // Stored before put returned: no waiting needed to see it.
        assert_eq!(receiver.mailbox().len(), n + 1);
    }
    // Messages and state never collide.
    assert!(receiver.state().get("same").is_none());
    for text in ["first", "second", "third"] {
        assert_eq!(receiver.mailbox().get(Some("a0"), "same", Duration::ZERO).unwrap(), ("a0".into(), text.into()));
    }
    // A put to itself is a local put.
    sender.peers().put("a0", "self", b"me", LONG).unwrap();
    assert_eq!(sender.mailbox().get(Some("a0"), "self", Duration::ZERO).unwrap().1, b"me");
    // Empty messages and a large one.
    let big: Vec<u8> = (0..5 << 20).map(|i: u32| (i % 251) as u8).collect();
    sender.peers().put("a1", "big", b"", LONG).unwrap();
    sender.peers().put("a1", "big", &big, LONG).unwrap();
    assert_eq!(receiver.mailbox().get(None, "big", Duration::ZERO).unwrap().1, b"");
    assert_eq!(receiver.mailbox().get(None, "big", Duration::ZERO).unwrap().1, big);
}

fn get_times_out_and_takes_from_any_source_oldest_first(kind: TransportKind) {
    let nodes = cluster(kind, &["b0", "b1", "b2"]);
    let mailbox = nodes[1].process.mailbox();
    let started = Instant::now();
    let err = mailbox.get(None, "nothing", Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, MailboxError::Timeout { .. }), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(100) && started.elapsed() < Duration::from_secs(5));
    nodes[0].process.peers().put("b1", "k", b"from b0", LONG).unwrap();
    nodes[2].process.peers().put("b1", "k", b"from b2", LONG).unwrap();
    assert_eq!(mailbox.get(None, "k", LONG).unwrap(), ("b0".into(), b"from b0".to_vec()));
    assert_eq!(mailbox.get(None, "k", LONG).unwrap(), ("b2".into(), b"from b2".to_vec()));
    // A get waiting for a source is woken by that source only.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let waiter = {
        let process = Arc::clone(&nodes[1].process);
        thread::spawn(move || {
            tid_tx.send(linux::current_tid()).unwrap();
            process.mailbox().get(Some("b2"), "later", LONG)
        })
    };
    let waiter_tid = tid_rx.recv().unwrap();
    let asleep = || linux::thread_state(std::process::id(), waiter_tid) == Some('S');
    wait_until(LONG, "the get for b2's message to wait", asleep);
    nodes[0].process.peers().put("b1", "later", b"not this", LONG).unwrap();
    // Whether or not b0's message woke it, the get waits on for b2's.
    wait_until(LONG, "the get for b2's message to wait again after b0's arrived", asleep);
    assert!(!waiter.is_finished(), "the get for b2's message returned on b0's");
    nodes[2].process.peers().put("b1", "later", b"this", LONG).unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), ("b2".into(), b"this".to_vec()));
    assert_eq!(mailbox.get(Some("b0"), "later", Duration::ZERO).unwrap().1, b"not this", "b0's message kept");
}

fn a_process_of_another_application_or_with_a_wrong_secret_is_refused(kind: TransportKind) {
    let nodes = cluster(kind, &["c0", "c1"]);
    let target = nodes[1].info();
    for (app, secret, id) in [("other-app", "other secret", "intruder"), (APP, "a guessed secret", "c0")] {
        let intruder = start(kind, id, app, secret);
        intruder.process.peers().update(vec![target.clone()]);
        let err = intruder.process.peers().put("c1", "k", b"let me in", LONG).unwrap_err();
        assert!(matches!(err, PeerError::Unauthenticated { .. }), "{app}/{id}: {err}");
        assert_eq!(err.status(), Status::Unauthenticated);
        eprintln!("{app}/{id} with a wrong secret: {err}");
    }
    assert!(nodes[1].process.mailbox().is_empty());
    // The members themselves still talk.
    nodes[0].process.peers().put("c1", "k", b"member", LONG).unwrap();
    assert_eq!(nodes[1].process.mailbox().len(), 1);
}

/// A raw connection that speaks the handshake by hand, to send what a real process never would.
struct Raw(TcpStream);

impl Raw {
    fn connect(node: &Node) -> Self {
        let stream = TcpStream::connect(node.server.local_addr()).unwrap();
        stream.set_read_timeout(Some(LONG)).unwrap();
        Self(stream)
    }

    fn send(&mut self, kind: MessageKind, id: u64, meta: &[u8], payload: &[u8]) {
        self.send_all(&[(kind, id, meta, payload)]);
    }

    /// Sends frames in one write (the process may close the connection after the first: a
    /// second write would fail).
    fn send_all(&mut self, frames: &[(MessageKind, u64, &[u8], &[u8])]) {
        let mut bytes = Vec::new();
        for &(kind, id, meta, payload) in frames {
            let header = Header { kind, meta_len: 0, status: 0, id, timeout_ms: 0, payload_len: 0 };
            encode_frame(&mut bytes, header, meta, payload).unwrap();
        }
        self.0.write_all(&bytes).unwrap();
    }

    fn recv(&mut self) -> (Header, Vec<u8>, Vec<u8>) {
        let mut head = [0u8; HEADER_LEN];
        self.0.read_exact(&mut head).unwrap();
        let header = Header::decode(&head, Default::default()).unwrap();
        let mut meta = vec![0u8; header.meta_len as usize];
        self.0.read_exact(&mut meta).unwrap();
        let mut payload = vec![0u8; header.payload_len as usize];
        self.0.read_exact(&mut payload).unwrap();
        (header, meta, payload)
    }

    /// A connection to `node` that proved, by hand, to be process `me` of the application.
    fn authenticated(node: &Node, me: &str) -> Self {
        let mut raw = Raw::connect(node);
        let who = format!("{APP}/{me}");
        let nonce_a = auth::nonce();
        raw.send(MessageKind::Hello, 1, who.as_bytes(), &nonce_a);
        let (_, _, payload) = raw.recv();
        let (nonce_b, proof_b) = payload.split_at(auth::NONCE_LEN);
        assert!(auth::verify(SECRET, &[&b"praas-server"[..], &nonce_a].concat(), APP, node.process.id(), proof_b));
        let proof = auth::proof(SECRET, &[&b"praas-client"[..], nonce_b].concat(), APP, me);
        raw.send(MessageKind::Hello, 2, who.as_bytes(), &proof);
        assert_eq!(raw.recv().0.status, 0);
        raw
    }

    /// Whether the process closed the connection (reads end, or it reset the connection because
    /// bytes came after it closed) instead of serving on.
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.0.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

fn the_accepting_side_refuses_bad_proofs_and_unauthenticated_messages(kind: TransportKind) {
    let nodes = cluster(kind, &["d0", "d1"]);
    let node = &nodes[1];
    // A message without a handshake: refused, connection closed.
    let mut raw = Raw::connect(node);
    raw.send(MessageKind::Message, 5, b"k", b"sneaky");
    let (header, meta, _) = raw.recv();
    assert_eq!((header.kind, header.id, header.status), (MessageKind::MessageAck, 5, Status::Unauthenticated.code()));
    assert!(String::from_utf8_lossy(&meta).contains("same application"), "{}", String::from_utf8_lossy(&meta));
    assert!(raw.closed());

    // The right application's name, a proof made with the wrong secret: refused after the challenge.
    let mut raw = Raw::connect(node);
    raw.send(MessageKind::Hello, 1, format!("{APP}/d0").as_bytes(), &auth::nonce());
    let (header, meta, payload) = raw.recv();
    assert_eq!((header.kind, header.status), (MessageKind::Hello, 0));
    assert_eq!(meta, format!("{APP}/d1").as_bytes());
    let mut nonce = b"praas-client".to_vec();
    nonce.extend_from_slice(&payload[..auth::NONCE_LEN]);
    raw.send(MessageKind::Hello, 2, format!("{APP}/d0").as_bytes(), &auth::proof("wrong", &nonce, APP, "d0"));
    let (header, meta, _) = raw.recv();
    assert_eq!((header.kind, header.status), (MessageKind::Hello, Status::Unauthenticated.code()));
    assert!(String::from_utf8_lossy(&meta).contains("did not prove"), "{}", String::from_utf8_lossy(&meta));
    raw.send(MessageKind::Message, 3, b"k", b"after refusal");
    assert!(raw.closed());

    // Another application's name: refused at once.
    let mut raw = Raw::connect(node);
    raw.send(MessageKind::Hello, 1, b"other-app/x", &auth::nonce());
    let (header, _, _) = raw.recv();
    assert_eq!(header.status, Status::Unauthenticated.code());
    assert!(raw.closed());

    // With the right secret, by hand, it works; ordinary invocations on the same port need no Hello.
    let mut raw = Raw::authenticated(node, "d0");
    raw.send(MessageKind::Message, 9, b"k", b"by hand");
    let (header, _, _) = raw.recv();
    assert_eq!((header.kind, header.id, header.status), (MessageKind::MessageAck, 9, 0));
    assert_eq!(node.process.mailbox().get(Some("d0"), "k", Duration::ZERO).unwrap().1, b"by hand");
    assert_eq!(client(node).invoke("echo", b"still serving").unwrap(), b"still serving");
}

/// What a process without a secret answers every handshake with.
const NO_SECRET: &str = "this process has no application secret: it accepts no peer or authenticated client";

fn a_process_without_a_secret_refuses_every_peer_even_one_proving_the_empty_secret(kind: TransportKind) {
    let nodes = cluster(kind, &["n0", "n1"]);
    // The empty secret is no secret (`config` turns "" into `None`).
    let open = start(kind, "n2", APP, "");
    assert!(open.process.config().secret.is_none());
    let everyone: Vec<PeerInfo> = nodes.iter().chain([&open]).map(Node::info).collect();
    for node in nodes.iter().chain([&open]) {
        node.process.peers().update(everyone.clone());
    }

    // A peer that runs the whole handshake with the empty secret, as the process would have
    // accepted before: refused at its first Hello, so it never gets a challenge to answer.
    let mut raw = Raw::connect(&open);
    let nonce_a = auth::nonce();
    raw.send(MessageKind::Hello, 1, format!("{APP}/n0").as_bytes(), &nonce_a);
    let (header, meta, payload) = raw.recv();
    assert_eq!((header.kind, header.status), (MessageKind::Hello, Status::Unauthenticated.code()));
    assert_eq!(String::from_utf8_lossy(&meta), NO_SECRET);
    assert!(payload.is_empty(), "no nonce, no proof derived from the empty secret");
    // It sends its proof and its forged message anyway: nothing is served, the connection closes.
    let proof = auth::proof("", &[&b"praas-client"[..], &auth::nonce()].concat(), APP, "n0");
    let me = format!("{APP}/n0");
    raw.send_all(&[(MessageKind::Hello, 2, me.as_bytes(), &proof), (MessageKind::Message, 3, b"k", b"forged")]);
    assert!(raw.closed());
    // Straight to the message, no handshake: refused as always.
    let mut raw = Raw::connect(&open);
    raw.send(MessageKind::Message, 4, b"k", b"forged");
    assert_eq!(raw.recv().0.status, Status::Unauthenticated.code());
    assert!(raw.closed());
    // A data-plane client with the client key of the empty secret: refused the same way.
    let options = ClientOptions {
        timeout: LONG,
        transport: kind,
        credentials: Some(praas_dataplane::Credentials {
            app: APP.into(),
            name: "c".into(),
            key: auth::client_key(""),
        }),
        ..ClientOptions::default()
    };
    match Client::connect_with(open.server.local_addr(), options) {
        Err(ClientError::Remote { status: Status::Unauthenticated, message }) => assert_eq!(message, NO_SECRET),
        other => panic!("expected an Unauthenticated refusal, got {:?}", other.map(|_| "a client")),
    }
    // A real member, with the real secret, is refused too: the process cannot check its proof.
    let err = nodes[0].process.peers().put("n2", "k", b"from a member", LONG).unwrap_err();
    assert!(matches!(err, PeerError::Unauthenticated { .. }), "{err}");
    assert!(err.to_string().contains(NO_SECRET), "{err}");
    assert!(open.process.mailbox().is_empty(), "nothing was delivered");

    // Nor does it put to anyone: it fails before connecting, and nothing arrives.
    let err = open.process.peers().put("n1", "k", b"from no member", LONG).unwrap_err();
    assert!(matches!(&err, PeerError::NoSecret { dest } if dest == "n1"), "{err}");
    assert_eq!(err.status(), Status::Unauthenticated);
    assert!(nodes[1].process.mailbox().is_empty());
    // Its own mailbox and anonymous invocations need no secret.
    open.process.peers().put("n2", "self", b"mine", LONG).unwrap();
    assert_eq!(open.process.mailbox().len(), 1);
    assert_eq!(client(&open).invoke("echo", b"still serving").unwrap(), b"still serving");

    // The processes with the secret still accept their real peers.
    nodes[0].process.peers().put("n1", "k", b"member", LONG).unwrap();
    assert_eq!(nodes[1].process.mailbox().get(Some("n0"), "k", Duration::ZERO).unwrap().1, b"member");
    nodes[1].process.peers().put("n0", "k", b"back", LONG).unwrap();
    assert_eq!(nodes[0].process.mailbox().get(Some("n1"), "k", Duration::ZERO).unwrap().1, b"back");
}

fn unknown_dead_silent_and_swapped_out_peers_fail_fast_and_clearly(kind: TransportKind) {
    let nodes = cluster(kind, &["e0", "e1"]);
    let sender = Arc::clone(&nodes[0].process);
    let dead_addr = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    // Accepts connections (the kernel does) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peers = vec![nodes[0].info(), nodes[1].info()];
    peers.push(PeerInfo { id: "dead".into(), addr: dead_addr, rdma: None, status: ProcessStatus::Allocated });
    peers.push(PeerInfo {
        id: "silent".into(),
        addr: silent.local_addr().unwrap().to_string(),
        rdma: None,
        status: ProcessStatus::Allocated,
    });
    peers.push(PeerInfo {
        id: "stored".into(),
        addr: "127.0.0.1:1".into(),
        rdma: None,
        status: ProcessStatus::SwappedOut,
    });
    peers.push(PeerInfo {
        id: "booting".into(),
        addr: "127.0.0.1:1".into(),
        rdma: None,
        status: ProcessStatus::Allocating,
    });
    sender.peers().update(peers);

    let started = Instant::now();
    let err = sender.peers().put("nobody", "k", b"x", LONG).unwrap_err();
    assert_eq!(err.status(), Status::NotFound);
    assert_eq!(
        err.to_string(),
        "unknown process \"nobody\": this application's processes are [\"booting\", \"dead\", \"e0\", \"e1\", \"silent\", \"stored\"]"
    );
    let err = sender.peers().put("dead", "k", b"x", LONG).unwrap_err();
    assert!(matches!(err, PeerError::Unreachable { .. }), "{err}");
    assert_eq!(err.status(), Status::Unavailable);
    let err = sender.peers().put("stored", "k", b"x", LONG).unwrap_err();
    assert_eq!(err.to_string(), "process \"stored\" is swapped out: messages to it are refused until it is swapped in");
    assert_eq!(err.status(), Status::Unavailable);
    let err = sender.peers().put("booting", "k", b"x", LONG).unwrap_err();
    assert!(matches!(err, PeerError::NotRunning { status: ProcessStatus::Allocating, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "errors took {:?}", started.elapsed());

    let started = Instant::now();
    let err = sender.peers().put("silent", "k", b"x", Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, PeerError::Timeout { .. }), "{err}");
    assert_eq!(err.status(), Status::Timeout);
    assert!(started.elapsed() < Duration::from_secs(5), "timeout took {:?}", started.elapsed());

    // A peer that stops after a connection to it was cached: the next put says it is unreachable.
    sender.peers().put("e1", "k", b"before", LONG).unwrap();
    let Node { process: _stopped, server, .. } = nodes.into_iter().nth(1).unwrap();
    server.stop().unwrap();
    let started = Instant::now();
    let err = sender.peers().put("e1", "k", b"after", LONG).unwrap_err();
    assert!(matches!(err, PeerError::Unreachable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    eprintln!("{err}");
}

fn a_swapping_process_refuses_puts_and_its_snapshot_keeps_every_message(kind: TransportKind) {
    let nodes = cluster(kind, &["f0", "f1"]);
    let (sender, receiver) = (&nodes[0].process, &nodes[1].process);
    sender.peers().put("f1", "k", b"one", LONG).unwrap();
    sender.peers().put("f1", "k", b"two", LONG).unwrap();
    receiver.mailbox().pause();
    let err = sender.peers().put("f1", "k", b"three", LONG).unwrap_err();
    assert_eq!(err.status(), Status::Overloaded);
    assert!(err.to_string().contains("swapping out"), "{err}");
    let snapshot = receiver.mailbox().snapshot();
    // What swap-in restores: the two stored messages, in order, from their source.
    let restored = Mailbox::restore(&snapshot).unwrap();
    assert_eq!(restored.get(Some("f0"), "k", Duration::ZERO).unwrap().1, b"one");
    assert_eq!(restored.get(Some("f0"), "k", Duration::ZERO).unwrap().1, b"two");
    assert!(restored.is_empty());
    // A swap that failed resumes, and nothing was lost.
    receiver.mailbox().resume();
    sender.peers().put("f1", "k", b"three", LONG).unwrap();
    assert_eq!(receiver.mailbox().len(), 3);
}

fn undelivered_messages_survive_a_swap_through_the_store(kind: TransportKind) {
    let nodes = cluster(kind, &["h0", "h1"]);
    let (sender, receiver) = (&nodes[0].process, &nodes[1].process);
    sender.peers().put("h1", "a", b"a1", LONG).unwrap();
    sender.peers().put("h1", "b", b"b1", LONG).unwrap();
    sender.peers().put("h1", "a", b"a2", LONG).unwrap();
    receiver.peers().put("h1", "a", b"own", LONG).unwrap();
    assert_eq!(receiver.mailbox().get(None, "b", Duration::ZERO).unwrap().1, b"b1"); // delivered: not kept
                                                                                     // Swap out as the control channel does: pause, (drain,) snapshot, write.
    receiver.mailbox().pause();
    assert!(receiver.drain(LONG));
    let dir = std::env::temp_dir().join(format!("praas-messages-swap-{}-{}", kind, std::process::id()));
    let store = SwapStore::new(&dir);
    store.write(APP, "h1", receiver.state(), &receiver.mailbox().snapshot(), None).unwrap();
    let Node { process: _old, server, .. } = nodes.into_iter().nth(1).unwrap();
    server.stop().unwrap();
    // Swap in: a new process of the same id reads them back before serving.
    let snapshot = store.read(APP, "h1").unwrap();
    let fresh = start(kind, "h1", APP, SECRET);
    assert_eq!(fresh.process.restore_mailbox(&snapshot.mailbox), Ok(3));
    let mailbox = fresh.process.mailbox();
    assert_eq!(mailbox.get(None, "a", Duration::ZERO).unwrap(), ("h0".into(), b"a1".to_vec()));
    assert_eq!(mailbox.get(None, "a", Duration::ZERO).unwrap(), ("h0".into(), b"a2".to_vec()));
    assert_eq!(mailbox.get(None, "a", Duration::ZERO).unwrap(), ("h1".into(), b"own".to_vec()));
    assert!(mailbox.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

fn a_get_never_waits_past_the_invocations_deadline(kind: TransportKind) {
    let nodes = cluster(kind, &["i0"]);
    let options = ClientOptions { timeout: LONG, invocation_timeout_ms: 200, ..ClientOptions::default() };
    let mut client = Client::connect_with(nodes[0].server.local_addr(), options).unwrap();
    let started = Instant::now();
    let (status, message) = remote_error(client.invoke("msg_get", b"* never 60000").unwrap_err());
    assert_eq!(status, Status::Timeout, "{message}");
    // The function itself returned at the deadline: its worker is free again (without the cap
    // the get would hold it for a minute).
    while nodes[0].process.in_flight() > 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the get held its worker {:?}", started.elapsed());
        thread::sleep(Duration::from_millis(5));
    }
}

fn functions_put_and_get_through_the_abi_in_rust_and_c(kind: TransportKind) {
    let c = c_functions();
    let mut manifest = example_manifest();
    manifest.functions.push(spec("c_msg_put", &c, None, ExecutionMode::Worker));
    manifest.functions.push(spec("c_msg_get", &c, None, ExecutionMode::Worker));
    manifest.functions.push(spec("inline_put", &c, Some("c_msg_put"), ExecutionMode::Inline));
    manifest.functions.push(spec("inline_get", &c, Some("c_msg_get"), ExecutionMode::Inline));
    let nodes: Vec<Node> =
        ["g0", "g1"].iter().map(|id| Node::start(kind, &manifest, config(id, APP, SECRET))).collect();
    let infos: Vec<PeerInfo> = nodes.iter().map(Node::info).collect();
    for node in &nodes {
        node.process.peers().update(infos.clone());
    }
    let (mut c0, mut c1) = (client(&nodes[0]), client(&nodes[1]));

    // Rust functions.
    assert_eq!(c0.invoke("msg_put", b"g1 k hello world").unwrap(), b"stored");
    assert_eq!(c0.invoke("msg_put", b"g1 k second").unwrap(), b"stored");
    assert_eq!(c1.invoke("msg_get", b"* k 1000").unwrap(), b"g0 hello world");
    assert_eq!(c1.invoke("msg_get", b"g0 k 1000").unwrap(), b"g0 second");
    let (status, message) = remote_error(c1.invoke("msg_get", b"g0 k 50").unwrap_err());
    assert_eq!(status, Status::Timeout);
    assert!(message.contains("no message with key \"k\" from process \"g0\""), "{message}");
    let (status, message) = remote_error(c0.invoke("msg_put", b"nobody k x").unwrap_err());
    assert_eq!(status, Status::NotFound);
    assert!(message.contains("unknown process \"nobody\""), "{message}");
    assert_eq!(c0.invoke("msg_put", b"g0 self to myself").unwrap(), b"stored");
    assert_eq!(c0.invoke("msg_get", b"g0 self 0").unwrap(), b"g0 to myself");

    // C functions, across languages.
    assert_eq!(c0.invoke("c_msg_put", b"g1 ck from C").unwrap(), b"stored");
    assert_eq!(c1.invoke("msg_get", b"* ck 1000").unwrap(), b"g0 from C");
    assert_eq!(c1.invoke("msg_put", b"g0 ck from Rust").unwrap(), b"stored");
    assert_eq!(c0.invoke("c_msg_get", b"* ck 1000").unwrap(), b"g1 from Rust");
    let (status, _) = remote_error(c0.invoke("c_msg_get", b"g1 ck 20").unwrap_err());
    assert_eq!(status, Status::Timeout);

    // A get blocks until the put arrives (a worker waits, the I/O thread serves on).
    let waiter = {
        let addr = nodes[1].server.local_addr();
        thread::spawn(move || {
            let options = ClientOptions { timeout: LONG, ..ClientOptions::default() };
            Client::connect_with(addr, options).unwrap().invoke("msg_get", b"g0 wait 10000")
        })
    };
    wait_until(LONG, "the msg_get on g1 to be in flight", || nodes[1].process.in_flight() == 1);
    assert_eq!(c0.invoke("msg_put", b"g1 wait woke").unwrap(), b"stored");
    assert_eq!(waiter.join().unwrap().unwrap(), b"g0 woke");

    // Inline functions must not block the I/O thread: remote puts and waiting gets are refused,
    // local puts and gets that only look are fine.
    let (status, message) = remote_error(c0.invoke("inline_put", b"g1 k x").unwrap_err());
    assert_eq!(status, Status::Unsupported);
    assert!(message.contains("mode = \"worker\""), "{message}");
    let (status, _) = remote_error(c0.invoke("inline_get", b"* k 10").unwrap_err());
    assert_eq!(status, Status::Unsupported);
    assert_eq!(c0.invoke("inline_put", b"g0 local x").unwrap(), b"stored");
    assert_eq!(c0.invoke("inline_get", b"* local 0").unwrap(), b"g0 x");

    // Nothing left behind.
    let left: HashSet<usize> = nodes.iter().map(|n| n.process.mailbox().len()).collect();
    assert_eq!(left, HashSet::from([0]));
}

/// Starts `get` on a thread of its own and returns once that thread sleeps in it (on mio: in the
/// epoll_wait of a get that reads its own frames; elsewhere on the mailbox's condition variable).
fn waiting_get<T: Send + 'static>(
    kind: TransportKind,
    get: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let getter = thread::spawn(move || {
        tid_tx.send(linux::current_tid()).unwrap();
        get()
    });
    let (pid, tid) = (std::process::id(), tid_rx.recv().unwrap());
    wait_until(LONG, "the get to wait", || {
        let asleep = linux::thread_state(pid, tid) == Some('S');
        asleep && (kind != TransportKind::Mio || linux::wait_channel(pid, tid).is_some_and(|w| w.contains("epoll")))
    });
    getter
}

fn a_waiting_get_receives_its_frames_itself_in_order_and_byte_exact(kind: TransportKind) {
    let nodes = cluster(kind, &["w0", "w1"]);
    let (sender, receiver) = (Arc::clone(&nodes[0].process), Arc::clone(&nodes[1].process));
    // The connection is opened and adopted by a first put.
    sender.peers().put("w1", "warm", b"", LONG).unwrap();
    assert_eq!(receiver.mailbox().get(Some("w0"), "warm", Duration::ZERO).unwrap().1, b"");
    // 0 B to 16 MiB: larger than a read chunk (256 KiB) comes in many reads.
    let sizes = [0usize, 1, 8, 1000, 64 << 10, 300 << 10, 16 << 20];
    for (n, &size) in sizes.iter().enumerate() {
        let before = receiver.mailbox().received_by_gets();
        let getter = {
            let receiver = Arc::clone(&receiver);
            waiting_get(kind, move || receiver.mailbox().get(Some("w0"), "sized", LONG))
        };
        let data = praas_testkit::pattern(size, n as u64);
        sender.peers().put("w1", "sized", &data, LONG).unwrap();
        let (from, got) = getter.join().unwrap().unwrap();
        assert_eq!(from, "w0");
        assert!(got == data, "message {n} of {size} bytes arrived changed");
        if kind == TransportKind::Mio && size <= 1000 {
            // A frame that fits one read arrives whole while the get sleeps: the get, not the
            // I/O thread, is woken for it and stores it.
            assert_eq!(receiver.mailbox().received_by_gets(), before + 1, "{size} B were read by the I/O thread");
        }
    }
    // FIFO per (source, key) while a get waits on a stream of puts.
    let getter = {
        let receiver = Arc::clone(&receiver);
        waiting_get(kind, move || {
            (0..200).map(|_| receiver.mailbox().get(Some("w0"), "fifo", LONG).unwrap().1).collect::<Vec<_>>()
        })
    };
    for i in 0..200u32 {
        sender.peers().put("w1", "fifo", &i.to_le_bytes(), LONG).unwrap();
    }
    let got: Vec<Vec<u8>> = getter.join().unwrap();
    assert_eq!(got, (0..200u32).map(|i| i.to_le_bytes().to_vec()).collect::<Vec<_>>());
    assert!(receiver.mailbox().is_empty());
}

fn concurrent_waiting_gets_on_several_keys_each_take_their_own(kind: TransportKind) {
    let nodes = cluster(kind, &["x0", "x1"]);
    let (sender, receiver) = (Arc::clone(&nodes[0].process), Arc::clone(&nodes[1].process));
    sender.peers().put("x1", "warm", b"", LONG).unwrap();
    const PER_KEY: u32 = 50;
    let getters: Vec<_> = (0..4)
        .map(|k| {
            let receiver = Arc::clone(&receiver);
            waiting_get(kind, move || {
                let key = format!("key{k}");
                (0..PER_KEY).map(|_| receiver.mailbox().get(Some("x0"), &key, LONG).unwrap().1).collect::<Vec<_>>()
            })
        })
        .collect();
    // Keys interleaved, in reverse order of the getters: each frame wakes whichever get waits,
    // which stores it for the get it is meant for.
    for i in 0..PER_KEY {
        for k in (0..4).rev() {
            sender.peers().put("x1", &format!("key{k}"), format!("{k}:{i}").as_bytes(), LONG).unwrap();
        }
    }
    for (k, getter) in getters.into_iter().enumerate() {
        let want: Vec<Vec<u8>> = (0..PER_KEY).map(|i| format!("{k}:{i}").into_bytes()).collect();
        assert_eq!(getter.join().unwrap(), want, "key{k}");
    }
    assert_eq!(receiver.mailbox().len(), 1, "only the warm-up message is left");
}

fn a_get_that_times_out_mid_frame_or_sees_its_peer_die_leaves_the_connection_consistent(kind: TransportKind) {
    let nodes = cluster(kind, &["y0", "y1"]);
    let node = &nodes[1];
    let mut raw = Raw::authenticated(node, "y0");
    // Half a frame arrives while a get waits; the get times out; the rest completes the frame
    // for the next reader, byte-exact, and it is acknowledged.
    let data = praas_testkit::pattern(1 << 20, 7);
    let mut frame = Vec::new();
    let header = Header { kind: MessageKind::Message, meta_len: 0, status: 0, id: 41, timeout_ms: 0, payload_len: 0 };
    encode_frame(&mut frame, header, b"half", &data).unwrap();
    let getter = {
        let process = Arc::clone(&node.process);
        waiting_get(kind, move || process.mailbox().get(Some("y0"), "half", Duration::from_millis(300)))
    };
    let (first, rest) = frame.split_at(frame.len() / 2);
    raw.0.write_all(first).unwrap();
    let err = getter.join().unwrap().unwrap_err();
    assert!(matches!(err, MailboxError::Timeout { .. }), "{err}");
    raw.0.write_all(rest).unwrap();
    let (header, _, _) = raw.recv();
    assert_eq!((header.kind, header.id, header.status), (MessageKind::MessageAck, 41, 0));
    assert!(node.process.mailbox().get(Some("y0"), "half", Duration::ZERO).unwrap().1 == data);

    // The peer dies in the middle of a frame while a get waits: nothing is stored, the get
    // times out, the connection is closed, and messages from the other peer still arrive.
    let getter = {
        let process = Arc::clone(&node.process);
        waiting_get(kind, move || process.mailbox().get(Some("y0"), "dead", Duration::from_millis(300)))
    };
    let mut frame = Vec::new();
    let header = Header { kind: MessageKind::Message, meta_len: 0, status: 0, id: 42, timeout_ms: 0, payload_len: 0 };
    encode_frame(&mut frame, header, b"dead", &data).unwrap();
    raw.0.write_all(&frame[..frame.len() / 3]).unwrap();
    drop(raw);
    assert!(matches!(getter.join().unwrap().unwrap_err(), MailboxError::Timeout { .. }));
    assert!(node.process.mailbox().is_empty());
    wait_until(LONG, "the dead peer's connection to close", || node.process.connections().open() == 0);
    let getter = {
        let process = Arc::clone(&node.process);
        waiting_get(kind, move || process.mailbox().get(Some("y0"), "alive", LONG))
    };
    nodes[0].process.peers().put("y1", "alive", b"still here", LONG).unwrap();
    assert_eq!(getter.join().unwrap().unwrap().1, b"still here");
}

fn a_swap_pause_while_a_get_waits_refuses_puts_until_resumed(kind: TransportKind) {
    let nodes = cluster(kind, &["z0", "z1"]);
    let (sender, receiver) = (Arc::clone(&nodes[0].process), Arc::clone(&nodes[1].process));
    sender.peers().put("z1", "warm", b"", LONG).unwrap();
    let getter = {
        let receiver = Arc::clone(&receiver);
        waiting_get(kind, move || receiver.mailbox().get(Some("z0"), "k", LONG))
    };
    receiver.mailbox().pause();
    // The waiting get reads the frame and refuses it, as the I/O thread would.
    let err = sender.peers().put("z1", "k", b"during the pause", LONG).unwrap_err();
    assert_eq!(err.status(), Status::Overloaded, "{err}");
    assert!(err.to_string().contains("swapping out"), "{err}");
    assert!(!getter.is_finished());
    receiver.mailbox().resume();
    sender.peers().put("z1", "k", b"after", LONG).unwrap();
    assert_eq!(getter.join().unwrap().unwrap().1, b"after");
    assert_eq!(receiver.mailbox().snapshot(), {
        let only_warm = Mailbox::new();
        only_warm.put("z0", "warm", Vec::new()).unwrap();
        only_warm.snapshot()
    });
}

on_both_transports!(
    ten_thousand_messages_go_around_a_ring_in_order_per_key,
    same_key_is_queued_not_dropped_and_put_returns_once_stored,
    get_times_out_and_takes_from_any_source_oldest_first,
    a_process_of_another_application_or_with_a_wrong_secret_is_refused,
    the_accepting_side_refuses_bad_proofs_and_unauthenticated_messages,
    a_process_without_a_secret_refuses_every_peer_even_one_proving_the_empty_secret,
    unknown_dead_silent_and_swapped_out_peers_fail_fast_and_clearly,
    a_swapping_process_refuses_puts_and_its_snapshot_keeps_every_message,
    functions_put_and_get_through_the_abi_in_rust_and_c,
    undelivered_messages_survive_a_swap_through_the_store,
    a_get_never_waits_past_the_invocations_deadline,
    a_waiting_get_receives_its_frames_itself_in_order_and_byte_exact,
    concurrent_waiting_gets_on_several_keys_each_take_their_own,
    a_get_that_times_out_mid_frame_or_sees_its_peer_die_leaves_the_connection_consistent,
    a_swap_pause_while_a_get_waits_refuses_puts_until_resumed,
);
