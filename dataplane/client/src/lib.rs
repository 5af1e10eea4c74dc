//! The client SDK: invoke functions of a cloud process over a persistent connection.
//!
//! [`Client::invoke`] is the blocking call. For many invocations in flight on one connection,
//! [`Client::submit`] sends a request and returns its id at once, and [`Client::recv`] returns the
//! next response in the order the process finished them (which may differ from the order sent);
//! [`Client::wait`] waits for one id and keeps the others for later.
//!
//! Every wait is bounded: a response that does not come within the client's timeout is
//! [`ClientError::Timeout`], and the connection stays usable (a late response is still read later).

#![warn(clippy::cast_possible_truncation)]

#[cfg(feature = "rdma")]
pub mod rdma;
#[cfg(target_os = "linux")]
pub mod uring;

use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use thiserror::Error;

#[cfg(target_os = "linux")]
use crate::uring::UringStream;
pub use praas_transport::kind::TransportKind;
use praas_wire::protocol::{
    alignment_padding, decode_frame, response_result, Decoded, FrameError, FrameLimits, Header, MessageKind,
    OwnedFrame, RemoteFailure, Status, HEADER_LEN, PADDING,
};

/// Settings of a client connection.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long to wait for a response (and for the connection to open).
    pub timeout: Duration,
    /// Deadline the process applies to each invocation, in milliseconds (0: the process's default).
    pub invocation_timeout_ms: u32,
    /// Largest frame sent or accepted.
    pub max_frame: usize,
    /// How the connection moves bytes: io_uring where available (`Auto`), or plain blocking calls.
    pub transport: TransportKind,
    /// How long a wait for an answer polls the socket (non-blocking reads, yielding the CPU
    /// between them) before it blocks; zero, the default, blocks at once. Polling spares the
    /// wake-up a blocked thread pays when the answer comes, at the price of a CPU while it polls:
    /// for clients whose process answers within microseconds on another CPU or host.
    pub spin: Duration,
    /// Authenticate on connecting, for a process that serves authenticated clients only
    /// (`ProcessConfig::client_auth`); `None`: connect anonymously.
    pub credentials: Option<praas_wire::auth::Credentials>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            invocation_timeout_ms: 0,
            max_frame: praas_wire::protocol::DEFAULT_MAX_FRAME,
            transport: TransportKind::Auto,
            spin: Duration::ZERO,
            credentials: None,
        }
    }
}

/// Why an invocation did not return output.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The connection failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// No response within the timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The process closed the connection.
    #[error("the process closed the connection")]
    Closed,
    /// The process sent bytes that are not the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] FrameError),
    /// The request is larger than the frame limit; nothing was sent.
    #[error("request of {size} bytes exceeds the frame limit of {limit} bytes")]
    TooLarge {
        /// Bytes of function name plus input.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The process answered with an error.
    #[error("{status}: {message}")]
    Remote {
        /// What went wrong.
        status: Status,
        /// The process's explanation.
        message: String,
    },
}

impl From<RemoteFailure> for ClientError {
    fn from(failure: RemoteFailure) -> Self {
        Self::Remote { status: failure.status, message: failure.message }
    }
}

