//! The ledger: the coordinator's durable record of every transaction
//! (DESIGN section 2), as plain data with a pure, deterministic `apply`.
//!
//! The same `LedgerState` is the state machine of the openraft group (see
//! `raft.rs`) and the coordinator core's view of history, so the rules that
//! make a ledger entry valid live here, once. `apply` never panics: an entry
//! that breaks a rule (a tid at or below the high-water mark, a commit of a
//! tid that was never begun) is rejected with a typed error and leaves the
//! state unchanged, identically on every replica.
//!
//! # Memory
//!
//! The ledger keeps a record per tid after the newest complete checkpoint,
//! so its size grows with the tids a replay must cover; each record is kept
//! small and shared rather than copied (measured: ~2.2 KiB per tid per copy
//! with `BTreeMap<String, _>` records, three copies at startup):
//!
//! - a record is an `Arc<TxnRecord>`, immutable once the tid is committed
//!   (`Arc::make_mut` on the rare change), so the raft state machine's
//!   ledger, the core's copy and a snapshot being built share every record
//!   (a copy that applied the same entry itself takes the other's record,
//!   [`LedgerState::adopt`]);
//! - per host and endpoint a record holds numbers in sorted slices
//!   ([`TxnHosts`], [`Sums`]), no B-tree nodes; host and endpoint names are
//!   `Arc<str>` taken from the record of an earlier tid when they match
//!   (they nearly always do), so a tid adds no strings; a host's journal
//!   summary of a tid that matches its record is the record's [`Sums`].
//!
//! The serialized form (raft log entries, snapshots) is the one the
//! `BTreeMap`s had: JSON written before reads the same.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use lockstep_journal::{Aggregate, Checksum, EndpointChecksums};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

pub type HostId = String;
pub type Tid = u64;
pub type Epoch = u64;

/// Per endpoint `(count, hash)`, sorted by endpoint: the compact form of an
/// [`Aggregate`] that the ledger and the hosts' journal summaries keep per
/// host per tid. One allocation of 32 bytes per endpoint, where an
/// `Aggregate` costs a B-tree node and a `String` per endpoint (~0.5 KiB);
/// immutable and shared, so a host's journal summary of a tid that matches
/// the ledger's record is that record's allocation ([`Sums::build_as`]).
/// Serialized as a map `endpoint -> [count, hash]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Sums(Arc<[(Arc<str>, u64, u64)]>);

impl Default for Sums {
    fn default() -> Sums {
        Sums(Arc::new([]))
    }
}

impl Sums {
    /// From `(endpoint, count, hash)` in any order; a name `share` also has
    /// is taken from it (no allocation). `Err` names an endpoint listed twice.
    pub fn build<'a>(items: impl IntoIterator<Item = (&'a str, u64, u64)>, share: Option<&Sums>) -> Result<Sums, String> {
        Sums::build_as(items, share, None)
    }

    /// [`Sums::build`], except that when the items are exactly `same`'s,
    /// the result is `same` itself (no allocation at all).
    pub fn build_as<'a>(
        items: impl IntoIterator<Item = (&'a str, u64, u64)>,
        share: Option<&Sums>,
        same: Option<&Sums>,
    ) -> Result<Sums, String> {
        let mut v: Vec<(&str, u64, u64)> = items.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        if let Some(w) = v.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(w[0].0.to_string());
        }
        if let Some(same) = same.filter(|s| s.iter().eq(v.iter().copied())) {
            return Ok(same.clone());
        }
        Ok(Sums(v.into_iter().map(|(e, c, h)| (shared_name(e, share), c, h)).collect()))
    }

    /// From an aggregate (its endpoints are unique and sorted already).
    pub fn from_aggregate(a: &Aggregate, share: Option<&Sums>) -> Sums {
        Sums(a.0.iter().map(|(e, c)| (shared_name(e, share), c.count, c.hash)).collect())
    }

    /// The aggregate again, for comparisons and the wire.
    pub fn to_aggregate(&self) -> Aggregate {
        EndpointChecksums(self.iter().map(|(e, count, hash)| (e.to_owned(), Checksum { count, hash })).collect())
    }

    /// Whether `a` holds exactly these endpoints with these checksums, as
    /// `self.to_aggregate().diff(a).is_empty()` would say, without
    /// building the aggregate (a replay checks every host's every tid).
    pub fn matches(&self, a: &Aggregate) -> bool {
        self.len() == a.0.len() && self.iter().zip(&a.0).all(|((e, count, hash), (ae, c))| e == ae && count == c.count && hash == c.hash)
    }

    /// `(endpoint, count, hash)` in endpoint order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64, u64)> + '_ {
        self.0.iter().map(|(e, c, h)| (&**e, *c, *h))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `self` and `other` are one allocation (not only equal).
    pub fn same_allocation(&self, other: &Sums) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn name(&self, endpoint: &str) -> Option<&Arc<str>> {
        self.0.binary_search_by(|(e, _, _)| (**e).cmp(endpoint)).ok().map(|i| &self.0[i].0)
    }

    /// Takes every name `other` also has from `other`, dropping this copy
    /// (a new allocation if this one is shared).
    fn share_names(&mut self, other: &Sums) {
        if self.0.iter().all(|(e, _, _)| other.name(e).is_none_or(|n| Arc::ptr_eq(n, e))) {
            return;
        }
        self.0 = self.0.iter().map(|(e, c, h)| (other.name(e).unwrap_or(e).clone(), *c, *h)).collect();
    }
}

