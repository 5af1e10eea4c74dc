//! The HTTP API's connections are bounded below the descriptor limit and idle ones are closed
//! (issue 15's "1,100 idle HTTP connections made every request time out"): the control plane
//! raises its descriptor limit at start, answers a connection past its connection limit with 503
//! at once, and closes a connection idle for `--idle-timeout-ms` (HTTP/1.1 and HTTP/2 alike), never
//! one waiting for its answer.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use praas_control::controller::AppView;
use praas_control::routes;
use support::{sample, ControlPlaneProcess};

fn addr(cp: &ControlPlaneProcess) -> String {
    cp.http.trim_start_matches("http://").to_owned()
}

/// Sends one request without the token on `conn` and reads its whole answer (a 401): the
/// connection was accepted and served, and stays open (keep-alive).
fn one_request(conn: &mut TcpStream) -> String {
    conn.write_all(b"GET /apps HTTP/1.1\r\nHost: praas\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).expect("an answer");
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return text.into_owned();
            }
        }
    }
}

fn served_connection(cp: &ControlPlaneProcess) -> TcpStream {
    let mut conn = TcpStream::connect(addr(cp)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let answer = one_request(&mut conn);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    conn
}

/// How long `conn` stays open, reading nothing, until the control plane closes it (at most 10 s).
fn closed_after(conn: &mut TcpStream) -> Duration {
    let started = Instant::now();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("closed by the control plane, not by our timeout");
    started.elapsed()
}

#[test]
fn more_idle_connections_than_the_old_descriptor_limit_and_the_api_still_answers_at_once() {
    praas_testkit::flood::raise_nofile_limit();
    // Started as a shell with the usual soft limit of 1024 would start it: it raises its own.
    let cp = ControlPlaneProcess::start_with_nofile("http-idle", &["--header-timeout-ms", "60000"], 1024);
    cp.create_example_app("app");
    let idle: Vec<TcpStream> = (0..1_100).map(|_| served_connection(&cp)).collect();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let apps: Vec<AppView> = cp.api.get(&routes::apps()).expect("GET /apps answers");
        slowest = slowest.max(started.elapsed());
        assert_eq!(apps.len(), 1);
    }
    assert!(slowest < Duration::from_secs(1), "GET /apps took {slowest:?} beside 1,100 idle connections");
    let metrics = cp.api.metrics().unwrap();
    assert!(sample(&metrics, "praas_connections_open{listener=\"http\"}") > 1_100.0, "{metrics}");
    idle.into_iter().for_each(praas_testkit::linux::close_with_reset);
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout_but_not_while_waiting_for_an_answer() {
    let cp = ControlPlaneProcess::start("http-idle-timeout", &["--idle-timeout-ms", "300"]);
    // HTTP/1.1 keep-alive connections after an answer (the header timeout is 10 s).
    let mut idle: Vec<TcpStream> = (0..20).map(|_| served_connection(&cp)).collect();
    for conn in &mut idle {
        let after = closed_after(conn);
        assert!(after < Duration::from_secs(3), "an idle HTTP/1.1 connection was closed after {after:?}");
    }
    // An HTTP/2 connection (prior knowledge), which no header timeout covers.
    let mut h2 = TcpStream::connect(addr(&cp)).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
    let after = closed_after(&mut h2);
    assert!(after < Duration::from_secs(3), "an idle HTTP/2 connection was closed after {after:?}");
    // A request whose answer takes longer than the idle timeout is answered.
    cp.create_example_app("app");
    praas_control::cli::process_create(&cp.api, "app", "p", None).unwrap();
    let output = cp.invoke("app", Some("p"), "sleep", b"1500").expect("a slow answer comes");
    assert_eq!(output, b"slept");
}

#[test]
fn past_the_connection_limit_a_connection_is_answered_503_at_once() {
    let cp = ControlPlaneProcess::start("http-limit", &["--max-http-connections", "30"]);
    let mut open: Vec<TcpStream> = (0..30).map(|_| served_connection(&cp)).collect();
    let started = Instant::now();
    let mut over = TcpStream::connect(addr(&cp)).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    over.read_to_end(&mut answer).expect("answered and closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(started.elapsed() < Duration::from_secs(1), "answered after {:?}", started.elapsed());
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("30 connections are open") && answer.contains("--max-http-connections"), "{answer}");
    // Once some close, the API answers again, and counted the refusal.
    open.truncate(20);
    praas_testkit::wait_until(Duration::from_secs(5), "the API answers again", || {
        cp.api.get::<Vec<AppView>>(&routes::apps()).is_ok()
    });
    let metrics = cp.api.metrics().unwrap();
    assert!(sample(&metrics, "praas_connections_refused_total{listener=\"http\"}") >= 1.0, "{metrics}");
}
