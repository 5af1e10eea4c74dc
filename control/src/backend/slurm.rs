//! The `slurm` backend: cloud processes on the nodes of a Slurm cluster, placed by Slurm.
//!
//! Every process is started by an `srun` child of the control plane (which runs on a login node):
//!
//! - job mode: `srun --job-name=HANDLE --cpus-per-task=VCPUS --mem=MB [-p] [-A] [-t] [-C] ...`
//!   makes one Slurm job per process (a scheduling cycle each);
//! - pool mode: the backend holds a standing allocation of N nodes (`salloc --no-shell -N N
//!   --exclusive`, the lease idea of RDMA FaaS systems) and starts every process as a job step in
//!   it (`srun --jobid=POOL --exact ...`), which takes tens of milliseconds.
//!
//! The task is `sh -c 'echo "$SLURM_JOB_ID.$SLURM_STEP_ID $SLURMD_NODENAME" >PLACEMENT; exec praas
//! process serve --listen 0.0.0.0:0 ...'`: the placement file (beside the process's log, on the
//! shared filesystem) tells the control plane the node and the job or step before the process
//! registers; the process announces a routable data-plane address of its node. The application's
//! secret travels in the environment (`srun` exports it), never on a command line.
//!
//! An ending `srun` is the exit signal: a process that swapped out exits with status 0 and its job
//! or step ends, releasing its resources; a cancelled, pre-empted, timed-out or crashed job or step
//! ends `srun` with an error, and the exit description carries the state Slurm reports
//! (`scontrol show job`). Stopping cancels the job (job mode) or the step (pool mode).

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use super::{Backend, BackendError, Exit, ExitHandler, Launch, Placement};
use crate::model::{Capacity, SlurmOptions};

