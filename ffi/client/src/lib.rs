//! The praas client SDK as a C library: `ffi/include/praas_client.h` declares what this crate
//! exports. C and C++ programs connect to a cloud process over TCP (io_uring where the kernel
//! allows it) or RDMA (`rdma://HOST:PORT`), invoke its functions and get their outputs, with the
//! status codes of `praas.h` for every failure and the reason as text.
//!
//! Every entry checks its pointers (NULL is `PRAAS_ERR_INVALID_ARGUMENT`, never a crash) and
//! catches panics of the SDK (`PRAAS_ERR_INTERNAL`), so no unwinding crosses into C. A
//! `praas_client` is used by one thread at a time; outputs belong to the caller until
//! `praas_client_free_output`.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use praas_dataplane::{ClientError, ClientOptions, Credentials, Invoker};
use praas_ffi::{
    PRAAS_ERR_INTERNAL, PRAAS_ERR_INVALID_ARGUMENT, PRAAS_ERR_MALFORMED, PRAAS_ERR_TIMEOUT, PRAAS_ERR_TOO_LARGE,
    PRAAS_ERR_UNAVAILABLE, PRAAS_OK,
};

/// How long to wait when the caller passes 0.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to a cloud process: the opaque `praas_client` of the header.
pub struct praas_client {
    /// TCP or RDMA, by the address.
    connection: Box<dyn Invoker>,
}

impl std::fmt::Debug for praas_client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("praas_client").finish_non_exhaustive()
    }
}

/// The status code of a failed invocation: the process's own status, or the client's.
fn status_of(err: &ClientError) -> i32 {
    match err {
        ClientError::Remote { status, .. } => i32::from(status.code()),
        ClientError::Timeout(_) => PRAAS_ERR_TIMEOUT,
        ClientError::Io(_) | ClientError::Closed => PRAAS_ERR_UNAVAILABLE,
        ClientError::Protocol(_) => PRAAS_ERR_MALFORMED,
        ClientError::TooLarge { .. } => PRAAS_ERR_TOO_LARGE,
        // A failure this version does not know: the process could not be used.
        _ => PRAAS_ERR_UNAVAILABLE,
    }
}

/// Writes `text` into the caller's buffer `err` of `len` bytes, cut to fit, NUL-terminated
/// (nothing if `err` is NULL or `len` is 0).
///
/// # Safety
/// `err`, if not NULL, points to `len` writable bytes.
unsafe fn report(err: *mut c_char, len: usize, text: &str) {
    if err.is_null() || len == 0 {
        return;
    }
    let n = text.len().min(len - 1);
    // SAFETY: the caller's contract: `err` holds `len` bytes, and `n + 1 <= len`.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

/// A C string argument as UTF-8.
///
/// # Safety
/// `text`, if not NULL, points to a NUL-terminated string.
unsafe fn utf8<'a>(text: *const c_char, what: &str) -> Result<&'a str, String> {
    if text.is_null() {
        return Err(format!("{what} is NULL"));
    }
    // SAFETY: the caller's contract.
    unsafe { CStr::from_ptr(text) }.to_str().map_err(|_| format!("{what} is not UTF-8"))
}

fn connect(address: &str, timeout: Duration, credentials: Option<Credentials>) -> Result<Box<dyn Invoker>, String> {
    let options = ClientOptions { timeout, credentials, ..ClientOptions::default() };
    praas_dataplane::connect_invoker(address, options).map_err(|e| format!("cannot connect to {address}: {e}"))
}

/// Connects to the cloud process at `address` (`HOST:PORT`, or `rdma://HOST:PORT`);
/// `timeout_ms` bounds the connection and every later wait (0: 60 s). Returns NULL on failure,
/// with the reason in `err`.
///
/// # Safety
/// `address` is NULL or a NUL-terminated string; `err` is NULL or holds `err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn praas_client_connect(
    address: *const c_char,
    timeout_ms: u32,
    err: *mut c_char,
    err_len: usize,
) -> *mut praas_client {
    // SAFETY: forwarded from this function's contract.
    unsafe { connect_entry(timeout_ms, err, err_len, || Ok((utf8(address, "the address")?, None))) }
}

/// Connects as [`praas_client_connect`] does and authenticates as client `name` of application
/// `app` with the application's client key `key`, for processes that serve authenticated clients
/// only. Returns NULL on failure, with the reason (a refusal: the process's) in `err`.
///
/// # Safety
/// `address`, `app`, `name` and `key` are NULL or NUL-terminated strings; `err` is NULL or holds
/// `err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn praas_client_connect_auth(
    address: *const c_char,
    app: *const c_char,
    name: *const c_char,
    key: *const c_char,
    timeout_ms: u32,
    err: *mut c_char,
    err_len: usize,
) -> *mut praas_client {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        connect_entry(timeout_ms, err, err_len, || {
            let credentials = Credentials {
                app: utf8(app, "the application")?.to_owned(),
                name: utf8(name, "the client name")?.to_owned(),
                key: utf8(key, "the client key")?.to_owned(),
            };
            Ok((utf8(address, "the address")?, Some(credentials)))
        })
    }
}