/// `name` from `share` if it has it, else a new one.
fn shared_name(name: &str, share: Option<&Sums>) -> Arc<str> {
    share.and_then(|s| s.name(name)).cloned().unwrap_or_else(|| Arc::from(name))
}

impl From<&Aggregate> for Sums {
    fn from(a: &Aggregate) -> Sums {
        Sums::from_aggregate(a, None)
    }
}

impl From<Aggregate> for Sums {
    fn from(a: Aggregate) -> Sums {
        Sums::from_aggregate(&a, None)
    }
}

impl fmt::Debug for Sums {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter().map(|(e, c, h)| (e, (c, h)))).finish()
    }
}

impl Serialize for Sums {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (e, c, h) in self.iter() {
            m.serialize_entry(e, &(c, h))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Sums {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sums, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Sums;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of endpoint to [count, hash]")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Sums, A::Error> {
                let mut v = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some((Name(e), (c, h))) = map.next_entry::<Name<'de>, (u64, u64)>()? {
                    v.push((e, c, h));
                }
                Sums::build(v.iter().map(|(e, c, h)| (&**e, *c, *h)), None)
                    .map_err(|e| de::Error::custom(format!("endpoint {e:?} appears twice")))
            }
        }
        d.deserialize_map(V)
    }
}

/// A map key as borrowed from the input when it can be (no allocation).
struct Name<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// What one host did in one committed transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostTxnRecord {
    pub steps: u64,
    /// Endpoint -> (count, hash).
    pub aggregate: Sums,
    pub output_digest: u64,
}

impl HostTxnRecord {
    pub fn new(steps: u64, aggregate: &Aggregate, output_digest: u64) -> Self {
        HostTxnRecord { steps, aggregate: Sums::from_aggregate(aggregate, None), output_digest }
    }

    pub fn aggregate(&self) -> Aggregate {
        self.aggregate.to_aggregate()
    }
}

/// Each host's record in one tid, sorted by host id; serialized as a map
/// `host -> record`. See the module doc ("Memory") for why not a `BTreeMap`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TxnHosts(Box<[(Arc<str>, HostTxnRecord)]>);

impl TxnHosts {
    /// From a commit entry's records; names (host and endpoint) that
    /// `share` has are taken from it.
    pub fn build(hosts: &BTreeMap<HostId, HostTxnRecord>, share: Option<&TxnHosts>) -> TxnHosts {
        TxnHosts(
            hosts
                .iter()
                .map(|(h, r)| {
                    let mut r = r.clone();
                    let name = match share.and_then(|s| s.entry(h)) {
                        Some((n, prev)) => {
                            r.aggregate.share_names(&prev.aggregate);
                            n.clone()
                        }
                        None => Arc::from(h.as_str()),
                    };
                    (name, r)
                })
                .collect(),
        )
    }

    pub fn get(&self, host: &str) -> Option<&HostTxnRecord> {
        self.entry(host).map(|(_, r)| r)
    }

    pub fn contains_key(&self, host: &str) -> bool {
        self.entry(host).is_some()
    }

    /// `(host, record)` in host order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HostTxnRecord)> + '_ {
        self.0.iter().map(|(h, r)| (&**h, r))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn entry(&self, host: &str) -> Option<&(Arc<str>, HostTxnRecord)> {
        self.0.binary_search_by(|(h, _)| (**h).cmp(host)).ok().map(|i| &self.0[i])
    }

    /// Takes every name `other` also has from `other`.
    fn share_names(&mut self, other: &TxnHosts) {
        for (h, r) in self.0.iter_mut() {
            if let Some((n, prev)) = other.entry(h) {
                *h = n.clone();
                r.aggregate.share_names(&prev.aggregate);
            }
        }
    }
}

impl From<&BTreeMap<HostId, HostTxnRecord>> for TxnHosts {
    fn from(hosts: &BTreeMap<HostId, HostTxnRecord>) -> TxnHosts {
        TxnHosts::build(hosts, None)
    }
}

impl fmt::Debug for TxnHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for TxnHosts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for TxnHosts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TxnHosts, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TxnHosts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of host id to host record")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TxnHosts, A::Error> {
                let mut v: Vec<(Arc<str>, HostTxnRecord)> = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some((Name(h), r)) = map.next_entry::<Name<'de>, HostTxnRecord>()? {
                    v.push((Arc::from(&*h), r));
                }
                v.sort_by(|a, b| a.0.cmp(&b.0));
                if let Some(w) = v.windows(2).find(|w| w[0].0 == w[1].0) {
                    return Err(de::Error::custom(format!("host {:?} appears twice", w[0].0)));
                }
                Ok(TxnHosts(v.into_boxed_slice()))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStatus {
    Begun,
    Committed,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub tid: Tid,
    pub status: TxnStatus,
    /// Epoch in which the transaction was begun.
    pub epoch: Epoch,
    pub hosts: TxnHosts,
    /// The diagnosis of the failure in this tid, if the pipeline failed in
    /// it; a tid reopened after it keeps the text, so `ListTransactions`
    /// still shows why it was replayed.
    pub failure: Option<String>,
    /// A failed tid that the next recovery reopens and replays
    /// ([`LedgerEntry::Reopen`]). False for a tid failed by a build before
    /// reopening existed: that build went on without the tid, and the tids
    /// it began after it ran on a state without the tid's input, so the tid
    /// must stay behind. Written only when true, so older JSON reads the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reopen: bool,
}

