//! Exhaustive transition-table test of the host core (DESIGN invariant 7:
//! every state × event pair has a defined outcome), plus the stream and
//! epoch checks that run before the table.

use super::*;
use lockstep_journal::Checksum;
use TxnState::*;

const EPOCH: u64 = 3;

fn cs() -> EndpointChecksums {
    [("generator".to_string(), Checksum { count: 2, hash: 77 })].into_iter().collect()
}

fn perr(tid: u64) -> Action {
    Action::Report(Report::Error { kind: ErrorKind::Protocol, tid, message: String::new() })
}

fn ierr(tid: u64) -> Action {
    Action::Report(Report::Error { kind: ErrorKind::Internal, tid, message: String::new() })
}

fn engine_err(tid: u64) -> Action {
    Action::Report(Report::Error { kind: ErrorKind::Engine, tid, message: String::new() })
}

fn abandon(tid: u64) -> Action {
    Action::AbandonTxn { tid }
}

fn step_done_live() -> Action {
    Action::Report(Report::StepDone { tid: 5, step: 9, checksums: cs(), journaled: None, mode: Mode::Live })
}

fn step_done_replayed_6() -> Action {
    Action::Report(Report::StepDone { tid: 6, step: 9, checksums: cs(), journaled: Some(cs()), mode: Mode::Replay })
}

fn step_done_replayed() -> Action {
    Action::Report(Report::StepDone { tid: 5, step: 9, checksums: cs(), journaled: Some(cs()), mode: Mode::Replay })
}

/// Every state of the table, in the context: epoch 3, last committed tid 4,
/// open tid 5 (so the highest opened tid is 5 when a txn is open, else 4).
fn state(name: &str) -> HostCore {
    let (state, last_opened) = match name {
        "Stopped" => (Stopped, 4),
        "Idle" => (Idle, 4),
        "OpenLive5" => (OpenLive { tid: 5 }, 5),
        "OpenReplay5" => (OpenReplay { tid: 5, prepare_requested: false }, 5),
        "OpenReplay5Prep" => (OpenReplay { tid: 5, prepare_requested: true }, 5),
        "ReplayDrained5" => (ReplayDrained { tid: 5 }, 5),
        "Prepared5" => (Prepared { tid: 5 }, 5),
        // A kept transaction, on a new (welcomed) stream after the old one ended.
        "PausedLive5" => (PausedLive { tid: 5 }, 5),
        "PausedPrepared5" => (PausedPrepared { tid: 5 }, 5),
        // Replay window (sealed replays of committed tids; see core.rs).
        "OpenReplay5Sealed" => return window_state(OpenReplay { tid: 5, prepare_requested: true }, 5, &[], &[]),
        "OpenReplay5Ahead6" => return window_state(OpenReplay { tid: 5, prepare_requested: true }, 6, &[6], &[]),
        "Prepared5Sealed" => return window_state(Prepared { tid: 5 }, 5, &[], &[]),
        "OpenReplay6Awaiting5" => return window_state(OpenReplay { tid: 6, prepare_requested: true }, 6, &[], &[5]),
        "Prepared6Awaiting5" => return window_state(Prepared { tid: 6 }, 6, &[], &[5]),
        // Commit pipeline: live 6 opened by a pipelined Prepare{5, next 6}.
        "OpenLive6Awaiting5" => {
            return HostCore::for_test(OpenLive { tid: 6 }, EPOCH, 4, 6).with_window(false, &[], &[5])
        }
        // The same kept on a new stream after the old one ended.
        "PausedLive6Awaiting5" => {
            return HostCore::for_test(PausedLive { tid: 6 }, EPOCH, 4, 6).with_window(false, &[], &[5])
        }
        "PausedPrepared6Awaiting5" => {
            return HostCore::for_test(PausedPrepared { tid: 6 }, EPOCH, 4, 6).with_window(false, &[], &[5])
        }
        other => panic!("unknown state {other}"),
    };
    HostCore::for_test(state, EPOCH, 4, last_opened)
}

fn window_state(state: TxnState, last_opened: u64, ahead: &[u64], awaiting: &[u64]) -> HostCore {
    HostCore::for_test(state, EPOCH, 4, last_opened).with_window(true, ahead, awaiting)
}

const STATES: &[&str] = &[
    "Stopped",
    "Idle",
    "OpenLive5",
    "OpenReplay5",
    "OpenReplay5Prep",
    "ReplayDrained5",
    "Prepared5",
    "PausedLive5",
    "PausedPrepared5",
    "OpenReplay5Sealed",
    "OpenReplay5Ahead6",
    "Prepared5Sealed",
    "OpenReplay6Awaiting5",
    "Prepared6Awaiting5",
    "OpenLive6Awaiting5",
    "PausedLive6Awaiting5",
    "PausedPrepared6Awaiting5",
];

/// Every event kind of the table (commands carry the current epoch and the
/// next seq, so only the transaction table decides).
fn event(name: &str) -> Event {
    let cmd = |command| Event::Command { seq: 1, epoch: EPOCH, command };
    match name {
        "start_6_live" => cmd(Command::Start { tid: 6, mode: Mode::Live, prepare: false }),
        "start_6_replay" => cmd(Command::Start { tid: 6, mode: Mode::Replay, prepare: false }),
        "start_4_live" => cmd(Command::Start { tid: 4, mode: Mode::Live, prepare: false }),
        "start_6_sealed" => cmd(Command::Start { tid: 6, mode: Mode::Replay, prepare: true }),
        "start_7_sealed" => cmd(Command::Start { tid: 7, mode: Mode::Replay, prepare: true }),
        "prepare_5" => cmd(Command::Prepare { tid: 5, next: None }),
        "prepare_6" => cmd(Command::Prepare { tid: 6, next: None }),
        "prepare_5_next_6_live" => cmd(Command::Prepare { tid: 5, next: Some((6, Mode::Live, false)) }),
        "prepare_5_next_6_replay" => cmd(Command::Prepare { tid: 5, next: Some((6, Mode::Replay, false)) }),
        "prepare_6_next_7_live" => cmd(Command::Prepare { tid: 6, next: Some((7, Mode::Live, false)) }),
        "commit_5" => cmd(Command::Commit { tid: 5, next: None }),
        "commit_5_next_6_live" => cmd(Command::Commit { tid: 5, next: Some((6, Mode::Live, false)) }),
        "commit_5_next_6_replay" => cmd(Command::Commit { tid: 5, next: Some((6, Mode::Replay, false)) }),
        "commit_5_next_5" => cmd(Command::Commit { tid: 5, next: Some((5, Mode::Live, false)) }),
        "commit_6" => cmd(Command::Commit { tid: 6, next: None }),
        // The replay window's Commit carrying the next sealed Start.
        "commit_5_next_7_sealed" => cmd(Command::Commit { tid: 5, next: Some((7, Mode::Replay, true)) }),
        "checkpoint_4" => cmd(Command::Checkpoint { tid: 4 }),
        "checkpoint_5" => cmd(Command::Checkpoint { tid: 5 }),
        "checkpoint_complete_4" => cmd(Command::CheckpointComplete { tid: 4 }),
        "restore_4" => cmd(Command::Restore { checkpoint_tid: 4 }),
        "stop" => cmd(Command::Stop { reason: "operator".into() }),
        "welcome_again" => cmd(Command::Welcome { coordinator_id: "c1".into() }),
        "malformed" => Event::MalformedCommand { seq: 1, epoch: EPOCH, reason: "no command body".into() },
        "step_5_live" => Event::StepFinished { tid: 5, step: 9, checksums: cs(), journaled: None },
        "step_5_replayed" => Event::StepFinished { tid: 5, step: 9, checksums: cs(), journaled: Some(cs()) },
        "step_6_live" => Event::StepFinished { tid: 6, step: 9, checksums: cs(), journaled: None },
        "step_6_replayed" => Event::StepFinished { tid: 6, step: 9, checksums: cs(), journaled: Some(cs()) },
        "exhausted_5" => Event::ReplayExhausted { tid: 5, commit_marker: false },
        "exhausted_5_marker" => Event::ReplayExhausted { tid: 5, commit_marker: true },
        "exhausted_6" => Event::ReplayExhausted { tid: 6, commit_marker: false },
        "action_failed" => Event::ActionFailed { kind: ErrorKind::Engine, tid: 5, message: "disk full".into() },
        "stream_closed" => Event::StreamClosed,
        "stream_opened" => Event::StreamOpened,
        other => panic!("unknown event {other}"),
    }
}

const EVENTS: &[&str] = &[
    "start_6_live",
    "start_6_replay",
    "start_4_live",
    "start_6_sealed",
    "start_7_sealed",
    "prepare_5",
    "prepare_6",
    "prepare_5_next_6_live",
    "prepare_5_next_6_replay",
    "prepare_6_next_7_live",
    "commit_5",
    "commit_5_next_6_live",
    "commit_5_next_6_replay",
    "commit_5_next_5",
    "commit_6",
    "commit_5_next_7_sealed",
    "checkpoint_4",
    "checkpoint_5",
    "checkpoint_complete_4",
    "restore_4",
    "stop",
    "welcome_again",
    "malformed",
    "step_5_live",
    "step_5_replayed",
    "step_6_live",
    "step_6_replayed",
    "exhausted_5",
    "exhausted_5_marker",
    "exhausted_6",
    "action_failed",
    "stream_closed",
    "stream_opened",
];

/// Blanks free-text messages (asserting they are not empty), so the table
/// pins kinds, tids and order exactly and leaves wording free.
fn normalize(actions: Vec<Action>) -> Vec<Action> {
    actions
        .into_iter()
        .map(|a| match a {
            Action::Report(Report::Error { kind, tid, message }) => {
                assert!(!message.is_empty(), "error reports must say what happened");
                Action::Report(Report::Error { kind, tid, message: String::new() })
            }
            Action::DropStream { reason } => {
                assert!(!reason.is_empty());
                Action::DropStream { reason: String::new() }
            }
            other => other,
        })
        .collect()
}

