//! The stable C ABI between the praas runtime and the functions it runs.
//!
//! A function lives in a shared library and is exported under a C symbol with the signature
//! [`praas_function`]. The runtime calls it with the input bytes, a [`praas_context`] and a
//! [`praas_output`] buffer that the runtime owns: the function writes its result there, so returning
//! a result never copies it. Everything a function may ask of the runtime (state, messages to
//! other processes, local invocations, the process id, logging, growing the output) goes through the function table
//! [`praas_api`] that the context points to: a function library links against nothing of praas.
//!
//! `ffi/include/praas.h` declares the same layout for C and C++; `tests/header.rs` compiles it
//! with the system C compiler and checks it against the definitions here.
//!
//! Rust functions use the safe [`Context`] and [`Output`] wrappers and export themselves with
//! [`export!`], which also turns a panic into an error result instead of unwinding into the runtime.

#![allow(non_camel_case_types)]

use std::ffi::c_void;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Version of this ABI; bumped on any change of the types below. Version 2 appended the remote
/// invocation entries to [`praas_api`] (`remote_invoke`, `remote_submit`, `remote_wait`): a
/// library built against version 1 reads only the entries before them and runs unchanged; a
/// library that calls them checks [`praas_api::abi_version`] first ([`Context`] does).
pub const PRAAS_ABI_VERSION: u32 = 2;
/// The first ABI version with remote invocations.
pub const PRAAS_ABI_REMOTE: u32 = 2;

/// Status codes shared by the C ABI and the wire protocol (`docs/protocol.md`).
///
/// A function returns [`PRAAS_OK`] or any non-zero code; the runtime reports codes it does not
/// know as [`PRAAS_ERR_FUNCTION`].
pub const PRAAS_OK: i32 = 0;
/// The function reported a failure (its message says why).
pub const PRAAS_ERR_FUNCTION: i32 = 1;
/// No function of that name in this process.
pub const PRAAS_ERR_UNKNOWN_FUNCTION: i32 = 2;
/// The function panicked (Rust) or aborted its work; the process keeps serving.
pub const PRAAS_ERR_PANICKED: i32 = 3;
/// The invocation did not finish before its deadline.
pub const PRAAS_ERR_TIMEOUT: i32 = 4;
/// A frame or payload exceeded the configured maximum.
pub const PRAAS_ERR_TOO_LARGE: i32 = 5;
/// Bytes that do not follow the protocol.
pub const PRAAS_ERR_MALFORMED: i32 = 6;
/// The process is out of a resource (workers, buffers); retrying later may succeed.
pub const PRAAS_ERR_OVERLOADED: i32 = 7;
/// A state key (or another named thing) does not exist.
pub const PRAAS_ERR_NOT_FOUND: i32 = 8;
/// The request is valid but not supported by this process.
pub const PRAAS_ERR_UNSUPPORTED: i32 = 9;
/// An argument was invalid (for example a key that is not UTF-8).
pub const PRAAS_ERR_INVALID_ARGUMENT: i32 = 10;
/// A bug in the runtime; the message says more.
pub const PRAAS_ERR_INTERNAL: i32 = 11;
/// The destination process cannot receive now: swapped out, not running, or unreachable.
pub const PRAAS_ERR_UNAVAILABLE: i32 = 12;
/// A connection did not prove that it belongs to the same application.
pub const PRAAS_ERR_UNAUTHENTICATED: i32 = 13;

/// Log levels for [`praas_api::log`].
pub const PRAAS_LOG_ERROR: i32 = 1;
/// Warning level.
pub const PRAAS_LOG_WARN: i32 = 2;
/// Info level.
pub const PRAAS_LOG_INFO: i32 = 3;
/// Debug level.
pub const PRAAS_LOG_DEBUG: i32 = 4;

/// Bytes lent by the runtime to a function (a state value, the result of a local invocation, the
/// list of state keys). The function must hand them back with [`praas_api::release`] exactly once.
#[repr(C)]
#[derive(Debug)]
pub struct praas_bytes {
    /// First byte; valid for `len` bytes until released. May be dangling when `len` is 0.
    pub data: *const u8,
    /// Number of bytes.
    pub len: usize,
    /// Runtime-private owner of the bytes; null when there is nothing to release.
    pub owner: *mut c_void,
}

