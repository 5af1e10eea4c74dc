//! Python functions (cargo feature `python`): one CPython interpreter per process, embedded
//! through PyO3, initialised once by the first load of a Python function; each module imported
//! once by [`Loader`] at [`crate::function::FunctionRegistry::load`].
//!
//! A Python function is `def f(ctx, data)`: `data` is a read-only `memoryview` of the input in
//! place (no copy; released after the call, and the memory it shows belongs to a payload that
//! lives as long as any view of it, so a view kept past the call reads valid bytes), and `ctx`
//! a [`Context`] valid on the function's thread during the call only (afterwards every method
//! raises). It returns `bytes`, `bytearray`, `memoryview` or `None`, which is copied into the
//! output buffer. An exception becomes an error whose text holds `Type: message` and the
//! traceback.
//!
//! The context's methods call the runtime through [`Services`], the same methods the C ABI's
//! entries call (`crate::invocation`), and release the GIL around what may block (a message
//! put, a get with a timeout, a local invocation of a function that is not Python).
//!
//! Deadlines: every running Python call with a deadline is registered with its thread; a deadline
//! thread, started with the first such call, wakes at the earliest deadline, takes the GIL and
//! raises `praas_function.DeadlineExceeded` (a `TimeoutError`) asynchronously in the overdue
//! call's thread (`PyThreadState_SetAsyncExc`). Python code sees it at its next bytecode: a call
//! blocked inside C code (`time.sleep`, a long numpy operation) is interrupted when it returns to
//! Python. The call then ends with [`Status::Timeout`].

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_int, c_long, c_ulong};
use std::path::PathBuf;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use praas_ffi::{PRAAS_LOG_DEBUG, PRAAS_LOG_ERROR, PRAAS_LOG_INFO, PRAAS_LOG_WARN};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyException, PyTimeoutError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyModule, PyString};

use crate::buffer::{Payload, PoolBuf};
use crate::state::StateEntry;
use praas_wire::protocol::Status;

/// A context call's failure: its status and the error text.
pub(crate) type Failed = (Status, String);

/// What a running invocation offers its function: the runtime's side of the context. The C ABI's
/// entries call the same methods.
pub(crate) trait Services: Sync {
    /// The process id.
    fn process_id(&self) -> &str;
    /// The name of the running function.
    fn function(&self) -> &str;
    /// Stores `value` under `key`.
    fn state_put(&self, key: &[u8], value: &[u8]) -> Result<(), Failed>;
    /// The value under `key` and its timestamp, if any.
    fn state_get(&self, key: &[u8]) -> Result<Option<StateEntry>, Failed>;
    /// Deletes `key`; whether it was there.
    fn state_delete(&self, key: &[u8]) -> Result<bool, Failed>;
    /// Every key and its timestamp.
    fn state_keys(&self) -> Vec<(String, u64)>;
    /// Puts a message to process `dest` under `key` (may block until it is stored).
    fn put_message(&self, dest: &str, key: &str, data: &[u8]) -> Result<(), Failed>;
    /// Takes the oldest message under `key` (from `source`, or any), waiting up to `timeout`.
    fn get_message(&self, source: Option<&str>, key: &str, timeout: Duration) -> Result<(String, Vec<u8>), Failed>;
    /// Whether `function` is a Python function of this process (invoking it needs the GIL).
    fn is_python(&self, function: &[u8]) -> bool;
    /// Invokes `function` of this process on this thread with `input`.
    fn invoke_local(&self, function: &[u8], input: &[u8]) -> Result<PoolBuf, Failed>;
    /// Invokes `function` of process `dest` of the application with `input` and waits for its
    /// output, within this invocation's deadline.
    fn invoke_remote(&self, dest: &str, function: &str, input: &[u8]) -> Result<Vec<u8>, Failed>;
    /// Starts invoking `function` of process `dest`: the handle to wait for it with.
    fn submit_remote(&self, dest: &str, function: &str, input: &[u8]) -> Result<u64, Failed>;
    /// Waits for the first of the calls `handles` names to finish: its position in `handles` and
    /// its output or failure.
    fn wait_remote(&self, handles: &[u64]) -> (usize, Result<Vec<u8>, Failed>);
    /// Writes `message` into the process's log at `level` (a `PRAAS_LOG_*` level).
    fn log(&self, level: i32, message: &str);
    /// An output buffer holding a copy of `bytes` (at most the process's largest frame).
    fn output(&self, bytes: &[u8]) -> Result<PoolBuf, Failed>;
}

