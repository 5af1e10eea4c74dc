//! Python functions (`language = "python"`) in real processes over real sockets, on both
//! transports: the context (state, messages, local invocations), input and output in place and
//! byte-exact, exceptions, deadlines, load errors, swapping, and processes mixing Python with Rust
//! and C functions. Needs the `python` feature:
//! `cargo test -p praas-dataplane --features python --test python_functions`.
#![cfg(feature = "python")]

#[macro_use]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use praas_dataplane::function::{ExecutionMode, FunctionSpec, LoadError, Manifest};
use praas_dataplane::swap::SwapStore;
use praas_dataplane::transport::TransportKind;
use praas_dataplane::{Client, ClientOptions, FunctionRegistry, Process, ProcessConfig, Secret, ServerHandle, Status};
use praas_testkit::cluster::{introduce, remote_error, Node};
use praas_testkit::{example_manifest, pattern, python_functions, python_spec, serve_on, wait_until};

use ExecutionMode::{Inline, Worker};

const APP: &str = "py-app";
const SECRET: &str = "a secret only py-app's processes know";
const LONG: Duration = Duration::from_secs(30);

/// The Rust example functions and the Python ones of `examples/python/functions.py`, each Python
/// function as `py_NAME`.
fn manifest() -> Manifest {
    let module = python_functions();
    let mut manifest = example_manifest();
    let python = [
        ("py_echo", "echo", Inline),
        ("py_echo_worker", "echo", Worker),
        ("py_noop", "noop", Inline),
        ("py_counter", "counter", Worker),
        ("py_module_counter", "module_counter", Worker),
        ("py_state_ops", "state_ops", Worker),
        ("py_fail", "fail", Worker),
        ("py_spin", "spin", Worker),
        ("py_spin_inline", "spin", Inline),
        ("py_msg_put", "msg_put", Worker),
        ("py_msg_get", "msg_get", Worker),
        ("py_call_echo", "call_echo", Worker),
        ("py_call_python", "call_python", Worker),
        ("py_big", "big", Worker),
        ("py_process_id", "process_id", Inline),
        ("py_keep", "keep", Worker),
        ("py_kept", "kept", Worker),
        ("py_returns_text", "returns_text", Worker),
        ("py_remote_call", "remote_call", Worker),
        ("py_remote_call_inline", "remote_call", Inline),
        ("py_fan_out", "fan_out", Worker),
        ("py_gather", "gather", Worker),
    ];
    manifest
        .functions
        .extend(python.iter().map(|(name, symbol, mode)| python_spec(name, &module, Some(symbol), *mode)));
    manifest
}

fn config(id: &str) -> ProcessConfig {
    ProcessConfig {
        id: id.into(),
        app: APP.into(),
        secret: Secret::new(SECRET).ok(),
        workers: 2,
        ..ProcessConfig::default()
    }
}

fn start(kind: TransportKind, id: &str) -> (Arc<Process>, ServerHandle) {
    serve_on(kind, &manifest(), config(id))
}

fn client(kind: TransportKind, server: &ServerHandle, deadline_ms: u32) -> Client {
    let options = ClientOptions {
        timeout: LONG,
        transport: kind,
        invocation_timeout_ms: deadline_ms,
        ..ClientOptions::default()
    };
    Client::connect_with(server.local_addr(), options).expect("connect")
}

fn state_lives_across_invocations_and_is_the_process_state(kind: TransportKind) {
    let (_process, server) = start(kind, "py-state");
    let mut client = client(kind, &server, 0);
    for expected in 1..=5 {
        assert_eq!(client.invoke("py_counter", b"").unwrap(), expected.to_string().as_bytes());
    }
    // The Rust functions see what the Python one stored: one state store per process.
    assert_eq!(client.invoke("state_get", b"py-counter").unwrap(), b"5");
    assert_eq!(client.invoke("py_state_ops", b"k some value").unwrap(), b"some value True True True False True");
    assert_eq!(client.invoke("py_process_id", b"").unwrap(), b"py-state");
}

