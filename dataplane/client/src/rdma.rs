//! The SDK side of the RDMA transport: [`RdmaClient`], with the API of [`Client`](crate::Client)
//! (`invoke`, `submit`, `recv`, `wait`, typed errors, every wait bounded by the timeout).
//!
//! A client owns its device context, protection domain, completion queue and one queue pair.
//! Small requests are copied into a registered send slot and sent; a large input is registered
//! in place (read-only, zero-copy), announced, and written into the buffer the process grants.
//! A large output is written by the process straight into a buffer the client registered for it,
//! which becomes the `Vec<u8>` the caller gets (the registration is revoked first).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Early;
use crate::{ClientError, Completion};
use praas_transport::rdma::connect::{self, Endpoint, STATUS_FULL, STATUS_OK};
use praas_transport::rdma::flow::{
    wr_id, wr_parts, Grant, Imm, Op, Receives, SendWindow, Sends, TransferError, GRANT_LEN, WR_RECV, WR_SLOT, WR_WRITE,
};
use praas_transport::rdma::verbs::{
    CompletionChannel, CompletionQueue, ProtectionDomain, QueuePair, RecvBuffer, Registered, SendOp,
    WorkCompletion as Wc, ACCESS_LOCAL_READ, ACCESS_LOCAL_WRITE, ACCESS_REMOTE_WRITE,
};
use praas_transport::rdma::PollPolicy;
use praas_wire::protocol::{
    decode_frame, response_result, Decoded, FrameLimits, Header, OwnedFrame, Status, HEADER_LEN,
};

/// Settings of an RDMA client connection.
#[derive(Debug, Clone)]
pub struct RdmaClientOptions {
    /// How long to wait for a response (and for the connection to open).
    pub timeout: Duration,
    /// LazyDeadline the process applies to each invocation, in milliseconds (0: the process's default).
    pub invocation_timeout_ms: u32,
    /// Largest frame sent or accepted.
    pub max_frame: usize,
    /// The RDMA device; `None`: the one with a GID for the connection's local address.
    pub device: Option<String>,
    /// Bytes of each receive buffer (responses up to this size arrive by SEND).
    pub recv_size: usize,
    /// How the client waits for completions.
    pub poll: PollPolicy,
    /// Authenticate on connecting, for a process that serves authenticated clients only;
    /// `None`: connect anonymously.
    pub credentials: Option<praas_wire::auth::Credentials>,
}

impl Default for RdmaClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            invocation_timeout_ms: 0,
            max_frame: praas_wire::protocol::DEFAULT_MAX_FRAME,
            device: std::env::var("PRAAS_RDMA_DEVICE").ok().filter(|d| !d.is_empty()),
            recv_size: 8 << 10,
            poll: PollPolicy::from_env().unwrap_or_default(),
            credentials: None,
        }
    }
}

/// A large response being written into a buffer this client granted.
struct Incoming {
    header: Header,
    meta: Vec<u8>,
    buf: Registered<Box<[u8]>>,
}

/// A connection to a cloud process over RDMA.
pub struct RdmaClient {
    // Field order is drop order: the QP first, so nothing is posted on the memory below.
    qp: QueuePair,
    /// Large responses: granted a buffer here, until the process's write fills it.
    receives: Receives<(), Incoming>,
    recv: Registered<Box<[u8]>>,
    send: Registered<Box<[u8]>>,
    cq: Arc<CompletionQueue>,
    channel: Arc<CompletionChannel>,
    pd: Arc<ProtectionDomain>,
    stream: TcpStream,
    options: RdmaClientOptions,
    /// Bytes of one send slot: the process's receive-buffer size.
    slot_size: usize,
    /// Bytes of one of our receive buffers.
    recv_size: usize,
    /// The send slots, the send queue's room, and the sends in flight.
    window: SendWindow,
    credits: u32,
    inline_max: usize,
    next_id: u64,
    /// Large inputs: announced, granted by the process, written until the write completes.
    sends: Sends<()>,
    /// Announcements of the process waiting for a credit to answer them.
    to_grant: VecDeque<(u16, Grant)>,
    /// Frames received and not yet asked for.
    ready: VecDeque<OwnedFrame>,
    early: Early,
    broken: Option<String>,
    completions: Vec<Wc>,
    /// Completions handled so far, wherever they were polled: [`RdmaClient::progress`] returns
    /// when this moves, also when a look at the set-up socket polled them.
    handled: u64,
    /// Receive buffers whose completions were handled, reposted [`REPOST_BATCH`] at a time.
    repost: [RecvBuffer; REPOST_BATCH],
    reposts: usize,
}

