//! Failure paths of the data-plane transports, each on both transports (`mio::*`, `uring::*`):
//! peers that reset mid-frame, reads and writes cut short, an exhausted buffer pool, and (io_uring
//! only) a submission ring far smaller than the work in flight.

#[macro_use]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use praas_dataplane::protocol::{decode_frame, encode_frame, Decoded, FrameLimits, Header, MessageKind, HEADER_LEN};
use praas_dataplane::transport::TransportKind;
use praas_dataplane::{
    Client, ClientError, ClientOptions, FunctionRegistry, Process, ProcessConfig, Status, Transport,
};
use praas_testkit::{example_manifest, linux, pattern, serve_on, wait_until};

fn config(workers: usize) -> ProcessConfig {
    ProcessConfig { id: "failure-paths".into(), workers, ..ProcessConfig::default() }
}

fn client(kind: TransportKind, addr: std::net::SocketAddr) -> Client {
    let options = ClientOptions { timeout: Duration::from_secs(30), transport: kind, ..ClientOptions::default() };
    Client::connect_with(addr, options).expect("connect")
}

fn invoke_frame(id: u64, function: &str, input: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_frame(&mut frame, Header::invoke(id, 0, 0, 0), function.as_bytes(), input).expect("encodes");
    frame
}

fn wait_for_pool(process: &Process) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while process.pool().outstanding() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(process.pool().outstanding(), 0, "buffers still handed out after every peer left");
}

/// Reads whole response frames from a raw stream until `count` arrived; returns (id, status, payload).
fn read_responses(stream: &mut TcpStream, count: usize, chunk: usize, pause: Duration) -> Vec<(u64, u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut piece = vec![0u8; chunk];
    while out.len() < count {
        let n = stream.read(&mut piece).expect("read responses");
        assert!(n > 0, "the process closed with {} of {count} responses read", out.len());
        buf.extend_from_slice(&piece[..n]);
        while let Ok(Decoded::Frame(frame, used)) = decode_frame(&buf, FrameLimits::default()) {
            assert_eq!(frame.header.kind, MessageKind::Response);
            out.push((frame.header.id, frame.header.status, frame.payload.to_vec()));
            buf.drain(..used);
        }
        if !pause.is_zero() {
            thread::sleep(pause);
        }
    }
    out
}

fn a_peer_reset_mid_frame_leaks_nothing(kind: TransportKind) {
    let (process, server) = serve_on(kind, &example_manifest(), config(1));
    let addr = server.local_addr();
    // Cut inside a header, inside a small frame, inside a large frame (its own buffer, being
    // received straight into), and after pipelined frames with a worker invocation pending.
    let large = invoke_frame(1, "echo", &pattern(1 << 20, 1));
    let cases: Vec<Vec<u8>> = vec![
        large[..10].to_vec(),
        invoke_frame(2, "echo", &pattern(1000, 2))[..HEADER_LEN + 300].to_vec(),
        large[..HEADER_LEN + 100_000].to_vec(),
        large[..(600 << 10)].to_vec(),
        [invoke_frame(3, "echo", b"a"), invoke_frame(4, "sleep", b"200"), large[..5000].to_vec()].concat(),
    ];
    let sleep_case = cases.len() - 1;
    for (n, bytes) in cases.iter().enumerate() {
        let finished = process.metrics().invocations();
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.write_all(bytes).unwrap();
        // The process has read every byte sent (and, in the last case, taken up both whole
        // invocations: the `sleep` is on its worker or already done) before the reset.
        wait_until(Duration::from_secs(10), format_args!("the process to read the bytes of reset case {n}"), || {
            linux::unread_by_peer(&raw).unwrap() == Some(0)
                && (n != sleep_case || process.in_flight() + (process.metrics().invocations() - finished) as usize >= 2)
        });
        praas_testkit::linux::close_with_reset(raw);
        let mut next = client(kind, addr);
        assert_eq!(next.invoke("echo", b"still serving").unwrap(), b"still serving", "after reset case {n}");
    }
    // The worker answers the reset peer's `sleep` into the void; the process goes on.
    wait_until(Duration::from_secs(10), "the reset peer's `sleep` to finish", || process.in_flight() == 0);
    let mut next = client(kind, addr);
    assert_eq!(next.invoke("echo_worker", b"after").unwrap(), b"after");
    drop(next);
    wait_for_pool(&process);
}