impl TxnRecord {
    /// Takes every name `earlier` also has from `earlier` (see the module
    /// doc, "Memory").
    fn share_names(&mut self, earlier: &TxnRecord) {
        self.hosts.share_names(&earlier.hosts);
    }
}

/// One replicated ledger entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerEntry {
    /// First entry of a ledger: which cluster, which hosts.
    Init { cluster_id: String, hosts: Vec<HostId> },
    /// A new pipeline incarnation; commands carry it as a fencing token.
    NewEpoch { epoch: Epoch },
    Begin { tid: Tid },
    /// Commit of `tid` with each host's record; `begin_next` begins the next
    /// transaction in the same entry (one log write serves both).
    Commit { tid: Tid, hosts: BTreeMap<HostId, HostTxnRecord>, begin_next: Option<Tid> },
    /// The pipeline failed in `tid` with this diagnosis. With `reopen`,
    /// the tid is not given up: the next recovery reopens it and replays
    /// its journaled steps (`Reopen`), so input acknowledged in it is not
    /// lost once the cause is fixed, and an unfixed cause fails it again.
    /// Old entries lack `reopen` (read as false; see `TxnRecord::reopen`).
    Fail {
        tid: Tid,
        diagnosis: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reopen: bool,
    },
    /// A recovery reopens `tid`, failed with `reopen`: it is begun again
    /// (keeping its failure text) and the recovery replays it as an open
    /// tid. Repeating it is harmless; reopening a tid that never failed is
    /// refused.
    Reopen { tid: Tid },
    /// Every host reported checkpoint `tid` durable.
    CheckpointComplete { tid: Tid },
    /// Several entries in one raft entry (one log write and one replication
    /// round for all of them), applied in order, each with its own verdict
    /// as if it were an entry of its own. Written by the coordinator's
    /// proposer when entries queue up behind a ledger write in flight (the
    /// commit pipeline). Never nested.
    Batch(Vec<LedgerEntry>),
}