impl praas_bytes {
    /// An empty value that owns nothing.
    pub const fn empty() -> Self {
        Self { data: std::ptr::null(), len: 0, owner: std::ptr::null_mut() }
    }
}

/// The output buffer of one invocation. The runtime owns the memory; the function writes up to
/// `capacity` bytes at `data`, sets `len`, and calls [`praas_api::output_reserve`] to get more room.
#[repr(C)]
#[derive(Debug)]
pub struct praas_output {
    /// Start of the writable buffer.
    pub data: *mut u8,
    /// Bytes of output written so far.
    pub len: usize,
    /// Writable bytes at `data`.
    pub capacity: usize,
    /// Runtime-private handle of the buffer.
    pub handle: *mut c_void,
}

/// The runtime's services, reached through [`praas_context::api`].
///
/// Every entry returns a status code (`PRAAS_OK` on success) unless documented otherwise. Key and
/// name arguments are UTF-8 bytes with an explicit length (no terminating NUL needed).
#[repr(C)]
#[derive(Debug)]
pub struct praas_api {
    /// [`PRAAS_ABI_VERSION`] of the runtime.
    pub abi_version: u32,
    /// Grows `out` so that at least `additional` more bytes fit after `out->len`; keeps the bytes
    /// written so far (they may move: reload `out->data`).
    pub output_reserve: unsafe extern "C" fn(ctx: *mut praas_context, out: *mut praas_output, additional: usize) -> i32,
    /// Stores `value` under `key` in the process state, replacing any value, with the current time.
    pub state_put: unsafe extern "C" fn(
        ctx: *mut praas_context,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> i32,
    /// Reads the value of `key` without removing it; `timestamp_ns` (may be null) receives the
    /// time of its last write in nanoseconds since the Unix epoch. `PRAAS_ERR_NOT_FOUND` if absent.
    pub state_get: unsafe extern "C" fn(
        ctx: *mut praas_context,
        key: *const u8,
        key_len: usize,
        value: *mut praas_bytes,
        timestamp_ns: *mut u64,
    ) -> i32,
    /// Removes `key`; `PRAAS_ERR_NOT_FOUND` if it was absent.
    pub state_delete: unsafe extern "C" fn(ctx: *mut praas_context, key: *const u8, key_len: usize) -> i32,
    /// Lists the state keys: `keys` receives records of `u16` key length (little-endian), the key
    /// bytes, and a `u64` timestamp in nanoseconds (little-endian).
    pub state_keys: unsafe extern "C" fn(ctx: *mut praas_context, keys: *mut praas_bytes) -> i32,
    /// Invokes another function of the same process on the calling thread and lends its output.
    /// On an error status, `output` holds the error message.
    pub invoke: unsafe extern "C" fn(
        ctx: *mut praas_context,
        function: *const u8,
        function_len: usize,
        input: *const u8,
        input_len: usize,
        output: *mut praas_bytes,
    ) -> i32,
    /// Lends the id of this process (UTF-8, nothing to release).
    pub process_id: unsafe extern "C" fn(ctx: *mut praas_context, id: *mut praas_bytes) -> i32,
    /// Writes a log line at `level` (`PRAAS_LOG_*`) attributed to the running function.
    pub log: unsafe extern "C" fn(ctx: *mut praas_context, level: i32, message: *const u8, message_len: usize),
    /// Sets the error message reported with a non-zero return status.
    pub set_error: unsafe extern "C" fn(ctx: *mut praas_context, message: *const u8, message_len: usize),
    /// Hands back bytes lent by the runtime. Releasing `praas_bytes` with a null owner does nothing.
    pub release: unsafe extern "C" fn(ctx: *mut praas_context, bytes: *mut praas_bytes),
    /// Puts the message `data` under `key` to process `dest` (this process's own id: its own
    /// mailbox) and returns once the destination has stored it. Messages with the same key from
    /// the same source queue in order; none is dropped. `PRAAS_ERR_NOT_FOUND`: no such process;
    /// `PRAAS_ERR_UNAVAILABLE`: swapped out, not running or unreachable; `PRAAS_ERR_TIMEOUT`: no
    /// confirmation before the invocation's deadline; `PRAAS_ERR_OVERLOADED`: its mailbox is full
    /// or it is swapping out. On an error status, `error` (may be null) receives the reason (lent).
    pub put: unsafe extern "C" fn(
        ctx: *mut praas_context,
        dest: *const u8,
        dest_len: usize,
        key: *const u8,
        key_len: usize,
        data: *const u8,
        data_len: usize,
        error: *mut praas_bytes,
    ) -> i32,
    /// Takes the oldest message under `key` from process `source` (null or length 0: from any
    /// process), waiting up to `timeout_ms` (0: only look) and never past the invocation's
    /// deadline. `message` receives its bytes and `from` (may be null) the source's id, both lent.
    /// `PRAAS_ERR_TIMEOUT` if none came; on an error status `message` holds the reason (lent).
    pub get: unsafe extern "C" fn(
        ctx: *mut praas_context,
        source: *const u8,
        source_len: usize,
        key: *const u8,
        key_len: usize,
        timeout_ms: u64,
        message: *mut praas_bytes,
        from: *mut praas_bytes,
    ) -> i32,
    /// (Version 2.) Invokes `function` of process `process` of the same application with
    /// `input`, over the peer connections that carry messages, within the invocation's deadline
    /// (which travels with the call), and lends its output. On an error status `output` holds the
    /// reason (lent): `PRAAS_ERR_NOT_FOUND` no such process, `PRAAS_ERR_UNKNOWN_FUNCTION` no such
    /// function, the callee's own status if it failed or panicked, `PRAAS_ERR_TIMEOUT` deadline
    /// passed (a swapped-out callee is first swapped in through the control plane, within it),
    /// `PRAAS_ERR_UNAVAILABLE` swapped out and not swapped in (`swap_in_on_call = false`, no
    /// control channel), not running or unreachable, `PRAAS_ERR_UNSUPPORTED` from an inline
    /// function.
    pub remote_invoke: unsafe extern "C" fn(
        ctx: *mut praas_context,
        process: *const u8,
        process_len: usize,
        function: *const u8,
        function_len: usize,
        input: *const u8,
        input_len: usize,
        output: *mut praas_bytes,
    ) -> i32,
    /// (Version 2.) Starts the remote invocation `remote_invoke` makes and returns once its
    /// request is sent: `handle` receives the handle to wait for it with (`remote_wait`). Calls
    /// not waited for are dropped when the function returns. On an error status `error` (may be
    /// null) receives the reason (lent).
    pub remote_submit: unsafe extern "C" fn(
        ctx: *mut praas_context,
        process: *const u8,
        process_len: usize,
        function: *const u8,
        function_len: usize,
        input: *const u8,
        input_len: usize,
        handle: *mut u64,
        error: *mut praas_bytes,
    ) -> i32,
    /// (Version 2.) Waits for the first of the `count` calls `handles` names to finish; `index`
    /// (may be null) receives its position in `handles`, `output` its output or the reason of an
    /// error status (lent), and the status is returned. That handle is spent; the others stay in
    /// flight. An unknown handle: `PRAAS_ERR_INVALID_ARGUMENT` at its position.
    pub remote_wait: unsafe extern "C" fn(
        ctx: *mut praas_context,
        handles: *const u64,
        count: usize,
        index: *mut usize,
        output: *mut praas_bytes,
    ) -> i32,
}

/// The context of one invocation, valid only during the call that received it.
#[repr(C)]
#[derive(Debug)]
pub struct praas_context {
    /// The runtime's function table.
    pub api: *const praas_api,
    /// Runtime-private state of the invocation.
    pub runtime: *mut c_void,
}

/// Signature of every exported function: returns `PRAAS_OK` or an error status.
pub type praas_function =
    unsafe extern "C" fn(ctx: *mut praas_context, input: *const u8, input_len: usize, output: *mut praas_output) -> i32;

/// An error a Rust function returns: a status code and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// A non-zero `PRAAS_ERR_*` status.
    pub status: i32,
    /// Human-readable reason.
    pub message: String,
}