impl ClientError {
    /// The remote status, if the process answered with an error.
    pub fn status(&self) -> Option<Status> {
        match self {
            Self::Remote { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One finished invocation: its id and its output or error.
#[derive(Debug)]
pub struct Completion {
    /// The id [`Client::submit`] returned.
    pub id: u64,
    /// The output, or the process's error.
    pub result: Result<Vec<u8>, ClientError>,
}

/// One connection's invocations, whatever carries them: [`Client`] (TCP, over plain calls or
/// io_uring) and [`RdmaClient`](crate::rdma::RdmaClient) (RDMA verbs, feature `rdma`) implement
/// it by delegating to their own methods of the same names, so code that takes a
/// `&mut dyn Invoker` or holds a `Box<dyn Invoker>` ([`connect_invoker`]) works over any of them.
///
/// Every wait is bounded by the connection's timeout ([`ClientError::Timeout`]); answers that
/// arrive for other ids than the one waited for are kept for a later [`Invoker::wait`] or
/// [`Invoker::recv`].
pub trait Invoker: std::fmt::Debug {
    /// Invokes `function` with `input` and waits for its output.
    fn invoke(&mut self, function: &str, input: &[u8]) -> Result<Vec<u8>, ClientError>;

    /// Sends an invocation without waiting for its answer; returns its id.
    fn submit(&mut self, function: &str, input: &[u8]) -> Result<u64, ClientError>;

    /// Sends an invocation with an id of the caller's choosing.
    fn submit_with_id(&mut self, id: u64, function: &str, input: &[u8]) -> Result<(), ClientError>;

    /// Waits for the answer to `id`, keeping answers to other ids for later.
    fn wait(&mut self, id: u64) -> Result<Vec<u8>, ClientError>;

    /// Waits for the next answer, whatever its id.
    fn recv(&mut self) -> Result<Completion, ClientError>;

    /// Changes how long to wait for answers.
    fn set_timeout(&mut self, timeout: Duration);

    /// Changes how long a wait for an answer polls before it blocks ([`ClientOptions::spin`]);
    /// connections that poll by a policy of their own (RDMA) ignore it.
    fn set_spin(&mut self, _spin: Duration) {}

    /// Sends what [`Invoker::submit`] has held back (a batch, over io_uring); a no-op for
    /// connections that send at once.
    fn flush(&mut self) -> Result<(), ClientError> {
        Ok(())
    }
}

/// Implements [`Invoker`] for a client type by its inherent methods of the same names (thin
/// delegations, inlined), plus the items given (overrides of the trait's defaults).
macro_rules! invoker_by_inherent_methods {
    ($client:ty { $($extra:item)* }) => {
        impl $crate::Invoker for $client {
            #[inline]
            fn invoke(&mut self, function: &str, input: &[u8]) -> Result<Vec<u8>, $crate::ClientError> {
                <$client>::invoke(self, function, input)
            }

            #[inline]
            fn submit(&mut self, function: &str, input: &[u8]) -> Result<u64, $crate::ClientError> {
                <$client>::submit(self, function, input)
            }

            #[inline]
            fn submit_with_id(&mut self, id: u64, function: &str, input: &[u8]) -> Result<(), $crate::ClientError> {
                <$client>::submit_with_id(self, id, function, input)
            }

            #[inline]
            fn wait(&mut self, id: u64) -> Result<Vec<u8>, $crate::ClientError> {
                <$client>::wait(self, id)
            }

            #[inline]
            fn recv(&mut self) -> Result<$crate::Completion, $crate::ClientError> {
                <$client>::recv(self)
            }

            #[inline]
            fn set_timeout(&mut self, timeout: std::time::Duration) {
                <$client>::set_timeout(self, timeout);
            }

            $($extra)*
        }
    };
}
#[cfg(feature = "rdma")]
pub(crate) use invoker_by_inherent_methods;

invoker_by_inherent_methods!(Client {
    #[inline]
    fn set_spin(&mut self, spin: Duration) {
        Client::set_spin(self, spin);
    }

    #[inline]
    fn flush(&mut self) -> Result<(), ClientError> {
        Client::flush(self)
    }
});

/// Connects to `addr` and returns the connection as an [`Invoker`]: `rdma://HOST:PORT` by RDMA
/// ([`RdmaClient`](crate::rdma::RdmaClient), feature `rdma`; without it such an address is an
/// [`io::ErrorKind::Unsupported`] error), anything else (`HOST:PORT`) by TCP ([`Client`]).
///
/// `options` are the TCP client's; an RDMA connection takes their `timeout`,
/// `invocation_timeout_ms`, `max_frame` and `credentials` and leaves its own settings (device,
/// receive size, polling) at [`RdmaClientOptions::default`](crate::rdma::RdmaClientOptions),
/// which reads them from the environment. (`transport` and `spin` are TCP's only.)
pub fn connect_invoker(addr: &str, options: ClientOptions) -> Result<Box<dyn Invoker>, ClientError> {
    if let Some(rest) = addr.strip_prefix("rdma://") {
        #[cfg(feature = "rdma")]
        {
            let ClientOptions { timeout, invocation_timeout_ms, max_frame, credentials, .. } = options;
            let options = rdma::RdmaClientOptions {
                timeout,
                invocation_timeout_ms,
                max_frame,
                credentials,
                ..Default::default()
            };
            return Ok(Box::new(rdma::RdmaClient::connect_with(rest, options)?));
        }
        #[cfg(not(feature = "rdma"))]
        return Err(ClientError::Io(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{rest}: this build of the praas client has no RDMA"),
        )));
    }
    Ok(Box::new(Client::connect_with(addr, options)?))
}

/// A connection to a cloud process.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    /// The io_uring ring driving `stream`, when the transport resolved to io_uring.
    #[cfg(target_os = "linux")]
    ring: Option<UringStream>,
    /// io_uring only: small requests submitted and not yet sent (see [`Client::submit`]).
    #[cfg(target_os = "linux")]
    batch: Vec<u8>,
    /// Requests sent (or batched) whose responses have not been received.
    unanswered: usize,
    options: ClientOptions,
    next_id: u64,
    /// Received bytes not yet decoded: `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Responses received while waiting for another id.
    early: Early,
    /// The receive timeout the socket has now (`SO_RCVTIMEO`): set again only when a deadline
    /// needs a shorter one, so that a round trip costs no extra system call.
    armed: Option<Duration>,
    /// The deadline the waiting call set a moment ago, until its first `arm`: it leaves about the
    /// whole timeout, so a socket already armed needs no clock reading then.
    fresh: Option<Instant>,
}

const READ_CHUNK: usize = 64 << 10;
/// io_uring: requests of at most this many bytes are batched by [`Client::submit`].
#[cfg(target_os = "linux")]
const BATCH_FRAME: usize = 4 << 10;
/// io_uring: bytes of batched requests at most; a request that does not fit sends the batch.
#[cfg(target_os = "linux")]
const BATCH_BYTES: usize = 64 << 10;

impl Client {
    /// Connects with default options.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Self, ClientError> {
        Self::connect_with(addr, ClientOptions::default())
    }

    /// Connects with `options`.
    pub fn connect_with(addr: impl ToSocketAddrs, options: ClientOptions) -> Result<Self, ClientError> {
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
        for addr in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, options.timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_write_timeout(Some(options.timeout))?;
                    #[cfg(target_os = "linux")]
                    let ring = match options.transport.resolve() {
                        TransportKind::Uring => Some(UringStream::new(&stream)?),
                        _ => None,
                    };
                    let credentials = options.credentials.clone();
                    let mut client = Self {
                        stream,
                        #[cfg(target_os = "linux")]
                        ring,
                        #[cfg(target_os = "linux")]
                        batch: Vec::new(),
                        unanswered: 0,
                        options,
                        next_id: 1,
                        buf: vec![0; READ_CHUNK],
                        start: 0,
                        end: 0,
                        early: Early::default(),
                        armed: None,
                        fresh: None,
                    };
                    if let Some(credentials) = &credentials {
                        authenticate_client(&mut client, credentials)?;
                    }
                    return Ok(client);
                }
                Err(e) => last = e,
            }
        }
        Err(ClientError::Io(last))
    }

    /// The options in force.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Changes how long a wait for an answer polls before it blocks ([`ClientOptions::spin`]).
    pub fn set_spin(&mut self, spin: Duration) {
        self.options.spin = spin;
    }

    /// Changes how long to wait for responses.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.options.timeout = timeout;
        self.armed = None;
        // Best effort: a failure here shows again, as an error, on the next write.
        let _ = self.stream.set_write_timeout(Some(timeout));
    }

    /// Invokes `function` with `input` and waits for its output.
    pub fn invoke(&mut self, function: &str, input: &[u8]) -> Result<Vec<u8>, ClientError> {
        // Over io_uring with requests batched: they, this one and the first bytes of its answer
        // in one system call. Alone, a round trip is a plain `writev` and `read`: measured
        // 1.4 us faster than one `io_uring_enter` for both on 6.18 (docs/uring.md).
        #[cfg(target_os = "linux")]
        if self.ring.is_some() && !self.batch.is_empty() && self.early.is_empty() {
            self.compact();
            if self.end < self.buf.len() {
                let id = self.next_id;
                self.next_id += 1;
                let (header, pad) = self.encode_invoke(id, function, input)?;
                let deadline = Instant::now() + self.options.timeout;
                let ring = self.ring.as_mut().expect("checked");
                let bufs = [
                    IoSlice::new(&self.batch),
                    IoSlice::new(&header),
                    IoSlice::new(function.as_bytes()),
                    IoSlice::new(pad),
                    IoSlice::new(input),
                ];
                let received = ring.send_then_recv(&bufs, &mut self.buf[self.end..], deadline);
                self.batch.clear();
                match received {
                    Ok(0) => return Err(ClientError::Closed),
                    Ok(n) => self.end += n,
                    Err(e) => return Err(self.read_error(e)),
                }
                return self.wait(id);
            }
        }
        let id = self.submit(function, input)?;
        self.wait(id)
    }

    /// The header of an invocation, after checking its size against the frame limit, and the
    /// NUL padding to send after the function name (a large input leaves aligned like its
    /// memory: [`alignment_padding`]).
    fn encode_invoke(
        &mut self,
        id: u64,
        function: &str,
        input: &[u8],
    ) -> Result<([u8; HEADER_LEN], &'static [u8]), ClientError> {
        let mut pad = alignment_padding(function.len(), input.len(), input.as_ptr() as usize);
        if function.len() + pad + input.len() > self.options.max_frame {
            // Padding never takes a frame past the limit: such an input leaves unaligned.
            pad = 0;
        }
        let size = function.len() + pad + input.len();
        let (Ok(meta_len), Ok(input_len)) = (u16::try_from(function.len() + pad), u32::try_from(input.len())) else {
            return Err(ClientError::TooLarge { size, limit: self.options.max_frame });
        };
        if size > self.options.max_frame {
            return Err(ClientError::TooLarge { size, limit: self.options.max_frame });
        }
        self.unanswered += 1;
        Ok((Header::invoke(id, meta_len, self.options.invocation_timeout_ms, input_len).encode(), &PADDING[..pad]))
    }

    /// Sends an invocation without waiting; returns its id.
    ///
    /// Over io_uring a small request (at most 4 KiB) submitted while earlier requests are still
    /// unanswered is batched: it leaves with the next call that waits ([`Client::recv`],
    /// [`Client::wait`], [`Client::invoke`]), in the same system call as that call's receive, or
    /// with [`Client::flush`] or the client's drop; a pipelining client thus pays one system call
    /// per batch instead of one per request. A request submitted with nothing in flight is sent
    /// at once.
    pub fn submit(&mut self, function: &str, input: &[u8]) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.submit_with_id(id, function, input)?;
        Ok(id)
    }

    /// Sends an invocation with an id of the caller's choosing.
    pub fn submit_with_id(&mut self, id: u64, function: &str, input: &[u8]) -> Result<(), ClientError> {
        // Batched only behind requests still unanswered: a client with requests in flight comes
        // back for their answers, and this one leaves with that call.
        let corked = self.unanswered > 0;
        let (header, pad) = self.encode_invoke(id, function, input)?;
        #[cfg(target_os = "linux")]
        if self.ring.is_some() {
            let frame_len = HEADER_LEN + function.len() + pad.len() + input.len();
            if corked && frame_len <= BATCH_FRAME && self.batch.len() + frame_len <= BATCH_BYTES {
                // Sent with the next wait, in the same system call as its receive.
                self.batch.extend_from_slice(&header);
                self.batch.extend_from_slice(function.as_bytes());
                self.batch.extend_from_slice(pad);
                self.batch.extend_from_slice(input);
                return Ok(());
            }
        }
        // Sent at once (with anything batched before it), as a plain `writev`: alone, a send
        // through the ring costs more than the system call (docs/uring.md).
        #[cfg(target_os = "linux")]
        let batch = std::mem::take(&mut self.batch);
        #[cfg(not(target_os = "linux"))]
        let batch = Vec::new();
        let written = write_all_vectored(
            &mut self.stream,
            &mut [
                IoSlice::new(&batch),
                IoSlice::new(&header),
                IoSlice::new(function.as_bytes()),
                IoSlice::new(pad),
                IoSlice::new(input),
            ],
        );
        #[cfg(target_os = "linux")]
        {
            self.batch = batch;
            self.batch.clear();
        }
        written.map_err(|e| self.read_error(e))?;
        Ok(())
    }

    /// Sends the requests [`Client::submit`] batched and has not sent yet (io_uring only; a no-op
    /// otherwise). Every wait sends them too, so only a client that submits and then does something
    /// else than waiting needs this.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        #[cfg(target_os = "linux")]
        if !self.batch.is_empty() {
            let sent = write_all_vectored(&mut self.stream, &mut [IoSlice::new(&self.batch)]);
            self.batch.clear();
            sent.map_err(|e| self.read_error(e))?;
        }
        Ok(())
    }

    /// Waits for the response to `id`, keeping responses to other ids for later.
    pub fn wait(&mut self, id: u64) -> Result<Vec<u8>, ClientError> {
        if let Some(result) = self.early.take(id) {
            return result;
        }
        let deadline = self.deadline();
        loop {
            let completion = self.recv_until(deadline)?;
            if completion.id == id {
                return completion.result;
            }
            self.early.keep(completion);
        }
    }

    /// Waits for the next response, whatever its id.
    pub fn recv(&mut self) -> Result<Completion, ClientError> {
        if let Some(completion) = self.early.take_any() {
            return Ok(completion);
        }
        let deadline = self.deadline();
        self.recv_until(deadline)
    }

    /// The deadline of a call that starts waiting now.
    fn deadline(&mut self) -> Instant {
        let deadline = Instant::now() + self.options.timeout;
        self.fresh = Some(deadline);
        deadline
    }

    fn recv_until(&mut self, deadline: Instant) -> Result<Completion, ClientError> {
        let limits = FrameLimits { max_frame: self.options.max_frame };
        loop {
            match decode_frame(&self.buf[self.start..self.end], limits)? {
                Decoded::Frame(frame, used) => {
                    let completion = response_result(&frame.header, frame.meta).map(|result| Completion {
                        id: frame.header.id,
                        result: result.map(|()| frame.payload.to_vec()).map_err(ClientError::from),
                    });
                    self.start += used;
                    if let Some(completion) = completion {
                        self.unanswered = self.unanswered.saturating_sub(1);
                        return Ok(completion);
                    }
                }
                Decoded::Incomplete(missing) => {
                    let have = self.end - self.start;
                    if have + missing > self.buf.len() {
                        // A large response: read the rest straight into its own buffer.
                        return self.recv_large(deadline, limits);
                    }
                    self.fill(deadline)?;
                }
            }
        }
    }

    /// Receives a frame too large for the read buffer: its metadata (an error text, or padding)
    /// into a small buffer and its payload straight into the vector the caller gets.
    fn recv_large(&mut self, deadline: Instant, limits: FrameLimits) -> Result<Completion, ClientError> {
        let head = *self.buf[self.start..self.end].first_chunk::<HEADER_LEN>().expect("a large frame's header is here");
        let header = Header::decode(&head, limits)?;
        // Everything buffered belongs to this (incomplete) frame.
        let prefix = &self.buf[self.start + HEADER_LEN..self.end];
        let (meta_len, payload_len) = (header.meta_len as usize, header.payload_len as usize);
        let split = prefix.len().min(meta_len);
        let mut meta = Vec::with_capacity(meta_len);
        meta.extend_from_slice(&prefix[..split]);
        let mut payload = Vec::with_capacity(payload_len);
        payload.extend_from_slice(&prefix[split..]);
        self.start = 0;
        self.end = 0;
        self.flush()?;
        self.read_into(&mut meta, meta_len, deadline)?;
        self.read_into(&mut payload, payload_len, deadline)?;
        if header.kind == MessageKind::Response {
            self.unanswered = self.unanswered.saturating_sub(1);
        }
        if header.kind == MessageKind::Response && header.status == Status::Ok.code() {
            return Ok(Completion { id: header.id, result: Ok(payload) });
        }
        let result = response_result(&header, &meta);
        match result
            .map(|result| Completion { id: header.id, result: result.map(|()| payload).map_err(ClientError::from) })
        {
            Some(completion) => Ok(completion),
            None => self.recv_until(deadline),
        }
    }

    /// Reads from the connection until `buf` holds `total` bytes (over io_uring into memory
    /// not zeroed first).
    fn read_into(&mut self, buf: &mut Vec<u8>, total: usize, deadline: Instant) -> Result<(), ClientError> {
        #[cfg(target_os = "linux")]
        if self.ring.is_some() {
            while buf.len() < total {
                self.arm(deadline)?;
                let ring = self.ring.as_mut().expect("checked");
                match ring.recv_to_capacity(buf, total - buf.len(), deadline) {
                    Ok(0) => return Err(ClientError::Closed),
                    Ok(_) => {}
                    Err(e) => return Err(self.read_error(e)),
                }
            }
            return Ok(());
        }
        let mut filled = buf.len();
        buf.resize(total, 0);
        while filled < total {
            self.arm(deadline)?;
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => filled += n,
                Err(e) if self.retry_read(&e, deadline) => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
        Ok(())
    }

    /// Reads more bytes into the buffer, compacting it first.
    fn fill(&mut self, deadline: Instant) -> Result<(), ClientError> {
        self.compact();
        self.arm(deadline)?;
        #[cfg(target_os = "linux")]
        if let Some(ring) = self.ring.as_mut().filter(|_| !self.batch.is_empty()) {
            // Batched requests go out in the same system call as this receive. (Alone, a receive
            // is a plain `read`: cheaper than through the ring.)
            let received = ring.send_then_recv(&[IoSlice::new(&self.batch)], &mut self.buf[self.end..], deadline);
            self.batch.clear();
            return match received {
                Ok(0) => Err(ClientError::Closed),
                Ok(n) => {
                    self.end += n;
                    Ok(())
                }
                Err(e) => Err(self.read_error(e)),
            };
        }
        if !self.options.spin.is_zero() {
            if let Some(n) = self.spin_read()? {
                self.end += n;
                return Ok(());
            }
        }
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if self.retry_read(&e, deadline) => self.arm(deadline)?,
                Err(e) => return Err(self.read_error(e)),
            }
        }
    }

    /// Polls the socket with non-blocking reads for up to `options.spin`, yielding the CPU between
    /// them (to the process itself, when it shares this CPU); returns the bytes read into the
    /// buffer, or `None` when nothing came in that time.
    fn spin_read(&mut self) -> Result<Option<usize>, ClientError> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.stream);
        let mut started: Option<Instant> = None;
        loop {
            let free = &mut self.buf[self.end..];
            // SAFETY: recv writes at most `free.len()` bytes into `free`, which is borrowed
            // exclusively and alive for the call.
            let n = unsafe { libc::recv(fd, free.as_mut_ptr().cast(), free.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                return Ok(Some(n as usize));
            }
            if n == 0 {
                return Err(ClientError::Closed);
            }
            let err = io::Error::last_os_error();
            if !matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
                return Err(self.read_error(err));
            }
            if started.get_or_insert_with(Instant::now).elapsed() >= self.options.spin {
                return Ok(None);
            }
            std::thread::yield_now();
        }
    }

    /// Whether a failed read should be retried: it was interrupted (io_uring task work in this
    /// process interrupts blocking calls), or it timed out before `deadline` (the socket's timeout
    /// was armed for an earlier, shorter wait: the next `arm` sets it again).
    fn retry_read(&mut self, e: &io::Error, deadline: Instant) -> bool {
        if e.kind() == io::ErrorKind::Interrupted {
            return true;
        }
        let early =
            matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) && Instant::now() < deadline;
        if early {
            self.armed = None;
        }
        early
    }

    /// Moves undecoded bytes to the start of the buffer.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    fn arm(&mut self, deadline: Instant) -> Result<(), ClientError> {
        if self.fresh.take() == Some(deadline) && self.armed.is_some() && !self.options.timeout.is_zero() {
            // Set microseconds ago: about the whole timeout is left, and the socket's timeout is
            // at most that (`set_timeout` clears `armed`).
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout(self.options.timeout));
        }
        // A read may overrun the deadline by at most this slack, in exchange for not setting the
        // socket option before every read.
        const SLACK: Duration = Duration::from_millis(2);
        if self.armed.is_none_or(|armed| armed > left + SLACK) {
            self.stream.set_read_timeout(Some(left))?;
            self.armed = Some(left);
        }
        Ok(())
    }

    /// The transport this connection uses: `uring` or `mio` (plain blocking calls).
    pub fn transport(&self) -> TransportKind {
        #[cfg(target_os = "linux")]
        if self.ring.is_some() {
            return TransportKind::Uring;
        }
        TransportKind::Mio
    }

    fn read_error(&self, e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout(self.options.timeout),
            _ => ClientError::Io(e),
        }
    }
}