/// A one-line summary (openraft logs entries with it): the kind and tid,
/// not the hosts' records.
impl std::fmt::Display for LedgerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerEntry::Init { cluster_id, hosts } => write!(f, "Init({cluster_id:?}, {} hosts)", hosts.len()),
            LedgerEntry::NewEpoch { epoch } => write!(f, "NewEpoch({epoch})"),
            LedgerEntry::Begin { tid } => write!(f, "Begin({tid})"),
            LedgerEntry::Commit { tid, begin_next, .. } => match begin_next {
                Some(next) => write!(f, "Commit({tid}, begin {next})"),
                None => write!(f, "Commit({tid})"),
            },
            LedgerEntry::Fail { tid, .. } => write!(f, "Fail({tid})"),
            LedgerEntry::Reopen { tid } => write!(f, "Reopen({tid})"),
            LedgerEntry::CheckpointComplete { tid } => write!(f, "CheckpointComplete({tid})"),
            LedgerEntry::Batch(entries) => {
                write!(f, "Batch[")?;
                for (i, e) in entries.iter().enumerate() {
                    write!(f, "{}{e}", if i == 0 { "" } else { ", " })?;
                }
                write!(f, "]")
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum LedgerError {
    #[error("ledger already initialised for cluster {existing:?}; refusing to re-initialise as {requested:?}")]
    AlreadyInitialised { existing: String, requested: String },
    #[error("ledger is not initialised yet")]
    NotInitialised,
    #[error("epoch {proposed} is not above the current epoch {current}")]
    StaleEpoch { proposed: Epoch, current: Epoch },
    #[error("tid {proposed} is not above the highest tid ever issued ({high_water}); tids are never reused")]
    TidReused { proposed: Tid, high_water: Tid },
    #[error("tid {tid} cannot commit before tid {older}, which is still open (commits come in tid order)")]
    CommitOutOfOrder { tid: Tid, older: Tid },
    #[error("tid {tid} cannot be {action}: it is {state}")]
    WrongTxnState { tid: Tid, action: String, state: String },
    #[error("commit of tid {tid} lacks hosts {missing:?} (fail closed: every host must have prepared)")]
    MissingHosts { tid: Tid, missing: Vec<HostId> },
    #[error("checkpoint {tid} cannot be complete while tid {open} is open (checkpoints are taken between transactions)")]
    CheckpointWhileOpen { tid: Tid, open: Tid },
    #[error("checkpoint {tid} is not at or before the last committed tid {last_committed}")]
    CheckpointAhead { tid: Tid, last_committed: Tid },
    #[error("a batch entry inside a batch entry")]
    NestedBatch,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerState {
    pub cluster_id: String,
    pub hosts: Vec<HostId>,
    pub epoch: Epoch,
    /// Highest tid ever begun; the next tid is strictly above it.
    pub tid_high_water: Tid,
    pub last_committed: Tid,
    /// Complete checkpoints, ascending (0, the empty state, is implicit).
    pub checkpoints: Vec<Tid>,
    /// Transactions after the newest complete checkpoint, plus a bounded
    /// history before it. Shared, immutable once committed (module doc,
    /// "Memory").
    #[serde(with = "txns_serde")]
    pub txns: BTreeMap<Tid, Arc<TxnRecord>>,
    /// How many transactions at or before the newest complete checkpoint are
    /// kept in `txns`.
    pub history_max: u64,
}

pub const HISTORY_MAX_DEFAULT: u64 = 1000;
/// Complete checkpoints remembered (older ones are no longer restorable
/// once hosts have deleted them).
pub const CHECKPOINTS_KEPT: usize = 8;
/// How far back a new record looks for names to share.
const NAMES_LOOKBACK: usize = 8;

impl LedgerState {
    pub fn is_initialised(&self) -> bool {
        !self.cluster_id.is_empty()
    }

    pub fn newest_checkpoint(&self) -> Tid {
        self.checkpoints.last().copied().unwrap_or(0)
    }

    /// The oldest transaction begun but neither committed nor failed, if
    /// any: the one whose commit comes next.
    pub fn open_txn(&self) -> Option<&TxnRecord> {
        self.open_tids().next().and_then(|t| self.txn(t))
    }

    /// Every transaction begun but neither committed nor failed, ascending.
    /// More than one only with a commit pipeline (the coordinator's
    /// `--pipeline-depth`): tids begun ahead of the open one, and tids
    /// prepared whose commit is not yet recorded. All lie above the last
    /// commit, since commits come in tid order.
    pub fn open_tids(&self) -> impl Iterator<Item = Tid> + '_ {
        self.txns.range(self.last_committed + 1..).filter(|(_, t)| t.status == TxnStatus::Begun).map(|(tid, _)| *tid)
    }

    /// Failed tids the next recovery reopens (`LedgerEntry::Reopen`),
    /// ascending: those failed with `reopen`, above the last commit.
    pub fn reopenable(&self) -> impl Iterator<Item = Tid> + '_ {
        self.txns
            .range(self.last_committed + 1..)
            .filter(|(_, t)| t.status == TxnStatus::Failed && t.reopen)
            .map(|(tid, _)| *tid)
    }

    pub fn txn(&self, tid: Tid) -> Option<&TxnRecord> {
        self.txns.get(&tid).map(|t| &**t)
    }

    /// Takes `record` in place of this ledger's record of the same tid if
    /// the two are equal (another copy of the ledger applied the same
    /// entries), so both copies share it.
    pub fn adopt(&mut self, record: Arc<TxnRecord>) {
        if let Some(mine) = self.txns.get_mut(&record.tid) {
            if !Arc::ptr_eq(mine, &record) && **mine == *record {
                *mine = record;
            }
        }
    }

    /// The newest record before `tid` that has host records, whose names a
    /// new record of `tid` can share. Looks back a few records at most (a
    /// failed tid has none).
    fn names_before(&self, tid: Tid) -> Option<Arc<TxnRecord>> {
        self.txns.range(..tid).rev().take(NAMES_LOOKBACK).map(|(_, t)| t).find(|t| !t.hosts.is_empty()).cloned()
    }

    /// Applies one raft entry and returns one verdict per ledger entry it
    /// carries (a [`LedgerEntry::Batch`] carries several).
    pub fn apply_all(&mut self, entry: &LedgerEntry) -> Vec<Result<(), LedgerError>> {
        match entry {
            LedgerEntry::Batch(entries) => entries.iter().map(|e| self.apply(e)).collect(),
            e => vec![self.apply(e)],
        }
    }

    /// Applies one entry: the only way the ledger changes. A batch must go
    /// through [`LedgerState::apply_all`]; here it is refused whole.
    pub fn apply(&mut self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        if !self.is_initialised() && !matches!(entry, LedgerEntry::Init { .. }) {
            return Err(LedgerError::NotInitialised);
        }
        match entry {
            LedgerEntry::Init { cluster_id, hosts } => {
                if self.is_initialised() {
                    return Err(LedgerError::AlreadyInitialised {
                        existing: self.cluster_id.clone(),
                        requested: cluster_id.clone(),
                    });
                }
                self.cluster_id = cluster_id.clone();
                self.hosts = hosts.clone();
                if self.history_max == 0 {
                    self.history_max = HISTORY_MAX_DEFAULT;
                }
                Ok(())
            }
            LedgerEntry::NewEpoch { epoch } => {
                if *epoch <= self.epoch {
                    return Err(LedgerError::StaleEpoch { proposed: *epoch, current: self.epoch });
                }
                self.epoch = *epoch;
                Ok(())
            }
            LedgerEntry::Batch(_) => Err(LedgerError::NestedBatch),
            LedgerEntry::Begin { tid } => self.begin(*tid),
            LedgerEntry::Commit { tid, hosts, begin_next } => {
                self.check_begun(*tid, "committed")?;
                if let Some(older) = self.open_tids().next().filter(|o| o < tid) {
                    return Err(LedgerError::CommitOutOfOrder { tid: *tid, older });
                }
                let missing: Vec<HostId> = self.hosts.iter().filter(|h| !hosts.contains_key(*h)).cloned().collect();
                if !missing.is_empty() {
                    return Err(LedgerError::MissingHosts { tid: *tid, missing });
                }
                if let Some(next) = begin_next {
                    // Validate before mutating so a bad entry changes nothing.
                    if *next <= self.tid_high_water {
                        return Err(LedgerError::TidReused { proposed: *next, high_water: self.tid_high_water });
                    }
                }
                let share = self.names_before(*tid);
                let rec = Arc::make_mut(self.txns.get_mut(tid).expect("checked by check_begun"));
                rec.status = TxnStatus::Committed;
                rec.hosts = TxnHosts::build(hosts, share.as_ref().map(|t| &t.hosts));
                self.last_committed = *tid;
                if let Some(next) = begin_next {
                    self.begin(*next)?;
                }
                Ok(())
            }
            LedgerEntry::Fail { tid, diagnosis, reopen } => {
                self.check_begun(*tid, "failed")?;
                let rec = Arc::make_mut(self.txns.get_mut(tid).expect("checked by check_begun"));
                rec.status = TxnStatus::Failed;
                rec.failure = Some(diagnosis.clone());
                rec.reopen = *reopen;
                Ok(())
            }
            LedgerEntry::Reopen { tid } => {
                let state = match self.txns.get(tid) {
                    // Reopened already (a recovery proposed it twice).
                    Some(t) if t.status == TxnStatus::Begun && t.failure.is_some() => return Ok(()),
                    Some(t) if t.status == TxnStatus::Failed && t.reopen && *tid > self.last_committed => {
                        let rec = Arc::make_mut(self.txns.get_mut(tid).expect("matched"));
                        rec.status = TxnStatus::Begun;
                        rec.reopen = false;
                        return Ok(());
                    }
                    Some(t) if t.status == TxnStatus::Failed && t.reopen => {
                        format!("failed, and below the last committed tid {}", self.last_committed)
                    }
                    Some(t) if t.status == TxnStatus::Failed => "failed by a build that did not reopen tids".into(),
                    Some(t) => format!("{:?}", t.status),
                    None => "never begun".into(),
                };
                Err(LedgerError::WrongTxnState { tid: *tid, action: "reopened".into(), state })
            }
            LedgerEntry::CheckpointComplete { tid } => {
                // Invariant 5: checkpoints are taken only between
                // transactions; asserted here, on every replica.
                if let Some(open) = self.open_txn() {
                    return Err(LedgerError::CheckpointWhileOpen { tid: *tid, open: open.tid });
                }
                if *tid > self.last_committed {
                    return Err(LedgerError::CheckpointAhead { tid: *tid, last_committed: self.last_committed });
                }
                if self.checkpoints.last().is_some_and(|c| c >= tid) {
                    // Idempotent: recording the same checkpoint twice is harmless.
                    return Ok(());
                }
                self.checkpoints.push(*tid);
                if self.checkpoints.len() > CHECKPOINTS_KEPT {
                    self.checkpoints.remove(0);
                }
                self.prune();
                Ok(())
            }
        }
    }

    fn begin(&mut self, tid: Tid) -> Result<(), LedgerError> {
        if tid <= self.tid_high_water {
            return Err(LedgerError::TidReused { proposed: tid, high_water: self.tid_high_water });
        }
        self.tid_high_water = tid;
        self.txns.insert(
            tid,
            Arc::new(TxnRecord {
                tid,
                status: TxnStatus::Begun,
                epoch: self.epoch,
                hosts: TxnHosts::default(),
                failure: None,
                reopen: false,
            }),
        );
        Ok(())
    }

    fn check_begun(&self, tid: Tid, action: &'static str) -> Result<(), LedgerError> {
        match self.txns.get(&tid) {
            Some(t) if t.status == TxnStatus::Begun => Ok(()),
            Some(t) => Err(LedgerError::WrongTxnState { tid, action: action.into(), state: format!("{:?}", t.status) }),
            None => Err(LedgerError::WrongTxnState { tid, action: action.into(), state: "never begun".into() }),
        }
    }

    /// Keeps full detail after the newest checkpoint plus `history_max`
    /// transactions before it.
    fn prune(&mut self) {
        let cp = self.newest_checkpoint();
        let before = self.txns.range(..=cp).count() as u64;
        let drop = before.saturating_sub(self.history_max);
        for _ in 0..drop {
            self.txns.pop_first();
        }
    }
}

