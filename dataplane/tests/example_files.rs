//! The example functions `file_write` and `file_read` against a real process over TCP, on both
//! transports (`mio::*` and `uring::*`): they touch plain file names in the process's working
//! folder (its state-files folder) and nothing else: no absolute path, no `..`, no hidden file,
//! no symbolic link out.
//!
//! The working folder is the test binary's: this file is its own binary, and moves it once into a
//! folder of its own, as the control plane starts a process in its state-files folder.

#[macro_use]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use praas_dataplane::transport::TransportKind;
use praas_dataplane::{Client, ClientError, ClientOptions, ProcessConfig, ServerHandle, Status};
use praas_testkit::{example_manifest, serve_on};

/// The state-files folder the processes of this binary run in, and a folder beside it (outside)
/// holding a file no function may read or write.
struct Folders {
    files: PathBuf,
    outside: PathBuf,
}

fn folders() -> &'static Folders {
    static FOLDERS: OnceLock<Folders> = OnceLock::new();
    FOLDERS.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("example-files-{}", std::process::id()));
        let (files, outside) = (base.join("files"), base.join("outside"));
        std::fs::create_dir_all(&files).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("private.txt"), b"not for functions").unwrap();
        std::fs::write(base.join("x"), b"the parent's file").unwrap();
        // Before any process of this binary starts: the example library is built by absolute path.
        let _ = praas_testkit::example_functions();
        std::env::set_current_dir(&files).unwrap();
        Folders { files, outside }
    })
}

fn start(kind: TransportKind) -> (ServerHandle, Client) {
    let folders = folders();
    assert_eq!(std::env::current_dir().unwrap(), folders.files);
    let config = ProcessConfig { id: "files".into(), workers: 2, ..ProcessConfig::default() };
    let (_process, server) = serve_on(kind, &example_manifest(), config);
    let options = ClientOptions { timeout: Duration::from_secs(30), transport: kind, ..ClientOptions::default() };
    let client = Client::connect_with(server.local_addr(), options).unwrap();
    (server, client)
}

fn invalid(result: Result<Vec<u8>, ClientError>, what: &str) -> String {
    match result {
        Err(ClientError::Remote { status: Status::InvalidArgument, message }) => message,
        other => panic!("{what}: expected an InvalidArgument refusal, got {other:?}"),
    }
}

fn a_written_state_file_reads_back_owner_only(kind: TransportKind) {
    let (_server, mut client) = start(kind);
    let name = format!("notes-{kind}.txt");
    assert_eq!(client.invoke("file_write", format!("{name} a state file survives").as_bytes()).unwrap(), b"written");
    assert_eq!(client.invoke("file_read", name.as_bytes()).unwrap(), b"a state file survives");
    let path = folders().files.join(&name);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    // Written again: replaced, not appended to.
    assert_eq!(client.invoke("file_write", format!("{name} short").as_bytes()).unwrap(), b"written");
    assert_eq!(client.invoke("file_read", name.as_bytes()).unwrap(), b"short");
    // The longest name there is.
    let longest = format!("{kind}{}", "n".repeat(255 - kind.to_string().len()));
    assert_eq!(client.invoke("file_write", format!("{longest} long").as_bytes()).unwrap(), b"written");
    assert_eq!(client.invoke("file_read", longest.as_bytes()).unwrap(), b"long");
}

fn paths_hidden_files_and_symbolic_links_out_are_refused(kind: TransportKind) {
    let (_server, mut client) = start(kind);
    let folders = folders();
    let private = folders.outside.join("private.txt");
    let link = format!("link-{kind}");
    std::fs::remove_file(folders.files.join(&link)).ok();
    std::os::unix::fs::symlink(&private, folders.files.join(&link)).unwrap();
    std::fs::write(folders.files.join(".hidden"), b"hidden").unwrap();
    let too_long = "n".repeat(256);
    let shadow = "/etc/shadow";
    let outside = private.to_str().unwrap();
    for name in [shadow, "/etc/passwd", outside, "../x", "..", ".", ".hidden", "sub/name", "a\0b", "", &too_long] {
        let message = invalid(client.invoke("file_read", name.as_bytes()), &format!("file_read {name:?}"));
        assert!(message.contains("state file"), "{name:?}: {message}");
    }
    let message = invalid(client.invoke("file_read", link.as_bytes()), "file_read through a symbolic link");
    assert!(message.contains("symbolic link"), "{message}");
    // Nor written through: the file outside keeps its content, and nothing appears beside it.
    for name in [link.as_str(), "../x", "../escaped", outside, ".hidden"] {
        invalid(client.invoke("file_write", format!("{name} overwritten").as_bytes()), &format!("file_write {name:?}"));
    }
    assert_eq!(std::fs::read(&private).unwrap(), b"not for functions");
    assert_eq!(std::fs::read(folders.files.join("../x")).unwrap(), b"the parent's file");
    assert!(!folders.files.join("../escaped").exists());
    assert_eq!(std::fs::read(folders.files.join(".hidden")).unwrap(), b"hidden");
    // A plain name that is not there is not found.
    match client.invoke("file_read", b"absent.txt") {
        Err(ClientError::Remote { status: Status::NotFound, message }) => assert!(message.contains("absent.txt")),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A function that cannot split its input says so the same way.
    invalid(client.invoke("file_write", b"no-content"), "file_write without content");
    // The process serves on.
    assert_eq!(client.invoke("echo", b"still serving").unwrap(), b"still serving");
}

on_both_transports!(a_written_state_file_reads_back_owner_only, paths_hidden_files_and_symbolic_links_out_are_refused);