#[rustfmt::skip]
fn table() -> Vec<(&'static str, &'static str, TxnState, Vec<Action>)> {
    vec![
        // ---- Stopped
        ("Stopped", "start_6_live", Stopped, vec![perr(6)]),
        ("Stopped", "start_6_replay", Stopped, vec![perr(6)]),
        ("Stopped", "start_4_live", Stopped, vec![perr(4)]),
        ("Stopped", "prepare_5", Stopped, vec![perr(5)]),
        ("Stopped", "prepare_6", Stopped, vec![perr(6)]),
        ("Stopped", "commit_5", Stopped, vec![perr(5)]),
        ("Stopped", "commit_5_next_6_live", Stopped, vec![perr(5)]),
        ("Stopped", "commit_5_next_6_replay", Stopped, vec![perr(5)]),
        ("Stopped", "commit_5_next_5", Stopped, vec![perr(5)]),
        ("Stopped", "commit_6", Stopped, vec![perr(6)]),
        ("Stopped", "commit_5_next_7_sealed", Stopped, vec![perr(5)]),
        ("Stopped", "checkpoint_4", Stopped, vec![perr(4)]),
        ("Stopped", "checkpoint_5", Stopped, vec![perr(5)]),
        ("Stopped", "checkpoint_complete_4", Stopped, vec![Action::CheckpointComplete { tid: 4 }]),
        ("Stopped", "restore_4", Idle, vec![Action::Restore { checkpoint_tid: 4 }, Action::Report(Report::Restored { checkpoint_tid: 4 })]),
        ("Stopped", "stop", Stopped, vec![]),
        ("Stopped", "welcome_again", Stopped, vec![perr(0)]),
        ("Stopped", "malformed", Stopped, vec![perr(0)]),
        ("Stopped", "step_5_live", Stopped, vec![ierr(5)]),
        ("Stopped", "step_5_replayed", Stopped, vec![ierr(5)]),
        ("Stopped", "step_6_live", Stopped, vec![ierr(6)]),
        ("Stopped", "exhausted_5", Stopped, vec![ierr(5)]),
        ("Stopped", "exhausted_5_marker", Stopped, vec![ierr(5)]),
        ("Stopped", "exhausted_6", Stopped, vec![ierr(6)]),
        ("Stopped", "action_failed", Stopped, vec![engine_err(5)]),
        ("Stopped", "stream_closed", Stopped, vec![]),
        ("Stopped", "stream_opened", Stopped, vec![ierr(0)]),
        // ---- Idle
        ("Idle", "start_6_live", OpenLive { tid: 6 }, vec![Action::OpenTxn { tid: 6, mode: Mode::Live }]),
        ("Idle", "start_6_replay", OpenReplay { tid: 6, prepare_requested: false }, vec![Action::OpenTxn { tid: 6, mode: Mode::Replay }]),
        ("Idle", "start_4_live", Idle, vec![perr(4)]),
        ("Idle", "prepare_5", Idle, vec![perr(5)]),
        ("Idle", "prepare_6", Idle, vec![perr(6)]),
        ("Idle", "commit_5", Idle, vec![perr(5)]),
        ("Idle", "commit_5_next_6_live", Idle, vec![perr(5)]),
        ("Idle", "commit_5_next_6_replay", Idle, vec![perr(5)]),
        ("Idle", "commit_5_next_5", Idle, vec![perr(5)]),
        ("Idle", "commit_6", Idle, vec![perr(6)]),
        ("Idle", "commit_5_next_7_sealed", Idle, vec![perr(5)]),
        ("Idle", "checkpoint_4", Idle, vec![Action::Checkpoint { tid: 4 }, Action::Report(Report::CheckpointDone { tid: 4 })]),
        ("Idle", "checkpoint_5", Idle, vec![perr(5)]),
        ("Idle", "checkpoint_complete_4", Idle, vec![Action::CheckpointComplete { tid: 4 }]),
        ("Idle", "restore_4", Idle, vec![Action::Restore { checkpoint_tid: 4 }, Action::Report(Report::Restored { checkpoint_tid: 4 })]),
        ("Idle", "stop", Stopped, vec![]),
        ("Idle", "welcome_again", Idle, vec![perr(0)]),
        ("Idle", "malformed", Idle, vec![perr(0)]),
        ("Idle", "step_5_live", Stopped, vec![ierr(5)]),
        ("Idle", "step_5_replayed", Stopped, vec![ierr(5)]),
        ("Idle", "step_6_live", Stopped, vec![ierr(6)]),
        ("Idle", "exhausted_5", Stopped, vec![ierr(5)]),
        ("Idle", "exhausted_5_marker", Stopped, vec![ierr(5)]),
        ("Idle", "exhausted_6", Stopped, vec![ierr(6)]),
        ("Idle", "action_failed", Stopped, vec![engine_err(5)]),
        ("Idle", "stream_closed", Idle, vec![]),
        ("Idle", "stream_opened", Stopped, vec![ierr(0)]),
        // ---- OpenLive5
        ("OpenLive5", "start_6_live", OpenLive { tid: 5 }, vec![perr(6)]),
        ("OpenLive5", "start_6_replay", OpenLive { tid: 5 }, vec![perr(6)]),
        ("OpenLive5", "start_4_live", OpenLive { tid: 5 }, vec![perr(4)]),
        ("OpenLive5", "prepare_5", Prepared { tid: 5 }, vec![Action::Prepare { tid: 5 }]),
        ("OpenLive5", "prepare_6", OpenLive { tid: 5 }, vec![perr(6)]),
        ("OpenLive5", "commit_5", OpenLive { tid: 5 }, vec![perr(5)]),
        ("OpenLive5", "commit_5_next_6_live", OpenLive { tid: 5 }, vec![perr(5)]),
        ("OpenLive5", "commit_5_next_6_replay", OpenLive { tid: 5 }, vec![perr(5)]),
        ("OpenLive5", "commit_5_next_5", OpenLive { tid: 5 }, vec![perr(5)]),
        ("OpenLive5", "commit_6", OpenLive { tid: 5 }, vec![perr(6)]),
        ("OpenLive5", "commit_5_next_7_sealed", OpenLive { tid: 5 }, vec![perr(5)]),
        ("OpenLive5", "checkpoint_4", OpenLive { tid: 5 }, vec![perr(4)]),
        ("OpenLive5", "checkpoint_5", OpenLive { tid: 5 }, vec![perr(5)]),
        ("OpenLive5", "checkpoint_complete_4", OpenLive { tid: 5 }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("OpenLive5", "restore_4", Idle, vec![abandon(5), Action::Restore { checkpoint_tid: 4 }, Action::Report(Report::Restored { checkpoint_tid: 4 })]),
        ("OpenLive5", "stop", Stopped, vec![abandon(5)]),
        ("OpenLive5", "welcome_again", OpenLive { tid: 5 }, vec![perr(0)]),
        ("OpenLive5", "malformed", OpenLive { tid: 5 }, vec![perr(0)]),
        ("OpenLive5", "step_5_live", OpenLive { tid: 5 }, vec![step_done_live()]),
        ("OpenLive5", "step_5_replayed", Stopped, vec![abandon(5), ierr(5)]),
        ("OpenLive5", "step_6_live", Stopped, vec![abandon(5), ierr(6)]),
        ("OpenLive5", "exhausted_5", Stopped, vec![abandon(5), ierr(5)]),
        ("OpenLive5", "exhausted_5_marker", Stopped, vec![abandon(5), ierr(5)]),
        ("OpenLive5", "exhausted_6", Stopped, vec![abandon(5), ierr(6)]),
        ("OpenLive5", "action_failed", Stopped, vec![abandon(5), engine_err(5)]),
        ("OpenLive5", "stream_closed", PausedLive { tid: 5 }, vec![]),
        ("OpenLive5", "stream_opened", Stopped, vec![abandon(5), ierr(0)]),
        // ---- OpenReplay5
        ("OpenReplay5", "start_6_live", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(6)]),
        ("OpenReplay5", "start_6_replay", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(6)]),
        ("OpenReplay5", "start_4_live", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(4)]),
        ("OpenReplay5", "prepare_5", OpenReplay { tid: 5, prepare_requested: true }, vec![]),
        ("OpenReplay5", "prepare_6", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(6)]),
        ("OpenReplay5", "commit_5", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(5)]),
        ("OpenReplay5", "commit_5_next_6_live", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(5)]),
        ("OpenReplay5", "commit_5_next_6_replay", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(5)]),
        ("OpenReplay5", "commit_5_next_5", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(5)]),
        ("OpenReplay5", "commit_6", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(6)]),
        ("OpenReplay5", "commit_5_next_7_sealed", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(5)]),
        ("OpenReplay5", "checkpoint_4", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(4)]),
        ("OpenReplay5", "checkpoint_5", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(5)]),
        ("OpenReplay5", "checkpoint_complete_4", OpenReplay { tid: 5, prepare_requested: false }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("OpenReplay5", "restore_4", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(4)]),
        ("OpenReplay5", "stop", Stopped, vec![abandon(5)]),
        ("OpenReplay5", "welcome_again", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(0)]),
        ("OpenReplay5", "malformed", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(0)]),
        ("OpenReplay5", "step_5_live", Stopped, vec![abandon(5), ierr(5)]),
        ("OpenReplay5", "step_5_replayed", OpenReplay { tid: 5, prepare_requested: false }, vec![step_done_replayed()]),
        ("OpenReplay5", "step_6_live", Stopped, vec![abandon(5), ierr(6)]),
        ("OpenReplay5", "exhausted_5", OpenLive { tid: 5 }, vec![]),
        ("OpenReplay5", "exhausted_5_marker", ReplayDrained { tid: 5 }, vec![]),
        ("OpenReplay5", "exhausted_6", Stopped, vec![abandon(5), ierr(6)]),
        ("OpenReplay5", "action_failed", Stopped, vec![abandon(5), engine_err(5)]),
        ("OpenReplay5", "stream_closed", Stopped, vec![abandon(5)]),
        ("OpenReplay5", "stream_opened", Stopped, vec![abandon(5), ierr(0)]),
        // ---- OpenReplay5Prep
        ("OpenReplay5Prep", "start_6_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Prep", "start_6_replay", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Prep", "start_4_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(4)]),
        ("OpenReplay5Prep", "prepare_5", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Prep", "prepare_6", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Prep", "commit_5", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Prep", "commit_5_next_6_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Prep", "commit_5_next_6_replay", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Prep", "commit_5_next_5", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Prep", "commit_6", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Prep", "commit_5_next_7_sealed", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Prep", "checkpoint_4", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(4)]),
        ("OpenReplay5Prep", "checkpoint_5", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Prep", "checkpoint_complete_4", OpenReplay { tid: 5, prepare_requested: true }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("OpenReplay5Prep", "restore_4", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(4)]),
        ("OpenReplay5Prep", "stop", Stopped, vec![abandon(5)]),
        ("OpenReplay5Prep", "welcome_again", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(0)]),
        ("OpenReplay5Prep", "malformed", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(0)]),
        ("OpenReplay5Prep", "step_5_live", Stopped, vec![abandon(5), ierr(5)]),
        ("OpenReplay5Prep", "step_5_replayed", OpenReplay { tid: 5, prepare_requested: true }, vec![step_done_replayed()]),
        ("OpenReplay5Prep", "step_6_live", Stopped, vec![abandon(5), ierr(6)]),
        ("OpenReplay5Prep", "exhausted_5", Prepared { tid: 5 }, vec![Action::Prepare { tid: 5 }]),
        ("OpenReplay5Prep", "exhausted_5_marker", Prepared { tid: 5 }, vec![Action::Prepare { tid: 5 }]),
        ("OpenReplay5Prep", "exhausted_6", Stopped, vec![abandon(5), ierr(6)]),
        ("OpenReplay5Prep", "action_failed", Stopped, vec![abandon(5), engine_err(5)]),
        ("OpenReplay5Prep", "stream_closed", Stopped, vec![abandon(5)]),
        ("OpenReplay5Prep", "stream_opened", Stopped, vec![abandon(5), ierr(0)]),
        // ---- ReplayDrained5
        ("ReplayDrained5", "start_6_live", ReplayDrained { tid: 5 }, vec![perr(6)]),
        ("ReplayDrained5", "start_6_replay", ReplayDrained { tid: 5 }, vec![perr(6)]),
        ("ReplayDrained5", "start_4_live", ReplayDrained { tid: 5 }, vec![perr(4)]),
        ("ReplayDrained5", "prepare_5", Prepared { tid: 5 }, vec![Action::Prepare { tid: 5 }]),
        ("ReplayDrained5", "prepare_6", ReplayDrained { tid: 5 }, vec![perr(6)]),
        ("ReplayDrained5", "commit_5", ReplayDrained { tid: 5 }, vec![perr(5)]),
        ("ReplayDrained5", "commit_5_next_6_live", ReplayDrained { tid: 5 }, vec![perr(5)]),
        ("ReplayDrained5", "commit_5_next_6_replay", ReplayDrained { tid: 5 }, vec![perr(5)]),
        ("ReplayDrained5", "commit_5_next_5", ReplayDrained { tid: 5 }, vec![perr(5)]),
        ("ReplayDrained5", "commit_6", ReplayDrained { tid: 5 }, vec![perr(6)]),
        ("ReplayDrained5", "commit_5_next_7_sealed", ReplayDrained { tid: 5 }, vec![perr(5)]),
        ("ReplayDrained5", "checkpoint_4", ReplayDrained { tid: 5 }, vec![perr(4)]),
        ("ReplayDrained5", "checkpoint_5", ReplayDrained { tid: 5 }, vec![perr(5)]),
        ("ReplayDrained5", "checkpoint_complete_4", ReplayDrained { tid: 5 }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("ReplayDrained5", "restore_4", ReplayDrained { tid: 5 }, vec![perr(4)]),
        ("ReplayDrained5", "stop", Stopped, vec![abandon(5)]),
        ("ReplayDrained5", "welcome_again", ReplayDrained { tid: 5 }, vec![perr(0)]),
        ("ReplayDrained5", "malformed", ReplayDrained { tid: 5 }, vec![perr(0)]),
        ("ReplayDrained5", "step_5_live", Stopped, vec![abandon(5), ierr(5)]),
        ("ReplayDrained5", "step_5_replayed", Stopped, vec![abandon(5), ierr(5)]),
        ("ReplayDrained5", "step_6_live", Stopped, vec![abandon(5), ierr(6)]),
        ("ReplayDrained5", "exhausted_5", Stopped, vec![abandon(5), ierr(5)]),
        ("ReplayDrained5", "exhausted_5_marker", Stopped, vec![abandon(5), ierr(5)]),
        ("ReplayDrained5", "exhausted_6", Stopped, vec![abandon(5), ierr(6)]),
        ("ReplayDrained5", "action_failed", Stopped, vec![abandon(5), engine_err(5)]),
        ("ReplayDrained5", "stream_closed", Stopped, vec![abandon(5)]),
        ("ReplayDrained5", "stream_opened", Stopped, vec![abandon(5), ierr(0)]),
        // ---- Prepared5
        ("Prepared5", "start_6_live", Prepared { tid: 5 }, vec![perr(6)]),
        ("Prepared5", "start_6_replay", Prepared { tid: 5 }, vec![perr(6)]),
        ("Prepared5", "start_4_live", Prepared { tid: 5 }, vec![perr(4)]),
        ("Prepared5", "prepare_5", Prepared { tid: 5 }, vec![perr(5)]),
        ("Prepared5", "prepare_6", Prepared { tid: 5 }, vec![perr(6)]),
        ("Prepared5", "commit_5", Idle, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 })]),
        ("Prepared5", "commit_5_next_6_live", OpenLive { tid: 6 }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 }), Action::OpenTxn { tid: 6, mode: Mode::Live }]),
        ("Prepared5", "commit_5_next_6_replay", OpenReplay { tid: 6, prepare_requested: false }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 }), Action::OpenTxn { tid: 6, mode: Mode::Replay }]),
        ("Prepared5", "commit_5_next_5", Prepared { tid: 5 }, vec![perr(5)]),
        ("Prepared5", "commit_6", Prepared { tid: 5 }, vec![perr(6)]),
        ("Prepared5", "commit_5_next_7_sealed", OpenReplay { tid: 7, prepare_requested: true }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 }), Action::OpenTxn { tid: 7, mode: Mode::Replay }]),
        ("Prepared5", "checkpoint_4", Prepared { tid: 5 }, vec![perr(4)]),
        ("Prepared5", "checkpoint_5", Prepared { tid: 5 }, vec![perr(5)]),
        ("Prepared5", "checkpoint_complete_4", Prepared { tid: 5 }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("Prepared5", "restore_4", Idle, vec![abandon(5), Action::Restore { checkpoint_tid: 4 }, Action::Report(Report::Restored { checkpoint_tid: 4 })]),
        ("Prepared5", "stop", Stopped, vec![abandon(5)]),
        ("Prepared5", "welcome_again", Prepared { tid: 5 }, vec![perr(0)]),
        ("Prepared5", "malformed", Prepared { tid: 5 }, vec![perr(0)]),
        ("Prepared5", "step_5_live", Stopped, vec![abandon(5), ierr(5)]),
        ("Prepared5", "step_5_replayed", Stopped, vec![abandon(5), ierr(5)]),
        ("Prepared5", "step_6_live", Stopped, vec![abandon(5), ierr(6)]),
        ("Prepared5", "exhausted_5", Stopped, vec![abandon(5), ierr(5)]),
        ("Prepared5", "exhausted_5_marker", Stopped, vec![abandon(5), ierr(5)]),
        ("Prepared5", "exhausted_6", Stopped, vec![abandon(5), ierr(6)]),
        ("Prepared5", "action_failed", Stopped, vec![abandon(5), engine_err(5)]),
        ("Prepared5", "stream_closed", PausedPrepared { tid: 5 }, vec![]),
        ("Prepared5", "stream_opened", Stopped, vec![abandon(5), ierr(0)]),
        // ---- PausedLive5
        ("PausedLive5", "start_6_live", PausedLive { tid: 5 }, vec![perr(6)]),
        ("PausedLive5", "start_6_replay", PausedLive { tid: 5 }, vec![perr(6)]),
        ("PausedLive5", "start_4_live", PausedLive { tid: 5 }, vec![perr(4)]),
        ("PausedLive5", "prepare_5", Prepared { tid: 5 }, vec![Action::Prepare { tid: 5 }]),
        ("PausedLive5", "prepare_6", PausedLive { tid: 5 }, vec![perr(6)]),
        ("PausedLive5", "commit_5", PausedLive { tid: 5 }, vec![perr(5)]),
        ("PausedLive5", "commit_5_next_6_live", PausedLive { tid: 5 }, vec![perr(5)]),
        ("PausedLive5", "commit_5_next_6_replay", PausedLive { tid: 5 }, vec![perr(5)]),
        ("PausedLive5", "commit_5_next_5", PausedLive { tid: 5 }, vec![perr(5)]),
        ("PausedLive5", "commit_6", PausedLive { tid: 5 }, vec![perr(6)]),
        ("PausedLive5", "commit_5_next_7_sealed", PausedLive { tid: 5 }, vec![perr(5)]),
        ("PausedLive5", "checkpoint_4", PausedLive { tid: 5 }, vec![perr(4)]),
        ("PausedLive5", "checkpoint_5", PausedLive { tid: 5 }, vec![perr(5)]),
        ("PausedLive5", "checkpoint_complete_4", PausedLive { tid: 5 }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("PausedLive5", "restore_4", Idle, vec![abandon(5), Action::Restore { checkpoint_tid: 4 }, Action::Report(Report::Restored { checkpoint_tid: 4 })]),
        ("PausedLive5", "stop", Stopped, vec![abandon(5)]),
        ("PausedLive5", "welcome_again", PausedLive { tid: 5 }, vec![perr(0)]),
        ("PausedLive5", "malformed", PausedLive { tid: 5 }, vec![perr(0)]),
        ("PausedLive5", "step_5_live", Stopped, vec![abandon(5), ierr(5)]),
        ("PausedLive5", "step_5_replayed", Stopped, vec![abandon(5), ierr(5)]),
        ("PausedLive5", "step_6_live", Stopped, vec![abandon(5), ierr(6)]),
        ("PausedLive5", "exhausted_5", Stopped, vec![abandon(5), ierr(5)]),
        ("PausedLive5", "exhausted_5_marker", Stopped, vec![abandon(5), ierr(5)]),
        ("PausedLive5", "exhausted_6", Stopped, vec![abandon(5), ierr(6)]),
        ("PausedLive5", "action_failed", Stopped, vec![abandon(5), engine_err(5)]),
        ("PausedLive5", "stream_closed", PausedLive { tid: 5 }, vec![]),
        ("PausedLive5", "stream_opened", Stopped, vec![abandon(5), ierr(0)]),
        // ---- PausedPrepared5
        ("PausedPrepared5", "start_6_live", PausedPrepared { tid: 5 }, vec![perr(6)]),
        ("PausedPrepared5", "start_6_replay", PausedPrepared { tid: 5 }, vec![perr(6)]),
        ("PausedPrepared5", "start_4_live", PausedPrepared { tid: 5 }, vec![perr(4)]),
        ("PausedPrepared5", "prepare_5", Prepared { tid: 5 }, vec![Action::RepeatPrepared { tid: 5 }]),
        ("PausedPrepared5", "prepare_6", PausedPrepared { tid: 5 }, vec![perr(6)]),
        ("PausedPrepared5", "commit_5", Idle, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 })]),
        ("PausedPrepared5", "commit_5_next_6_live", OpenLive { tid: 6 }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 }), Action::OpenTxn { tid: 6, mode: Mode::Live }]),
        ("PausedPrepared5", "commit_5_next_6_replay", OpenReplay { tid: 6, prepare_requested: false }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 }), Action::OpenTxn { tid: 6, mode: Mode::Replay }]),
        ("PausedPrepared5", "commit_5_next_5", PausedPrepared { tid: 5 }, vec![perr(5)]),
        ("PausedPrepared5", "commit_6", PausedPrepared { tid: 5 }, vec![perr(6)]),
        ("PausedPrepared5", "commit_5_next_7_sealed", OpenReplay { tid: 7, prepare_requested: true }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 }), Action::OpenTxn { tid: 7, mode: Mode::Replay }]),
        ("PausedPrepared5", "checkpoint_4", PausedPrepared { tid: 5 }, vec![perr(4)]),
        ("PausedPrepared5", "checkpoint_5", PausedPrepared { tid: 5 }, vec![perr(5)]),
        ("PausedPrepared5", "checkpoint_complete_4", PausedPrepared { tid: 5 }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("PausedPrepared5", "restore_4", Idle, vec![abandon(5), Action::Restore { checkpoint_tid: 4 }, Action::Report(Report::Restored { checkpoint_tid: 4 })]),
        ("PausedPrepared5", "stop", Stopped, vec![abandon(5)]),
        ("PausedPrepared5", "welcome_again", PausedPrepared { tid: 5 }, vec![perr(0)]),
        ("PausedPrepared5", "malformed", PausedPrepared { tid: 5 }, vec![perr(0)]),
        ("PausedPrepared5", "step_5_live", Stopped, vec![abandon(5), ierr(5)]),
        ("PausedPrepared5", "step_5_replayed", Stopped, vec![abandon(5), ierr(5)]),
        ("PausedPrepared5", "step_6_live", Stopped, vec![abandon(5), ierr(6)]),
        ("PausedPrepared5", "exhausted_5", Stopped, vec![abandon(5), ierr(5)]),
        ("PausedPrepared5", "exhausted_5_marker", Stopped, vec![abandon(5), ierr(5)]),
        ("PausedPrepared5", "exhausted_6", Stopped, vec![abandon(5), ierr(6)]),
        ("PausedPrepared5", "action_failed", Stopped, vec![abandon(5), engine_err(5)]),
        ("PausedPrepared5", "stream_closed", PausedPrepared { tid: 5 }, vec![]),
        ("PausedPrepared5", "stream_opened", Stopped, vec![abandon(5), ierr(0)]),
        // ---- Starts of sealed replays and steps of tid 6, in the states above
        ("Stopped", "start_6_sealed", Stopped, vec![perr(6)]),
        ("Stopped", "start_7_sealed", Stopped, vec![perr(7)]),
        ("Stopped", "step_6_replayed", Stopped, vec![ierr(6)]),
        ("Idle", "start_6_sealed", OpenReplay { tid: 6, prepare_requested: true }, vec![Action::OpenTxn { tid: 6, mode: Mode::Replay }]),
        ("Idle", "start_7_sealed", OpenReplay { tid: 7, prepare_requested: true }, vec![Action::OpenTxn { tid: 7, mode: Mode::Replay }]),
        ("Idle", "step_6_replayed", Stopped, vec![ierr(6)]),
        ("OpenLive5", "start_6_sealed", OpenLive { tid: 5 }, vec![perr(6)]),
        ("OpenLive5", "start_7_sealed", OpenLive { tid: 5 }, vec![perr(7)]),
        ("OpenLive5", "step_6_replayed", Stopped, vec![abandon(5), ierr(6)]),
        ("OpenReplay5", "start_6_sealed", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(6)]),
        ("OpenReplay5", "start_7_sealed", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(7)]),
        ("OpenReplay5", "step_6_replayed", Stopped, vec![abandon(5), ierr(6)]),
        ("OpenReplay5Prep", "start_6_sealed", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Prep", "start_7_sealed", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(7)]),
        ("OpenReplay5Prep", "step_6_replayed", Stopped, vec![abandon(5), ierr(6)]),
        ("ReplayDrained5", "start_6_sealed", ReplayDrained { tid: 5 }, vec![perr(6)]),
        ("ReplayDrained5", "start_7_sealed", ReplayDrained { tid: 5 }, vec![perr(7)]),
        ("ReplayDrained5", "step_6_replayed", Stopped, vec![abandon(5), ierr(6)]),
        ("Prepared5", "start_6_sealed", Prepared { tid: 5 }, vec![perr(6)]),
        ("Prepared5", "start_7_sealed", Prepared { tid: 5 }, vec![perr(7)]),
        ("Prepared5", "step_6_replayed", Stopped, vec![abandon(5), ierr(6)]),
        ("PausedLive5", "start_6_sealed", PausedLive { tid: 5 }, vec![perr(6)]),
        ("PausedLive5", "start_7_sealed", PausedLive { tid: 5 }, vec![perr(7)]),
        ("PausedLive5", "step_6_replayed", Stopped, vec![abandon(5), ierr(6)]),
        ("PausedPrepared5", "start_6_sealed", PausedPrepared { tid: 5 }, vec![perr(6)]),
        ("PausedPrepared5", "start_7_sealed", PausedPrepared { tid: 5 }, vec![perr(7)]),
        ("PausedPrepared5", "step_6_replayed", Stopped, vec![abandon(5), ierr(6)]),
        // ---- OpenReplay5Sealed (replay window)
        ("OpenReplay5Sealed", "start_6_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Sealed", "start_6_replay", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Sealed", "start_4_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(4)]),
        ("OpenReplay5Sealed", "start_6_sealed", OpenReplay { tid: 5, prepare_requested: true }, vec![]),
        ("OpenReplay5Sealed", "start_7_sealed", OpenReplay { tid: 5, prepare_requested: true }, vec![]),
        ("OpenReplay5Sealed", "prepare_5", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Sealed", "prepare_6", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Sealed", "commit_5", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Sealed", "commit_5_next_6_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Sealed", "commit_5_next_6_replay", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Sealed", "commit_5_next_5", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Sealed", "commit_6", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Sealed", "commit_5_next_7_sealed", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Sealed", "checkpoint_4", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(4)]),
        ("OpenReplay5Sealed", "checkpoint_5", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Sealed", "checkpoint_complete_4", OpenReplay { tid: 5, prepare_requested: true }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("OpenReplay5Sealed", "restore_4", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(4)]),
        ("OpenReplay5Sealed", "stop", Stopped, vec![abandon(5)]),
        ("OpenReplay5Sealed", "welcome_again", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(0)]),
        ("OpenReplay5Sealed", "malformed", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(0)]),
        ("OpenReplay5Sealed", "step_5_live", Stopped, vec![abandon(5), ierr(5)]),
        ("OpenReplay5Sealed", "step_5_replayed", OpenReplay { tid: 5, prepare_requested: true }, vec![step_done_replayed()]),
        ("OpenReplay5Sealed", "step_6_live", Stopped, vec![abandon(5), ierr(6)]),
        ("OpenReplay5Sealed", "step_6_replayed", Stopped, vec![abandon(5), ierr(6)]),
        ("OpenReplay5Sealed", "exhausted_5", Prepared { tid: 5 }, vec![Action::Prepare { tid: 5 }]),
        ("OpenReplay5Sealed", "exhausted_5_marker", Prepared { tid: 5 }, vec![Action::Prepare { tid: 5 }]),
        ("OpenReplay5Sealed", "exhausted_6", Stopped, vec![abandon(5), ierr(6)]),
        ("OpenReplay5Sealed", "action_failed", Stopped, vec![abandon(5), engine_err(5)]),
        ("OpenReplay5Sealed", "stream_closed", Stopped, vec![abandon(5)]),
        ("OpenReplay5Sealed", "stream_opened", Stopped, vec![abandon(5), ierr(0)]),
        // ---- OpenReplay5Ahead6 (replay window)
        ("OpenReplay5Ahead6", "start_6_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Ahead6", "start_6_replay", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Ahead6", "start_4_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(4)]),
        ("OpenReplay5Ahead6", "start_6_sealed", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Ahead6", "start_7_sealed", OpenReplay { tid: 5, prepare_requested: true }, vec![]),
        ("OpenReplay5Ahead6", "prepare_5", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Ahead6", "prepare_6", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Ahead6", "commit_5", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Ahead6", "commit_5_next_6_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Ahead6", "commit_5_next_6_replay", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Ahead6", "commit_5_next_5", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Ahead6", "commit_6", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Ahead6", "commit_5_next_7_sealed", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Ahead6", "checkpoint_4", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(4)]),
        ("OpenReplay5Ahead6", "checkpoint_5", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Ahead6", "checkpoint_complete_4", OpenReplay { tid: 5, prepare_requested: true }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("OpenReplay5Ahead6", "restore_4", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(4)]),
        ("OpenReplay5Ahead6", "stop", Stopped, vec![abandon(5)]),
        ("OpenReplay5Ahead6", "welcome_again", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(0)]),
        ("OpenReplay5Ahead6", "malformed", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(0)]),
        ("OpenReplay5Ahead6", "step_5_live", Stopped, vec![abandon(5), ierr(5)]),
        ("OpenReplay5Ahead6", "step_5_replayed", OpenReplay { tid: 5, prepare_requested: true }, vec![step_done_replayed()]),
        ("OpenReplay5Ahead6", "step_6_live", Stopped, vec![abandon(5), ierr(6)]),
        ("OpenReplay5Ahead6", "step_6_replayed", Stopped, vec![abandon(5), ierr(6)]),
        ("OpenReplay5Ahead6", "exhausted_5", OpenReplay { tid: 6, prepare_requested: true }, vec![Action::Prepare { tid: 5 }, Action::OpenTxn { tid: 6, mode: Mode::Replay }]),
        ("OpenReplay5Ahead6", "exhausted_5_marker", OpenReplay { tid: 6, prepare_requested: true }, vec![Action::Prepare { tid: 5 }, Action::OpenTxn { tid: 6, mode: Mode::Replay }]),
        ("OpenReplay5Ahead6", "exhausted_6", Stopped, vec![abandon(5), ierr(6)]),
        ("OpenReplay5Ahead6", "action_failed", Stopped, vec![abandon(5), engine_err(5)]),
        ("OpenReplay5Ahead6", "stream_closed", Stopped, vec![abandon(5)]),
        ("OpenReplay5Ahead6", "stream_opened", Stopped, vec![abandon(5), ierr(0)]),
        // ---- Prepared5Sealed (replay window)
        ("Prepared5Sealed", "start_6_live", Prepared { tid: 5 }, vec![perr(6)]),
        ("Prepared5Sealed", "start_6_replay", Prepared { tid: 5 }, vec![perr(6)]),
        ("Prepared5Sealed", "start_4_live", Prepared { tid: 5 }, vec![perr(4)]),
        ("Prepared5Sealed", "start_6_sealed", OpenReplay { tid: 6, prepare_requested: true }, vec![Action::OpenTxn { tid: 6, mode: Mode::Replay }]),
        ("Prepared5Sealed", "start_7_sealed", OpenReplay { tid: 7, prepare_requested: true }, vec![Action::OpenTxn { tid: 7, mode: Mode::Replay }]),
        ("Prepared5Sealed", "prepare_5", Prepared { tid: 5 }, vec![perr(5)]),
        ("Prepared5Sealed", "prepare_6", Prepared { tid: 5 }, vec![perr(6)]),
        ("Prepared5Sealed", "commit_5", Idle, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 })]),
        ("Prepared5Sealed", "commit_5_next_6_live", OpenLive { tid: 6 }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 }), Action::OpenTxn { tid: 6, mode: Mode::Live }]),
        ("Prepared5Sealed", "commit_5_next_6_replay", OpenReplay { tid: 6, prepare_requested: false }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 }), Action::OpenTxn { tid: 6, mode: Mode::Replay }]),
        ("Prepared5Sealed", "commit_5_next_5", Prepared { tid: 5 }, vec![perr(5)]),
        ("Prepared5Sealed", "commit_6", Prepared { tid: 5 }, vec![perr(6)]),
        ("Prepared5Sealed", "commit_5_next_7_sealed", OpenReplay { tid: 7, prepare_requested: true }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 }), Action::OpenTxn { tid: 7, mode: Mode::Replay }]),
        ("Prepared5Sealed", "checkpoint_4", Prepared { tid: 5 }, vec![perr(4)]),
        ("Prepared5Sealed", "checkpoint_5", Prepared { tid: 5 }, vec![perr(5)]),
        ("Prepared5Sealed", "checkpoint_complete_4", Prepared { tid: 5 }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("Prepared5Sealed", "restore_4", Idle, vec![abandon(5), Action::Restore { checkpoint_tid: 4 }, Action::Report(Report::Restored { checkpoint_tid: 4 })]),
        ("Prepared5Sealed", "stop", Stopped, vec![abandon(5)]),
        ("Prepared5Sealed", "welcome_again", Prepared { tid: 5 }, vec![perr(0)]),
        ("Prepared5Sealed", "malformed", Prepared { tid: 5 }, vec![perr(0)]),
        ("Prepared5Sealed", "step_5_live", Stopped, vec![abandon(5), ierr(5)]),
        ("Prepared5Sealed", "step_5_replayed", Stopped, vec![abandon(5), ierr(5)]),
        ("Prepared5Sealed", "step_6_live", Stopped, vec![abandon(5), ierr(6)]),
        ("Prepared5Sealed", "step_6_replayed", Stopped, vec![abandon(5), ierr(6)]),
        ("Prepared5Sealed", "exhausted_5", Stopped, vec![abandon(5), ierr(5)]),
        ("Prepared5Sealed", "exhausted_5_marker", Stopped, vec![abandon(5), ierr(5)]),
        ("Prepared5Sealed", "exhausted_6", Stopped, vec![abandon(5), ierr(6)]),
        ("Prepared5Sealed", "action_failed", Stopped, vec![abandon(5), engine_err(5)]),
        ("Prepared5Sealed", "stream_closed", PausedPrepared { tid: 5 }, vec![]),
        ("Prepared5Sealed", "stream_opened", Stopped, vec![abandon(5), ierr(0)]),
        // ---- OpenReplay6Awaiting5 (replay window)
        ("OpenReplay6Awaiting5", "start_6_live", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay6Awaiting5", "start_6_replay", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay6Awaiting5", "start_4_live", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(4)]),
        ("OpenReplay6Awaiting5", "start_6_sealed", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay6Awaiting5", "start_7_sealed", OpenReplay { tid: 6, prepare_requested: true }, vec![]),
        ("OpenReplay6Awaiting5", "prepare_5", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay6Awaiting5", "prepare_6", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay6Awaiting5", "commit_5", OpenReplay { tid: 6, prepare_requested: true }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 })]),
        ("OpenReplay6Awaiting5", "commit_5_next_6_live", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay6Awaiting5", "commit_5_next_6_replay", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay6Awaiting5", "commit_5_next_5", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay6Awaiting5", "commit_6", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay6Awaiting5", "commit_5_next_7_sealed", OpenReplay { tid: 6, prepare_requested: true }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 })]),
        ("OpenReplay6Awaiting5", "checkpoint_4", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(4)]),
        ("OpenReplay6Awaiting5", "checkpoint_5", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay6Awaiting5", "checkpoint_complete_4", OpenReplay { tid: 6, prepare_requested: true }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("OpenReplay6Awaiting5", "restore_4", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(4)]),
        ("OpenReplay6Awaiting5", "stop", Stopped, vec![abandon(6)]),
        ("OpenReplay6Awaiting5", "welcome_again", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(0)]),
        ("OpenReplay6Awaiting5", "malformed", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(0)]),
        ("OpenReplay6Awaiting5", "step_5_live", Stopped, vec![abandon(6), ierr(5)]),
        ("OpenReplay6Awaiting5", "step_5_replayed", Stopped, vec![abandon(6), ierr(5)]),
        ("OpenReplay6Awaiting5", "step_6_live", Stopped, vec![abandon(6), ierr(6)]),
        ("OpenReplay6Awaiting5", "step_6_replayed", OpenReplay { tid: 6, prepare_requested: true }, vec![step_done_replayed_6()]),
        ("OpenReplay6Awaiting5", "exhausted_5", Stopped, vec![abandon(6), ierr(5)]),
        ("OpenReplay6Awaiting5", "exhausted_5_marker", Stopped, vec![abandon(6), ierr(5)]),
        ("OpenReplay6Awaiting5", "exhausted_6", Prepared { tid: 6 }, vec![Action::Prepare { tid: 6 }]),
        ("OpenReplay6Awaiting5", "action_failed", Stopped, vec![abandon(6), engine_err(5)]),
        ("OpenReplay6Awaiting5", "stream_closed", Stopped, vec![abandon(6)]),
        ("OpenReplay6Awaiting5", "stream_opened", Stopped, vec![abandon(6), ierr(0)]),
        // ---- Prepared6Awaiting5 (replay window)
        ("Prepared6Awaiting5", "start_6_live", Prepared { tid: 6 }, vec![perr(6)]),
        ("Prepared6Awaiting5", "start_6_replay", Prepared { tid: 6 }, vec![perr(6)]),
        ("Prepared6Awaiting5", "start_4_live", Prepared { tid: 6 }, vec![perr(4)]),
        ("Prepared6Awaiting5", "start_6_sealed", Prepared { tid: 6 }, vec![perr(6)]),
        ("Prepared6Awaiting5", "start_7_sealed", OpenReplay { tid: 7, prepare_requested: true }, vec![Action::OpenTxn { tid: 7, mode: Mode::Replay }]),
        ("Prepared6Awaiting5", "prepare_5", Prepared { tid: 6 }, vec![perr(5)]),
        ("Prepared6Awaiting5", "prepare_6", Prepared { tid: 6 }, vec![perr(6)]),
        ("Prepared6Awaiting5", "commit_5", Prepared { tid: 6 }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 })]),
        ("Prepared6Awaiting5", "commit_5_next_6_live", Prepared { tid: 6 }, vec![perr(5)]),
        ("Prepared6Awaiting5", "commit_5_next_6_replay", Prepared { tid: 6 }, vec![perr(5)]),
        ("Prepared6Awaiting5", "commit_5_next_5", Prepared { tid: 6 }, vec![perr(5)]),
        ("Prepared6Awaiting5", "commit_6", Prepared { tid: 6 }, vec![perr(6)]),
        ("Prepared6Awaiting5", "commit_5_next_7_sealed", OpenReplay { tid: 7, prepare_requested: true }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 }), Action::OpenTxn { tid: 7, mode: Mode::Replay }]),
        ("Prepared6Awaiting5", "checkpoint_4", Prepared { tid: 6 }, vec![perr(4)]),
        ("Prepared6Awaiting5", "checkpoint_5", Prepared { tid: 6 }, vec![perr(5)]),
        ("Prepared6Awaiting5", "checkpoint_complete_4", Prepared { tid: 6 }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("Prepared6Awaiting5", "restore_4", Idle, vec![abandon(6), Action::Restore { checkpoint_tid: 4 }, Action::Report(Report::Restored { checkpoint_tid: 4 })]),
        ("Prepared6Awaiting5", "stop", Stopped, vec![abandon(6)]),
        ("Prepared6Awaiting5", "welcome_again", Prepared { tid: 6 }, vec![perr(0)]),
        ("Prepared6Awaiting5", "malformed", Prepared { tid: 6 }, vec![perr(0)]),
        ("Prepared6Awaiting5", "step_5_live", Stopped, vec![abandon(6), ierr(5)]),
        ("Prepared6Awaiting5", "step_5_replayed", Stopped, vec![abandon(6), ierr(5)]),
        ("Prepared6Awaiting5", "step_6_live", Stopped, vec![abandon(6), ierr(6)]),
        ("Prepared6Awaiting5", "step_6_replayed", Stopped, vec![abandon(6), ierr(6)]),
        ("Prepared6Awaiting5", "exhausted_5", Stopped, vec![abandon(6), ierr(5)]),
        ("Prepared6Awaiting5", "exhausted_5_marker", Stopped, vec![abandon(6), ierr(5)]),
        ("Prepared6Awaiting5", "exhausted_6", Stopped, vec![abandon(6), ierr(6)]),
        ("Prepared6Awaiting5", "action_failed", Stopped, vec![abandon(6), engine_err(5)]),
        ("Prepared6Awaiting5", "stream_closed", Stopped, vec![abandon(6)]),
        ("Prepared6Awaiting5", "stream_opened", Stopped, vec![abandon(6), ierr(0)]),
        // ---- pipelined Prepare{T, next} in every other state (commit pipeline)
        ("Stopped", "prepare_5_next_6_live", Stopped, vec![perr(5)]),
        ("Stopped", "prepare_5_next_6_replay", Stopped, vec![perr(5)]),
        ("Stopped", "prepare_6_next_7_live", Stopped, vec![perr(6)]),
        ("Idle", "prepare_5_next_6_live", Idle, vec![perr(5)]),
        ("Idle", "prepare_5_next_6_replay", Idle, vec![perr(5)]),
        ("Idle", "prepare_6_next_7_live", Idle, vec![perr(6)]),
        ("OpenLive5", "prepare_5_next_6_live", OpenLive { tid: 6 }, vec![Action::Prepare { tid: 5 }, Action::OpenTxn { tid: 6, mode: Mode::Live }]),
        ("OpenLive5", "prepare_5_next_6_replay", OpenLive { tid: 5 }, vec![perr(5)]),
        ("OpenLive5", "prepare_6_next_7_live", OpenLive { tid: 5 }, vec![perr(6)]),
        ("OpenReplay5", "prepare_5_next_6_live", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(5)]),
        ("OpenReplay5", "prepare_5_next_6_replay", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(5)]),
        ("OpenReplay5", "prepare_6_next_7_live", OpenReplay { tid: 5, prepare_requested: false }, vec![perr(6)]),
        ("OpenReplay5Prep", "prepare_5_next_6_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Prep", "prepare_5_next_6_replay", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Prep", "prepare_6_next_7_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("ReplayDrained5", "prepare_5_next_6_live", ReplayDrained { tid: 5 }, vec![perr(5)]),
        ("ReplayDrained5", "prepare_5_next_6_replay", ReplayDrained { tid: 5 }, vec![perr(5)]),
        ("ReplayDrained5", "prepare_6_next_7_live", ReplayDrained { tid: 5 }, vec![perr(6)]),
        ("Prepared5", "prepare_5_next_6_live", Prepared { tid: 5 }, vec![perr(5)]),
        ("Prepared5", "prepare_5_next_6_replay", Prepared { tid: 5 }, vec![perr(5)]),
        ("Prepared5", "prepare_6_next_7_live", Prepared { tid: 5 }, vec![perr(6)]),
        ("PausedLive5", "prepare_5_next_6_live", OpenLive { tid: 6 }, vec![Action::Prepare { tid: 5 }, Action::OpenTxn { tid: 6, mode: Mode::Live }]),
        ("PausedLive5", "prepare_5_next_6_replay", PausedLive { tid: 5 }, vec![perr(5)]),
        ("PausedLive5", "prepare_6_next_7_live", PausedLive { tid: 5 }, vec![perr(6)]),
        ("PausedPrepared5", "prepare_5_next_6_live", PausedPrepared { tid: 5 }, vec![perr(5)]),
        ("PausedPrepared5", "prepare_5_next_6_replay", PausedPrepared { tid: 5 }, vec![perr(5)]),
        ("PausedPrepared5", "prepare_6_next_7_live", PausedPrepared { tid: 5 }, vec![perr(6)]),
        ("OpenReplay5Sealed", "prepare_5_next_6_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Sealed", "prepare_5_next_6_replay", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Sealed", "prepare_6_next_7_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("OpenReplay5Ahead6", "prepare_5_next_6_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Ahead6", "prepare_5_next_6_replay", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay5Ahead6", "prepare_6_next_7_live", OpenReplay { tid: 5, prepare_requested: true }, vec![perr(6)]),
        ("Prepared5Sealed", "prepare_5_next_6_live", Prepared { tid: 5 }, vec![perr(5)]),
        ("Prepared5Sealed", "prepare_5_next_6_replay", Prepared { tid: 5 }, vec![perr(5)]),
        ("Prepared5Sealed", "prepare_6_next_7_live", Prepared { tid: 5 }, vec![perr(6)]),
        ("OpenReplay6Awaiting5", "prepare_5_next_6_live", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay6Awaiting5", "prepare_5_next_6_replay", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(5)]),
        ("OpenReplay6Awaiting5", "prepare_6_next_7_live", OpenReplay { tid: 6, prepare_requested: true }, vec![perr(6)]),
        ("Prepared6Awaiting5", "prepare_5_next_6_live", Prepared { tid: 6 }, vec![perr(5)]),
        ("Prepared6Awaiting5", "prepare_5_next_6_replay", Prepared { tid: 6 }, vec![perr(5)]),
        ("Prepared6Awaiting5", "prepare_6_next_7_live", Prepared { tid: 6 }, vec![perr(6)]),
        // ---- OpenLive6Awaiting5 (commit pipeline: Prepare{5, next 6} taken)
        ("OpenLive6Awaiting5", "start_6_live", OpenLive { tid: 6 }, vec![perr(6)]),
        ("OpenLive6Awaiting5", "start_6_replay", OpenLive { tid: 6 }, vec![perr(6)]),
        ("OpenLive6Awaiting5", "start_4_live", OpenLive { tid: 6 }, vec![perr(4)]),
        ("OpenLive6Awaiting5", "start_6_sealed", OpenLive { tid: 6 }, vec![perr(6)]),
        ("OpenLive6Awaiting5", "start_7_sealed", OpenLive { tid: 6 }, vec![perr(7)]),
        ("OpenLive6Awaiting5", "prepare_5", OpenLive { tid: 6 }, vec![perr(5)]),
        ("OpenLive6Awaiting5", "prepare_6", Prepared { tid: 6 }, vec![Action::Prepare { tid: 6 }]),
        ("OpenLive6Awaiting5", "prepare_5_next_6_live", OpenLive { tid: 6 }, vec![perr(5)]),
        ("OpenLive6Awaiting5", "prepare_5_next_6_replay", OpenLive { tid: 6 }, vec![perr(5)]),
        ("OpenLive6Awaiting5", "prepare_6_next_7_live", OpenLive { tid: 7 }, vec![Action::Prepare { tid: 6 }, Action::OpenTxn { tid: 7, mode: Mode::Live }]),
        ("OpenLive6Awaiting5", "commit_5", OpenLive { tid: 6 }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 })]),
        ("OpenLive6Awaiting5", "commit_5_next_6_live", OpenLive { tid: 6 }, vec![perr(5)]),
        ("OpenLive6Awaiting5", "commit_5_next_6_replay", OpenLive { tid: 6 }, vec![perr(5)]),
        ("OpenLive6Awaiting5", "commit_5_next_5", OpenLive { tid: 6 }, vec![perr(5)]),
        ("OpenLive6Awaiting5", "commit_6", OpenLive { tid: 6 }, vec![perr(6)]),
        ("OpenLive6Awaiting5", "commit_5_next_7_sealed", OpenLive { tid: 6 }, vec![perr(5)]),
        ("OpenLive6Awaiting5", "checkpoint_4", OpenLive { tid: 6 }, vec![perr(4)]),
        ("OpenLive6Awaiting5", "checkpoint_5", OpenLive { tid: 6 }, vec![perr(5)]),
        ("OpenLive6Awaiting5", "checkpoint_complete_4", OpenLive { tid: 6 }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("OpenLive6Awaiting5", "restore_4", Idle, vec![abandon(6), Action::Restore { checkpoint_tid: 4 }, Action::Report(Report::Restored { checkpoint_tid: 4 })]),
        ("OpenLive6Awaiting5", "stop", Stopped, vec![abandon(6)]),
        ("OpenLive6Awaiting5", "welcome_again", OpenLive { tid: 6 }, vec![perr(0)]),
        ("OpenLive6Awaiting5", "malformed", OpenLive { tid: 6 }, vec![perr(0)]),
        ("OpenLive6Awaiting5", "step_5_live", Stopped, vec![abandon(6), ierr(5)]),
        ("OpenLive6Awaiting5", "step_5_replayed", Stopped, vec![abandon(6), ierr(5)]),
        ("OpenLive6Awaiting5", "step_6_live", OpenLive { tid: 6 }, vec![Action::Report(Report::StepDone { tid: 6, step: 9, checksums: cs(), journaled: None, mode: Mode::Live })]),
        ("OpenLive6Awaiting5", "step_6_replayed", Stopped, vec![abandon(6), ierr(6)]),
        ("OpenLive6Awaiting5", "exhausted_5", Stopped, vec![abandon(6), ierr(5)]),
        ("OpenLive6Awaiting5", "exhausted_5_marker", Stopped, vec![abandon(6), ierr(5)]),
        ("OpenLive6Awaiting5", "exhausted_6", Stopped, vec![abandon(6), ierr(6)]),
        ("OpenLive6Awaiting5", "action_failed", Stopped, vec![abandon(6), engine_err(5)]),
        ("OpenLive6Awaiting5", "stream_closed", PausedLive { tid: 6 }, vec![]),
        ("OpenLive6Awaiting5", "stream_opened", Stopped, vec![abandon(6), ierr(0)]),
        // ---- PausedLive6Awaiting5, PausedPrepared6Awaiting5 (a kept pipeline on a new stream)
        ("PausedLive6Awaiting5", "start_6_live", PausedLive { tid: 6 }, vec![perr(6)]),
        ("PausedLive6Awaiting5", "start_6_replay", PausedLive { tid: 6 }, vec![perr(6)]),
        ("PausedLive6Awaiting5", "start_4_live", PausedLive { tid: 6 }, vec![perr(4)]),
        ("PausedLive6Awaiting5", "start_6_sealed", PausedLive { tid: 6 }, vec![perr(6)]),
        ("PausedLive6Awaiting5", "start_7_sealed", PausedLive { tid: 6 }, vec![perr(7)]),
        ("PausedLive6Awaiting5", "prepare_5", PausedLive { tid: 6 }, vec![perr(5)]),
        ("PausedLive6Awaiting5", "prepare_6", Prepared { tid: 6 }, vec![Action::Prepare { tid: 6 }]),
        ("PausedLive6Awaiting5", "prepare_5_next_6_live", PausedLive { tid: 6 }, vec![perr(5)]),
        ("PausedLive6Awaiting5", "prepare_5_next_6_replay", PausedLive { tid: 6 }, vec![perr(5)]),
        ("PausedLive6Awaiting5", "prepare_6_next_7_live", OpenLive { tid: 7 }, vec![Action::Prepare { tid: 6 }, Action::OpenTxn { tid: 7, mode: Mode::Live }]),
        ("PausedLive6Awaiting5", "commit_5", PausedLive { tid: 6 }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 })]),
        ("PausedLive6Awaiting5", "commit_5_next_6_live", PausedLive { tid: 6 }, vec![perr(5)]),
        ("PausedLive6Awaiting5", "commit_5_next_6_replay", PausedLive { tid: 6 }, vec![perr(5)]),
        ("PausedLive6Awaiting5", "commit_5_next_5", PausedLive { tid: 6 }, vec![perr(5)]),
        ("PausedLive6Awaiting5", "commit_6", PausedLive { tid: 6 }, vec![perr(6)]),
        ("PausedLive6Awaiting5", "commit_5_next_7_sealed", PausedLive { tid: 6 }, vec![perr(5)]),
        ("PausedLive6Awaiting5", "checkpoint_4", PausedLive { tid: 6 }, vec![perr(4)]),
        ("PausedLive6Awaiting5", "checkpoint_5", PausedLive { tid: 6 }, vec![perr(5)]),
        ("PausedLive6Awaiting5", "checkpoint_complete_4", PausedLive { tid: 6 }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("PausedLive6Awaiting5", "restore_4", Idle, vec![abandon(6), Action::Restore { checkpoint_tid: 4 }, Action::Report(Report::Restored { checkpoint_tid: 4 })]),
        ("PausedLive6Awaiting5", "stop", Stopped, vec![abandon(6)]),
        ("PausedLive6Awaiting5", "welcome_again", PausedLive { tid: 6 }, vec![perr(0)]),
        ("PausedLive6Awaiting5", "malformed", PausedLive { tid: 6 }, vec![perr(0)]),
        ("PausedLive6Awaiting5", "step_5_live", Stopped, vec![abandon(6), ierr(5)]),
        ("PausedLive6Awaiting5", "step_5_replayed", Stopped, vec![abandon(6), ierr(5)]),
        ("PausedLive6Awaiting5", "step_6_live", Stopped, vec![abandon(6), ierr(6)]),
        ("PausedLive6Awaiting5", "step_6_replayed", Stopped, vec![abandon(6), ierr(6)]),
        ("PausedLive6Awaiting5", "exhausted_5", Stopped, vec![abandon(6), ierr(5)]),
        ("PausedLive6Awaiting5", "exhausted_5_marker", Stopped, vec![abandon(6), ierr(5)]),
        ("PausedLive6Awaiting5", "exhausted_6", Stopped, vec![abandon(6), ierr(6)]),
        ("PausedLive6Awaiting5", "action_failed", Stopped, vec![abandon(6), engine_err(5)]),
        ("PausedLive6Awaiting5", "stream_closed", PausedLive { tid: 6 }, vec![]),
        ("PausedLive6Awaiting5", "stream_opened", Stopped, vec![abandon(6), ierr(0)]),
        ("PausedPrepared6Awaiting5", "start_6_live", PausedPrepared { tid: 6 }, vec![perr(6)]),
        ("PausedPrepared6Awaiting5", "start_6_replay", PausedPrepared { tid: 6 }, vec![perr(6)]),
        ("PausedPrepared6Awaiting5", "start_4_live", PausedPrepared { tid: 6 }, vec![perr(4)]),
        ("PausedPrepared6Awaiting5", "start_6_sealed", PausedPrepared { tid: 6 }, vec![perr(6)]),
        ("PausedPrepared6Awaiting5", "start_7_sealed", PausedPrepared { tid: 6 }, vec![perr(7)]),
        ("PausedPrepared6Awaiting5", "prepare_5", PausedPrepared { tid: 6 }, vec![perr(5)]),
        ("PausedPrepared6Awaiting5", "prepare_6", Prepared { tid: 6 }, vec![Action::RepeatPrepared { tid: 6 }]),
        ("PausedPrepared6Awaiting5", "prepare_5_next_6_live", PausedPrepared { tid: 6 }, vec![perr(5)]),
        ("PausedPrepared6Awaiting5", "prepare_5_next_6_replay", PausedPrepared { tid: 6 }, vec![perr(5)]),
        ("PausedPrepared6Awaiting5", "prepare_6_next_7_live", PausedPrepared { tid: 6 }, vec![perr(6)]),
        ("PausedPrepared6Awaiting5", "commit_5", PausedPrepared { tid: 6 }, vec![Action::Commit { tid: 5 }, Action::Report(Report::Committed { tid: 5 })]),
        ("PausedPrepared6Awaiting5", "commit_5_next_6_live", PausedPrepared { tid: 6 }, vec![perr(5)]),
        ("PausedPrepared6Awaiting5", "commit_5_next_6_replay", PausedPrepared { tid: 6 }, vec![perr(5)]),
        ("PausedPrepared6Awaiting5", "commit_5_next_5", PausedPrepared { tid: 6 }, vec![perr(5)]),
        ("PausedPrepared6Awaiting5", "commit_6", PausedPrepared { tid: 6 }, vec![perr(6)]),
        ("PausedPrepared6Awaiting5", "commit_5_next_7_sealed", PausedPrepared { tid: 6 }, vec![perr(5)]),
        ("PausedPrepared6Awaiting5", "checkpoint_4", PausedPrepared { tid: 6 }, vec![perr(4)]),
        ("PausedPrepared6Awaiting5", "checkpoint_5", PausedPrepared { tid: 6 }, vec![perr(5)]),
        ("PausedPrepared6Awaiting5", "checkpoint_complete_4", PausedPrepared { tid: 6 }, vec![Action::CheckpointComplete { tid: 4 }]),
        ("PausedPrepared6Awaiting5", "restore_4", Idle, vec![abandon(6), Action::Restore { checkpoint_tid: 4 }, Action::Report(Report::Restored { checkpoint_tid: 4 })]),
        ("PausedPrepared6Awaiting5", "stop", Stopped, vec![abandon(6)]),
        ("PausedPrepared6Awaiting5", "welcome_again", PausedPrepared { tid: 6 }, vec![perr(0)]),
        ("PausedPrepared6Awaiting5", "malformed", PausedPrepared { tid: 6 }, vec![perr(0)]),
        ("PausedPrepared6Awaiting5", "step_5_live", Stopped, vec![abandon(6), ierr(5)]),
        ("PausedPrepared6Awaiting5", "step_5_replayed", Stopped, vec![abandon(6), ierr(5)]),
        ("PausedPrepared6Awaiting5", "step_6_live", Stopped, vec![abandon(6), ierr(6)]),
        ("PausedPrepared6Awaiting5", "step_6_replayed", Stopped, vec![abandon(6), ierr(6)]),
        ("PausedPrepared6Awaiting5", "exhausted_5", Stopped, vec![abandon(6), ierr(5)]),
        ("PausedPrepared6Awaiting5", "exhausted_5_marker", Stopped, vec![abandon(6), ierr(5)]),
        ("PausedPrepared6Awaiting5", "exhausted_6", Stopped, vec![abandon(6), ierr(6)]),
        ("PausedPrepared6Awaiting5", "action_failed", Stopped, vec![abandon(6), engine_err(5)]),
        ("PausedPrepared6Awaiting5", "stream_closed", PausedPrepared { tid: 6 }, vec![]),
        ("PausedPrepared6Awaiting5", "stream_opened", Stopped, vec![abandon(6), ierr(0)]),
    ]
}