fn a_mebibyte_goes_in_and_out_byte_exact_and_so_do_zero_bytes(kind: TransportKind) {
    let (_process, server) = start(kind, "py-big");
    let mut client = client(kind, &server, 0);
    let input = pattern(1 << 20, 17);
    for function in ["py_echo", "py_echo_worker", "py_call_echo"] {
        assert!(client.invoke(function, &input).unwrap() == input, "{function}: 1 MiB came back changed");
        assert_eq!(client.invoke(function, b"").unwrap(), b"", "{function}: 0 B");
    }
    let big = client.invoke("py_big", (1u32 << 20).to_string().as_bytes()).unwrap();
    let expected: Vec<u8> = (0..1usize << 20).map(|i| (i % 256) as u8).collect();
    assert!(big == expected, "py_big: 1 MiB of output differs");
    assert_eq!(client.invoke("py_noop", &input).unwrap(), b"");
}

fn an_output_beyond_the_largest_frame_is_too_large(kind: TransportKind) {
    let config = ProcessConfig { max_frame: 1 << 20, ..config("py-frame") };
    let (_process, server) = serve_on(kind, &manifest(), config);
    let mut client = client(kind, &server, 0);
    let (status, message) = remote_error(client.invoke("py_big", (2u32 << 20).to_string().as_bytes()).unwrap_err());
    assert_eq!(status, Status::TooLarge, "{message}");
    assert!(message.contains("2097152 bytes"), "{message}");
    assert_eq!(client.invoke("py_echo", b"still serving").unwrap(), b"still serving");
}

fn an_exception_fails_the_invocation_with_its_type_message_and_traceback(kind: TransportKind) {
    let (_process, server) = start(kind, "py-fail");
    let mut client = client(kind, &server, 0);
    let (status, message) = remote_error(client.invoke("py_fail", b"fail now").unwrap_err());
    assert_eq!(status, Status::FunctionFailed, "{message}");
    assert!(message.starts_with("ValueError: asked to fail: fail now\n"), "{message}");
    assert!(message.contains("Traceback (most recent call last)"), "{message}");
    assert!(message.contains("functions.py") && message.contains("in _check"), "{message}");
    assert_eq!(client.invoke("py_fail", b"fine").unwrap(), b"fine");
    let (status, message) = remote_error(client.invoke("py_returns_text", b"").unwrap_err());
    assert_eq!(status, Status::FunctionFailed, "{message}");
    assert!(message.contains("returned str"), "{message}");
    assert_eq!(client.invoke("py_echo", b"still serving").unwrap(), b"still serving");
}

fn a_python_function_past_its_deadline_is_interrupted(kind: TransportKind) {
    let (process, server) = start(kind, "py-deadline");
    let mut client = client(kind, &server, 300);
    for function in ["py_spin", "py_spin_inline"] {
        let started = Instant::now();
        let (status, message) = remote_error(client.invoke(function, b"30").unwrap_err());
        let took = started.elapsed();
        assert_eq!(status, Status::Timeout, "{function}: {message}");
        assert!(took < Duration::from_secs(5), "{function}: answered after {took:?}");
        if function == "py_spin_inline" {
            assert!(message.contains("interrupted at its deadline"), "{message}");
            assert!(message.contains("DeadlineExceeded"), "{message}");
        }
        // The function itself stopped: its thread is free again long before the 30 s it asked for.
        wait_until(Duration::from_secs(5), format!("{function} to stop spinning"), || process.in_flight() == 0);
    }
    assert_eq!(client.invoke("py_echo", b"still serving").unwrap(), b"still serving");
    assert_eq!(client.invoke("py_spin", b"0.01").unwrap(), b"finished");
}

fn python_and_rust_functions_invoke_each_other_in_one_process(kind: TransportKind) {
    let (process, server) = start(kind, "py-mixed");
    let mut client = client(kind, &server, 0);
    assert_eq!(client.invoke("echo", b"rust").unwrap(), b"rust");
    assert_eq!(client.invoke("py_echo", b"python").unwrap(), b"python");
    // Python -> Rust, Python -> Python -> Rust, Rust -> Python.
    assert_eq!(client.invoke("py_call_echo", b"through rust").unwrap(), b"through rust");
    assert_eq!(client.invoke("py_call_python", b"").unwrap(), b"counter=1");
    assert_eq!(client.invoke("call", b"py_counter").unwrap(), b"2");
    assert!(process.metrics().local_invocations() >= 4);
}

