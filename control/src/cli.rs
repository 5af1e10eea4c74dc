//! The client side of the `praas` tool: calls the control plane's HTTP API and prints human
//! tables, or JSON with `--json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{CreateApp, CreateProcess, ErrorBody, UploadedFile};
use crate::api_token::ApiToken;
use crate::controller::AppView;
use crate::model::{ProcessRecord, ProcessStatus, Resources};

/// Largest invocation output the CLI reads.
const MAX_OUTPUT: u64 = 1 << 30;

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

    fn refusal(&self, status: u16, message: String) -> String {
        if status == 401 && self.authorization.is_none() {
            return format!(
                "{message} (HTTP 401; no token found for {}: run as the user who started the control plane, \
                 or set PRAAS_TOKEN_FILE)",
                self.base
            );
        }
        format!("{message} (HTTP {status})")
    }

    fn finish<T: DeserializeOwned>(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, String> {
        let mut response = response.map_err(|e| format!("cannot reach the control plane at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(|e| format!("reading the answer: {e}"))?;
        if status >= 400 {
            let message = serde_json::from_str::<ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
            return Err(self.refusal(status, message));
        }
        serde_json::from_str(&text).map_err(|e| format!("unexpected answer ({e}): {text}"))
    }

    /// `GET path`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        self.finish(self.authorized(self.agent.get(&self.url(path))).call())
    }

    /// `PUT path` with a JSON body.
    pub fn put<T: DeserializeOwned>(&self, path: &str, body: &impl serde::Serialize) -> Result<T, String> {
        self.finish(self.authorized(self.agent.put(&self.url(path))).send_json(body))
    }

    /// `POST path` with no body.
    pub fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        self.finish(self.authorized(self.agent.post(&self.url(path))).send_empty())
    }

    /// `DELETE path`.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        self.finish(self.authorized(self.agent.delete(&self.url(path))).call())
    }

    /// Invokes a function through the control plane; returns its output bytes.
    pub fn invoke(&self, app: &str, function: &str, process: Option<&str>, input: &[u8]) -> Result<Vec<u8>, String> {
        let mut url = self.url(&format!("/apps/{app}/invoke/{function}"));
        if let Some(process) = process {
            url.push_str(&format!("?process={process}"));
        }
        let mut response = self
            .authorized(self.agent.post(&url))
            .send(input)
            .map_err(|e| format!("cannot reach the control plane at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_OUTPUT)
            .read_to_vec()
            .map_err(|e| format!("reading the answer: {e}"))?;
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
pub fn app_create(api: &Api, name: &str, manifest: &Path, resources: Option<Resources>) -> Result<AppView, String> {
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
) -> Result<AppView, String> {
    let (text, files) = if upload {
        manifest_with_uploads(manifest)?
    } else {
        (std::fs::read_to_string(manifest).map_err(|e| format!("cannot read {}: {e}", manifest.display()))?, Vec::new())
    };
    api.put(&format!("/apps/{name}"), &CreateApp { manifest: text, files, resources, slurm })
}

/// Reads a manifest and the libraries it names: the manifest rewritten (by the TOML library) to
/// name each library by its upload path, its file name (`N/NAME` where two differ in folder).
fn manifest_with_uploads(path: &Path) -> Result<(String, Vec<UploadedFile>), String> {
    let mut manifest = praas_dataplane::Manifest::from_file(path).map_err(|e| e.to_string())?;
    let mut uploads: Vec<(PathBuf, String)> = Vec::new();
    let mut files = Vec::new();
    for function in &mut manifest.functions {
        let source = manifest.base_dir.join(&function.library);
        let source = source
            .canonicalize()
            .map_err(|e| format!("function {:?}: library {}: {e}", function.name, source.display()))?;
        let upload = match uploads.iter().find(|(s, _)| *s == source) {
            Some((_, upload)) => upload.clone(),
            None => {
                let file_name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let taken = |candidate: &str| uploads.iter().any(|(_, u)| u == candidate);
                let upload = if taken(&file_name) {
                    (2..).map(|n| format!("{n}/{file_name}")).find(|c| !taken(c)).unwrap_or_default()
                } else {
                    file_name
                };
                let bytes = std::fs::read(&source).map_err(|e| format!("cannot read {}: {e}", source.display()))?;
                files.push(UploadedFile::new(upload.clone(), &bytes));
                uploads.push((source, upload.clone()));
                upload
            }
        };
        function.library = PathBuf::from(upload);
    }
    let text = manifest.to_toml().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((text, files))
}

/// Creates a process.
pub fn process_create(api: &Api, app: &str, name: &str, resources: Option<Resources>) -> Result<ProcessRecord, String> {
    api.put(&format!("/apps/{app}/processes/{name}"), &CreateProcess { resources })
}

/// Swaps a process out, showing a progress bar while the swap writes (the total is the state
/// size the process last reported).
pub fn process_swap(api: &Api, app: &str, name: &str, show_progress: bool) -> Result<ProcessRecord, String> {
    let before: ProcessRecord = api.get(&format!("/apps/{app}/processes/{name}"))?;
    let total = before.metrics.state_bytes;
    let path = format!("/apps/{app}/processes/{name}/swap");
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
            if let Ok(record) = api.get::<ProcessRecord>(&format!("/apps/{app}/processes/{name}")) {
                if let Some(progress) = record.swap_progress {
                    bar.set_position(progress.min(total));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        swap.join().unwrap_or_else(|_| Err("the swap request panicked".into()))
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

/// Prints any answer as one line of JSON.
pub fn print_json(value: &impl serde::Serialize, out: &mut impl Write) -> std::io::Result<()> {
    let value: Value = serde_json::to_value(value).map_err(std::io::Error::other)?;
    writeln!(out, "{value}")
}
