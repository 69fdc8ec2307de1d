//! What the leader knows of each member's copy of the log: the newest
//! entry it is known to hold, how many of the leader's entries it lacks,
//! and how long ago the leader sent the newest request it answered.
//!
//! openraft keeps these on the leader only (its replication and heartbeat
//! metrics); a follower does not know how the others are doing. The raft
//! metrics are read in [`super::Ledger::progress`]; the arithmetic over them
//! is here, on plain data, so that its edge cases (a member that has
//! answered nothing yet, a learner, the leader itself) are unit tested.
//! `Admin/ListNodes` and the per-member gauges (`crate::metrics`) show it.

use std::collections::BTreeMap;
use std::time::Duration;

use super::NodeId;

/// One member's replication, as its leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberProgress {
    pub node_id: NodeId,
    /// The newest log index the leader knows this member holds; `None` if
    /// it has confirmed none to this leader yet. On the leader itself, its
    /// own last log index.
    pub matched: Option<u64>,
    /// Entries of the leader's log this member does not hold yet (0 on the
    /// leader itself).
    pub behind: u64,
    /// Time since the leader sent the newest request (heartbeat or
    /// entries) this member has answered; `None` on the leader itself and
    /// for a member that has not answered this leader at all.
    pub silent_for: Option<Duration>,
    /// What the leader found wrong with this member, if anything (it lost
    /// its data: `network::PeerLogs`).
    pub problem: Option<String>,
}

/// The leader's view as plain data: its last log index, and per member
/// (voters and learners) the matched index and the age of the newest
/// answered request, as openraft's leader metrics give them.
#[derive(Clone, Debug, Default)]
pub struct LeaderView {
    pub leader: NodeId,
    pub last_log_index: Option<u64>,
    pub matched: BTreeMap<NodeId, Option<u64>>,
    pub answered_ago: BTreeMap<NodeId, Option<Duration>>,
    pub problems: BTreeMap<NodeId, String>,
}

/// Every member's progress, in node id order. `members` are the ids of the
/// current membership; a member openraft tracks nothing for yet (just
/// added) counts as holding nothing and never having answered.
pub fn of(view: &LeaderView, members: impl IntoIterator<Item = NodeId>) -> Vec<MemberProgress> {
    let last = view.last_log_index;
    let mut out: Vec<MemberProgress> = members
        .into_iter()
        .map(|node_id| {
            if node_id == view.leader {
                return MemberProgress { node_id, matched: last, behind: 0, silent_for: None, problem: None };
            }
            let matched = view.matched.get(&node_id).copied().flatten();
            // Entries are numbered from 1 (index 0 is openraft's initial
            // membership entry on a fresh group), so a member with nothing
            // matched lacks the whole log.
            let behind = match (last, matched) {
                (Some(l), Some(m)) => l.saturating_sub(m),
                (Some(l), None) => l + 1,
                (None, _) => 0,
            };
            let silent_for = view.answered_ago.get(&node_id).copied().flatten();
            let problem = view.problems.get(&node_id).cloned();
            MemberProgress { node_id, matched, behind, silent_for, problem }
        })
        .collect();
    out.sort_by_key(|p| p.node_id);
    out.dedup_by_key(|p| p.node_id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> LeaderView {
        LeaderView {
            leader: 1,
            last_log_index: Some(120),
            matched: BTreeMap::from([(1, Some(120)), (2, Some(118)), (3, None)]),
            answered_ago: BTreeMap::from([(1, Some(Duration::ZERO)), (2, Some(Duration::from_millis(20))), (3, None)]),
            problems: BTreeMap::from([(3, "lost its data".to_string())]),
        }
    }

    #[test]
    fn the_leader_holds_its_whole_log_and_has_no_answer_age() {
        let p = of(&view(), [1, 2, 3]);
        assert_eq!(p[0], MemberProgress { node_id: 1, matched: Some(120), behind: 0, silent_for: None, problem: None });
    }

    #[test]
    fn a_follower_lacks_what_lies_past_its_matched_index() {
        let p = of(&view(), [3, 2, 1]);
        assert_eq!(p[1], MemberProgress { node_id: 2, matched: Some(118), behind: 2, silent_for: Some(Duration::from_millis(20)), problem: None });
    }

    #[test]
    fn a_member_that_confirmed_nothing_lacks_the_whole_log_and_never_answered() {
        let p = of(&view(), [1, 2, 3]);
        assert_eq!(p[2].problem.as_deref(), Some("lost its data"));
        assert_eq!(p[2], MemberProgress { node_id: 3, matched: None, behind: 121, silent_for: None, problem: p[2].problem.clone() });
    }

    #[test]
    fn a_member_openraft_does_not_track_yet_counts_as_holding_nothing() {
        let p = of(&view(), [1, 2, 3, 4]);
        assert_eq!(p[3], MemberProgress { node_id: 4, matched: None, behind: 121, silent_for: None, problem: None });
    }

    #[test]
    fn an_empty_log_leaves_nobody_behind() {
        let v = LeaderView { leader: 1, ..Default::default() };
        assert!(of(&v, [1, 2]).iter().all(|p| p.behind == 0));
    }

    #[test]
    fn a_matched_index_past_the_leaders_log_is_not_negative() {
        // A new leader's view may briefly lag what a member acknowledged.
        let mut v = view();
        v.matched.insert(2, Some(125));
        assert_eq!(of(&v, [2])[0].behind, 0);
    }
}
