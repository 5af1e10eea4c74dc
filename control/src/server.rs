//! Starts a control plane: opens its data folder (owner-only), binds the control channel (on the
//! same port as last time, so processes that outlive a restart find it again) and serves the HTTP
//! API behind its bearer token, which it publishes for its user's CLI ([`crate::api_token`]).

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::api_token::{ApiToken, Publication, TokenError};
use crate::backend::{Backend, LocalBackend};
use crate::controller::{ControlConfig, ControlError, ControlPlane};

const CONTROL_ADDR_SETTING: &str = "control_addr";

/// Why a control plane could not start or stopped serving.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The praas binary (started for each process) is not found.
    #[error("cannot find the praas binary: {0}")]
    Binary(#[source] std::io::Error),
    /// The data folder or its database could not be opened.
    #[error("cannot open the control plane: {0}")]
    Open(#[source] ControlError),
    /// The API token could not be read or made.
    #[error("the API token: {0}")]
    Token(#[source] TokenError),
    /// A port could not be bound.
    #[error("cannot listen {what} on {addr}: {source}")]
    Listen {
        /// Which port.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The runtime, a signal handler or the HTTP server failed.
    #[error("{what}: {source}")]
    Serve {
        /// What failed.
        what: &'static str,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// A control plane ready to serve.
#[derive(Debug)]
pub struct Server {
    /// The control plane.
    pub plane: ControlPlane,
    /// The HTTP API's listener.
    pub http: std::net::TcpListener,
    /// The control channel's address.
    pub control_addr: SocketAddr,
    /// The API's bearer token (also in `DATA/api-token`).
    pub token: ApiToken,
    /// Where the token is published for the CLI (none when this user has no runtime folder).
    pub publication: Option<Publication>,
}

/// Opens the control plane and binds its ports. `control` overrides the control-channel address;
/// otherwise the one used last time with this data folder is reused (or a free port on first use).
pub fn bind(config: ControlConfig, http: SocketAddr, control: Option<SocketAddr>) -> Result<Server, ServerError> {
    let praas = std::env::current_exe().map_err(ServerError::Binary)?;
    bind_backend(config, Box::new(LocalBackend::new(praas)), http, control)
}

/// Makes every file and folder this OS process and its children create owner-only (umask 077):
/// the data folder, logs, process folders and the swap store hold state and secrets.
fn private_umask() {
    // SAFETY: umask(2) only sets this process's file mode creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
}

/// [`bind`] with a given backend. A control channel bound to an unspecified address (`0.0.0.0`)
/// is announced to processes by this host's routable address ([`crate::backend::routable`]).
pub fn bind_backend(
    config: ControlConfig,
    backend: Box<dyn Backend>,
    http: SocketAddr,
    control: Option<SocketAddr>,
) -> Result<Server, ServerError> {
    private_umask();
    let plane = ControlPlane::open(config, backend).map_err(ServerError::Open)?;
    let token = ApiToken::load_or_create(&plane.config().data_dir).map_err(ServerError::Token)?;
    let remembered = plane
        .store()
        .setting(CONTROL_ADDR_SETTING)
        .map_err(|e| ServerError::Open(e.into()))?
        .and_then(|addr| addr.parse::<SocketAddr>().ok());
    let wanted = control.or(remembered).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let control_addr = crate::channel::listen(plane.clone(), wanted).map_err(|source| ServerError::Listen {
        what: "for processes",
        addr: wanted,
        source,
    })?;
    plane
        .store()
        .put_setting(CONTROL_ADDR_SETTING, &control_addr.to_string())
        .map_err(|e| ServerError::Open(e.into()))?;
    plane.set_control_addr(crate::backend::routable(control_addr).to_string());
    let listen = |source| ServerError::Listen { what: "for the API", addr: http, source };
    let listener = std::net::TcpListener::bind(http).map_err(listen)?;
    listener.set_nonblocking(true).map_err(listen)?;
    let bound = listener.local_addr().map_err(listen)?;
    let publication = match crate::api_token::publish(bound, &token) {
        Ok(publication) => Some(publication),
        Err(e) => {
            tracing::warn!(
                "cannot publish the API token for the CLI ({e}): clients need PRAAS_TOKEN_FILE=DATA/api-token"
            );
            None
        }
    };
    Ok(Server { plane, http: listener, control_addr, token, publication })
}

/// Serves `router` on `listener` for as long as the runtime runs: each connection on a task of
/// its own, closed if its client takes longer than `header_timeout` to send a request's header.
/// An accept that fails (out of descriptors) is logged and retried after a pause, never the end
/// of the API.
async fn serve_http(listener: tokio::net::TcpListener, router: axum::Router, header_timeout: Duration) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("the HTTP API cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await {
                tracing::debug!("an HTTP connection ended: {e}");
            }
        });
    }
}

static STOP_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP_REQUESTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// On SIGTERM or SIGINT: withdraws the published token, releases the backend's own resources (a
/// Slurm pool) and exits with 0. Processes are not stopped (a restarted control plane adopts
/// them, as after a crash).
fn shutdown_on_signals(plane: ControlPlane, publication: Option<Publication>) -> Result<(), ServerError> {
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
            return Err(ServerError::Serve {
                what: "cannot handle SIGTERM/SIGINT",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    std::thread::Builder::new()
        .name("praas-shutdown".into())
        .spawn(move || {
            while !STOP_REQUESTED.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            tracing::info!("stopping on request");
            if let Some(publication) = &publication {
                publication.withdraw();
            }
            plane.shutdown();
            std::process::exit(0);
        })
        .map(|_| ())
        .map_err(|source| ServerError::Serve { what: "cannot start the shutdown thread", source })
}

impl Server {
    /// The HTTP API's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("a bound listener has an address")
    }

    /// Serves until the process ends.
    pub fn run(self) -> Result<(), ServerError> {
        self.plane.run_downscaler();
        shutdown_on_signals(self.plane.clone(), self.publication)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|source| ServerError::Serve { what: "cannot start the runtime", source })?;
        let (plane, token) = (self.plane, self.token);
        let header_timeout = plane.config().header_timeout;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(self.http)
                .map_err(|source| ServerError::Serve { what: "the API's listener", source })?;
            serve_http(listener, crate::api::router(plane, token), header_timeout).await;
            Ok(())
        })
    }
}