/// Receive buffers reposted in one call (one lock, one doorbell); the QP has this many more
/// receives than the protocol needs, so waiting ones never starve it.
const REPOST_BATCH: usize = 8;

impl std::fmt::Debug for RdmaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaClient")
            .field("qpn", &self.qp.qp_num())
            .field("credits", &self.credits)
            .field("free_slots", &self.window.free_slots())
            .field("sq_room", &self.window.room())
            .field("to_grant", &self.to_grant.len())
            .field("sends", &self.sends.len())
            .field("ready", &self.ready.len())
            .field("early", &self.early.len())
            .field("broken", &self.broken)
            .finish()
    }
}

impl RdmaClient {
    /// Connects with default options.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Self, ClientError> {
        Self::connect_with(addr, RdmaClientOptions::default())
    }

    /// Connects with `options`: the set-up exchange over TCP, then the queue pair.
    pub fn connect_with(addr: impl ToSocketAddrs, options: RdmaClientOptions) -> Result<Self, ClientError> {
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
        let mut stream = None;
        for addr in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, options.timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut stream = stream.ok_or(ClientError::Io(last))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(options.timeout))?;
        let ip = stream.local_addr()?.ip();
        let (context, port) = connect::device_for(ip, options.device.as_deref())?;
        let port = if port.gid == [0; 16] { connect::local_port(&context, ip)? } else { port };
        let pd = ProtectionDomain::new(&context)?;
        let channel = CompletionChannel::new(&context)?;
        // The queue pair has room for the receives of at most 64 credits (`recv_count`); those
        // of the credits granted are posted once the process has answered.
        let recv_size = options.recv_size.max(HEADER_LEN + GRANT_LEN + 256);
        let recv_len = u32::try_from(recv_size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "an RDMA receive size beyond 32 bits"))?;
        let max_credits = 64u32;
        let max_recvs = recv_count(max_credits);
        let cq = CompletionQueue::new(&context, (2 * max_recvs + 64) as usize, Some(&channel))?;
        let sq_depth = 2 * max_credits + 4;
        let (qp, inline_max) = match QueuePair::new(&pd, &cq, None, sq_depth, max_recvs, 64) {
            Ok(qp) => (qp, 64),
            Err(_) => (QueuePair::new(&pd, &cq, None, sq_depth, max_recvs, 0)?, 0),
        };
        connect::to_init(&qp, &port)?;
        let psn = connect::random_psn();
        let local = Endpoint {
            mtu: port.mtu,
            lid: port.lid,
            qpn: qp.qp_num(),
            psn,
            gid: port.gid,
            credits: 0,
            recv_size: recv_len,
            status: STATUS_OK,
        };
        local.write_to(&mut stream)?;
        let remote = Endpoint::read_from(&mut stream).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ClientError::Closed,
            _ => ClientError::Io(e),
        })?;
        match remote.status {
            STATUS_OK => {}
            STATUS_FULL => {
                return Err(ClientError::Remote {
                    status: Status::Overloaded,
                    message: "the process serves as many RDMA connections as it can".into(),
                })
            }
            code => {
                return Err(ClientError::Remote {
                    status: Status::Internal,
                    message: format!("the process could not set up the RDMA connection (code {code})"),
                })
            }
        }
        // As many receives as the credits granted can need, posted before the queue pair can
        // receive: the fewer buffers the receives cycle through, the warmer they stay in caches
        // (a receive queue is consumed in order).
        let credits = remote.credits.min(max_credits);
        let recvs = recv_count(credits);
        let recv = Registered::new(&pd, vec![0u8; recv_size * recvs as usize].into_boxed_slice(), ACCESS_LOCAL_WRITE)?;
        for i in 0..recvs {
            let addr = recv.mr().addr() + (i as usize * recv_size) as u64;
            // SAFETY: the slot lies in `recv`, registered for local write on this PD; the program
            // reads it only after its completion and `recv` outlives the QP (field order).
            unsafe { qp.post_recv(wr_id(0, WR_RECV, i), addr, recv_len, recv.mr().lkey())? };
        }
        connect::to_rts(&qp, &port, psn, &remote)?;
        stream.set_nonblocking(true)?;
        let slot_size = (remote.recv_size as usize).max(HEADER_LEN + GRANT_LEN);
        let slot_count = credits + 4;
        let send =
            Registered::new(&pd, vec![0u8; slot_size * slot_count as usize].into_boxed_slice(), ACCESS_LOCAL_READ)?;
        let credentials = options.credentials.clone();
        let mut client = Self {
            qp,
            receives: Receives::default(),
            recv,
            send,
            cq,
            channel,
            pd,
            stream,
            options,
            slot_size,
            recv_size,
            window: SendWindow::new(0, slot_count, sq_depth),
            credits,
            inline_max,
            next_id: 1,
            sends: Sends::default(),
            to_grant: VecDeque::new(),
            ready: VecDeque::new(),
            early: Early::default(),
            broken: None,
            completions: Vec::with_capacity(praas_transport::rdma::verbs::POLL_BATCH),
            handled: 0,
            repost: [RecvBuffer { wr_id: 0, addr: 0, len: 0, lkey: 0 }; REPOST_BATCH],
            reposts: 0,
        };
        if let Some(credentials) = &credentials {
            crate::authenticate_client(&mut client, credentials)?;
        }
        Ok(client)
    }

    /// The options in force.
    pub fn options(&self) -> &RdmaClientOptions {
        &self.options
    }

    /// Changes how long to wait for responses.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.options.timeout = timeout;
    }

    /// Invokes `function` with `input` and waits for its output.
    pub fn invoke(&mut self, function: &str, input: &[u8]) -> Result<Vec<u8>, ClientError> {
        let id = self.submit(function, input)?;
        self.wait(id)
    }

    /// Sends an invocation without waiting for its response; returns its id. Waits only for a
    /// credit (and, for a large input, until the process has taken it).
    pub fn submit(&mut self, function: &str, input: &[u8]) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.submit_with_id(id, function, input)?;
        Ok(id)
    }

    /// Sends an invocation with an id of the caller's choosing.
    pub fn submit_with_id(&mut self, id: u64, function: &str, input: &[u8]) -> Result<(), ClientError> {
        let (Ok(name_len), Ok(input_len)) = (u16::try_from(function.len()), u32::try_from(input.len())) else {
            return Err(ClientError::TooLarge { size: function.len() + input.len(), limit: self.options.max_frame });
        };
        let header = Header::invoke(id, name_len, self.options.invocation_timeout_ms, input_len);
        self.send_frame(header, function.as_bytes(), input)
    }

    /// Sends one frame of any kind (the lengths in `header` are set from `meta` and `payload`):
    /// by SEND if it fits a slot, else announced and written into the buffer the process grants.
    /// Waits only for a credit (and, for a large payload, until the process has taken it).
    pub(crate) fn send_frame(&mut self, header: Header, meta: &[u8], payload: &[u8]) -> Result<(), ClientError> {
        let size = meta.len() + payload.len();
        let (Ok(meta_len), Ok(payload_len)) = (u16::try_from(meta.len()), u32::try_from(payload.len())) else {
            return Err(ClientError::TooLarge { size, limit: self.options.max_frame });
        };
        if size > self.options.max_frame {
            return Err(ClientError::TooLarge { size, limit: self.options.max_frame });
        }
        if HEADER_LEN + meta.len() > self.slot_size {
            return Err(ClientError::TooLarge { size: meta.len(), limit: self.slot_size - HEADER_LEN });
        }
        let header = Header { meta_len, payload_len, ..header }.encode();
        let mut deadline = LazyDeadline::new(self.options.timeout);
        if HEADER_LEN + size <= self.slot_size {
            return self.send_message(Op::Frame, 0, &[&header, meta, payload], &mut deadline);
        }
        // Large: register the payload where it is, announce it, write it when granted.
        let registered = Registered::new(&self.pd, payload, ACCESS_LOCAL_READ)?;
        let token = self.sends.announce((), payload_len);
        if let Err(e) = self.send_message(Op::Rts, token, &[&header, meta], &mut deadline) {
            self.sends.remove(token);
            return Err(e);
        }
        // (The grant's size is checked as it arrives.)
        let grant = loop {
            if let Some((_, grant)) = self.sends.granted(token) {
                break grant;
            }
            self.progress(&mut deadline)?;
        };
        self.wait_for_credit_and_room(&mut deadline, false)?;
        let imm = Imm::new(Op::Data, 0, token).encode();
        let post = self.window.write_send(token);
        // SAFETY: `registered` is registered on this PD and is kept alive (below) until this
        // write's completion has been polled, or the connection is broken (then dropped only
        // with the client, after the QP).
        unsafe {
            self.qp.post_send(
                post.id,
                SendOp::WriteImm { remote_addr: grant.addr, rkey: grant.rkey },
                imm,
                registered.mr().addr(),
                payload_len,
                registered.mr().lkey(),
                false,
                post.signaled,
            )?
        };
        self.credits -= 1;
        self.window.write_posted(post);
        self.sends.writing(token);
        let result = loop {
            if !self.sends.is_writing(token) {
                break Ok(());
            }
            if let Err(e) = self.progress(&mut deadline) {
                break Err(e);
            }
        };
        if result.is_err() {
            // The write may still be posted: keep its memory registered and alive until the QP
            // is gone. Moving the QP to the error state flushes it; wait for that.
            let _ = self.qp.set_error();
            let flush_deadline = Instant::now() + Duration::from_secs(5);
            while self.sends.is_writing(token) && Instant::now() < flush_deadline {
                let _ = self.poll_once();
            }
            if self.sends.is_writing(token) {
                // Never completed: leak the registration rather than let the device touch freed
                // or reused memory.
                std::mem::forget(registered);
            }
        }
        result
    }

    /// Sends bytes as one frame message, ignoring the frame format: for tests of how a process
    /// treats a broken peer. With `ignore_credits`, sends even without a credit. Only with the
    /// feature `test-hooks`, which only dev-dependencies enable.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn send_raw(&mut self, bytes: &[u8], ignore_credits: bool) -> Result<(), ClientError> {
        let mut deadline = LazyDeadline::new(self.options.timeout);
        if ignore_credits {
            self.credits += 1;
        }
        self.send_message(Op::Frame, 0, &[bytes], &mut deadline)
    }

    /// Waits for the response to `id`, keeping responses to other ids for later.
    pub fn wait(&mut self, id: u64) -> Result<Vec<u8>, ClientError> {
        let mut deadline = LazyDeadline::new(self.options.timeout);
        loop {
            if let Some(result) = self.early.take(id) {
                return result;
            }
            while let Some(c) = self.ready.pop_front().and_then(frame_completion) {
                if c.id == id {
                    return c.result;
                }
                self.early.keep(c);
            }
            self.progress(&mut deadline)?;
        }
    }

    /// Waits for the next response, whatever its id.
    pub fn recv(&mut self) -> Result<Completion, ClientError> {
        let mut deadline = LazyDeadline::new(self.options.timeout);
        loop {
            while let Some(frame) = self.ready.pop_front() {
                if let Some(c) = frame_completion(frame) {
                    return Ok(c);
                }
            }
            if let Some(c) = self.early.take_any() {
                return Ok(c);
            }
            self.progress(&mut deadline)?;
        }
    }

    /// Waits for the next frame of any kind (answers to `Hello` and `Message` frames), within
    /// the timeout. Responses to invocations waited for with [`RdmaClient::wait`] are not mixed
    /// in: a connection used for frames carries nothing else.
    pub(crate) fn recv_frame(&mut self) -> Result<OwnedFrame, ClientError> {
        let mut deadline = LazyDeadline::new(self.options.timeout);
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Ok(frame);
            }
            self.progress(&mut deadline)?;
        }
    }

    /// Whether the connection still looks usable: no completion reported an error and the
    /// process has not closed the set-up connection.
    pub(crate) fn alive(&mut self) -> bool {
        self.check_alive().is_ok()
    }

    /// Handles the completions that arrived (and the events of the completion channel) without
    /// waiting: whether [`RdmaClient::recv_frame`] would return at once, with a frame or because
    /// the connection broke.
    pub(crate) fn frame_ready(&mut self) -> bool {
        self.cq.take_events();
        loop {
            match self.poll_once() {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => return true,
            }
        }
        !self.ready.is_empty() || self.check_alive().is_err()
    }

    /// Arms the completion queue and returns the completion channel's and the set-up socket's
    /// descriptors, one of which becomes readable when something arrives (or the process closes
    /// the connection); `None` if a completion arrived as it was armed (or the connection broke):
    /// look at [`RdmaClient::frame_ready`] again.
    pub(crate) fn wait_fds(&mut self) -> Option<[std::os::fd::RawFd; 2]> {
        if self.cq.arm().is_err() || !matches!(self.poll_once(), Ok(false)) {
            return None;
        }
        Some([self.channel.fd(), self.stream.as_raw_fd()])
    }

    fn send_message(
        &mut self,
        op: Op,
        token: u16,
        parts: &[&[u8]],
        deadline: &mut LazyDeadline,
    ) -> Result<(), ClientError> {
        self.wait_for_credit_and_room(deadline, true)?;
        let slot = self.window.take_slot().expect("waited for a slot");
        let offset = slot as usize * self.slot_size;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        assert!(total <= self.slot_size, "message larger than a send slot");
        // SAFETY: a free slot is named by no posted work request.
        let len = unsafe { self.send.write(offset, parts) };
        let imm = Imm::new(op, 0, token).encode();
        // At most a slot (asserted above), whose size the process said in 32 bits.
        #[allow(clippy::cast_possible_truncation)]
        let len32 = len as u32;
        let post = self.window.slot_send(slot);
        // SAFETY: the slot lies in `send`, registered on this PD, and stays unused until the
        // completion of this send or a later one returns it to the free list; `send` outlives
        // the QP.
        let posted = unsafe {
            self.qp.post_send(
                post.id,
                SendOp::SendImm,
                imm,
                self.send.mr().addr() + offset as u64,
                len32,
                self.send.mr().lkey(),
                len <= self.inline_max,
                post.signaled,
            )
        };
        if let Err(e) = posted {
            self.window.give_back(slot);
            return Err(ClientError::Io(e));
        }
        self.credits -= 1;
        self.window.slot_posted(post);
        Ok(())
    }

    fn wait_for_credit_and_room(&mut self, deadline: &mut LazyDeadline, slot: bool) -> Result<(), ClientError> {
        while self.credits == 0 || !(if slot { self.window.can_send() } else { self.window.has_room() }) {
            self.progress(deadline)?;
        }
        Ok(())
    }

    /// Handles completions until at least one arrived, the connection broke, or the deadline.
    fn progress(&mut self, deadline: &mut LazyDeadline) -> Result<(), ClientError> {
        let mut started: Option<Instant> = None;
        let mut spins = 0u32;
        let handled = self.handled;
        loop {
            // Also when the completions were taken in `check_alive` (the process answered and
            // closed before this thread looked): the caller finds them in `ready`.
            if self.poll_once()? || self.handled != handled {
                return Ok(());
            }
            // Clocks and the socket are looked at every 256th empty poll (a clock read can be a
            // system call where the TSC is not trusted, as in VMs).
            spins += 1;
            if !spins.is_multiple_of(256) && self.options.poll != PollPolicy::Events {
                continue;
            }
            if spins.is_multiple_of(4096) {
                self.check_alive()?;
            }
            if deadline.passed() {
                return Err(ClientError::Timeout(self.options.timeout));
            }
            if self.options.poll.should_sleep(started.get_or_insert_with(Instant::now).elapsed()) {
                self.cq.arm()?;
                if self.poll_once()? {
                    return Ok(());
                }
                self.sleep(deadline)?;
                self.cq.take_events();
                if deadline.passed() && !self.poll_once()? && self.handled == handled {
                    return Err(ClientError::Timeout(self.options.timeout));
                }
            }
        }
    }

    /// Waits on the completion channel and the set-up socket until either is readable.
    fn sleep(&mut self, deadline: &mut LazyDeadline) -> Result<(), ClientError> {
        let left = deadline.left();
        let mut fds = [
            libc::pollfd { fd: self.channel.fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms.max(1)) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(ClientError::Io(e));
            }
        }
        if fds[1].revents != 0 {
            self.check_alive()?;
        }
        Ok(())
    }

    /// Fails if the process closed the set-up connection (after taking what already arrived).
    fn check_alive(&mut self) -> Result<(), ClientError> {
        if let Some(why) = &self.broken {
            return Err(ClientError::Io(io::Error::new(io::ErrorKind::ConnectionAborted, why.clone())));
        }
        let mut byte = [0u8; 1];
        match (&self.stream).read(&mut byte) {
            Ok(0) => {
                // Answers sent before the close are in the queue already: take them first.
                while self.poll_once()? {}
                if self.ready.is_empty() {
                    Err(ClientError::Closed)
                } else {
                    Ok(())
                }
            }
            Ok(_) => Err(ClientError::Io(io::Error::new(io::ErrorKind::InvalidData, "bytes on the set-up connection"))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(ClientError::Io(e)),
        }
    }

    /// Polls the completion queue once; returns whether there was anything.
    fn poll_once(&mut self) -> Result<bool, ClientError> {
        let mut batch = std::mem::take(&mut self.completions);
        batch.clear();
        let n = self.cq.poll(&mut batch)?;
        self.handled += n as u64;
        let mut result = Ok(());
        for wc in &batch {
            if let Err(e) = self.completion(wc) {
                result = Err(e);
            }
        }
        self.completions = batch;
        self.post_grants();
        result.map(|()| n > 0)
    }

    fn completion(&mut self, wc: &Wc) -> Result<(), ClientError> {
        let (_, kind, index) = wr_parts(wc.wr_id);
        if kind != WR_RECV {
            // A send completed: it and every send posted before it are done.
            let Self { window, sends, .. } = self;
            window.retire(wc.wr_id, |token| {
                sends.written(token);
            });
        }
        if !wc.ok() {
            let why = format!("RDMA work failed: {}", wc.status_text());
            self.broken.get_or_insert(why.clone());
            return Err(ClientError::Io(io::Error::new(io::ErrorKind::ConnectionAborted, why)));
        }
        match kind {
            WR_SLOT | WR_WRITE => {}
            WR_RECV => {
                let result = self.received(index, wc);
                let addr = self.recv.mr().addr() + (index as usize * self.recv_size) as u64;
                // Checked to fit in `connect_with`: never saturates.
                let len = u32::try_from(self.recv_size).unwrap_or(u32::MAX);
                self.repost[self.reposts] = RecvBuffer { wr_id: wc.wr_id, addr, len, lkey: self.recv.mr().lkey() };
                self.reposts += 1;
                if self.reposts == REPOST_BATCH {
                    // SAFETY: as at connection time: each slot lies in `recv`, registered for
                    // local write, and is not read again before its next completion.
                    let posted = unsafe { self.qp.post_recvs(&self.repost) }?;
                    self.repost.copy_within(posted.., 0);
                    self.reposts -= posted;
                }
                result?;
            }
            _ => {}
        }
        Ok(())
    }

    fn received(&mut self, index: u32, wc: &Wc) -> Result<(), ClientError> {
        let bad = |what: &str| ClientError::Io(io::Error::new(io::ErrorKind::InvalidData, what.to_owned()));
        let broken = |e: TransferError| ClientError::Io(io::Error::new(io::ErrorKind::InvalidData, e));
        let imm = wc.imm.and_then(Imm::decode).ok_or_else(|| bad("a message without a valid header"))?;
        self.credits += imm.credits;
        let len = wc.byte_len as usize;
        let limits = FrameLimits { max_frame: self.options.max_frame };
        let recv_size = self.recv_size;
        match imm.op {
            Op::Frame => {
                // SAFETY: this slot's receive has completed; it is reposted only after this.
                let bytes = unsafe { self.recv.read(index as usize * recv_size, len) };
                match decode_frame(bytes, limits)? {
                    Decoded::Frame(frame, _) => self.ready.push_back(OwnedFrame {
                        header: frame.header,
                        meta: frame.meta.to_vec(),
                        payload: frame.payload.to_vec(),
                    }),
                    Decoded::Incomplete(_) => return Err(bad("a SEND that holds part of a frame")),
                }
            }
            Op::Rts => {
                // SAFETY: as above.
                let bytes = unsafe { self.recv.read(index as usize * recv_size, len) };
                let head = bytes.first_chunk::<HEADER_LEN>().ok_or_else(|| bad("a short announcement"))?;
                let header = Header::decode(head, limits)?;
                let meta = bytes[HEADER_LEN..].to_vec();
                let buf = vec![0u8; header.payload_len as usize].into_boxed_slice();
                let buf = Registered::new(&self.pd, buf, ACCESS_REMOTE_WRITE)?;
                let grant = Grant { addr: buf.mr().addr(), rkey: buf.mr().rkey(), len: header.payload_len };
                self.receives.announce_granted(imm.token, Incoming { header, meta, buf }).map_err(broken)?;
                self.to_grant.push_back((imm.token, grant));
            }
            Op::Cts => {
                // SAFETY: as above.
                let bytes = unsafe { self.recv.read(index as usize * recv_size, len) };
                let grant = Grant::decode(bytes).ok_or_else(|| bad("a malformed grant"))?;
                self.sends.grant(imm.token, grant).map_err(broken)?;
            }
            Op::Data => {
                let incoming = self
                    .receives
                    .written(imm.token, len, |incoming| incoming.header.payload_len as usize)
                    .map_err(broken)?;
                // Revoke the process's access before the bytes are handed out.
                let payload = incoming.buf.into_inner().into_vec();
                self.ready.push_back(OwnedFrame { header: incoming.header, meta: incoming.meta, payload });
            }
        }
        Ok(())
    }

    /// Answers the process's announcements for which there are credits and room.
    fn post_grants(&mut self) {
        while self.credits > 0 && self.window.can_send() {
            let Some((token, grant)) = self.to_grant.pop_front() else { return };
            let mut far = LazyDeadline::new(self.options.timeout);
            if let Err(e) = self.send_message(Op::Cts, token, &[&grant.encode()], &mut far) {
                self.broken.get_or_insert(format!("cannot grant a buffer: {e}"));
                return;
            }
        }
    }
}

