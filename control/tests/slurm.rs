//! The control plane on the Slurm backend, against a real Slurm cluster started by
//! `scripts/slurm-cluster.sh` in a temporary folder on free ports (stopped by a guard): the
//! lifecycle (create, invoke, messages, swap out and in, stop, delete), a swap from one node to
//! the other keeping its state, and `scancel` turning a process into FAILURE, in job and pool mode.
//!
//! One test function: the cluster and `SLURM_CONF` are shared by its scenarios, which run one
//! after the other.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use praas_control::model::{ProcessRecord, ProcessStatus};
use praas_dataplane::Client;
use support::{temp_dir, ControlPlaneProcess};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-cluster.sh")
}

/// A Slurm cluster of this test, stopped when dropped.
struct Cluster {
    dir: PathBuf,
}

/// A base port with the two ports after it free too, below the kernel's ephemeral range (where
/// the thousands of client connections of other tests, and their TIME_WAIT, never land).
fn free_port_base() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (ephemeral_low.saturating_sub(12_000).max(1024), ephemeral_low.saturating_sub(3));
    // A different start per test process, stepping by a prime: no two runs try the same ports first.
    let span = u32::from(high - low);
    let mut offset = std::process::id() % span;
    for _ in 0..2000 {
        let first = low + u16::try_from(offset).unwrap_or(0);
        if (0..3).all(|i| TcpListener::bind(("127.0.0.1", first + i)).is_ok()) {
            return first;
        }
        offset = (offset + 7919) % span;
    }
    panic!("no three free consecutive ports between {low} and {high}");
}

impl Cluster {
    fn start() -> Self {
        let dir = temp_dir("slurm-cluster");
        let port = free_port_base();
        let started = Instant::now();
        let out = Command::new(script())
            .args(["start", "--dir"])
            .arg(&dir)
            .args(["--port-base", &port.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let cluster = Self { dir };
        assert!(out.status.success(), "slurm-cluster.sh start failed");
        let conf = String::from_utf8(out.stdout).unwrap();
        let conf = conf.trim().strip_prefix("export SLURM_CONF=").expect("an export line").to_owned();
        // The only test of this binary: nothing else reads the environment concurrently.
        std::env::set_var("SLURM_CONF", conf);
        eprintln!("slurm cluster up in {:?}", started.elapsed());
        cluster
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let started = Instant::now();
        let _ = Command::new(script()).arg("stop").arg("--dir").arg(&self.dir).status();
        eprintln!("slurm cluster stopped in {:?}", started.elapsed());
    }
}

fn slurm(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn put(cp: &ControlPlaneProcess, app: &str, name: &str) -> ProcessRecord {
    let body = serde_json::json!({ "resources": { "vcpus": 1, "memory_mb": 512 } });
    cp.api.put(&format!("/apps/{app}/processes/{name}"), &body).unwrap()
}

fn control_plane(mode: &str) -> ControlPlaneProcess {
    let cp = ControlPlaneProcess::start(
        &format!("slurm-{mode}"),
        &["--backend", "slurm", "--slurm-mode", mode, "--slurm-pool-nodes", "2", "--process-rdma", "auto"],
    );
    cp.create_example_app("hpc");
    cp
}

/// Whether a Slurm job or step still exists.
fn in_queue(job: &str) -> bool {
    let jobs = slurm("squeue", &["-h", "-o", "%i"]) + &slurm("squeue", &["-h", "-s", "-o", "%i"]);
    jobs.lines().any(|l| l.trim() == job || l.trim().starts_with(&format!("{job}.")))
}

fn wait_gone(job: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_queue(job) {
        assert!(Instant::now() < deadline, "Slurm job {job} still there");
        thread::sleep(Duration::from_millis(50));
    }
}

fn lifecycle(mode: &str) {
    let cp = control_plane(mode);
    let api = &cp.api;
    let p1 = put(&cp, "hpc", "p1");
    assert_eq!(p1.status, ProcessStatus::Allocated);
    let node = p1.node.clone().expect("the node it runs on");
    assert!(node == "n1" || node == "n2", "{node}");
    let job = p1.job.clone().expect("its Slurm job or step");
    assert_eq!(job.contains('.'), mode == "pool", "job mode: a job id; pool mode: a step id ({job})");
    let addr = p1.data_addr.clone().unwrap();
    assert!(!addr.starts_with("0.0.0.0"), "a routable data-plane address: {addr}");
    assert_eq!(Client::connect(addr.as_str()).unwrap().invoke("echo", b"direct").unwrap(), b"direct");
    assert_eq!(cp.invoke("hpc", Some("p1"), "counter", b"").unwrap(), b"1");
    // `--process-rdma auto` reaches the process through srun: it serves RDMA where the node has
    // a device (and registers the address), else TCP only and says why in its log (which srun
    // forwards a little later).
    let expected = if p1.rdma_addr.is_some() { "rdma listening on rdma://" } else { "rdma: none (" };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(cp.data_dir.join("logs/hpc.p1.log")).unwrap_or_default();
        if log.contains(expected) {
            break;
        }
        assert!(Instant::now() < deadline, "no {expected:?} in the log of p1 ({:?}): {log}", p1.rdma_addr);
        thread::sleep(Duration::from_millis(50));
    }

    // Swap out releases the Slurm resources; swap in restores the state.
    let swapped: ProcessRecord = api.post("/apps/hpc/processes/p1/swap").unwrap();
    assert_eq!(swapped.status, ProcessStatus::SwappedOut);
    wait_gone(&job);
    let back: ProcessRecord = api.post("/apps/hpc/processes/p1/swapin").unwrap();
    assert_eq!(back.status, ProcessStatus::Allocated);
    assert_ne!(back.job, Some(job), "a new job or step");
    assert_eq!(cp.invoke("hpc", Some("p1"), "counter", b"").unwrap(), b"2");

    // Messages between processes on the cluster (three processes span both nodes).
    for p in ["p2", "p3"] {
        put(&cp, "hpc", p);
    }
    for (from, to) in [("p1", "p2"), ("p2", "p3"), ("p3", "p1")] {
        let put = cp.invoke("hpc", Some(from), "msg_put", format!("{to} ring hello from {from}").as_bytes());
        assert_eq!(put.unwrap(), b"stored");
        let got = cp.invoke("hpc", Some(to), "msg_get", format!("{from} ring 5000").as_bytes()).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), format!("{from} hello from {from}"));
    }