impl Error {
    /// A function failure ([`PRAAS_ERR_FUNCTION`]) with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self { status: PRAAS_ERR_FUNCTION, message: message.into() }
    }

    /// An error with an explicit status.
    pub fn with_status(status: i32, message: impl Into<String>) -> Self {
        let status = if status == PRAAS_OK { PRAAS_ERR_FUNCTION } else { status };
        Self { status, message: message.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (status {})", self.message, self.status)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Self::new(err.to_string())
    }
}

/// What a Rust function returns.
pub type Result<T> = std::result::Result<T, Error>;

/// Bytes lent by the runtime; handed back when dropped.
pub struct Lent<'a> {
    ctx: *mut praas_context,
    bytes: praas_bytes,
    _context: PhantomData<&'a mut praas_context>,
}

impl Lent<'_> {
    /// The lent bytes.
    pub fn as_slice(&self) -> &[u8] {
        if self.bytes.len == 0 {
            return &[];
        }
        // SAFETY: the runtime lent `len` initialised bytes at `data`, valid until `release`, which
        // only `Drop` calls; the borrow of `self` keeps them alive for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.bytes.data, self.bytes.len) }
    }
}

impl std::ops::Deref for Lent<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for Lent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lent").field("len", &self.bytes.len).finish()
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        // SAFETY: `ctx` is the live context these bytes were lent through (the lifetime ties `Lent`
        // to it), and the bytes are released exactly once, here.
        unsafe { ((*(*self.ctx).api).release)(self.ctx, &mut self.bytes) }
    }
}

