//! `praas.Client`: one connection to a cloud process, over the SDK's TCP client (mio or io_uring)
//! or its RDMA client.
//!
//! The connection sits behind a mutex: calls from several Python threads are served one at a
//! time. Every call that sends or waits releases the GIL first and takes the mutex without it,
//! and lets go of the mutex before it takes the GIL back, so no thread ever waits for the GIL
//! while holding the connection (nor for the connection while holding the GIL, but in `close`
//! and the `timeout` setter, which wait without it too). What Python reads without a call
//! (`in_flight`, `timeout`, `closed`) lives beside the mutex in atomics.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use praas_client::{ClientError, ClientOptions, Completion, Invoker, TransportKind};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyMemoryView, PyString};

use crate::credentials::Credentials;
use crate::errors::{to_py, CallError};

/// The SDK's connection: TCP or RDMA.
///
/// (Not `praas_client::connect_invoker`'s `Box<dyn Invoker>`: that box is not `Send`, since the
/// trait does not require it, and a Python object may be used from any thread. Both clients are
/// `Send`; this enum picks between them by address just as `connect_invoker` does.)
// One per Python client, made once and never moved out of its mutex: the variants' sizes matter
// not, and a box would only add an indirection to every call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Connection {
    Tcp(praas_client::Client),
    #[cfg(feature = "rdma")]
    Rdma(praas_client::rdma::RdmaClient),
}

impl Connection {
    /// Connects to `address`: `rdma://HOST:PORT` by RDMA, `HOST:PORT` by TCP.
    fn open(address: &str, options: ClientOptions) -> Result<Self, ClientError> {
        if let Some(rest) = address.strip_prefix("rdma://") {
            #[cfg(feature = "rdma")]
            {
                let ClientOptions { timeout, invocation_timeout_ms, max_frame, credentials, .. } = options;
                let options = praas_client::rdma::RdmaClientOptions {
                    timeout,
                    invocation_timeout_ms,
                    max_frame,
                    credentials,
                    ..Default::default()
                };
                return Ok(Self::Rdma(praas_client::rdma::RdmaClient::connect_with(rest, options)?));
            }
            #[cfg(not(feature = "rdma"))]
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("{rest}: this build of the praas Python client has no RDMA"),
            )));
        }
        Ok(Self::Tcp(praas_client::Client::connect_with(address, options)?))
    }

    fn invoker(&mut self) -> &mut dyn Invoker {
        match self {
            Self::Tcp(client) => client,
            #[cfg(feature = "rdma")]
            Self::Rdma(client) => client,
        }
    }

    /// `uring`, `mio` or `rdma`.
    fn transport(&self) -> &'static str {
        match self {
            Self::Tcp(client) => client.transport().name(),
            #[cfg(feature = "rdma")]
            Self::Rdma(_) => "rdma",
        }
    }
}

/// The Python object's view of a call's outcome: its result, or the error and the invocation it
/// concerned (an answer that came back with an error status).
type Outcome<T> = Result<T, (CallError, Option<u64>)>;

/// A connection to one cloud process (`praas.Client`).
#[pyclass(module = "praas._native", frozen)]
#[derive(Debug)]
pub(crate) struct Client {
    address: String,
    transport: &'static str,
    /// `None` once closed.
    connection: Mutex<Option<Connection>>,
    /// Submitted and not yet received (by `recv`, `wait` or `completions`).
    in_flight: AtomicUsize,
    /// The wait for an answer, in nanoseconds.
    timeout_ns: AtomicU64,
    closed: AtomicBool,
}

/// Seconds as a duration; `what` names the argument in the error.
fn seconds(value: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| PyValueError::new_err(format!("{what} must be a finite, non-negative number of seconds")))
}

/// Milliseconds (rounded up) of a process-side deadline given in seconds.
fn deadline_ms(value: f64) -> PyResult<u32> {
    let ms = (seconds(value, "invocation_timeout")?.as_secs_f64() * 1000.0).ceil();
    if ms < 1.0 || ms > f64::from(u32::MAX) {
        return Err(PyValueError::new_err("invocation_timeout must be between 0.001 s and about 49 days"));
    }
    Ok(ms as u32)
}

