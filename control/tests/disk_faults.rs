//! Full disks under a real control plane with real processes: its data folder (database,
//! application files) on a small tmpfs filled to the last byte, and its swap store on another.
//! Each request that needs the disk answers 503 with the reason and changes nothing; the
//! processes serve on with their state; once space is back everything works again without a
//! restart, and a restarted control plane finds exactly what the API said.

mod support;

use std::path::Path;
use std::time::Duration;

use praas_control::cli::{self, ApiCallError};
use praas_control::controller::AppView;
use praas_control::model::{ProcessRecord, ProcessStatus};
use praas_control::routes;
use praas_testkit::disk::Tmpfs;
use praas_testkit::{example_functions, wait_for};
use support::{temp_dir, ControlPlaneProcess};

/// The HTTP status and message of a failed call; panics if it succeeded.
fn failure<T: std::fmt::Debug>(result: Result<T, ApiCallError>) -> (u16, String) {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(e) => (e.status().unwrap_or(0), e.to_string()),
    }
}

fn app_names(cp: &ControlPlaneProcess) -> Vec<String> {
    let apps: Vec<AppView> = cp.api.get(&routes::apps()).unwrap();
    apps.into_iter().map(|a| a.name).collect()
}

fn counter(cp: &ControlPlaneProcess, app: &str, process: &str) -> String {
    String::from_utf8(cp.invoke(app, Some(process), "counter", b"").unwrap()).unwrap()
}

