//! Starts a control plane: opens its data folder (owner-only), binds the control channel (on the
//! same port as last time, so processes that outlive a restart find it again) and serves the HTTP
//! API behind its bearer token, which it publishes for its user's CLI ([`crate::api_token`]).
//!
//! Both are served by one tokio runtime. How much either takes at once is bounded ([`Limits`]):
//! connections of each listener below the descriptor limit (which [`raise_descriptor_limit`]
//! raises to its hard limit at start), routed invocations and lifecycle operations in flight;
//! an HTTP connection idle for [`Limits::idle_timeout`] is closed, as is one whose client takes
//! longer than the header timeout to send a request's header.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::api_token::{ApiToken, Publication, TokenError};
use crate::backend::{Backend, LocalBackend};
use crate::channel::ChannelLimits;
use crate::controller::{ControlConfig, ControlError, ControlPlane};

const CONTROL_ADDR_SETTING: &str = "control_addr";

/// Descriptors kept for everything but connections: the database, logs, listeners, the pipes and
/// files of processes being started, swap files.
pub const RESERVED_DESCRIPTORS: u64 = 256;
/// Default of [`Limits::invocations`] (at most a quarter of the descriptors).
pub const DEFAULT_INVOCATIONS: usize = 1024;
/// Default of [`Limits::lifecycle`].
pub const DEFAULT_LIFECYCLE: usize = 64;
/// Most HTTP connections a default limit allows, however many descriptors there are.
pub const MAX_DEFAULT_HTTP_CONNECTIONS: usize = 16_384;
/// Most control-channel connections a default limit allows, however many descriptors there are.
pub const MAX_DEFAULT_CONTROL_CONNECTIONS: usize = 65_536;

/// How much the control plane serves at once, and how long it keeps what is idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// HTTP connections open at once (`--max-http-connections`); one past it is answered 503
    /// and closed at once.
    pub http_connections: usize,
    /// Control-channel connections open at once (`--max-control-connections`); one past it is
    /// closed at once.
    pub control_connections: usize,
    /// Routed invocations in flight (`--max-invocations`); one past it is answered 503 at once.
    pub invocations: usize,
    /// Lifecycle operations in flight (`--max-lifecycle`); one past it is answered 503 at once.
    pub lifecycle: usize,
    /// An HTTP connection with no request in flight and no byte in either direction for this
    /// long is closed (`--idle-timeout-ms`).
    pub idle_timeout: Duration,
    /// A control-channel connection that has not proved itself this long after its accept is
    /// closed (`--handshake-timeout-ms`).
    pub handshake_timeout: Duration,
}

impl Limits {
    /// The defaults for a process that may hold `descriptors` open: [`RESERVED_DESCRIPTORS`]
    /// kept, one per routed invocation in flight (its connection to the process), and of the
    /// rest three fifths for the control channel (one link per process) and two fifths for the
    /// HTTP API, each at least 16 and at most its `MAX_DEFAULT_*`.
    pub fn for_descriptors(descriptors: u64) -> Self {
        let descriptors = usize::try_from(descriptors).unwrap_or(usize::MAX);
        let invocations = DEFAULT_INVOCATIONS.min(descriptors / 4).max(1);
        let spare = descriptors.saturating_sub(RESERVED_DESCRIPTORS as usize + invocations);
        let http = (spare / 5 * 2).clamp(16, MAX_DEFAULT_HTTP_CONNECTIONS);
        let control = (spare - spare / 5 * 2).clamp(16, MAX_DEFAULT_CONTROL_CONNECTIONS);
        Self {
            http_connections: http,
            control_connections: control,
            invocations,
            lifecycle: DEFAULT_LIFECYCLE,
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: ChannelLimits::default().handshake_timeout,
        }
    }

    /// The control channel's share.
    pub fn channel(&self) -> ChannelLimits {
        ChannelLimits { connections: self.control_connections, handshake_timeout: self.handshake_timeout }
    }
}

pub use praas_dataplane::connection::raise_descriptor_limit;

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

