//! Safe RAII wrappers of the verbs objects the RDMA transport uses, on top of `rdma-sys`.
//!
//! Every object holds its parents through an [`Arc`] (a queue pair holds its protection domain,
//! completion queue and shared receive queue; those hold the device context), so whatever order
//! the owners drop them in, children are destroyed before their parents. Memory regions come in
//! two shapes: [`MemoryRegion`] is a bare registration whose constructor is `unsafe` (the caller
//! promises the memory outlives it), and [`Registered`] owns the registered memory itself, with
//! the registration dropped before the memory (field order). Posting work is `unsafe`: the caller
//! promises that the memory a work request names stays registered and alive until its completion
//! has been polled or the queue pair has been destroyed.
//!
//! libibverbs documents every verb as thread-safe, which is why these wrappers are `Send + Sync`.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdma_sys::{
    ___ibv_query_port, ibv_access_flags, ibv_ack_cq_events, ibv_alloc_pd, ibv_close_device, ibv_comp_channel,
    ibv_context, ibv_cq, ibv_create_comp_channel, ibv_create_cq, ibv_create_qp, ibv_create_srq, ibv_dealloc_pd,
    ibv_dereg_mr, ibv_destroy_comp_channel, ibv_destroy_cq, ibv_destroy_qp, ibv_destroy_srq, ibv_device_attr,
    ibv_free_device_list, ibv_get_cq_event, ibv_get_device_list, ibv_get_device_name, ibv_gid, ibv_modify_qp, ibv_mr,
    ibv_open_device, ibv_pd, ibv_poll_cq, ibv_port_attr, ibv_post_recv, ibv_post_send, ibv_post_srq_recv, ibv_qp,
    ibv_qp_attr, ibv_qp_attr_mask, ibv_qp_cap, ibv_qp_init_attr, ibv_qp_type, ibv_query_device, ibv_query_gid,
    ibv_recv_wr, ibv_reg_mr, ibv_req_notify_cq, ibv_send_flags, ibv_send_wr, ibv_sge, ibv_srq, ibv_srq_attr,
    ibv_srq_init_attr, ibv_wc, ibv_wc_flags, ibv_wc_opcode, ibv_wc_status, ibv_wc_status_str, ibv_wr_opcode,
};

use praas_runtime::buffer::PoolBuf;

/// `IBV_LINK_LAYER_ETHERNET` (a `#define` that bindgen does not carry over).
pub const LINK_LAYER_ETHERNET: u8 = 2;

fn last_error(what: &str) -> io::Error {
    let os = io::Error::last_os_error();
    io::Error::new(os.kind(), format!("{what}: {os}"))
}

fn check(rc: i32, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        // Verbs return a positive errno (most) or -1 with errno set (some providers).
        let os = if rc > 0 { io::Error::from_raw_os_error(rc) } else { io::Error::last_os_error() };
        Err(io::Error::new(os.kind(), format!("{what}: {os}")))
    }
}

/// The names of the RDMA devices on this machine.
pub fn device_names() -> io::Result<Vec<String>> {
    fork_protection();
    let mut count = 0;
    // SAFETY: `count` is a valid out-pointer; the list is freed below and only read before that.
    let list = unsafe { ibv_get_device_list(&mut count) };
    if list.is_null() {
        return Err(last_error("ibv_get_device_list"));
    }
    let mut names = Vec::new();
    for i in 0..usize::try_from(count).unwrap_or(0) {
        // SAFETY: `list` holds `count` device pointers, each with a NUL-terminated name.
        let name = unsafe { CStr::from_ptr(ibv_get_device_name(*list.add(i))) };
        names.push(name.to_string_lossy().into_owned());
    }
    // SAFETY: `list` came from ibv_get_device_list and is freed once.
    unsafe { ibv_free_device_list(list) };
    Ok(names)
}

/// What the transport needs to know about one port.
#[derive(Debug, Clone, Copy)]
pub struct PortInfo {
    /// `ibv_mtu` value of the active MTU.
    pub active_mtu: u32,
    /// Entries of the GID table.
    pub gid_table_len: u32,
    /// The port's LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// `IBV_LINK_LAYER_*`.
    pub link_layer: u8,
    /// Largest message the port carries.
    pub max_msg_size: u32,
}

/// An open RDMA device (`ibv_context`).
#[derive(Debug)]
pub struct VerbsContext {
    ptr: NonNull<ibv_context>,
    name: String,
}

// SAFETY: libibverbs objects may be used from any thread; the context is only closed in Drop.
unsafe impl Send for VerbsContext {}
// SAFETY: as above: every verb on a context is thread-safe.
unsafe impl Sync for VerbsContext {}