/// `LedgerState::txns` in the JSON shape of a `BTreeMap<Tid, TxnRecord>`.
/// Reading shares names between records as `apply` does (a snapshot of N
/// tids would otherwise hold N copies of every host and endpoint name).
mod txns_serde {
    use super::*;

    pub fn serialize<S: Serializer>(txns: &BTreeMap<Tid, Arc<TxnRecord>>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(txns.iter().map(|(tid, t)| (tid, &**t)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Tid, Arc<TxnRecord>>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BTreeMap<Tid, Arc<TxnRecord>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of tid to transaction record")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                let mut earlier: Option<Arc<TxnRecord>> = None;
                while let Some((tid, mut t)) = map.next_entry::<Tid, TxnRecord>()? {
                    if let Some(e) = &earlier {
                        t.share_names(e);
                    }
                    let t = Arc::new(t);
                    if !t.hosts.is_empty() {
                        earlier = Some(t.clone());
                    }
                    out.insert(tid, t);
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() -> LedgerState {
        let mut l = LedgerState::default();
        l.apply(&LedgerEntry::Init { cluster_id: "c".into(), hosts: vec!["h0".into(), "h1".into()] }).unwrap();
        l
    }

    fn all_hosts() -> BTreeMap<HostId, HostTxnRecord> {
        ["h0", "h1"].iter().map(|h| (h.to_string(), HostTxnRecord::default())).collect()
    }

    #[test]
    fn a_failed_tid_is_reopened_once_and_only_above_the_last_commit() {
        let mut l = init();
        l.apply(&LedgerEntry::Begin { tid: 1 }).unwrap();
        l.apply(&LedgerEntry::Fail { tid: 1, diagnosis: "diverged".into(), reopen: true }).unwrap();
        assert_eq!(l.reopenable().collect::<Vec<_>>(), [1]);
        assert_eq!(l.open_tids().count(), 0);
        l.apply(&LedgerEntry::Reopen { tid: 1 }).unwrap();
        let t = l.txn(1).unwrap();
        assert_eq!((t.status, t.reopen, t.failure.as_deref()), (TxnStatus::Begun, false, Some("diverged")));
        assert_eq!(l.open_tids().collect::<Vec<_>>(), [1]);
        assert_eq!(l.reopenable().count(), 0);
        let before = l.clone();
        l.apply(&LedgerEntry::Reopen { tid: 1 }).unwrap();
        assert_eq!(l, before, "reopening an open tid again changes nothing");
        // It commits as any begun tid.
        l.apply(&LedgerEntry::Commit { tid: 1, hosts: all_hosts(), begin_next: Some(2) }).unwrap();
        let refused = |l: &mut LedgerState, tid| match l.apply(&LedgerEntry::Reopen { tid }) {
            Err(LedgerError::WrongTxnState { state, .. }) => state,
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(&mut l, 1), "Committed");
        assert_eq!(refused(&mut l, 9), "never begun");
        assert_eq!(refused(&mut l, 2), "Begun", "tid 2, begun with the commit of 1, never failed");
        // Failed without `reopen` (an older build's Fail) stays failed.
        l.apply(&LedgerEntry::Fail { tid: 2, diagnosis: "x".into(), reopen: false }).unwrap();
        assert_eq!(refused(&mut l, 2), "failed by a build that did not reopen tids");
        assert_eq!(l.reopenable().count(), 0);
    }

    #[test]
    fn fail_entries_and_records_of_older_builds_read_and_write_the_same() {
        let old = r#"{"Fail":{"tid":3,"diagnosis":"d"}}"#;
        let entry: LedgerEntry = serde_json::from_str(old).unwrap();
        assert_eq!(entry, LedgerEntry::Fail { tid: 3, diagnosis: "d".into(), reopen: false });
        assert_eq!(serde_json::to_string(&entry).unwrap(), old);
        let new = LedgerEntry::Fail { tid: 3, diagnosis: "d".into(), reopen: true };
        assert_eq!(serde_json::to_string(&new).unwrap(), r#"{"Fail":{"tid":3,"diagnosis":"d","reopen":true}}"#);
        let mut l = init();
        l.apply(&LedgerEntry::Begin { tid: 3 }).unwrap();
        l.apply(&entry).unwrap();
        let json = serde_json::to_string(&l).unwrap();
        assert!(!json.contains("reopen"), "a record without reopen is written as before: {json}");
        l.apply(&LedgerEntry::Reopen { tid: 3 }).unwrap_err();
        let mut m = init();
        m.apply(&LedgerEntry::Begin { tid: 3 }).unwrap();
        m.apply(&new).unwrap();
        let back: LedgerState = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m, "a snapshot keeps the flag");
        assert_eq!(back.reopenable().collect::<Vec<_>>(), [3]);
    }

    proptest::proptest! {
        /// `Sums::matches` is the allocation-free form of "the diff is
        /// empty": small endpoint and value ranges make equal, missing,
        /// extra and differing endpoints all common.
        #[test]
        fn sums_match_an_aggregate_exactly_when_their_diff_is_empty(
            a in proptest::collection::btree_map("[abc]", (0u64..2, 0u64..2), 0..3),
            b in proptest::collection::btree_map("[abc]", (0u64..2, 0u64..2), 0..3),
        ) {
            let agg = |m: &BTreeMap<String, (u64, u64)>| lockstep_journal::EndpointChecksums(
                m.iter().map(|(e, &(count, hash))| (e.clone(), lockstep_journal::Checksum { count, hash })).collect());
            let (a, b) = (agg(&a), agg(&b));
            let sums = Sums::from_aggregate(&a, None);
            proptest::prop_assert_eq!(sums.matches(&b), a.diff(&b).is_empty());
            proptest::prop_assert!(sums.matches(&a));
        }
    }

    #[test]
    fn tids_strictly_increase_and_are_never_reused() {
        let mut l = init();
        l.apply(&LedgerEntry::Begin { tid: 1 }).unwrap();
        l.apply(&LedgerEntry::Commit { tid: 1, hosts: all_hosts(), begin_next: Some(2) }).unwrap();
        assert_eq!(l.apply(&LedgerEntry::Begin { tid: 2 }), Err(LedgerError::TidReused { proposed: 2, high_water: 2 }));
        let before = l.clone();
        assert!(l.apply(&LedgerEntry::Commit { tid: 2, hosts: all_hosts(), begin_next: Some(1) }).is_err());
        assert_eq!(l, before, "a rejected entry changes nothing");
    }

    #[test]
    fn commit_requires_every_host() {
        let mut l = init();
        l.apply(&LedgerEntry::Begin { tid: 1 }).unwrap();
        let mut hosts = all_hosts();
        hosts.remove("h1");
        assert!(matches!(
            l.apply(&LedgerEntry::Commit { tid: 1, hosts, begin_next: None }),
            Err(LedgerError::MissingHosts { .. })
        ));
    }

    #[test]
    fn entries_before_init_are_rejected() {
        let mut l = LedgerState::default();
        assert_eq!(l.apply(&LedgerEntry::Begin { tid: 1 }), Err(LedgerError::NotInitialised));
    }

    #[test]
    fn checkpoint_is_refused_while_a_transaction_is_open() {
        let mut l = init();
        l.apply(&LedgerEntry::Begin { tid: 1 }).unwrap();
        l.apply(&LedgerEntry::Commit { tid: 1, hosts: all_hosts(), begin_next: Some(2) }).unwrap();
        assert_eq!(
            l.apply(&LedgerEntry::CheckpointComplete { tid: 1 }),
            Err(LedgerError::CheckpointWhileOpen { tid: 1, open: 2 })
        );
    }

    #[test]
    fn pipelined_tids_stay_open_together_and_commit_in_tid_order() {
        let mut l = init();
        for t in 1..=3 {
            l.apply(&LedgerEntry::Begin { tid: t }).unwrap();
        }
        assert_eq!(l.open_tids().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(l.open_txn().map(|t| t.tid), Some(1), "the oldest open tid commits next");
        let before = l.clone();
        assert_eq!(
            l.apply(&LedgerEntry::Commit { tid: 2, hosts: all_hosts(), begin_next: None }),
            Err(LedgerError::CommitOutOfOrder { tid: 2, older: 1 })
        );
        assert_eq!(l, before, "a rejected entry changes nothing");
        l.apply(&LedgerEntry::Commit { tid: 1, hosts: all_hosts(), begin_next: Some(4) }).unwrap();
        l.apply(&LedgerEntry::Commit { tid: 2, hosts: all_hosts(), begin_next: None }).unwrap();
        assert_eq!(l.open_tids().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(
            l.apply(&LedgerEntry::CheckpointComplete { tid: 2 }),
            Err(LedgerError::CheckpointWhileOpen { tid: 2, open: 3 }),
            "a tid begun ahead is open: invariant 5 holds for it too"
        );
    }

    #[test]
    fn a_batch_applies_each_entry_in_order_with_its_own_verdict() {
        let mut l = init();
        l.apply(&LedgerEntry::Begin { tid: 1 }).unwrap();
        let batch = LedgerEntry::Batch(vec![
            LedgerEntry::Commit { tid: 1, hosts: all_hosts(), begin_next: Some(2) },
            LedgerEntry::Begin { tid: 2 },
            LedgerEntry::Commit { tid: 2, hosts: all_hosts(), begin_next: Some(3) },
            LedgerEntry::Batch(vec![]),
        ]);
        let verdicts = l.apply_all(&batch);
        assert_eq!(
            verdicts,
            vec![
                Ok(()),
                Err(LedgerError::TidReused { proposed: 2, high_water: 2 }),
                Ok(()),
                Err(LedgerError::NestedBatch),
            ],
            "a rejected entry changes nothing and the next one still applies"
        );
        assert_eq!(l.last_committed, 2);
        assert_eq!(l.open_tids().collect::<Vec<_>>(), vec![3]);
        assert_eq!(l.apply(&batch), Err(LedgerError::NestedBatch), "apply refuses a batch whole");
    }

    #[test]
    fn checkpoints_prune_history() {
        let mut l = init();
        l.history_max = 2;
        l.apply(&LedgerEntry::Begin { tid: 1 }).unwrap();
        for t in 1..10 {
            let begin_next = (t != 8).then_some(t + 1);
            l.apply(&LedgerEntry::Commit { tid: t, hosts: all_hosts(), begin_next }).unwrap();
            if t == 8 {
                assert!(l.apply(&LedgerEntry::CheckpointComplete { tid: 10 }).is_err(), "not committed yet");
                l.apply(&LedgerEntry::CheckpointComplete { tid: 8 }).unwrap();
                l.apply(&LedgerEntry::Begin { tid: 9 }).unwrap();
            }
        }
        assert_eq!(l.txns.keys().copied().collect::<Vec<_>>(), vec![7, 8, 9, 10]);
        assert_eq!(l.open_txn().map(|t| t.tid), Some(10));
    }

    /// A commit entry as the raft log holds it (written before the records
    /// became compact) and a snapshot state in the same shape.
    const COMMIT_JSON: &str = r#"{"Commit":{"tid":2,"hosts":{"h0":{"steps":9,"aggregate":{"generator":[265,6530735457670134981],"push":[0,0]},"output_digest":18014035788407563778},"h1":{"steps":10,"aggregate":{"generator":[225,1283783447489548274],"push":[0,0]},"output_digest":2406749918149493891}},"begin_next":3}}"#;
    const STATE_JSON: &str = r#"{"cluster_id":"c","hosts":["h0","h1"],"epoch":1,"tid_high_water":3,"last_committed":2,"checkpoints":[],"txns":{"1":{"tid":1,"status":"Failed","epoch":1,"hosts":{},"failure":"boom"},"2":{"tid":2,"status":"Committed","epoch":1,"hosts":{"h0":{"steps":9,"aggregate":{"generator":[265,6530735457670134981],"push":[0,0]},"output_digest":18014035788407563778},"h1":{"steps":10,"aggregate":{"generator":[225,1283783447489548274],"push":[0,0]},"output_digest":2406749918149493891}},"failure":null},"3":{"tid":3,"status":"Begun","epoch":1,"hosts":{},"failure":null}},"history_max":1000}"#;

    #[test]
    fn serialized_form_is_that_of_the_maps_it_replaced() {
        let e: LedgerEntry = serde_json::from_str(COMMIT_JSON).unwrap();
        assert_eq!(serde_json::to_string(&e).unwrap(), COMMIT_JSON);
        let LedgerEntry::Commit { hosts, .. } = &e else { panic!("{e:?}") };
        let want = agg(&[("generator", 265, 6530735457670134981), ("push", 0, 0)]);
        assert_eq!(hosts["h0"].aggregate(), want);

        let s: LedgerState = serde_json::from_str(STATE_JSON).unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), STATE_JSON);
        assert_eq!(s.txn(2).unwrap().hosts.get("h1").map(|r| r.steps), Some(10));
        assert_eq!(s.open_txn().map(|t| t.tid), Some(3));

        let dup = r#"{"steps":1,"aggregate":{"a":[1,1],"a":[2,2]},"output_digest":0}"#;
        assert!(serde_json::from_str::<HostTxnRecord>(dup).is_err(), "an endpoint twice is refused");
    }

    fn agg(items: &[(&str, u64, u64)]) -> Aggregate {
        items.iter().map(|(e, count, hash)| (e.to_string(), Checksum { count: *count, hash: *hash })).collect()
    }

    /// Every host and endpoint name of `a` is the same allocation in `b`.
    fn names_shared(a: &TxnRecord, b: &TxnRecord) -> bool {
        a.hosts.0.len() == b.hosts.0.len()
            && a.hosts.0.iter().zip(b.hosts.0.iter()).all(|((ha, ra), (hb, rb))| {
                Arc::ptr_eq(ha, hb)
                    && ra.aggregate.0.len() == rb.aggregate.0.len()
                    && ra.aggregate.0.iter().zip(rb.aggregate.0.iter()).all(|(x, y)| Arc::ptr_eq(&x.0, &y.0))
            })
    }

    #[test]
    fn records_share_names_and_copies_share_records() {
        let mut l = init();
        l.apply(&LedgerEntry::Begin { tid: 1 }).unwrap();
        for t in 1..=4 {
            let hosts = ["h0", "h1"]
                .iter()
                .map(|h| (h.to_string(), HostTxnRecord::new(t, &agg(&[("gen", t, t), ("push", 0, 0)]), t)))
                .collect();
            l.apply(&LedgerEntry::Commit { tid: t, hosts, begin_next: Some(t + 1) }).unwrap();
        }
        let (first, last) = (l.txn(1).unwrap(), l.txn(4).unwrap());
        assert!(names_shared(first, last), "{first:?} {last:?}");
        assert_eq!(last.hosts.get("h1").unwrap().aggregate(), agg(&[("gen", 4, 4), ("push", 0, 0)]));

        // A snapshot decodes with names shared too.
        let back: LedgerState = serde_json::from_slice(&serde_json::to_vec(&l).unwrap()).unwrap();
        assert_eq!(back, l);
        assert!(names_shared(back.txn(1).unwrap(), back.txn(4).unwrap()));

        // A copy shares the records; changing one copy leaves the other.
        let copy = l.clone();
        assert!(Arc::ptr_eq(&copy.txns[&2], &l.txns[&2]));
        l.apply(&LedgerEntry::Fail { tid: 5, diagnosis: "x".into(), reopen: true }).unwrap();
        assert_eq!(copy.txn(5).unwrap().status, TxnStatus::Begun);
        assert_eq!(l.txn(5).unwrap().status, TxnStatus::Failed);

        // Copies that applied the same entries each take one record: equal
        // ones are adopted, a different one is not.
        let mut other = back;
        other.apply(&LedgerEntry::Fail { tid: 5, diagnosis: "x".into(), reopen: true }).unwrap();
        assert!(!Arc::ptr_eq(&other.txns[&5], &l.txns[&5]));
        other.adopt(l.txns[&5].clone());
        assert!(Arc::ptr_eq(&other.txns[&5], &l.txns[&5]));
        let mut begun = copy.txns[&5].clone();
        Arc::make_mut(&mut begun).epoch = 9;
        other.adopt(begun);
        assert_eq!(other.txn(5).unwrap().status, TxnStatus::Failed);
    }
}
