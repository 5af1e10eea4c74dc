//! `praas._native`: the Python client's extension module over the Rust SDK (`praas-client`).
//!
//! The package `praas` (python/praas/) re-exports what this module defines: [`client::Client`],
//! [`credentials::Credentials`], and the table of wire statuses that `praas.Status` mirrors. The
//! exceptions are Python classes of `praas._errors` (so that `praas.TimeoutError` can also be a
//! builtin `TimeoutError`); [`errors`] raises them. Every call that sends or waits releases the
//! GIL for as long as it runs.

mod client;
mod credentials;
mod errors;

use pyo3::prelude::*;

/// The wire statuses as `praas.Status` names them: the C ABI's names (`PRAAS_ERR_*`, without the
/// prefix) and their codes. Every code the wire knows is listed: those that `Status::from_code`
/// maps back to themselves (it maps unknown codes to `FUNCTION`).
fn status_table() -> Vec<(&'static str, u16)> {
    (0..=u16::MAX)
        .map(|code| (code, praas_wire::protocol::Status::from_code(code)))
        .filter(|(code, status)| status.code() == *code)
        .map(|(code, status)| (errors::status_name(status), code))
        .collect()
}

/// The extension module.
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<client::Client>()?;
    module.add_class::<client::Completions>()?;
    module.add_class::<credentials::Credentials>()?;
    module.add("STATUSES", status_table())?;
    module.add("HAS_RDMA", cfg!(feature = "rdma"))?;
    Ok(())
}
