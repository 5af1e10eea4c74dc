//! `allocate`: create-to-ALLOCATED latency of a cloud process (`PUT /apps/A/processes/P` answers
//! once the process registered) on the local backend and on the Slurm backend in job and pool
//! mode, against `srun -n1 true` on the same cluster in the same run.
//!
//! Each backend gets its own control plane (`praas control serve`, the `praas` binary beside this
//! one); every measured process is stopped and deleted outside the timed region. The Slurm cluster
//! is the one `SLURM_CONF` names, or without it a private one started with
//! `scripts/slurm-cluster.sh` in a temporary folder on free ports and stopped at the end. The
//! baseline is interleaved: one `srun -n1 true` after each measured creation (and its stop and
//! delete), so both see the same load; only a pool holding every node of the cluster (it holds
//! its nodes exclusively) has its baseline measured before the pool exists instead.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::AllocateArgs;
use crate::functions;
use crate::placement;
use hdrhistogram::Histogram;

use crate::output::Reporter;
use crate::report::{self, Record, RunInfo, Summary};

/// A control plane child, killed (with the processes and the pool it holds) when dropped.
pub(crate) struct ControlPlane {
    child: Child,
    pub(crate) http: String,
    pub(crate) agent: ureq::Agent,
    /// `Bearer TOKEN`: the API's token, read from the data folder.
    pub(crate) authorization: String,
    _data: tempfile::TempDir,
}

fn praas_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench executable: {e}"))?;
    let praas = exe.with_file_name("praas");
    if praas.is_file() {
        Ok(praas)
    } else {
        Err(format!("{} is missing: build it with `cargo build --release -p praas-control`", praas.display()))
    }
}

impl ControlPlane {
    /// Starts `praas control serve` whose manifests may name libraries inside `function_root`.
    pub(crate) fn start(backend_args: &[&str], function_root: &std::path::Path) -> Result<Self, String> {
        let data = tempfile::tempdir().map_err(|e| e.to_string())?;
        let pool_name = pool_name(data.path());
        let mut child = Command::new(praas_binary()?)
            .args(["control", "serve", "--listen", "127.0.0.1:0", "--metrics-ms", "1000", "--data-dir"])
            .arg(data.path())
            .arg("--function-root")
            .arg(function_root)
            .args(backend_args)
            .args(["--slurm-pool-name", &pool_name])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start praas control serve: {e}"))?;
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
        let http = line.split_whitespace().find(|w| w.starts_with("http://")).map(str::to_owned);
        let Some(http) = http.filter(|_| read.is_ok()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("praas control serve {backend_args:?} did not start"));
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let token_file = data.path().join("api-token");
        let token = std::fs::read_to_string(&token_file).map_err(|e| format!("{}: {e}", token_file.display()))?;
        let authorization = format!("Bearer {}", token.trim());
        Ok(Self { child, http, agent, authorization, _data: data })
    }

    pub(crate) fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<(), String> {
        let url = format!("{}{path}", self.http);
        let auth = self.authorization.as_str();
        let response = match (method, body) {
            ("PUT", Some(body)) => self.agent.put(&url).header("Authorization", auth).send_json(body),
            ("POST", _) => self.agent.post(&url).header("Authorization", auth).send_empty(),
            ("DELETE", _) => self.agent.delete(&url).header("Authorization", auth).call(),
            _ => unreachable!("only the calls below"),
        };
        let mut response = response.map_err(|e| format!("{method} {path}: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            let text = response.body_mut().read_to_string().unwrap_or_default();
            Err(format!("{method} {path}: HTTP {}: {text}", response.status().as_u16()))
        }
    }
}

/// The pool's job name of the control plane on `data`.
fn pool_name(data: &std::path::Path) -> String {
    let unique = data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!("praas-bench-{}-{unique}-pool", std::process::id())
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // SIGTERM: the control plane releases its Slurm pool and exits.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet,
            // so its pid is still ours.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Had it not exited in time, its pool would stay: cancel it by name.
        if std::env::var_os("SLURM_CONF").is_some() {
            let name = pool_name(self._data.path());
            let _ = Command::new("scancel").args(["--name", &name]).stderr(Stdio::null()).status();
        }
    }
}

/// A Slurm test cluster this run started, stopped when dropped.
struct Cluster {
    script: PathBuf,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a two-node cluster and points `SLURM_CONF` at it.
    fn start() -> Result<Self, String> {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-cluster.sh");
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = (0..100)
            .filter_map(|_| std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok())
            .map(|a| a.port())
            .find(|&p| p < 65000 && (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()))
            .ok_or("no three free consecutive ports")?;
        let out = Command::new(&script)
            .args(["start", "--port-base", &port.to_string(), "--dir"])
            .arg(dir.path())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let cluster = Self { script, dir };
        let conf = String::from_utf8_lossy(&out.stdout);
        let conf = conf.trim().strip_prefix("export SLURM_CONF=").filter(|_| out.status.success());
        let conf = conf.ok_or("slurm-cluster.sh start failed")?;
        // Single-threaded here: nothing reads the environment concurrently.
        std::env::set_var("SLURM_CONF", conf);
        Ok(cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.script).arg("stop").arg("--dir").arg(self.dir.path()).stdout(Stdio::null()).status();
    }
}

