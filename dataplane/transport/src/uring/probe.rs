//! Ring construction and the start-up probe: whether this kernel (and this process's seccomp
//! filter, and `kernel.io_uring_disabled`) lets the transport run.
//!
//! The probe runs once per process ([`available`], [`check`]). It reads
//! `/proc/sys/kernel/io_uring_disabled`, creates a ring (a seccomp filter or a container runtime
//! that forbids `io_uring_setup` fails here), asks the kernel which opcodes it has
//! (`IORING_REGISTER_PROBE`) and registers a provided-buffer ring once: every feature the
//! transport and the client use, or a reason why not.

use std::io;
use std::sync::{Arc, OnceLock};

use io_uring::{opcode, IoUring};

/// Why io_uring cannot serve here. (The I/O errors are shared: the verdict is computed once and
/// handed to every caller.)
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// `kernel.io_uring_disabled` forbids it for this process.
    #[error("kernel.io_uring_disabled is {0}")]
    Disabled(String),
    /// `io_uring_setup` failed: no io_uring in this kernel, or a seccomp filter forbids it.
    #[error("io_uring_setup failed ({0}): kernel without io_uring or a seccomp filter")]
    Setup(#[source] Arc<io::Error>),
    /// Probing the opcodes of a new ring failed.
    #[error("io_uring_setup failed (probe: {0}): kernel without io_uring or a seccomp filter")]
    Probe(#[source] Arc<io::Error>),
    /// An opcode the transport needs is missing.
    #[error("the kernel lacks io_uring opcode {0}")]
    MissingOpcode(&'static str),
    /// Registering a provided-buffer ring failed (kernel older than 5.19).
    #[error("provided-buffer rings unavailable ({0})")]
    BufRing(#[source] Arc<io::Error>),
}

/// Opcodes the transport and the client use, by name.
const NEEDED: [(u8, &str); 9] = [
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::SendMsgZc::CODE, "SENDMSG_ZC"),
    (opcode::Read::CODE, "READ"),
    (opcode::ReadFixed::CODE, "READ_FIXED"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::Shutdown::CODE, "SHUTDOWN"),
    (opcode::Close::CODE, "CLOSE"),
];

/// Whether the io_uring transport can run here; the first negative answer logs one line saying why.
pub fn available() -> bool {
    static LOGGED: OnceLock<()> = OnceLock::new();
    match check() {
        Ok(()) => true,
        Err(why) => {
            LOGGED.get_or_init(|| tracing::info!("io_uring unavailable, using the mio transport: {why}"));
            false
        }
    }
}

/// The probe's verdict, computed once per process.
pub fn check() -> Result<(), Unavailable> {
    static VERDICT: OnceLock<Result<(), Unavailable>> = OnceLock::new();
    VERDICT.get_or_init(probe).clone()
}

fn probe() -> Result<(), Unavailable> {
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        let value = text.trim();
        // 1: only members of kernel.io_uring_group may create rings; the setup below finds out.
        if value == "2" {
            return Err(Unavailable::Disabled(value.into()));
        }
    }
    let ring: IoUring = IoUring::new(8).map_err(|e| Unavailable::Setup(Arc::new(e)))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| Unavailable::Probe(Arc::new(e)))?;
    for (code, name) in NEEDED {
        if !probe.is_supported(code) {
            return Err(Unavailable::MissingOpcode(name));
        }
    }
    let mut bufs = super::recv::BufRing::new(1).map_err(|e| Unavailable::BufRing(Arc::new(e)))?;
    bufs.register(&ring, 0).map_err(|e| Unavailable::BufRing(Arc::new(e)))?;
    bufs.unregister(&ring);
    Ok(())
}

