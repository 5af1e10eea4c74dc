//! The client side of the `praas` tool: calls the control plane's HTTP API and prints human
//! tables, or JSON with `--json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use praas_dataplane::function::{Language, LoadError, ManifestError, PythonModule};
use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;

use crate::api::{CreateApp, CreateProcess, ErrorBody, UploadedFile};
use crate::api_token::ApiToken;
use crate::controller::AppView;
use crate::model::{ProcessRecord, ProcessStatus, Resources};
use crate::routes;

/// Largest invocation output the CLI reads.
const MAX_OUTPUT: u64 = 1 << 30;

/// Why a call of the control plane's API failed, or its request could not be made.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ApiCallError {
    /// No answer: the control plane is not there, or the connection broke.
    #[error("cannot reach the control plane at {base}: {source}")]
    Unreachable {
        /// The API's address (`http://HOST:PORT`).
        base: String,
        /// The HTTP client's error.
        #[source]
        source: ureq::Error,
    },
    /// The answer could not be read.
    #[error("reading the answer: {0}")]
    Read(#[source] ureq::Error),
    /// The control plane refused the request: its HTTP status and message.
    #[error("{message} (HTTP {status}{})", token_hint(.no_token_for))]
    Refused {
        /// The HTTP status (400, 401, 404, 409, 500, 503, 504, ...).
        status: u16,
        /// The control plane's message.
        message: String,
        /// The API's address, when a 401 came to a request without a token (the message then
        /// says where tokens come from).
        no_token_for: Option<String>,
    },
    /// The answer is not the JSON expected.
    #[error("unexpected answer ({source}): {text}")]
    Answer {
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
        /// The answer's text.
        text: String,
    },
    /// The manifest could not be read or parsed.
    #[error(transparent)]
    Manifest(LoadError),
    /// The manifest could not be written back for the upload.
    #[error("{}: {source}", path.display())]
    ManifestWrite {
        /// The manifest file.
        path: PathBuf,
        /// The TOML library's error.
        #[source]
        source: ManifestError,
    },
    /// A function's library is not found.
    #[error("function {function:?}: library {}: {source}", path.display())]
    Library {
        /// The function.
        function: String,
        /// The library's path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A Python function's module is a module name: only files can be uploaded.
    #[error(
        "function {function:?}: module {module:?} is a module name: name the module's .py file (the control plane \
         loads only files uploaded with the manifest or inside a --function-root)"
    )]
    ModuleName {
        /// The function.
        function: String,
        /// The module as the manifest names it.
        module: String,
    },
    /// A Python function's module file is not found.
    #[error("function {function:?}: module {}: {source}", path.display())]
    Module {
        /// The function.
        function: String,
        /// The module file's path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A file (the manifest, a library) could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The thread sending the swap request panicked.
    #[error("the swap request panicked")]
    SwapPanicked,
}

impl ApiCallError {
    /// The HTTP status of a refusal (none for the other errors).
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What a 401 without a token adds after the status.
fn token_hint(no_token_for: &Option<String>) -> String {
    match no_token_for {
        Some(base) => format!(
            "; no token found for {base}: run as the user who started the control plane, or set PRAAS_TOKEN_FILE"
        ),
        None => String::new(),
    }
}

/// A connection to a control plane's API.
#[derive(Debug)]
pub struct Api {
    base: String,
    agent: ureq::Agent,
    /// `Bearer TOKEN`, when a token was found.
    authorization: Option<String>,
}

impl Api {
    /// An API client for `base` (`http://HOST:PORT`) with the token its control plane published
    /// for this user, or `PRAAS_TOKEN` / `PRAAS_TOKEN_FILE` ([`crate::api_token::discover`]);
    /// every request times out after `timeout`.
    pub fn new(base: &str, timeout: Duration) -> Self {
        Self::with_token(base, timeout, crate::api_token::discover(base))
    }

