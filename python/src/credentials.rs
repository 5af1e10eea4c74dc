//! `praas.Credentials`: what a client presents to a process started with `--client-auth`.

use std::path::PathBuf;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

/// The name a client goes by in the process's logs unless told otherwise.
const DEFAULT_NAME: &str = "python";

/// The environment variable `praas invoke` reads credentials from (`APP:KEY`).
const ENV: &str = "PRAAS_CLIENT_CREDENTIALS";

/// An application's client credentials: its name, the client key (`praas app client-key APP`,
/// `ControlPlane.client_key`) and the name this client goes by. The key never shows in `repr`.
#[pyclass(module = "praas._native", frozen, eq, skip_from_py_object)]
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) inner: praas_wire::auth::Credentials,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

/// `APP:KEY` as credentials named `name`.
fn parse(text: &str, name: String) -> PyResult<Credentials> {
    match text.trim().split_once(':') {
        Some((app, key)) if !app.is_empty() && !key.is_empty() => Ok(Credentials::build(app.into(), key.into(), name)),
        _ => Err(PyValueError::new_err("credentials are APP:KEY (the application's name, a colon, its client key)")),
    }
}

impl Credentials {
    fn build(app: String, key: String, name: String) -> Self {
        Self { inner: praas_wire::auth::Credentials { app, name, key } }
    }
}

#[pymethods]
impl Credentials {
    /// Credentials of application `app` with its client key `key`.
    #[new]
    #[pyo3(signature = (app, key, name = DEFAULT_NAME.to_owned()))]
    fn new(app: String, key: String, name: String) -> PyResult<Self> {
        if app.is_empty() || key.is_empty() {
            return Err(PyValueError::new_err("an application name and a client key are needed"));
        }
        Ok(Self::build(app, key, name))
    }

    /// Credentials from the text `APP:KEY` (what `praas invoke --credentials-file` reads).
    #[staticmethod]
    #[pyo3(signature = (text, name = DEFAULT_NAME.to_owned()))]
    fn parse(text: &Bound<'_, PyAny>, name: String) -> PyResult<Self> {
        parse(&text.extract::<String>()?, name)
    }

    /// Credentials from a file holding `APP:KEY`.
    #[staticmethod]
    #[pyo3(signature = (path, name = DEFAULT_NAME.to_owned()))]
    fn from_file(path: PathBuf, name: String) -> PyResult<Self> {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| PyOSError::new_err(format!("cannot read credentials from {}: {e}", path.display())))?;
        parse(&text, name)
    }

    /// Credentials from `PRAAS_CLIENT_CREDENTIALS` (`APP:KEY`), or `None` when it is unset or empty.
    #[staticmethod]
    #[pyo3(signature = (name = DEFAULT_NAME.to_owned()))]
    fn from_env(name: String) -> PyResult<Option<Self>> {
        match std::env::var(ENV) {
            Ok(text) if !text.is_empty() => parse(&text, name).map(Some),
            _ => Ok(None),
        }
    }

    /// The application.
    #[getter]
    fn app(&self) -> &str {
        &self.inner.app
    }

    /// The name this client goes by.
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn __repr__(&self) -> String {
        format!("Credentials(app={:?}, name={:?}, key=...)", self.inner.app, self.inner.name)
    }
}