/// Options of a ring.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// Submission queue entries.
    pub entries: u32,
    /// Kernel-side submission polling, with this idle time in ms before the poller sleeps.
    pub sqpoll_idle_ms: Option<u32>,
    /// Only the creating thread submits (allows deferred task work).
    pub single_issuer: bool,
    /// The kernel flags pending task work in the submission queue (`IORING_SETUP_TASKRUN_FLAG`),
    /// so that a thread polling the ring sees, without a system call, when to enter it.
    pub taskrun_flag: bool,
}

/// A ring for one thread: single issuer and deferred task work where the kernel has them (fewer
/// interrupts: completions are processed when the thread enters the kernel anyway), SQPOLL on
/// request. Falls back to a plain ring on kernels that refuse the flags.
pub fn build_ring(config: RingConfig) -> io::Result<IoUring> {
    let mut builder = IoUring::builder();
    builder.setup_cqsize(config.entries * 4).setup_submit_all();
    if let Some(idle) = config.sqpoll_idle_ms {
        builder.setup_sqpoll(idle);
    } else if config.single_issuer {
        builder.setup_single_issuer().setup_defer_taskrun();
        if config.taskrun_flag {
            builder.setup_taskrun_flag();
        }
    } else {
        builder.setup_coop_taskrun();
    }
    builder.build(config.entries).or_else(|first| {
        tracing::debug!("io_uring setup flags refused ({first}); using a plain ring");
        let mut plain = IoUring::builder();
        plain.setup_cqsize(config.entries * 4);
        plain.build(config.entries)
    })
}

/// `IORING_REGISTER_RING_FDS` and `IORING_UNREGISTER_RING_FDS` (include/uapi/linux/io_uring.h).
const IORING_REGISTER_RING_FDS: libc::c_long = 20;
const IORING_UNREGISTER_RING_FDS: libc::c_long = 21;
/// `IORING_ENTER_GETEVENTS` and `IORING_ENTER_REGISTERED_RING`.
const IORING_ENTER_GETEVENTS: libc::c_long = 1;
const IORING_ENTER_REGISTERED_RING: libc::c_long = 1 << 4;

/// `struct io_uring_rsrc_update`.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// A ring's descriptor registered with the ring itself, for the thread that registered it:
/// `io_uring_enter` then names the ring by its index and the kernel skips the descriptor lookup
/// (and reference count) every call costs otherwise (Linux 5.18).
#[derive(Debug)]
pub(crate) struct RegisteredRing {
    index: u32,
}