/// Makes fork safe for this process's verbs resources, once, before the first is created
/// (`ibv_fork_init`: registered memory and queues are kept out of children where the kernel
/// does not already do so), and says what libibverbs decided.
pub fn fork_protection() -> &'static str {
    static STATUS: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    STATUS.get_or_init(|| {
        // SAFETY: called once, before this module creates any verbs resource (VerbsContext::open
        // calls this first); ibv_fork_init has no other precondition.
        let rc = unsafe { rdma_sys::ibv_fork_init() };
        // SAFETY: no precondition.
        match unsafe { rdma_sys::ibv_is_fork_initialized() } {
            _ if rc != 0 => "failed",
            rdma_sys::IBV_FORK_ENABLED => "enabled",
            rdma_sys::IBV_FORK_UNNEEDED => "unneeded (the kernel copies pinned pages on fork)",
            _ => "disabled",
        }
    })
}

impl VerbsContext {
    /// Opens the device called `name`.
    pub fn open(name: &str) -> io::Result<Arc<Self>> {
        fork_protection();
        let mut count = 0;
        // SAFETY: `count` is a valid out-pointer; the list is freed below.
        let list = unsafe { ibv_get_device_list(&mut count) };
        if list.is_null() {
            return Err(last_error("ibv_get_device_list"));
        }
        let mut opened = None;
        for i in 0..usize::try_from(count).unwrap_or(0) {
            // SAFETY: `list` holds `count` valid device pointers.
            let device = unsafe { *list.add(i) };
            // SAFETY: a listed device has a NUL-terminated name.
            let this = unsafe { CStr::from_ptr(ibv_get_device_name(device)) };
            if this.to_bytes() == name.as_bytes() {
                // SAFETY: `device` is valid until the list is freed; an open context stays valid
                // after that (libibverbs keeps the device referenced).
                opened = Some(unsafe { ibv_open_device(device) });
                break;
            }
        }
        // SAFETY: freed once, after the last use of its entries.
        unsafe { ibv_free_device_list(list) };
        match opened {
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("no RDMA device named {name:?}"))),
            Some(ptr) => NonNull::new(ptr)
                .map(|ptr| Arc::new(Self { ptr, name: name.to_owned() }))
                .ok_or_else(|| last_error("ibv_open_device")),
        }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_context {
        self.ptr.as_ptr()
    }

    /// The number of physical ports.
    pub fn port_count(&self) -> io::Result<u8> {
        let mut attr = MaybeUninit::<ibv_device_attr>::zeroed();
        // SAFETY: the context is open and `attr` is a writable ibv_device_attr.
        check(unsafe { ibv_query_device(self.as_ptr(), attr.as_mut_ptr()) }, "ibv_query_device")?;
        // SAFETY: filled by the successful query (and all-zero is a valid value anyway).
        Ok(unsafe { attr.assume_init() }.phys_port_cnt)
    }

    /// Attributes of port `port` (numbered from 1).
    pub fn port(&self, port: u8) -> io::Result<PortInfo> {
        let mut attr = MaybeUninit::<ibv_port_attr>::zeroed();
        // SAFETY: the context is open and `attr` is a writable ibv_port_attr of the size passed.
        check(unsafe { ___ibv_query_port(self.as_ptr(), port, attr.as_mut_ptr()) }, "ibv_query_port")?;
        // SAFETY: filled by the successful query (all-zero is valid too).
        let attr = unsafe { attr.assume_init() };
        Ok(PortInfo {
            active_mtu: attr.active_mtu,
            gid_table_len: u32::try_from(attr.gid_tbl_len).unwrap_or(0),
            lid: attr.lid,
            link_layer: attr.link_layer,
            max_msg_size: attr.max_msg_sz,
        })
    }

    /// Entry `index` of port `port`'s GID table.
    pub fn gid(&self, port: u8, index: u32) -> io::Result<[u8; 16]> {
        let mut gid = ibv_gid { raw: [0; 16] };
        let index = i32::try_from(index).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the context is open and `gid` is a writable ibv_gid.
        check(unsafe { ibv_query_gid(self.as_ptr(), port, index, &mut gid) }, "ibv_query_gid")?;
        // SAFETY: every bit pattern of the union is a valid `raw` array.
        Ok(unsafe { gid.raw })
    }

    /// The GID index of port `port` whose GID is `ip` (IPv4 addresses as `::ffff:a.b.c.d`),
    /// preferring a RoCE v2 entry when sysfs says which entries are which.
    pub fn gid_index_of(&self, port: u8, ip: IpAddr) -> io::Result<Option<(u32, [u8; 16])>> {
        let wanted = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let info = self.port(port)?;
        let mut found = None;
        for index in 0..info.gid_table_len {
            let Ok(gid) = self.gid(port, index) else { continue };
            if gid != wanted {
                continue;
            }
            let types = format!("/sys/class/infiniband/{}/ports/{port}/gid_attrs/types/{index}", self.name);
            let is_v2 = std::fs::read_to_string(types).is_ok_and(|t| t.trim().eq_ignore_ascii_case("RoCE v2"));
            if is_v2 {
                return Ok(Some((index, gid)));
            }
            found.get_or_insert((index, gid));
        }
        Ok(found)
    }
}

