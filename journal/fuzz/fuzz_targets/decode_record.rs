//! Record decoder: a frame body of any bytes decodes or is refused, never
//! panics; a body that decodes re-encodes to a frame the segment reader
//! accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_journal::format;

fuzz_target!(|body: &[u8]| {
    let light = format::decode_light(body);
    if let Ok(record) = format::decode_record(body) {
        assert!(light.is_ok(), "full decode accepted what light decode refused");
        let frame = format::encode_frame(&record);
        format::assert_frame(&frame);
    }
});