/// A control plane ready to serve (its control channel already serves).
#[derive(Debug)]
pub struct Server {
    /// The runtime that serves the control channel and the HTTP API.
    pub runtime: tokio::runtime::Runtime,
    /// How much it serves at once.
    pub limits: Limits,
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
pub fn bind(
    config: ControlConfig,
    http: SocketAddr,
    control: Option<SocketAddr>,
    limits: Limits,
) -> Result<Server, ServerError> {
    let praas = std::env::current_exe().map_err(ServerError::Binary)?;
    bind_backend(config, Box::new(LocalBackend::new(praas)), http, control, limits)
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
    limits: Limits,
) -> Result<Server, ServerError> {
    private_umask();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| ServerError::Serve { what: "cannot start the runtime", source })?;
    runtime.spawn(crate::reclaim::release_freed_memory());
    let plane = ControlPlane::open(config, backend).map_err(ServerError::Open)?;
    let token = ApiToken::load_or_create(&plane.config().data_dir).map_err(ServerError::Token)?;
    let remembered = plane
        .store()
        .setting(CONTROL_ADDR_SETTING)
        .map_err(|e| ServerError::Open(e.into()))?
        .and_then(|addr| addr.parse::<SocketAddr>().ok());
    let wanted = control.or(remembered).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let control_addr = crate::channel::listen(plane.clone(), wanted, limits.channel(), runtime.handle())
        .map_err(|source| ServerError::Listen { what: "for processes", addr: wanted, source })?;
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
    Ok(Server { runtime, limits, plane, http: listener, control_addr, token, publication })
}

/// How the HTTP API keeps its connections.
#[derive(Debug, Clone, Copy)]
struct HttpSettings {
    header_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
}

/// Serves `router` on `listener` for as long as the runtime runs: each connection on a task of
/// its own, at most `max_connections` at once (one past it is answered 503 and closed at once,
/// without waiting for anything), closed if its client takes longer than `header_timeout` to
/// send a request's header or once idle for `idle_timeout`. An accept that fails (out of
/// descriptors) is logged and retried after a pause, never the end of the API.
async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    plane: ControlPlane,
    settings: HttpSettings,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let refusal: Arc<[u8]> = crate::api::connection_refusal(settings.max_connections).into();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("the HTTP API cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            plane.metrics().count_refused_connection("http");
            refuse(&stream, &refusal);
            continue;
        };
        let service = Tracked {
            inner: hyper_util::service::TowerToHyperService::new(router.clone()),
            activity: Arc::new(Activity::new()),
        };
        let open = plane.metrics().open_connection("http");
        tokio::spawn(async move {
            serve_connection(stream, service, settings).await;
            drop((open, slot));
            crate::reclaim::connection_closed();
        });
    }
}

/// Answers a connection past the limit without waiting: reads what its client already sent (so
/// that closing does not reset the connection before the answer is read), writes the 503 and
/// closes it.
fn refuse(stream: &tokio::net::TcpStream, refusal: &[u8]) {
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        if !matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = stream.try_write(refusal);
}

async fn serve_connection(stream: tokio::net::TcpStream, service: Tracked, settings: HttpSettings) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    let activity = Arc::clone(&service.activity);
    let io = TokioIo::new(TrackedIo { inner: stream, activity: Arc::clone(&activity) });
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(settings.header_timeout);
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    loop {
        let wake = activity.idle_deadline(settings.idle_timeout);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("an HTTP connection ended: {e}");
                }
                return;
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if activity.idle_for() >= settings.idle_timeout && activity.in_flight() == 0 {
                    tracing::debug!("an HTTP connection idle for {:?} is closed", settings.idle_timeout);
                    return;
                }
            }
        }
    }
}

