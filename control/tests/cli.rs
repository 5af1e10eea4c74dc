//! The `praas` binary as users run it: a real `praas process serve` child process, invoked with
//! `praas invoke`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use praas_testkit::example_functions;

/// A `praas process serve` child, killed when dropped.
struct Served {
    child: Child,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn praas() -> Command {
    Command::new(env!("CARGO_BIN_EXE_praas"))
}

fn serve(dir: &Path) -> Served {
    let lib = example_functions();
    let manifest = dir.join("functions.toml");
    let mut text = String::new();
    for (name, mode) in [("echo", "inline"), ("counter", "worker"), ("panic", "worker"), ("state_get", "worker")] {
        text.push_str(&format!("[[function]]\nname = \"{name}\"\nlibrary = {:?}\nmode = \"{mode}\"\n\n", lib));
    }
    std::fs::write(&manifest, text).unwrap();
    let mut child = praas()
        .args(["process", "serve", "--listen", "127.0.0.1:0", "--workers", "2", "--id", "cli-test", "--manifest"])
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("praas process serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    Served { addr: addr.to_owned(), child }
}

fn invoke(served: &Served, function: &str, input: &str, stdin: Option<&[u8]>) -> Output {
    let mut child = praas()
        .args(["invoke", "--process", &served.addr, function, "--input", input])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        pipe.write_all(bytes).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn invoke_takes_text_files_and_standard_input() {
    let dir = temp_dir("cli-input");
    let served = serve(&dir);
    let out = invoke(&served, "echo", "plain text", None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"plain text");

    let file = dir.join("input.bin");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let out = invoke(&served, "echo", &format!("@{}", file.display()), None);
    assert!(out.status.success());
    assert!(out.stdout == bytes, "a file's bytes come back exact");

    let out = invoke(&served, "echo", "-", Some(b"from stdin"));
    assert_eq!(out.stdout, b"from stdin");
}

#[test]
fn state_survives_between_cli_invocations() {
    let served = serve(&temp_dir("cli-state"));
    for expected in ["1", "2", "3"] {
        let out = invoke(&served, "counter", "", None);
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    }
}

#[test]
fn errors_are_reported_with_a_failing_exit_code() {
    let served = serve(&temp_dir("cli-errors"));
    let out = invoke(&served, "missing", "", None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown function") && stderr.contains("missing"), "{stderr}");

    let out = invoke(&served, "panic", "cli", None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("panicked"));

    let out = invoke(&served, "state_get", "nothing-here", None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    let out = invoke(&served, "echo", "@/nonexistent/file", None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/file"));

    // Nothing listens on port 1: a clear connection error, no hang.
    let out = praas().args(["invoke", "--process", "127.0.0.1:1", "echo"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn serve_refuses_a_manifest_it_cannot_load() {
    let dir = temp_dir("cli-bad-manifest");
    let manifest = dir.join("bad.toml");
    std::fs::write(&manifest, "[[function]]\nname = \"f\"\nlibrary = \"/nonexistent/libf.so\"\n").unwrap();
    let out = praas().args(["process", "serve", "--manifest"]).arg(&manifest).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"f\"") && stderr.contains("/nonexistent/libf.so"), "{stderr}");
}