/// The bytes of a bytes-like object: a `bytes` as it is (read in place, no copy), anything else
/// that exports a buffer (bytearray, memoryview, array, a NumPy array) copied once into a `bytes`.
fn input<'py>(data: Option<&Bound<'py, PyAny>>) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let Some(data) = data else { return Ok(None) };
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(Some(bytes.clone()));
    }
    if data.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err("data must be bytes-like, not str (encode it first)"));
    }
    let view = PyMemoryView::from(data)?;
    Ok(Some(view.call_method0("tobytes")?.cast_into::<PyBytes>()?))
}

impl Client {
    /// Runs `f` on the connection with the GIL released.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Connection, &AtomicUsize) -> Outcome<T> + Send,
    ) -> Outcome<T> {
        py.detach(|| {
            let mut guard = self.connection.lock().map_err(|_| (CallError::Poisoned, None))?;
            let connection = guard.as_mut().ok_or((CallError::Closed, None))?;
            f(connection, &self.in_flight)
        })
    }

    /// The next completion, whatever its id.
    pub(crate) fn next_completion(&self, py: Python<'_>) -> Outcome<(u64, Vec<u8>)> {
        self.with(py, |connection, in_flight| {
            let Completion { id, result } = connection.invoker().recv().map_err(|e| (e.into(), None))?;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            result.map(|output| (id, output)).map_err(|e| (e.into(), Some(id)))
        })
    }

    /// Invocations submitted and not yet received.
    pub(crate) fn pending(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// The Python result of an outcome.
fn finish<T>(py: Python<'_>, outcome: Outcome<T>) -> PyResult<T> {
    outcome.map_err(|(error, id)| to_py(py, error, id))
}

#[pymethods]
impl Client {
    /// Connects to the process at `address` (`HOST:PORT`, or `rdma://HOST:PORT`).
    #[new]
    #[pyo3(signature = (address, timeout = 30.0, credentials = None, *, invocation_timeout = None,
                        transport = "auto".to_owned(), spin = 0.0, max_frame = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        address: String,
        timeout: f64,
        credentials: Option<Bound<'_, Credentials>>,
        invocation_timeout: Option<f64>,
        transport: String,
        spin: f64,
        max_frame: Option<usize>,
    ) -> PyResult<Self> {
        let timeout = seconds(timeout, "timeout")?;
        let kind: TransportKind = transport.parse().map_err(|e| PyValueError::new_err(format!("{e}")))?;
        let mut options = ClientOptions {
            timeout,
            invocation_timeout_ms: invocation_timeout.map(deadline_ms).transpose()?.unwrap_or(0),
            transport: kind,
            spin: seconds(spin, "spin")?,
            credentials: credentials.map(|c| c.get().inner.clone()),
            ..ClientOptions::default()
        };
        if let Some(max_frame) = max_frame {
            options.max_frame = max_frame;
        }
        let connection = py.detach(|| Connection::open(&address, options)).map_err(|e| to_py(py, e.into(), None))?;
        let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        Ok(Self {
            transport: connection.transport(),
            address,
            connection: Mutex::new(Some(connection)),
            in_flight: AtomicUsize::new(0),
            timeout_ns: AtomicU64::new(timeout_ns),
            closed: AtomicBool::new(false),
        })
    }

    /// Invokes `function` with `data` and waits for its output.
    #[pyo3(signature = (function, data = None))]
    fn invoke<'py>(
        &self,
        py: Python<'py>,
        function: PyBackedStr,
        data: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = input(data)?;
        let input: &[u8] = data.as_ref().map_or(&[], |d| d.as_bytes());
        let function: &str = &function;
        let output =
            self.with(py, |connection, _| connection.invoker().invoke(function, input).map_err(|e| (e.into(), None)));
        Ok(PyBytes::new(py, &finish(py, output)?))
    }

    /// Sends an invocation without waiting for its answer; returns its id.
    #[pyo3(signature = (function, data = None))]
    fn submit<'py>(&self, py: Python<'py>, function: PyBackedStr, data: Option<&Bound<'py, PyAny>>) -> PyResult<u64> {
        let data = input(data)?;
        let input: &[u8] = data.as_ref().map_or(&[], |d| d.as_bytes());
        let function: &str = &function;
        let id = self.with(py, |connection, in_flight| {
            let id = connection.invoker().submit(function, input).map_err(|e| (e.into(), None))?;
            in_flight.fetch_add(1, Ordering::Relaxed);
            Ok(id)
        });
        finish(py, id)
    }

    /// Waits for the next answer, whatever its id: `(id, output)`; a failed invocation raises
    /// `RemoteError` with its `id`.
    fn recv<'py>(&self, py: Python<'py>) -> PyResult<(u64, Bound<'py, PyBytes>)> {
        let (id, output) = finish(py, self.next_completion(py))?;
        Ok((id, PyBytes::new(py, &output)))
    }

    /// Waits for the answer to `id` (answers to other ids are kept for later).
    fn wait<'py>(&self, py: Python<'py>, id: u64) -> PyResult<Bound<'py, PyBytes>> {
        let output = self.with(py, |connection, in_flight| match connection.invoker().wait(id) {
            Ok(output) => {
                in_flight.fetch_sub(1, Ordering::Relaxed);
                Ok(output)
            }
            Err(e @ ClientError::Remote { .. }) => {
                in_flight.fetch_sub(1, Ordering::Relaxed);
                Err((e.into(), Some(id)))
            }
            Err(e) => Err((e.into(), None)),
        });
        Ok(PyBytes::new(py, &finish(py, output)?))
    }

    /// An iterator over the next `n` completions (`(id, output)`, as `recv` returns them), or,
    /// without `n`, over completions until none is in flight.
    #[pyo3(signature = (n = None))]
    fn completions(slf: Bound<'_, Self>, n: Option<usize>) -> Completions {
        Completions { client: slf.unbind(), remaining: n }
    }

    /// Sends what `submit` has batched (over io_uring); every wait sends it too.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        finish(py, self.with(py, |connection, _| connection.invoker().flush().map_err(|e| (e.into(), None))))
    }

    /// Closes the connection (after any call in progress on another thread); later calls raise
    /// `ConnectionError`. Closing twice is harmless.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            let mut guard = self.connection.lock().unwrap_or_else(PoisonError::into_inner);
            drop(guard.take());
        });
        self.closed.store(true, Ordering::Relaxed);
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    /// The address connected to.
    #[getter]
    fn address(&self) -> &str {
        &self.address
    }

    /// How the connection moves bytes: `uring`, `mio` or `rdma`.
    #[getter]
    fn transport(&self) -> &'static str {
        self.transport
    }

    /// Invocations submitted and not yet received.
    #[getter]
    fn in_flight(&self) -> usize {
        self.pending()
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// How long a call waits for an answer, in seconds.
    #[getter]
    fn get_timeout(&self) -> f64 {
        Duration::from_nanos(self.timeout_ns.load(Ordering::Relaxed)).as_secs_f64()
    }

    #[setter]
    fn set_timeout(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds(timeout, "timeout")?;
        let set = self.with(py, |connection, _| {
            connection.invoker().set_timeout(timeout);
            Ok(())
        });
        finish(py, set)?;
        self.timeout_ns.store(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        Ok(())
    }

    fn __repr__(&self) -> String {
        if self.closed() {
            return format!("<praas.Client {} closed>", self.address);
        }
        format!("<praas.Client {} over {}, {} in flight>", self.address, self.transport, self.pending())
    }
}

/// An iterator over completions of one client (`Client.completions`).
#[pyclass(module = "praas._native")]
#[derive(Debug)]
pub(crate) struct Completions {
    client: Py<Client>,
    /// Completions left to yield; `None`: until none is in flight.
    remaining: Option<usize>,
}

#[pymethods]
impl Completions {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next completion; raises `RemoteError` for a failed one (which counts as one of `n`),
    /// and the iterator can be resumed after any exception.
    fn __next__<'py>(mut slf: PyRefMut<'py, Self>, py: Python<'py>) -> PyResult<Option<(u64, Bound<'py, PyBytes>)>> {
        let client = slf.client.clone_ref(py);
        let client = client.get();
        match slf.remaining {
            Some(0) => return Ok(None),
            None if client.pending() == 0 => return Ok(None),
            _ => {}
        }
        let outcome = client.next_completion(py);
        let answered = match &outcome {
            Ok(_) => true,
            Err((_, id)) => id.is_some(),
        };
        if answered {
            if let Some(n) = slf.remaining.as_mut() {
                *n -= 1;
            }
        }
        let (id, output) = finish(py, outcome)?;
        Ok(Some((id, PyBytes::new(py, &output))))
    }
}
