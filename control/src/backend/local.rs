//! The `local` backend: child OS processes of the control plane on this machine.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{Backend, BackendError, Exit, ExitHandler, Launch};

/// Child processes on this machine.
#[derive(Debug)]
pub struct LocalBackend {
    praas: PathBuf,
    next_cpu: AtomicUsize,
    /// A writable cgroup v2 folder with the memory controller, when the machine has one.
    cgroups: Option<PathBuf>,
}

/// The cgroup v2 folder processes can be placed in: `/sys/fs/cgroup/praas`, when the unified
/// hierarchy is mounted there, offers the memory controller, and lets us create the folder and
/// enable the controllers for its children.
fn cgroup_root() -> Option<PathBuf> {
    let root = PathBuf::from("/sys/fs/cgroup");
    let controllers = fs::read_to_string(root.join("cgroup.controllers")).ok()?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return None;
    }
    let ours = root.join("praas");
    fs::create_dir_all(&ours).ok()?;
    let enable = if controllers.split_whitespace().any(|c| c == "cpu") { "+memory +cpu" } else { "+memory" };
    fs::write(ours.join("cgroup.subtree_control"), enable).ok()?;
    Some(ours)
}

impl LocalBackend {
    /// A backend starting `praas` (the path of the praas binary).
    pub fn new(praas: PathBuf) -> Self {
        let cgroups = cgroup_root();
        match &cgroups {
            Some(root) => tracing::info!("memory limits by cgroup v2 under {}", root.display()),
            None => tracing::info!("no writable cgroup v2 memory controller: memory limits by RLIMIT_AS"),
        }
        Self { praas, next_cpu: AtomicUsize::new(0), cgroups }
    }

    /// Puts `pid` in a cgroup of its own with `memory.max` (and `cpu.max` for `vcpus`).
    fn confine(&self, launch: &Launch, pid: u32) -> Result<(), BackendError> {
        let Some(root) = &self.cgroups else { return Ok(()) };
        let fail =
            |what: String, e: std::io::Error| launch.error_from(format!("cannot apply its resources: {what}"), e);
        let group = root.join(format!("{}.{}", launch.app, launch.process));
        fs::create_dir_all(&group).map_err(|e| fail(group.display().to_string(), e))?;
        let memory = launch.resources.memory_mb.saturating_mul(1 << 20).to_string();
        fs::write(group.join("memory.max"), memory).map_err(|e| fail("memory.max".into(), e))?;
        // vcpus whole CPUs per 100 ms period; absent without the cpu controller.
        let _ = fs::write(group.join("cpu.max"), format!("{} 100000", u64::from(launch.resources.vcpus) * 100_000));
        fs::write(group.join("cgroup.procs"), pid.to_string()).map_err(|e| fail("cgroup.procs".into(), e))
    }

    fn cpus_for(&self, vcpus: u32) -> String {
        let available = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let first = self.next_cpu.fetch_add(vcpus as usize, Ordering::Relaxed);
        (0..vcpus as usize).map(|i| ((first + i) % available).to_string()).collect::<Vec<_>>().join(",")
    }
}

/// Whether an OS process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().map(|rest| !rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn start(&self, launch: &Launch, on_exit: ExitHandler) -> Result<String, BackendError> {
        let (log, log_err) = launch.prepare()?;
        let mut command = Command::new(&self.praas);
        command
            .args(launch.serve_args("127.0.0.1:0", launch.resources.vcpus))
            .args(["--cpus", &self.cpus_for(launch.resources.vcpus.max(1))])
            .current_dir(&launch.files_dir)
            .env("PRAAS_SECRET", &launch.secret)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if self.cgroups.is_none() {
            command.args(["--memory-mb", &launch.resources.memory_mb.to_string()]);
        }
        let mut child = command.spawn().map_err(|e| launch.error_from(self.praas.display().to_string(), e))?;
        let pid = child.id();
        if let Err(e) = self.confine(launch, pid) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        std::thread::Builder::new()
            .name(format!("praas-exit-{pid}"))
            .spawn(move || {
                let description = match child.wait() {
                    Ok(status) => {
                        use std::os::unix::process::ExitStatusExt;
                        match (status.code(), status.signal()) {
                            (Some(code), _) => format!("exit status {code}"),
                            (None, Some(signal)) => format!("killed by signal {signal}"),
                            _ => status.to_string(),
                        }
                    }
                    Err(e) => format!("lost: {e}"),
                };
                let success = description == "exit status 0";
                on_exit(Exit { handle: pid.to_string(), description, success });
            })
            .map_err(|e| launch.error_from("", e))?;
        Ok(pid.to_string())
    }

    fn signal(&self, handle: &str, force: bool) {
        let signal = if force { libc::SIGKILL } else { libc::SIGTERM };
        let Some(pid) = handle.parse::<u32>().ok().and_then(|pid| libc::pid_t::try_from(pid).ok()) else { return };
        // SAFETY: kill(2) has no memory-safety preconditions; a stale pid at worst signals nothing
        // (ESRCH) — the exit watchers make reuse within this window vanishingly unlikely.
        unsafe { libc::kill(pid, signal) };
    }

    fn alive(&self, handle: &str) -> bool {
        handle.parse().is_ok_and(alive)
    }

    fn capacity(&self, _slurm: Option<&crate::model::SlurmOptions>) -> Result<crate::model::Capacity, BackendError> {
        super::this_node().map_err(|e| BackendError::new("", "this node's size").with_source(e))
    }

    fn adopt(&self, handle: &str, on_exit: ExitHandler) {
        let Ok(pid) = handle.parse::<u32>() else {
            return on_exit(Exit { handle: handle.into(), description: "not a process id".into(), success: false });
        };
        let spawned = std::thread::Builder::new().name(format!("praas-adopt-{pid}")).spawn(move || {
            while alive(pid) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let description = "exited (not a child of this control plane)".into();
            on_exit(Exit { handle: pid.to_string(), description, success: false });
        });
        if let Err(e) = spawned {
            tracing::error!(pid, "cannot watch an adopted process: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_proc() {
        assert!(alive(std::process::id()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!alive(pid));
    }

    #[test]
    fn cpus_rotate_over_the_machine() {
        let backend = LocalBackend::new("praas".into());
        let n = std::thread::available_parallelism().unwrap().get();
        let first = backend.cpus_for(1);
        assert_eq!(first, "0");
        let two = backend.cpus_for(2);
        assert_eq!(two, format!("{},{}", 1 % n, 2 % n));
    }
}
