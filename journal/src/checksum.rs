//! Step checksums and transaction aggregates (DESIGN section 2), and the
//! precise comparison that replay verification reports to operators.
//!
//! A checksum is `(count, hash)` where `hash` is a 64-bit multiset hash: the
//! wrapping sum of a keyed 64-bit hash of each record. Summing makes it
//! independent of record order and of how records are split into steps;
//! unlike XOR, two equal records do not cancel. A transaction aggregate is
//! the same pair summed over the steps of one tid, so it does not depend on
//! how many steps the transaction took.

use std::collections::BTreeMap;
use std::fmt;

/// Fixed key of the per-record hash. Changing it changes every checksum on
/// disk and in ledgers: it is part of the journal format.
const RECORD_HASH_SEED: u64 = 0x6c6f_636b_7374_6570; // "lockstep"

/// Keyed 64-bit hash of one record's canonical bytes.
pub fn record_hash(record: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(record, RECORD_HASH_SEED)
}

/// `(count, multiset hash)` of some records of one endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Checksum {
    pub count: u64,
    pub hash: u64,
}

impl Checksum {
    pub const EMPTY: Checksum = Checksum { count: 0, hash: 0 };

    pub fn add_record(&mut self, record: &[u8]) {
        self.add_hashed(record_hash(record));
    }

    /// Adds a record whose `record_hash` is already known.
    pub fn add_hashed(&mut self, hash: u64) {
        self.count = self.count.wrapping_add(1);
        self.hash = self.hash.wrapping_add(hash);
    }

    /// Multiset union: the checksum of both record sets together.
    pub fn merge(&mut self, other: Checksum) {
        self.count = self.count.wrapping_add(other.count);
        self.hash = self.hash.wrapping_add(other.hash);
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(count {}, hash {:#018x})", self.count, self.hash)
    }
}

/// Checksums per endpoint name: one step's, or a transaction aggregate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointChecksums(pub BTreeMap<String, Checksum>);

/// A transaction aggregate has the same shape as a step's checksums.
pub type Aggregate = EndpointChecksums;

impl EndpointChecksums {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, endpoint: &str) -> Option<Checksum> {
        self.0.get(endpoint).copied()
    }

    /// Adds `checksum` into `endpoint` (creating it if absent).
    pub fn add(&mut self, endpoint: &str, checksum: Checksum) {
        // No allocation when the endpoint is already there (the usual case
        // when summing a transaction's steps).
        match self.0.get_mut(endpoint) {
            Some(c) => c.merge(checksum),
            None => {
                self.0.insert(endpoint.to_owned(), checksum);
            }
        }
    }

    /// Records over every endpoint (the wrapping sum of their counts, as
    /// the counts themselves wrap).
    pub fn records(&self) -> u64 {
        self.0.values().fold(0u64, |n, c| n.wrapping_add(c.count))
    }

    /// Adds every endpoint of `other` (summing a step into an aggregate).
    pub fn merge(&mut self, other: &EndpointChecksums) {
        for (endpoint, c) in &other.0 {
            self.add(endpoint, *c);
        }
    }

    /// Every difference between `expected` (self) and `actual`, in endpoint
    /// order. Empty means equal.
    pub fn diff(&self, actual: &EndpointChecksums) -> Vec<Difference> {
        let mut out = Vec::new();
        for (endpoint, e) in &self.0 {
            match actual.0.get(endpoint) {
                None => out.push(Difference::OnlyExpected { endpoint: endpoint.clone(), expected: *e }),
                Some(a) if a != e => out.push(Difference::Differs {
                    endpoint: endpoint.clone(),
                    expected: *e,
                    actual: *a,
                }),
                Some(_) => {}
            }
        }
        for (endpoint, a) in &actual.0 {
            if !self.0.contains_key(endpoint) {
                out.push(Difference::OnlyActual { endpoint: endpoint.clone(), actual: *a });
            }
        }
        out
    }
}

impl FromIterator<(String, Checksum)> for EndpointChecksums {
    fn from_iter<T: IntoIterator<Item = (String, Checksum)>>(iter: T) -> Self {
        let mut out = EndpointChecksums::new();
        for (e, c) in iter {
            out.add(&e, c);
        }
        out
    }
}

/// One endpoint on which expected and actual checksums disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// The endpoint is expected but absent from the actual side.
    OnlyExpected { endpoint: String, expected: Checksum },
    /// The endpoint appears only on the actual side.
    OnlyActual { endpoint: String, actual: Checksum },
    /// Present on both sides with different count and/or hash.
    Differs { endpoint: String, expected: Checksum, actual: Checksum },
}

impl Difference {
    pub fn endpoint(&self) -> &str {
        match self {
            Difference::OnlyExpected { endpoint, .. }
            | Difference::OnlyActual { endpoint, .. }
            | Difference::Differs { endpoint, .. } => endpoint,
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::OnlyExpected { endpoint, expected } => write!(
                f,
                "endpoint {endpoint:?} present on one side only (expected side): expected {expected}, actual nothing"
            ),
            Difference::OnlyActual { endpoint, actual } => write!(
                f,
                "endpoint {endpoint:?} present on one side only (actual side): expected nothing, actual {actual}"
            ),
            Difference::Differs { endpoint, expected, actual } => {
                let what = match (expected.count == actual.count, expected.hash == actual.hash) {
                    (false, false) => "count and hash differ",
                    (false, true) => "count differs",
                    (true, false) => "hash differs",
                    (true, true) => "equal",
                };
                write!(f, "endpoint {endpoint:?}: {what}: expected {expected}, actual {actual}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_split_independent_and_duplicates_do_not_cancel() {
        let recs: Vec<&[u8]> = vec![b"a", b"b", b"a", b"c"];
        let mut whole = Checksum::EMPTY;
        recs.iter().for_each(|r| whole.add_record(r));
        let mut s1 = Checksum::EMPTY;
        let mut s2 = Checksum::EMPTY;
        for r in [b"c" as &[u8], b"a"] {
            s1.add_record(r);
        }
        for r in [b"a" as &[u8], b"b"] {
            s2.add_record(r);
        }
        s1.merge(s2);
        assert_eq!(whole, s1);
        let mut only_b_c = Checksum::EMPTY;
        only_b_c.add_record(b"b");
        only_b_c.add_record(b"c");
        assert_ne!(whole.hash, only_b_c.hash, "two equal records must not cancel");
    }

    #[test]
    fn diff_names_each_kind() {
        let e: EndpointChecksums =
            [("a".to_string(), Checksum { count: 1, hash: 1 }), ("b".to_string(), Checksum { count: 2, hash: 2 })]
                .into_iter()
                .collect();
        let a: EndpointChecksums =
            [("b".to_string(), Checksum { count: 2, hash: 3 }), ("c".to_string(), Checksum { count: 1, hash: 1 })]
                .into_iter()
                .collect();
        let d = e.diff(&a);
        assert_eq!(d.len(), 3);
        assert!(matches!(d[0], Difference::OnlyExpected { .. }));
        assert!(d[1].to_string().contains("hash differs"));
        assert!(matches!(d[2], Difference::OnlyActual { .. }));
        assert!(e.diff(&e).is_empty());
    }
}