/// The safe view of a [`praas_context`] for Rust functions.
pub struct Context<'a> {
    raw: *mut praas_context,
    _invocation: PhantomData<&'a mut praas_context>,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

fn check(status: i32, what: &str) -> Result<()> {
    if status == PRAAS_OK {
        Ok(())
    } else {
        Err(Error::with_status(status, format!("{what} failed with status {status}")))
    }
}

impl<'a> Context<'a> {
    /// Wraps the context the runtime passed to an exported function.
    ///
    /// # Safety
    /// `raw` must be the context of the invocation that is running, valid for `'a`.
    pub unsafe fn from_raw(raw: *mut praas_context) -> Self {
        Self { raw, _invocation: PhantomData }
    }

    fn api(&self) -> &praas_api {
        // SAFETY: a live context always points to the runtime's function table, which outlives it.
        unsafe { &*(*self.raw).api }
    }

    /// Stores `value` under `key` in the process state.
    pub fn state_put(&mut self, key: &str, value: &[u8]) -> Result<()> {
        // SAFETY: the pointers and lengths describe live slices for the duration of the call.
        let status = unsafe { (self.api().state_put)(self.raw, key.as_ptr(), key.len(), value.as_ptr(), value.len()) };
        check(status, "state_put")
    }

    /// Reads the value of `key` and the time of its last write (ns since the epoch); `None` if absent.
    pub fn state_get(&mut self, key: &str) -> Result<Option<(Lent<'a>, u64)>> {
        let mut bytes = praas_bytes::empty();
        let mut timestamp = 0u64;
        // SAFETY: `key` is a live slice; `bytes` and `timestamp` are valid places for the runtime to write.
        let status = unsafe { (self.api().state_get)(self.raw, key.as_ptr(), key.len(), &mut bytes, &mut timestamp) };
        match status {
            PRAAS_OK => Ok(Some((Lent { ctx: self.raw, bytes, _context: PhantomData }, timestamp))),
            PRAAS_ERR_NOT_FOUND => Ok(None),
            other => check(other, "state_get").map(|()| None),
        }
    }