    /// An API client presenting `token` (none: requests go without one and are refused).
    pub fn with_token(base: &str, timeout: Duration, token: Option<ApiToken>) -> Self {
        let agent =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into();
        let authorization = token.map(|t| format!("Bearer {}", t.as_str()));
        Self { base: base.trim_end_matches('/').to_owned(), agent, authorization }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(value) => request.header("Authorization", value),
            None => request,
        }
    }

    fn refusal(&self, status: u16, message: String) -> ApiCallError {
        let no_token_for = (status == 401 && self.authorization.is_none()).then(|| self.base.clone());
        ApiCallError::Refused { status, message, no_token_for }
    }

    fn unreachable(&self, source: ureq::Error) -> ApiCallError {
        ApiCallError::Unreachable { base: self.base.clone(), source }
    }

    /// The body of a successful answer as text; a refusal as the error it names.
    fn text_of(&self, response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<String, ApiCallError> {
        let mut response = response.map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(ApiCallError::Read)?;
        if status >= 400 {
            let message = serde_json::from_str::<ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
            return Err(self.refusal(status, message));
        }
        Ok(text)
    }

    fn finish<T: DeserializeOwned>(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ApiCallError> {
        let text = self.text_of(response)?;
        serde_json::from_str(&text).map_err(|source| ApiCallError::Answer { source, text })
    }

    /// `GET path` (a path of [`crate::routes`]).
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiCallError> {
        self.finish(self.authorized(self.agent.get(&self.url(path))).call())
    }

    /// `PUT path` with a JSON body.
    pub fn put<T: DeserializeOwned>(&self, path: &str, body: &impl serde::Serialize) -> Result<T, ApiCallError> {
        self.finish(self.authorized(self.agent.put(&self.url(path))).send_json(body))
    }

    /// `POST path` with no body.
    pub fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiCallError> {
        self.finish(self.authorized(self.agent.post(&self.url(path))).send_empty())
    }

    /// `DELETE path`.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiCallError> {
        self.finish(self.authorized(self.agent.delete(&self.url(path))).call())
    }

    /// `GET /metrics`: every metric of the control plane, in the Prometheus text format.
    pub fn metrics(&self) -> Result<String, ApiCallError> {
        self.text_of(self.authorized(self.agent.get(&self.url(&routes::metrics()))).call())
    }

    /// Invokes a function through the control plane; returns its output bytes.
    pub fn invoke(
        &self,
        app: &str,
        function: &str,
        process: Option<&str>,
        input: &[u8],
    ) -> Result<Vec<u8>, ApiCallError> {
        let url = self.url(&routes::invoke(app, function, process));
        let mut response = self.authorized(self.agent.post(&url)).send(input).map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let body = response.body_mut().with_config().limit(MAX_OUTPUT).read_to_vec().map_err(ApiCallError::Read)?;
        if status >= 400 {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(self.refusal(status, message));
        }
        Ok(body)
    }
}

/// Creates an application from a manifest file, uploading the libraries it names.
pub fn app_create(
    api: &Api,
    name: &str,
    manifest: &Path,
    resources: Option<Resources>,
) -> Result<AppView, ApiCallError> {
    app_create_with(api, name, manifest, resources, None, true)
}

/// Creates an application with Slurm settings for its processes. With `upload`, every library
/// the manifest names (relative paths against the manifest's folder) is read here and uploaded
/// with it; without, the manifest goes as it is, for libraries inside a `--function-root` of the
/// control plane.
pub fn app_create_with(
    api: &Api,
    name: &str,
    manifest: &Path,
    resources: Option<Resources>,
    slurm: Option<crate::model::SlurmOptions>,
    upload: bool,
) -> Result<AppView, ApiCallError> {
    let (text, files) = if upload {
        manifest_with_uploads(manifest)?
    } else {
        let read = std::fs::read_to_string(manifest);
        (read.map_err(|source| ApiCallError::Io { path: manifest.to_owned(), source })?, Vec::new())
    };
    api.put(&routes::app(name), &CreateApp { manifest: text, files, resources, slurm })
}

/// Reads a manifest and the libraries it names: the manifest rewritten (by the TOML library) to
/// name each library by its upload path, its file name (`N/NAME` where two differ in folder).
fn manifest_with_uploads(path: &Path) -> Result<(String, Vec<UploadedFile>), ApiCallError> {
    let mut manifest = praas_dataplane::Manifest::from_file(path).map_err(ApiCallError::Manifest)?;
    let mut uploads: Vec<(PathBuf, String)> = Vec::new();
    let mut files = Vec::new();
    for function in &mut manifest.functions {
        // The file of the function's code: its library, or its Python module's source.
        let python = function.language == Language::Python;
        let named = if python {
            let module = function.module.clone().unwrap_or_default();
            match PythonModule::parse(&module) {
                Some(PythonModule::File(file)) => file.to_path_buf(),
                _ => return Err(ApiCallError::ModuleName { function: function.name.clone(), module }),
            }
        } else {
            function.library.clone()
        };
        let source = manifest.base_dir.join(&named);
        let source = source.canonicalize().map_err(|e| {
            let (function, path) = (function.name.clone(), source.clone());
            if python {
                ApiCallError::Module { function, path, source: e }
            } else {
                ApiCallError::Library { function, path, source: e }
            }
        })?;
        let upload = match uploads.iter().find(|(s, _)| *s == source) {
            Some((_, upload)) => upload.clone(),
            None => {
                let mut file_name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if python && !file_name.ends_with(".py") {
                    // Still a file to the control plane (a path with a folder), not a module name.
                    file_name = format!("modules/{file_name}");
                }
                let taken = |candidate: &str| uploads.iter().any(|(_, u)| u == candidate);
                let upload = if taken(&file_name) {
                    (2..).map(|n| format!("{n}/{file_name}")).find(|c| !taken(c)).unwrap_or_default()
                } else {
                    file_name
                };
                let bytes = std::fs::read(&source).map_err(|e| ApiCallError::Io { path: source.clone(), source: e })?;
                files.push(UploadedFile::new(upload.clone(), &bytes));
                uploads.push((source, upload.clone()));
                upload
            }
        };
        if python {
            function.module = Some(upload);
        } else {
            function.library = PathBuf::from(upload);
        }
    }
    let text = manifest.to_toml().map_err(|source| ApiCallError::ManifestWrite { path: path.to_owned(), source })?;
    Ok((text, files))
}

/// Creates a process.
pub fn process_create(
    api: &Api,
    app: &str,
    name: &str,
    resources: Option<Resources>,
) -> Result<ProcessRecord, ApiCallError> {
    api.put(&routes::process(app, name), &CreateProcess { resources })
}

/// Swaps a process out, showing a progress bar while the swap writes (the total is the state
/// size the process last reported).
pub fn process_swap(api: &Api, app: &str, name: &str, show_progress: bool) -> Result<ProcessRecord, ApiCallError> {
    let record = routes::process(app, name);
    let before: ProcessRecord = api.get(&record)?;
    let total = before.metrics.state_bytes;
    let path = routes::swap(app, name);
    if !show_progress || total < (64 << 20) {
        return api.post(&path);
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("swapping out {bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let result = std::thread::scope(|scope| {
        let swap = scope.spawn(|| api.post::<ProcessRecord>(&path));
        while !swap.is_finished() {
            if let Ok(record) = api.get::<ProcessRecord>(&record) {
                if let Some(progress) = record.swap_progress {
                    bar.set_position(progress.min(total));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        swap.join().unwrap_or(Err(ApiCallError::SwapPanicked))
    });
    bar.finish_and_clear();
    result
}

/// Prints applications as a table.
pub fn print_apps(apps: &[AppView], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{:<20} {:>6} {:>10} {:>9}  FUNCTIONS", "APPLICATION", "VCPUS", "MEMORY_MB", "PROCESSES")?;
    for app in apps {
        writeln!(
            out,
            "{:<20} {:>6} {:>10} {:>9}  {}",
            app.name,
            app.resources.vcpus,
            app.resources.memory_mb,
            app.processes,
            app.functions.join(",")
        )?;
    }
    Ok(())
}

/// Prints processes as a table.
pub fn print_processes(processes: &[ProcessRecord], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<16} {:<13} {:<22} {:>11} {:>12}  LAST SWAP",
        "PROCESS", "STATUS", "ADDRESS", "INVOCATIONS", "STATE_BYTES"
    )?;
    for p in processes {
        let swap = p.swap.as_ref().map(|s| format!("{} B in {:.3} s", s.bytes, s.secs)).unwrap_or_default();
        let status = match (&p.error, p.status) {
            (Some(_), ProcessStatus::Failure) => "FAILURE".to_owned(),
            _ => p.status.name().to_owned(),
        };
        writeln!(
            out,
            "{:<16} {:<13} {:<22} {:>11} {:>12}  {}",
            p.name,
            status,
            p.data_addr.as_deref().unwrap_or("-"),
            p.metrics.invocations,
            p.metrics.state_bytes,
            swap
        )?;
        if let Some(rdma) = &p.rdma_addr {
            writeln!(out, "{:<16} rdma://{rdma}", "")?;
        }
        if let Some(error) = &p.error {
            writeln!(out, "{:<16} error: {error}", "")?;
        }
    }
    Ok(())
}

/// A latency in the unit that reads best: ns, us, ms or s.
fn latency(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns} ns"),
        10_000..=999_999 => format!("{:.1} us", ns as f64 / 1e3),
        1_000_000..=9_999_999_999 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

/// Prints the `praas process stats` table: a row per function, since start and over the last
/// metrics interval.
pub fn print_function_stats(stats: &[crate::metrics::FunctionStats], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<20} {:>10} {:>8} {:>10} {:>10} {:>10}  {:>9} {:>10} {:>10}",
        "FUNCTION", "COUNT", "ERRORS", "P50", "P99", "MAX", "INTERVAL", "P50", "P99"
    )?;
    for f in stats {
        let errors: u64 = f.total.errors.values().sum();
        writeln!(
            out,
            "{:<20} {:>10} {:>8} {:>10} {:>10} {:>10}  {:>9} {:>10} {:>10}",
            f.function,
            f.total.count,
            errors,
            latency(f.total.p50_ns),
            latency(f.total.p99_ns),
            latency(f.total.max_ns),
            f.interval.count,
            latency(f.interval.p50_ns),
            latency(f.interval.p99_ns),
        )?;
        for (status, n) in &f.total.errors {
            writeln!(out, "{:<20} {n} {status}", "")?;
        }
    }
    Ok(())
}

/// Prints any answer as one line of JSON.
pub fn print_json(value: &impl serde::Serialize, out: &mut impl Write) -> std::io::Result<()> {
    let value: Value = serde_json::to_value(value).map_err(std::io::Error::other)?;
    writeln!(out, "{value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_before() {
        let api = Api::with_token("http://127.0.0.1:9/", Duration::from_secs(1), None);
        let refused = api.refusal(409, "process a/p exists (ALLOCATED)".into());
        assert_eq!(refused.to_string(), "process a/p exists (ALLOCATED) (HTTP 409)");
        assert_eq!(refused.status(), Some(409));
        assert_eq!(
            api.refusal(401, "needs its token".into()).to_string(),
            "needs its token (HTTP 401; no token found for http://127.0.0.1:9: run as the user who started the \
             control plane, or set PRAAS_TOKEN_FILE)"
        );
        let token = Api::with_token("http://h:1", Duration::from_secs(1), Some(ApiToken::generate()));
        assert_eq!(token.refusal(401, "wrong token".into()).to_string(), "wrong token (HTTP 401)");
        assert_eq!(ApiCallError::SwapPanicked.status(), None);
    }
}
