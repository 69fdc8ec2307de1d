//! Record decoders: a frame body of any bytes decodes or is refused, never
//! panics; the in-place decoder (`view::decode_view`) gives exactly what
//! prost's (`format::decode_record`) gives, value for value or the same
//! reason; a body that decodes re-encodes to a frame the segment reader
//! accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_journal::{format, view};

fuzz_target!(|body: &[u8]| {
    let light = format::decode_light(body);
    let full = format::decode_record(body);
    let in_place = view::decode_view(body);
    if let Ok(view::RecordView::Step(s)) = &in_place {
        assert_eq!(s.endpoints().count(), s.endpoint_count());
    }
    assert_eq!(in_place.map(|v| v.to_pb()), full, "in-place and prost decoders disagree");
    if let Ok(record) = full {
        assert!(light.is_ok(), "full decode accepted what light decode refused");
        let frame = format::encode_frame(&record);
        format::assert_frame(&frame);
    }
});
