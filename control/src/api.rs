//! The control plane's REST/JSON API (axum). Every request must present the API's bearer token
//! ([`crate::api_token`]); one without it is answered 401 before its body is read. Every handler
//! runs its control-plane operation on the blocking pool and answers exactly once: the result as
//! JSON, or `{"error": ..., "status": ...}` with 400, 401, 404, 409, 413, 500, 503 or 504.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api_token::ApiToken;
use crate::application::Upload;
use crate::controller::{ApiError, ControlPlane};
use crate::model::Resources;

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

    fn decode(self) -> Result<Upload, ApiError> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.content.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("uploaded file {:?}: invalid base64: {e}", self.path)))?;
        Ok(Upload { path: self.path, bytes })
    }
}

/// Body of `PUT /apps/{app}/processes/{proc}` (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateProcess {
    /// Resources; the application's default when absent.
    #[serde(default)]
    pub resources: Option<Resources>,
}

/// Query of the invoke route.
#[derive(Debug, Deserialize)]
pub struct InvokeQuery {
    /// The process to run on; the control plane picks one when absent.
    pub process: Option<String>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// The HTTP status, repeated.
    pub status: u16,
}

fn error_response(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(ErrorBody { error: e.message, status: e.status })).into_response()
}

async fn blocking<T, F>(f: F) -> Response
where
    T: Serialize + Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(e)) => error_response(e),
        Err(_) => error_response(ApiError::internal("the operation panicked")),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Answers 401 to a request without the API's token, before anything reads its body.
async fn authenticate(State(token): State<ApiToken>, request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).map(|value| value.as_bytes());
    if token.admits(authorization) {
        return next.run(request).await;
    }
    let error = ApiError::unauthorized(
        "this control plane's API needs its bearer token (Authorization: Bearer TOKEN): the praas CLI and \
         SDKs of the user who started it find it by themselves; it is in DATA/api-token",
    );
    let mut response = error_response(error);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"praas\""));
    response
}

/// The API's routes, every one behind the bearer `token`.
pub fn router(plane: ControlPlane, token: ApiToken) -> Router {
    Router::new()
        .route("/apps", get(list_apps))
        .route(
            "/apps/{app}",
            put(create_app).layer(DefaultBodyLimit::max(MAX_APP_BODY)).get(get_app).delete(delete_app),
        )
        .route("/apps/{app}/client-key", get(client_key))
        .route("/apps/{app}/processes", get(list_processes))
        .route("/apps/{app}/processes/{proc}", put(create_process).get(get_process).delete(delete_process))
        .route("/apps/{app}/processes/{proc}/swap", post(swap))
        .route("/apps/{app}/processes/{proc}/swapin", post(swap_in))
        .route("/apps/{app}/processes/{proc}/stop", post(stop))
        .route("/apps/{app}/invoke/{function}", post(invoke))
        .fallback(|| async { error_response(ApiError::not_found("no such route")) })
        .with_state(plane)
        .layer(middleware::from_fn_with_state(token, authenticate))
}

async fn list_apps(State(plane): State<ControlPlane>) -> Response {
    blocking(move || Ok(plane.list_apps())).await
}

async fn create_app(State(plane): State<ControlPlane>, Path(app): Path<String>, body: Bytes) -> Response {
    blocking(move || {
        let request: CreateApp = parse(&body)?;
        let resources = request.resources.unwrap_or_default();
        let uploads = request.files.into_iter().map(UploadedFile::decode).collect::<Result<Vec<_>, _>>()?;
        plane.create_app(&app, &request.manifest, uploads, resources, request.slurm)
    })
    .await
}

async fn get_app(State(plane): State<ControlPlane>, Path(app): Path<String>) -> Response {
    blocking(move || plane.get_app(&app)).await
}

async fn client_key(State(plane): State<ControlPlane>, Path(app): Path<String>) -> Response {
    blocking(move || plane.client_key(&app)).await
}

async fn delete_app(State(plane): State<ControlPlane>, Path(app): Path<String>) -> Response {
    blocking(move || plane.delete_app(&app).map(|()| serde_json::json!({"deleted": app}))).await
}

async fn list_processes(State(plane): State<ControlPlane>, Path(app): Path<String>) -> Response {
    blocking(move || plane.list_processes(&app)).await
}

async fn create_process(
    State(plane): State<ControlPlane>,
    Path((app, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    blocking(move || {
        let request: CreateProcess = if body.is_empty() { CreateProcess::default() } else { parse(&body)? };
        plane.create_process(&app, &name, request.resources)
    })
    .await
}

async fn get_process(State(plane): State<ControlPlane>, Path((app, name)): Path<(String, String)>) -> Response {
    blocking(move || plane.get_process(&app, &name)).await
}

async fn delete_process(State(plane): State<ControlPlane>, Path((app, name)): Path<(String, String)>) -> Response {
    blocking(move || plane.delete_process(&app, &name).map(|()| serde_json::json!({"deleted": name}))).await
}

async fn swap(State(plane): State<ControlPlane>, Path((app, name)): Path<(String, String)>) -> Response {
    blocking(move || plane.swap_out(&app, &name)).await
}

async fn swap_in(State(plane): State<ControlPlane>, Path((app, name)): Path<(String, String)>) -> Response {
    blocking(move || plane.swap_in(&app, &name)).await
}

async fn stop(State(plane): State<ControlPlane>, Path((app, name)): Path<(String, String)>) -> Response {
    blocking(move || plane.stop(&app, &name)).await
}

async fn invoke(
    State(plane): State<ControlPlane>,
    Path((app, function)): Path<(String, String)>,
    Query(query): Query<InvokeQuery>,
    body: Bytes,
) -> Response {
    let result =
        tokio::task::spawn_blocking(move || plane.invoke(&app, &function, query.process.as_deref(), &body)).await;
    match result {
        Ok(Ok(output)) => ([(header::CONTENT_TYPE, "application/octet-stream")], output).into_response(),
        Ok(Err(e)) => error_response(e),
        Err(_) => error_response(ApiError::internal("the invocation panicked")),
    }
}