impl Drop for VerbsContext {
    fn drop(&mut self) {
        // SAFETY: every child holds an Arc of this context, so none is alive any more.
        unsafe { ibv_close_device(self.as_ptr()) };
    }
}

/// A protection domain: the memory regions and queue pairs that may work together.
#[derive(Debug)]
pub struct ProtectionDomain {
    ptr: NonNull<ibv_pd>,
    context: Arc<VerbsContext>,
}

// SAFETY: verbs objects are thread-safe; the PD is only deallocated in Drop.
unsafe impl Send for ProtectionDomain {}
// SAFETY: as above.
unsafe impl Sync for ProtectionDomain {}

impl ProtectionDomain {
    /// Allocates a protection domain on `context`.
    pub fn new(context: &Arc<VerbsContext>) -> io::Result<Arc<Self>> {
        // SAFETY: the context is open (we hold an Arc of it).
        let ptr = unsafe { ibv_alloc_pd(context.as_ptr()) };
        let ptr = NonNull::new(ptr).ok_or_else(|| last_error("ibv_alloc_pd"))?;
        Ok(Arc::new(Self { ptr, context: Arc::clone(context) }))
    }

    /// The device context.
    pub fn context(&self) -> &Arc<VerbsContext> {
        &self.context
    }

    fn as_ptr(&self) -> *mut ibv_pd {
        self.ptr.as_ptr()
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: children (MRs, QPs, SRQs) hold an Arc of the PD, so none is alive.
        unsafe { ibv_dealloc_pd(self.as_ptr()) };
    }
}

/// A completion channel: a file descriptor that becomes readable when an armed completion queue
/// gets a completion.
#[derive(Debug)]
pub struct CompletionChannel {
    ptr: NonNull<ibv_comp_channel>,
    _context: Arc<VerbsContext>,
}

// SAFETY: verbs objects are thread-safe; destroyed only in Drop.
unsafe impl Send for CompletionChannel {}
// SAFETY: as above.
unsafe impl Sync for CompletionChannel {}

impl CompletionChannel {
    /// Creates a non-blocking completion channel.
    pub fn new(context: &Arc<VerbsContext>) -> io::Result<Arc<Self>> {
        // SAFETY: the context is open.
        let ptr = unsafe { ibv_create_comp_channel(context.as_ptr()) };
        let ptr = NonNull::new(ptr).ok_or_else(|| last_error("ibv_create_comp_channel"))?;
        let channel = Self { ptr, _context: Arc::clone(context) };
        let fd = channel.fd();
        // SAFETY: `fd` is the channel's open descriptor; F_GETFL/F_SETFL touch only its flags.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK) };
        if rc < 0 {
            return Err(last_error("fcntl(O_NONBLOCK) on the completion channel"));
        }
        Ok(Arc::new(channel))
    }

    /// The descriptor to wait on (readable when an event is pending).
    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel is alive; `fd` is a plain field set at creation.
        unsafe { (*self.ptr.as_ptr()).fd }
    }
}

impl Drop for CompletionChannel {
    fn drop(&mut self) {
        // SAFETY: CQs using the channel hold an Arc of it, so none is alive.
        unsafe { ibv_destroy_comp_channel(self.ptr.as_ptr()) };
    }
}

/// One polled work completion, copied out of `ibv_wc`.
#[derive(Debug, Clone, Copy)]
pub struct WorkCompletion {
    /// The work request's id.
    pub wr_id: u64,
    /// `IBV_WC_SUCCESS` or why not.
    pub status: u32,
    /// `ibv_wc_opcode` value.
    pub opcode: u32,
    /// Bytes received (receive completions).
    pub byte_len: u32,
    /// The immediate data, in host order, if the completion carries one.
    pub imm: Option<u32>,
    /// The local queue pair it belongs to.
    pub qp_num: u32,
}

impl WorkCompletion {
    /// Whether the work request succeeded.
    pub fn ok(&self) -> bool {
        self.status == ibv_wc_status::IBV_WC_SUCCESS
    }

    /// Whether the work request was flushed by a queue pair in the error state.
    pub fn flushed(&self) -> bool {
        self.status == ibv_wc_status::IBV_WC_WR_FLUSH_ERR
    }

    /// Whether this is a receive (a SEND or an RDMA WRITE WITH IMMEDIATE that arrived).
    pub fn is_recv(&self) -> bool {
        self.opcode & ibv_wc_opcode::IBV_WC_RECV != 0
    }

    /// Whether this is an RDMA WRITE WITH IMMEDIATE that arrived.
    pub fn is_write_imm(&self) -> bool {
        self.opcode == ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM
    }

    /// The status as text.
    pub fn status_text(&self) -> String {
        // SAFETY: ibv_wc_status_str returns a static NUL-terminated string for any value.
        unsafe { CStr::from_ptr(ibv_wc_status_str(self.status)) }.to_string_lossy().into_owned()
    }
}