fn window(core: &HostCore) -> (Vec<u64>, Vec<u64>) {
    (core.ahead().iter().copied().collect(), core.awaiting().iter().copied().collect())
}

/// The window `(ahead, awaiting)` after a pair: the rows that change it are
/// listed; otherwise it is what the state started with, and empty wherever
/// the host leaves it (Stopped, Idle).
#[rustfmt::skip]
fn window_after(s: &str, e: &str, after: &HostCore) -> (Vec<u64>, Vec<u64>) {
    let changed = match (s, e) {
        ("OpenReplay5Sealed", "start_6_sealed") => Some((vec![6], vec![])),
        ("OpenReplay5Sealed", "start_7_sealed") => Some((vec![7], vec![])),
        ("OpenReplay5Ahead6", "start_7_sealed") => Some((vec![6, 7], vec![])),
        ("OpenReplay5Ahead6", "exhausted_5" | "exhausted_5_marker") => Some((vec![], vec![5])),
        ("Prepared5Sealed", "start_6_sealed" | "start_7_sealed") => Some((vec![], vec![5])),
        ("OpenReplay6Awaiting5", "start_7_sealed") => Some((vec![7], vec![5])),
        ("OpenReplay6Awaiting5" | "Prepared6Awaiting5", "commit_5") => Some((vec![], vec![])),
        ("OpenReplay6Awaiting5", "commit_5_next_7_sealed") => Some((vec![7], vec![])),
        ("Prepared6Awaiting5", "commit_5_next_7_sealed") => Some((vec![], vec![6])),
        ("Prepared6Awaiting5", "start_7_sealed") => Some((vec![], vec![5, 6])),
        ("OpenLive5", "prepare_5_next_6_live") => Some((vec![], vec![5])),
        ("OpenLive6Awaiting5", "prepare_6_next_7_live") => Some((vec![], vec![5, 6])),
        ("OpenLive6Awaiting5", "commit_5") => Some((vec![], vec![])),
        ("PausedLive5", "prepare_5_next_6_live") => Some((vec![], vec![5])),
        ("PausedLive6Awaiting5", "prepare_6_next_7_live") => Some((vec![], vec![5, 6])),
        ("PausedLive6Awaiting5" | "PausedPrepared6Awaiting5", "commit_5") => Some((vec![], vec![])),
        _ => None,
    };
    changed.unwrap_or_else(|| match after.state() {
        Stopped | Idle => (vec![], vec![]),
        // A kept state keeps a commit pipeline's awaiting tids.
        _ => window(&state(s)),
    })
}