    /// Removes `key`; returns whether it existed.
    pub fn state_delete(&mut self, key: &str) -> Result<bool> {
        // SAFETY: `key` is a live slice for the duration of the call.
        let status = unsafe { (self.api().state_delete)(self.raw, key.as_ptr(), key.len()) };
        match status {
            PRAAS_OK => Ok(true),
            PRAAS_ERR_NOT_FOUND => Ok(false),
            other => check(other, "state_delete").map(|()| false),
        }
    }

    /// Lists the state keys with the time of their last write (ns since the epoch).
    pub fn state_keys(&mut self) -> Result<Vec<(String, u64)>> {
        let mut bytes = praas_bytes::empty();
        // SAFETY: `bytes` is a valid place for the runtime to write.
        let status = unsafe { (self.api().state_keys)(self.raw, &mut bytes) };
        check(status, "state_keys")?;
        let lent = Lent { ctx: self.raw, bytes, _context: PhantomData };
        decode_keys(&lent).ok_or_else(|| Error::with_status(PRAAS_ERR_INTERNAL, "malformed key list from the runtime"))
    }

    /// Invokes `function` of this process with `input` on this thread and returns its output.
    pub fn invoke(&mut self, function: &str, input: &[u8]) -> Result<Lent<'a>> {
        let mut bytes = praas_bytes::empty();
        // SAFETY: the slices are live for the call; `bytes` is a valid place for the runtime to write.
        let status = unsafe {
            (self.api().invoke)(self.raw, function.as_ptr(), function.len(), input.as_ptr(), input.len(), &mut bytes)
        };
        self.output_or_error(status, bytes)
    }

    /// The id of this process.
    pub fn process_id(&mut self) -> String {
        let mut bytes = praas_bytes::empty();
        // SAFETY: `bytes` is a valid place for the runtime to write.
        let status = unsafe { (self.api().process_id)(self.raw, &mut bytes) };
        if status != PRAAS_OK {
            return String::new();
        }
        let lent = Lent { ctx: self.raw, bytes, _context: PhantomData };
        String::from_utf8_lossy(&lent).into_owned()
    }

    /// Writes a log line at `level` (`PRAAS_LOG_*`).
    pub fn log(&mut self, level: i32, message: &str) {
        // SAFETY: `message` is a live slice for the duration of the call.
        unsafe { (self.api().log)(self.raw, level, message.as_ptr(), message.len()) }
    }

    /// Puts the message `data` under `key` to process `dest` (this process's own id: its own
    /// mailbox); returns once the destination has stored it.
    pub fn put(&mut self, dest: &str, key: &str, data: &[u8]) -> Result<()> {
        let mut error = praas_bytes::empty();
        // SAFETY: the slices are live for the call; `error` is a valid place for the runtime to write.
        let status = unsafe {
            (self.api().put)(
                self.raw,
                dest.as_ptr(),
                dest.len(),
                key.as_ptr(),
                key.len(),
                data.as_ptr(),
                data.len(),
                &mut error,
            )
        };
        let error = Lent { ctx: self.raw, bytes: error, _context: PhantomData };
        if status == PRAAS_OK {
            Ok(())
        } else {
            Err(Error::with_status(status, String::from_utf8_lossy(&error).into_owned()))
        }
    }

    /// Takes the oldest message under `key` from process `source` (`None`: from any process),
    /// waiting up to `timeout` (zero: only look; never past the invocation's deadline). No message
    /// in time is an error with status [`PRAAS_ERR_TIMEOUT`].
    pub fn get(&mut self, source: Option<&str>, key: &str, timeout: std::time::Duration) -> Result<Message<'a>> {
        let source = source.unwrap_or("");
        // Round up: a wait shorter than a millisecond still waits.
        let timeout_ms = u64::try_from(timeout.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        let mut data = praas_bytes::empty();
        let mut from = praas_bytes::empty();
        // SAFETY: the slices are live for the call; `data` and `from` are valid places for the
        // runtime to write.
        let status = unsafe {
            (self.api().get)(
                self.raw,
                source.as_ptr(),
                source.len(),
                key.as_ptr(),
                key.len(),
                timeout_ms,
                &mut data,
                &mut from,
            )
        };
        let data = Lent { ctx: self.raw, bytes: data, _context: PhantomData };
        let from = Lent { ctx: self.raw, bytes: from, _context: PhantomData };
        if status == PRAAS_OK {
            Ok(Message { from: String::from_utf8_lossy(&from).into_owned(), data })
        } else {
            Err(Error::with_status(status, String::from_utf8_lossy(&data).into_owned()))
        }
    }

    /// What an entry that lends its output or its error text in `bytes` answered: the output
    /// when `status` is `PRAAS_OK`, else the error with that status and text.
    fn output_or_error(&self, status: i32, bytes: praas_bytes) -> Result<Lent<'a>> {
        let lent = Lent { ctx: self.raw, bytes, _context: PhantomData };
        if status == PRAAS_OK {
            Ok(lent)
        } else {
            Err(Error::with_status(status, String::from_utf8_lossy(&lent).into_owned()))
        }
    }

    /// Fails with `PRAAS_ERR_UNSUPPORTED` if the runtime's table has no remote invocation
    /// entries (a version-1 runtime).
    fn remote_api(&self) -> Result<&praas_api> {
        let api = self.api();
        if api.abi_version < PRAAS_ABI_REMOTE {
            let text = format!("the runtime's ABI version {} has no remote invocations", api.abi_version);
            return Err(Error::with_status(PRAAS_ERR_UNSUPPORTED, text));
        }
        Ok(api)
    }

    /// Invokes `function` of process `process` of this application with `input` and returns its
    /// output, within this invocation's deadline (which travels with the call). The error's
    /// status says why not ([`praas_api::remote_invoke`]).
    pub fn invoke_remote(&mut self, process: &str, function: &str, input: &[u8]) -> Result<Lent<'a>> {
        let api = self.remote_api()?;
        let mut bytes = praas_bytes::empty();
        // SAFETY: the table is version 2 or later (checked), so the entry exists; the slices are
        // live for the call and `bytes` is a valid place for the runtime to write.
        let status = unsafe {
            (api.remote_invoke)(
                self.raw,
                process.as_ptr(),
                process.len(),
                function.as_ptr(),
                function.len(),
                input.as_ptr(),
                input.len(),
                &mut bytes,
            )
        };
        self.output_or_error(status, bytes)
    }

    /// Starts invoking `function` of process `process` with `input`; returns once the request is
    /// sent. Wait for it with [`Context::wait`], [`Context::wait_any`] or [`Context::wait_all`]:
    /// calls submitted before waiting run at once on their processes.
    pub fn submit(&mut self, process: &str, function: &str, input: &[u8]) -> Result<Call> {
        let api = self.remote_api()?;
        let mut handle = 0u64;
        let mut error = praas_bytes::empty();
        // SAFETY: the table is version 2 or later (checked); the slices are live for the call,
        // `handle` and `error` are valid places for the runtime to write.
        let status = unsafe {
            (api.remote_submit)(
                self.raw,
                process.as_ptr(),
                process.len(),
                function.as_ptr(),
                function.len(),
                input.as_ptr(),
                input.len(),
                &mut handle,
                &mut error,
            )
        };
        let error = Lent { ctx: self.raw, bytes: error, _context: PhantomData };
        if status == PRAAS_OK {
            Ok(Call(handle))
        } else {
            Err(Error::with_status(status, String::from_utf8_lossy(&error).into_owned()))
        }
    }

    /// Waits for `call` and returns its output.
    pub fn wait(&mut self, call: Call) -> Result<Lent<'a>> {
        let mut calls = vec![call];
        match self.wait_any(&mut calls) {
            Some((_, result)) => result,
            None => Err(Error::with_status(PRAAS_ERR_INTERNAL, "wait: no call")),
        }
    }

    /// Waits for whichever of `calls` finishes first, removes it from `calls` and returns it
    /// with its result; `None` when `calls` is empty.
    pub fn wait_any(&mut self, calls: &mut Vec<Call>) -> Option<(Call, Result<Lent<'a>>)> {
        if calls.is_empty() {
            return None;
        }
        let api = match self.remote_api() {
            Ok(api) => api,
            Err(err) => return Some((calls.remove(0), Err(err))),
        };
        let handles: Vec<u64> = calls.iter().map(|c| c.0).collect();
        let mut index = 0usize;
        let mut bytes = praas_bytes::empty();
        // SAFETY: the table is version 2 or later (checked); `handles` is a live array of its
        // length, `index` and `bytes` are valid places for the runtime to write.
        let status = unsafe { (api.remote_wait)(self.raw, handles.as_ptr(), handles.len(), &mut index, &mut bytes) };
        let call = calls.remove(index.min(calls.len() - 1));
        Some((call, self.output_or_error(status, bytes)))
    }

    /// Waits for every one of `calls`; their results in the order of `calls`.
    pub fn wait_all(&mut self, calls: Vec<Call>) -> Vec<Result<Lent<'a>>> {
        calls.into_iter().map(|call| self.wait(call)).collect()
    }

    fn set_error(&mut self, message: &str) {
        // SAFETY: `message` is a live slice for the duration of the call.
        unsafe { (self.api().set_error)(self.raw, message.as_ptr(), message.len()) }
    }
}

