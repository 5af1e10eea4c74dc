//! Crash-consistent swapping: `kill -9` of the control plane or of the process at each step of a
//! swap-out and a swap-in, and damaged or missing snapshots. A real control plane (`praas control
//! serve`) and real processes; the test hook `PRAAS_TEST_PAUSE_SWAP=STEP:MS`
//! (`praas_dataplane::swap::test_pause`) holds a swap at a step while the test kills. After each
//! fault the process's state (a counter and a 64 MiB value) is exactly what it was: nothing lost,
//! nothing doubled.

mod support;

use std::path::PathBuf;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use praas_control::cli::ApiCallError;
use praas_control::model::{ProcessRecord, ProcessStatus};
use praas_control::routes;
use praas_dataplane::swap::SwapStore;
use support::{api_of, praas, ControlPlaneProcess};

const APP: &str = "faults";
/// The large state value, bytes.
const BIG: usize = 64 << 20;
/// What a process that re-registered with a pending swap logs when it was not recorded ...
const SERVING_ON: &str = "the control plane did not record the swap: serving on";
/// ... and when it was.
const RECORDED: &str = "the control plane recorded the swap";
/// Longest any awaited condition may take.
const WAIT: Duration = Duration::from_secs(60);

/// A control plane for one test, killed with its processes and its folder removed when dropped.
struct Rig {
    cp: Option<ControlPlaneProcess>,
    dir: PathBuf,
}

impl Rig {
    /// A control plane whose swaps pause as `pause` says (`STEP:MS,...`), with the example app.
    fn start(name: &str, pause: &str) -> Self {
        let cp = ControlPlaneProcess::start_logged(name, &[], &[("PRAAS_TEST_PAUSE_SWAP", pause)]);
        cp.create_example_app(APP);
        let dir = cp.data_dir.clone();
        Self { cp: Some(cp), dir }
    }

    fn cp(&self) -> &ControlPlaneProcess {
        self.cp.as_ref().expect("a control plane")
    }

    fn cp_mut(&mut self) -> &mut ControlPlaneProcess {
        self.cp.as_mut().expect("a control plane")
    }