/// A completion queue, optionally tied to a completion channel.
#[derive(Debug)]
pub struct CompletionQueue {
    ptr: NonNull<ibv_cq>,
    channel: Option<Arc<CompletionChannel>>,
    _context: Arc<VerbsContext>,
}

// SAFETY: verbs objects are thread-safe; destroyed only in Drop.
unsafe impl Send for CompletionQueue {}
// SAFETY: as above.
unsafe impl Sync for CompletionQueue {}

/// Completions polled at once.
pub const POLL_BATCH: usize = 32;

impl CompletionQueue {
    /// Creates a queue of at least `entries` completions.
    pub fn new(
        context: &Arc<VerbsContext>,
        entries: usize,
        channel: Option<&Arc<CompletionChannel>>,
    ) -> io::Result<Arc<Self>> {
        let entries = i32::try_from(entries).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let channel_ptr = channel.map_or(ptr::null_mut(), |c| c.ptr.as_ptr());
        // SAFETY: the context (and channel, if any) are alive; no CQ context pointer is used.
        let ptr = unsafe { ibv_create_cq(context.as_ptr(), entries, ptr::null_mut(), channel_ptr, 0) };
        let ptr = NonNull::new(ptr).ok_or_else(|| last_error("ibv_create_cq"))?;
        Ok(Arc::new(Self { ptr, channel: channel.cloned(), _context: Arc::clone(context) }))
    }

    fn as_ptr(&self) -> *mut ibv_cq {
        self.ptr.as_ptr()
    }

    /// Polls up to [`POLL_BATCH`] completions into `out` (appending); returns how many.
    pub fn poll(&self, out: &mut Vec<WorkCompletion>) -> io::Result<usize> {
        let mut wcs: [MaybeUninit<ibv_wc>; POLL_BATCH] = [const { MaybeUninit::uninit() }; POLL_BATCH];
        #[allow(clippy::cast_possible_truncation)] // POLL_BATCH is 32.
        // SAFETY: the CQ is alive and `wcs` has room for POLL_BATCH entries, which poll_cq fills
        // (the first `n` of them).
        let n = unsafe { ibv_poll_cq(self.as_ptr(), POLL_BATCH as i32, wcs.as_mut_ptr().cast()) };
        if n < 0 {
            return Err(io::Error::other("ibv_poll_cq failed"));
        }
        let n = n as usize;
        for wc in &wcs[..n] {
            // SAFETY: ibv_poll_cq initialised the first `n` entries.
            let wc = unsafe { wc.assume_init_ref() };
            let with_imm = wc.wc_flags & ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0;
            out.push(WorkCompletion {
                wr_id: wc.wr_id,
                status: wc.status,
                opcode: wc.opcode,
                byte_len: wc.byte_len,
                // SAFETY: with IBV_WC_WITH_IMM set, the union holds the immediate (network order).
                imm: with_imm.then(|| u32::from_be(unsafe { wc.imm_data_invalidated_rkey_union.imm_data })),
                qp_num: wc.qp_num,
            });
        }
        Ok(n)
    }

    /// Asks for an event on the completion channel at the next completion.
    pub fn arm(&self) -> io::Result<()> {
        // SAFETY: the CQ is alive.
        check(unsafe { ibv_req_notify_cq(self.as_ptr(), 0) }, "ibv_req_notify_cq")
    }

    /// Reads and acknowledges the events pending on the channel, without blocking; returns
    /// whether there was one.
    pub fn take_events(&self) -> bool {
        let Some(channel) = &self.channel else { return false };
        let mut any = false;
        loop {
            let mut cq = ptr::null_mut();
            let mut context = ptr::null_mut();
            // SAFETY: the channel is alive and non-blocking; the out-pointers are valid.
            let rc = unsafe { ibv_get_cq_event(channel.ptr.as_ptr(), &mut cq, &mut context) };
            if rc != 0 {
                return any;
            }
            any = true;
            // SAFETY: `cq` is the CQ the event was for (this one, the only CQ on the channel);
            // every event is acknowledged once, so destroying the CQ later does not block.
            unsafe { ibv_ack_cq_events(cq, 1) };
        }
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        self.take_events();
        // SAFETY: QPs using this CQ hold an Arc of it, so none is alive; events are acknowledged.
        unsafe { ibv_destroy_cq(self.as_ptr()) };
    }
}

