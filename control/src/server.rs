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

impl Server {
    /// The HTTP API's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("a bound listener has an address")
    }

    /// Serves until the process ends.
    pub fn run(self) -> Result<(), String> {
        self.plane.run_downscaler();
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