#[test]
fn every_state_event_pair_has_exactly_the_tabled_outcome() {
    let table = table();
    if std::env::var_os("LOCKSTEP_PRINT_TABLE").is_some() {
        for s in STATES {
            for e in EVENTS {
                let mut core = state(s);
                let actions = normalize(core.handle(event(e)));
                println!("(\"{s}\", \"{e}\", {:?}, {actions:?}),", core.state());
            }
        }
    }
    // The table is complete: every pair appears exactly once.
    for s in STATES {
        for e in EVENTS {
            let n = table.iter().filter(|(ts, te, _, _)| ts == s && te == e).count();
            assert_eq!(n, 1, "pair ({s}, {e}) appears {n} times in the table");
        }
    }
    assert_eq!(table.len(), STATES.len() * EVENTS.len());
    for (s, e, expected_state, expected_actions) in table {
        let mut core = state(s);
        let actions = normalize(core.handle(event(e)));
        assert_eq!(actions, expected_actions, "actions for ({s}, {e})");
        assert_eq!(core.state(), expected_state, "next state for ({s}, {e})");
        assert_eq!(window(&core), window_after(s, e, &core), "replay window (ahead, awaiting) after ({s}, {e})");
        // Never a silent illegal pair: an unchanged state with no action is
        // only allowed where the table says so explicitly.
    }
}