/// Both connect entries: the address and credentials `args` gives, the timeout, the reason of a
/// failure into `err`, no panic across the C boundary.
///
/// # Safety
/// `err` is NULL or holds `err_len` bytes; `args` reads only what its caller's contract allows.
unsafe fn connect_entry<'a>(
    timeout_ms: u32,
    err: *mut c_char,
    err_len: usize,
    args: impl FnOnce() -> Result<(&'a str, Option<Credentials>), String> + std::panic::UnwindSafe,
) -> *mut praas_client {
    let result = catch_unwind(|| {
        let (address, credentials) = args()?;
        let timeout = if timeout_ms == 0 { DEFAULT_TIMEOUT } else { Duration::from_millis(timeout_ms.into()) };
        connect(address, timeout, credentials)
    });
    match result {
        Ok(Ok(connection)) => Box::into_raw(Box::new(praas_client { connection })),
        Ok(Err(text)) => {
            // SAFETY: forwarded from this function's contract.
            unsafe { report(err, err_len, &text) };
            std::ptr::null_mut()
        }
        Err(_) => {
            // SAFETY: forwarded from this function's contract.
            unsafe { report(err, err_len, "internal error in the praas client") };
            std::ptr::null_mut()
        }
    }
}

/// Sets how many microseconds each later wait for an answer polls before it blocks (TCP
/// connections; RDMA ones poll by their own policy). `PRAAS_OK`, or `PRAAS_ERR_INVALID_ARGUMENT`
/// for a NULL client.
///
/// # Safety
/// `client` is NULL or a live client of `praas_client_connect`, used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn praas_client_set_spin(client: *mut praas_client, spin_us: u32) -> i32 {
    // SAFETY: the caller's contract: NULL or a live, unshared client.
    let Some(client) = (unsafe { client.as_mut() }) else { return PRAAS_ERR_INVALID_ARGUMENT };
    client.connection.set_spin(Duration::from_micros(spin_us.into()));
    PRAAS_OK
}

/// Invokes `function` with `input_len` bytes at `input` (NULL allowed when 0) and waits for its
/// output. On `PRAAS_OK`, `*output` and `*output_len` hold the output, which the caller frees
/// with `praas_client_free_output`; otherwise they are set to NULL and 0 and the status code is
/// returned (the process's, or `PRAAS_ERR_TIMEOUT`, `PRAAS_ERR_UNAVAILABLE`, ... for the
/// client's own failures), with the reason in `err`.
///
/// # Safety
/// `client` is NULL or a live handle from `praas_client_connect`, used by no other thread now;
/// `function` is NULL or a NUL-terminated string; `input` is NULL or holds `input_len` bytes;
/// `output` and `output_len` are NULL or writable; `err` is NULL or holds `err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn praas_client_invoke(
    client: *mut praas_client,
    function: *const c_char,
    input: *const u8,
    input_len: usize,
    output: *mut *mut u8,
    output_len: *mut usize,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    if output.is_null() || output_len.is_null() {
        // SAFETY: forwarded from this function's contract.
        unsafe { report(err, err_len, "output and output_len must not be NULL") };
        return PRAAS_ERR_INVALID_ARGUMENT;
    }
    // SAFETY: checked non-NULL; writable by the contract.
    unsafe {
        *output = std::ptr::null_mut();
        *output_len = 0;
    }
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<u8>, (i32, String)> {
        let invalid = |text: String| (PRAAS_ERR_INVALID_ARGUMENT, text);
        // SAFETY: forwarded from this function's contract.
        let Some(client) = (unsafe { client.as_mut() }) else { return Err(invalid("client is NULL".into())) };
        // SAFETY: forwarded from this function's contract.
        let function = unsafe { utf8(function, "the function name") }.map_err(invalid)?;
        let input: &[u8] = match (input.is_null(), input_len) {
            (_, 0) => &[],
            (true, _) => return Err(invalid(format!("input is NULL but input_len is {input_len}"))),
            // SAFETY: the contract: `input` holds `input_len` bytes.
            (false, len) => unsafe { std::slice::from_raw_parts(input, len) },
        };
        client.connection.invoke(function, input).map_err(|e| (status_of(&e), e.to_string()))
    }));
    match result {
        Ok(Ok(bytes)) => {
            let bytes = bytes.into_boxed_slice();
            let len = bytes.len();
            // SAFETY: checked non-NULL above; the box is the caller's until praas_client_free_output.
            unsafe {
                *output_len = len;
                *output = Box::into_raw(bytes).cast::<u8>();
            }
            PRAAS_OK
        }
        Ok(Err((status, text))) => {
            // SAFETY: forwarded from this function's contract.
            unsafe { report(err, err_len, &text) };
            status
        }
        Err(_) => {
            // SAFETY: forwarded from this function's contract.
            unsafe { report(err, err_len, "internal error in the praas client") };
            PRAAS_ERR_INTERNAL
        }
    }
}

/// Frees an output `praas_client_invoke` returned (NULL: nothing).
///
/// # Safety
/// `output` and `output_len` are exactly what one `praas_client_invoke` returned, freed once.
#[no_mangle]
pub unsafe extern "C" fn praas_client_free_output(output: *mut u8, output_len: usize) {
    if output.is_null() {
        return;
    }
    // SAFETY: the contract: this is the boxed slice praas_client_invoke leaked, of this length.
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(output, output_len)) });
}

/// Closes the connection and frees the handle (NULL: nothing).
///
/// # Safety
/// `client` is NULL or a handle from `praas_client_connect`, closed once and not used after.
#[no_mangle]
pub unsafe extern "C" fn praas_client_close(client: *mut praas_client) {
    if client.is_null() {
        return;
    }
    // SAFETY: the contract: the handle praas_client_connect boxed, closed once.
    let client = unsafe { Box::from_raw(client) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(client)));
}