/// Times `iters` creations (after `warmup` untimed ones) of a 1-vCPU process.
fn measure_backend(
    args: &AllocateArgs,
    backend_args: &[&str],
    interleave: bool,
) -> Result<(Histogram<u64>, Option<Histogram<u64>>), String> {
    let library = functions::library()?;
    let root = library.parent().ok_or("the functions library has no folder")?;
    let cp = ControlPlane::start(backend_args, root)?;
    let manifest = functions::manifest_text(&library)?;
    let resources = serde_json::json!({ "vcpus": 1, "memory_mb": 256 });
    let app = serde_json::json!({ "manifest": manifest, "resources": resources });
    cp.call("PUT", "/apps/bench", Some(app))?;
    let mut hist = report::histogram();
    let mut base = report::histogram();
    for i in 0..args.warmup + args.iters {
        let path = format!("/apps/bench/processes/p{i}");
        let started = Instant::now();
        cp.call("PUT", &path, Some(serde_json::json!({})))?;
        let elapsed = started.elapsed();
        if i >= args.warmup {
            report::record(&mut hist, elapsed);
        }
        cp.call("POST", &format!("{path}/stop"), None)?;
        cp.call("DELETE", &path, None)?;
        if interleave {
            let elapsed = srun_true()?;
            if i >= args.warmup {
                report::record(&mut base, elapsed);
            }
        }
    }
    Ok((hist, interleave.then_some(base)))
}

/// One timed `srun -n1 true`.
fn srun_true() -> Result<Duration, String> {
    let started = Instant::now();
    let status = Command::new("srun")
        .args(["-n1", "true"])
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run srun: {e}"))?;
    let elapsed = started.elapsed();
    if status.success() {
        Ok(elapsed)
    } else {
        Err(format!("srun -n1 true: {status}"))
    }
}

/// Nodes of the cluster.
fn cluster_nodes() -> Result<usize, String> {
    let out = Command::new("sinfo").args(["-h", "-N", "-o", "%N"]).output().map_err(|e| format!("sinfo: {e}"))?;
    let mut nodes: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    nodes.sort();
    nodes.dedup();
    Ok(nodes.len())
}

/// Times `srun -n1 true` on the cluster `SLURM_CONF` names.
fn measure_srun(args: &AllocateArgs) -> Result<Summary, String> {
    let mut hist = report::histogram();
    for i in 0..args.warmup + args.iters {
        let elapsed = srun_true()?;
        if i >= args.warmup {
            report::record(&mut hist, elapsed);
        }
    }
    Ok(Summary::of(&hist))
}

pub fn run(args: &AllocateArgs) -> Result<(), String> {
    let slurm = args.backends.iter().any(|b| b != "local");
    let _cluster = if slurm && std::env::var_os("SLURM_CONF").is_none() { Some(Cluster::start()?) } else { None };
    let info = RunInfo { transport: "tcp", placement: "control-plane=any".into(), host: placement::host() };
    let nodes = if slurm { cluster_nodes()? } else { 0 };
    let mut before: Option<Summary> = None;
    let pool_nodes = args.slurm_pool_nodes.to_string();
    let mut reporter = Reporter::new("allocate", &args.output);
    for backend in &args.backends {
        let (name, mode, backend_args): (&'static str, Option<&'static str>, Vec<&str>) = match backend.as_str() {
            "local" => ("local", None, vec!["--backend", "local"]),
            "slurm-job" => ("slurm", Some("job"), vec!["--backend", "slurm", "--slurm-mode", "job"]),
            "slurm-pool" => (
                "slurm",
                Some("pool"),
                vec!["--backend", "slurm", "--slurm-mode", "pool", "--slurm-pool-nodes", &pool_nodes],
            ),
            other => return Err(format!("unknown backend {other:?} (local, slurm-job, slurm-pool)")),
        };
        let whole_cluster = backend == "slurm-pool" && args.slurm_pool_nodes as usize >= nodes;
        if slurm && whole_cluster && before.is_none() {
            before = Some(measure_srun(args)?);
        }
        let (hist, interleaved_hist) = measure_backend(args, &backend_args, slurm && !whole_cluster)?;
        let ours = Summary::of(&hist);
        let interleaved = interleaved_hist.as_ref().map(Summary::of);
        let mut record = match interleaved.as_ref().or(before.as_ref()) {
            Some(base) => Record::latency("allocate", &info, 0, args.warmup, &ours, "srun-true", base),
            None => Record::unbaselined("allocate", &info, 0, args.warmup, &ours),
        };
        record.transport = None;
        record.backend = Some(name);
        record.mode = mode;
        reporter.push_measured(record, &hist, interleaved_hist.as_ref()).map_err(|e| e.to_string())?;
    }
    reporter.finish(&info).map_err(|e| e.to_string())
}
