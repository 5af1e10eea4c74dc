//! The control plane's REST/JSON API (axum). Every request must present the API's bearer token
//! ([`crate::api_token`]); one without it is answered 401 before its body is read. No handler
//! blocks the async runtime: each runs its control-plane operation on a pool ([`Pools`]) and
//! answers exactly once: the result as JSON, or `{"error": ..., "status": ...}` with 400, 401,
//! 404, 409, 500, 503 or 504 (413 for a body over its route's limit comes from axum's body
//! limit). Routed invocations run on a pool of their own, at most [`Pools::invocations`] at once;
//! lifecycle operations (which wait for processes) at most [`Pools::lifecycle`] at once; past
//! either limit a request is answered 503 at once with the reason, so neither can fill the
//! threads that answer the short routes (`GET /apps` and the like). This module alone says which HTTP
//! status answers which [`ControlError`]; the paths are [`crate::routes`]'. `GET /metrics`
//! answers the Prometheus text format ([`crate::metrics`]), behind the same token; every request,
//! refused ones included, is counted by its route template ([`MatchedPath`]) and status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use praas_dataplane::Status;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api_token::ApiToken;
use crate::application::Upload;
use crate::controller::{ControlError, ControlPlane};
use crate::model::Resources;
use crate::routes;

/// Largest body of `PUT /apps/{app}` (the manifest and its libraries, base64-encoded).
pub const MAX_APP_BODY: usize = crate::application::MAX_UPLOAD_BYTES / 3 * 4 + (1 << 20);

/// Body of `PUT /apps/{app}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateApp {
    /// The functions manifest, TOML text. Each library is a file of `files` (by its relative
    /// path) or lies inside a `--function-root` of the control plane.
    pub manifest: String,
    /// Files uploaded with the manifest: its libraries.
    #[serde(default)]
    pub files: Vec<UploadedFile>,
    /// Default resources of its processes.
    #[serde(default)]
    pub resources: Option<Resources>,
    /// Slurm settings of its processes (Slurm backend, job mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<crate::model::SlurmOptions>,
}

/// A file uploaded with a manifest.
#[derive(Clone, Serialize, Deserialize)]
pub struct UploadedFile {
    /// Its path relative to the application's folder, as the manifest names it.
    pub path: String,
    /// Its content, base64 (standard alphabet, padded).
    pub content: String,
}

impl std::fmt::Debug for UploadedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadedFile").field("path", &self.path).field("base64_len", &self.content.len()).finish()
    }
}

impl UploadedFile {
    /// A file to upload.
    pub fn new(path: String, bytes: &[u8]) -> Self {
        use base64::Engine;
        Self { path, content: base64::engine::general_purpose::STANDARD.encode(bytes) }
    }

    fn decode(self) -> Result<Upload, HttpError> {
        use base64::Engine;
        match base64::engine::general_purpose::STANDARD.decode(self.content.as_bytes()) {
            Ok(bytes) => Ok(Upload { path: self.path, bytes }),
            Err(source) => Err(HttpError::InvalidBase64 { path: self.path, source }),
        }
    }
}

/// Body of `PUT /apps/{app}/processes/{proc}` (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateProcess {
    /// Resources; the application's default when absent.
    #[serde(default)]
    pub resources: Option<Resources>,
}

/// Query of the invoke route ([`routes::INVOKE_PROCESS`] names its one parameter).
#[derive(Debug, Deserialize)]
pub struct InvokeQuery {
    /// The process to run on; the control plane picks one when absent.
    pub process: Option<String>,
}

/// Query of `DELETE .../processes/{proc}`.
#[derive(Debug, Default, Deserialize)]
pub struct DeleteQuery {
    /// Delete also a process whose snapshot was never restored (its state goes with it).
    #[serde(default)]
    pub force: bool,
}

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// The HTTP status, repeated.
    pub status: u16,
}