/// A remote invocation in flight, started by [`Context::submit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Call(pub u64);

/// A message taken from the process's mailbox by [`Context::get`].
#[derive(Debug)]
pub struct Message<'a> {
    /// The id of the process that put it.
    pub from: String,
    /// Its bytes, lent by the runtime.
    pub data: Lent<'a>,
}

/// Decodes the key list format of [`praas_api::state_keys`].
pub fn decode_keys(mut bytes: &[u8]) -> Option<Vec<(String, u64)>> {
    let mut keys = Vec::new();
    while !bytes.is_empty() {
        let len = u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
        let key = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?.to_owned();
        let ts = u64::from_le_bytes(bytes.get(2 + len..10 + len)?.try_into().ok()?);
        keys.push((key, ts));
        bytes = &bytes[10 + len..];
    }
    Some(keys)
}

/// Appends one record of the key list format of [`praas_api::state_keys`]; keys longer than
/// `u16::MAX` bytes are refused by the state store before they get here.
pub fn encode_key(out: &mut Vec<u8>, key: &str, timestamp_ns: u64) {
    let len = u16::try_from(key.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&key.as_bytes()[..len as usize]);
    out.extend_from_slice(&timestamp_ns.to_le_bytes());
}

/// The safe view of a [`praas_output`]: a growable byte buffer owned by the runtime.
pub struct Output<'a> {
    ctx: *mut praas_context,
    raw: *mut praas_output,
    _invocation: PhantomData<&'a mut praas_output>,
}