/// Writes every byte of `bufs` with vectored writes.
/// A small frame is copied into one buffer and written with `write`: the kernel then imports no
/// iovecs (measured: about a tenth of a small send's system time).
fn write_all_vectored(stream: &mut TcpStream, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut flat = praas_wire::protocol::FlatBuf::new();
    if let Some(small) = flat.fill(bufs) {
        return stream.write_all(small);
    }
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match stream.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl praas_wire::handshake::HandshakeWire for Client {
    type Error = ClientError;

    fn send_frame(&mut self, header: Header, meta: &[u8], payload: &[u8]) -> Result<(), ClientError> {
        let (Ok(meta_len), Ok(payload_len)) = (u16::try_from(meta.len()), u32::try_from(payload.len())) else {
            return Err(ClientError::TooLarge { size: meta.len() + payload.len(), limit: self.options.max_frame });
        };
        let head = Header { meta_len, payload_len, ..header }.encode();
        let sent =
            write_all_vectored(&mut self.stream, &mut [IoSlice::new(&head), IoSlice::new(meta), IoSlice::new(payload)]);
        sent.map_err(|e| self.read_error(e))
    }

    fn recv_frame(&mut self) -> Result<OwnedFrame, ClientError> {
        let deadline = self.deadline();
        let limits = FrameLimits { max_frame: self.options.max_frame };
        loop {
            match decode_frame(&self.buf[self.start..self.end], limits)? {
                Decoded::Frame(frame, used) => {
                    let owned =
                        OwnedFrame { header: frame.header, meta: frame.meta.to_vec(), payload: frame.payload.to_vec() };
                    self.start += used;
                    return Ok(owned);
                }
                Decoded::Incomplete(missing) if self.end - self.start + missing > self.buf.len() => {
                    return Err(ClientError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a handshake frame larger than the read buffer",
                    )));
                }
                Decoded::Incomplete(_) => self.fill(deadline)?,
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Requests batched and never waited for still go out (best effort).
        let _ = self.flush();
    }
}

/// The client side of the handshake with a process that requires authentication: both sides
/// prove they hold the application's client key (the process thereby that it belongs to the
/// application).
pub(crate) fn authenticate_client(
    wire: &mut impl praas_wire::handshake::HandshakeWire<Error = ClientError>,
    credentials: &praas_wire::auth::Credentials,
) -> Result<(), ClientError> {
    use praas_wire::handshake::{introduce, Introduction};
    let who =
        Introduction { app: &credentials.app, me: &credentials.name, key: &credentials.key, client: true, to: None };
    introduce(wire, &who).map_err(|err| match err.wire_or_refusal() {
        Ok(err) => err,
        Err(refused) => ClientError::Remote { status: Status::Unauthenticated, message: refused.0 },
    })
}

/// Answers received while waiting for another id, kept until asked for.
#[derive(Debug, Default)]
pub(crate) struct Early(praas_wire::idmap::IdMap<u64, Result<Vec<u8>, ClientError>>);

impl Early {
    /// Whether no answer is kept.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many answers are kept.
    #[cfg(feature = "rdma")]
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The kept answer to `id`, taken out. (An empty map is not hashed into: most waits find
    /// nothing early.)
    #[inline]
    pub(crate) fn take(&mut self, id: u64) -> Option<Result<Vec<u8>, ClientError>> {
        if self.0.is_empty() {
            return None;
        }
        self.0.remove(&id)
    }

    /// Any kept answer, taken out.
    #[inline]
    pub(crate) fn take_any(&mut self) -> Option<Completion> {
        let &id = self.0.keys().next()?;
        let result = self.0.remove(&id).expect("key just seen");
        Some(Completion { id, result })
    }

    /// Keeps `completion` for a later wait.
    #[inline]
    pub(crate) fn keep(&mut self, completion: Completion) {
        self.0.insert(completion.id, completion.result);
    }
}