/// The runtime's fast path for replayed steps stands for `handle`: where
/// `takes_replayed_step` says yes, handling the step returns exactly its
/// replayed report and changes nothing; where it says no, the step is not
/// simply reported.
#[test]
fn takes_replayed_step_holds_exactly_where_handle_only_reports_the_step() {
    for s in STATES {
        for tid in [4, 5, 6, 7] {
            let mut core = state(s);
            let before = (core.state(), window(&core));
            let takes = core.takes_replayed_step(tid);
            let actions = normalize(core.handle(Event::StepFinished { tid, step: 9, checksums: cs(), journaled: Some(cs()) }));
            let only_reported = actions
                == normalize(vec![Action::Report(Report::StepDone {
                    tid,
                    step: 9,
                    checksums: cs(),
                    journaled: Some(cs()),
                    mode: Mode::Replay,
                })])
                && (core.state(), window(&core)) == before;
            assert_eq!(takes, only_reported, "state {s}, replayed step of tid {tid}: {actions:?}");
        }
    }
}

#[test]
fn next_step_follows_the_state() {
    assert_eq!(state("Stopped").next_step(), None);
    assert_eq!(state("Idle").next_step(), None);
    assert_eq!(state("OpenLive5").next_step(), Some((5, Mode::Live)));
    assert_eq!(state("OpenReplay5").next_step(), Some((5, Mode::Replay)));
    assert_eq!(state("OpenReplay5Prep").next_step(), Some((5, Mode::Replay)));
    assert_eq!(state("ReplayDrained5").next_step(), None);
    assert_eq!(state("Prepared5").next_step(), None);
    assert_eq!(state("PausedLive5").next_step(), None, "paused: no step until a coordinator continues it");
    assert_eq!(state("PausedPrepared5").next_step(), None);
}

