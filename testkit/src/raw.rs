//! A connection to a process over a plain [`std::net::TcpStream`], for tests of how a process
//! treats a peer that breaks the protocol: it sends whatever bytes it is given, and reads frames
//! or the end of the connection with a deadline. The SDK's [`praas_dataplane::Client`] only ever
//! sends well-formed requests.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use praas_dataplane::handshake::{introduce, HandshakeError, HandshakeWire, Introduction};
use praas_dataplane::protocol::{decode_frame, Decoded, FrameLimits, Header, OwnedFrame};
use praas_dataplane::Credentials;

/// A raw TCP connection to a process.
#[derive(Debug)]
pub struct RawConnection {
    stream: TcpStream,
    /// Received bytes not yet decoded into a frame.
    buf: Vec<u8>,
    /// How long a receive waits.
    timeout: Duration,
}

impl RawConnection {
    /// Connects to `addr`; receives wait at most `timeout`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self { stream, buf: Vec::new(), timeout })
    }

    /// The socket, e.g. to look it up in [`crate::linux::tcp_socket`].
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Runs the client side of the handshake with `credentials`, as the SDK's client does, over
    /// this connection.
    pub fn authenticate(&mut self, credentials: &Credentials) -> Result<(), HandshakeError<io::Error>> {
        let who = Introduction {
            app: &credentials.app,
            me: &credentials.name,
            key: &credentials.key,
            client: true,
            to: None,
        };
        introduce(self, &who)
    }

    /// Sends `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Receives the next frame; an error if none comes within the timeout, the bytes are not a
    /// frame, or the process closes the connection first (`UnexpectedEof`).
    pub fn recv(&mut self) -> io::Result<OwnedFrame> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match decode_frame(&self.buf, FrameLimits::default()) {
                Ok(Decoded::Frame(frame, used)) => {
                    let owned =
                        OwnedFrame { header: frame.header, meta: frame.meta.to_vec(), payload: frame.payload.to_vec() };
                    self.buf.drain(..used);
                    return Ok(owned);
                }
                Ok(Decoded::Incomplete(_)) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if self.read_some(deadline)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the process closed the connection"));
            }
        }
    }

    /// Reads until the process closes the connection (an orderly close or a reset), at most for
    /// `timeout`; returns the frames it sent before. Panics if the connection is still open then
    /// or the bytes before the close are not whole frames.
    #[track_caller]
    pub fn frames_until_closed(&mut self, timeout: Duration) -> Vec<OwnedFrame> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_some(deadline) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) => {
                    break
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    panic!("the process did not close the connection within {timeout:?}")
                }
                Err(e) => panic!("reading until the process closes the connection: {e}"),
            }
        }
        let mut frames = Vec::new();
        let mut rest = &self.buf[..];
        while !rest.is_empty() {
            match decode_frame(rest, FrameLimits::default()) {
                Ok(Decoded::Frame(frame, used)) => {
                    frames.push(OwnedFrame {
                        header: frame.header,
                        meta: frame.meta.to_vec(),
                        payload: frame.payload.to_vec(),
                    });
                    rest = &rest[used..];
                }
                other => panic!("{} bytes before the close are not a whole frame: {other:?}", rest.len()),
            }
        }
        self.buf.clear();
        frames
    }

    /// Reads what arrives before `deadline` into the buffer; returns how many bytes (0: the end
    /// of the connection). A deadline already passed is a `TimedOut` error.
    fn read_some(&mut self, deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no bytes before the deadline"));
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 64 << 10];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl HandshakeWire for RawConnection {
    type Error = io::Error;

    fn send_frame(&mut self, header: Header, meta: &[u8], payload: &[u8]) -> io::Result<()> {
        let too_large = || io::Error::new(io::ErrorKind::InvalidInput, "frame too large for its length fields");
        let meta_len = u16::try_from(meta.len()).map_err(|_| too_large())?;
        let payload_len = u32::try_from(payload.len()).map_err(|_| too_large())?;
        let head = Header { meta_len, payload_len, ..header }.encode();
        self.send(&[&head[..], meta, payload].concat())
    }

    fn recv_frame(&mut self) -> io::Result<OwnedFrame> {
        self.recv()
    }
}
