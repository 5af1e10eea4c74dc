//! Fuzzes the manifest parser: any text is either a manifest or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use praas_dataplane::function::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Manifest::from_toml(text, std::path::Path::new("/base"));
    }
});
