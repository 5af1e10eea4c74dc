//! The raw TCP baseline: a blocking echo of length-prefixed messages over `std::net`, the floor a
//! request/response protocol on loopback TCP can reach.
//!
//! A message is a 4-byte little-endian length and that many bytes. The server reads through a
//! buffer (one `read` takes a small message whole) and writes each echo back, gathering the echoes
//! of one read into one `write`, as the praas transport gathers inline responses.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::report;

const BUF: usize = 64 << 10;

/// Accepts connections forever, echoing each on its own thread.
pub fn serve(listener: TcpListener) -> io::Result<()> {
    loop {
        let (stream, _) = listener.accept()?;
        std::thread::Builder::new().name("raw-echo".into()).spawn(move || {
            if let Err(e) = echo_connection(stream) {
                eprintln!("raw echo server: connection failed: {e}");
            }
        })?;
    }
}

/// Echoes every message of one connection until the peer closes it.
pub fn echo_connection(stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::with_capacity(BUF, stream.try_clone()?);
    let mut writer = BufWriter::with_capacity(BUF, stream);
    // The echo as sent back: prefix and payload, so that a large one leaves in one write.
    let mut echo = Vec::new();
    loop {
        let mut prefix = [0u8; 4];
        match reader.read_exact(&mut prefix) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return writer.flush(),
            Err(e) => return Err(e),
        }
        echo.resize(4 + u32::from_le_bytes(prefix) as usize, 0);
        echo[..4].copy_from_slice(&prefix);
        reader.read_exact(&mut echo[4..])?;
        writer.write_all(&echo)?;
        // Nothing more has arrived: answer now (a ping-pong client waits for exactly this).
        if reader.buffer().is_empty() {
            writer.flush()?;
        }
    }
}

/// One message as sent: length prefix and payload.
pub fn message(payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(4 + payload.len());
    message.extend_from_slice(&u32::try_from(payload.len()).expect("payload below 4 GiB").to_le_bytes());
    message.extend_from_slice(payload);
    message
}

/// The client side of the baseline: one connection, every read and write bounded by a timeout.
#[derive(Debug)]
pub struct RawClient {
    reader: BufReader<SpinRead>,
    writer: TcpStream,
    /// The last echo received.
    echo: Vec<u8>,
}

/// The raw client's socket reads: they poll (non-blocking reads, yielding the CPU between them)
/// for up to `spin` before they block, as a praas client with `ClientOptions::spin` does.
#[derive(Debug)]
struct SpinRead {
    stream: TcpStream,
    spin: Duration,
}

impl Read for SpinRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.spin.is_zero() {
            let started = Instant::now();
            loop {
                // SAFETY: recv writes at most `buf.len()` bytes into `buf`, borrowed exclusively
                // for the call.
                let n = unsafe {
                    libc::recv(
                        std::os::fd::AsRawFd::as_raw_fd(&self.stream),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n >= 0 {
                    return Ok(n as usize);
                }
                let err = io::Error::last_os_error();
                if !matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
                    return Err(err);
                }
                if started.elapsed() >= self.spin {
                    break;
                }
                std::thread::yield_now();
            }
        }
        self.stream.read(buf)
    }
}

impl RawClient {
    /// A connection to the raw echo server at `addr`; waits for answers polling `spin` first.
    pub fn connect(addr: SocketAddr, timeout: Duration, spin: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let reader = SpinRead { stream: stream.try_clone()?, spin };
        Ok(Self { reader: BufReader::with_capacity(BUF, reader), writer: stream, echo: Vec::new() })
    }

    /// Sends one prepared [`message`].
    pub fn send(&mut self, message: &[u8]) -> io::Result<()> {
        self.writer.write_all(message)
    }

    /// Receives one echo; returns its payload.
    pub fn recv(&mut self) -> io::Result<&[u8]> {
        let mut prefix = [0u8; 4];
        self.reader.read_exact(&mut prefix)?;
        self.echo.resize(u32::from_le_bytes(prefix) as usize, 0);
        self.reader.read_exact(&mut self.echo)?;
        Ok(&self.echo)
    }

    /// One round trip; returns the echoed payload.
    pub fn round_trip(&mut self, message: &[u8]) -> io::Result<&[u8]> {
        self.send(message)?;
        self.recv()
    }

    /// Measures `iters` round trips of `payload` after `warmup` unmeasured ones, verifying the
    /// echo before and after (outside the timed region).
    pub fn latency(&mut self, payload: &[u8], warmup: u64, iters: u64) -> Result<Histogram<u64>, String> {
        let message = message(payload);
        let fail = |e: io::Error| format!("raw TCP round trip of {} bytes failed: {e}", payload.len());
        verify("raw TCP", payload, self.round_trip(&message).map_err(fail)?)?;
        for _ in 0..warmup {
            self.round_trip(&message).map_err(fail)?;
        }
        let mut hist = report::histogram();
        for _ in 0..iters {
            let start = Instant::now();
            self.send(&message).map_err(fail)?;
            let echo = self.recv().map_err(fail)?;
            let elapsed = start.elapsed();
            if echo.len() != payload.len() {
                return Err(format!("raw TCP echoed {} bytes for {}", echo.len(), payload.len()));
            }
            report::record(&mut hist, elapsed);
        }
        verify("raw TCP", payload, &self.echo)?;
        Ok(hist)
    }

