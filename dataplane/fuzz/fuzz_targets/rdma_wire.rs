//! Fuzzes the RDMA transport's decoders of untrusted bytes: the set-up endpoint a peer sends over
//! TCP, the grant a peer's `Cts` message carries, and the immediate every message carries. Whatever
//! the bytes, decoding never panics, and what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use praas_dataplane::transport::rdma::connect::{Endpoint, ENDPOINT_LEN};
use praas_dataplane::transport::rdma::flow::{Grant, Imm, GRANT_LEN, MAX_CREDITS_PER_MESSAGE};

fuzz_target!(|data: &[u8]| {
    if let Some(bytes) = data.first_chunk::<ENDPOINT_LEN>() {
        if let Ok(endpoint) = Endpoint::decode(bytes) {
            assert_eq!(&endpoint.encode(), bytes);
        }
    }
    // A grant is exactly GRANT_LEN bytes; any other length is refused.
    match Grant::decode(data) {
        Some(grant) => {
            assert_eq!(data.len(), GRANT_LEN);
            assert_eq!(&grant.encode()[..], data);
        }
        None => assert_ne!(data.len(), GRANT_LEN),
    }
    if let Some(word) = data.first_chunk::<4>() {
        let value = u32::from_le_bytes(*word);
        if let Some(imm) = Imm::decode(value) {
            assert!(imm.credits <= MAX_CREDITS_PER_MESSAGE);
            // Bits outside the op, credit and token fields are ignored, never trusted.
            assert_eq!(Imm::decode(imm.encode()), Some(imm));
        }
    }
});