/// When a connection last moved a byte, and how many of its requests are in flight.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Milliseconds after `opened` of the last byte read or written.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self { opened: Instant::now(), last_ms: AtomicU64::new(0), in_flight: AtomicUsize::new(0) }
    }

    fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn idle_for(&self) -> Duration {
        self.last().elapsed()
    }

    /// When the connection will have been idle for `timeout`, if nothing moves before (at least
    /// 10 ms from now).
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        (self.last() + timeout).max(Instant::now() + Duration::from_millis(10))
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A connection's socket, noting in its [`Activity`] each byte read or written.
struct TrackedIo {
    inner: tokio::net::TcpStream,
    activity: Arc<Activity>,
}

impl TrackedIo {
    fn noted<T>(&self, poll: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if matches!(poll, Poll::Ready(Ok(_))) {
            self.activity.touch();
        }
        poll
    }
}

impl tokio::io::AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.noted(poll)
    }
}

impl tokio::io::AsyncWrite for TrackedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.noted(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.noted(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The API's router for one connection, counting its requests in flight in its [`Activity`]
/// (a connection waiting for a long invocation is not idle).
#[derive(Clone)]
struct Tracked {
    inner: hyper_util::service::TowerToHyperService<axum::Router>,
    activity: Arc<Activity>,
}

/// One request in flight on a connection, until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn of(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let in_flight = InFlight::of(&self.activity);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await;
            drop(in_flight);
            response
        })
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
        let (plane, token, limits) = (self.plane, self.token, self.limits);
        let pools = crate::api::Pools::new(limits.invocations, limits.lifecycle, plane.metrics().clone())
            .map_err(|source| ServerError::Serve { what: "cannot start the invocation pool", source })?;
        let settings = HttpSettings {
            header_timeout: plane.config().header_timeout,
            idle_timeout: limits.idle_timeout,
            max_connections: limits.http_connections,
        };
        let http = self.http;
        self.runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(http)
                .map_err(|source| ServerError::Serve { what: "the API's listener", source })?;
            let router = crate::api::router(plane.clone(), token, Arc::new(pools));
            serve_http(listener, router, plane, settings).await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_leave_room_below_the_descriptor_limit() {
        let limits = Limits::for_descriptors(20_000);
        assert_eq!((limits.invocations, limits.http_connections, limits.control_connections), (1024, 7488, 11_232));
        let used =
            RESERVED_DESCRIPTORS as usize + limits.invocations + limits.http_connections + limits.control_connections;
        assert!(used <= 20_000, "{used}");
        // The usual 1024: a quarter for invocations, the rest shared.
        let small = Limits::for_descriptors(1024);
        assert_eq!((small.invocations, small.http_connections, small.control_connections), (256, 204, 308));
        // However many descriptors, a default stays bounded (each connection costs memory).
        let huge = Limits::for_descriptors(1 << 30);
        assert_eq!(
            (huge.http_connections, huge.control_connections),
            (MAX_DEFAULT_HTTP_CONNECTIONS, MAX_DEFAULT_CONTROL_CONNECTIONS)
        );
        let tiny = Limits::for_descriptors(64);
        assert!(tiny.invocations >= 1 && tiny.http_connections >= 16 && tiny.control_connections >= 16);
        assert_eq!(limits.channel(), ChannelLimits { connections: 11_232, handshake_timeout: Duration::from_secs(10) });
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit() {
        let soft = raise_descriptor_limit(None).unwrap();
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit(2) writes one rlimit into the struct it is given, which lives here.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert_eq!(soft, limit.rlim_cur);
        assert!(soft == limit.rlim_max || soft >= 1 << 20, "soft {soft}, hard {}", limit.rlim_max);
    }

    #[test]
    fn an_idle_deadline_follows_the_last_byte() {
        let activity = Activity::new();
        let timeout = Duration::from_millis(300);
        assert!(activity.idle_deadline(timeout) <= Instant::now() + timeout);
        assert_eq!(activity.in_flight(), 0);
        let request = InFlight::of(&Arc::new(Activity::new()));
        assert_eq!(request.0.in_flight(), 1);
        let shared = Arc::clone(&request.0);
        drop(request);
        assert_eq!(shared.in_flight(), 0);
    }
}