impl praas_wire::handshake::HandshakeWire for RdmaClient {
    type Error = ClientError;

    fn send_frame(&mut self, header: Header, meta: &[u8], payload: &[u8]) -> Result<(), ClientError> {
        RdmaClient::send_frame(self, header, meta, payload)
    }

    fn recv_frame(&mut self) -> Result<OwnedFrame, ClientError> {
        RdmaClient::recv_frame(self)
    }
}

/// A deadline whose clock starts at its first use: the fast path (a response already there)
/// reads no clock.
#[derive(Debug)]
struct LazyDeadline {
    timeout: Duration,
    at: Option<Instant>,
}

impl LazyDeadline {
    fn new(timeout: Duration) -> Self {
        Self { timeout, at: None }
    }

    fn at(&mut self) -> Instant {
        *self.at.get_or_insert_with(|| Instant::now() + self.timeout)
    }

    fn passed(&mut self) -> bool {
        Instant::now() >= self.at()
    }

    fn left(&mut self) -> Duration {
        self.at().saturating_duration_since(Instant::now())
    }
}

/// Receives a client with `credits` keeps posted: up to three messages per request it may have
/// outstanding, and those waiting to be reposted in a batch.
// REPOST_BATCH is 8.
#[allow(clippy::cast_possible_truncation)]
fn recv_count(credits: u32) -> u32 {
    3 * credits + REPOST_BATCH as u32
}