/// A shared receive queue: receive buffers that many queue pairs draw from.
#[derive(Debug)]
pub struct SharedReceiveQueue {
    ptr: NonNull<ibv_srq>,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: verbs objects are thread-safe; destroyed only in Drop.
unsafe impl Send for SharedReceiveQueue {}
// SAFETY: as above.
unsafe impl Sync for SharedReceiveQueue {}

impl SharedReceiveQueue {
    /// Creates a queue of `max_wr` receive requests of one scatter entry each.
    pub fn new(pd: &Arc<ProtectionDomain>, max_wr: u32) -> io::Result<Arc<Self>> {
        let mut attr =
            ibv_srq_init_attr { srq_context: ptr::null_mut(), attr: ibv_srq_attr { max_wr, max_sge: 1, srq_limit: 0 } };
        // SAFETY: the PD is alive; `attr` is a valid init attribute.
        let ptr = unsafe { ibv_create_srq(pd.as_ptr(), &mut attr) };
        let ptr = NonNull::new(ptr).ok_or_else(|| last_error("ibv_create_srq"))?;
        Ok(Arc::new(Self { ptr, _pd: Arc::clone(pd) }))
    }

    /// Posts one receive of `len` bytes at `addr` (in a region with `lkey`).
    ///
    /// # Safety
    /// The bytes `addr..addr + len` must lie in a memory region registered (with local write
    /// access) under `lkey` on this queue's PD, and stay registered and untouched by the program
    /// until the receive's completion is polled.
    pub unsafe fn post_recv(&self, wr_id: u64, addr: u64, len: u32, lkey: u32) -> io::Result<()> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.post_recvs(&[RecvBuffer { wr_id, addr, len, lkey }]) }.map(|_| ())
    }

    /// Posts up to [`MAX_RECV_BATCH`] receive buffers in one call (one lock, one doorbell);
    /// returns how many were posted: all of them, or on an error those before the one refused
    /// (then the error, if none was posted).
    ///
    /// # Safety
    /// As for [`SharedReceiveQueue::post_recv`], for every buffer.
    pub unsafe fn post_recvs(&self, buffers: &[RecvBuffer]) -> io::Result<usize> {
        // SAFETY: the SRQ is alive; the chain lives through the call; the memory contract is the
        // caller's.
        unsafe { post_chain(buffers, "ibv_post_srq_recv", |wrs, bad| ibv_post_srq_recv(self.ptr.as_ptr(), wrs, bad)) }
    }
}

