//! A process under an address-space limit (`--memory-mb`, as the control plane starts every
//! process) and peers that each announce a 64 MiB invocation in a header and send nothing more:
//! before the buffer budget fitted inside the limit, 40 of them made the process abort (SIGABRT)
//! and lose its state. It now survives them, on both transports, and serves again once they go.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use praas_dataplane::protocol::Header;

fn survives_peers_announcing_large_frames(transport: &str) {
    let dir = support::temp_dir(&format!("large-frames-{transport}"));
    let manifest = dir.join("functions.toml");
    let lib = praas_testkit::example_functions();
    std::fs::write(&manifest, format!("[[function]]\nname = \"echo\"\nlibrary = {lib:?}\nmode = \"inline\"\n"))
        .unwrap();
    let (mut child, addr) = support::serve_process(&manifest, &["--memory-mb", "2048", "--transport", transport]);

    // 40 peers, each announcing `echo` with a 64 MiB input (the frame limit) and sending no more.
    let name = b"echo";
    let header = Header::invoke(1, name.len() as u16, 0, (64 << 20) - name.len() as u32);
    let mut peers: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut peer = TcpStream::connect(addr.as_str()).expect("connect");
            peer.write_all(&header.encode()).unwrap();
            peer.write_all(name).unwrap();
            peer
        })
        .collect();
    // The process has read them all once a client connecting after them is answered, or the
    // pool refuses it; either way the process must still be there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut client) = praas_dataplane::Client::connect(addr.as_str()) {
            if client.invoke("echo", b"x").is_ok() {
                break;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "the process died under 40 announced 64 MiB frames");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.try_wait().unwrap().is_none(), "the process died under 40 announced 64 MiB frames");
    peers.clear();
    // Once they are gone, it serves again (within a bounded wait).
    let deadline = Instant::now() + Duration::from_secs(10);
    let answered = loop {
        let answer = praas_dataplane::Client::connect(addr.as_str()).and_then(|mut c| c.invoke("echo", b"back"));
        match answer {
            Ok(answer) => break answer,
            Err(e) => assert!(Instant::now() < deadline, "not serving again within 10 s: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(answered, b"back");
    assert!(child.try_wait().unwrap().is_none());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_limited_mio_process_survives_peers_announcing_large_frames() {
    survives_peers_announcing_large_frames("mio");
}

#[test]
fn a_limited_uring_process_survives_peers_announcing_large_frames() {
    survives_peers_announcing_large_frames("uring");
}
