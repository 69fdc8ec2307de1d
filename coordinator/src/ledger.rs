//! The ledger: the coordinator's durable record of every transaction
//! (DESIGN section 2), as plain data with a pure, deterministic `apply`.
//!
//! The same `LedgerState` is the state machine of the openraft group (see
//! `raft.rs`) and the coordinator core's view of history, so the rules that
//! make a ledger entry valid live here, once. `apply` never panics: an entry
//! that breaks a rule (a tid at or below the high-water mark, a commit of a
//! tid that was never begun) is rejected with a typed error and leaves the
//! state unchanged, identically on every replica.

use std::collections::BTreeMap;

use lockstep_journal::{Aggregate, Checksum, EndpointChecksums};
use serde::{Deserialize, Serialize};

pub type HostId = String;
pub type Tid = u64;
pub type Epoch = u64;

/// What one host did in one committed transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostTxnRecord {
    pub steps: u64,
    /// Endpoint -> (count, hash).
    pub aggregate: BTreeMap<String, (u64, u64)>,
    pub output_digest: u64,
}

impl HostTxnRecord {
    pub fn new(steps: u64, aggregate: &Aggregate, output_digest: u64) -> Self {
        HostTxnRecord {
            steps,
            aggregate: aggregate.0.iter().map(|(e, c)| (e.clone(), (c.count, c.hash))).collect(),
            output_digest,
        }
    }

    pub fn aggregate(&self) -> Aggregate {
        EndpointChecksums(
            self.aggregate.iter().map(|(e, (count, hash))| (e.clone(), Checksum { count: *count, hash: *hash })).collect(),
        )
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
    pub hosts: BTreeMap<HostId, HostTxnRecord>,
    pub failure: Option<String>,
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
    /// The pipeline failed in `tid` with this diagnosis.
    Fail { tid: Tid, diagnosis: String },
    /// Every host reported checkpoint `tid` durable.
    CheckpointComplete { tid: Tid },
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
    #[error("cannot begin tid {proposed}: tid {open} is still open")]
    TxnStillOpen { proposed: Tid, open: Tid },
    #[error("tid {tid} cannot be {action}: it is {state}")]
    WrongTxnState { tid: Tid, action: String, state: String },
    #[error("commit of tid {tid} lacks hosts {missing:?} (fail closed: every host must have prepared)")]
    MissingHosts { tid: Tid, missing: Vec<HostId> },
    #[error("checkpoint {tid} cannot be complete while tid {open} is open (checkpoints are taken between transactions)")]
    CheckpointWhileOpen { tid: Tid, open: Tid },
    #[error("checkpoint {tid} is not at or before the last committed tid {last_committed}")]
    CheckpointAhead { tid: Tid, last_committed: Tid },
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
    /// history before it.
    pub txns: BTreeMap<Tid, TxnRecord>,
    /// How many transactions at or before the newest complete checkpoint are
    /// kept in `txns`.
    pub history_max: u64,
}

pub const HISTORY_MAX_DEFAULT: u64 = 1000;
/// Complete checkpoints remembered (older ones are no longer restorable
/// once hosts have deleted them).
pub const CHECKPOINTS_KEPT: usize = 8;

impl LedgerState {
    pub fn is_initialised(&self) -> bool {
        !self.cluster_id.is_empty()
    }

    pub fn newest_checkpoint(&self) -> Tid {
        self.checkpoints.last().copied().unwrap_or(0)
    }

    /// The transaction begun but neither committed nor failed, if any.
    pub fn open_txn(&self) -> Option<&TxnRecord> {
        self.txns.values().next_back().filter(|t| t.status == TxnStatus::Begun)
    }

    pub fn txn(&self, tid: Tid) -> Option<&TxnRecord> {
        self.txns.get(&tid)
    }

    /// Applies one entry: the only way the ledger changes.
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
            LedgerEntry::Begin { tid } => self.begin(*tid),
            LedgerEntry::Commit { tid, hosts, begin_next } => {
                self.check_begun(*tid, "committed")?;
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
                let rec = self.txns.get_mut(tid).expect("checked by check_begun");
                rec.status = TxnStatus::Committed;
                rec.hosts = hosts.clone();
                self.last_committed = *tid;
                if let Some(next) = begin_next {
                    self.begin(*next)?;
                }
                Ok(())
            }
            LedgerEntry::Fail { tid, diagnosis } => {
                self.check_begun(*tid, "failed")?;
                let rec = self.txns.get_mut(tid).expect("checked by check_begun");
                rec.status = TxnStatus::Failed;
                rec.failure = Some(diagnosis.clone());
                Ok(())
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
        if let Some(open) = self.open_txn() {
            return Err(LedgerError::TxnStillOpen { proposed: tid, open: open.tid });
        }
        self.tid_high_water = tid;
        self.txns.insert(
            tid,
            TxnRecord { tid, status: TxnStatus::Begun, epoch: self.epoch, hosts: BTreeMap::new(), failure: None },
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
}