impl RegisteredRing {
    /// Registers `ring`'s descriptor for this thread; `None` where the kernel refuses.
    pub(crate) fn register(ring: &IoUring) -> Option<Self> {
        use std::os::fd::AsRawFd;
        let mut update = RsrcUpdate { offset: u32::MAX, resv: 0, data: ring.as_raw_fd() as u64 };
        // SAFETY: io_uring_register reads one io_uring_rsrc_update from the live `update` and
        // writes the index it chose back into it.
        let registered = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                ring.as_raw_fd(),
                IORING_REGISTER_RING_FDS,
                &mut update as *mut RsrcUpdate,
                1,
            )
        };
        (registered == 1).then_some(Self { index: update.offset })
    }

    /// Submits the entries queued on `ring` and waits for at least `want` completions (running
    /// the ring's deferred task work), like `IoUring::submit_and_wait` without SQPOLL.
    pub(crate) fn submit_and_wait(&self, ring: &mut IoUring, want: u32) -> io::Result<usize> {
        let to_submit = ring.submission().len() as libc::c_long;
        let flags = IORING_ENTER_GETEVENTS | IORING_ENTER_REGISTERED_RING;
        // SAFETY: enters the ring this thread registered under `index`, with no argument pointer;
        // the entries it submits were pushed under the contract of their push.
        let entered = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.index,
                to_submit,
                want,
                flags,
                std::ptr::null::<libc::c_void>(),
                0usize,
            )
        };
        // Negative: the call failed.
        usize::try_from(entered).map_err(|_| io::Error::last_os_error())
    }

    /// Unregisters the descriptor (a thread's registrations otherwise end with the thread).
    pub(crate) fn unregister(self, ring: &IoUring) {
        use std::os::fd::AsRawFd;
        let mut update = RsrcUpdate { offset: self.index, resv: 0, data: 0 };
        // SAFETY: io_uring_unregister reads one io_uring_rsrc_update from the live `update`.
        unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                ring.as_raw_fd(),
                IORING_UNREGISTER_RING_FDS,
                &mut update as *mut RsrcUpdate,
                1,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::TransportKind;

    #[test]
    fn transport_names_parse_and_auto_resolves_to_what_the_probe_says() {
        for (text, kind) in [
            ("auto", TransportKind::Auto),
            ("uring", TransportKind::Uring),
            ("io_uring", TransportKind::Uring),
            ("mio", TransportKind::Mio),
            ("tcp", TransportKind::Mio),
        ] {
            assert_eq!(text.parse::<TransportKind>().unwrap(), kind);
        }
        let err = "rdma".parse::<TransportKind>().unwrap_err();
        assert_eq!(err, crate::kind::UnknownTransport("rdma".into()));
        assert!(err.to_string().contains("uring, mio or auto"), "{err}");
        assert_eq!(TransportKind::Auto.to_string(), "auto");
        let expected = if check().is_ok() { TransportKind::Uring } else { TransportKind::Mio };
        assert_eq!(TransportKind::Auto.resolve(), expected);
        assert_eq!(TransportKind::Mio.resolve(), TransportKind::Mio);
        assert_eq!(available(), check().is_ok());
    }

    #[test]
    fn a_ring_entered_by_its_registered_index_submits_and_completes() {
        if check().is_err() {
            eprintln!("skipped: io_uring unavailable");
            return;
        }
        let mut ring =
            build_ring(RingConfig { entries: 8, sqpoll_idle_ms: None, single_issuer: true, taskrun_flag: true })
                .unwrap();
        let registered = RegisteredRing::register(&ring).expect("kernels with io_uring 6.0+ register ring fds");
        for round in 0..3u64 {
            let nop = opcode::Nop::new().build().user_data(round);
            // SAFETY: a NOP points to no memory.
            unsafe { ring.submission().push(&nop).unwrap() };
            assert!(registered.submit_and_wait(&mut ring, 1).unwrap() >= 1);
            let done: Vec<u64> = ring.completion().map(|c| c.user_data()).collect();
            assert_eq!(done, [round]);
        }
        // Nothing queued, nothing to wait for: returns at once.
        assert_eq!(registered.submit_and_wait(&mut ring, 0).unwrap(), 0);
        registered.unregister(&ring);
    }

    #[test]
    fn the_probe_verdict_names_its_reason() {
        match check() {
            Ok(()) => {
                // This kernel serves: a ring with the transport's flags builds, with and without
                // single-issuer deferred task work.
                for single_issuer in [true, false] {
                    for taskrun_flag in [false, true] {
                        build_ring(RingConfig { entries: 8, sqpoll_idle_ms: None, single_issuer, taskrun_flag })
                            .unwrap();
                    }
                }
            }
            Err(why) => {
                eprintln!("skipped: io_uring unavailable: {why}");
                assert!(!why.to_string().is_empty());
            }
        }
    }

    #[test]
    fn a_failed_setup_keeps_its_io_error() {
        use std::error::Error as _;
        let denied = Unavailable::Setup(Arc::new(io::Error::from_raw_os_error(libc::EPERM)));
        let source = denied.source().and_then(|s| s.downcast_ref::<Arc<io::Error>>()).expect("the source");
        assert_eq!(source.kind(), io::ErrorKind::PermissionDenied);
        assert!(denied.to_string().starts_with("io_uring_setup failed ("), "{denied}");
        let probe = Unavailable::Probe(Arc::new(io::Error::from_raw_os_error(libc::EINVAL)));
        assert!(probe.to_string().starts_with("io_uring_setup failed (probe: "), "{probe}");
    }
}