#[test]
fn stale_epoch_is_rejected_and_ignored_in_every_state() {
    for s in STATES {
        for e in EVENTS {
            let Event::Command { seq, command, .. } = event(e) else { continue };
            let mut core = state(s);
            let before = core.state();
            let actions = core.handle(Event::Command { seq, epoch: EPOCH - 1, command });
            let mut expected = vec![Action::Report(Report::Error {
                kind: ErrorKind::StaleEpoch,
                tid: match *e {
                    "stop" | "welcome_again" => 0,
                    _ => e.split('_').find_map(|w| w.parse().ok()).unwrap(),
                },
                message: String::new(),
            })];
            if *e == "welcome_again" {
                // A coordinator behind the current epoch: try another one.
                expected.push(Action::DropStream { reason: String::new() });
            }
            assert_eq!(normalize(actions), expected, "({s}, {e})");
            assert_eq!(core.state(), before);
            assert_eq!(core.highest_epoch(), EPOCH);
        }
    }
}

#[test]
fn higher_epoch_is_persisted_before_the_command_is_acted_on() {
    for s in STATES {
        for e in EVENTS {
            let Event::Command { seq, command, .. } = event(e) else { continue };
            let mut same = state(s);
            let expected = normalize(same.handle(Event::Command { seq, epoch: EPOCH, command: command.clone() }));
            let mut core = state(s);
            let actions = normalize(core.handle(Event::Command { seq, epoch: EPOCH + 2, command }));
            assert_eq!(actions[0], Action::PersistEpoch { epoch: EPOCH + 2 }, "({s}, {e})");
            assert_eq!(actions[1..], expected[..], "({s}, {e}): same outcome after persisting");
            assert_eq!(core.state(), same.state());
            assert_eq!(core.highest_epoch(), EPOCH + 2);
        }
    }
}