fn frames_dribbled_in_tiny_pieces_are_reassembled(kind: TransportKind) {
    let (process, server) = serve_on(kind, &example_manifest(), config(2));
    let inputs: Vec<Vec<u8>> =
        [0usize, 3, 23, 5000, 40_000, 70_000, 1].iter().enumerate().map(|(i, &n)| pattern(n, 10 + i as u64)).collect();
    let mut stream: Vec<u8> = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let function = if i % 2 == 0 { "echo" } else { "echo_worker" };
        stream.extend(invoke_frame(i as u64 + 1, function, input));
    }
    let mut raw = TcpStream::connect(server.local_addr()).unwrap();
    raw.set_nodelay(true).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let writer = {
        let mut raw = raw.try_clone().unwrap();
        thread::spawn(move || {
            // Every frame boundary and header split at odd places: pieces of 1, 2, 3, ... 97 bytes,
            // then larger ones, with pauses so the process sees each piece on its own.
            let mut at = 0;
            let mut size = 1;
            while at < stream.len() {
                let end = (at + size).min(stream.len());
                raw.write_all(&stream[at..end]).unwrap();
                at = end;
                size = if size < 97 { size + 1 } else { 1 + (size * 7) % 9000 };
                if at % 5 == 0 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    let responses = read_responses(&mut raw, inputs.len(), 64 << 10, Duration::ZERO);
    writer.join().unwrap();
    for (id, status, payload) in responses {
        assert_eq!(status, Status::Ok.code(), "invocation {id}");
        assert!(payload == inputs[id as usize - 1], "invocation {id} came back different");
    }
    drop(raw);
    wait_for_pool(&process);
}

fn a_slow_reader_gets_every_byte_of_large_responses(kind: TransportKind) {
    let (_process, server) = serve_on(kind, &example_manifest(), config(2));
    let mut raw = TcpStream::connect(server.local_addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let small: libc::c_int = 64 << 10;
    // SAFETY: setsockopt reads a live int of the size given, on a descriptor we own.
    unsafe {
        libc::setsockopt(
            raw.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // Responses far larger than the socket buffers: the process's sends come back short again
    // and again while this reader takes 8 KiB at a time, slowly.
    let inputs: Vec<Vec<u8>> = (0..4).map(|i| pattern((2 << 20) + i * 777, 40 + i as u64)).collect();
    let frames: Vec<u8> = inputs
        .iter()
        .enumerate()
        .flat_map(|(i, input)| invoke_frame(i as u64 + 1, if i % 2 == 0 { "echo" } else { "echo_worker" }, input))
        .collect();
    let writer = {
        let mut raw = raw.try_clone().unwrap();
        thread::spawn(move || raw.write_all(&frames).unwrap())
    };
    let mut responses = read_responses(&mut raw, inputs.len(), 8 << 10, Duration::from_micros(20));
    writer.join().unwrap();
    responses.sort_by_key(|r| r.0);
    for (id, status, payload) in responses {
        assert_eq!(status, Status::Ok.code(), "invocation {id}");
        assert!(payload == inputs[id as usize - 1], "invocation {id} came back different");
    }
}

fn an_exhausted_buffer_pool_pauses_reading_and_drops_nothing(kind: TransportKind) {
    let budget = 2 << 20;
    let (process, server) = serve_on(kind, &example_manifest(), ProcessConfig { buffer_budget: budget, ..config(1) });
    let mut client = client(kind, server.local_addr());
    // The single worker sleeps while 60 inputs of 50 KiB (64 KiB buffers each: twice the budget)
    // queue for it: the pool runs dry and the transport must stop reading, not fail or drop.
    let sleeper = client.submit("sleep", b"300").unwrap();
    let inputs: Vec<Vec<u8>> = (0..60).map(|i| pattern(50 << 10, 100 + i)).collect();
    let ids: Vec<u64> = inputs.iter().map(|input| client.submit("echo_worker", input).unwrap()).collect();
    assert_eq!(client.wait(sleeper).unwrap(), b"slept");
    let mut ok = 0;
    for (id, input) in ids.iter().zip(&inputs) {
        match client.wait(*id) {
            Ok(output) => {
                assert!(output == *input, "invocation {id} came back different");
                ok += 1;
            }
            // A function that finds no buffer for its output says so, retryably.
            Err(ClientError::Remote { status: Status::Overloaded, .. }) => {}
            Err(e) => panic!("invocation {id}: {e}"),
        }
    }
    assert!(ok > 0, "no invocation succeeded once the pool recovered");
    assert!(process.pool().outstanding() <= budget);
    assert_eq!(client.invoke("echo", b"recovered").unwrap(), b"recovered");
    drop(client);
    wait_for_pool(&process);
}

on_both_transports!(
    a_peer_reset_mid_frame_leaks_nothing,
    frames_dribbled_in_tiny_pieces_are_reassembled,
    a_slow_reader_gets_every_byte_of_large_responses,
    an_exhausted_buffer_pool_pauses_reading_and_drops_nothing,
);

/// io_uring only: a ring of 2 submission entries serving 16 pipelining clients. Every push that
/// finds the ring full submits first (and reaps completions when the completion ring is full
/// too): work waits, nothing is dropped.
#[test]
fn a_full_ring_delays_work_and_drops_nothing() {
    use praas_dataplane::transport::uring::{UringOptions, UringTransport};
    if !praas_dataplane::transport::uring_available() {
        eprintln!("skipped: io_uring is unavailable on this kernel");
        return;
    }
    let functions = FunctionRegistry::load(&example_manifest()).unwrap();
    let process = Process::start(config(2), functions).unwrap();
    let options = UringOptions { ring_entries: 2, recv_buffers: 2, recv_buffer_size: 4096, ..UringOptions::default() };
    let transport = UringTransport::bind("127.0.0.1:0".parse().unwrap(), Arc::clone(&process), options).unwrap();
    let server = Box::new(transport).spawn().unwrap();
    let addr = server.local_addr();
    let clients: Vec<_> = (0..16u64)
        .map(|c| {
            thread::spawn(move || {
                let mut client = client(TransportKind::Uring, addr);
                let inputs: Vec<Vec<u8>> =
                    (0..300u64).map(|i| pattern((i as usize * 37) % 9000, c * 1000 + i)).collect();
                let mut pending = std::collections::HashMap::new();
                for (i, input) in inputs.iter().enumerate() {
                    let function = if i % 3 == 0 { "echo_worker" } else { "echo" };
                    pending.insert(client.submit(function, input).unwrap(), i);
                }
                while !pending.is_empty() {
                    let done = client.recv().unwrap();
                    let i = pending.remove(&done.id).expect("one response per request");
                    assert!(done.result.unwrap() == inputs[i], "client {c} invocation {i}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    drop(server);
}

/// io_uring only: zero-copy sends (forced on loopback, where they are off by default) of large
/// responses, to fast and slow readers: each frame stays alive until its notification.
#[test]
fn zero_copy_sends_deliver_every_byte() {
    use praas_dataplane::transport::uring::{UringOptions, UringTransport};
    if !praas_dataplane::transport::uring_available() {
        eprintln!("skipped: io_uring is unavailable on this kernel");
        return;
    }
    let functions = FunctionRegistry::load(&example_manifest()).unwrap();
    let process = Process::start(config(2), functions).unwrap();
    let options =
        UringOptions { zero_copy_threshold: Some(16 << 10), zero_copy_on_loopback: true, ..UringOptions::default() };
    let transport = UringTransport::bind("127.0.0.1:0".parse().unwrap(), Arc::clone(&process), options).unwrap();
    let stats = transport.stats();
    let server = Box::new(transport).spawn().unwrap();
    let mut client = client(TransportKind::Uring, server.local_addr());
    for (n, size) in [16 << 10, 100_000, 1 << 20, 5 << 20].into_iter().enumerate() {
        let input = pattern(size, 500 + n as u64);
        assert!(client.invoke("echo", &input).unwrap() == input, "{size} bytes");
    }
    // Run as root (as CI does), the large outputs leave from registered buffers.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(stats.fixed_sends() > 0, "no send from a registered buffer");
    }
    // Large and small responses pipelined: the first large one from a registered buffer, the
    // ones queued behind it by the ordinary path, in order.
    let inputs: Vec<Vec<u8>> =
        (0..8).map(|i| pattern(if i % 3 == 2 { 10 } else { 300_000 + i * 1000 }, 600 + i as u64)).collect();
    let ids: Vec<u64> = inputs.iter().map(|input| client.submit("echo_worker", input).unwrap()).collect();
    for (id, input) in ids.iter().zip(&inputs) {
        assert!(client.wait(*id).unwrap() == *input);
    }
    // A client that goes away while 8 MiB are on their way: the process serves the next one.
    let mut raw = TcpStream::connect(server.local_addr()).unwrap();
    let mut frame = Vec::new();
    let input = pattern(8 << 20, 7);
    encode_frame(&mut frame, Header::invoke(1, 0, 0, 0), b"echo", &input).unwrap();
    raw.write_all(&frame).unwrap();
    let mut first = [0u8; 4096];
    raw.read_exact(&mut first).unwrap();
    drop(raw);
    assert!(client.invoke("echo", &input).unwrap() == input, "served after a reader went away");
    drop(client);
    wait_for_pool(&process);
}

/// io_uring only: the transport's options that change its threads and rings (two I/O threads
/// sharing the listener; kernel-side submission polling; I/O threads that poll before they block)
/// serve the same traffic.
#[test]
fn two_io_threads_sqpoll_and_polling_serve_alike() {
    use praas_dataplane::transport::uring::{UringOptions, UringTransport};
    if !praas_dataplane::transport::uring_available() {
        eprintln!("skipped: io_uring is unavailable on this kernel");
        return;
    }
    let variants = [
        UringOptions { threads: 2, ..UringOptions::default() },
        UringOptions { sqpoll_idle_ms: Some(5), ..UringOptions::default() },
        UringOptions { spin: std::time::Duration::from_micros(300), ..UringOptions::default() },
    ];
    for options in variants {
        let functions = FunctionRegistry::load(&example_manifest()).unwrap();
        let process = Process::start(config(2), functions).unwrap();
        let transport =
            UringTransport::bind("127.0.0.1:0".parse().unwrap(), Arc::clone(&process), options.clone()).unwrap();
        let server = Box::new(transport).spawn().unwrap();
        let addr = server.local_addr();
        let clients: Vec<_> = (0..8u64)
            .map(|c| {
                thread::spawn(move || {
                    let mut client = client(TransportKind::Uring, addr);
                    for i in 0..200u64 {
                        let input = pattern((i as usize * 131) % 70_000, c * 1000 + i);
                        let function = if i % 2 == 0 { "echo" } else { "echo_worker" };
                        assert!(client.invoke(function, &input).unwrap() == input, "client {c} invocation {i}");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        server.stop().unwrap_or_else(|e| panic!("{options:?}: {e}"));
        wait_for_pool(&process);
    }
}

/// io_uring only: a client made on one thread and used on others (its single-issuer ring is made
/// anew on each), pipelining through the ring and round-tripping.
#[test]
fn a_client_moved_between_threads_keeps_working() {
    if !praas_dataplane::transport::uring_available() {
        eprintln!("skipped: io_uring is unavailable on this kernel");
        return;
    }
    let (_process, server) = serve_on(TransportKind::Uring, &example_manifest(), config(2));
    let mut client = client(TransportKind::Uring, server.local_addr());
    assert_eq!(client.transport(), TransportKind::Uring);
    for round in 0..4u64 {
        client = thread::spawn(move || {
            let inputs: Vec<Vec<u8>> = (0..50).map(|i| pattern(1 + (i * 97) % 6000, round * 100 + i as u64)).collect();
            let ids: Vec<u64> = inputs.iter().map(|input| client.submit("echo", input).unwrap()).collect();
            for (id, input) in ids.iter().zip(&inputs) {
                assert!(client.wait(*id).unwrap() == *input);
            }
            let big = pattern(200_000, round);
            assert!(client.invoke("echo_worker", &big).unwrap() == big);
            client
        })
        .join()
        .unwrap();
    }
}
