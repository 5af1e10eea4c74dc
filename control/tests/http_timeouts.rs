//! The HTTP API does not keep a half-sent request's connection: a client that sends part of a
//! request's header and stops is closed after the header timeout, and the API serves on (issue
//! 15's "a half-sent request stays open forever").

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::ControlPlaneProcess;

#[test]
fn a_half_sent_request_is_closed_after_the_header_timeout() {
    let cp = ControlPlaneProcess::start("header-timeout", &["--header-timeout-ms", "300"]);
    let addr = cp.http.trim_start_matches("http://").to_owned();
    let mut stalled: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut conn = TcpStream::connect(addr.as_str()).unwrap();
            conn.write_all(b"GET /apps HTTP/1.1\r\nHost: praas\r\n").unwrap();
            conn
        })
        .collect();
    let started = Instant::now();
    for conn in &mut stalled {
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        // Closed by the server (an answer, if any, then end of stream), not by our timeout.
        conn.read_to_end(&mut answer).expect("the server closes the stalled connection");
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "the stalled connections were closed after {waited:?}");
    // A whole request is answered meanwhile and after.
    let apps: Vec<serde_json::Value> = cp.api.get("/apps").expect("GET /apps answers");
    assert!(apps.is_empty());
}