#[test]
fn command_seq_gap_drops_the_stream() {
    let mut core = state("OpenLive5");
    let actions = normalize(core.handle(Event::Command { seq: 2, epoch: EPOCH, command: Command::Prepare { tid: 5, next: None } }));
    assert_eq!(actions, vec![perr(5), Action::DropStream { reason: String::new() }]);
    assert_eq!(core.state(), OpenLive { tid: 5 }, "the drop itself comes back as StreamClosed");
    let actions = normalize(core.handle(Event::StreamClosed));
    assert_eq!(actions, vec![]);
    assert_eq!(core.state(), PausedLive { tid: 5 }, "kept for the next coordinator to continue or replace");
}

#[test]
fn repeated_seq_is_a_gap_too() {
    let mut core = state("Idle");
    core.handle(Event::Command { seq: 1, epoch: EPOCH, command: Command::Checkpoint { tid: 4 } });
    let actions = normalize(core.handle(Event::Command { seq: 1, epoch: EPOCH, command: Command::Checkpoint { tid: 4 } }));
    assert_eq!(actions, vec![perr(4), Action::DropStream { reason: String::new() }]);
}

#[test]
fn a_fresh_stream_needs_welcome_first() {
    let mut core = HostCore::new(0);
    assert_eq!(core.handle(Event::StreamOpened), vec![]);
    let actions = normalize(core.handle(Event::Command {
        seq: 1,
        epoch: 1,
        command: Command::Restore { checkpoint_tid: 0 },
    }));
    assert_eq!(actions, vec![perr(0), Action::DropStream { reason: String::new() }]);
    assert_eq!(core.handle(Event::StreamClosed), vec![]);

    assert_eq!(core.handle(Event::StreamOpened), vec![]);
    let actions = core.handle(Event::Command {
        seq: 1,
        epoch: 1,
        command: Command::Welcome { coordinator_id: "c1".into() },
    });
    assert_eq!(actions, vec![Action::PersistEpoch { epoch: 1 }]);
    assert!(core.welcomed());
    let actions = core.handle(Event::Command { seq: 2, epoch: 1, command: Command::Restore { checkpoint_tid: 0 } });
    assert_eq!(
        actions,
        vec![Action::Restore { checkpoint_tid: 0 }, Action::Report(Report::Restored { checkpoint_tid: 0 })]
    );
    assert_eq!(core.state(), Idle);
}

#[test]
fn stale_welcome_drops_the_stream_unwelcomed() {
    let mut core = HostCore::new(7);
    core.handle(Event::StreamOpened);
    let actions = normalize(core.handle(Event::Command {
        seq: 1,
        epoch: 6,
        command: Command::Welcome { coordinator_id: "old".into() },
    }));
    assert_eq!(
        actions,
        vec![
            Action::Report(Report::Error { kind: ErrorKind::StaleEpoch, tid: 0, message: String::new() }),
            Action::DropStream { reason: String::new() },
        ]
    );
    assert!(!core.welcomed());
    assert_eq!(core.handle(Event::StreamClosed), vec![]);
    assert_eq!(core.highest_epoch(), 7, "the older epoch was not adopted");
}

/// The whole life of a tid across a crash: live steps, stream loss, restore,
/// replay of the journaled steps, then (invariant 4) continuing live.
#[test]
fn open_last_transaction_is_replayed_then_continues_live() {
    let mut core = HostCore::new(0);
    core.handle(Event::StreamOpened);
    let mut seq = 0;
    let mut cmd = |core: &mut HostCore, epoch, command| {
        seq += 1;
        core.handle(Event::Command { seq, epoch, command })
    };
    cmd(&mut core, 1, Command::Welcome { coordinator_id: "c".into() });
    cmd(&mut core, 1, Command::Restore { checkpoint_tid: 0 });
    assert_eq!(cmd(&mut core, 1, Command::Start { tid: 1, mode: Mode::Live, prepare: false }), vec![Action::OpenTxn {
        tid: 1,
        mode: Mode::Live
    }]);
    core.handle(Event::StepFinished { tid: 1, step: 1, checksums: cs(), journaled: None });
    assert_eq!(core.handle(Event::StreamClosed), vec![], "the open transaction is kept, paused");
    assert_eq!(core.state(), PausedLive { tid: 1 });

    core.handle(Event::StreamOpened);
    let mut seq = 0;
    let mut cmd = |core: &mut HostCore, epoch, command| {
        seq += 1;
        core.handle(Event::Command { seq, epoch, command })
    };
    assert_eq!(cmd(&mut core, 2, Command::Welcome { coordinator_id: "c".into() }), vec![Action::PersistEpoch {
        epoch: 2
    }]);
    // The new coordinator chose to replay: the kept tid is abandoned.
    assert_eq!(cmd(&mut core, 2, Command::Restore { checkpoint_tid: 0 }), vec![
        abandon(1),
        Action::Restore { checkpoint_tid: 0 },
        Action::Report(Report::Restored { checkpoint_tid: 0 })
    ]);
    cmd(&mut core, 2, Command::Start { tid: 1, mode: Mode::Replay, prepare: false });
    assert_eq!(core.next_step(), Some((1, Mode::Replay)));
    core.handle(Event::StepFinished { tid: 1, step: 1, checksums: cs(), journaled: Some(cs()) });
    assert_eq!(core.handle(Event::ReplayExhausted { tid: 1, commit_marker: false }), vec![]);
    assert_eq!(core.next_step(), Some((1, Mode::Live)));
    assert_eq!(cmd(&mut core, 2, Command::Prepare { tid: 1, next: None }), vec![Action::Prepare { tid: 1 }]);
    assert_eq!(cmd(&mut core, 2, Command::Commit { tid: 1, next: None }), vec![
        Action::Commit { tid: 1 },
        Action::Report(Report::Committed { tid: 1 })
    ]);
    assert_eq!(core.last_committed(), 1);
}

/// What the next Hello offers (`resumable`) follows the state: a committed
/// boundary, or a kept live or prepared transaction; nothing mid-replay.
#[test]
fn resumable_is_offered_only_from_a_continuable_state() {
    let point = |name: &str| state(name).resumable();
    assert_eq!(point("Stopped"), None);
    assert_eq!(point("Idle"), Some(ResumePoint { last_committed: 4, open: None, awaiting: vec![] }));
    assert_eq!(point("PausedLive5"), Some(ResumePoint { last_committed: 4, open: Some((5, false)), awaiting: vec![] }));
    assert_eq!(point("PausedPrepared5"), Some(ResumePoint { last_committed: 4, open: Some((5, true)), awaiting: vec![] }));
    for s in ["OpenLive5", "OpenReplay5", "OpenReplay5Prep", "ReplayDrained5", "Prepared5"] {
        assert_eq!(point(s), None, "{s}: a stream is still open");
        let mut core = state(s);
        core.handle(Event::StreamClosed);
        let expected = match s {
            "OpenLive5" => Some(ResumePoint { last_committed: 4, open: Some((5, false)), awaiting: vec![] }),
            "Prepared5" => Some(ResumePoint { last_committed: 4, open: Some((5, true)), awaiting: vec![] }),
            _ => None,
        };
        assert_eq!(core.resumable(), expected, "{s} after the stream closed");
    }
    // Commit pipeline: awaiting tids are kept and offered with the kept one.
    let mut core = state("OpenLive6Awaiting5");
    assert_eq!(core.handle(Event::StreamClosed), vec![]);
    assert_eq!(core.resumable(), Some(ResumePoint { last_committed: 4, open: Some((6, false)), awaiting: vec![5] }));
    assert_eq!(
        point("PausedPrepared6Awaiting5"),
        Some(ResumePoint { last_committed: 4, open: Some((6, true)), awaiting: vec![5] })
    );
    // A replay window's are not: the host is mid-replay.
    let mut core = state("OpenReplay6Awaiting5");
    core.handle(Event::StreamClosed);
    assert_eq!(core.resumable(), None);
}

