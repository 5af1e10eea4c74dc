//! A real control plane (`praas control serve` as a child OS process) for the tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use praas_control::cli::{Api, ApiCallError};
use praas_control::model::{ProcessRecord, ProcessStatus};
use praas_control::routes;
use praas_testkit::example_functions;

/// A control plane child process, killed (with its processes) when dropped.
pub struct ControlPlaneProcess {
    pub child: Child,
    pub http: String,
    /// The control channel's address (`HOST:PORT`), empty for an adopted control plane.
    pub control: String,
    pub data_dir: PathBuf,
    pub api: Api,
    extra_args: Vec<String>,
    /// Environment variables set for the control plane (and so for the processes it starts).
    envs: Vec<(String, String)>,
    /// Where its standard error goes when not inherited ([`ControlPlaneProcess::start_logged`]).
    log: Option<PathBuf>,
}

/// The `praas` binary cargo built for these tests, or the one `PRAAS_BIN` names (the SoftRoCE VM
/// runs the tests where the build's paths do not exist).
pub fn praas() -> Command {
    Command::new(std::env::var_os("PRAAS_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_praas").into()))
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        praas_dataplane::state::now_ns()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A figure of `/proc/PID/status` in its unit (`VmRSS:` in KiB, `Threads:`).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The value of the sample `series` (name with labels, as the text format prints it) in a
/// `/metrics` answer; 0 when absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// Starts `praas control serve` on `data_dir`: its environment `envs`, its standard error appended
/// to `log` (else inherited), its soft descriptor limit `nofile` (else this process's); returns
/// the child, its HTTP address and its control channel's.
fn spawn(
    data_dir: &Path,
    extra_args: &[String],
    envs: &[(String, String)],
    log: Option<&Path>,
    nofile: Option<u64>,
) -> (Child, String, String) {
    let stderr = match log {
        Some(log) => {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("the control log");
            Stdio::from(file)
        }
        None => Stdio::inherit(),
    };
    let mut command = praas();
    if let Some(soft) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // getrlimit(2) and setrlimit(2), which are async-signal-safe, on a struct of its own.
        unsafe {
            command.pre_exec(move || {
                let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                limit.rlim_cur = soft.min(limit.rlim_max);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = command
        .args(["control", "serve", "--listen", "127.0.0.1:0", "--metrics-ms", "50", "--data-dir"])
        .arg(data_dir)
        .args(extra_args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("praas control serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let http = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let control = line.split("register on ").nth(1).unwrap_or_default().trim().trim_end_matches(')').to_owned();
    (child, http, control)
}

/// Starts `praas process serve` alone (no control plane) on a free loopback port with the
/// functions of `manifest` and the further `args`; returns the child and the address it printed.
pub fn serve_process(manifest: &Path, args: &[&str]) -> (Child, String) {
    let mut child = praas()
        .args(["process", "serve", "--listen", "127.0.0.1:0", "--manifest"])
        .arg(manifest)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("praas process serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected line {line:?}"));
    (child, addr.to_owned())
}

/// An API client with the token in the control plane's data folder.
pub fn api_of(http: &str, data_dir: &Path) -> Api {
    let token = praas_control::api_token::ApiToken::read(&data_dir.join("api-token")).expect("the API token");
    Api::with_token(http, Duration::from_secs(120), Some(token))
}

impl ControlPlaneProcess {
    pub fn start(name: &str, extra_args: &[&str]) -> Self {
        Self::start_in(temp_dir(name), extra_args)
    }

    /// Starts a control plane whose soft limit of open descriptors is `nofile` when it starts
    /// (as a user's shell would give it), whatever this test process's is.
    pub fn start_with_nofile(name: &str, extra_args: &[&str], nofile: u64) -> Self {
        let data_dir = temp_dir(name);
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let (child, http, control) = spawn(&data_dir, &extra_args, &[], None, Some(nofile));
        let api = api_of(&http, &data_dir);
        Self { child, http, control, data_dir, api, extra_args, envs: Vec::new(), log: None }
    }

    pub fn start_in(data_dir: PathBuf, extra_args: &[&str]) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let (child, http, control) = spawn(&data_dir, &extra_args, &[], None, None);
        let api = api_of(&http, &data_dir);
        Self { child, http, control, data_dir, api, extra_args, envs: Vec::new(), log: None }
    }

    /// A control plane with `envs` set, its standard error (its log) appended to
    /// `DATA/control.log` across restarts ([`ControlPlaneProcess::control_log`]).
    pub fn start_logged(name: &str, extra_args: &[&str], envs: &[(&str, &str)]) -> Self {
        let data_dir = temp_dir(name);
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let envs: Vec<(String, String)> = envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let log = data_dir.join("control.log");
        let (child, http, control) = spawn(&data_dir, &extra_args, &envs, Some(&log), None);
        let api = api_of(&http, &data_dir);
        Self { child, http, control, data_dir, api, extra_args, envs, log: Some(log) }
    }

    /// What the control plane logged so far (empty unless started with `start_logged`).
    pub fn control_log(&self) -> String {
        self.log.as_ref().and_then(|log| std::fs::read_to_string(log).ok()).unwrap_or_default()
    }

    /// What process `name` of `app` logged so far.
    pub fn process_log(&self, app: &str, name: &str) -> String {
        std::fs::read_to_string(self.data_dir.join("logs").join(format!("{app}.{name}.log"))).unwrap_or_default()
    }

    /// Takes over a control plane a test started itself (killed with its processes when dropped).
    pub fn adopt(child: Child, http: String, data_dir: PathBuf) -> Self {
        let api = api_of(&http, &data_dir);
        Self { child, http, control: String::new(), data_dir, api, extra_args: Vec::new(), envs: Vec::new(), log: None }
    }

    /// Whether the control plane's OS process still runs.
    pub fn child_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the control plane with SIGKILL (its processes live on).
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts a new control plane on the same data folder (after `kill9`), without the
    /// environment it started with.
    pub fn restart(&mut self) {
        self.envs.clear();
        let (child, http, control) = spawn(&self.data_dir, &self.extra_args, &self.envs, self.log.as_deref(), None);
        self.child = child;
        self.control = control;
        self.api = api_of(&http, &self.data_dir);
        self.http = http;
    }

    /// Creates an application `app` serving the example functions.
    pub fn create_example_app(&self, app: &str) {
        let lib = example_functions();
        let mut manifest = String::new();
        let inline = ["echo", "noop"];
        for name in [
            "echo",
            "noop",
            "counter",
            "state_put",
            "state_get",
            "state_keys",
            "sleep",
            "fill",
            "checksum",
            "file_write",
            "file_read",
            "slow_count",
            "process_id",
            "generate",
            "msg_put",
            "msg_get",
            "fail",
        ] {
            let mode = if inline.contains(&name) { "inline" } else { "worker" };
            manifest.push_str(&format!(
                "[[function]]\nname = \"{name}\"\nlibrary = \"{}\"\nmode = \"{mode}\"\n\n",
                lib.file_name().unwrap().to_string_lossy()
            ));
        }
        let dir = self.data_dir.join("manifests").join(app);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("functions.toml");
        std::fs::write(&file, manifest).unwrap();
        // Library paths are relative to the manifest's folder: put the library beside it.
        std::fs::copy(&lib, dir.join(lib.file_name().unwrap())).unwrap();
        // 8 GiB where the node has it (the SoftRoCE VM has less): resources above the node's
        // are refused.
        let node = praas_control::backend::this_node().unwrap();
        let resources =
            praas_control::model::Resources { vcpus: 2.min(node.cpus), memory_mb: 8192.min(node.memory_mb) };
        praas_control::cli::app_create(&self.api, app, &file, Some(resources)).unwrap();
    }

    /// Creates an application `app` serving the example functions `functions` (on workers), its
    /// manifest starting with `settings` (top-level keys such as `swap_in_on_call = false`).
    pub fn create_app_of(&self, app: &str, functions: &[&str], settings: &str) {
        let lib = example_functions();
        let mut manifest = format!("{settings}\n");
        for name in functions {
            manifest.push_str(&format!(
                "[[function]]\nname = \"{name}\"\nlibrary = \"{}\"\nmode = \"worker\"\n\n",
                lib.file_name().unwrap().to_string_lossy()
            ));
        }
        let dir = self.data_dir.join("manifests").join(app);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("functions.toml");
        std::fs::write(&file, manifest).unwrap();
        std::fs::copy(&lib, dir.join(lib.file_name().unwrap())).unwrap();
        let node = praas_control::backend::this_node().unwrap();
        let resources = praas_control::model::Resources { vcpus: 1, memory_mb: 1024.min(node.memory_mb) };
        praas_control::cli::app_create(&self.api, app, &file, Some(resources)).unwrap();
    }

    pub fn process(&self, app: &str, name: &str) -> ProcessRecord {
        self.api.get(&routes::process(app, name)).unwrap()
    }

    /// Waits until a process reaches `status`.
    pub fn wait_status(&self, app: &str, name: &str, status: ProcessStatus, timeout: Duration) -> ProcessRecord {
        let deadline = Instant::now() + timeout;
        loop {
            let record = self.process(app, name);
            if record.status == status {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "{app}/{name} is {:?}, not {status:?}, after {timeout:?}",
                record.status
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn invoke(
        &self,
        app: &str,
        process: Option<&str>,
        function: &str,
        input: &[u8],
    ) -> Result<Vec<u8>, ApiCallError> {
        self.api.invoke(app, function, process, input)
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        // Stop the processes it started, then the control plane itself.
        if let Ok(apps) = self.api.get::<Vec<praas_control::controller::AppView>>(&routes::apps()) {
            for app in apps {
                if let Ok(processes) = self.api.get::<Vec<ProcessRecord>>(&routes::processes(&app.name)) {
                    for p in processes {
                        if let Some(pid) = p.pid {
                            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                        }
                    }
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Invokes `function` on process `name` of `app` straight at its data-plane address, with the
/// invocation deadline `deadline_ms`.
pub fn invoke_on(
    cp: &ControlPlaneProcess,
    app: &str,
    name: &str,
    function: &str,
    input: &str,
    deadline_ms: u32,
) -> Result<Vec<u8>, praas_dataplane::ClientError> {
    let addr = cp.process(app, name).data_addr.expect("an ALLOCATED process has an address");
    let options = praas_dataplane::ClientOptions {
        timeout: Duration::from_secs(60),
        invocation_timeout_ms: deadline_ms,
        ..praas_dataplane::ClientOptions::default()
    };
    praas_dataplane::Client::connect_with(addr.as_str(), options)?.invoke(function, input.as_bytes())
}

/// [`invoke_on`] the caller's `remote_call` of `callee`'s `function`, again while the caller has
/// not heard of `callee` yet (its first peer list comes on its own time after its registration).
pub fn call_once_known(cp: &ControlPlaneProcess, app: &str, caller: &str, callee: &str, function: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match invoke_on(cp, app, caller, "remote_call", &format!("{callee} {function} "), 20_000) {
            Err(praas_dataplane::ClientError::Remote { status: praas_dataplane::Status::NotFound, message })
                if message.contains("unknown process") && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
}

/// Swaps process `name` of `app` out through the API.
pub fn swap_out(cp: &ControlPlaneProcess, app: &str, name: &str) {
    let record: ProcessRecord = cp.api.post(&routes::swap(app, name)).unwrap();
    assert_eq!(record.status, ProcessStatus::SwappedOut);
}