    // Stop cancels the job or step; delete.
    for p in ["p1", "p2", "p3"] {
        let job = cp.process("hpc", p).job.unwrap();
        let closed: ProcessRecord = api.post(&format!("/apps/hpc/processes/{p}/stop")).unwrap();
        assert_eq!(closed.status, ProcessStatus::Closed, "{closed:?}");
        wait_gone(&job);
        let _: serde_json::Value = api.delete(&format!("/apps/hpc/processes/{p}")).unwrap();
    }
    eprintln!("{mode} mode: lifecycle passed");
}

/// Occupies every CPU of `node` (inside the pool in pool mode) until killed.
fn block_node(node: &str, pool: Option<&str>) -> Child {
    let mut command = Command::new("srun");
    command.args(["-N1", "-n1", "-c2", "-w", node, "--quiet"]);
    if let Some(pool) = pool {
        command.arg(format!("--jobid={pool}")).arg("--exact");
    }
    command.args(["sleep", "300"]);
    // A step or job name to find it by is not needed: the child is cancelled through srun.
    let child = command.stdout(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !slurm("squeue", &["-h", "-s", "-o", "%j %N"]).lines().any(|l| l.starts_with("sleep ") && l.ends_with(node)) {
        assert!(Instant::now() < deadline, "the blocker never ran on {node}");
        thread::sleep(Duration::from_millis(50));
    }
    child
}

fn pool_job() -> String {
    slurm("squeue", &["-h", "-t", "R", "-o", "%i %j"])
        .lines()
        .find_map(|l| l.split_once(' ').filter(|(_, name)| name.ends_with("-pool")).map(|(id, _)| id.to_owned()))
        .expect("the pool's allocation")
}

fn swap_to_the_other_node(mode: &str) {
    let cp = control_plane(mode);
    let first = put(&cp, "hpc", "mover");
    let from = first.node.clone().unwrap();
    assert_eq!(cp.invoke("hpc", Some("mover"), "counter", b"").unwrap(), b"1");
    assert_eq!(cp.invoke("hpc", Some("mover"), "file_write", b"notes.txt from one node").unwrap(), b"written");
    let _: ProcessRecord = cp.api.post("/apps/hpc/processes/mover/swap").unwrap();
    wait_gone(first.job.as_deref().unwrap());
    let pool = (mode == "pool").then(pool_job);
    let mut blocker = block_node(&from, pool.as_deref());
    let back: ProcessRecord = cp.api.post("/apps/hpc/processes/mover/swapin").unwrap();
    let to = back.node.clone().unwrap();
    let _ = blocker.kill();
    let _ = blocker.wait();
    assert_ne!(to, from, "swapped in on the other node");
    assert_eq!(cp.invoke("hpc", Some("mover"), "counter", b"").unwrap(), b"2");
    assert_eq!(cp.invoke("hpc", Some("mover"), "file_read", b"notes.txt").unwrap(), b"from one node");
    let _: ProcessRecord = cp.api.post("/apps/hpc/processes/mover/stop").unwrap();
    eprintln!("{mode} mode: swapped out on {from}, in on {to}, state kept");
}

fn scancel_gives_failure(mode: &str) {
    let cp = control_plane(mode);
    let p = put(&cp, "hpc", "victim");
    let job = p.job.clone().unwrap();
    let http = cp.http.clone();
    let pending = thread::spawn(move || {
        let api = praas_control::cli::Api::new(&http, Duration::from_secs(60));
        let started = Instant::now();
        (api.invoke("hpc", "sleep", Some("victim"), b"20000"), started.elapsed())
    });
    praas_testkit::wait_until(Duration::from_secs(20), "the sleep to be in flight on the process", || {
        cp.process("hpc", "victim").metrics.in_flight == 1
    });
    let cancelled = Instant::now();
    slurm("scancel", &[&job]);
    let failed = cp.wait_status("hpc", "victim", ProcessStatus::Failure, Duration::from_secs(2));
    let took = cancelled.elapsed();
    let error = failed.error.unwrap();
    if mode == "job" {
        assert!(error.contains("CANCELLED"), "the state Slurm reports: {error}");
    }
    let (result, waited) = pending.join().unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(waited < Duration::from_secs(5), "the pending invocation failed at once");
    let _: serde_json::Value = cp.api.delete("/apps/hpc/processes/victim").unwrap();
    eprintln!("{mode} mode: scancel {job} -> FAILURE in {took:?} ({error})");
}

/// A control plane killed with SIGKILL and restarted adopts its running process (pool mode: and
/// its pool); stop still cancels it; SIGTERM makes the control plane release its pool.
fn restart_adopts_and_sigterm_releases(mode: &str) {
    let mut cp = control_plane(mode);
    let p = put(&cp, "hpc", "stay");
    assert_eq!(cp.invoke("hpc", Some("stay"), "counter", b"").unwrap(), b"1");
    let pool = (mode == "pool").then(pool_job);
    cp.kill9();
    cp.restart();
    let back = cp.wait_status("hpc", "stay", ProcessStatus::Allocated, Duration::from_secs(10));
    assert_eq!((back.job.clone(), back.node.clone()), (p.job.clone(), p.node.clone()), "the same job, adopted");
    if let Some(pool) = &pool {
        assert_eq!(&pool_job(), pool, "the restarted control plane reuses its pool");
    }
    assert_eq!(cp.invoke("hpc", Some("stay"), "counter", b"").unwrap(), b"2");
    // The recovered record says ALLOCATED before the process re-registered; metrics only come
    // over a registered link: wait for them (a re-registration during the stop below would
    // turn CLOSING back into ALLOCATED).
    let deadline = Instant::now() + Duration::from_secs(10);
    while cp.process("hpc", "stay").metrics.invocations < 2 {
        assert!(Instant::now() < deadline, "the process never re-registered");
        thread::sleep(Duration::from_millis(20));
    }
    let closed: ProcessRecord = cp.api.post("/apps/hpc/processes/stay/stop").unwrap();
    assert_eq!(closed.status, ProcessStatus::Closed);
    wait_gone(p.job.as_deref().unwrap());
    slurm("kill", &["-TERM", &cp.child.id().to_string()]);
    let status = cp.child.wait().unwrap();
    assert!(status.success(), "SIGTERM: a clean exit ({status})");
    if let Some(pool) = &pool {
        wait_gone(pool);
    }
    eprintln!("{mode} mode: restart adopted the running process; SIGTERM exited cleanly");
}

/// Job mode: an application's partition and time limit go to its processes' jobs.
fn application_settings_reach_the_job(mode: &str) {
    if mode != "job" {
        return;
    }
    let cp = control_plane(mode);
    let manifest = cp.data_dir.join("manifests/hpc/functions.toml");
    let options = praas_control::model::SlurmOptions {
        partition: Some("debug".into()),
        time_limit: Some("7".into()),
        ..Default::default()
    };
    let app =
        praas_control::cli::app_create_with(&cp.api, "tagged", &manifest, None, Some(options.clone()), true).unwrap();
    assert_eq!(app.slurm, Some(options));
    let p = put(&cp, "tagged", "t");
    let job = p.job.unwrap();
    let shown = slurm("scontrol", &["-o", "show", "job", &job]);
    assert!(shown.contains("TimeLimit=00:07:00") && shown.contains("Partition=debug"), "{shown}");
    let _: ProcessRecord = cp.api.post("/apps/tagged/processes/t/stop").unwrap();
    eprintln!("{mode} mode: the application's partition and time limit reached job {job}");
}

/// Cancels the pools of killed control planes (a SIGKILL skips their release).
fn release_pools() {
    for line in slurm("squeue", &["-h", "-o", "%i %j"]).lines() {
        if let Some((id, _)) = line.split_once(' ').filter(|(_, name)| name.ends_with("-pool")) {
            slurm("scancel", &[id]);
            wait_gone(id);
        }
    }
}

#[test]
fn slurm_backend_in_job_and_pool_mode() {
    let _cluster = Cluster::start();
    for mode in ["job", "pool"] {
        for scenario in [
            lifecycle,
            swap_to_the_other_node,
            scancel_gives_failure,
            restart_adopts_and_sigterm_releases,
            application_settings_reach_the_job,
        ] {
            scenario(mode);
            release_pools();
        }
    }
}
