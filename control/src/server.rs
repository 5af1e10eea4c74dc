//! Starts a control plane: opens its data folder, binds the control channel (on the same port
//! as last time, so processes that outlive a restart find it again) and serves the HTTP API.

use std::net::SocketAddr;

use crate::backend::{Backend, LocalBackend};
use crate::controller::{ControlConfig, ControlPlane};

const CONTROL_ADDR_SETTING: &str = "control_addr";

/// A control plane ready to serve.
#[derive(Debug)]
pub struct Server {
    /// The control plane.
    pub plane: ControlPlane,
    /// The HTTP API's listener.
    pub http: std::net::TcpListener,
    /// The control channel's address.
    pub control_addr: SocketAddr,
}

/// Opens the control plane and binds its ports. `control` overrides the control-channel address;
/// otherwise the one used last time with this data folder is reused (or a free port on first use).
pub fn bind(config: ControlConfig, http: SocketAddr, control: Option<SocketAddr>) -> Result<Server, String> {
    let praas = std::env::current_exe().map_err(|e| format!("cannot find the praas binary: {e}"))?;
    bind_backend(config, Box::new(LocalBackend::new(praas)), http, control)
}

/// [`bind`] with a given backend. A control channel bound to an unspecified address (`0.0.0.0`)
/// is announced to processes by this host's routable address ([`crate::backend::routable`]).
pub fn bind_backend(
    config: ControlConfig,
    backend: Box<dyn Backend>,
    http: SocketAddr,
    control: Option<SocketAddr>,
) -> Result<Server, String> {
    let plane = ControlPlane::open(config, backend).map_err(|e| e.to_string())?;
    let remembered = plane
        .store()
        .setting(CONTROL_ADDR_SETTING)
        .map_err(|e| e.to_string())?
        .and_then(|addr| addr.parse::<SocketAddr>().ok());
    let wanted = control.or(remembered).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let control_addr = crate::channel::listen(plane.clone(), wanted)
        .map_err(|e| format!("cannot listen for processes on {wanted}: {e}"))?;
    plane.store().put_setting(CONTROL_ADDR_SETTING, &control_addr.to_string()).map_err(|e| e.to_string())?;
    plane.set_control_addr(crate::backend::routable(control_addr).to_string());
    let http = std::net::TcpListener::bind(http).map_err(|e| format!("cannot listen on {http}: {e}"))?;
    http.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(Server { plane, http, control_addr })
}

static STOP_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP_REQUESTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// On SIGTERM or SIGINT: releases the backend's own resources (a Slurm pool) and exits with 0.
/// Processes are not stopped (a restarted control plane adopts them, as after a crash).
fn shutdown_on_signals(plane: ControlPlane) -> Result<(), String> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe); `action` is a fully
        // initialised sigaction that outlives the call.
        let status = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = request_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if status != 0 {
            return Err(format!("cannot handle signal {signal}: {}", std::io::Error::last_os_error()));
        }
    }
    std::thread::Builder::new()
        .name("praas-shutdown".into())
        .spawn(move || {
            while !STOP_REQUESTED.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            tracing::info!("stopping on request");
            plane.shutdown();
            std::process::exit(0);
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the shutdown thread: {e}"))
}

impl Server {
    /// The HTTP API's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("a bound listener has an address")
    }

    /// Serves until the process ends.
    pub fn run(self) -> Result<(), String> {
        self.plane.run_downscaler();
        shutdown_on_signals(self.plane.clone())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(self.http).map_err(|e| e.to_string())?;
            axum::serve(listener, crate::api::router(self.plane)).await.map_err(|e| e.to_string())
        })
    }
}