/// A received frame as a completion: its payload moved, not copied.
#[inline]
fn frame_completion(frame: OwnedFrame) -> Option<Completion> {
    let result = response_result(&frame.header, &frame.meta)?;
    Some(Completion { id: frame.header.id, result: result.map(|()| frame.payload).map_err(ClientError::from) })
}

crate::invoker_by_inherent_methods!(RdmaClient {});

impl praas_runtime::peer::RdmaLink for RdmaClient {
    fn set_timeout(&mut self, timeout: Duration) {
        RdmaClient::set_timeout(self, timeout);
    }

    fn send_frame(
        &mut self,
        header: Header,
        meta: &[u8],
        payload: &[u8],
    ) -> Result<(), praas_runtime::peer::LinkError> {
        RdmaClient::send_frame(self, header, meta, payload).map_err(link_error)
    }

    fn recv_frame(&mut self) -> Result<OwnedFrame, praas_runtime::peer::LinkError> {
        RdmaClient::recv_frame(self).map_err(link_error)
    }

    fn alive(&mut self) -> bool {
        RdmaClient::alive(self)
    }

    fn frame_ready(&mut self) -> bool {
        RdmaClient::frame_ready(self)
    }

    fn wait_fds(&mut self) -> Option<[std::os::fd::RawFd; 2]> {
        RdmaClient::wait_fds(self)
    }
}