pyo3::create_exception!(
    praas_function,
    Error,
    PyException,
    "A context call failed: `status` is its status code (as the wire and the C ABI number them), \
     `reason` the status in words."
);
pyo3::create_exception!(
    praas_function,
    DeadlineExceeded,
    PyTimeoutError,
    "Raised in a Python function that runs past its invocation's deadline."
);

/// Helpers of the `praas_function` module, written in Python.
const BOOTSTRAP: &std::ffi::CStr = cr#"
"""What the praas runtime offers Python functions: Context (the type of `ctx`), Error (raised by
a failed context call; `status`, `reason`) and DeadlineExceeded (a TimeoutError raised in a
function that runs past its deadline)."""
import importlib
import importlib.util
import os
import sys
import traceback
import _thread

_get_ident = _thread.get_ident
_import = importlib.import_module


def _load_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} cannot be loaded as a Python module", path=path)
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(path)
    if folder and folder not in sys.path:
        sys.path.append(folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if sys.modules.get(name) is module:
            del sys.modules[name]
        raise
    return module


def _describe(exc, tb):
    return "".join(traceback.format_exception(type(exc), exc, tb))
"#;

/// The interpreter's helpers, ready once it runs.
struct Interpreter {
    load_file: Py<PyAny>,
    import: Py<PyAny>,
    describe: Py<PyAny>,
    get_ident: Py<PyAny>,
}

static INTERPRETER: OnceLock<Result<Interpreter, String>> = OnceLock::new();

/// The process's interpreter: initialised (without its signal handlers: the process keeps its
/// own) and given the `praas_function` module on the first call.
fn interpreter() -> Result<&'static Interpreter, String> {
    INTERPRETER
        .get_or_init(|| {
            Python::initialize();
            Python::attach(|py| Interpreter::start(py).map_err(|e| format_exception(py, &e, None)))
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl Interpreter {
    fn start(py: Python<'_>) -> PyResult<Self> {
        let module = PyModule::from_code(py, BOOTSTRAP, c"<praas_function>", c"praas_function")?;
        module.add_class::<Context>()?;
        module.add_class::<Data>()?;
        module.add("Error", py.get_type::<Error>())?;
        module.add("DeadlineExceeded", py.get_type::<DeadlineExceeded>())?;
        py.import("sys")?.getattr("modules")?.set_item("praas_function", &module)?;
        let sys = py.import("sys")?;
        if sys.getattr("argv").is_err() {
            sys.setattr("argv", vec!["praas"])?;
        }
        let get = |name: &str| module.getattr(name).map(Bound::unbind);
        Ok(Self {
            load_file: get("_load_file")?,
            import: get("_import")?,
            describe: get("_describe")?,
            get_ident: get("_get_ident")?,
        })
    }
}

/// `Type: message`, then the traceback, of `err`.
fn format_exception(py: Python<'_>, err: &PyErr, interpreter: Option<&Interpreter>) -> String {
    let kind = err.get_type(py).qualname().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
    let message = err.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    let traceback = interpreter
        .and_then(|i| i.describe.call1(py, (err.value(py), err.traceback(py))).ok())
        .and_then(|t| t.extract::<String>(py).ok())
        .unwrap_or_default();
    format!("{kind}: {message}\n{traceback}")
}

/// A function of a loaded Python module.
#[derive(Debug, Clone)]
pub(crate) struct PythonFunction {
    callable: Arc<Py<PyAny>>,
}

/// Where a module comes from.
#[derive(Debug)]
pub(crate) enum Source<'a> {
    /// A source file.
    File(PathBuf),
    /// A module name on the interpreter's path.
    Name(&'a str),
}

/// Why a Python function could not be loaded (`crate::function::LoadError` says it to users).
#[derive(Debug)]
pub(crate) enum LoadFailure {
    /// The interpreter could not be prepared.
    Interpreter(String),
    /// The module did not import: the exception and traceback.
    Import(String),
    /// The module has no callable of that name: why.
    Missing(String),
}

/// Imports modules once each for one registry.
#[derive(Debug, Default)]
pub(crate) struct Loader {
    modules: HashMap<String, Py<PyModule>>,
}

impl Loader {
    /// The callable `name` of the module at `source` (imported on first use).
    pub(crate) fn load(&mut self, source: Source<'_>, name: &str) -> Result<PythonFunction, LoadFailure> {
        let interpreter = interpreter().map_err(LoadFailure::Interpreter)?;
        Python::attach(|py| {
            let (key, stem) = match &source {
                Source::File(path) => {
                    let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                    let Some(text) = path.to_str() else {
                        return Err(LoadFailure::Import(format!("{} is not a UTF-8 path", path.display())));
                    };
                    let stem = path.file_stem().and_then(|s| s.to_str()).filter(|s| is_identifier(s));
                    (text.to_owned(), Some(stem.unwrap_or("praas_module").to_owned()))
                }
                Source::Name(name) => ((*name).to_owned(), None),
            };
            let module = match self.modules.get(&key) {
                Some(module) => module.clone_ref(py),
                None => {
                    let imported = match &stem {
                        Some(stem) => interpreter.load_file.call1(py, (&key, stem)),
                        None => interpreter.import.call1(py, (&key,)),
                    };
                    let module =
                        imported.map_err(|e| LoadFailure::Import(format_exception(py, &e, Some(interpreter))))?;
                    let module = module
                        .into_bound(py)
                        .cast_into::<PyModule>()
                        .map_err(|e| LoadFailure::Import(format!("{key} is not a module: {e}")))?
                        .unbind();
                    self.modules.insert(key, module.clone_ref(py));
                    module
                }
            };
            let callable = module
                .bind(py)
                .getattr(name)
                .map_err(|e| LoadFailure::Missing(format_exception(py, &e, Some(interpreter))))?;
            if !callable.is_callable() {
                let kind = callable.get_type().qualname().map(|n| n.to_string()).unwrap_or_default();
                return Err(LoadFailure::Missing(format!("{name} is a {kind}, not a function")));
            }
            Ok(PythonFunction { callable: Arc::new(callable.unbind()) })
        })
    }
}

/// Whether `name` is an (ASCII) identifier.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The running invocation behind a [`Context`], on the stack of [`call`].
struct Bridge<'a> {
    services: &'a dyn Services,
}

/// `ctx`: what a Python function may ask of the runtime during its call.
#[pyclass(module = "praas_function", name = "Context", frozen)]
pub(crate) struct Context {
    /// The bridge of the running call; null once it has returned.
    bridge: AtomicPtr<Bridge<'static>>,
    /// The thread the call runs on: the only one that may use the context.
    thread: ThreadId,
}

impl Context {
    fn services(&self, py: Python<'_>) -> PyResult<&dyn Services> {
        let bridge = self.bridge.load(Ordering::Acquire);
        if bridge.is_null() {
            return Err(raise(py, (Status::InvalidArgument, "ctx is used after its invocation returned".into())));
        }
        if thread::current().id() != self.thread {
            return Err(raise(py, (Status::Unsupported, "ctx is usable only on the thread of its invocation".into())));
        }
        // SAFETY: a non-null `bridge` points to the `Bridge` on the stack of the `call` running on
        // this thread (checked above), which nulls it before that frame ends (`Closed`); this
        // method runs inside that call (the same thread is in it), so the bridge and the services
        // it borrows outlive the reference returned, which does not leave this method's caller.
        Ok(unsafe { (*bridge).services })
    }
}

/// Nulls a context's bridge when the call ends, however it ends.
struct Closed<'a>(&'a Context);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.0.bridge.store(std::ptr::null_mut(), Ordering::Release);
    }
}

