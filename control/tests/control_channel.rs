//! The control channel before trust: connections whose first frame's header announces a huge
//! frame cost the control plane no memory for it, are refused at once, and the control plane
//! keeps serving (issue 15's "allocates before trust", for the control channel).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use praas_dataplane::protocol::{Header, MessageKind};
use support::praas;

/// A figure of `/proc/PID/status` in KiB (`VmHWM`: the peak resident memory so far).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn headers_announcing_huge_frames_before_authentication_cost_no_memory() {
    let dir = support::temp_dir("channel-flood");
    let mut child = praas()
        .args(["control", "serve", "--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("praas control serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let http = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_owned();
    let channel = line.split("register on ").nth(1).unwrap().trim().trim_end_matches(')').to_owned();
    let api = support::api_of(&http, &dir);
    let peak_before = status_kib(child.id(), "VmHWM:");

    // 150 peers, each announcing a 16 MiB Hello in its first header and sending nothing more:
    // before this was bounded, each cost the control plane 16 MiB at once (2.4 GB in all).
    let header =
        Header { kind: MessageKind::Hello, meta_len: 0, status: 0, id: 0, timeout_ms: 0, payload_len: 16 << 20 };
    let mut peers: Vec<TcpStream> = (0..150)
        .map(|_| {
            let mut peer = TcpStream::connect(channel.as_str()).expect("connect to the control channel");
            peer.write_all(&header.encode()).unwrap();
            peer
        })
        .collect();
    // Each is refused at once: the control plane closes it after its challenge (well within its
    // 10 s handshake timeout).
    let started = Instant::now();
    for peer in &mut peers {
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).expect("the control plane closes the connection");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "refusals took {:?}", started.elapsed());
    let peak_after = status_kib(child.id(), "VmHWM:");
    assert!(
        peak_after < peak_before + 64 * 1024,
        "the peak resident memory grew from {peak_before} KiB to {peak_after} KiB"
    );
    // And it serves on.
    let apps: Vec<serde_json::Value> = api.get("/apps").expect("GET /apps answers");
    assert!(apps.is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
}
