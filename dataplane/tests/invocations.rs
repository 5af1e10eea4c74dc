//! Invocations over real sockets against a real process loading real shared libraries, on both
//! transports (`mio::*` and `uring::*`).

#[macro_use]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use praas_dataplane::function::{ExecutionMode, Manifest};
use praas_dataplane::protocol::{decode_frame, Decoded, FrameLimits, Header, MessageKind, HEADER_LEN};
use praas_dataplane::transport::TransportKind;
use praas_dataplane::{
    Client, ClientError, ClientOptions, FunctionRegistry, Process, ProcessConfig, ServerHandle, Status,
};
use praas_testkit::pattern;
use praas_testkit::{c_functions, example_functions, example_manifest, serve_on, spec};

fn config(workers: usize) -> ProcessConfig {
    ProcessConfig { id: "test-process".into(), workers, ..ProcessConfig::default() }
}

fn start(kind: TransportKind, workers: usize) -> (Arc<Process>, ServerHandle) {
    serve_on(kind, &example_manifest(), config(workers))
}

fn options(kind: TransportKind) -> ClientOptions {
    ClientOptions { transport: kind, ..ClientOptions::default() }
}

fn client(kind: TransportKind, server: &ServerHandle) -> Client {
    let options = ClientOptions { timeout: Duration::from_secs(30), transport: kind, ..ClientOptions::default() };
    Client::connect_with(server.local_addr(), options).expect("connect")
}

/// A client whose invocations carry a deadline of `ms` milliseconds.
fn client_with_deadline(kind: TransportKind, server: &ServerHandle, ms: u32) -> Client {
    let options = ClientOptions {
        invocation_timeout_ms: ms,
        timeout: Duration::from_secs(30),
        transport: kind,
        ..ClientOptions::default()
    };
    Client::connect_with(server.local_addr(), options).expect("connect")
}

fn remote_status(err: ClientError) -> (Status, String) {
    match err {
        ClientError::Remote { status, message } => (status, message),
        other => panic!("expected an error response, got {other:?}"),
    }
}