impl fmt::Debug for Output<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output").field("len", &self.len()).finish()
    }
}

impl Output<'_> {
    /// Wraps the output buffer the runtime passed to an exported function.
    ///
    /// # Safety
    /// `ctx` and `raw` must be the context and output of the running invocation, valid for `'a`.
    pub unsafe fn from_raw(ctx: *mut praas_context, raw: *mut praas_output) -> Self {
        Self { ctx, raw, _invocation: PhantomData }
    }

    fn raw(&self) -> &praas_output {
        // SAFETY: `raw` points to the invocation's output for the lifetime of `self`.
        unsafe { &*self.raw }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.raw().len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes room for at least `additional` more bytes.
    pub fn reserve(&mut self, additional: usize) -> Result<()> {
        if self.raw().capacity - self.raw().len >= additional {
            return Ok(());
        }
        // SAFETY: `ctx` and `raw` belong to the running invocation.
        let status = unsafe { ((*(*self.ctx).api).output_reserve)(self.ctx, self.raw, additional) };
        check(status, "output_reserve")
    }

    /// Appends `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> Result<()> {
        self.reserve(bytes.len())?;
        let raw = self.raw();
        // SAFETY: `reserve` guaranteed `capacity - len >= bytes.len()` writable bytes after `len`,
        // and runtime memory never overlaps the caller's slice.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), raw.data.add(raw.len), bytes.len()) };
        // SAFETY: as above; `raw` is valid and exclusively ours during the call.
        unsafe { (*self.raw).len += bytes.len() };
        Ok(())
    }

    /// Grows the output to `len` bytes (new bytes are zero) and returns it for writing in place.
    pub fn resize(&mut self, len: usize) -> Result<&mut [u8]> {
        let current = self.len();
        if len > current {
            self.reserve(len - current)?;
            let raw = self.raw();
            // SAFETY: `reserve` made `len - current` bytes after `current` writable.
            unsafe { std::ptr::write_bytes(raw.data.add(current), 0, len - current) };
        }
        // SAFETY: `raw` is valid and exclusively ours; `len <= capacity` after the reserve above.
        unsafe { (*self.raw).len = len };
        Ok(self.as_mut_slice())
    }

    /// The bytes written so far.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let raw = self.raw();
        if raw.len == 0 {
            return &mut [];
        }
        // SAFETY: the runtime gave `capacity` writable bytes at `data`; `len <= capacity` were
        // written; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(raw.data, raw.len) }
    }
}

