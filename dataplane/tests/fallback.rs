//! `TransportKind::Auto` where io_uring is forbidden: a child process of this test installs a
//! seccomp filter that refuses `io_uring_setup` (as container runtimes do), then serves and invokes
//! with `Auto`: the probe says why, the process serves over mio, the client uses plain calls,
//! and an explicit `Uring` fails with the probe's reason.

use std::process::Command;
use std::time::Duration;

use praas_dataplane::transport::{uring, uring_available, TransportKind};
use praas_dataplane::{Client, ClientOptions, ProcessConfig};
use praas_testkit::{example_manifest, serve_on};

const CHILD: &str = "PRAAS_TEST_FORBID_IO_URING";

/// Refuses `io_uring_setup` with EPERM for this process from now on.
fn forbid_io_uring() {
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    // struct seccomp_data: nr at offset 0, arch at offset 4.
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
    let arch = if cfg!(target_arch = "x86_64") { AUDIT_ARCH_X86_64 } else { AUDIT_ARCH_AARCH64 };
    let stmt = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
    let jump = |code: u16, k: u32, jt: u8, jf: u8| libc::sock_filter { code, jt, jf, k };
    let (ld_w_abs, jeq_k, ret_k) = (0x20u16, 0x15u16, 0x06u16);
    let filter = [
        stmt(ld_w_abs, 4),
        jump(jeq_k, arch, 1, 0),
        stmt(ret_k, SECCOMP_RET_ALLOW),
        stmt(ld_w_abs, 0),
        jump(jeq_k, libc::SYS_io_uring_setup as u32, 0, 1),
        stmt(ret_k, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(ret_k, SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error());
    // SAFETY: `program` points to `filter`, both alive for the call; the kernel copies them.
    let rc = unsafe {
        libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program as *const libc::sock_fprog, 0, 0)
    };
    assert_eq!(rc, 0, "PR_SET_SECCOMP: {}", std::io::Error::last_os_error());
}

/// The child's half: runs only inside the process the test below starts.
#[test]
fn child_serves_over_mio_when_io_uring_is_forbidden() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    forbid_io_uring();
    assert!(!uring_available(), "io_uring_setup is forbidden, yet the probe passed");
    let why = uring::probe::check().unwrap_err().to_string();
    assert!(why.contains("io_uring_setup failed"), "{why}");
    assert_eq!(TransportKind::Auto.resolve(), TransportKind::Mio);
    let config = ProcessConfig { workers: 1, ..ProcessConfig::default() };
    let (_process, server) = serve_on(TransportKind::Auto, &example_manifest(), config);
    let options = ClientOptions { timeout: Duration::from_secs(30), ..ClientOptions::default() };
    let mut client = Client::connect_with(server.local_addr(), options).unwrap();
    assert_eq!(client.transport(), TransportKind::Mio);
    assert_eq!(client.invoke("echo", b"over mio").unwrap(), b"over mio");
    let explicit = ClientOptions { transport: TransportKind::Uring, ..ClientOptions::default() };
    let err = Client::connect_with(server.local_addr(), explicit).unwrap_err().to_string();
    assert!(err.contains("io_uring_setup failed"), "{err}");
    println!("fallback: {why}");
}

#[test]
fn auto_falls_back_to_mio_where_seccomp_forbids_io_uring() {
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        eprintln!("skipped: the seccomp filter of this test knows x86_64 and aarch64 only");
        return;
    }
    // Build the example functions here, so that the child finds them built.
    let _ = praas_testkit::example_functions();
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_serves_over_mio_when_io_uring_is_forbidden", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("fallback: io_uring_setup failed") && stdout.contains("1 passed"), "{stdout}");
}