fn a_view_kept_past_the_call_stays_valid_and_a_kept_context_raises(kind: TransportKind) {
    let (_process, server) = start(kind, "py-keep");
    let mut client = client(kind, &server, 0);
    let input = pattern(100_000, 5);
    assert_eq!(client.invoke("py_keep", &input).unwrap(), b"kept");
    // Other invocations reuse the pool's buffers meanwhile.
    for seed in 0..8 {
        client.invoke("py_echo_worker", &pattern(300_000, seed)).unwrap();
    }
    let answer = client.invoke("py_kept", b"").unwrap();
    let (kept, said) = answer.split_at(input.len());
    assert!(kept == input, "the kept slice changed");
    let said = String::from_utf8_lossy(said);
    assert!(said.starts_with("|old ctx raised status 10: ctx is used after its invocation returned"), "{said}");
}

/// Processes of the application that know each other, as the control plane would tell them.
fn peers(kind: TransportKind, ids: &[&str]) -> Vec<Node> {
    let manifest = manifest();
    let nodes: Vec<Node> = ids.iter().map(|id| Node::start(kind, &manifest, config(id))).collect();
    introduce(&nodes);
    nodes
}

fn messages_pass_between_a_python_and_a_rust_function_in_two_processes(kind: TransportKind) {
    let nodes = peers(kind, &["py0", "rs1"]);
    let mut py = client(kind, &nodes[0].server, 0);
    let mut rs = client(kind, &nodes[1].server, 0);
    assert_eq!(py.invoke("py_msg_put", b"rs1 greet hello from python").unwrap(), b"stored");
    assert_eq!(rs.invoke("msg_get", b"py0 greet 5000").unwrap(), b"py0 hello from python");
    assert_eq!(rs.invoke("msg_put", b"py0 reply hello from rust").unwrap(), b"stored");
    assert_eq!(py.invoke("py_msg_get", b"rs1 reply 5000").unwrap(), b"rs1 hello from rust");
    // An empty mailbox answers a Python get as it answers a Rust one: the context's error keeps
    // its status when the function lets it propagate.
    let (status, message) = remote_error(py.invoke("py_msg_get", b"* reply 0").unwrap_err());
    assert_eq!(status, remote_error(rs.invoke("msg_get", b"* reply 0").unwrap_err()).0, "{message}");
    assert!(message.starts_with("Error: "), "{message}");
}

/// `process function ` then `input`: the input of `remote_call` (Python's and Rust's).
fn call_input(process: &str, function: &str, input: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{process} {function} ").into_bytes();
    bytes.extend_from_slice(input);
    bytes
}