fn link_error(err: ClientError) -> praas_runtime::peer::LinkError {
    match err {
        ClientError::Timeout(_) => praas_runtime::peer::LinkError::Timeout,
        other => praas_runtime::peer::LinkError::Failed(Box::new(other)),
    }
}

/// How long a put over RDMA busy-polls for its acknowledgement before it sleeps on the
/// completion channel.
const PUT_SPIN: Duration = Duration::from_micros(100);

/// Opens the RDMA links a process's puts to its peers go over: RDMA clients of the peers'
/// RDMA transports ([`praas_runtime::peer::PeerDirectory::enable_rdma`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct PeerDialer;

impl praas_runtime::peer::RdmaDialer for PeerDialer {
    fn dial(
        &self,
        addr: &str,
        device: &str,
        timeout: Duration,
        max_frame: usize,
    ) -> Result<Box<dyn praas_runtime::peer::RdmaLink>, praas_runtime::peer::LinkError> {
        // A put waits for one acknowledgement, a few microseconds away on a fabric: spin briefly,
        // then sleep, so that a worker waiting for it does not keep the core from the I/O thread
        // that has to run for the answer (`PRAAS_RDMA_POLL` overrides, as everywhere).
        let poll = praas_transport::rdma::PollPolicy::from_env()
            .unwrap_or(praas_transport::rdma::PollPolicy::Adaptive { spin: PUT_SPIN });
        let options = RdmaClientOptions {
            timeout,
            max_frame,
            device: Some(device.to_owned()),
            poll,
            ..RdmaClientOptions::default()
        };
        let client = RdmaClient::connect_with(addr, options).map_err(link_error)?;
        Ok(Box::new(client))
    }
}

/// Binds the RDMA transport for `process` on `addr` ([`RdmaTransport::bind`](praas_transport::rdma::RdmaTransport::bind)) and lets the
/// process's puts to peers that serve RDMA go over it too ([`PeerDialer`]): how a process's
/// start-up serves RDMA.
pub fn bind_with_peers(
    addr: std::net::SocketAddr,
    process: std::sync::Arc<praas_runtime::process::Process>,
    options: praas_transport::rdma::RdmaOptions,
) -> std::io::Result<praas_transport::rdma::RdmaTransport> {
    let transport = praas_transport::rdma::RdmaTransport::bind(addr, std::sync::Arc::clone(&process), options)?;
    process.peers().enable_rdma(transport.device(), std::sync::Arc::new(PeerDialer));
    Ok(transport)
}