/// Why a request is answered with an error: the control plane's, or one of the API's own.
#[derive(Debug, Error)]
enum HttpError {
    /// The control plane refused or failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The body is not the JSON the route takes.
    #[error("invalid JSON body: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// An uploaded file's content is not base64.
    #[error("uploaded file {path:?}: invalid base64: {source}")]
    InvalidBase64 {
        /// The file's path.
        path: String,
        /// The decoder's error.
        #[source]
        source: base64::DecodeError,
    },
    /// The request did not present the API's token.
    #[error(
        "this control plane's API needs its bearer token (Authorization: Bearer TOKEN): the praas CLI and \
         SDKs of the user who started it find it by themselves; it is in DATA/api-token"
    )]
    Unauthorized,
    /// No route has the request's path.
    #[error("no such route")]
    NoRoute,
    /// As many requests of its kind as its limit are in flight.
    #[error("{limit} {what} are in flight, as many as this control plane takes at once ({flag}): try again later")]
    Busy {
        /// What is in flight (`routed invocations`, `lifecycle operations`).
        what: &'static str,
        /// The limit.
        limit: usize,
        /// The flag that sets it.
        flag: &'static str,
    },
    /// The handler's blocking task panicked (`operation` or `invocation`).
    #[error("the {0} panicked")]
    Panicked(&'static str),
    /// The metrics could not be encoded.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

impl HttpError {
    /// The HTTP status that answers this error.
    fn status(&self) -> StatusCode {
        match self {
            Self::Control(e) => control_status(e),
            Self::InvalidJson(_) | Self::InvalidBase64 { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Panicked(_) | Self::Metrics(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The HTTP status of each control-plane error.
fn control_status(e: &ControlError) -> StatusCode {
    match e {
        // A full or failing disk: nothing changed, retry once space is back.
        e if e.disk_full() => StatusCode::SERVICE_UNAVAILABLE,
        ControlError::NoApplication { .. } | ControlError::NoProcess { .. } => StatusCode::NOT_FOUND,
        ControlError::InvalidName { .. } | ControlError::Resources(_) | ControlError::Deploy(_) => {
            StatusCode::BAD_REQUEST
        }
        ControlError::AppExists { .. }
        | ControlError::AppHasProcesses { .. }
        | ControlError::ProcessExists { .. }
        | ControlError::InvalidTransition { .. }
        | ControlError::UnrestoredSnapshot { .. } => StatusCode::CONFLICT,
        ControlError::Unsettled { .. }
        | ControlError::Capacity(_)
        | ControlError::Launch(_)
        | ControlError::NoControlChannel { .. }
        | ControlError::SwapFailed { .. }
        | ControlError::LostWhileSwapping { .. }
        | ControlError::NoDataAddress { .. }
        | ControlError::Unreachable { .. }
        | ControlError::StayedBusy { .. }
        | ControlError::SwapInFailed { .. }
        | ControlError::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ControlError::Function { status, .. } => function_status(*status),
        ControlError::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
        ControlError::Store(_)
        | ControlError::PrivateFiles(_)
        | ControlError::Install(_)
        | ControlError::SwapStore(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The HTTP status of a function's (or its process's) error answer.
fn function_status(status: Status) -> StatusCode {
    match status {
        Status::UnknownFunction | Status::NotFound => StatusCode::NOT_FOUND,
        Status::InvalidArgument | Status::TooLarge | Status::Malformed => StatusCode::BAD_REQUEST,
        Status::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        Status::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_response(e: HttpError) -> Response {
    let status = e.status();
    let mut response = (status, Json(ErrorBody { error: e.to_string(), status: status.as_u16() })).into_response();
    if matches!(e, HttpError::Busy { .. }) {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

/// The whole answer (HTTP/1.1, then closed) to a connection past the API's connection limit
/// (`limit` open): 503 with the reason, written without reading the request.
pub fn connection_refusal(limit: usize) -> Vec<u8> {
    let status = StatusCode::SERVICE_UNAVAILABLE;
    let error = format!(
        "{limit} connections are open, as many as this control plane's API takes at once \
         (--max-http-connections): try again later"
    );
    let body = serde_json::to_vec(&ErrorBody { error, status: status.as_u16() }).unwrap_or_default();
    let mut answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\n\
         connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

/// Where the API's handlers run their blocking work, and how much of it at once: routed
/// invocations on a pool of their own (at most [`Pools::invocations`] in flight, each holding a
/// thread while its process works); lifecycle operations (create, swap, swap in, stop, delete:
/// they wait for processes) at most [`Pools::lifecycle`] at once; everything else (short reads
/// and writes of the registry and the database) on the runtime's blocking pool, which neither
/// can fill.
#[derive(Debug)]
pub struct Pools {
    invocation_pool: tokio::runtime::Handle,
    /// Keeps the invocation pool's runtime alive; shut down without waiting when dropped.
    invocation_runtime: Option<tokio::runtime::Runtime>,
    invocation_slots: Arc<Semaphore>,
    invocations: usize,
    lifecycle_slots: Arc<Semaphore>,
    lifecycle: usize,
    /// Where the requests in flight are counted.
    metrics: crate::metrics::ControlMetrics,
}

impl Pools {
    /// At most `invocations` routed invocations and `lifecycle` lifecycle operations in flight,
    /// counted in `metrics`.
    pub fn new(invocations: usize, lifecycle: usize, metrics: crate::metrics::ControlMetrics) -> std::io::Result<Self> {
        let invocations = invocations.max(1);
        let lifecycle = lifecycle.max(1);
        // Only its blocking pool runs anything: one thread per invocation in flight, idle ones
        // gone after 10 s.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(invocations)
            .thread_name("praas-invoke")
            .thread_keep_alive(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Self {
            invocation_pool: runtime.handle().clone(),
            invocation_runtime: Some(runtime),
            invocation_slots: Arc::new(Semaphore::new(invocations)),
            invocations,
            lifecycle_slots: Arc::new(Semaphore::new(lifecycle)),
            lifecycle,
            metrics,
        })
    }

    /// Routed invocations in flight at most (`--max-invocations`).
    pub fn invocations(&self) -> usize {
        self.invocations
    }

    /// Lifecycle operations in flight at most (`--max-lifecycle`).
    pub fn lifecycle(&self) -> usize {
        self.lifecycle
    }

    fn invocation_slot(&self) -> Result<OwnedSemaphorePermit, HttpError> {
        Arc::clone(&self.invocation_slots).try_acquire_owned().map_err(|_| HttpError::Busy {
            what: "routed invocations",
            limit: self.invocations,
            flag: "--max-invocations",
        })
    }

    fn lifecycle_slot(&self) -> Result<OwnedSemaphorePermit, HttpError> {
        Arc::clone(&self.lifecycle_slots).try_acquire_owned().map_err(|_| HttpError::Busy {
            what: "lifecycle operations",
            limit: self.lifecycle,
            flag: "--max-lifecycle",
        })
    }
}

impl Drop for Pools {
    fn drop(&mut self) {
        if let Some(runtime) = self.invocation_runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What the API's handlers share: the control plane and the pools they run on.
#[derive(Debug, Clone)]
struct ApiState {
    plane: ControlPlane,
    pools: Arc<Pools>,
}

impl FromRef<ApiState> for ControlPlane {
    fn from_ref(state: &ApiState) -> Self {
        state.plane.clone()
    }
}

impl FromRef<ApiState> for Arc<Pools> {
    fn from_ref(state: &ApiState) -> Self {
        Arc::clone(&state.pools)
    }
}

/// Runs a short operation on the runtime's blocking pool; answers its result as JSON.
async fn blocking<T, E, F>(f: F) -> Response
where
    T: Serialize + Send + 'static,
    E: Into<HttpError> + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(e)) => error_response(e.into()),
        Err(_) => error_response(HttpError::Panicked("operation")),
    }
}

/// [`blocking`] for a lifecycle operation: 503 at once when [`Pools::lifecycle`] are in flight.
async fn lifecycle<T, E, F>(pools: &Pools, f: F) -> Response
where
    T: Serialize + Send + 'static,
    E: Into<HttpError> + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    let slot = match pools.lifecycle_slot() {
        Ok(slot) => slot,
        Err(busy) => return error_response(busy),
    };
    let held = pools.metrics.begin_request("lifecycle");
    // The slot is held until the operation ends, even if its client is gone before.
    blocking(move || {
        let result = f();
        drop((slot, held));
        result
    })
    .await
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(body).map_err(HttpError::InvalidJson)
}

/// Answers 401 to a request without the API's token, before anything reads its body.
async fn authenticate(State(token): State<ApiToken>, request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).map(|value| value.as_bytes());
    if token.admits(authorization) {
        return next.run(request).await;
    }
    let mut response = error_response(HttpError::Unauthorized);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"praas\""));
    response
}

/// The route label of requests no route matched.
const UNMATCHED: &str = "unmatched";

/// Counts every request by method, route template and the status it was answered with; it runs
/// outside [`authenticate`], so refused requests count too.
async fn count_requests(State(plane): State<ControlPlane>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_owned());
    let response = next.run(request).await;
    let route = route.as_deref().unwrap_or(UNMATCHED);
    plane.metrics().count_http_request(method.as_str(), route, response.status().as_u16());
    response
}

/// The API's routes, every one behind the bearer `token`, their work on `pools`.
pub fn router(plane: ControlPlane, token: ApiToken, pools: Arc<Pools>) -> Router {
    let counted = plane.clone();
    Router::new()
        .route(routes::METRICS, get(metrics))
        .route(routes::APPS, get(list_apps))
        .route(routes::APP, put(create_app).layer(DefaultBodyLimit::max(MAX_APP_BODY)).get(get_app).delete(delete_app))
        .route(routes::CLIENT_KEY, get(client_key))
        .route(routes::PROCESSES, get(list_processes))
        .route(routes::PROCESS, put(create_process).get(get_process).delete(delete_process))
        .route(routes::SWAP, post(swap))
        .route(routes::SWAP_IN, post(swap_in))
        .route(routes::STOP, post(stop))
        .route(routes::STATS, get(stats))
        .route(routes::INVOKE, post(invoke))
        .fallback(|| async { error_response(HttpError::NoRoute) })
        .with_state(ApiState { plane, pools })
        .layer(middleware::from_fn_with_state(token, authenticate))
        .layer(middleware::from_fn_with_state(counted, count_requests))
}

async fn metrics(State(plane): State<ControlPlane>) -> Response {
    match tokio::task::spawn_blocking(move || plane.metrics_text()).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Ok(Err(e)) => error_response(e.into()),
        Err(_) => error_response(HttpError::Panicked("operation")),
    }
}

async fn list_apps(State(plane): State<ControlPlane>) -> Response {
    blocking(move || Ok::<_, HttpError>(plane.list_apps())).await
}

async fn create_app(
    State(plane): State<ControlPlane>,
    State(pools): State<Arc<Pools>>,
    Path(app): Path<String>,
    body: Bytes,
) -> Response {
    lifecycle(&pools, move || {
        let request: CreateApp = parse(&body)?;
        let resources = request.resources.unwrap_or_default();
        let uploads = request.files.into_iter().map(UploadedFile::decode).collect::<Result<Vec<_>, _>>()?;
        Ok::<_, HttpError>(plane.create_app(&app, &request.manifest, uploads, resources, request.slurm)?)
    })
    .await
}

async fn get_app(State(plane): State<ControlPlane>, Path(app): Path<String>) -> Response {
    blocking(move || plane.get_app(&app)).await
}

async fn client_key(State(plane): State<ControlPlane>, Path(app): Path<String>) -> Response {
    blocking(move || plane.client_key(&app)).await
}

async fn delete_app(
    State(plane): State<ControlPlane>,
    State(pools): State<Arc<Pools>>,
    Path(app): Path<String>,
) -> Response {
    lifecycle(&pools, move || plane.delete_app(&app).map(|()| serde_json::json!({"deleted": app}))).await
}

async fn list_processes(State(plane): State<ControlPlane>, Path(app): Path<String>) -> Response {
    blocking(move || plane.list_processes(&app)).await
}

async fn create_process(
    State(plane): State<ControlPlane>,
    State(pools): State<Arc<Pools>>,
    Path((app, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    lifecycle(&pools, move || {
        let request: CreateProcess = if body.is_empty() { CreateProcess::default() } else { parse(&body)? };
        Ok::<_, HttpError>(plane.create_process(&app, &name, request.resources)?)
    })
    .await
}

async fn get_process(State(plane): State<ControlPlane>, Path((app, name)): Path<(String, String)>) -> Response {
    blocking(move || plane.get_process(&app, &name)).await
}

async fn delete_process(
    State(plane): State<ControlPlane>,
    State(pools): State<Arc<Pools>>,
    Path((app, name)): Path<(String, String)>,
    Query(query): Query<DeleteQuery>,
) -> Response {
    lifecycle(&pools, move || {
        plane.delete_process(&app, &name, query.force).map(|()| serde_json::json!({"deleted": name}))
    })
    .await
}

async fn swap(
    State(plane): State<ControlPlane>,
    State(pools): State<Arc<Pools>>,
    Path((app, name)): Path<(String, String)>,
) -> Response {
    lifecycle(&pools, move || plane.swap_out(&app, &name)).await
}

async fn swap_in(
    State(plane): State<ControlPlane>,
    State(pools): State<Arc<Pools>>,
    Path((app, name)): Path<(String, String)>,
) -> Response {
    lifecycle(&pools, move || plane.swap_in(&app, &name)).await
}

async fn stats(State(plane): State<ControlPlane>, Path((app, name)): Path<(String, String)>) -> Response {
    blocking(move || plane.function_stats(&app, &name)).await
}

async fn stop(
    State(plane): State<ControlPlane>,
    State(pools): State<Arc<Pools>>,
    Path((app, name)): Path<(String, String)>,
) -> Response {
    lifecycle(&pools, move || plane.stop(&app, &name)).await
}

/// A routed invocation, on the invocation pool: 503 at once when [`Pools::invocations`] are in
/// flight. Its slot is held until the invocation ends, even if its client is gone before.
async fn invoke(
    State(plane): State<ControlPlane>,
    State(pools): State<Arc<Pools>>,
    Path((app, function)): Path<(String, String)>,
    Query(query): Query<InvokeQuery>,
    body: Bytes,
) -> Response {
    let slot = match pools.invocation_slot() {
        Ok(slot) => slot,
        Err(busy) => return error_response(busy),
    };
    let held = pools.metrics.begin_request("invocation");
    let result = pools
        .invocation_pool
        .spawn_blocking(move || {
            let output = plane.invoke(&app, &function, query.process.as_deref(), &body);
            drop((slot, held));
            output
        })
        .await;
    match result {
        Ok(Ok(output)) => ([(header::CONTENT_TYPE, "application/octet-stream")], output).into_response(),
        Ok(Err(e)) => error_response(e.into()),
        Err(_) => error_response(HttpError::Panicked("invocation")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Operation;
    use crate::model::ProcessStatus;

    fn status_of(e: impl Into<HttpError>) -> u16 {
        e.into().status().as_u16()
    }

    #[test]
    fn a_connection_past_the_limit_gets_a_whole_503_answer() {
        let answer = String::from_utf8(connection_refusal(30)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        let body: ErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(body.status, 503);
        assert!(body.error.starts_with("30 connections are open"), "{}", body.error);
    }

    #[test]
    fn each_error_answers_with_its_status_and_message() {
        let (app, name) = ("a".to_owned(), "p".to_owned());
        let conflict = ControlError::InvalidTransition {
            app: app.clone(),
            name: name.clone(),
            status: ProcessStatus::Allocated,
            operation: Operation::SwapIn,
        };
        assert_eq!(conflict.to_string(), "process a/p is ALLOCATED: only a SWAPPED_OUT process can swap in");
        assert_eq!(status_of(conflict), 409);
        assert_eq!(status_of(ControlError::NoApplication { app: app.clone() }), 404);
        assert_eq!(status_of(ControlError::NoProcess { app: app.clone(), name: name.clone() }), 404);
        let invalid = ControlError::InvalidName { kind: "process", name: "-x".into() };
        assert_eq!(invalid.to_string(), format!("invalid process name \"-x\": {}", crate::model::NAME_RULE));
        assert_eq!(status_of(invalid), 400);
        assert_eq!(status_of(ControlError::Resources(crate::model::ResourceError::NoCpu)), 400);
        let timed_out = ControlError::TimedOut {
            app: app.clone(),
            name: name.clone(),
            status: ProcessStatus::SwappingIn,
            after: std::time::Duration::from_secs(1),
        };
        assert_eq!(status_of(timed_out), 504);
        assert_eq!(status_of(ControlError::StayedBusy { app: app.clone(), name: name.clone() }), 503);
        // A damaged and a missing snapshot: one answer.
        let failed = ControlError::SwapInFailed { app: app.clone(), name: name.clone(), reason: "r".into() };
        assert_eq!(status_of(failed), 503);
        let unrestored = ControlError::UnrestoredSnapshot {
            app: app.clone(),
            name: name.clone(),
            status: ProcessStatus::SwappedOut,
        };
        assert!(unrestored.to_string().contains("?force=true"), "{unrestored}");
        assert_eq!(status_of(unrestored), 409);
        // A database or data folder that cannot be written (full disk): 503 with the reason.
        let closed = crate::store::StoreError::Closed { last: "I/O error: No space left on device".into() };
        let unavailable = ControlError::from(closed);
        assert!(unavailable.to_string().starts_with("control plane database unavailable: "), "{unavailable}");
        assert_eq!(status_of(unavailable), 503);
        let corrupt = serde_json::from_slice::<u8>(b"x").unwrap_err();
        assert_eq!(status_of(ControlError::from(crate::store::StoreError::Record(corrupt))), 500);
        let file = |kind: std::io::ErrorKind| {
            ControlError::PrivateFiles(crate::private_fs::PrivateFileError { path: "f".into(), source: kind.into() })
        };
        assert_eq!(status_of(file(std::io::ErrorKind::StorageFull)), 503);
        assert_eq!(status_of(file(std::io::ErrorKind::PermissionDenied)), 500);
        let function = |status| ControlError::Function { status, message: "m".into() };
        assert_eq!(function(Status::UnknownFunction).to_string(), "unknown function: m");
        for (status, http) in [
            (Status::UnknownFunction, 404),
            (Status::NotFound, 404),
            (Status::InvalidArgument, 400),
            (Status::TooLarge, 400),
            (Status::Malformed, 400),
            (Status::Overloaded, 503),
            (Status::Timeout, 504),
            (Status::FunctionFailed, 500),
            (Status::Unavailable, 500),
        ] {
            assert_eq!(status_of(function(status)), http, "{status:?}");
        }
        // The outcome each error is counted under in the metrics.
        assert_eq!(function(Status::FunctionFailed).outcome(), "function_failed");
        assert_eq!(function(Status::UnknownFunction).outcome(), "unknown_function");
        assert_eq!(ControlError::NoApplication { app: "x".into() }.outcome(), "no_application");
        assert_eq!(ControlError::StayedBusy { app: "a".into(), name: "p".into() }.outcome(), "unavailable");
        assert_eq!(status_of(HttpError::Unauthorized), 401);
        assert_eq!(status_of(HttpError::NoRoute), 404);
        assert_eq!(HttpError::Panicked("invocation").to_string(), "the invocation panicked");
        let busy = HttpError::Busy { what: "routed invocations", limit: 8, flag: "--max-invocations" };
        assert_eq!(
            busy.to_string(),
            "8 routed invocations are in flight, as many as this control plane takes at once (--max-invocations): \
             try again later"
        );
        assert_eq!(status_of(busy), 503);
        let json = serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err();
        assert_eq!(status_of(HttpError::InvalidJson(json)), 400);
    }
}