    fn swap_store(&self) -> SwapStore {
        SwapStore::new(self.dir.join("swap"))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        drop(self.cp.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a process holds: the counter's value and the big value's `length fnv1a` sum.
struct Held {
    counter: u64,
    sum: String,
}

/// Creates process `name` with a counter at 3 and a 64 MiB value.
fn with_state(cp: &ControlPlaneProcess, name: &str) -> Held {
    let _: ProcessRecord = cp.api.put(&routes::process(APP, name), &serde_json::json!({})).unwrap();
    for n in 1..=3 {
        assert_eq!(cp.invoke(APP, Some(name), "counter", b"").unwrap(), n.to_string().as_bytes());
    }
    let sum = cp.invoke(APP, Some(name), "fill", format!("big {BIG}").as_bytes()).unwrap();
    Held { counter: 3, sum: String::from_utf8(sum).unwrap() }
}

/// Checks that the process holds exactly `held` (invoking it, which swaps it in if needed), then
/// counts once more.
fn assert_intact(cp: &ControlPlaneProcess, name: &str, held: &mut Held) {
    let sum = cp.invoke(APP, Some(name), "checksum", b"big").unwrap();
    assert_eq!(String::from_utf8(sum).unwrap(), held.sum, "the 64 MiB value of {name}");
    held.counter += 1;
    let counted = cp.invoke(APP, Some(name), "counter", b"").unwrap();
    assert_eq!(counted, held.counter.to_string().as_bytes(), "the counter of {name}: nothing lost, nothing doubled");
}

/// Waits until `text()` contains `needle`.
fn wait_text(what: &str, text: impl Fn() -> String, needle: &str) {
    let deadline = Instant::now() + WAIT;
    while !text().contains(needle) {
        assert!(Instant::now() < deadline, "{what} never said {needle:?}: {}", text());
        thread::sleep(Duration::from_millis(20));
    }
}

/// The hook's line for a step.
fn paused_at(step: &str) -> String {
    format!("paused at swap step {step} ")
}

/// How many times `text` says the hook paused at `step`.
fn pauses(text: &str, step: &str) -> usize {
    text.matches(&paused_at(step)).count()
}

/// Waits until `text` says the hook paused at `step` once more than the `before` times it had
/// (an earlier swap's pause at the same step is not this one's).
fn wait_for_pause(what: &str, text: impl Fn() -> String, step: &str, before: usize) {
    wait_text(what, || pauses(&text(), step).to_string(), &(before + 1).to_string());
}

/// Starts `POST .../swap` (or `swapin`) on a thread: its answer, once the test is done with it.
fn post_in_background(cp: &ControlPlaneProcess, path: String) -> JoinHandle<Result<ProcessRecord, ApiCallError>> {
    let api = api_of(&cp.http, &cp.data_dir);
    thread::spawn(move || api.post::<ProcessRecord>(&path))
}

fn kill9(pid: u32) {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + WAIT;
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still runs");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes under the process's temporary snapshot folders.
fn tmp_bytes(rig: &Rig, name: &str) -> u64 {
    let folder = rig.swap_store().folder(APP, name).unwrap();
    let mut total = 0;
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            for file in std::fs::read_dir(entry.path()).into_iter().flatten().flatten() {
                total += file.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

/// Kills the control plane while a swap-out waits at `step` of the control plane or of the
/// process (`in_process`), restarts it on the same data folder, and returns the process's status
/// once it settled.
fn kill_control_plane_during_swap_out(
    name: &str,
    step: &str,
    in_process: bool,
    check_at_step: impl Fn(&Rig),
) -> (Rig, Held, ProcessStatus) {
    let mut rig = Rig::start(name, &format!("{step}:3000"));
    let mut held = with_state(rig.cp(), "p");
    let pid = rig.cp().process(APP, "p").pid.unwrap();
    let swap = post_in_background(rig.cp(), routes::swap(APP, "p"));
    if in_process {
        wait_text("the process", || rig.cp().process_log(APP, "p"), &paused_at(step));
    } else {
        wait_text("the control plane", || rig.cp().control_log(), &paused_at(step));
    }
    check_at_step(&rig);
    rig.cp_mut().kill9();
    assert!(swap.join().unwrap().is_err(), "the swap's caller saw the control plane die");
    rig.cp_mut().restart();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let record = rig.cp().process(APP, "p");
        if matches!(record.status, ProcessStatus::Allocated | ProcessStatus::SwappedOut) {
            break record.status;
        }
        assert_ne!(record.status, ProcessStatus::Failure, "{record:?}");
        assert!(Instant::now() < deadline, "still {:?}", record.status);
        thread::sleep(Duration::from_millis(20));
    };
    if status == ProcessStatus::SwappedOut {
        // It exits once it hears the swap was recorded.
        wait_gone(pid);
    }
    assert_intact(rig.cp(), "p", &mut held);
    (rig, held, status)
}

#[test]
fn control_plane_killed_before_the_request_reaches_the_process() {
    let (rig, _, status) = kill_control_plane_during_swap_out("cp-kill-request", "request", false, |_| {});
    assert_eq!(status, ProcessStatus::Allocated, "the process serves on");
    assert!(!rig.cp().process_log(APP, "p").contains(SERVING_ON), "the request never reached it");
}

#[test]
fn control_plane_killed_while_the_snapshot_is_written() {
    let (rig, _, status) = kill_control_plane_during_swap_out("cp-kill-writing", "state-written", true, |rig| {
        // The state is on disk in the temporary folder, the manifest is not.
        let written = tmp_bytes(rig, "p");
        eprintln!("killing the control plane with {written} bytes in the temporary snapshot folder");
        assert!(written >= BIG as u64, "{written} bytes written");
        assert!(!rig.swap_store().exists(APP, "p"));
    });
    assert_eq!(status, ProcessStatus::Allocated, "the process serves on");
    // It waited, drained, for the decision, and heard at its registration that there was none.
    assert!(rig.cp().process_log(APP, "p").contains(SERVING_ON), "{}", rig.cp().process_log(APP, "p"));
}

#[test]
fn control_plane_killed_after_the_snapshot_is_in_place_before_the_confirmation() {
    let (rig, _, status) = kill_control_plane_during_swap_out("cp-kill-renamed", "renamed", true, |rig| {
        let swap_id = rig.cp().process(APP, "p").swap_id.unwrap();
        assert_eq!(rig.swap_store().verify(APP, "p").unwrap().swap_id, swap_id, "the snapshot is complete");
    });
    assert_eq!(status, ProcessStatus::Allocated, "the process serves on");
    // It waited, drained, for the decision, and heard at its registration that there was none.
    assert!(rig.cp().process_log(APP, "p").contains(SERVING_ON), "{}", rig.cp().process_log(APP, "p"));
}

#[test]
fn control_plane_killed_after_the_confirmation_before_swapped_out_is_recorded() {
    let (rig, _, status) = kill_control_plane_during_swap_out("cp-kill-confirmed", "confirmed", false, |_| {});
    assert_eq!(status, ProcessStatus::Allocated, "the process serves on");
    // It waited, drained, for the decision, and heard at its registration that there was none.
    assert!(rig.cp().process_log(APP, "p").contains(SERVING_ON), "{}", rig.cp().process_log(APP, "p"));
}

#[test]
fn control_plane_killed_after_swapped_out_is_recorded_before_the_commit() {
    let (rig, _, status) = kill_control_plane_during_swap_out("cp-kill-recorded", "recorded", false, |_| {});
    assert_eq!(status, ProcessStatus::SwappedOut, "the recorded swap stands");
    assert!(rig.cp().process_log(APP, "p").contains(RECORDED), "{}", rig.cp().process_log(APP, "p"));
    // It was swapped in by the invocations that checked it.
    assert_eq!(rig.cp().process(APP, "p").status, ProcessStatus::Allocated);
}

#[test]
fn process_killed_while_writing_its_snapshot_fails_and_keeps_the_previous_snapshot() {
    let rig = Rig::start("proc-kill-writing", "state-written:3000");
    let cp = rig.cp();
    let mut held = with_state(cp, "p");
    // A first swap leaves a snapshot; the process swaps in and counts on.
    let swapped: ProcessRecord = cp.api.post(&routes::swap(APP, "p")).unwrap();
    let first = swapped.swap_id.clone().unwrap();
    assert_intact(cp, "p", &mut held);
    let pid = cp.process(APP, "p").pid.unwrap();
    let before = pauses(&cp.process_log(APP, "p"), "state-written");
    let swap = post_in_background(cp, routes::swap(APP, "p"));
    wait_for_pause("the process", || cp.process_log(APP, "p"), "state-written", before);
    kill9(pid);
    let error = swap.join().unwrap().unwrap_err();
    assert_eq!(error.status(), Some(503), "{error}");
    let record = cp.wait_status(APP, "p", ProcessStatus::Failure, WAIT);
    let reason = record.error.unwrap();
    assert!(reason.contains("while it swapped out") && reason.contains("was not completed"), "{reason}");
    // The snapshot in place is the first one, whole.
    assert_eq!(rig.swap_store().verify(APP, "p").unwrap().swap_id, first);
}

#[test]
fn process_killed_after_its_snapshot_is_in_place_is_swapped_out() {
    let rig = Rig::start("proc-kill-renamed", "renamed:3000");
    let cp = rig.cp();
    let mut held = with_state(cp, "p");
    let pid = cp.process(APP, "p").pid.unwrap();
    let swap = post_in_background(cp, routes::swap(APP, "p"));
    wait_text("the process", || cp.process_log(APP, "p"), &paused_at("renamed"));
    kill9(pid);
    let swapped = swap.join().unwrap().expect("the complete snapshot is the swap");
    assert_eq!(swapped.status, ProcessStatus::SwappedOut);
    assert!(swapped.error.is_none(), "{swapped:?}");
    assert_intact(cp, "p", &mut held);
}

/// Swaps process `p` out, then starts its swap-in and waits until the restoring process is
/// paused at the `restore` step; returns the restoring process's pid and the swap-in's answer.
fn start_paused_swap_in(cp: &ControlPlaneProcess) -> (u32, JoinHandle<Result<ProcessRecord, ApiCallError>>) {
    let _: ProcessRecord = cp.api.post(&routes::swap(APP, "p")).unwrap();
    let before = pauses(&cp.process_log(APP, "p"), "restore");
    let swap_in = post_in_background(cp, routes::swap_in(APP, "p"));
    wait_for_pause("the restoring process", || cp.process_log(APP, "p"), "restore", before);
    let record = cp.process(APP, "p");
    assert_eq!(record.status, ProcessStatus::SwappingIn);
    (record.pid.expect("the restoring process's pid"), swap_in)
}

#[test]
fn process_killed_mid_swap_in_stays_swapped_out_and_swaps_in_again() {
    let rig = Rig::start("proc-kill-swapin", "restore:2000");
    let cp = rig.cp();
    let mut held = with_state(cp, "p");
    let (pid, swap_in) = start_paused_swap_in(cp);
    kill9(pid);
    let error = swap_in.join().unwrap().unwrap_err();
    assert_eq!(error.status(), Some(503), "{error}");
    assert!(error.to_string().contains("stays SWAPPED_OUT"), "{error}");
    let record = cp.process(APP, "p");
    assert_eq!(record.status, ProcessStatus::SwappedOut);
    assert!(record.error.as_deref().is_some_and(|e| e.contains("swap-in failed")), "{record:?}");
    assert_intact(cp, "p", &mut held);
}

#[test]
fn control_plane_killed_mid_swap_in_finds_the_process_allocated() {
    let mut rig = Rig::start("cp-kill-swapin", "restore:2000");
    let mut held = with_state(rig.cp(), "p");
    let (_pid, swap_in) = start_paused_swap_in(rig.cp());
    rig.cp_mut().kill9();
    assert!(swap_in.join().unwrap().is_err());
    rig.cp_mut().restart();
    rig.cp().wait_status(APP, "p", ProcessStatus::Allocated, WAIT);
    assert_intact(rig.cp(), "p", &mut held);
}

#[test]
fn control_plane_and_process_killed_mid_swap_in_leave_it_swapped_out() {
    let mut rig = Rig::start("both-kill-swapin", "restore:2000");
    let mut held = with_state(rig.cp(), "p");
    let (pid, swap_in) = start_paused_swap_in(rig.cp());
    rig.cp_mut().kill9();
    kill9(pid);
    wait_gone(pid);
    assert!(swap_in.join().unwrap().is_err());
    rig.cp_mut().restart();
    let record = rig.cp().process(APP, "p");
    assert_eq!(record.status, ProcessStatus::SwappedOut, "{record:?}");
    assert!(record.error.as_deref().is_some_and(|e| e.contains("swap-in interrupted")), "{record:?}");
    assert_intact(rig.cp(), "p", &mut held);
}

#[test]
fn damaged_and_missing_snapshots_answer_alike_and_swap_in_after_repair() {
    let rig = Rig::start("bad-snapshot", "");
    let cp = rig.cp();
    let mut held = with_state(cp, "p");
    let _: ProcessRecord = cp.api.post(&routes::swap(APP, "p")).unwrap();
    let snapshot = rig.swap_store().folder(APP, "p").unwrap().join("snapshot");

    // One flipped byte in the middle of the 64 MiB value.
    let state = snapshot.join("state.bin");
    let mut bytes = std::fs::read(&state).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&state, &bytes).unwrap();
    let damaged = cp.api.post::<ProcessRecord>(&routes::swap_in(APP, "p")).unwrap_err();
    assert!(damaged.to_string().contains("CRC"), "the API says why: {damaged}");
    let record = cp.process(APP, "p");
    assert_eq!(record.status, ProcessStatus::SwappedOut);
    assert!(record.error.as_deref().is_some_and(|e| e.contains("damaged") && e.contains("CRC")), "{record:?}");
    // An invocation meets the same answer.
    let invoked = cp.invoke(APP, Some("p"), "counter", b"").unwrap_err();
    assert_eq!(invoked.status(), damaged.status(), "{invoked}");
    assert!(invoked.to_string().contains("CRC"), "{invoked}");

    // Repaired, then missing.
    bytes[at] ^= 0x01;
    std::fs::write(&state, &bytes).unwrap();
    let aside = snapshot.with_file_name("aside");
    std::fs::rename(&snapshot, &aside).unwrap();
    let missing = cp.api.post::<ProcessRecord>(&routes::swap_in(APP, "p")).unwrap_err();
    assert_eq!(missing.status(), damaged.status(), "one answer for both faults: {missing} / {damaged}");
    assert!(missing.to_string().contains("no complete snapshot"), "{missing}");
    let record = cp.process(APP, "p");
    assert_eq!(record.status, ProcessStatus::SwappedOut);
    assert!(record.error.as_deref().is_some_and(|e| e.contains("no complete snapshot")), "{record:?}");

    // Back in place: the swap-in works and the state is whole.
    std::fs::rename(&aside, &snapshot).unwrap();
    let back: ProcessRecord = cp.api.post(&routes::swap_in(APP, "p")).unwrap();
    assert_eq!(back.status, ProcessStatus::Allocated);
    assert!(back.error.is_none(), "{back:?}");
    assert_intact(cp, "p", &mut held);
}

#[test]
fn delete_of_an_unrestored_snapshot_needs_force() {
    let rig = Rig::start("delete-force", "");
    let cp = rig.cp();
    let mut held = with_state(cp, "p");
    let _: ProcessRecord = cp.api.post(&routes::swap(APP, "p")).unwrap();
    let folder = rig.swap_store().folder(APP, "p").unwrap();
    let refused = cp.api.delete::<serde_json::Value>(&routes::process(APP, "p")).unwrap_err();
    assert_eq!(refused.status(), Some(409), "{refused}");
    assert!(refused.to_string().contains("?force=true"), "{refused}");
    let cli = praas().arg("--control").arg(&cp.http).args(["process", "delete", APP, "p"]).output().unwrap();
    assert!(!cli.status.success() && String::from_utf8_lossy(&cli.stderr).contains("--force"), "{cli:?}");
    assert!(rig.swap_store().exists(APP, "p") && folder.exists(), "nothing deleted");
    assert_intact(cp, "p", &mut held);

    let _: ProcessRecord = cp.api.post(&routes::swap(APP, "p")).unwrap();
    let forced = praas().arg("--control").arg(&cp.http).args(["process", "delete", APP, "p", "--force"]).output();
    let forced = forced.unwrap();
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    assert_eq!(cp.api.get::<ProcessRecord>(&routes::process(APP, "p")).unwrap_err().status(), Some(404));
    assert!(!folder.exists(), "the swap data went with it");
}

/// A tmpfs mounted at a folder until dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs at {} (the test runs as root)", at.display());
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_swap_in_that_meets_a_full_disk_stays_swapped_out_and_swaps_in_once_there_is_room() {
    let rig = Rig::start("full-disk-swapin", "");
    let cp = rig.cp();
    let mut held = with_state(cp, "p");
    // Two state files of 800 KiB: more than the 1 MiB below.
    let content = "x".repeat(800 << 10);
    for name in ["a.txt", "b.txt"] {
        let written = cp.invoke(APP, Some("p"), "file_write", format!("{name} {content}").as_bytes()).unwrap();
        assert_eq!(written, b"written");
    }
    let _: ProcessRecord = cp.api.post(&routes::swap(APP, "p")).unwrap();
    // The process's folder, where swap-in restores its state files, has room for 1 MiB.
    let full = Tmpfs::mount(&rig.dir.join("processes").join(APP).join("p"), "1m");
    let error = cp.api.post::<ProcessRecord>(&routes::swap_in(APP, "p")).unwrap_err();
    assert_eq!(error.status(), Some(503), "{error}");
    assert!(error.to_string().contains("No space left on device"), "the process's own reason: {error}");
    let record = cp.process(APP, "p");
    assert_eq!(record.status, ProcessStatus::SwappedOut, "{record:?}");
    rig.swap_store().verify(APP, "p").expect("the snapshot is kept whole");
    drop(full);
    let back: ProcessRecord = cp.api.post(&routes::swap_in(APP, "p")).unwrap();
    assert_eq!(back.status, ProcessStatus::Allocated);
    for name in ["a.txt", "b.txt"] {
        assert_eq!(cp.invoke(APP, Some("p"), "file_read", name.as_bytes()).unwrap(), content.as_bytes());
    }
    assert_intact(cp, "p", &mut held);
}
