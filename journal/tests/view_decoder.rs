//! The in-place decoder (`view::decode_view`, used by `views_from`,
//! `for_each_record`, `for_each_step` and `summarize`) against prost's
//! (`format::decode_record`, used by `read_from`): on every input both
//! must give the same result, field by field (`RecordView::to_pb`), or the
//! same error text, and neither may panic.
//!
//! Inputs: random records encoded by hand with everything prost tolerates
//! (unknown fields of every wire type, groups, between any two fields at
//! every level; fields in any order; scalars repeated with the last one
//! winning; a step, endpoint payload or commit split into several
//! occurrences that prost merges; an earlier record kind or payload variant
//! replaced by a later one), the same bytes mutated, random wire-format
//! trees over the schema's tags, and groups nested around prost's recursion
//! limit.

use lockstep_journal::{format, pb, view};
use proptest::prelude::*;
use prost::encoding::encode_varint;

/// xorshift64*: the encoder's choices, from a proptest seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const DELIMITED: u64 = 2;
const START_GROUP: u64 = 3;
const END_GROUP: u64 = 4;
const FIXED32: u64 = 5;

fn key(out: &mut Vec<u8>, tag: u32, wire: u64) {
    encode_varint((u64::from(tag) << 3) | wire, out);
}

fn varint_field(out: &mut Vec<u8>, tag: u32, v: u64) {
    key(out, tag, VARINT);
    encode_varint(v, out);
}

