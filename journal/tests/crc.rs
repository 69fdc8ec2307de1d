//! `format::crc32c` (crc-fast) is bit-identical to the `crc32c` crate the
//! journal used before, so the on-disk format does not depend on which
//! implementation computed a CRC: random inputs of random lengths
//! (0..70 KiB, at random alignments), every length up to 1 KiB (the
//! small-buffer and folding paths switch inside it), split points for
//! `crc32c_append`, the standard check value, and the CRCs inside encoded
//! headers and frames.

#[path = "common/mod.rs"]
mod common;

use common::*;
use lockstep_journal::format;
use proptest::prelude::*;

#[test]
fn standard_check_value() {
    assert_eq!(format::crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(format::crc32c_append(format::crc32c(b"1234"), b"56789"), 0xE306_9283);
    assert_eq!(format::crc32c(b""), 0);
    assert_eq!(format::crc32c_append(0, b""), 0);
}

#[test]
fn every_length_up_to_1_kib_at_every_alignment_mod_16() {
    let data: Vec<u8> = (0..1024 + 16).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for align in 0..16 {
        for len in 0..=1024 {
            let b = &data[align..align + len];
            assert_eq!(format::crc32c(b), crc32c::crc32c(b), "len {len} align {align}");
            let split = len / 3;
            assert_eq!(
                format::crc32c_append(format::crc32c(&b[..split]), &b[split..]),
                crc32c::crc32c(b),
                "len {len} align {align} split {split}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn same_as_the_crc32c_crate_on_random_inputs(
        data in prop::collection::vec(any::<u8>(), 0..70 * 1024 + 64),
        len in 0usize..70 * 1024,
        align in 0usize..64,
        split in any::<prop::sample::Index>(),
        seed in any::<u32>(),
    ) {
        let align = align.min(data.len());
        let b = &data[align..(align + len).min(data.len())];
        prop_assert_eq!(format::crc32c(b), crc32c::crc32c(b));
        let at = split.index(b.len() + 1);
        prop_assert_eq!(format::crc32c_append(format::crc32c(&b[..at]), &b[at..]), crc32c::crc32c(b));
        // Appending to an arbitrary running CRC.
        prop_assert_eq!(format::crc32c_append(seed, b), crc32c::crc32c_append(seed, b));
    }
}

#[test]
fn encoded_headers_and_frames_carry_the_crc32c_crate_values() {
    let header = format::encode_header(7, 41, 1 << 20, &ident());
    let (body, crc) = header.split_at(header.len() - 4);
    assert_eq!(crc, crc32c::crc32c(body).to_le_bytes());
    for payload in [0usize, 1, 200, 4096, 70 << 10] {
        let frame = format::encode_frame(&step(3, 2, 1, payload));
        let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[..4]), &frame[8..]);
        assert_eq!(frame[4..8], crc.to_le_bytes(), "payload {payload}");
    }
}