/// A `praas_function.Error` for a failed context call.
fn raise(py: Python<'_>, (status, message): Failed) -> PyErr {
    let err = Error::new_err(message);
    let value = err.value(py);
    // Setting attributes on a fresh exception instance does not fail.
    let _ = value.setattr("status", status.code());
    let _ = value.setattr("reason", status.to_string());
    err
}

/// A remote call's result as Python sees it from `wait_any` and `wait_all`: the output as bytes,
/// or the `Error` instance it failed with.
fn outcome(py: Python<'_>, result: Result<Vec<u8>, Failed>) -> Bound<'_, PyAny> {
    match result {
        Ok(output) => PyBytes::new(py, &output).into_any(),
        Err(failed) => raise(py, failed).into_value(py).into_bound(py).into_any(),
    }
}

/// Runs `f` over the bytes of a bytes-like object: `bytes` in place, anything else with the
/// buffer protocol (`bytearray`, `memoryview`, ...) through a copy.
fn with_bytes<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        return Ok(f(bytes.as_bytes()));
    }
    let copy: Cow<'_, [u8]> = match PyBuffer::<u8>::get(obj) {
        Ok(buffer) => Cow::Owned(buffer.to_vec(obj.py())?),
        Err(_) => {
            let view = PyMemoryView::from(obj)
                .map_err(|_| PyTypeError::new_err(format!("expected a bytes-like object, not {}", type_name(obj))))?;
            let bytes = view.call_method0("tobytes")?;
            Cow::Owned(bytes.cast::<PyBytes>()?.as_bytes().to_vec())
        }
    };
    Ok(f(&copy))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().qualname().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