fn fixed64_field(out: &mut Vec<u8>, tag: u32, v: u64) {
    key(out, tag, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn delimited_field(out: &mut Vec<u8>, tag: u32, body: &[u8]) {
    key(out, tag, DELIMITED);
    encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// Tags no message of the schema uses (all known tags are 1..=5).
const UNKNOWN_TAGS: [u32; 7] = [6, 7, 15, 16, 100, 2048, (1 << 29) - 1];

fn unknown_field(rng: &mut Rng, out: &mut Vec<u8>, depth: u32) {
    let tag = UNKNOWN_TAGS[rng.below(UNKNOWN_TAGS.len())];
    match rng.below(if depth < 3 { 5 } else { 4 }) {
        0 => varint_field(out, tag, rng.next() >> rng.below(64)),
        1 => {
            key(out, tag, FIXED32);
            out.extend_from_slice(&(rng.next() as u32).to_le_bytes());
        }
        2 => fixed64_field(out, tag, rng.next()),
        3 => {
            let body: Vec<u8> = (0..rng.below(20)).map(|_| rng.next() as u8).collect();
            delimited_field(out, tag, &body);
        }
        _ => {
            key(out, tag, START_GROUP);
            for _ in 0..rng.below(3) {
                unknown_field(rng, out, depth + 1);
            }
            key(out, tag, END_GROUP);
        }
    }
}

fn noise(rng: &mut Rng, out: &mut Vec<u8>) {
    while rng.chance(25) {
        unknown_field(rng, out, 0);
    }
}

/// A message body made of `items` (each a closure-free pre-encoded field)
/// with noise between them.
fn join(rng: &mut Rng, items: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    noise(rng, &mut out);
    for item in items {
        out.extend_from_slice(&item);
        noise(rng, &mut out);
    }
    out
}

/// Inserts `item` at a random place of `items` at or after `min`; returns
/// where.
fn insert_at(rng: &mut Rng, items: &mut Vec<Vec<u8>>, min: usize, item: Vec<u8>) -> usize {
    let at = min + rng.below(items.len() - min + 1);
    items.insert(at, item);
    at
}

/// Scalar field `(tag, value)` spread over `occurrences` (lists of encoded
/// fields, merged by the decoder in order): the real value somewhere,
/// maybe a decoy (another value) before it, maybe omitted when zero.
fn place_scalar(rng: &mut Rng, occurrences: &mut [Vec<Vec<u8>>], tag: u32, value: u64, fixed: bool) {
    let enc = |v: u64| {
        let mut out = Vec::new();
        if fixed {
            fixed64_field(&mut out, tag, v)
        } else {
            varint_field(&mut out, tag, v)
        }
        out
    };
    let n = occurrences.len();
    if value == 0 && rng.chance(50) {
        // proto3 omits zero; a decoy in a *later* place would win, so none.
        return;
    }
    let real_in = rng.below(n);
    let real_at = insert_at(rng, &mut occurrences[real_in], 0, enc(value));
    if rng.chance(30) {
        let decoy_in = rng.below(real_in + 1);
        let decoy = enc(value ^ (1 + rng.next() % 1000));
        if decoy_in == real_in {
            let at = rng.below(real_at + 1);
            occurrences[real_in].insert(at, decoy);
        } else {
            insert_at(rng, &mut occurrences[decoy_in], 0, decoy);
        }
    }
}

fn string_field(tag: u32, s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    delimited_field(&mut out, tag, s.as_bytes());
    out
}

fn encode_generator(rng: &mut Rng, g: &pb::GeneratorRef, parts: usize) -> Vec<Vec<u8>> {
    let mut occ = vec![Vec::new(); parts];
    place_scalar(rng, &mut occ, 1, g.seed, false);
    place_scalar(rng, &mut occ, 2, g.offset, false);
    place_scalar(rng, &mut occ, 3, g.count, false);
    occ.into_iter().map(|items| join(rng, items)).collect()
}

fn encode_endpoint(rng: &mut Rng, e: &pb::EndpointInput) -> Vec<u8> {
    let mut occ = vec![Vec::new()];
    place_scalar(rng, &mut occ, 2, e.count, false);
    place_scalar(rng, &mut occ, 3, e.hash, true);
    let mut items = occ.pop().unwrap();
    // Name, maybe after a decoy name.
    let name_at = insert_at(rng, &mut items, 0, string_field(1, &e.endpoint));
    if rng.chance(20) {
        let at = rng.below(name_at + 1);
        items.insert(at, string_field(1, "decoy"));
    } else if e.endpoint.is_empty() && rng.chance(50) {
        items.remove(name_at);
    }
    // The payload comes last among payload fields (a later one replaces or
    // merges), possibly after a decoy of the other variant or of the same.
    let mut payload = Vec::new();
    if rng.chance(25) {
        let mut decoy = Vec::new();
        if rng.chance(50) {
            delimited_field(&mut decoy, 4, b"decoy payload");
        } else {
            let g = pb::GeneratorRef { seed: 9, offset: 9, count: 9 };
            delimited_field(&mut decoy, 5, &encode_generator(rng, &g, 1)[0]);
        }
        payload.push(decoy);
    }
    match &e.payload {
        None => payload.clear(),
        Some(pb::endpoint_input::Payload::Value(v)) => {
            let mut f = Vec::new();
            delimited_field(&mut f, 4, v);
            payload.push(f);
        }
        Some(pb::endpoint_input::Payload::Reference(g)) => {
            // A decoy reference would merge, not be replaced: only a value
            // may come before.
            if payload.first().is_some_and(|d| d[0] != (4 << 3 | 2) as u8) {
                payload.clear();
            }
            let parts = 1 + rng.below(2);
            for part in encode_generator(rng, g, parts) {
                let mut f = Vec::new();
                delimited_field(&mut f, 5, &part);
                payload.push(f);
            }
        }
    }
    // Payload fields in order, each after a random earlier item.
    let mut min = 0;
    for f in payload {
        min = insert_at(rng, &mut items, min, f) + 1;
    }
    join(rng, items)
}

fn encode_step(rng: &mut Rng, s: &pb::StepRecord) -> Vec<Vec<u8>> {
    let parts = 1 + rng.below(3);
    let mut occ = vec![Vec::new(); parts];
    // Endpoints in order, spread over the occurrences.
    let mut part = 0;
    for e in &s.endpoints {
        part = (part + rng.below(2)).min(parts - 1);
        let mut f = Vec::new();
        delimited_field(&mut f, 5, &encode_endpoint(rng, e));
        occ[part].push(f);
    }
    place_scalar(rng, &mut occ, 1, s.step, false);
    place_scalar(rng, &mut occ, 2, s.prev_step, false);
    place_scalar(rng, &mut occ, 3, s.tid, false);
    place_scalar(rng, &mut occ, 4, s.epoch, false);
    occ.into_iter().map(|items| join(rng, items)).collect()
}

/// The record's top-level fields (`kind` occurrences).
fn encode_kind(rng: &mut Rng, kind: &pb::journal_record::Kind) -> Vec<Vec<u8>> {
    use pb::journal_record::Kind;
    let (tag, parts) = match kind {
        Kind::Step(s) => (1, encode_step(rng, s)),
        Kind::Commit(c) => {
            let mut occ = vec![Vec::new(); 1 + rng.below(2)];
            place_scalar(rng, &mut occ, 1, c.tid, false);
            place_scalar(rng, &mut occ, 2, c.epoch, false);
            (2, occ.into_iter().map(|items| join(rng, items)).collect())
        }
        Kind::Checkpoint(c) => {
            let mut occ = vec![Vec::new()];
            place_scalar(rng, &mut occ, 1, c.tid, false);
            if !c.location.is_empty() || rng.chance(50) {
                insert_at(rng, &mut occ[0], 0, string_field(2, &c.location));
            }
            (3, occ.into_iter().map(|items| join(rng, items)).collect())
        }
    };
    parts
        .into_iter()
        .map(|p| {
            let mut f = Vec::new();
            delimited_field(&mut f, tag, &p);
            f
        })
        .collect()
}

/// `record` encoded with prost's tolerated variations, chosen by `seed`.
fn encode_noisy(record: &pb::JournalRecord, seed: u64) -> Vec<u8> {
    use pb::journal_record::Kind;
    let mut rng = Rng::new(seed);
    let mut items = Vec::new();
    if let Some(kind) = &record.kind {
        // A decoy record kind first, which the real one replaces (a step
        // decoy before a commit decoy before a real step: the real step
        // must not merge with the decoy step).
        if rng.chance(25) {
            let decoy = match rng.below(3) {
                0 => Kind::Step(pb::StepRecord {
                    step: 7,
                    prev_step: 6,
                    tid: 5,
                    epoch: 4,
                    endpoints: vec![pb::EndpointInput { endpoint: "decoy".into(), count: 3, hash: 2, payload: None }],
                }),
                1 => Kind::Commit(pb::CommitMarker { tid: 7, epoch: 7 }),
                _ => Kind::Checkpoint(pb::CheckpointRecord { tid: 7, location: "decoy".into() }),
            };
            let same = std::mem::discriminant(&decoy) == std::mem::discriminant(kind);
            items.extend(encode_kind(&mut rng, &decoy));
            if same {
                // Separate them by another kind, or they would merge.
                let other = match kind {
                    Kind::Commit(_) => Kind::Checkpoint(pb::CheckpointRecord { tid: 1, location: String::new() }),
                    _ => Kind::Commit(pb::CommitMarker { tid: 1, epoch: 1 }),
                };
                items.extend(encode_kind(&mut rng, &other));
            }
        }
        items.extend(encode_kind(&mut rng, kind));
    }
    join(&mut rng, items)
}

/// A random wire-format message over the schema's tags (known tags get
/// right or wrong wire types, strings are UTF-8 or not, nesting random).
fn random_message(rng: &mut Rng, depth: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(6) {
        let tag = if rng.chance(80) { 1 + rng.below(5) as u32 } else { UNKNOWN_TAGS[rng.below(3)] };
        match rng.below(8) {
            0 | 1 => varint_field(&mut out, tag, rng.next() >> rng.below(64)),
            2 => fixed64_field(&mut out, tag, rng.next()),
            3 => {
                key(&mut out, tag, FIXED32);
                out.extend_from_slice(&(rng.next() as u32).to_le_bytes());
            }
            4 => {
                let body: Vec<u8> = match rng.below(3) {
                    0 => b"in".to_vec(),
                    1 => vec![0xff, 0xfe],
                    _ => (0..rng.below(8)).map(|_| rng.next() as u8).collect(),
                };
                delimited_field(&mut out, tag, &body);
            }
            5 if depth < 4 => {
                key(&mut out, tag, START_GROUP);
                let inner = random_message(rng, depth + 1);
                out.extend_from_slice(&inner);
                let end = if rng.chance(90) { tag } else { tag + 1 };
                key(&mut out, end, END_GROUP);
            }
            _ if depth < 4 => {
                let inner = random_message(rng, depth + 1);
                delimited_field(&mut out, tag, &inner);
            }
            _ => varint_field(&mut out, tag, 1),
        }
    }
    out
}

/// The property: the in-place decoder agrees with prost's, exactly.
fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
    let prost = format::decode_record(bytes);
    let view = view::decode_view(bytes).map(|v| v.to_pb());
    prop_assert_eq!(&view, &prost, "decoders disagree on {:02x?}", bytes);
    // And the endpoint walk yields exactly the counted endpoints.
    if let Ok(view::RecordView::Step(s)) = view::decode_view(bytes) {
        prop_assert_eq!(s.endpoints().count(), s.endpoint_count());
    }
    Ok(())
}

fn payload() -> impl Strategy<Value = Option<pb::endpoint_input::Payload>> {
    use pb::endpoint_input::Payload;
    prop_oneof![
        Just(None),
        prop::collection::vec(any::<u8>(), 0..48).prop_map(|v| Some(Payload::Value(v))),
        (any::<u64>(), 0u64..1000, any::<u64>())
            .prop_map(|(seed, offset, count)| Some(Payload::Reference(pb::GeneratorRef { seed, offset, count }))),
    ]
}

fn small_or_any() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..3, 0u64..300, any::<u64>()]
}

