//! How a failed call becomes a Python exception of `praas._errors` (python/praas/_errors.py):
//!
//! | what failed | exception |
//! |---|---|
//! | the process answered with an error status | `RemoteError(code, message, id)` |
//! | no answer within the client's timeout (also a connect that timed out) | `TimeoutError` |
//! | the connection (refused, reset, closed by the process, or closed here) | `ConnectionError` |
//! | the process sent bytes that are not the protocol | `ProtocolError` |
//! | a request larger than the frame limit (nothing sent) | `TooLargeError` |

use praas_client::ClientError;
use praas_wire::protocol::Status;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use std::io;

/// Why a call of [`crate::client::Client`] failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The SDK's error.
    Client(ClientError),
    /// The client was closed ([`crate::client::Client::close`]).
    Closed,
    /// A call panicked while it held the connection: its state is unknown, so it is not used again.
    Poisoned,
}

impl From<ClientError> for CallError {
    fn from(error: ClientError) -> Self {
        Self::Client(error)
    }
}

/// The C ABI's name of a status (`PRAAS_ERR_UNKNOWN_FUNCTION` is `UNKNOWN_FUNCTION`).
pub(crate) fn status_name(status: Status) -> &'static str {
    match status {
        Status::Ok => "OK",
        Status::FunctionFailed => "FUNCTION",
        Status::UnknownFunction => "UNKNOWN_FUNCTION",
        Status::Panicked => "PANICKED",
        Status::Timeout => "TIMEOUT",
        Status::TooLarge => "TOO_LARGE",
        Status::Malformed => "MALFORMED",
        Status::Overloaded => "OVERLOADED",
        Status::NotFound => "NOT_FOUND",
        Status::Unsupported => "UNSUPPORTED",
        Status::InvalidArgument => "INVALID_ARGUMENT",
        Status::Internal => "INTERNAL",
        Status::Unavailable => "UNAVAILABLE",
        Status::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A class of `praas._errors`, imported once.
fn class<'py>(py: Python<'py>, cell: &'static PyOnceLock<Py<PyType>>, name: &str) -> PyResult<&'py Bound<'py, PyType>> {
    cell.import(py, "praas._errors", name)
}

/// An instance of the exception class `name` of `praas._errors` built from `args`, as a `PyErr`.
fn raise<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
    args: impl pyo3::call::PyCallArgs<'py>,
) -> PyErr {
    match class(py, cell, name).and_then(|class| class.call1(args)) {
        Ok(instance) => PyErr::from_value(instance),
        // The package is broken (praas._errors missing): say so rather than lose the error.
        Err(import) => {
            let error = PyRuntimeError::new_err(format!("praas._errors.{name} is unavailable"));
            error.set_cause(py, Some(import));
            error
        }
    }
}

static REMOTE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static TIMEOUT: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static CONNECTION: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static PROTOCOL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static TOO_LARGE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// The Python exception for `error` of the invocation `id` (when the call concerned one).
pub(crate) fn to_py(py: Python<'_>, error: CallError, id: Option<u64>) -> PyErr {
    let error = match error {
        CallError::Client(error) => error,
        CallError::Closed => return raise(py, &CONNECTION, "ConnectionError", ("the client is closed",)),
        CallError::Poisoned => {
            let message = "the client is unusable: an earlier call panicked while it held the connection";
            return raise(py, &CONNECTION, "ConnectionError", (message,));
        }
    };
    let text = error.to_string();
    match error {
        ClientError::Remote { status, message } => raise(py, &REMOTE, "RemoteError", (status.code(), message, id)),
        ClientError::Timeout(_) => raise(py, &TIMEOUT, "TimeoutError", (text,)),
        ClientError::Io(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
            raise(py, &TIMEOUT, "TimeoutError", (text,))
        }
        ClientError::Io(_) | ClientError::Closed => raise(py, &CONNECTION, "ConnectionError", (text,)),
        ClientError::Protocol(_) => raise(py, &PROTOCOL, "ProtocolError", (text,)),
        ClientError::TooLarge { .. } => raise(py, &TOO_LARGE, "TooLargeError", (text,)),
        // `ClientError` is non-exhaustive: what it may gain is a connection's failure too.
        _ => raise(py, &CONNECTION, "ConnectionError", (text,)),
    }
}