/// A prepared host loses its coordinator, a new one asks again: the same
/// report goes out once per stream, and a second Prepare on that stream is
/// still a protocol error.
#[test]
fn prepared_report_is_repeated_once_on_a_new_stream() {
    let mut core = state("Prepared5");
    assert_eq!(core.handle(Event::StreamClosed), vec![]);
    assert_eq!(core.handle(Event::StreamOpened), vec![]);
    let welcome = Command::Welcome { coordinator_id: "leader-2".into() };
    assert_eq!(core.handle(Event::Command { seq: 1, epoch: EPOCH + 1, command: welcome }), vec![Action::PersistEpoch {
        epoch: EPOCH + 1
    }]);
    let prepare = Command::Prepare { tid: 5, next: None };
    assert_eq!(core.handle(Event::Command { seq: 2, epoch: EPOCH + 1, command: prepare.clone() }), vec![
        Action::RepeatPrepared { tid: 5 }
    ]);
    assert_eq!(normalize(core.handle(Event::Command { seq: 3, epoch: EPOCH + 1, command: prepare })), vec![perr(5)]);
    let commit = Command::Commit { tid: 5, next: Some((6, Mode::Live, false)) };
    assert_eq!(core.handle(Event::Command { seq: 4, epoch: EPOCH + 1, command: commit }), vec![
        Action::Commit { tid: 5 },
        Action::Report(Report::Committed { tid: 5 }),
        Action::OpenTxn { tid: 6, mode: Mode::Live }
    ]);
    assert_eq!(core.next_step(), Some((6, Mode::Live)));
}

#[test]
fn a_replay_window_runs_ahead_and_commits_in_tid_order() {
    let mut core = HostCore::for_test(Idle, EPOCH, 0, 0);
    let mut seq = 0;
    let mut cmd = |core: &mut HostCore, command| {
        seq += 1;
        normalize(core.handle(Event::Command { seq, epoch: EPOCH, command }))
    };
    let sealed = |tid| Command::Start { tid, mode: Mode::Replay, prepare: true };
    assert_eq!(cmd(&mut core, sealed(1)), vec![Action::OpenTxn { tid: 1, mode: Mode::Replay }]);
    assert_eq!(cmd(&mut core, sealed(2)), vec![]);
    assert_eq!(cmd(&mut core, sealed(3)), vec![]);
    assert_eq!(window(&core), (vec![2, 3], vec![]));
    // Tid 1's journaled steps run out: it prepares and tid 2 opens at once.
    let actions = core.handle(Event::ReplayExhausted { tid: 1, commit_marker: true });
    assert_eq!(actions, vec![Action::Prepare { tid: 1 }, Action::OpenTxn { tid: 2, mode: Mode::Replay }]);
    assert_eq!(core.next_step(), Some((2, Mode::Replay)), "tid 2 runs while tid 1 is verified");
    let actions = core.handle(Event::ReplayExhausted { tid: 2, commit_marker: true });
    assert_eq!(actions, vec![Action::Prepare { tid: 2 }, Action::OpenTxn { tid: 3, mode: Mode::Replay }]);
    assert_eq!(window(&core), (vec![], vec![1, 2]));
    // Commits must come oldest first.
    assert_eq!(cmd(&mut core, Command::Commit { tid: 2, next: None }), vec![perr(2)]);
    assert_eq!(cmd(&mut core, Command::Commit { tid: 1, next: None }), vec![Action::Commit { tid: 1 }, Action::Report(Report::Committed { tid: 1 })]);
    assert_eq!(cmd(&mut core, Command::Commit { tid: 2, next: None }), vec![Action::Commit { tid: 2 }, Action::Report(Report::Committed { tid: 2 })]);
    assert_eq!(core.last_committed(), 2);
    assert_eq!(core.handle(Event::ReplayExhausted { tid: 3, commit_marker: true }), vec![Action::Prepare { tid: 3 }]);
    // The last committed tid hands over to live as without a window.
    let actions = cmd(&mut core, Command::Commit { tid: 3, next: Some((4, Mode::Live, false)) });
    assert_eq!(actions, vec![Action::Commit { tid: 3 }, Action::Report(Report::Committed { tid: 3 }), Action::OpenTxn { tid: 4, mode: Mode::Live }]);
    assert_eq!((core.state(), window(&core)), (OpenLive { tid: 4 }, (vec![], vec![])));
}

#[test]
fn stop_inside_a_replay_window_drops_every_uncommitted_tid() {
    let mut core = state("OpenReplay6Awaiting5").with_window(true, &[7], &[5]);
    let actions = core.handle(Event::Command { seq: 1, epoch: EPOCH, command: Command::Stop { reason: "diverged".into() } });
    assert_eq!(actions, vec![Action::AbandonTxn { tid: 6 }], "the runtime drops the held outputs of 5 with 6");
    assert_eq!((core.state(), window(&core)), (Stopped, (vec![], vec![])));
    assert_eq!(core.last_committed(), 4, "nothing awaiting was committed");
}

/// Random sequences of whatever may reach the core (commands of any kind,
/// tid and epoch, in and out of sequence, undecodable ones, steps, journal
/// ends, failed actions, streams closing and opening), from every state of
/// the table. The table test above pins each single transition; this one
/// checks what must hold along any path:
/// - nothing panics;
/// - the runtime is told to commit (release outputs of) only a tid it was
///   told to prepare, after its last restore or abandon, once, and in
///   increasing tid order.
mod sequences {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum In {
        /// `seq_ok`: the seq the stream expects; else `bad_seq`.
        Cmd { seq_ok: bool, bad_seq: u64, epoch: u64, command: Command },
        Malformed { epoch: u64 },
        Step { tid: u64, replayed: bool },
        Exhausted { tid: u64, marker: bool },
        Failed { tid: u64 },
        Closed,
        Opened,
        /// What a working coordinator (and runtime) would most likely send
        /// next in the core's current state; `u8` picks among the options.
        /// Random inputs alone fail the core within a few events, before
        /// anything commits.
        Plausible(u8),
    }

    /// `In::Plausible(pick)` made concrete for `core` as it is now.
    fn plausible(core: &HostCore, pick: u8, seq: u64) -> Event {
        let cmd = |command| Event::Command { seq, epoch: EPOCH, command };
        let next = |tid: u64| match pick % 4 {
            0 => None,
            1 | 2 => Some((tid + 1, Mode::Live, false)),
            _ => Some((tid + 1, Mode::Replay, pick % 8 == 3)),
        };
        if !core.welcomed() {
            return if pick.is_multiple_of(2) { Event::StreamOpened } else { cmd(Command::Welcome { coordinator_id: "c1".into() }) };
        }
        if let Some(&oldest) = core.awaiting().front() {
            if pick.is_multiple_of(3) {
                return cmd(Command::Commit { tid: oldest, next: None });
            }
        }
        let last = core.last_committed();
        match core.state() {
            Stopped => cmd(Command::Restore { checkpoint_tid: if pick.is_multiple_of(2) { last } else { 0 } }),
            Idle => match pick % 3 {
                0 => cmd(Command::Checkpoint { tid: last }),
                1 => cmd(Command::Start { tid: last + 1, mode: Mode::Live, prepare: false }),
                _ => cmd(Command::Start { tid: last + 1, mode: Mode::Replay, prepare: pick.is_multiple_of(2) }),
            },
            OpenLive { tid } | PausedLive { tid } => match pick % 3 {
                0 => Event::StepFinished { tid, step: 9, checksums: cs(), journaled: None },
                _ => cmd(Command::Prepare { tid, next: next(tid) }),
            },
            OpenReplay { tid, .. } => match pick % 3 {
                0 => Event::StepFinished { tid, step: 9, checksums: cs(), journaled: Some(cs()) },
                1 => Event::ReplayExhausted { tid, commit_marker: pick.is_multiple_of(2) },
                _ => cmd(Command::Prepare { tid, next: next(tid) }),
            },
            ReplayDrained { tid } => cmd(Command::Prepare { tid, next: next(tid) }),
            Prepared { tid } | PausedPrepared { tid } => match pick % 3 {
                0 => cmd(Command::Prepare { tid, next: None }),
                _ => cmd(Command::Commit { tid, next: next(tid) }),
            },
        }
    }

    fn tid() -> impl Strategy<Value = u64> {
        2u64..9
    }

    fn mode() -> impl Strategy<Value = Mode> {
        prop_oneof![Just(Mode::Live), Just(Mode::Replay)]
    }

    fn next() -> impl Strategy<Value = Option<(u64, Mode, bool)>> {
        proptest::option::of((tid(), mode(), any::<bool>()))
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            1 => Just(Command::Welcome { coordinator_id: "c1".into() }),
            3 => (tid(), mode(), any::<bool>()).prop_map(|(tid, mode, prepare)| Command::Start { tid, mode, prepare }),
            3 => (tid(), next()).prop_map(|(tid, next)| Command::Prepare { tid, next }),
            3 => (tid(), next()).prop_map(|(tid, next)| Command::Commit { tid, next }),
            1 => tid().prop_map(|tid| Command::Checkpoint { tid }),
            1 => tid().prop_map(|tid| Command::CheckpointComplete { tid }),
            1 => (0u64..6).prop_map(|checkpoint_tid| Command::Restore { checkpoint_tid }),
            1 => Just(Command::Stop { reason: "operator".into() }),
        ]
    }

    fn input() -> impl Strategy<Value = In> {
        let epoch = prop_oneof![8 => Just(EPOCH), 1 => Just(EPOCH - 1), 1 => Just(EPOCH + 1)];
        prop_oneof![
            8 => (prop_oneof![9 => Just(true), 1 => Just(false)], 0u64..20, epoch.clone(), command())
                .prop_map(|(seq_ok, bad_seq, epoch, command)| In::Cmd { seq_ok, bad_seq, epoch, command }),
            1 => epoch.prop_map(|epoch| In::Malformed { epoch }),
            3 => (tid(), any::<bool>()).prop_map(|(tid, replayed)| In::Step { tid, replayed }),
            2 => (tid(), any::<bool>()).prop_map(|(tid, marker)| In::Exhausted { tid, marker }),
            1 => tid().prop_map(|tid| In::Failed { tid }),
            1 => Just(In::Closed),
            1 => Just(In::Opened),
            24 => any::<u8>().prop_map(In::Plausible),
        ]
    }

    /// The tids already prepared (outputs held) in a named table state.
    fn prepared_in(name: &str) -> BTreeSet<u64> {
        let mut p = BTreeSet::new();
        if name.contains("Prepared5") {
            p.insert(5);
        }
        if name.contains("Prepared6") {
            p.insert(6);
        }
        if name.contains("Awaiting5") {
            p.insert(5);
        }
        p
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn any_input_sequence_commits_only_prepared_tids_once_and_in_order(
            start in 0..STATES.len(),
            inputs in proptest::collection::vec(input(), 1..40),
        ) {
            let name = STATES[start];
            let mut core = state(name);
            let mut prepared = prepared_in(name);
            let mut floor = 4; // the states' last committed tid
            let mut next_seq = 1;
            for input in inputs {
                let event = match input {
                    In::Cmd { seq_ok, bad_seq, epoch, command } => {
                        let seq = if seq_ok { next_seq } else { bad_seq };
                        next_seq += 1;
                        Event::Command { seq, epoch, command }
                    }
                    In::Malformed { epoch } => {
                        next_seq += 1;
                        Event::MalformedCommand { seq: next_seq - 1, epoch, reason: "no body".into() }
                    }
                    In::Step { tid, replayed } => {
                        Event::StepFinished { tid, step: 9, checksums: cs(), journaled: replayed.then(cs) }
                    }
                    In::Exhausted { tid, marker } => Event::ReplayExhausted { tid, commit_marker: marker },
                    In::Failed { tid } => Event::ActionFailed { kind: ErrorKind::Engine, tid, message: "disk full".into() },
                    In::Closed => Event::StreamClosed,
                    In::Opened => {
                        next_seq = 1;
                        Event::StreamOpened
                    }
                    In::Plausible(pick) => match plausible(&core, pick, next_seq) {
                        e @ Event::Command { .. } => {
                            next_seq += 1;
                            e
                        }
                        e @ Event::StreamOpened => {
                            next_seq = 1;
                            e
                        }
                        e => e,
                    },
                };
                let shown = format!("{event:?}");
                for action in core.handle(event) {
                    match action {
                        Action::Prepare { tid } => {
                            prop_assert!(prepared.insert(tid), "{name}: tid {tid} prepared twice (at {shown})");
                        }
                        Action::Commit { tid } => {
                            prop_assert!(prepared.remove(&tid), "{name}: commit of tid {tid}, which was not prepared (at {shown})");
                            prop_assert!(tid > floor, "{name}: commit of tid {tid} after tid {floor} (at {shown})");
                            floor = tid;
                        }
                        Action::AbandonTxn { .. } => prepared.clear(),
                        Action::Restore { checkpoint_tid } => {
                            prepared.clear();
                            floor = checkpoint_tid;
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