/// A manifest of the example `counter` function whose library lies in `root` (a function root of
/// the control plane), under `aliases` more names as well: each adds a hundred bytes and more to
/// the application's record.
fn root_manifest(root: &Path, name: &str, aliases: usize) -> std::path::PathBuf {
    let lib = root.join(example_functions().file_name().unwrap());
    let mut text = String::new();
    for alias in std::iter::once("counter".to_owned()).chain((0..aliases).map(|i| format!("counter_alias_{i}"))) {
        text.push_str(&format!(
            "[[function]]\nname = \"{alias}\"\nlibrary = \"{}\"\nsymbol = \"counter\"\nmode = \"worker\"\n",
            lib.display()
        ));
    }
    let path = root.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Removes a test's folder when dropped (declared first, so dropped after the mounts in it).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Names in `folder` (none if it does not exist).
fn entries(folder: &Path) -> Vec<String> {
    match std::fs::read_dir(folder) {
        Ok(dir) => dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_full_data_folder_answers_503_changes_nothing_and_recovers_without_a_restart() {
    let base = RemoveOnDrop(temp_dir("disk-full-data"));
    let base = &base.0;
    let data = Tmpfs::mount(&base.join("data"), 32);
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(example_functions(), root.join(example_functions().file_name().unwrap())).unwrap();
    // The swap store where it is by default: in the data folder, full as well.
    let swap_dir = data.path().join("swap");
    let root_arg = root.display().to_string();
    let mut cp = ControlPlaneProcess::start_in(data.path().to_owned(), &["--function-root", &root_arg]);
    cp.create_example_app("app");
    let _: ProcessRecord = cp.api.put(&routes::process("app", "p"), &serde_json::json!({})).unwrap();
    assert_eq!(counter(&cp, "app", "p"), "1");
    assert_eq!(counter(&cp, "app", "p"), "2");

    let filler = data.fill("filler");

    // An application whose uploaded library cannot be installed: 503, no trace of it.
    let upload = cli::app_create(&cp.api, "uploaded", &root_manifest(&root, "uploaded", 0), None);
    let (status, message) = failure(upload);
    assert_eq!(status, 503, "{message}");
    assert!(message.contains("No space left on device"), "{message}");
    // An application whose record cannot be written (1 MiB and more of manifest): 503, the database's
    // reason, no trace of it.
    let recorded =
        cli::app_create_with(&cp.api, "recorded", &root_manifest(&root, "recorded", 10_000), None, None, false);
    let (status, message) = failure(recorded);
    assert_eq!(status, 503, "{message}");
    assert!(message.contains("control plane database unavailable") && message.contains("No space left"), "{message}");
    for app in ["uploaded", "recorded"] {
        assert_eq!(failure(cp.api.get::<AppView>(&routes::app(app))).0, 404);
    }
    assert_eq!(app_names(&cp), ["app"]);
    assert_eq!(entries(&data.path().join("apps")), ["app"], "nothing half-made in the application folders");

    // A swap can be neither recorded nor written: refused with 503 and the reason; the process
    // serves on, its state intact, nothing left in the swap store.
    let (status, message) = failure(cp.api.post::<ProcessRecord>(&routes::swap("app", "p")));
    assert_eq!(status, 503, "{message}");
    assert!(message.contains("database unavailable") || message.contains("No space left on device"), "{message}");
    assert_eq!(cp.process("app", "p").status, ProcessStatus::Allocated);
    assert_eq!(counter(&cp, "app", "p"), "3");
    assert_eq!(entries(&swap_dir.join("app/p")), Vec::<String>::new(), "no snapshot, whole or partial");
    // A new process cannot be recorded either; no trace of it.
    let (status, message) = failure(cp.api.put::<ProcessRecord>(&routes::process("app", "q"), &serde_json::json!({})));
    assert_eq!(status, 503, "{message}");
    assert_eq!(failure(cp.api.get::<ProcessRecord>(&routes::process("app", "q"))).0, 404);
    let processes: Vec<ProcessRecord> = cp.api.get(&routes::processes("app")).unwrap();
    assert_eq!(processes.len(), 1);

    // Space is back: without a restart, writes succeed, the swap works and restores the state.
    std::fs::remove_file(&filler).unwrap();
    cli::app_create_with(&cp.api, "later", &root_manifest(&root, "later", 10_000), None, None, false).unwrap();
    let swapped: ProcessRecord = cp.api.post(&routes::swap("app", "p")).unwrap();
    assert_eq!(swapped.status, ProcessStatus::SwappedOut);
    let back: ProcessRecord = cp.api.post(&routes::swap_in("app", "p")).unwrap();
    assert_eq!(back.status, ProcessStatus::Allocated);
    assert_eq!(counter(&cp, "app", "p"), "4");
    let _: ProcessRecord = cp.api.put(&routes::process("app", "q"), &serde_json::json!({})).unwrap();
    assert_eq!(counter(&cp, "app", "q"), "1");

    // A restarted control plane finds what the API said, no more, no less.
    cp.kill9();
    cp.restart();
    assert_eq!(app_names(&cp), ["app", "later"]);
    let mut names: Vec<String> =
        cp.api.get::<Vec<ProcessRecord>>(&routes::processes("app")).unwrap().into_iter().map(|p| p.name).collect();
    names.sort();
    assert_eq!(names, ["p", "q"]);
    cp.wait_status("app", "p", ProcessStatus::Allocated, Duration::from_secs(20));
    assert_eq!(counter(&cp, "app", "p"), "5");
}

#[test]
fn a_full_swap_store_fails_the_swap_with_enospc_and_the_process_keeps_its_state() {
    let base = RemoveOnDrop(temp_dir("disk-full-swap"));
    let base = &base.0;
    let swap = Tmpfs::mount(&base.join("swap"), 16);
    let swap_arg = swap.path().display().to_string();
    let cp = ControlPlaneProcess::start_in(base.join("data"), &["--swap-dir", &swap_arg]);
    cp.create_example_app("app");
    let _: ProcessRecord = cp.api.put(&routes::process("app", "p"), &serde_json::json!({})).unwrap();
    assert_eq!(counter(&cp, "app", "p"), "1");
    // 8 MiB of state, 2 MiB of room: the snapshot fails part-way.
    let sum = cp.invoke("app", Some("p"), "fill", format!("big {}", 8 << 20).as_bytes()).unwrap();
    let filler = swap.fill("filler");
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&filler).unwrap().set_len(len - (2 << 20)).unwrap();

    let (status, message) = failure(cp.api.post::<ProcessRecord>(&routes::swap("app", "p")));
    assert_eq!(status, 503, "{message}");
    assert!(message.contains("No space left on device"), "the process's reason: {message}");
    assert_eq!(cp.process("app", "p").status, ProcessStatus::Allocated);
    assert_eq!(counter(&cp, "app", "p"), "2");
    let check = cp.invoke("app", Some("p"), "checksum", b"big").unwrap();
    assert_eq!(check, sum, "the state is intact");
    assert_eq!(entries(&swap.path().join("app/p")), Vec::<String>::new(), "the partial snapshot is removed");

    // Space is back: the swap succeeds and the swap-in restores the state.
    std::fs::remove_file(&filler).unwrap();
    let swapped: ProcessRecord = cp.api.post(&routes::swap("app", "p")).unwrap();
    assert_eq!(swapped.status, ProcessStatus::SwappedOut);
    assert!(swapped.swap.unwrap().bytes >= 8 << 20);
    let back: ProcessRecord = cp.api.post(&routes::swap_in("app", "p")).unwrap();
    assert_eq!(back.status, ProcessStatus::Allocated);
    assert_eq!(counter(&cp, "app", "p"), "3");
    assert_eq!(cp.invoke("app", Some("p"), "checksum", b"big").unwrap(), sum);
}

#[test]
fn a_control_plane_restarted_on_a_full_data_folder_keeps_its_processes() {
    let base = RemoveOnDrop(temp_dir("disk-full-restart"));
    let data = Tmpfs::mount(&base.0.join("data"), 32);
    let mut cp = ControlPlaneProcess::start_in(data.path().to_owned(), &[]);
    cp.create_example_app("app");
    let _: ProcessRecord = cp.api.put(&routes::process("app", "p"), &serde_json::json!({})).unwrap();
    assert_eq!(counter(&cp, "app", "p"), "1");

    // Killed, the disk fills, started again: the process registers again and serves on with
    // its state, though the database cannot take a byte.
    cp.kill9();
    let filler = data.fill("filler");
    cp.restart();
    assert_eq!(counter(&cp, "app", "p"), "2");
    // Once it has registered again, a swap is refused for the full disk, not for want of a
    // control channel.
    let message = wait_for(Duration::from_secs(20), "app/p to register again", || {
        let (status, message) = failure(cp.api.post::<ProcessRecord>(&routes::swap("app", "p")));
        assert_eq!(status, 503, "{message}");
        (!message.contains("no control channel")).then_some(message)
    });
    // Whether the database (a fresh handle may still reuse its file's free pages) or the
    // snapshot hit the full disk first.
    assert!(message.contains("database unavailable") || message.contains("No space left on device"), "{message}");
    assert_eq!(cp.process("app", "p").status, ProcessStatus::Allocated);
    assert_eq!(counter(&cp, "app", "p"), "3");

    // Space is back: swapping works, and another restart finds the process as the API says.
    std::fs::remove_file(&filler).unwrap();
    let _: ProcessRecord = cp.api.post(&routes::swap("app", "p")).unwrap();
    let _: ProcessRecord = cp.api.post(&routes::swap_in("app", "p")).unwrap();
    assert_eq!(counter(&cp, "app", "p"), "4");
    cp.kill9();
    cp.restart();
    assert_eq!(cp.process("app", "p").status, ProcessStatus::Allocated);
    assert_eq!(counter(&cp, "app", "p"), "5");
}

/// The control channel's address, from a running process's command line.
fn control_address(cp: &ControlPlaneProcess, app: &str, name: &str) -> String {
    let pid = cp.process(app, name).pid.unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let value = args.iter().find_map(|a| a.strip_prefix("--control-channel="));
    value.expect("--control-channel=ADDR on the command line").to_owned()
}

#[test]
fn processes_that_register_or_die_while_the_database_fails_are_kept_and_recorded_later() {
    let base = RemoveOnDrop(temp_dir("disk-full-register"));
    let data = Tmpfs::mount(&base.0.join("data"), 32);
    let root = base.0.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(example_functions(), root.join(example_functions().file_name().unwrap())).unwrap();
    let root_arg = root.display().to_string();
    let mut cp = ControlPlaneProcess::start_in(data.path().to_owned(), &["--function-root", &root_arg]);
    cp.create_example_app("app");
    let record: ProcessRecord = cp.api.put(&routes::process("app", "p"), &serde_json::json!({})).unwrap();
    let pid = record.pid.unwrap();
    assert_eq!(counter(&cp, "app", "p"), "1");
    let doomed: ProcessRecord = cp.api.put(&routes::process("app", "doomed"), &serde_json::json!({})).unwrap();
    let filler = data.fill("filler");
    // A write that cannot fit: the database fails, and keeps failing while the disk is full.
    let big = cli::app_create_with(&cp.api, "big", &root_manifest(&root, "big", 10_000), None, None, false);
    assert_eq!(failure(big).0, 503);

    // Break the process's control channel (loopback only): it registers again at once, while
    // the database fails (whether that small write fits in the file's free pages or not, the
    // process is kept: a refused process exits).
    let port = control_address(&cp, "app", "p").rsplit(':').next().unwrap().to_owned();
    let killed = std::process::Command::new("ss")
        .args(["-K", "dst", "127.0.0.1", "dport", "=", &format!(":{port}")])
        .output()
        .unwrap();
    assert!(killed.status.success(), "ss -K: {}", String::from_utf8_lossy(&killed.stderr));
    let message = wait_for(Duration::from_secs(20), "app/p to register again", || {
        let (status, message) = failure(cp.api.post::<ProcessRecord>(&routes::swap("app", "p")));
        assert_eq!(status, 503, "{message}");
        (!message.contains("no control channel")).then_some(message)
    });
    // The database or the snapshot (the swap store is in the data folder) met the full disk.
    assert!(message.contains("database unavailable") || message.contains("No space left on device"), "{message}");
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the process lives");
    assert_eq!(cp.process("app", "p").status, ProcessStatus::Allocated);
    assert_eq!(counter(&cp, "app", "p"), "2");
    // A process that dies meanwhile is FAILURE at once, though not on disk yet.
    let killed = std::process::Command::new("kill").args(["-9", &doomed.pid.unwrap().to_string()]).status();
    assert!(killed.unwrap().success());
    let dead = cp.wait_status("app", "doomed", ProcessStatus::Failure, Duration::from_secs(10));
    assert!(dead.error.as_deref().unwrap_or_default().contains("signal 9"), "{dead:?}");

    // Space is back: what the database could not take goes with the next write (the swap's), the
    // swap works, a restart agrees.
    std::fs::remove_file(&filler).unwrap();
    let _: ProcessRecord = cp.api.post(&routes::swap("app", "p")).unwrap();
    let _: ProcessRecord = cp.api.post(&routes::swap_in("app", "p")).unwrap();
    assert_eq!(counter(&cp, "app", "p"), "3");
    cp.kill9();
    cp.restart();
    assert_eq!(app_names(&cp), ["app"]);
    assert_eq!(cp.process("app", "p").status, ProcessStatus::Allocated);
    assert_eq!(counter(&cp, "app", "p"), "4");
    let dead = cp.process("app", "doomed");
    assert_eq!(dead.status, ProcessStatus::Failure);
    assert!(dead.error.as_deref().unwrap_or_default().contains("signal 9"), "its own death, as recorded: {dead:?}");
}
