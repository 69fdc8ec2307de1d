//! Segment reader: any bytes as the last segment of a journal decode to
//! records or a typed error, never a panic, and never more bytes than given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_journal::format;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(segment) = format::decode_segment(bytes) {
        assert!(segment.torn_tail_bytes <= bytes.len() as u64);
        for (offset, _) in &segment.records {
            assert!(*offset < bytes.len() as u64);
        }
    }
});