fn hundred_clients_each_pipelining_a_thousand_invocations(kind: TransportKind) {
    let (_process, server) = start(kind, 2);
    let addr = server.local_addr();
    let threads: Vec<_> = (0..100u64)
        .map(|c| {
            thread::spawn(move || {
                let options =
                    ClientOptions { timeout: Duration::from_secs(60), transport: kind, ..ClientOptions::default() };
                let mut client = Client::connect_with(addr, options).expect("connect");
                // Half the clients go through the worker pool, so responses come back out of order.
                let function = if c % 2 == 0 { "echo" } else { "echo_worker" };
                let inputs: Vec<Vec<u8>> = (0..1000u64).map(|i| pattern(8 + (i % 57) as usize, c * 1000 + i)).collect();
                let mut ids = std::collections::HashMap::new();
                for (i, input) in inputs.iter().enumerate() {
                    let id = client.submit(function, input).expect("submit");
                    ids.insert(id, i);
                }
                for _ in 0..inputs.len() {
                    let completion = client.recv().expect("a response");
                    let i = ids.remove(&completion.id).expect("a response to an id we sent, once");
                    assert_eq!(completion.result.expect("echo succeeds"), inputs[i], "client {c} invocation {i}");
                }
                assert!(ids.is_empty());
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

fn payloads_from_zero_bytes_to_sixteen_mib_are_byte_exact(kind: TransportKind) {
    let (process, server) = start(kind, 2);
    let mut client = client(kind, &server);
    let sizes = [0, 1, 23, 24, 25, 4095, 4096, 4097, 65_535, 65_536, 65_537, 1 << 20, (16 << 20) - 100, 16 << 20];
    for function in ["echo", "echo_worker"] {
        for (n, &size) in sizes.iter().enumerate() {
            let input = pattern(size, n as u64);
            let output = client.invoke(function, &input).unwrap_or_else(|e| panic!("{function} {size}: {e}"));
            assert!(output == input, "{function} of {size} bytes came back different");
        }
    }
    // Pipelined large and small invocations interleave correctly.
    let inputs: Vec<Vec<u8>> = (0..6).map(|i| pattern(if i % 2 == 0 { 3 << 20 } else { 10 }, 100 + i)).collect();
    let ids: Vec<u64> = inputs.iter().map(|input| client.submit("echo", input).expect("submit")).collect();
    for (id, input) in ids.iter().zip(&inputs) {
        assert!(client.wait(*id).expect("echo") == *input);
    }
    // A generated 16 MiB output grows the output buffer inside the function.
    let output = client.invoke("generate", (16u32 << 20).to_string().as_bytes()).expect("generate");
    assert_eq!(output.len(), 16 << 20);
    assert!(output.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    drop(client);
    // Every buffer went back to the pool except the connection's read chunk (and none leaked).
    let deadline = Instant::now() + Duration::from_secs(5);
    while process.pool().outstanding() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(process.pool().outstanding(), 0, "buffers still handed out after the client left");
}

fn unknown_function_is_an_error_that_names_it(kind: TransportKind) {
    let (_process, server) = start(kind, 1);
    let mut client = client(kind, &server);
    let (status, message) = remote_status(client.invoke("no_such_function", b"x").unwrap_err());
    assert_eq!(status, Status::UnknownFunction);
    assert!(message.contains("no_such_function") && message.contains("echo"), "{message}");
    assert_eq!(client.invoke("echo", b"still here").unwrap(), b"still here");
}

fn a_panicking_function_fails_its_invocation_only(kind: TransportKind) {
    let (process, server) = start(kind, 1);
    let mut client = client(kind, &server);
    let (status, message) = remote_status(client.invoke("panic", b"on purpose").unwrap_err());
    assert_eq!(status, Status::Panicked);
    assert!(message.contains("on purpose"), "{message}");
    let (status, message) = remote_status(client.invoke("fail", b"reported failure").unwrap_err());
    assert_eq!((status, message.as_str()), (Status::FunctionFailed, "reported failure"));
    // The same worker serves the next invocation, on the same connection and on a new one.
    assert_eq!(client.invoke("echo_worker", b"after").unwrap(), b"after");
    let mut other = Client::connect_with(server.local_addr(), options(kind)).unwrap();
    assert_eq!(other.invoke("counter", b"").unwrap(), b"1");
    assert!(process.metrics().invocations() >= 4);
}

fn an_oversized_frame_closes_only_its_connection(kind: TransportKind) {
    let max_frame = 1 << 20;
    let (_process, server) = serve_on(kind, &example_manifest(), ProcessConfig { max_frame, ..config(1) });
    let mut bystander = client(kind, &server);
    assert_eq!(bystander.invoke("echo", b"before").unwrap(), b"before");

    // A raw peer announces a frame over the limit and starts sending it.
    let mut raw = TcpStream::connect(server.local_addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let header = Header::invoke(77, 4, 0, (max_frame + 1) as u32).encode();
    raw.write_all(&header).unwrap();
    raw.write_all(b"echo").unwrap();
    let _ = raw.write_all(&vec![0u8; 64 << 10]);
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    let Ok(Decoded::Frame(frame, _)) = decode_frame(&answer, FrameLimits::default()) else {
        panic!("expected an error response before the close, got {} bytes", answer.len());
    };
    assert_eq!(frame.header.kind, MessageKind::Response);
    assert_eq!(frame.header.id, 77);
    assert_eq!(Status::from_code(frame.header.status), Status::TooLarge);
    assert!(String::from_utf8_lossy(frame.meta).contains("exceeds the limit"));

    // The SDK refuses such a request itself, and the bystander never noticed.
    let options = ClientOptions { max_frame, transport: kind, ..ClientOptions::default() };
    let mut sdk = Client::connect_with(server.local_addr(), options).unwrap();
    assert!(matches!(sdk.invoke("echo", &vec![0; max_frame]), Err(ClientError::TooLarge { .. })));
    assert_eq!(bystander.invoke("echo_worker", b"after").unwrap(), b"after");
}

fn garbage_on_a_socket_does_not_hurt_the_process(kind: TransportKind) {
    let (_process, server) = start(kind, 1);
    for seed in 0..20u64 {
        let mut raw = TcpStream::connect(server.local_addr()).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut garbage = pattern(3 + (seed as usize * 97) % 3000, seed);
        if seed % 4 == 0 {
            // A valid magic and version with a bad kind, or a truncated valid frame.
            garbage[..3].copy_from_slice(b"PR\x01");
        }
        let _ = raw.write_all(&garbage);
        if seed % 2 == 0 {
            // Half the peers hang up at once, mid-frame.
            drop(raw);
        } else {
            let _ = raw.shutdown(std::net::Shutdown::Write);
            let mut answer = Vec::new();
            let _ = raw.read_to_end(&mut answer);
            if let Ok(Decoded::Frame(frame, _)) = decode_frame(&answer, FrameLimits::default()) {
                assert_ne!(Status::from_code(frame.header.status), Status::Ok);
            }
        }
        let mut next = client(kind, &server);
        assert_eq!(next.invoke("echo", b"next client").unwrap(), b"next client", "after garbage seed {seed}");
    }
}

fn a_peer_that_dies_mid_frame_leaves_the_process_serving(kind: TransportKind) {
    let (process, server) = start(kind, 1);
    let mut raw = TcpStream::connect(server.local_addr()).unwrap();
    let header = Header::invoke(1, 4, 0, 1 << 20).encode();
    raw.write_all(&header).unwrap();
    raw.write_all(b"echo").unwrap();
    raw.write_all(&[1u8; 100_000]).unwrap();
    drop(raw);
    let mut next = client(kind, &server);
    assert_eq!(next.invoke("echo_worker", b"ok").unwrap(), b"ok");
    drop(next);
    let deadline = Instant::now() + Duration::from_secs(5);
    while process.pool().outstanding() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(process.pool().outstanding(), 0, "the dead peer's half-read frame leaked its buffer");
}

fn state_is_shared_across_invocations_and_clients(kind: TransportKind) {
    let (process, server) = start(kind, 2);
    let mut a = client(kind, &server);
    let mut b = client(kind, &server);
    assert_eq!(a.invoke("state_put", b"greeting=hello").unwrap(), b"stored");
    assert_eq!(b.invoke("state_get", b"greeting").unwrap(), b"hello");
    assert_eq!(b.invoke("state_put", b"greeting=bonjour").unwrap(), b"stored");
    assert_eq!(a.invoke("state_get", b"greeting").unwrap(), b"bonjour");
    for expected in 1..=5 {
        let client = if expected % 2 == 0 { &mut a } else { &mut b };
        assert_eq!(client.invoke("counter", b"").unwrap(), expected.to_string().as_bytes());
    }
    let keys = String::from_utf8(a.invoke("state_keys", b"").unwrap()).unwrap();
    let names: Vec<&str> = keys.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(names, ["counter", "greeting"]);
    assert_eq!(b.invoke("state_delete", b"greeting").unwrap(), b"deleted");
    assert_eq!(b.invoke("state_delete", b"greeting").unwrap(), b"absent");
    let (status, _) = remote_status(a.invoke("state_get", b"greeting").unwrap_err());
    assert_eq!(status, Status::NotFound);
    assert_eq!(process.state().len(), 1);
}

fn local_invocations_nest_three_deep_with_one_busy_worker(kind: TransportKind) {
    let (process, server) = start(kind, 1);
    let mut clients: Vec<Client> = (0..4).map(|_| client(kind, &server)).collect();
    // Several nested invocations queue for the single worker at once; each runs its callees on
    // its own thread, so none waits for a worker that is busy with its caller.
    let ids: Vec<(usize, u64)> =
        clients.iter_mut().enumerate().map(|(i, c)| (i, c.submit("nest", b"3").unwrap())).collect();
    for (i, id) in ids {
        let output = clients[i].wait(id).unwrap();
        assert_eq!(output, b"nest(3)[nest(2)[nest(1)[leaf@test-process]]]");
    }
    assert_eq!(clients[0].invoke("call", b"process_id").unwrap(), b"test-process");
    let (status, message) = remote_status(clients[0].invoke("call", b"missing").unwrap_err());
    assert_eq!(status, Status::UnknownFunction, "{message}");
    let (status, message) = remote_status(clients[0].invoke("nest", b"100").unwrap_err());
    assert_eq!(status, Status::InvalidArgument, "{message}");
    assert!(process.metrics().local_invocations() >= 12);
}

fn an_invocation_past_its_deadline_times_out_and_the_process_goes_on(kind: TransportKind) {
    let (_process, server) = start(kind, 2);
    let mut client = client_with_deadline(kind, &server, 200);
    let started = Instant::now();
    let (status, message) = remote_status(client.invoke("sleep", b"3000").unwrap_err());
    assert_eq!(status, Status::Timeout, "{message}");
    assert!(started.elapsed() < Duration::from_millis(2500), "the timeout came after the function finished");
    // The other worker serves meanwhile.
    assert_eq!(client.invoke("echo_worker", b"alive").unwrap(), b"alive");
    assert_eq!(client.invoke("sleep", b"1").unwrap(), b"slept");
}

fn an_inline_invocation_past_its_deadline_is_answered_timeout_and_counted(kind: TransportKind) {
    // Inline invocations are timed on the cheap clock (praas_dataplane::clock): their deadline,
    // the process's metrics and the deadline a local invocation inherits come from it.
    let lib = example_functions();
    let mut manifest = example_manifest();
    manifest.functions.push(spec("inline_sleep", &lib, Some("sleep"), ExecutionMode::Inline));
    manifest.functions.push(spec("inline_call", &lib, Some("call"), ExecutionMode::Inline));
    let (process, server) = serve_on(kind, &manifest, config(1));
    let mut client = client_with_deadline(kind, &server, 100);
    let wall = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let before = wall(std::time::SystemTime::now());
    let (status, message) = remote_status(client.invoke("inline_sleep", b"250").unwrap_err());
    assert_eq!(status, Status::Timeout, "{message}");
    assert!(message.contains("past its deadline"), "{message}");
    let after = wall(std::time::SystemTime::now());
    let metrics = process.metrics();
    assert_eq!(metrics.invocations(), 1);
    assert!(metrics.compute_ns() >= 249_000_000, "ran 250 ms, counted {} ns", metrics.compute_ns());
    assert!(metrics.compute_ns() < after - before + 1_000_000, "counted {} ns", metrics.compute_ns());
    let last = metrics.last_invocation_ns();
    assert!(last >= before && last <= after + 1_000_000, "{before} <= {last} <= {after}");
    // Within its deadline, an inline function runs, and so does what it invokes locally.
    assert_eq!(client.invoke("inline_sleep", b"1").unwrap(), b"slept");
    assert_eq!(client.invoke("inline_call", b"echo").unwrap(), b"");
    assert_eq!(metrics.invocations(), 3);
}

fn the_client_times_out_and_its_connection_stays_usable(kind: TransportKind) {
    let (_process, server) = start(kind, 2);
    let options = ClientOptions { timeout: Duration::from_millis(300), transport: kind, ..ClientOptions::default() };
    let mut client = Client::connect_with(server.local_addr(), options).unwrap();
    let slow = client.submit("sleep", b"800").unwrap();
    assert!(matches!(client.wait(slow), Err(ClientError::Timeout(_))));
    client.set_timeout(Duration::from_secs(10));
    assert_eq!(client.wait(slow).unwrap(), b"slept", "the late response is still delivered");
    assert_eq!(client.invoke("echo", b"then").unwrap(), b"then");
}

fn a_spinning_client_is_answered_in_order_and_still_times_out(kind: TransportKind) {
    let (_process, server) = start(kind, 2);
    let options = ClientOptions {
        timeout: Duration::from_millis(300),
        transport: kind,
        spin: Duration::from_micros(200),
        ..ClientOptions::default()
    };
    let mut client = Client::connect_with(server.local_addr(), options).unwrap();
    for i in 0..200u32 {
        let input = pattern(1 + (i as usize * 97) % 70_000, u64::from(i));
        assert!(client.invoke("echo", &input).unwrap() == input, "round trip {i}");
    }
    // Answers that come after the spin are waited for, blocking, as before.
    assert_eq!(client.invoke("sleep", b"20").unwrap(), b"slept");
    // The deadline holds whether the wait spins or blocks.
    let started = Instant::now();
    let slow = client.submit("sleep", b"800").unwrap();
    assert!(matches!(client.wait(slow), Err(ClientError::Timeout(_))));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_millis(790), "waited {waited:?}");
    client.set_timeout(Duration::from_secs(10));
    assert_eq!(client.wait(slow).unwrap(), b"slept");
}

fn c_functions_run_through_the_header_abi(kind: TransportKind) {
    let c = c_functions();
    let rust = example_functions();
    let mut manifest = Manifest { swap_in_on_call: true, functions: Vec::new(), base_dir: Default::default() };
    for name in ["c_echo", "c_reverse", "c_counter", "c_call_echo", "c_fail", "c_process_id"] {
        manifest.functions.push(spec(name, &c, None, ExecutionMode::Worker));
    }
    manifest.functions.push(spec("echo", &rust, None, ExecutionMode::Inline));
    let (_process, server) = serve_on(kind, &manifest, config(1));
    let mut client = client(kind, &server);
    let big = pattern(3 << 20, 9);
    assert!(client.invoke("c_echo", &big).unwrap() == big);
    assert_eq!(client.invoke("c_reverse", b"abcdef").unwrap(), b"fedcba");
    assert_eq!(client.invoke("c_counter", b"").unwrap(), b"1");
    assert_eq!(client.invoke("c_counter", b"").unwrap(), b"2");
    assert_eq!(client.invoke("c_call_echo", b"through echo").unwrap(), b"through echo");
    let (status, message) = remote_status(client.invoke("c_fail", b"").unwrap_err());
    assert_eq!((status, message.as_str()), (Status::FunctionFailed, "c_fail was asked to fail"));
    assert_eq!(client.invoke("c_process_id", b"").unwrap(), b"test-process");
}

#[test]
fn a_missing_symbol_is_refused_at_load_naming_it() {
    let lib = example_functions();
    let manifest = Manifest {
        swap_in_on_call: true,
        functions: vec![spec("ghost", &lib, Some("no_such_symbol"), ExecutionMode::Worker)],
        base_dir: Default::default(),
    };
    let err = FunctionRegistry::load(&manifest).unwrap_err().to_string();
    assert!(err.contains("ghost") && err.contains("no_such_symbol"), "{err}");
}

fn ping_is_answered_with_pong(kind: TransportKind) {
    let (_process, server) = start(kind, 1);
    let mut raw = TcpStream::connect(server.local_addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut frame = Vec::new();
    let ping = Header { kind: MessageKind::Ping, meta_len: 0, status: 0, id: 5, timeout_ms: 0, payload_len: 0 };
    praas_dataplane::protocol::encode_frame(&mut frame, ping, b"", b"are you there").unwrap();
    raw.write_all(&frame).unwrap();
    let mut answer = vec![0u8; HEADER_LEN + 13];
    raw.read_exact(&mut answer).unwrap();
    let Ok(Decoded::Frame(pong, _)) = decode_frame(&answer, FrameLimits::default()) else { panic!("no pong") };
    assert_eq!((pong.header.kind, pong.header.id, pong.payload), (MessageKind::Pong, 5, &b"are you there"[..]));
}

/// A request whose function name carries NUL padding runs that function; a large response comes
/// with padding that aligns its payload, and a small one without.
fn padding_is_not_part_of_names_and_aligns_large_outputs(kind: TransportKind) {
    let (_process, server) = start(kind, 1);
    let mut raw = TcpStream::connect(server.local_addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (id, size) in [(1u64, 100usize), (2, 1 << 20)] {
        let input = pattern(size, id);
        let mut frame = Vec::new();
        let header = Header::invoke(id, 0, 0, 0);
        praas_dataplane::protocol::encode_frame(&mut frame, header, b"echo\0\0\0\0\0\0\0", &input).unwrap();
        raw.write_all(&frame).unwrap();
        let mut head = [0u8; HEADER_LEN];
        raw.read_exact(&mut head).unwrap();
        let header = Header::decode(&head, FrameLimits::default()).unwrap();
        assert_eq!((header.kind, header.id, header.status), (MessageKind::Response, id, 0), "{header:?}");
        let mut body = vec![0u8; header.body_len()];
        raw.read_exact(&mut body).unwrap();
        let (meta, output) = body.split_at(header.meta_len as usize);
        assert!(output == &input[..], "the echo of {size} bytes differs");
        assert!(meta.iter().all(|&b| b == 0), "only padding in a successful response's metadata");
        if size >= praas_dataplane::protocol::ALIGN_FROM {
            assert!(meta.len() < praas_dataplane::protocol::PAYLOAD_ALIGN, "{} bytes of padding", meta.len());
        } else {
            assert!(meta.is_empty(), "small outputs are not padded");
        }
    }
    // The SDK pads large requests itself and strips the padding of answers.
    let mut c = client(kind, &server);
    for size in [(16 << 10) - 1, 16 << 10, (1 << 20) + 3] {
        let input = pattern(size, 9);
        assert!(c.invoke("echo", &input).unwrap() == input, "{size} bytes through the SDK");
    }
    let (status, text) = remote_status(c.invoke("nope", &pattern(1 << 20, 1)).unwrap_err());
    assert_eq!(status, Status::UnknownFunction);
    assert!(text.contains("\"nope\"") && !text.contains('\0'), "{text:?}");

    // At the frame limit, padding is left out rather than taking a frame past it.
    let limit = 1 << 20;
    let config = ProcessConfig { max_frame: limit, ..config(1) };
    let (_process, server) = serve_on(kind, &example_manifest(), config);
    let options = ClientOptions { max_frame: limit, ..options(kind) };
    let mut c = Client::connect_with(server.local_addr(), options).expect("connect");
    for size in [limit - 4, limit - 4 - 30, limit - 4 - 63] {
        let input = pattern(size, size as u64);
        let output = c.invoke("echo", &input).unwrap_or_else(|e| panic!("{size} bytes at a limit of {limit}: {e}"));
        assert!(output == input, "{size} bytes byte-exact");
    }
    assert!(matches!(c.invoke("echo", &pattern(limit - 3, 0)), Err(ClientError::TooLarge { .. })));
}

on_both_transports!(
    padding_is_not_part_of_names_and_aligns_large_outputs,
    hundred_clients_each_pipelining_a_thousand_invocations,
    payloads_from_zero_bytes_to_sixteen_mib_are_byte_exact,
    unknown_function_is_an_error_that_names_it,
    a_panicking_function_fails_its_invocation_only,
    an_oversized_frame_closes_only_its_connection,
    garbage_on_a_socket_does_not_hurt_the_process,
    a_peer_that_dies_mid_frame_leaves_the_process_serving,
    state_is_shared_across_invocations_and_clients,
    local_invocations_nest_three_deep_with_one_busy_worker,
    an_invocation_past_its_deadline_times_out_and_the_process_goes_on,
    an_inline_invocation_past_its_deadline_is_answered_timeout_and_counted,
    the_client_times_out_and_its_connection_stays_usable,
    a_spinning_client_is_answered_in_order_and_still_times_out,
    c_functions_run_through_the_header_abi,
    ping_is_answered_with_pong,
);