/// Posts `buffers` (at most [`MAX_RECV_BATCH`]) as one chain of receive work requests with
/// `post`; returns how many were posted (those before one the provider refused; the error if it
/// refused the first).
///
/// # Safety
/// `post` must post to a live receive queue; the memory of every buffer must satisfy the
/// receive queue's contract.
unsafe fn post_chain(
    buffers: &[RecvBuffer],
    what: &str,
    post: impl FnOnce(*mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> i32,
) -> io::Result<usize> {
    let n = buffers.len().min(MAX_RECV_BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut sges = [ibv_sge { addr: 0, length: 0, lkey: 0 }; MAX_RECV_BATCH];
    let mut wrs = [const { ibv_recv_wr { wr_id: 0, next: ptr::null_mut(), sg_list: ptr::null_mut(), num_sge: 1 } };
        MAX_RECV_BATCH];
    for (i, b) in buffers[..n].iter().enumerate() {
        sges[i] = ibv_sge { addr: b.addr, length: b.len, lkey: b.lkey };
    }
    let base: *mut ibv_recv_wr = wrs.as_mut_ptr();
    for i in 0..n {
        wrs[i].wr_id = buffers[i].wr_id;
        wrs[i].sg_list = &mut sges[i];
        // SAFETY: `i + 1 < n <= MAX_RECV_BATCH`: an entry of `wrs`.
        wrs[i].next = if i + 1 < n { unsafe { base.add(i + 1) } } else { ptr::null_mut() };
    }
    let mut bad: *mut ibv_recv_wr = ptr::null_mut();
    let status = post(base, &mut bad);
    if status == 0 {
        return Ok(n);
    }
    // The refused request and those after it were not posted.
    let posted = if bad.is_null() { 0 } else { (bad as usize - base as usize) / std::mem::size_of::<ibv_recv_wr>() };
    if posted == 0 {
        return check(status, what).map(|()| 0);
    }
    Ok(posted)
}

/// Most receive buffers posted in one call.
pub const MAX_RECV_BATCH: usize = 16;

/// One receive buffer to post: its work request id and registered memory.
#[derive(Debug, Clone, Copy)]
pub struct RecvBuffer {
    /// The work request id its completion carries.
    pub wr_id: u64,
    /// Start of the registered memory.
    pub addr: u64,
    /// Bytes.
    pub len: u32,
    /// The local key of its registration.
    pub lkey: u32,
}

impl Drop for SharedReceiveQueue {
    fn drop(&mut self) {
        // SAFETY: QPs attached to the SRQ hold an Arc of it, so none is alive.
        unsafe { ibv_destroy_srq(self.ptr.as_ptr()) };
    }
}

/// What a send work request does.
#[derive(Debug, Clone, Copy)]
pub enum SendOp {
    /// A SEND carrying an immediate value.
    SendImm,
    /// An RDMA WRITE into the peer's memory, with an immediate value that consumes a receive.
    WriteImm {
        /// Address in the peer's registered memory.
        remote_addr: u64,
        /// The peer's remote key for it.
        rkey: u32,
    },
}

/// A reliable-connected queue pair.
#[derive(Debug)]
pub struct QueuePair {
    ptr: NonNull<ibv_qp>,
    _cq: Arc<CompletionQueue>,
    _srq: Option<Arc<SharedReceiveQueue>>,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: verbs objects are thread-safe; destroyed only in Drop.
unsafe impl Send for QueuePair {}
// SAFETY: as above.
unsafe impl Sync for QueuePair {}

impl QueuePair {
    /// Creates an RC queue pair whose sends and receives complete on `cq`, receiving from `srq`
    /// if given (else from its own receive queue of `max_recv_wr` entries).
    pub fn new(
        pd: &Arc<ProtectionDomain>,
        cq: &Arc<CompletionQueue>,
        srq: Option<&Arc<SharedReceiveQueue>>,
        max_send_wr: u32,
        max_recv_wr: u32,
        max_inline: u32,
    ) -> io::Result<Self> {
        let mut attr = ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: cq.as_ptr(),
            recv_cq: cq.as_ptr(),
            srq: srq.map_or(ptr::null_mut(), |s| s.ptr.as_ptr()),
            cap: ibv_qp_cap {
                max_send_wr,
                max_recv_wr: if srq.is_some() { 0 } else { max_recv_wr },
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: max_inline,
            },
            qp_type: ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: PD, CQ and SRQ are alive (held below for the QP's life); `attr` is valid.
        let ptr = unsafe { ibv_create_qp(pd.as_ptr(), &mut attr) };
        let ptr = NonNull::new(ptr).ok_or_else(|| last_error("ibv_create_qp"))?;
        Ok(Self { ptr, _cq: Arc::clone(cq), _srq: srq.cloned(), _pd: Arc::clone(pd) })
    }

    /// The queue pair number.
    pub fn qp_num(&self) -> u32 {
        // SAFETY: the QP is alive; `qp_num` is a plain field set at creation.
        unsafe { (*self.ptr.as_ptr()).qp_num }
    }

    /// Modifies the queue pair's state and attributes (`ibv_modify_qp`).
    pub fn modify(&self, attr: &mut ibv_qp_attr, mask: ibv_qp_attr_mask) -> io::Result<()> {
        // SAFETY: the QP is alive; `attr` is a valid attribute struct; the mask names its fields.
        check(unsafe { ibv_modify_qp(self.ptr.as_ptr(), attr, mask.0 as i32) }, "ibv_modify_qp")
    }

    /// Moves the queue pair to the error state: posted work is flushed with error completions.
    pub fn set_error(&self) -> io::Result<()> {
        // SAFETY: all-zero is a valid ibv_qp_attr; only the state is read (mask).
        let mut attr: ibv_qp_attr = unsafe { MaybeUninit::zeroed().assume_init() };
        attr.qp_state = rdma_sys::ibv_qp_state::IBV_QPS_ERR;
        self.modify(&mut attr, ibv_qp_attr_mask::IBV_QP_STATE)
    }

    /// Posts one send work request of `len` bytes at `addr` (region `lkey`). With `inline`, the
    /// bytes are copied at post time and need no registration. Only a `signaled` request
    /// produces a completion when it succeeds; it also means every request posted before it on
    /// this queue pair has completed (send queues complete in order).
    ///
    /// # Safety
    /// Unless `inline`, the bytes `addr..addr + len` must lie in a memory region registered under
    /// `lkey` on this queue pair's PD and stay registered, alive and unmodified until the
    /// completion of this work request, or of a later signaled one, is polled, or the queue pair
    /// is destroyed. With `inline`, they must be readable for the duration of the call.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn post_send(
        &self,
        wr_id: u64,
        op: SendOp,
        imm: u32,
        addr: u64,
        len: u32,
        lkey: u32,
        inline: bool,
        signaled: bool,
    ) -> io::Result<()> {
        let mut sge = ibv_sge { addr, length: len, lkey };
        // SAFETY: all-zero is a valid ibv_send_wr (null pointers, zero unions).
        let mut wr: ibv_send_wr = unsafe { MaybeUninit::zeroed().assume_init() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = i32::from(len > 0);
        let mut flags = 0;
        if signaled {
            flags |= ibv_send_flags::IBV_SEND_SIGNALED.0;
        }
        if inline {
            flags |= ibv_send_flags::IBV_SEND_INLINE.0;
        }
        wr.send_flags = flags;
        wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
        match op {
            SendOp::SendImm => wr.opcode = ibv_wr_opcode::IBV_WR_SEND_WITH_IMM,
            SendOp::WriteImm { remote_addr, rkey } => {
                wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
                wr.wr.rdma = rdma_sys::rdma_t { remote_addr, rkey };
            }
        }
        let mut bad = ptr::null_mut();
        // SAFETY: the QP is alive; `wr` and `sge` live through the call; the memory contract is
        // the caller's.
        check(unsafe { ibv_post_send(self.ptr.as_ptr(), &mut wr, &mut bad) }, "ibv_post_send")
    }

    /// Posts one receive on the queue pair's own receive queue.
    ///
    /// # Safety
    /// As [`SharedReceiveQueue::post_recv`].
    pub unsafe fn post_recv(&self, wr_id: u64, addr: u64, len: u32, lkey: u32) -> io::Result<()> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.post_recvs(&[RecvBuffer { wr_id, addr, len, lkey }]) }.map(|_| ())
    }

    /// Posts up to [`MAX_RECV_BATCH`] receive buffers in one call; returns how many were posted.
    ///
    /// # Safety
    /// As for [`QueuePair::post_recv`], for every buffer.
    pub unsafe fn post_recvs(&self, buffers: &[RecvBuffer]) -> io::Result<usize> {
        // SAFETY: the QP is alive; the chain lives through the call; the memory contract is the
        // caller's.
        unsafe { post_chain(buffers, "ibv_post_recv", |wrs, bad| ibv_post_recv(self.ptr.as_ptr(), wrs, bad)) }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: the QP is alive and destroyed once. After this returns the device no longer
        // touches memory named by this QP's work requests, so their regions may go.
        unsafe { ibv_destroy_qp(self.ptr.as_ptr()) };
    }
}

/// Access a local-only region needs: none (the device only reads it).
pub const ACCESS_LOCAL_READ: u32 = 0;
/// Access of receive buffers: the device writes them.
pub const ACCESS_LOCAL_WRITE: u32 = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
/// Access of buffers advertised to a peer for RDMA WRITE.
pub const ACCESS_REMOTE_WRITE: u32 =
    ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;

/// A registration of memory the region does not own.
#[derive(Debug)]
pub struct MemoryRegion {
    ptr: NonNull<ibv_mr>,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: verbs objects are thread-safe; deregistered only in Drop.
unsafe impl Send for MemoryRegion {}
// SAFETY: as above.
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    /// Registers `len` bytes at `addr` with `access` (`ACCESS_*`).
    ///
    /// # Safety
    /// The memory must stay allocated (and, if `access` lets the device write, be memory the
    /// program does not read or write while the device may) until the region is dropped.
    pub unsafe fn new(pd: &Arc<ProtectionDomain>, addr: *mut u8, len: usize, access: u32) -> io::Result<Self> {
        // SAFETY: the PD is alive; the memory contract is the caller's.
        let ptr = unsafe { ibv_reg_mr(pd.as_ptr(), addr.cast(), len, access as i32) };
        let ptr = NonNull::new(ptr).ok_or_else(|| last_error("ibv_reg_mr"))?;
        Ok(Self { ptr, _pd: Arc::clone(pd) })
    }

    /// Registers `len` bytes at `addr` for the device to read, and only when a work request of
    /// this side names the region (`ACCESS_LOCAL_READ`): the registration a cache can keep past
    /// the life of the memory it was made for.
    ///
    /// # Safety
    /// Every work request posted with this region's local key must name memory that is allocated
    /// and not written until its completion. (The pages are pinned at registration; memory freed
    /// while the region lives keeps its pages from the system until the region is dropped, and
    /// the device reads them only for such work requests.)
    pub unsafe fn new_for_sends(pd: &Arc<ProtectionDomain>, addr: *const u8, len: usize) -> io::Result<Self> {
        // SAFETY: local read only, so the device touches the memory only for work requests,
        // which this function's contract covers.
        unsafe { Self::new(pd, addr.cast_mut(), len.max(1), ACCESS_LOCAL_READ) }
    }

    fn mr(&self) -> &ibv_mr {
        // SAFETY: the region is registered until Drop; its fields are immutable after creation.
        unsafe { self.ptr.as_ref() }
    }

    /// The local key (for work requests of this side).
    pub fn lkey(&self) -> u32 {
        self.mr().lkey
    }

    /// The remote key (for a peer's RDMA access, if allowed).
    pub fn rkey(&self) -> u32 {
        self.mr().rkey
    }

    /// The registered start address.
    pub fn addr(&self) -> u64 {
        self.mr().addr as u64
    }

    /// The registered length.
    pub fn len(&self) -> usize {
        self.mr().length
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered once, deregistered once. Owners keep posted work from outliving the
        // region (see the safety contracts of the post functions).
        unsafe { ibv_dereg_mr(self.ptr.as_ptr()) };
    }
}

/// Memory whose address and length do not change while its owner lives, so it can be
/// registered: heap buffers, pool buffers, borrowed slices.
///
/// # Safety
/// `region` must return memory that stays at the same address, allocated, for as long as the
/// value lives and is not mutably accessed through the returned methods of `Self`;
/// `WRITABLE` must be false for memory the program only has shared access to.
pub unsafe trait StableMemory {
    /// Whether the device may write into this memory.
    const WRITABLE: bool;
    /// Start and length of the memory.
    fn region(&mut self) -> (*mut u8, usize);
}

// SAFETY: a boxed slice's heap memory never moves; we own it exclusively.
unsafe impl StableMemory for Box<[u8]> {
    const WRITABLE: bool = true;
    fn region(&mut self) -> (*mut u8, usize) {
        (self.as_mut_ptr(), self.len())
    }
}

// SAFETY: a PoolBuf's memory is a boxed slice that stays put for the buffer's life.
unsafe impl StableMemory for PoolBuf {
    const WRITABLE: bool = true;
    fn region(&mut self) -> (*mut u8, usize) {
        let memory = self.memory_mut();
        (memory.as_mut_ptr(), memory.len())
    }
}

// SAFETY: the PoolBuf inside the Arc never moves or changes its memory (Registered exposes no
// `&mut PoolBuf`); the device may write only while the Arc is unshared (the transport's
// receive-slot discipline, checked before every post).
unsafe impl StableMemory for Arc<PoolBuf> {
    const WRITABLE: bool = true;
    fn region(&mut self) -> (*mut u8, usize) {
        let (addr, len) = PoolBuf::region(self);
        (addr as *mut u8, len)
    }
}

// SAFETY: a borrowed slice stays put for 'a; it is registered read-only (WRITABLE is false).
unsafe impl StableMemory for &[u8] {
    const WRITABLE: bool = false;
    fn region(&mut self) -> (*mut u8, usize) {
        (self.as_ptr().cast_mut(), self.len())
    }
}

/// Memory registered together with its owner: the registration is dropped first, then the
/// memory, so the device never names freed memory.
#[derive(Debug)]
pub struct Registered<T: StableMemory> {
    // Field order is drop order: deregister before the memory goes.
    mr: MemoryRegion,
    owner: T,
}

impl<T: StableMemory> Registered<T> {
    /// Registers all of `owner`'s memory with `access` (`ACCESS_*`). Refuses write access to
    /// memory that is not [`StableMemory::WRITABLE`].
    pub fn new(pd: &Arc<ProtectionDomain>, mut owner: T, access: u32) -> io::Result<Self> {
        if access != ACCESS_LOCAL_READ && !T::WRITABLE {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "write access to read-only memory"));
        }
        let (addr, len) = owner.region();
        // SAFETY: `owner`'s memory stays put while it lives (StableMemory), and it lives in this
        // struct at least as long as the registration (field order).
        let mr = unsafe { MemoryRegion::new(pd, addr, len.max(1), access)? };
        Ok(Self { mr, owner })
    }

    /// The registration.
    pub fn mr(&self) -> &MemoryRegion {
        &self.mr
    }

    /// The owner of the memory.
    pub fn owner(&self) -> &T {
        &self.owner
    }

    /// Deregisters the memory and gives it back.
    pub fn into_inner(self) -> T {
        let Self { mr, owner } = self;
        drop(mr);
        owner
    }
}