#[pymethods]
impl Context {
    /// The process id.
    #[getter]
    fn process_id(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.services(py)?.process_id().to_owned())
    }

    /// The running function's name.
    #[getter]
    fn function(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.services(py)?.function().to_owned())
    }

    /// Stores `value` (bytes-like) under `key` in the process's state.
    fn state_put(&self, py: Python<'_>, key: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let services = self.services(py)?;
        with_bytes(value, |value| services.state_put(key.as_bytes(), value))?.map_err(|e| raise(py, e))
    }

    /// `(value, timestamp_ns)` under `key`, or `None`.
    fn state_get<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<(Bound<'py, PyBytes>, u64)>> {
        let entry = self.services(py)?.state_get(key.as_bytes()).map_err(|e| raise(py, e))?;
        Ok(entry.map(|entry| (PyBytes::new(py, &entry.value), entry.timestamp_ns)))
    }

    /// Deletes `key`; whether it was there.
    fn state_delete(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        self.services(py)?.state_delete(key.as_bytes()).map_err(|e| raise(py, e))
    }

    /// Every `(key, timestamp_ns)` of the state.
    fn state_keys(&self, py: Python<'_>) -> PyResult<Vec<(String, u64)>> {
        Ok(self.services(py)?.state_keys())
    }

    /// Puts message `data` under `key` to process `dest`; returns once it is stored there.
    fn put(&self, py: Python<'_>, dest: &str, key: &str, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let services = self.services(py)?;
        with_bytes(data, |data| py.detach(|| services.put_message(dest, key, data)))?.map_err(|e| raise(py, e))
    }

    /// `(source, data)` of the oldest message under `key` from `source` (`None`: any), waiting
    /// up to `timeout` seconds (0: only look).
    #[pyo3(signature = (key, source=None, timeout=0.0))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        source: Option<&str>,
        timeout: f64,
    ) -> PyResult<(String, Bound<'py, PyBytes>)> {
        let services = self.services(py)?;
        let timeout = Duration::try_from_secs_f64(timeout)
            .map_err(|_| PyValueError::new_err(format!("timeout {timeout} is not a number of seconds >= 0")))?;
        let got = if timeout.is_zero() {
            services.get_message(source, key, timeout)
        } else {
            py.detach(|| services.get_message(source, key, timeout))
        };
        let (from, data) = got.map_err(|e| raise(py, e))?;
        Ok((from, PyBytes::new(py, &data)))
    }

    /// Invokes `function` of this process with `data` and returns its output (a local
    /// invocation, on this thread, with this invocation's deadline).
    fn invoke<'py>(&self, py: Python<'py>, function: &str, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let services = self.services(py)?;
        let name = function.as_bytes();
        let output = with_bytes(data, |data| {
            if services.is_python(name) {
                services.invoke_local(name, data)
            } else {
                py.detach(|| services.invoke_local(name, data))
            }
        })?;
        let output = output.map_err(|e| raise(py, e))?;
        Ok(PyBytes::new(py, &output))
    }

    /// Invokes `function` of process `process` of this application with `data` and returns its
    /// output; the call carries what is left of this invocation's deadline. Raises `Error`
    /// (`status` says why: no such process or function, the callee failed, it is unreachable,
    /// the deadline passed).
    fn invoke_remote<'py>(
        &self,
        py: Python<'py>,
        process: &str,
        function: &str,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let services = self.services(py)?;
        let output = with_bytes(data, |data| py.detach(|| services.invoke_remote(process, function, data)))?;
        let output = output.map_err(|e| raise(py, e))?;
        Ok(PyBytes::new(py, &output))
    }

    /// Starts invoking `function` of process `process` with `data` and returns at once: a handle
    /// for `wait`, `wait_any` or `wait_all`. Calls submitted before waiting run at the same time.
    fn submit(&self, py: Python<'_>, process: &str, function: &str, data: &Bound<'_, PyAny>) -> PyResult<u64> {
        let services = self.services(py)?;
        with_bytes(data, |data| py.detach(|| services.submit_remote(process, function, data)))?
            .map_err(|e| raise(py, e))
    }

    /// Waits for the call `handle` and returns its output (raises `Error` as `invoke_remote`).
    fn wait<'py>(&self, py: Python<'py>, handle: u64) -> PyResult<Bound<'py, PyBytes>> {
        let services = self.services(py)?;
        let (_, result) = py.detach(|| services.wait_remote(&[handle]));
        let output = result.map_err(|e| raise(py, e))?;
        Ok(PyBytes::new(py, &output))
    }

    /// Waits for whichever of the calls `handles` finishes first and returns `(handle, result)`:
    /// its output as bytes, or the `Error` it failed with (not raised). The caller removes that
    /// handle before waiting again; `None` for no handles.
    fn wait_any<'py>(&self, py: Python<'py>, handles: Vec<u64>) -> PyResult<Option<(u64, Bound<'py, PyAny>)>> {
        let services = self.services(py)?;
        if handles.is_empty() {
            return Ok(None);
        }
        let (index, result) = py.detach(|| services.wait_remote(&handles));
        Ok(Some((handles[index], outcome(py, result))))
    }

    /// Waits for every call of `handles` and returns their results in the same order, each its
    /// output as bytes or the `Error` it failed with (not raised).
    fn wait_all<'py>(&self, py: Python<'py>, handles: Vec<u64>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let services = self.services(py)?;
        let mut results = Vec::with_capacity(handles.len());
        for handle in handles {
            let (_, result) = py.detach(|| services.wait_remote(&[handle]));
            results.push(outcome(py, result));
        }
        Ok(results)
    }

    /// Writes `message` into the process's log; `level` is "error", "warn", "info", "debug",
    /// "trace" or a `PRAAS_LOG_*` number.
    fn log(&self, py: Python<'_>, level: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        let services = self.services(py)?;
        let level = if let Ok(name) = level.cast::<PyString>() {
            match name.to_str()? {
                "error" => PRAAS_LOG_ERROR,
                "warn" | "warning" => PRAAS_LOG_WARN,
                "info" => PRAAS_LOG_INFO,
                "debug" => PRAAS_LOG_DEBUG,
                "trace" => PRAAS_LOG_DEBUG + 1,
                other => return Err(PyValueError::new_err(format!("unknown log level {other:?}"))),
            }
        } else {
            level.extract::<i32>()?
        };
        services.log(level, message);
        Ok(())
    }
}