impl std::io::Write for Output<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.extend_from_slice(buf).map_err(|e| std::io::Error::other(e.message))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The signature of a safe Rust function exported with [`export!`].
pub type RustFunction = fn(&mut Context<'_>, &[u8], &mut Output<'_>) -> Result<()>;

/// Runs a safe Rust function behind the C ABI: wraps the raw pointers, catches panics and
/// reports errors through `set_error`. Called by the code [`export!`] generates.
///
/// # Safety
/// The arguments must be those the runtime passed to the exported C symbol.
#[doc(hidden)]
pub unsafe fn __call(
    ctx: *mut praas_context,
    input: *const u8,
    input_len: usize,
    output: *mut praas_output,
    function: RustFunction,
) -> i32 {
    let input = if input_len == 0 {
        &[][..]
    } else {
        // SAFETY: the runtime passes `input_len` readable bytes at `input`, valid for the call.
        unsafe { std::slice::from_raw_parts(input, input_len) }
    };
    // SAFETY: forwarded from the caller's contract.
    let mut context = unsafe { Context::from_raw(ctx) };
    // SAFETY: forwarded from the caller's contract.
    let mut out = unsafe { Output::from_raw(ctx, output) };
    let result = catch_unwind(AssertUnwindSafe(|| function(&mut context, input, &mut out)));
    match result {
        Ok(Ok(())) => PRAAS_OK,
        Ok(Err(err)) => {
            context.set_error(&err.message);
            err.status
        }
        Err(panic) => {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            context.set_error(&reason);
            PRAAS_ERR_PANICKED
        }
    }
}

/// Exports safe Rust functions under C symbols the runtime can load.
///
/// ```no_run
/// fn echo(_ctx: &mut praas_ffi::Context<'_>, input: &[u8], out: &mut praas_ffi::Output<'_>) -> praas_ffi::Result<()> {
///     out.extend_from_slice(input)
/// }
/// praas_ffi::export!(echo);
/// ```
#[macro_export]
macro_rules! export {
    ($($function:ident),+ $(,)?) => {
        $(
            const _: () = {
                #[export_name = stringify!($function)]
                unsafe extern "C" fn exported(
                    ctx: *mut $crate::praas_context,
                    input: *const u8,
                    input_len: usize,
                    output: *mut $crate::praas_output,
                ) -> i32 {
                    // SAFETY: the runtime calls this symbol with the arguments of one invocation.
                    unsafe { $crate::__call(ctx, input, input_len, output, $function) }
                }
            };
        )+
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_list_round_trips() {
        let mut buf = Vec::new();
        encode_key(&mut buf, "alpha", 7);
        encode_key(&mut buf, "", u64::MAX);
        assert_eq!(decode_keys(&buf), Some(vec![("alpha".to_owned(), 7), (String::new(), u64::MAX)]));
        assert_eq!(decode_keys(&buf[..buf.len() - 1]), None);
    }

    #[test]
    fn error_never_carries_ok_status() {
        assert_eq!(Error::with_status(PRAAS_OK, "x").status, PRAAS_ERR_FUNCTION);
    }
}