impl Registered<Box<[u8]>> {
    /// Reads `len` bytes at `offset`.
    ///
    /// # Safety
    /// No posted work request may be writing these bytes (their receive has completed or they
    /// were never posted for receiving).
    pub unsafe fn read(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset + len <= self.mr.len(), "read outside the registered memory");
        // SAFETY: in bounds (checked); not concurrently written by the device (caller).
        unsafe { std::slice::from_raw_parts((self.mr.addr() as *const u8).add(offset), len) }
    }

    /// Copies `parts` one after another to `offset`; returns the bytes written.
    ///
    /// # Safety
    /// No posted work request may be reading or writing these bytes.
    pub unsafe fn write(&self, offset: usize, parts: &[&[u8]]) -> usize {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        assert!(offset + total <= self.mr.len(), "write outside the registered memory");
        let mut at = self.mr.addr() as *mut u8;
        // SAFETY: in bounds (checked); exclusively ours for now (caller). The memory is owned by
        // the box, reached through the registration's address, and no reference to it is alive.
        unsafe {
            at = at.add(offset);
            for part in parts {
                ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
                at = at.add(part.len());
            }
        }
        total
    }
}

impl Registered<Arc<PoolBuf>> {
    /// Whether the program holds no other handle to the buffer (so the device may write it).
    pub fn is_unshared(&self) -> bool {
        Arc::strong_count(&self.owner) == 1
    }

    /// Sets the length of the data after a receive; false if the buffer is shared.
    pub fn set_len(&mut self, len: usize) -> bool {
        match Arc::get_mut(&mut self.owner) {
            Some(buf) => {
                buf.set_len(len);
                true
            }
            None => false,
        }
    }

    /// Another handle to the buffer, to lend its bytes out.
    pub fn share(&self) -> Arc<PoolBuf> {
        Arc::clone(&self.owner)
    }
}