/// The input bytes a function's `data` shows: owns the payload, so any view of it (a slice kept
/// past the call) reads memory that is still there; read-only.
#[pyclass(module = "praas_function", name = "Data", frozen)]
struct Data {
    payload: Payload,
}

#[pymethods]
impl Data {
    /// The buffer protocol: a read-only view of the payload.
    ///
    /// # Safety
    /// CPython calls it with a `view` to fill (its contract for `bf_getbuffer`).
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let bytes: &[u8] = &slf.get().payload;
        let len = ffi::Py_ssize_t::try_from(bytes.len()).map_err(|_| PyValueError::new_err("input too large"))?;
        // SAFETY: `view` is the struct CPython asks us to fill; the bytes belong to the payload
        // this immutable object owns, and `PyBuffer_FillInfo` stores a new reference to the
        // object in the view, so they stay valid while the view lives. `readonly = 1` refuses
        // writable requests, so the memory is never written through the view.
        let filled =
            unsafe { ffi::PyBuffer_FillInfo(view, slf.as_ptr(), bytes.as_ptr().cast_mut().cast(), len, 1, flags) };
        if filled == 0 {
            Ok(())
        } else {
            Err(PyErr::fetch(slf.py()))
        }
    }
}

/// Calls `function` with a context over `services` and `input`, interrupting it at `deadline`;
/// returns its output copied into a buffer ([`Services::output`]).
pub(crate) fn call(
    function: &PythonFunction,
    name: &str,
    services: &dyn Services,
    input: Payload,
    deadline: Option<Instant>,
) -> Result<PoolBuf, Failed> {
    let Some(Ok(interpreter)) = INTERPRETER.get() else {
        return Err((Status::Internal, "the Python interpreter is not running".into()));
    };
    keep_thread_state();
    Python::attach(|py| {
        let internal = |e: PyErr| (Status::Internal, format_exception(py, &e, Some(interpreter)));
        let bridge = Bridge { services };
        let context = Context {
            bridge: AtomicPtr::new((&bridge as *const Bridge<'_>).cast::<Bridge<'static>>().cast_mut()),
            thread: thread::current().id(),
        };
        let ctx = Bound::new(py, context).map_err(internal)?;
        let _closed = Closed(ctx.get());
        let data = Bound::new(py, Data { payload: input }).map_err(internal)?;
        let data = PyMemoryView::from(data.as_any()).map_err(internal)?;
        let watch = match deadline {
            Some(deadline) => Some(DEADLINES.register(thread_ident(py, interpreter).map_err(internal)?, deadline)),
            None => None,
        };
        let result = function.callable.bind(py).call1((&ctx, &data));
        let interrupted = watch.is_some_and(|watch| DEADLINES.finish(py, watch));
        let output = match result {
            Ok(value) => output(py, name, &value, services),
            Err(err) => Err((raised_status(py, &err), format_exception(py, &err, Some(interpreter)))),
        };
        // Released so `data` itself cannot be read later (a view exported from it keeps the
        // payload alive, see `Data`): a BufferError saying it has exports is fine.
        let _ = data.call_method0("release");
        if interrupted {
            let detail = output.err().map(|(_, text)| format!(": {text}")).unwrap_or_default();
            return Err((Status::Timeout, format!("Python function {name:?} was interrupted at its deadline{detail}")));
        }
        output
    })
}

/// The status of an invocation that raised `err`: a `praas_function.Error` from a context call
/// keeps its status (as `?` does in Rust), anything else is [`Status::FunctionFailed`].
fn raised_status(py: Python<'_>, err: &PyErr) -> Status {
    if !err.is_instance_of::<Error>(py) {
        return Status::FunctionFailed;
    }
    match err.value(py).getattr("status").and_then(|s| s.extract::<u16>()) {
        Ok(code) if code != Status::Ok.code() => Status::from_code(code),
        _ => Status::FunctionFailed,
    }
}

/// The function's return value as output bytes.
fn output(py: Python<'_>, name: &str, value: &Bound<'_, PyAny>, services: &dyn Services) -> Result<PoolBuf, Failed> {
    if value.is_none() {
        return services.output(&[]);
    }
    if !(value.is_instance_of::<PyBytes>()
        || value.is_instance_of::<PyByteArray>()
        || value.is_instance_of::<PyMemoryView>())
    {
        let text = format!(
            "Python function {name:?} returned {}: expected bytes, bytearray, memoryview or None",
            type_name(value)
        );
        return Err((Status::FunctionFailed, text));
    }
    with_bytes(value, |bytes| services.output(bytes)).map_err(|e| {
        (Status::FunctionFailed, format_exception(py, &e, INTERPRETER.get().and_then(|i| i.as_ref().ok())))
    })?
}

thread_local! {
    /// This thread's Python thread id, once asked.
    static IDENT: Cell<Option<c_ulong>> = const { Cell::new(None) };
    /// Whether this thread keeps a Python thread state between its calls.
    static KEPT: Cell<bool> = const { Cell::new(false) };
}

/// Gives this thread a Python thread state that outlives its calls. Without one, each call's
/// `PyGILState_Ensure` creates a thread state and its `PyGILState_Release` destroys it again
/// (an mmap, a munmap and more per call); with one held at a count of one, every later pair only
/// takes and gives back the GIL. Called outside the GIL, before a thread's first call (the
/// threads that run functions live as long as the process; so does the state).
fn keep_thread_state() {
    if KEPT.get() {
        return;
    }
    // SAFETY: the interpreter is initialised (the caller found it running) and this thread does
    // not hold the GIL (a call nested in a Python call finds KEPT set by the outer one, which
    // set it before taking the GIL). `PyGILState_Ensure` creates this thread's state and takes
    // the GIL; `PyEval_SaveThread` gives the GIL back and keeps the state, its count at one.
    unsafe {
        ffi::PyGILState_Ensure();
        ffi::PyEval_SaveThread();
    }
    KEPT.set(true);
}

fn thread_ident(py: Python<'_>, interpreter: &Interpreter) -> PyResult<c_ulong> {
    if let Some(ident) = IDENT.get() {
        return Ok(ident);
    }
    let ident: c_ulong = interpreter.get_ident.call0(py)?.extract(py)?;
    IDENT.set(Some(ident));
    Ok(ident)
}

/// A running Python call with a deadline.
#[derive(Debug)]
struct Running {
    token: u64,
    thread: c_ulong,
    deadline: Instant,
    interrupted: bool,
}

/// The running Python calls with deadlines, and until when the deadline thread sleeps.
struct Watched {
    calls: Vec<Running>,
    /// The deadline thread sleeps until this instant (`None`: until it is woken): a call due no
    /// earlier needs no wake-up, which spares every call of the common case (the same default
    /// deadline for all) a futex wake and a thread switch.
    until: Option<Instant>,
}

/// The running Python calls with deadlines, and the thread that interrupts them.
struct Deadlines {
    calls: Mutex<Watched>,
    wake: Condvar,
    tokens: AtomicU64,
    started: OnceLock<()>,
}

static DEADLINES: Deadlines = Deadlines {
    calls: Mutex::new(Watched { calls: Vec::new(), until: None }),
    wake: Condvar::new(),
    tokens: AtomicU64::new(0),
    started: OnceLock::new(),
};

impl Deadlines {
    fn lock(&self) -> MutexGuard<'_, Watched> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a call on `thread` (the caller holds the GIL) due at `deadline`.
    fn register(&'static self, thread: c_ulong, deadline: Instant) -> u64 {
        self.started.get_or_init(|| {
            let spawned = thread::Builder::new().name("praas-py-deadlines".into()).spawn(move || self.run());
            if let Err(err) = spawned {
                tracing::warn!(
                    "cannot start the thread that interrupts Python functions at their deadlines: {err}; they will \
                     be answered TIMEOUT but run on until they return"
                );
            }
        });
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let mut watched = self.lock();
        let earlier = !matches!(watched.until, Some(until) if deadline >= until);
        watched.calls.push(Running { token, thread, deadline, interrupted: false });
        if earlier {
            // Sleeps until this one at most, once woken: later calls due later wake nobody.
            watched.until = Some(deadline);
            drop(watched);
            self.wake.notify_one();
        }
        token
    }

    /// Unregisters call `token` (the caller holds the GIL, so the deadline thread is not
    /// interrupting it meanwhile); whether it was interrupted. An interruption still pending
    /// (the call returned before Python saw it) is cleared, so it cannot hit the thread's next
    /// call.
    fn finish(&self, _py: Python<'_>, token: u64) -> bool {
        let mut watched = self.lock();
        let calls = &mut watched.calls;
        let Some(at) = calls.iter().position(|c| c.token == token) else { return false };
        let call = calls.swap_remove(at);
        if call.interrupted && !calls.iter().any(|c| c.thread == call.thread && c.interrupted) {
            // SAFETY: the GIL is held (`_py`); a null exception clears the thread's pending
            // asynchronous exception, if any, and touches nothing else.
            unsafe { ffi::PyThreadState_SetAsyncExc(call.thread as c_long, std::ptr::null_mut()) };
        }
        call.interrupted
    }

    /// The deadline thread: waits for the earliest deadline, then interrupts every overdue call.
    fn run(&self) {
        let mut watched = self.lock();
        loop {
            let now = Instant::now();
            let earliest = watched.calls.iter().filter(|c| !c.interrupted).map(|c| c.deadline).min();
            watched.until = earliest;
            match earliest {
                None => watched = self.wake.wait(watched).unwrap_or_else(|p| p.into_inner()),
                Some(at) if at > now => {
                    watched =
                        self.wake.wait_timeout(watched, at - now).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0)
                }
                Some(_) => {
                    // The GIL first, then the list, as the calls take them.
                    drop(watched);
                    Python::attach(|py| self.interrupt_overdue(py));
                    watched = self.lock();
                }
            }
        }
    }

    fn interrupt_overdue(&self, py: Python<'_>) {
        let exception = py.get_type::<DeadlineExceeded>();
        let now = Instant::now();
        let mut watched = self.lock();
        let mut interrupted: Vec<c_ulong> = Vec::new();
        for call in watched.calls.iter_mut().filter(|c| !c.interrupted && c.deadline <= now) {
            call.interrupted = true;
            if interrupted.contains(&call.thread) {
                continue;
            }
            interrupted.push(call.thread);
            // SAFETY: the GIL is held (`py`); `call.thread` runs a registered call, which
            // unregisters only while holding the GIL, so it is still inside that call; the
            // exception type lives as long as the interpreter.
            unsafe { ffi::PyThreadState_SetAsyncExc(call.thread as c_long, exception.as_ptr()) };
        }
    }
}