fn python_functions_invoke_functions_of_other_processes(kind: TransportKind) {
    let nodes = peers(kind, &["pr0", "pr1", "pr2", "pr3"]);
    let mut client = client(kind, &nodes[0].server, 0);
    // Byte-exact, to Rust, C-ABI and Python callees, and from Rust to Python.
    for (seed, size) in [0usize, 1, 4095, 65_536, 1 << 20, 16 << 20].into_iter().enumerate() {
        let data = pattern(size, seed as u64);
        for (caller, callee) in
            [("py_remote_call", "echo"), ("py_remote_call", "py_echo_worker"), ("remote_call", "py_echo_worker")]
        {
            let output = client.invoke(caller, &call_input("pr1", callee, &data)).unwrap();
            assert!(output == data, "{caller} -> {callee}: {size} bytes came back as {} different bytes", output.len());
        }
    }
    // A -> B -> A, both Python: each waits without holding its process's interpreter.
    let nested = call_input("pr1", "py_remote_call", &call_input("pr0", "py_echo_worker", b"round trip"));
    assert_eq!(client.invoke("py_remote_call", &nested).unwrap(), b"round trip");
    // Errors keep their status through the Python caller.
    let (status, message) =
        remote_error(client.invoke("py_remote_call", &call_input("nobody", "echo", b"x")).unwrap_err());
    assert_eq!(status, Status::NotFound, "{message}");
    assert!(message.contains("unknown process \"nobody\""), "{message}");
    let (status, message) =
        remote_error(client.invoke("py_remote_call", &call_input("pr1", "no_such_fn", b"x")).unwrap_err());
    assert_eq!(status, Status::UnknownFunction, "{message}");
    assert!(message.contains("unknown function \"no_such_fn\""), "{message}");
    let (status, message) =
        remote_error(client.invoke("py_remote_call", &call_input("pr1", "py_fail", b"fail")).unwrap_err());
    assert_eq!(status, Status::FunctionFailed, "{message}");
    let (status, message) =
        remote_error(client.invoke("py_remote_call_inline", &call_input("pr1", "echo", b"x")).unwrap_err());
    assert_eq!(status, Status::Unsupported, "{message}");
    assert!(message.contains("mode = \"worker\""), "{message}");
    // The caller's deadline travels: a slow callee gives TIMEOUT on time.
    let mut hurried = Client::connect_with(
        nodes[0].server.local_addr(),
        ClientOptions { timeout: LONG, transport: kind, invocation_timeout_ms: 300, ..ClientOptions::default() },
    )
    .unwrap();
    let started = Instant::now();
    let (status, message) =
        remote_error(hurried.invoke("py_remote_call", &call_input("pr1", "sleep", b"3000")).unwrap_err());
    assert_eq!(status, Status::Timeout, "{message}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    // Fan-out and gather: every answer, each in its place, errors beside outputs.
    let out = client.invoke("py_fan_out", b"pr1,pr2,pr3,nobody,pr1 py_echo_worker hi").unwrap();
    let lines: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    for (line, process) in lines.iter().zip(["pr1", "pr2", "pr3"]) {
        assert_eq!(*line, format!("{process} ok hi"));
    }
    assert!(lines[3].starts_with(&format!("nobody err {} ", Status::NotFound.code())), "{lines:?}");
    assert_eq!(lines[4], "pr1 ok hi");
    let out = client.invoke("py_fan_out", b"pr1,pr2 py_fail fail now").unwrap();
    let lines: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, process) in lines.iter().zip(["pr1", "pr2"]) {
        let failed = format!("{process} err {} ", Status::FunctionFailed.code());
        assert!(line.starts_with(&failed) && line.contains("asked to fail: fail now"), "{line}");
    }
    assert_eq!(client.invoke("py_gather", b"pr1,pr2,pr3 echo ab").unwrap(), b"ab|ab|ab");
    let failed = Status::FunctionFailed.code();
    assert_eq!(client.invoke("py_gather", b"pr2,pr3 py_fail fail").unwrap(), format!("!{failed}|!{failed}").as_bytes());
    // The callees count what they served: pr2 and pr3 only ever served remote invocations (at
    // least the two echoes each answered).
    for node in &nodes[2..] {
        let served = node.process.metrics().invocations();
        assert!(served >= 2, "{} counted {served} invocations", node.process.id());
    }
}

fn state_survives_a_swap_and_module_globals_do_not(kind: TransportKind) {
    let (process, server) = start(kind, "py-swap");
    let mut old = client(kind, &server, 0);
    for _ in 0..3 {
        old.invoke("py_counter", b"").unwrap();
        old.invoke("py_module_counter", b"").unwrap();
    }
    // Swap out, as a process does on the control plane's request: drain, snapshot, stop.
    assert!(process.drain(LONG));
    let dir = std::env::temp_dir().join(format!("praas-py-swap-{kind}-{}", std::process::id()));
    let store = SwapStore::new(&dir);
    store.write(APP, "py-swap", process.state(), &process.mailbox().snapshot(), None).unwrap();
    drop(old);
    server.stop().unwrap();
    drop(process);
    // Swap in: a new process of the same id restores the state before serving.
    let snapshot = store.read(APP, "py-swap").unwrap();
    let (fresh, server) = start(kind, "py-swap");
    snapshot.restore_state(fresh.state());
    let mut new = client(kind, &server, 0);
    assert_eq!(new.invoke("py_counter", b"").unwrap(), b"4", "ctx state survives the swap");
    assert_eq!(new.invoke("py_module_counter", b"").unwrap(), b"1", "module globals start again");
    let _ = std::fs::remove_dir_all(&dir);
}