    /// Pipelined ping-pong: `in_flight` messages outstanding, `ops` echoes counted after `warmup`;
    /// returns echoes per second.
    pub fn throughput(&mut self, payload: &[u8], in_flight: u64, warmup: u64, ops: u64) -> Result<f64, String> {
        let message = message(payload);
        let fail = |e: io::Error| format!("raw TCP pipelined echo failed: {e}");
        verify("raw TCP", payload, self.round_trip(&message).map_err(fail)?)?;
        for _ in 0..in_flight {
            self.send(&message).map_err(fail)?;
        }
        let next = |this: &mut Self| -> Result<(), String> {
            let len = this.recv().map_err(fail)?.len();
            if len != payload.len() {
                return Err(format!("raw TCP echoed {len} bytes for {}", payload.len()));
            }
            this.send(&message).map_err(fail)
        };
        for _ in 0..warmup {
            next(self)?;
        }
        let start = Instant::now();
        for _ in 0..ops {
            next(self)?;
        }
        let secs = start.elapsed().as_secs_f64();
        for _ in 0..in_flight {
            self.recv().map_err(fail)?;
        }
        verify("raw TCP", payload, &self.echo)?;
        Ok(ops as f64 / secs)
    }
}

/// The raw fan-out: `iters` rounds after `warmup` unmeasured ones, each sending `payload` on every
/// one of `clients` (one echo server process each) and then reading every echo; each round timed.
/// The echoes are verified in the first round (outside the timed ones).
pub fn fan_out_latency(
    clients: &mut [RawClient],
    payload: &[u8],
    warmup: u64,
    iters: u64,
) -> Result<Histogram<u64>, String> {
    let message = message(payload);
    let fail = |e: io::Error| format!("raw TCP fan-out of {} bytes failed: {e}", payload.len());
    let mut hist = report::histogram();
    for round in 0..=warmup + iters {
        let start = Instant::now();
        for client in clients.iter_mut() {
            client.send(&message).map_err(fail)?;
        }
        for client in clients.iter_mut() {
            let len = client.recv().map_err(fail)?.len();
            if len != payload.len() {
                return Err(format!("raw TCP echoed {len} bytes for {}", payload.len()));
            }
        }
        let elapsed = start.elapsed();
        if round == 0 {
            for client in clients.iter() {
                verify("raw TCP fan-out", payload, &client.echo)?;
            }
        } else if round > warmup {
            report::record(&mut hist, elapsed);
        }
    }
    Ok(hist)
}

/// Fails loudly when an echo differs from what was sent.
pub fn verify(what: &str, sent: &[u8], echoed: &[u8]) -> Result<(), String> {
    if sent == echoed {
        return Ok(());
    }
    let first = sent.iter().zip(echoed).position(|(a, b)| a != b).unwrap_or(sent.len().min(echoed.len()));
    Err(format!(
        "{what} echo is wrong: sent {} bytes, got {} bytes, first difference at byte {first}",
        sent.len(),
        echoed.len()
    ))
}

/// A payload of `size` bytes that is not all one value, so a misplaced byte shows.
pub fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener));
        addr
    }

    #[test]
    fn echoes_every_size() {
        let mut client = RawClient::connect(server(), Duration::from_secs(10), Duration::ZERO).unwrap();
        for size in [0, 1, 8, 4096, 65536, 1 << 20] {
            let sent = payload(size);
            let echo = client.round_trip(&message(&sent)).unwrap().to_vec();
            verify("test", &sent, &echo).unwrap();
        }
        assert!(client.reader.buffer().is_empty());
    }

    #[test]
    fn latency_and_throughput_run() {
        let mut client = RawClient::connect(server(), Duration::from_secs(10), Duration::from_micros(100)).unwrap();
        let hist = client.latency(&payload(100), 10, 50).unwrap();
        assert_eq!(hist.len(), 50);
        let rate = client.throughput(&payload(8), 16, 100, 500).unwrap();
        let mut clients: Vec<RawClient> =
            (0..3).map(|_| RawClient::connect(server(), Duration::from_secs(10), Duration::ZERO).unwrap()).collect();
        assert_eq!(fan_out_latency(&mut clients, &payload(64), 5, 20).unwrap().len(), 20);
        assert!(rate > 0.0);
        // The connection is still in step after the pipelined run.
        assert_eq!(client.round_trip(&message(b"again")).unwrap(), b"again");
    }

    #[test]
    fn verify_names_the_first_difference() {
        assert!(verify("x", b"abc", b"abc").is_ok());
        assert!(verify("x", b"abc", b"abd").unwrap_err().contains("byte 2"));
        assert!(verify("x", b"abc", b"ab").unwrap_err().contains("got 2 bytes"));
    }
}