fn record() -> impl Strategy<Value = pb::JournalRecord> {
    use pb::journal_record::Kind;
    let endpoint = ("[a-z]{0,6}|\\PC{0,4}", small_or_any(), any::<u64>(), payload())
        .prop_map(|(endpoint, count, hash, payload)| pb::EndpointInput { endpoint, count, hash, payload });
    let step = (small_or_any(), small_or_any(), small_or_any(), small_or_any(), prop::collection::vec(endpoint, 0..4))
        .prop_map(|(step, prev_step, tid, epoch, endpoints)| Kind::Step(pb::StepRecord { step, prev_step, tid, epoch, endpoints }));
    let commit = (small_or_any(), small_or_any()).prop_map(|(tid, epoch)| Kind::Commit(pb::CommitMarker { tid, epoch }));
    let checkpoint =
        (small_or_any(), "\\PC{0,12}").prop_map(|(tid, location)| Kind::Checkpoint(pb::CheckpointRecord { tid, location }));
    prop_oneof![
        6 => step.prop_map(Some),
        2 => commit.prop_map(Some),
        2 => checkpoint.prop_map(Some),
        1 => Just(None),
    ]
    .prop_map(|kind| pb::JournalRecord { kind })
}

#[derive(Clone, Debug)]
enum Edit {
    Set(prop::sample::Index, u8),
    Remove(prop::sample::Index, usize),
    Insert(prop::sample::Index, Vec<u8>),
    Truncate(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<prop::sample::Index>(), 1usize..4).prop_map(|(i, n)| Edit::Remove(i, n)),
        (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..4)).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        if bytes.is_empty() {
            return;
        }
        match e {
            Edit::Set(i, b) => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            Edit::Remove(i, n) => {
                let i = i.index(bytes.len());
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Edit::Insert(i, b) => {
                let i = i.index(bytes.len());
                bytes.splice(i..i, b.iter().copied());
            }
            Edit::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Valid records in every encoding prost accepts: both decoders give the
    /// record itself.
    #[test]
    fn view_decoder_agrees_with_prost_on_valid_records(record in record(), seed in any::<u64>()) {
        let bytes = encode_noisy(&record, seed);
        if record.kind.is_some() {
            // The encoder's variations are ones prost accepts.
            prop_assert_eq!(format::decode_record(&bytes), Ok(record.clone()));
        }
        agree(&bytes)?;
        // Plain prost encoding, and with unknown fields appended (what a
        // newer writer's extra fields look like).
        let mut plain = prost::Message::encode_to_vec(&record);
        agree(&plain)?;
        let mut rng = Rng::new(seed ^ 0x5555);
        unknown_field(&mut rng, &mut plain, 0);
        agree(&plain)?;
    }

    /// The same bytes damaged: accepted or refused alike, with the same
    /// values or the same reason, never a panic.
    #[test]
    fn view_decoder_agrees_with_prost_on_mutated_records(
        record in record(),
        seed in any::<u64>(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let mut bytes = encode_noisy(&record, seed);
        apply(&mut bytes, &edits);
        agree(&bytes)?;
    }

    /// Random wire-format trees over the schema's tags.
    #[test]
    fn view_decoder_agrees_with_prost_on_random_wire_data(seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let body = random_message(&mut rng, 0);
        agree(&body)?;
    }

    /// Arbitrary bytes.
    #[test]
    fn view_decoder_agrees_with_prost_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        agree(&bytes)?;
    }
}

/// Groups nested in an unknown field count against prost's recursion
/// limit (100 at the top level, less inside nested messages): the in-place
/// decoder refuses at exactly the same depth, at every level.
#[test]
fn view_decoder_has_prosts_recursion_limit() {
    fn groups(depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..depth {
            key(&mut out, 6, START_GROUP);
        }
        varint_field(&mut out, 7, 1);
        for _ in 0..depth {
            key(&mut out, 6, END_GROUP);
        }
        out
    }
    let mut accepted = [0usize; 4];
    for depth in 90..=105 {
        let g = groups(depth);
        // Top level, in a commit, in an endpoint, in a generator reference.
        let mut top = g.clone();
        delimited_field(&mut top, 2, &[8, 1]);
        let mut commit = Vec::new();
        delimited_field(&mut commit, 2, &g);
        let mut reference = Vec::new();
        delimited_field(&mut reference, 5, &g);
        let mut endpoint = g.clone();
        endpoint.extend_from_slice(&reference);
        let mut step = Vec::new();
        delimited_field(&mut step, 5, &endpoint);
        let mut in_endpoint = Vec::new();
        delimited_field(&mut in_endpoint, 1, &step);
        for (i, body) in [top, commit, in_endpoint].iter().enumerate() {
            let prost = format::decode_record(body);
            assert_eq!(view::decode_view(body).map(|v| v.to_pb()), prost, "depth {depth}, case {i}");
            if prost.is_ok() {
                accepted[i] = depth;
            }
        }
    }
    // The limit was reached within the range tried, at different depths.
    assert!(accepted.iter().take(3).all(|&d| (90..105).contains(&d)), "{accepted:?}");
    assert!(accepted[0] > accepted[1] && accepted[1] > accepted[2], "{accepted:?}");
}

/// The view borrows the body: payloads and names are slices of it.
#[test]
fn view_points_into_the_body() {
    let record = pb::JournalRecord {
        kind: Some(pb::journal_record::Kind::Step(pb::StepRecord {
            step: 2,
            prev_step: 1,
            tid: 1,
            epoch: 1,
            endpoints: vec![pb::EndpointInput {
                endpoint: "in".into(),
                count: 1,
                hash: 5,
                payload: Some(pb::endpoint_input::Payload::Value(vec![7; 100])),
            }],
        })),
    };
    let body = prost::Message::encode_to_vec(&record);
    let Ok(view::RecordView::Step(s)) = view::decode_view(&body) else { panic!("a step") };
    let e = s.endpoints().next().unwrap();
    let range = body.as_ptr_range();
    let Some(view::PayloadView::Value(v)) = e.payload else { panic!("a value") };
    assert!(range.contains(&v.as_ptr()) && range.contains(&e.endpoint.as_ptr()));
    assert_eq!((e.endpoint, v.len()), ("in", 100));
}
