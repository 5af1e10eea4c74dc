//! Scaffolding for this workspace's tests, never part of a production build (a dev-dependency
//! of the crates whose tests use it, `publish = false`): build the example function libraries,
//! start a real process on a real socket ([`serve`]), speak raw bytes to one ([`raw`]), and wait
//! for a condition with a deadline instead of sleeping ([`wait_until`], [`linux`]), fill a small
//! filesystem for full-disk tests ([`disk`]), flood a process with connections ([`flood`]).
//!
//! Environment variables honoured: `PRAAS_EXAMPLE_FUNCTIONS`, `PRAAS_C_FUNCTIONS` and
//! `PRAAS_C_FUNCTIONS_V1` (the example libraries to use instead of building them, as in the
//! SoftRoCE VM), `CARGO`, `CARGO_TARGET_DIR`, `CC`, `PRAAS_RDMA_ADDR`
//! and `PRAAS_RDMA_REQUIRED` ([`rdma_test_addr`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use praas_dataplane::function::{ExecutionMode, FunctionSpec, Manifest};
use praas_dataplane::transport::TransportKind;
use praas_dataplane::{FunctionRegistry, Process, ProcessConfig, ServerHandle, TcpOptions, TcpTransport, Transport};

#[cfg(target_os = "linux")]
pub mod cluster;
pub mod disk;
#[cfg(target_os = "linux")]
pub mod flood;
#[cfg(target_os = "linux")]
pub mod linux;
pub mod raw;
mod wait;

pub use wait::{wait_for, wait_until};

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ has a parent").to_path_buf()
}

/// Folder for libraries built by tests: beside, not inside, the target dir cargo is using, so a
/// nested build never waits for the outer one's lock.
fn test_build_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    target.join("test-functions")
}

/// The example Rust functions (`examples/functions`) as a shared library, built once per test run
/// (or the one `PRAAS_EXAMPLE_FUNCTIONS` names).
pub fn example_functions() -> PathBuf {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY
        .get_or_init(|| {
            // Where there is no cargo (the SoftRoCE VM), the runner passes the library it built.
            if let Some(lib) = std::env::var_os("PRAAS_EXAMPLE_FUNCTIONS") {
                return PathBuf::from(lib);
            }
            let dir = test_build_dir();
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "-p", "praas-example-functions", "--target-dir"])
                .arg(&dir)
                .current_dir(workspace_root())
                .status()
                .expect("cannot run cargo to build the example functions");
            assert!(status.success(), "building the example functions failed");
            let lib = dir.join("debug").join("libpraas_example_functions.so");
            assert!(lib.exists(), "{} missing after the build", lib.display());
            lib
        })
        .clone()
}

/// The example C functions (`ffi/examples/c_functions.c`) compiled with the system C compiler
/// (or the library `PRAAS_C_FUNCTIONS` names, where there is no compiler: the SoftRoCE VM).
pub fn c_functions() -> PathBuf {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(|| given_or_compiled("PRAAS_C_FUNCTIONS", "ffi/include", "")).clone()
}

/// The same example C functions compiled against the version-1 header of the C ABI
/// (`ffi/tests/v1/praas.h`, kept as it was): a library built before remote invocations existed
/// (or the library `PRAAS_C_FUNCTIONS_V1` names).
pub fn c_functions_v1() -> PathBuf {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(|| given_or_compiled("PRAAS_C_FUNCTIONS_V1", "ffi/tests/v1", "-v1")).clone()
}

/// The library the environment variable `given` names, else `ffi/examples/c_functions.c`
/// compiled against the header in `include`.
fn given_or_compiled(given: &str, include: &str, suffix: &str) -> PathBuf {
    match std::env::var_os(given) {
        Some(lib) => PathBuf::from(lib),
        None => compile_c_functions(include, suffix),
    }
}

