//! Floods of connections against a real `praas process serve` on loopback, on mio and io_uring:
//! idle and half-open connections cost the process a small fixed amount each and give their
//! memory back when they go, a legitimate client is answered meanwhile, a process under an
//! address-space limit survives peers announcing 64 MiB frames with its state intact, and the
//! connection limits and timeouts refuse and close with a clear error frame.

mod support;

use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use praas_dataplane::protocol::{MessageKind, Status};
use praas_dataplane::{Client, ClientOptions};
use praas_testkit::flood::{self, Flood};
use praas_testkit::raw::RawConnection;
use praas_testkit::wait_until;

const FLOOD: usize = 10_000;

/// One flood at a time: the test binary holds one descriptor per connection of each, and the hard
/// limit of open files (20,000 here) does not fit two floods and their servers'.
static ONE_FLOOD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_flood() -> std::sync::MutexGuard<'static, ()> {
    ONE_FLOOD.lock().unwrap_or_else(|p| p.into_inner())
}
const MIB_KIB: u64 = 1024;

/// A `praas process serve` child, killed when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Served {
    fn start(transport: &str, extra: &[&str]) -> Self {
        let dir = support::temp_dir(&format!("flood-{transport}"));
        let manifest = dir.join("functions.toml");
        let lib = praas_testkit::example_functions();
        let functions = format!(
            "[[function]]\nname = \"echo\"\nlibrary = {lib:?}\nmode = \"inline\"\n\n\
             [[function]]\nname = \"counter\"\nlibrary = {lib:?}\nmode = \"worker\"\n"
        );
        std::fs::write(&manifest, functions).unwrap();
        let args = [&["--workers", "2", "--transport", transport][..], extra].concat();
        let (child, addr) = support::serve_process(&manifest, &args);
        Self { addr: addr.parse().unwrap(), child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> u64 {
        flood::vm_rss_kib(self.pid()).expect("the process is alive")
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// A fresh client's invocation of `function`, and how long connecting and the answer took.
    fn invoke(&self, function: &str, input: &[u8]) -> (Vec<u8>, Duration) {
        let options = ClientOptions { timeout: Duration::from_secs(5), ..ClientOptions::default() };
        let started = Instant::now();
        let mut client = Client::connect_with(self.addr, options).expect("a legitimate client connects");
        let answer = client.invoke(function, input).expect("a legitimate client is answered");
        (answer, started.elapsed())
    }

    /// Waits until the process holds at least `fds` descriptors (it accepted the flood).
    fn wait_for_fds(&self, fds: usize) {
        let pid = self.pid();
        wait_until(Duration::from_secs(30), format!("the process to accept the flood ({fds} descriptors)"), || {
            flood::open_fds(pid) >= fds
        });
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Many connections of `kinds` (in equal parts): the process stays under 64 MiB of extra resident
/// memory and answers a legitimate client within 1 s meanwhile, and is back within 16 MiB of
/// where it started within 10 s of their closing.
fn flood_costs_little_and_is_given_back(transport: &str, kinds: &[Flood]) {
    let _one = one_flood();
    flood::raise_nofile_limit();
    let limits = ["--max-connections", "20000", "--max-connections-per-source", "20000"];
    let mut served = Served::start(transport, &[&limits[..], &["--header-timeout-ms", "120000"]].concat());
    let pid = served.pid();
    let start_fds = flood::open_fds(pid);
    // Warm: the functions loaded, a first connection's buffers made (and closed again).
    for _ in 0..3 {
        assert_eq!(served.invoke("echo", b"warm").0, b"warm");
    }
    wait_until(Duration::from_secs(5), "the warm-up connections to close", || flood::open_fds(pid) <= start_fds);
    let start_rss = served.rss_kib();
    let mut conns = Vec::new();
    for kind in kinds {
        conns.extend(
            flood::open_paced(served.addr, FLOOD / kinds.len(), *kind, served.pid()).expect("the flood connects"),
        );
    }
    served.wait_for_fds(start_fds + conns.len());
    let (answer, took) = served.invoke("echo", b"legit");
    assert_eq!(answer, b"legit");
    assert!(took < Duration::from_secs(1), "a legitimate client took {took:?} under the flood");
    // What the process holds for the flood, once it has read it (the client above came after it).
    let during = served.rss_kib();
    assert!(
        during < start_rss + 64 * MIB_KIB,
        "{} connections ({kinds:?}) on {transport} grew the process from {start_rss} KiB to {during} KiB",
        conns.len()
    );
    drop(conns);
    wait_until(Duration::from_secs(10), "the flood's memory to be given back", || {
        flood::open_fds(pid) <= start_fds && served.rss_kib() <= start_rss + 16 * MIB_KIB
    });
    assert!(served.alive());
    eprintln!("{transport} {kinds:?}: RSS {start_rss} KiB, {during} KiB during, {} KiB after", served.rss_kib());
}

#[test]
fn ten_thousand_idle_connections_cost_a_mio_process_little() {
    flood_costs_little_and_is_given_back("mio", &[Flood::Idle]);
}

#[test]
fn ten_thousand_idle_connections_cost_a_uring_process_little() {
    flood_costs_little_and_is_given_back("uring", &[Flood::Idle]);
}

#[test]
fn ten_thousand_half_open_connections_cost_a_mio_process_little() {
    flood_costs_little_and_is_given_back("mio", &[Flood::PartialHeader, Flood::Announce64MiB]);
}

#[test]
fn ten_thousand_half_open_connections_cost_a_uring_process_little() {
    flood_costs_little_and_is_given_back("uring", &[Flood::PartialHeader, Flood::Announce64MiB]);
}

/// Under a 2 GiB address-space limit, 1,000 peers announcing 64 MiB frames: the process lives,
/// serves meanwhile and after, and its state is intact.
fn survives_a_thousand_announced_large_frames(transport: &str) {
    let _one = one_flood();
    flood::raise_nofile_limit();
    let mut served = Served::start(transport, &["--memory-mb", "2048"]);
    let pid = served.pid();
    let start_fds = flood::open_fds(pid);
    assert_eq!(served.invoke("counter", b"").0, b"1");
    wait_until(Duration::from_secs(5), "the first client's connection to close", || flood::open_fds(pid) <= start_fds);
    let conns = flood::open_paced(served.addr, 1000, Flood::Announce64MiB, served.pid()).expect("the peers connect");
    served.wait_for_fds(start_fds + 1000);
    let (answer, took) = served.invoke("echo", b"meanwhile");
    assert_eq!(answer, b"meanwhile");
    assert!(took < Duration::from_secs(1), "a legitimate client took {took:?}");
    assert!(served.alive(), "the process died under 1,000 announced 64 MiB frames");
    drop(conns);
    assert_eq!(served.invoke("counter", b"").0, b"2", "the state is intact");
    assert!(served.alive());
}

#[test]
fn a_limited_mio_process_survives_a_thousand_announced_large_frames() {
    survives_a_thousand_announced_large_frames("mio");
}

#[test]
fn a_limited_uring_process_survives_a_thousand_announced_large_frames() {
    survives_a_thousand_announced_large_frames("uring");
}

/// The refusal a connection beyond a limit reads, then the close.
fn refused(addr: SocketAddr) -> String {
    let mut conn = RawConnection::connect(addr, Duration::from_secs(5)).expect("the connection opens");
    let frames = conn.frames_until_closed(Duration::from_secs(5));
    assert_eq!(frames.len(), 1, "one error frame, then the close: {frames:?}");
    let frame = &frames[0];
    assert_eq!(frame.header.kind, MessageKind::Response);
    assert_eq!(frame.header.status, Status::Overloaded.code());
    String::from_utf8_lossy(&frame.meta).into_owned()
}

fn limits_refuse_with_a_clear_error(transport: &str) {
    // Per source: the fourth connection from 127.0.0.1 is refused, naming the limit.
    let served = Served::start(transport, &["--max-connections-per-source", "3"]);
    let start_fds = flood::open_fds(served.pid());
    let held = flood::open(served.addr, 3, Flood::Idle).unwrap();
    served.wait_for_fds(start_fds + 3);
    let text = refused(served.addr);
    assert!(text.contains("--max-connections-per-source") && text.contains("127.0.0.1"), "{text}");
    // One goes: a new connection is served again.
    drop(held);
    wait_until(Duration::from_secs(5), "a connection to be admitted again", || {
        Client::connect(served.addr).and_then(|mut c| c.invoke("echo", b"again")).is_ok()
    });
    drop(served);

    // Per process.
    let served = Served::start(transport, &["--max-connections", "2"]);
    let _held = flood::open(served.addr, 2, Flood::Idle).unwrap();
    let text = refused(served.addr);
    assert!(text.contains("--max-connections)") && text.contains("2 connections"), "{text}");
}

#[test]
fn mio_connection_limits_refuse_with_a_clear_error() {
    limits_refuse_with_a_clear_error("mio");
}

#[test]
fn uring_connection_limits_refuse_with_a_clear_error() {
    limits_refuse_with_a_clear_error("uring");
}

fn timeouts_close_connections(transport: &str) {
    let served = Served::start(transport, &["--idle-timeout-ms", "400", "--header-timeout-ms", "400"]);
    // Idle: closed without a word.
    let mut idle = RawConnection::connect(served.addr, Duration::from_secs(5)).unwrap();
    let started = Instant::now();
    assert!(idle.frames_until_closed(Duration::from_secs(5)).is_empty());
    assert!(started.elapsed() >= Duration::from_millis(400), "closed before its idle timeout");
    // A header never finished, and a frame whose body never comes: an error frame, then the close.
    for kind in [Flood::PartialHeader, Flood::Announce64MiB] {
        let mut slow = RawConnection::connect(served.addr, Duration::from_secs(5)).unwrap();
        slow.send(&kind.bytes()).unwrap();
        let frames = slow.frames_until_closed(Duration::from_secs(5));
        assert_eq!(frames.len(), 1, "{kind:?}: {frames:?}");
        assert_eq!(frames[0].header.status, Status::Malformed.code());
        let text = String::from_utf8_lossy(&frames[0].meta);
        assert!(text.contains("--header-timeout-ms"), "{text}");
    }
    // A connection in use stays open past the idle timeout as long as it keeps sending.
    let mut client = Client::connect(served.addr).unwrap();
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        assert_eq!(client.invoke("echo", b"busy").unwrap(), b"busy");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn mio_idle_and_header_timeouts_close_connections() {
    timeouts_close_connections("mio");
}

#[test]
fn uring_idle_and_header_timeouts_close_connections() {
    timeouts_close_connections("uring");
}
