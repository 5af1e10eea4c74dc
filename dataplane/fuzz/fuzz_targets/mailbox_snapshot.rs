//! Fuzzes the decoder of mailbox snapshots, which swap-in reads back from storage: whatever the
//! bytes, decoding never panics nor allocates more than the input can hold, and a snapshot that
//! decodes encodes back to exactly the same bytes (the encoding is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use praas_dataplane::mailbox::Mailbox;

fuzz_target!(|data: &[u8]| {
    // Half the inputs start with a valid header, so the fuzzer spends its time on the records.
    let Some((&knob, bytes)) = data.split_first() else { return };
    let mut input = Vec::with_capacity(bytes.len() + 8);
    if knob & 1 == 1 {
        input.extend_from_slice(b"PRMB");
        input.extend_from_slice(&1u32.to_le_bytes());
    }
    input.extend_from_slice(bytes);
    if let Ok(mailbox) = Mailbox::restore(&input) {
        assert_eq!(mailbox.snapshot(), input, "a decoded snapshot re-encodes to the same bytes");
        // Loading into a mailbox that already holds messages keeps them first.
        let existing = Mailbox::new();
        existing.put("earlier", "k", b"first".to_vec()).expect("an empty mailbox takes a message");
        let added = existing.load(&input).expect("bytes that restore also load");
        assert_eq!(added, mailbox.len());
        assert_eq!(existing.len(), added + 1);
    }
});