fn compile_c_functions(include: &str, suffix: &str) -> PathBuf {
    let root = workspace_root();
    let dir = test_build_dir();
    std::fs::create_dir_all(&dir).expect("cannot create the test build folder");
    let out = dir.join(format!("libc_functions{suffix}-{}.so", std::process::id()));
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join(include))
        .arg(root.join("ffi/examples/c_functions.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
    assert!(status.success(), "compiling ffi/examples/c_functions.c against {include} failed");
    out
}

/// A manifest entry.
pub fn spec(name: &str, library: &Path, symbol: Option<&str>, mode: ExecutionMode) -> FunctionSpec {
    FunctionSpec { symbol: symbol.map(Into::into), mode, ..FunctionSpec::native(name, library) }
}

/// The example Python functions (`examples/python/functions.py`).
pub fn python_functions() -> PathBuf {
    workspace_root().join("examples/python/functions.py")
}

/// A manifest entry of a Python function `symbol` (default: `name`) of `module`.
pub fn python_spec(name: &str, module: &Path, symbol: Option<&str>, mode: ExecutionMode) -> FunctionSpec {
    let module = module.to_str().expect("a UTF-8 module path");
    FunctionSpec { symbol: symbol.map(Into::into), mode, ..FunctionSpec::python(name, module) }
}

/// Every example Rust function under its own name (`echo` and `noop` inline, the others on
/// workers), plus `echo_worker`: `echo` on a worker.
pub fn example_manifest() -> Manifest {
    let lib = example_functions();
    let inline = ["echo", "noop"];
    let worker = [
        "state_put",
        "state_get",
        "state_delete",
        "state_keys",
        "counter",
        "msg_put",
        "msg_get",
        "panic",
        "fail",
        "sleep",
        "generate",
        "nest",
        "call",
        "local_loop",
        "process_id",
        "fill",
        "checksum",
        "file_write",
        "file_read",
        "slow_count",
        "msg_bounce",
        "msg_roundtrip",
        "remote_call",
        "fan_out",
    ];
    let mut functions: Vec<FunctionSpec> =
        inline.iter().map(|name| spec(name, &lib, None, ExecutionMode::Inline)).collect();
    functions.extend(worker.iter().map(|name| spec(name, &lib, None, ExecutionMode::Worker)));
    functions.push(spec("echo_worker", &lib, Some("echo"), ExecutionMode::Worker));
    Manifest { swap_in_on_call: true, functions, base_dir: PathBuf::new() }
}

/// A process serving `manifest` over TCP on a free loopback port, with the default transport.
pub fn serve(manifest: &Manifest, config: ProcessConfig) -> (Arc<Process>, ServerHandle) {
    serve_on(TransportKind::Auto, manifest, config)
}

/// A process serving `manifest` over the transport `kind` on a free loopback port.
pub fn serve_on(kind: TransportKind, manifest: &Manifest, config: ProcessConfig) -> (Arc<Process>, ServerHandle) {
    let functions = FunctionRegistry::load(manifest).expect("the test manifest loads");
    let process = Process::start(config, functions).expect("the process starts");
    let addr = "127.0.0.1:0".parse().expect("a valid address");
    let transport: Box<dyn Transport> = match kind {
        TransportKind::Mio => {
            Box::new(TcpTransport::bind(addr, Arc::clone(&process), TcpOptions::default()).expect("bind loopback"))
        }
        kind => praas_dataplane::transport::bind(kind, addr, Arc::clone(&process)).expect("bind loopback"),
    };
    let server = transport.spawn().expect("the transport starts");
    (process, server)
}

/// `len` bytes of a reproducible pattern that differs by `seed` (xorshift): payloads whose
/// corruption or reordering a comparison notices.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Passes `per_key` messages under each of `keys` keys around the ring of three processes
/// `procs` (ids `p0`, `p1`, `p2`, peers of one another): p0 puts to p1, p1 forwards to p2, p2 back
/// to p0, each on its own thread per key. Panics if a message arrives out of order per key, from
/// the wrong process, or not within `timeout`.
pub fn message_ring(procs: &[Arc<Process>], keys: usize, per_key: usize, timeout: std::time::Duration) {
    assert_eq!(procs.len(), 3, "a ring of p0, p1, p2");
    let mut threads = Vec::new();
    for key in 0..keys {
        let key = format!("key-{key}");
        let p0 = Arc::clone(&procs[0]);
        let k = key.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..per_key {
                p0.peers().put("p1", &k, format!("{k}#{i}").as_bytes(), timeout).expect("p0 -> p1");
            }
        }));
        // p1 forwards what it gets from p0 to p2, p2 what it gets from p1 to p0.
        for (at, from, to) in [(1, "p0", "p2"), (2, "p1", "p0")] {
            let process = Arc::clone(&procs[at]);
            let k = key.clone();
            threads.push(std::thread::spawn(move || {
                for i in 0..per_key {
                    let (source, data) = process.mailbox().get(Some(from), &k, timeout).expect("a message to forward");
                    assert_eq!(source, from);
                    assert_eq!(data, format!("{k}#{i}").as_bytes(), "{} got key {k} out of order", process.id());
                    process.peers().put(to, &k, &data, timeout).expect("forward");
                }
            }));
        }
        // p0 collects them back from p2, in order.
        let p0 = Arc::clone(&procs[0]);
        threads.push(std::thread::spawn(move || {
            for i in 0..per_key {
                let (source, data) = p0.mailbox().get(Some("p2"), &key, timeout).expect("a message back");
                assert_eq!(source, "p2");
                assert_eq!(data, format!("{key}#{i}").as_bytes(), "p0 got key {key} out of order");
            }
        }));
    }
    for t in threads {
        t.join().expect("a ring thread failed");
    }
}

/// The address of the RDMA device the RDMA tests run on (`PRAAS_RDMA_ADDR`), or `None` after
/// saying so where there is none; panics where one is required (`PRAAS_RDMA_REQUIRED`, as
/// `scripts/test-rdma.sh` sets it) but missing.
pub fn rdma_test_addr() -> Option<std::net::IpAddr> {
    match std::env::var("PRAAS_RDMA_ADDR") {
        Ok(addr) => Some(addr.parse().expect("PRAAS_RDMA_ADDR is an IP address")),
        Err(_) if std::env::var_os("PRAAS_RDMA_REQUIRED").is_some() => {
            panic!("PRAAS_RDMA_REQUIRED is set but PRAAS_RDMA_ADDR is not: no RDMA device to test on")
        }
        Err(_) => {
            eprintln!("SKIPPED: no RDMA device (PRAAS_RDMA_ADDR unset); scripts/test-rdma.sh runs this on SoftRoCE");
            None
        }
    }
}
