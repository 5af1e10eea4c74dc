//! Fuzzes the one decoder of untrusted wire bytes: whatever the bytes, decoding never panics,
//! never reports a frame larger than the limit or than the input, and a decoded frame re-encodes
//! to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use praas_dataplane::protocol::{decode_frame, encode_frame, Decoded, FrameLimits};

fuzz_target!(|data: &[u8]| {
    // The first byte picks a limit, so that both small and large limits are explored.
    let Some((&knob, bytes)) = data.split_first() else { return };
    let limits = FrameLimits { max_frame: (knob as usize) << (knob % 24) };
    let mut rest = bytes;
    // Decode frame after frame, as a connection does.
    while let Ok(Decoded::Frame(frame, used)) = decode_frame(rest, limits) {
        assert!(used <= rest.len());
        assert!(frame.header.body_len() <= limits.max_frame);
        let mut again = Vec::new();
        encode_frame(&mut again, frame.header, frame.meta, frame.payload).expect("a decoded frame re-encodes");
        assert_eq!(&again[..], &rest[..used]);
        rest = &rest[used..];
    }
});