/// Why a Slurm command (`sinfo`, `squeue`, `salloc`, `scancel`, ...) failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SlurmCommandError {
    /// The command could not be run at all.
    #[error("cannot run {program}: {source}")]
    Run {
        /// The program as run (`timeout sinfo`, `salloc`).
        program: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The command gave no answer in time (Slurm's clients retry for minutes without slurmctld).
    #[error("{command}: no answer within 15 s (is slurmctld up?)")]
    NoAnswer {
        /// The command line.
        command: String,
    },
    /// The program is not installed.
    #[error("cannot run {program}: not found (are the Slurm client tools installed?)")]
    NotInstalled {
        /// The program.
        program: String,
    },
    /// The command ran and failed.
    #[error("{command}: {status} {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

/// Why the Slurm backend could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SlurmError {
    /// The cluster does not answer (`sinfo` failed).
    #[error("the Slurm backend cannot reach its cluster: {0}")]
    Unreachable(#[source] SlurmCommandError),
    /// The pool's allocation was not granted (`salloc` failed).
    #[error(transparent)]
    Pool(SlurmCommandError),
}

/// How processes get their Slurm resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlurmMode {
    /// One Slurm job per process.
    Job,
    /// Job steps inside a standing allocation of nodes.
    Pool,
}

/// A Slurm mode [`SlurmMode`] does not know (the name given).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown Slurm mode {0:?} (job or pool)")]
pub struct UnknownSlurmMode(pub String);

impl std::str::FromStr for SlurmMode {
    type Err = UnknownSlurmMode;
    fn from_str(s: &str) -> Result<Self, UnknownSlurmMode> {
        match s {
            "job" => Ok(Self::Job),
            "pool" => Ok(Self::Pool),
            other => Err(UnknownSlurmMode(other.to_owned())),
        }
    }
}

/// Settings of the Slurm backend (from the control plane's configuration).
#[derive(Debug, Clone)]
pub struct SlurmConfig {
    /// Job or pool mode.
    pub mode: SlurmMode,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--time` of each job (job mode) or of the pool's allocation (pool mode).
    pub time_limit: Option<String>,
    /// `--constraint`.
    pub constraint: Option<String>,
    /// Nodes of the pool's allocation (pool mode).
    pub pool_nodes: u32,
    /// Job name of the pool (pool mode): a running job of this name is reused (a control plane
    /// restarted after a crash finds its pool and the processes in it); default: unique per run.
    pub pool_name: Option<String>,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        Self {
            mode: SlurmMode::Job,
            partition: None,
            account: None,
            time_limit: None,
            constraint: None,
            pool_nodes: 1,
            pool_name: None,
        }
    }
}

impl SlurmConfig {
    /// `-p`, `-A`, `-t`, `-C` as configured, each the application's setting where it has one.
    fn placement_args(&self, app: Option<&SlurmOptions>) -> Vec<String> {
        let pick = |ours: &Option<String>, theirs: Option<&Option<String>>| {
            theirs.and_then(Option::as_ref).or(ours.as_ref()).cloned()
        };
        let mut args = Vec::new();
        for (flag, value) in [
            ("--partition", pick(&self.partition, app.map(|a| &a.partition))),
            ("--account", pick(&self.account, app.map(|a| &a.account))),
            ("--time", pick(&self.time_limit, app.map(|a| &a.time_limit))),
            ("--constraint", pick(&self.constraint, app.map(|a| &a.constraint))),
        ] {
            if let Some(value) = value {
                args.push(format!("{flag}={value}"));
            }
        }
        args
    }
}

/// A process this backend started and has not seen end.
#[derive(Debug)]
struct Running {
    /// Where its task writes `JOB.STEP NODE`.
    placement: PathBuf,
    /// The `srun` child (killed when the process is cancelled before its step exists).
    srun: u32,
}

/// Processes on a Slurm cluster.
#[derive(Debug)]
pub struct SlurmBackend {
    praas: PathBuf,
    config: SlurmConfig,
    /// The pool's job id (pool mode); taken when the pool is released.
    pool: Mutex<Option<String>>,
    /// Prefix of this backend's handles (unique per control-plane run).
    prefix: String,
    next: AtomicU64,
    running: Arc<Mutex<HashMap<String, Running>>>,
}

/// Runs a Slurm command and returns its standard output, or why it failed. Bounded by
/// `timeout`: Slurm's clients retry for a minute and more when slurmctld is away.
fn slurm_command(program: &str, args: &[String]) -> Result<String, SlurmCommandError> {
    let out = Command::new("timeout")
        .args(["--kill-after=2", "15", program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SlurmCommandError::Run { program: format!("timeout {program}"), source })?;
    let command = || format!("{program} {}", args.join(" "));
    if out.status.code() == Some(124) {
        return Err(SlurmCommandError::NoAnswer { command: command() });
    }
    if out.status.code() == Some(127) {
        return Err(SlurmCommandError::NotInstalled { program: program.to_owned() });
    }
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(SlurmCommandError::Failed { command: command(), status: out.status, stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads a placement file: `JOB.STEP NODE`.
fn read_placement(path: &PathBuf) -> Option<(String, String)> {
    let text = fs::read_to_string(path).ok()?;
    let mut words = text.split_whitespace();
    Some((words.next()?.to_owned(), words.next()?.to_owned()))
}

/// The pool's job name for a control plane's data folder: `praas-HASH-pool`, the same after a
/// restart, different for two control planes.
pub fn default_pool_name(data_dir: &std::path::Path) -> String {
    let path = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    // FNV-1a: stable across runs and builds (unlike std's hasher).
    let hash = path
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("praas-{:012x}-pool", hash & 0xffff_ffff_ffff)
}

/// The state Slurm reports for a job: `RUNNING`, `CANCELLED`, `TIMEOUT`, `PREEMPTED`, ...
pub fn job_state(job: &str) -> Option<String> {
    let out = slurm_command("scontrol", &["-o".into(), "show".into(), "job".into(), job.into()]).ok()?;
    out.split_whitespace().find_map(|w| w.strip_prefix("JobState=")).map(str::to_owned)
}

/// The state of a job that just ended, once Slurm settled it (up to 1 s): `CANCELLED`,
/// `TIMEOUT`, `PREEMPTED`, `NODE_FAIL`, `FAILED`, `COMPLETED`.
fn final_job_state(job: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let state = job_state(job).unwrap_or_else(|| "gone".into());
        if !matches!(state.as_str(), "RUNNING" | "COMPLETING" | "PENDING" | "CONFIGURING")
            || std::time::Instant::now() >= deadline
        {
            return state;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl SlurmBackend {
    /// A backend starting `praas` (its path on the nodes: the shared filesystem or the same
    /// install everywhere). In pool mode this waits until the pool's allocation is granted.
    pub fn new(praas: PathBuf, config: SlurmConfig) -> Result<Self, SlurmError> {
        // A clear refusal at start beats a FAILURE at the first process.
        slurm_command("sinfo", &["-h".into(), "-o".into(), "%P".into()]).map_err(SlurmError::Unreachable)?;
        let stamp = praas_dataplane::state::now_ns() % 1_000_000_000;
        let prefix = format!("praas-{}-{stamp}", std::process::id());
        let pool = match config.mode {
            SlurmMode::Job => None,
            SlurmMode::Pool => {
                let name = config.pool_name.clone().unwrap_or_else(|| format!("{prefix}-pool"));
                match Self::running_job(&name) {
                    Some(job) => {
                        tracing::info!(job, name, "reusing the running Slurm pool");
                        Some(job)
                    }
                    None => Some(Self::allocate_pool(&config, &name).map_err(SlurmError::Pool)?),
                }
            }
        };
        Ok(Self { praas, config, pool: Mutex::new(pool), prefix, next: AtomicU64::new(0), running: Arc::default() })
    }

    /// The id of a running job named `name`.
    fn running_job(name: &str) -> Option<String> {
        let args = ["-h", "-t", "RUNNING", "-o", "%i", "--name", name].map(String::from);
        slurm_command("squeue", &args).ok()?.split_whitespace().next().map(str::to_owned)
    }

    /// `salloc --no-shell`: a standing allocation of whole nodes; returns its job id.
    fn allocate_pool(config: &SlurmConfig, name: &str) -> Result<String, SlurmCommandError> {
        let mut args = vec![
            "--no-shell".to_owned(),
            format!("--nodes={}", config.pool_nodes.max(1)),
            "--exclusive".into(),
            format!("--job-name={name}"),
        ];
        args.extend(config.placement_args(None));
        let out = Command::new("salloc")
            .args(&args)
            .env_remove("SLURM_JOB_ID")
            .env_remove("SLURM_JOBID")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| SlurmCommandError::Run { program: "salloc".into(), source })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let job = stderr
            .lines()
            .find_map(|line| line.split("Granted job allocation ").nth(1))
            .map(|id| id.trim().to_owned())
            .ok_or_else(|| SlurmCommandError::Failed {
                command: format!("salloc {}", args.join(" ")),
                status: out.status,
                stderr: stderr.trim().to_owned(),
            })?;
        tracing::info!(job, nodes = config.pool_nodes, "Slurm pool allocated");
        Ok(job)
    }

    /// The pool's job id (pool mode, until released).
    pub fn pool_job(&self) -> Option<String> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Cancels the pool (and every process in it).
    fn release_pool(&self) {
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(pool) = pool {
            match slurm_command("scancel", std::slice::from_ref(&pool)) {
                Ok(_) => tracing::info!(job = pool, "Slurm pool released"),
                Err(e) => tracing::warn!("cannot release the Slurm pool {pool}: {e}"),
            }
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job or step to cancel for a started process.
    fn target(&self, job_step: &str) -> String {
        match self.config.mode {
            // The whole job: its step and the allocation go together.
            SlurmMode::Job => job_step.split('.').next().unwrap_or(job_step).to_owned(),
            SlurmMode::Pool => job_step.to_owned(),
        }
    }

    /// Steps of this cluster as `(step id, name)`.
    fn steps() -> Option<Vec<(String, String)>> {
        let out = slurm_command("squeue", &["-h".into(), "-s".into(), "-o".into(), "%i %j".into()]).ok()?;
        Some(
            out.lines()
                .filter_map(|l| {
                    let (id, name) = l.trim().split_once(' ')?;
                    Some((id.to_owned(), name.trim().to_owned()))
                })
                .collect(),
        )
    }
}

impl Drop for SlurmBackend {
    fn drop(&mut self) {
        self.release_pool();
    }
}

/// The largest CPU count and memory (MiB) over the lines `CPUS MEMORY` that `sinfo -N -o "%c %m"`
/// prints (memory may carry a `+` when nodes differ).
fn largest_node(sinfo: &str) -> Option<(u32, u64)> {
    sinfo
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let cpus = words.next()?.trim_end_matches('+').parse::<u32>().ok()?;
            let memory = words.next()?.trim_end_matches('+').parse::<u64>().ok()?;
            Some((cpus, memory))
        })
        .reduce(|(c1, m1), (c2, m2)| (c1.max(c2), m1.max(m2)))
}

impl Backend for SlurmBackend {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn capacity(&self, slurm: Option<&crate::model::SlurmOptions>) -> Result<Capacity, BackendError> {
        let partition = slurm.and_then(|s| s.partition.clone()).or_else(|| self.config.partition.clone());
        let mut args: Vec<String> = ["-h", "-N", "-o", "%c %m"].map(String::from).into();
        if let Some(partition) = &partition {
            args.extend(["-p".into(), partition.clone()]);
        }
        let out = slurm_command("sinfo", &args).map_err(|e| BackendError::new("", "").with_source(e))?;
        let (cpus, memory_mb) = largest_node(&out).ok_or_else(|| {
            let partition = partition.map(|p| format!(" in {p}")).unwrap_or_default();
            BackendError::new("", format!("sinfo lists no node{partition}"))
        })?;
        Ok(Capacity { cpus, memory_mb, what: "the largest node of the Slurm partition" })
    }

    fn start(&self, launch: &Launch, on_exit: ExitHandler) -> Result<String, BackendError> {
        let (log, log_err) = launch.prepare()?;
        let logs = launch.log.parent().map(PathBuf::from).unwrap_or_default();
        let handle = format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed));
        let placement = logs.join(format!("{handle}.slurm"));
        let resources = launch.resources;
        let mut command = Command::new("srun");
        command
            .arg(format!("--job-name={handle}"))
            .args(["--nodes=1", "--ntasks=1", "--kill-on-bad-exit=1", "--input=none"])
            .arg(format!("--cpus-per-task={}", resources.vcpus.max(1)))
            .arg(format!("--mem={}", resources.memory_mb))
            .arg("--chdir")
            .arg(&launch.files_dir);
        match (self.config.mode, self.pool_job()) {
            (SlurmMode::Pool, Some(pool)) => {
                command.arg(format!("--jobid={pool}")).arg("--exact");
            }
            (SlurmMode::Pool, None) => return Err(launch.error("the Slurm pool was released")),
            (SlurmMode::Job, _) => {
                command
                    .args(self.config.placement_args(launch.slurm.as_ref()))
                    .env_remove("SLURM_JOB_ID")
                    .env_remove("SLURM_JOBID");
            }
        }
        command
            .args([
                "sh",
                "-c",
                r#"echo "$SLURM_JOB_ID.$SLURM_STEP_ID $SLURMD_NODENAME" >"$0.tmp" && mv "$0.tmp" "$0"; exec "$@""#,
            ])
            .arg(&placement)
            .arg(&self.praas)
            .args(launch.serve_args("0.0.0.0:0", resources.vcpus))
            .env("PRAAS_SECRET", &launch.secret)
            // The login node's advertised name is not the compute node's.
            .env_remove("PRAAS_ADVERTISE_HOST")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let mut child = command.spawn().map_err(|e| launch.error_from("cannot run srun", e))?;
        self.running().insert(handle.clone(), Running { placement: placement.clone(), srun: child.id() });
        let mode = self.config.mode;
        let watched = handle.clone();
        let running = Arc::clone(&self.running);
        std::thread::Builder::new()
            .name(format!("praas-srun-{}", launch.process))
            .spawn(move || {
                let status = child.wait();
                let step = read_placement(&placement).map(|(step, _)| step);
                let _ = fs::remove_file(&placement);
                running.lock().unwrap_or_else(|p| p.into_inner()).remove(&watched);
                let srun = match &status {
                    Ok(s) => match s.code() {
                        Some(code) => format!("srun exit status {code}"),
                        None => format!("srun {s}"),
                    },
                    Err(e) => format!("srun lost: {e}"),
                };
                let success = status.as_ref().is_ok_and(|s| s.success());
                let description = match (&step, mode) {
                    (None, _) => format!("{srun}; its Slurm task never started"),
                    (Some(step), SlurmMode::Job) => {
                        let job = step.split('.').next().unwrap_or(step);
                        let state = final_job_state(job);
                        format!("{srun}; Slurm job {job} {state}")
                    }
                    (Some(step), SlurmMode::Pool) => format!("{srun}; Slurm step {step} ended"),
                };
                on_exit(Exit { handle: watched, description, success });
            })
            .map_err(|e| launch.error_from("", e))?;
        Ok(handle)
    }

    fn signal(&self, handle: &str, force: bool) {
        let (placement, srun) = match self.running().get(handle) {
            Some(r) => (r.placement.clone(), r.srun),
            None => return self.signal_adopted(handle, force),
        };
        let mut args: Vec<String> = if force { vec!["--signal=KILL".into()] } else { Vec::new() };
        match read_placement(&placement) {
            Some((step, _)) => args.push(self.target(&step)),
            None if self.config.mode == SlurmMode::Job => args.push(format!("--name={handle}")),
            None => {
                // The step does not exist yet: ending srun abandons its creation.
                if let Ok(pid) = libc::pid_t::try_from(srun) {
                    // SAFETY: kill(2) has no memory-safety preconditions; `srun` is our child,
                    // waited for by its watcher thread, so the pid is not reused before that.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                return;
            }
        }
        if let Err(e) = slurm_command("scancel", &args) {
            tracing::warn!(handle, "{e}");
        }
    }

    fn alive(&self, handle: &str) -> bool {
        self.running().contains_key(handle) || Self::steps().is_some_and(|s| s.iter().any(|(_, n)| n == handle))
    }

    fn adopt(&self, handle: &str, on_exit: ExitHandler) {
        let handle = handle.to_owned();
        let spawned = std::thread::Builder::new().name("praas-slurm-adopt".into()).spawn(move || {
            // A failed squeue (controller briefly unreachable) is not the end of the step.
            while Self::steps().is_none_or(|steps| steps.iter().any(|(_, n)| *n == handle)) {
                std::thread::sleep(Duration::from_millis(250));
            }
            let description = "its Slurm step ended (started before the control plane restarted)".into();
            on_exit(Exit { handle, description, success: false });
        });
        if let Err(e) = spawned {
            tracing::error!("cannot watch an adopted Slurm step: {e}");
        }
    }

    fn shutdown(&self) {
        self.release_pool();
    }

    fn placement(&self, handle: &str) -> Option<Placement> {
        let path = self.running().get(handle)?.placement.clone();
        let (step, node) = read_placement(&path)?;
        let job = match self.config.mode {
            SlurmMode::Job => step.split('.').next().unwrap_or(&step).to_owned(),
            SlurmMode::Pool => step,
        };
        Some(Placement { node, job: Some(job) })
    }
}

impl SlurmBackend {
    /// Cancels a step started before a control-plane restart, found by its name.
    fn signal_adopted(&self, handle: &str, force: bool) {
        let Some(step) = Self::steps().and_then(|s| s.into_iter().find(|(_, n)| n == handle)).map(|(id, _)| id) else {
            return;
        };
        let mut args: Vec<String> = if force { vec!["--signal=KILL".into()] } else { Vec::new() };
        args.push(self.target(&step));
        if let Err(e) = slurm_command("scancel", &args) {
            tracing::warn!(handle, "{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_node_bounds_resources() {
        assert_eq!(largest_node("2 1000\n4 512\n"), Some((4, 1000)));
        assert_eq!(largest_node("8+ 64000+\n"), Some((8, 64000)));
        assert_eq!(largest_node(""), None);
    }

    #[test]
    fn modes_and_placement_arguments() {
        assert_eq!("job".parse::<SlurmMode>(), Ok(SlurmMode::Job));
        assert_eq!("pool".parse::<SlurmMode>(), Ok(SlurmMode::Pool));
        assert!("lease".parse::<SlurmMode>().is_err());
        let config = SlurmConfig {
            partition: Some("debug".into()),
            time_limit: Some("10".into()),
            constraint: Some("ib".into()),
            ..SlurmConfig::default()
        };
        assert_eq!(config.placement_args(None), ["--partition=debug", "--time=10", "--constraint=ib"]);
        let app =
            SlurmOptions { account: Some("proj".into()), time_limit: Some("5".into()), ..SlurmOptions::default() };
        assert_eq!(
            config.placement_args(Some(&app)),
            ["--partition=debug", "--account=proj", "--time=5", "--constraint=ib"],
            "the application's settings over the control plane's"
        );
    }

    #[test]
    fn placement_files_and_pool_names() {
        let dir = std::env::temp_dir().join(format!("praas-placement-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.slurm");
        assert_eq!(read_placement(&file), None, "not written yet");
        fs::write(&file, "12.3 n2\n").unwrap();
        assert_eq!(read_placement(&file), Some(("12.3".into(), "n2".into())));
        fs::write(&file, "12.3\n").unwrap();
        assert_eq!(read_placement(&file), None, "a partial line is no placement");
        fs::remove_dir_all(&dir).unwrap();
        let a = default_pool_name(std::path::Path::new("/data/a"));
        assert_eq!(a, default_pool_name(std::path::Path::new("/data/a")), "stable");
        assert_ne!(a, default_pool_name(std::path::Path::new("/data/b")));
        assert!(a.starts_with("praas-") && a.ends_with("-pool"), "{a}");
    }
}
