//! The C client library from C: `ffi/client/examples/invoke.c` compiled with the system C
//! compiler against `ffi/include/praas_client.h`, linked with the library this package builds,
//! and run against a real cloud process. The header is also compiled as C++.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use praas_dataplane::ProcessConfig;
use praas_testkit::{example_manifest, pattern, serve, workspace_root};

/// Folder of the library cargo built for this test run (the test binary's own `deps` folder).
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    let deps = exe.parent().expect("a folder").to_path_buf();
    for dir in [deps.clone(), deps.parent().expect("the profile folder").to_path_buf()] {
        if dir.join("libpraas_client.so").is_file() {
            return dir;
        }
    }
    panic!("libpraas_client.so not found next to {}", exe.display());
}

/// The example client, compiled once.
fn invoke_program() -> PathBuf {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let root = workspace_root();
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("c-invoke-{}", std::process::id()));
            let lib = library_dir();
            let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
            let status = Command::new(&cc)
                .args(["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
                .arg(root.join("ffi/include"))
                .arg(root.join("ffi/client/examples/invoke.c"))
                .arg("-o")
                .arg(&out)
                .arg("-L")
                .arg(&lib)
                .arg(format!("-Wl,-rpath,{}", lib.display()))
                .arg("-lpraas_client")
                .status()
                .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
            assert!(status.success(), "compiling ffi/client/examples/invoke.c failed");
            out
        })
        .clone()
}

/// The example client as a command: the library it loads is the one built for this run (the
/// loader's search path, which cargo sets for tests, could name a stale copy before the rpath).
fn program() -> Command {
    let mut command = Command::new(invoke_program());
    command.env("LD_LIBRARY_PATH", library_dir());
    command
}

fn invoke(args: &[&str]) -> Output {
    program().args(args).output().expect("the C client runs")
}

#[test]
fn a_c_program_invokes_functions_and_gets_every_status() {
    let config = ProcessConfig { workers: 2, ..ProcessConfig::default() };
    let (_process, server) = serve(&example_manifest(), config);
    let addr = server.local_addr().to_string();

    let out = invoke(&[&addr, "echo", "hello from C"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"hello from C");

    // A client that polls before it blocks gets the same answers.
    let out =
        program().args([&addr, "echo", "polling"]).env("PRAAS_SPIN_US", "200").output().expect("the C client runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"polling");

    // No input, and state kept between invocations of one process.
    for expected in ["1", "2"] {
        let out = invoke(&[&addr, "counter"]);
        assert_eq!(out.stdout, expected.as_bytes());
    }

    // A large input from a file comes back byte-exact (NUL padding and all).
    let input = pattern(3 << 20, 11);
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("c-input-{}", std::process::id()));
    std::fs::write(&file, &input).unwrap();
    let out = invoke(&[&addr, "echo_worker", &format!("@{}", file.display())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == input, "3 MiB through the C client");
    std::fs::remove_file(&file).unwrap();

    // The process's errors: their status code and text.
    let out = invoke(&[&addr, "nope"]);
    assert_eq!(out.status.code(), Some(praas_ffi::PRAAS_ERR_UNKNOWN_FUNCTION));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"nope\"") && stderr.contains("echo"), "{stderr}");
    let out = invoke(&[&addr, "fail", "it went wrong"]);
    assert_eq!(out.status.code(), Some(praas_ffi::PRAAS_ERR_FUNCTION), "{}", String::from_utf8_lossy(&out.stderr));

    // The client's own: nobody there.
    let out = invoke(&["127.0.0.1:1", "echo", "x"]);
    assert_eq!(out.status.code(), Some(praas_ffi::PRAAS_ERR_UNAVAILABLE));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to 127.0.0.1:1"));
}

#[test]
fn a_c_program_authenticates_with_the_client_key() {
    let secret = praas_dataplane::auth::new_secret();
    let config = ProcessConfig {
        app: "c-app".into(),
        secret: praas_dataplane::Secret::new(secret.clone()).ok(),
        client_auth: true,
        ..ProcessConfig::default()
    };
    let (_process, server) = serve(&example_manifest(), config);
    let addr = server.local_addr().to_string();
    let with = |credentials: &str| {
        program().args([&addr, "echo", "signed"]).env("PRAAS_CLIENT_CREDENTIALS", credentials).output().unwrap()
    };

    let out = with(&format!("c-app:{}", praas_dataplane::auth::client_key(&secret)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"signed");
    // A wrong key: refused at connection, the process's reason on standard error.
    let out = with("c-app:not-the-key");
    assert_eq!(out.status.code(), Some(praas_ffi::PRAAS_ERR_UNAVAILABLE));
    assert!(String::from_utf8_lossy(&out.stderr).contains("client key"), "{}", String::from_utf8_lossy(&out.stderr));
    // No key: the invocation is refused with the status of praas.h.
    let out = invoke(&[&addr, "echo", "anonymous"]);
    assert_eq!(
        out.status.code(),
        Some(praas_ffi::PRAAS_ERR_UNAUTHENTICATED),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn null_arguments_are_errors_not_crashes() {
    use ::praas_client::{
        praas_client_close, praas_client_connect, praas_client_connect_auth, praas_client_free_output,
        praas_client_invoke, praas_client_set_spin,
    };
    let mut err = [0 as std::ffi::c_char; 64];
    // SAFETY: NULL and valid pointers as the header allows; `err` holds 64 bytes.
    unsafe {
        assert!(praas_client_connect(std::ptr::null(), 0, err.as_mut_ptr(), err.len()).is_null());
        let text = std::ffi::CStr::from_ptr(err.as_ptr()).to_str().unwrap();
        assert_eq!(text, "the address is NULL");
        let key = c"key".as_ptr();
        assert!(praas_client_connect_auth(
            c"127.0.0.1:1".as_ptr(),
            std::ptr::null(),
            key,
            key,
            0,
            err.as_mut_ptr(),
            err.len()
        )
        .is_null());
        let text = std::ffi::CStr::from_ptr(err.as_ptr()).to_str().unwrap();
        assert_eq!(text, "the application is NULL");
        let mut output: *mut u8 = std::ptr::dangling_mut();
        let mut len = 7usize;
        let status = praas_client_invoke(
            std::ptr::null_mut(),
            c"echo".as_ptr(),
            std::ptr::null(),
            0,
            &mut output,
            &mut len,
            err.as_mut_ptr(),
            4,
        );
        assert_eq!(status, praas_ffi::PRAAS_ERR_INVALID_ARGUMENT);
        assert!(output.is_null() && len == 0, "outputs are reset on failure");
        assert_eq!(std::ffi::CStr::from_ptr(err.as_ptr()).to_bytes(), b"cli", "the reason cut to the buffer");
        assert_eq!(praas_client_set_spin(std::ptr::null_mut(), 10), praas_ffi::PRAAS_ERR_INVALID_ARGUMENT);
        praas_client_free_output(std::ptr::null_mut(), 0);
        praas_client_close(std::ptr::null_mut());
    }
}

#[test]
fn the_header_compiles_as_cpp() {
    let cxx = std::env::var_os("CXX").unwrap_or_else(|| "c++".into());
    let root = workspace_root();
    let source = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("client-{}.cpp", std::process::id()));
    std::fs::write(
        &source,
        "#include \"praas_client.h\"\nint main() { praas_client_close(nullptr); return PRAAS_OK; }\n",
    )
    .unwrap();
    let status = Command::new(&cxx)
        .args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-I"])
        .arg(root.join("ffi/include"))
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler {cxx:?}: {e}"));
    assert!(status.success(), "praas_client.h does not compile as C++");
}