on_both_transports!(
    state_lives_across_invocations_and_is_the_process_state,
    a_mebibyte_goes_in_and_out_byte_exact_and_so_do_zero_bytes,
    an_output_beyond_the_largest_frame_is_too_large,
    an_exception_fails_the_invocation_with_its_type_message_and_traceback,
    a_python_function_past_its_deadline_is_interrupted,
    python_and_rust_functions_invoke_each_other_in_one_process,
    a_view_kept_past_the_call_stays_valid_and_a_kept_context_raises,
    messages_pass_between_a_python_and_a_rust_function_in_two_processes,
    python_functions_invoke_functions_of_other_processes,
    state_survives_a_swap_and_module_globals_do_not,
);

/// A folder of its own for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("praas-py-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn load(functions: Vec<FunctionSpec>, base_dir: &Path) -> Result<FunctionRegistry, LoadError> {
    FunctionRegistry::load(&Manifest { swap_in_on_call: true, functions, base_dir: base_dir.to_path_buf() })
}

#[test]
fn a_module_that_fails_to_import_fails_the_load_with_its_traceback() {
    let dir = scratch("import");
    std::fs::write(dir.join("broken.py"), "def helper():\n    raise RuntimeError('bad module state')\n\nhelper()\n")
        .unwrap();
    std::fs::write(dir.join("missing_dep.py"), "import no_such_module_for_praas_tests\n").unwrap();
    let cases = [
        ("broken.py", vec!["RuntimeError: bad module state", "Traceback (most recent call last)", "in helper"]),
        ("missing_dep.py", vec!["ModuleNotFoundError", "no_such_module_for_praas_tests"]),
        ("absent.py", vec!["FileNotFoundError"]),
        ("no_such_package_for_praas.tests", vec!["ModuleNotFoundError", "no_such_package_for_praas"]),
    ];
    for (module, wanted) in cases {
        let spec = FunctionSpec::python("f", module);
        let err = load(vec![spec], &dir).map(drop).unwrap_err();
        assert!(matches!(err, LoadError::PythonImport { .. }), "{module}: {err:?}");
        let text = err.to_string();
        assert!(text.contains("function \"f\"") && text.contains(module), "{text}");
        for part in wanted {
            assert!(text.contains(part), "{module}: {part:?} missing in {text}");
        }
    }
    // An importable module by name loads (the standard library's `json` has `dumps`).
    let spec = FunctionSpec { symbol: Some("dumps".into()), ..FunctionSpec::python("f", "json") };
    load(vec![spec], &dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_or_uncallable_function_fails_the_load() {
    let module = python_functions();
    let missing = python_spec("f", &module, Some("no_such_function"), Worker);
    let err = load(vec![missing], Path::new("")).map(drop).unwrap_err();
    assert!(matches!(err, LoadError::PythonFunction { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("no_such_function") && text.contains("AttributeError"), "{text}");
    let global = python_spec("f", &module, Some("_calls"), Worker);
    let text = load(vec![global], Path::new("")).map(drop).unwrap_err().to_string();
    assert!(text.contains("_calls is a int, not a function"), "{text}");
}

#[test]
fn the_example_manifest_loads_python_beside_rust_relative_to_its_folder() {
    let path = praas_testkit::workspace_root().join("examples/python/manifest.toml");
    let mut manifest = Manifest::from_file(&path).unwrap();
    // Its Rust functions name the release build; the tests use the library they built.
    let library = praas_testkit::example_functions();
    for spec in manifest.functions.iter_mut().filter(|s| !s.library.as_os_str().is_empty()) {
        spec.library = library.clone();
    }
    let registry = FunctionRegistry::load(&manifest).unwrap();
    assert!(registry.get(b"py_echo").is_some() && registry.get(b"echo").is_some());
}
