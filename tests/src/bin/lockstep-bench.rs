//! `lockstep-bench`: the three benchmarks of issue 4, each measured as a
//! ratio against a baseline taken in the same run, with real release-build
//! processes on loopback (the e2e harness in `lockstep_tests`).
//!
//! ```sh
//! cargo run --release -p lockstep-tests --bin lockstep-bench -- all
//! cargo run --release -p lockstep-tests --bin lockstep-bench -- replay --replay-tids 2000
//! ```
//!
//! - `replay`: record journals live (no checkpoints), stop the cluster, then
//!   (a) every host replays its journal alone (`host-agent --replay-alone`,
//!   all hosts at once, started together once each has opened its journal
//!   and restored its engine), (b) the cluster restarts and the coordinator drives
//!   the replay of every committed tid (timed inside the coordinator, from
//!   "recovering" to "replay done", `Admin/GetStatus.last_replay`).
//!   Goal: (b) >= 0.9x (a) in records/s, the median over `--replay-repeat`
//!   runs (11) of (a) and (b) on the same recording, (b) first in every
//!   other run, shown with the middle half of the runs' ratios.
//! - `live`: empty steps, 1 coordinator + N hosts, a tiny commit interval;
//!   committed tids/s and commit latency (Prepare sent -> Commit sent,
//!   `Admin/GetStatus.commit_latency`) vs the floor measured here: a
//!   loopback TCP round trip + one fdatasync of a small file on the same
//!   disk. Goal: p50 <= 3x floor. Then the same with mutual TLS on every
//!   connection (test certificates made here), shown next to it (info).
//! - `memory`: peak RSS (VmHWM) of the coordinator and the hosts while
//!   replaying a journal of N tids and of 10x N tids. Goals: flat (the
//!   larger journal's peak <= 1.2x the smaller's), coordinator < 64 MiB.
//! - `etcd`: the baseline of `replicated`: a 3-member etcd cluster on
//!   loopback (Debian's etcd-server, found on PATH; default fsync settings,
//!   one data dir per member), one client doing sequential puts to the
//!   leader over gRPC (tonic, a wire-compatible subset of etcd's rpc.proto).
//! - `replicated`: `etcd`, then 3 `coordinator serve --peers` + 4 hosts with
//!   empty steps; committed tids/s over the same window (GetStatus
//!   `last_committed_tid` deltas on the leader). Goal: >= 2x etcd's puts/s.
//! - `leader-kill`: 20 times: find the leader (GetStatus `is_leader`),
//!   SIGKILL it, time until a survivor leads and shows a commit it drove
//!   itself, restart the killed node, wait until it caught up. Goal: p50 <
//!   300 ms.
//!
//! Not a test: nothing here runs under `cargo test`. Every wait is bounded;
//! every process is killed when its `Cluster` is dropped.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lockstep_proto::v1 as pb;
use lockstep_proto::v1::admin_client::AdminClient;
use lockstep_tests::{bin_dir, free_port, host_id, tail, Cluster, ClusterOpts, Proc};
use tonic::transport::{Channel, Endpoint};

const USAGE: &str = "usage: lockstep-bench <replay|live|memory|etcd|replicated|leader-kill|all> [options]

options (defaults in brackets):
  --hosts N                    host agents [3]
  --replay-tids N              tids recorded for the replay benchmark [1000]
  --replay-repeat N            replay the same recording N times (alone and coordinated, coordinated first in every other run); the goal is judged on the median [41]
  --memory-tids N              tids of the short journal of the memory benchmark [100]
  --memory-factor K            the long journal has K x as many tids [10]
  --record-commit-interval-ms  commit interval while recording [20]
  --record-step-interval-ms    pause between live steps while recording [1]
  --record-batch-max N         generator records per step while recording, 0..=N [50]
  --live-secs S                measured live window [10]
  --live-commit-interval-ms    commit interval of the live benchmark [1]
  --live-step-interval-ms      pause between (empty) live steps [1]
  --floor-samples N            round trips and fdatasyncs for the floor [500]
  --coordinators N             coordinator raft members (replicated, leader-kill) [3]
  --group-hosts N              host agents with a replicated coordinator [4]
  --group-secs S               measured window of etcd and replicated [10]
  --etcd-puts-max N            at most this many etcd puts in the window [200000]
  --kills N                    leader kills [20]
  --kill-checkpoint-every-txns N  checkpoint interval during leader-kill [50]
  --pipeline-depth N           the coordinators' --pipeline-depth in replicated [8]
  --group-commit-interval-ms   commit interval in replicated (0: prepare a tid as soon as it opens) [0]
";

#[derive(Clone, Debug)]
struct Opts {
    hosts: usize,
    replay_tids: u64,
    replay_repeat: u64,
    memory_tids: u64,
    memory_factor: u64,
    record_commit_interval_ms: u64,
    record_step_interval_ms: u64,
    record_batch_max: u64,
    live_secs: u64,
    live_commit_interval_ms: u64,
    live_step_interval_ms: u64,
    floor_samples: usize,
    coordinators: usize,
    group_hosts: usize,
    group_secs: u64,
    etcd_puts_max: u64,
    kills: usize,
    pipeline_depth: u64,
    group_commit_interval_ms: u64,
    kill_checkpoint_every_txns: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            hosts: 3,
            replay_tids: 1000,
            replay_repeat: 41,
            memory_tids: 100,
            memory_factor: 10,
            record_commit_interval_ms: 20,
            record_step_interval_ms: 1,
            record_batch_max: 50,
            live_secs: 10,
            live_commit_interval_ms: 1,
            live_step_interval_ms: 1,
            floor_samples: 500,
            coordinators: 3,
            group_hosts: 4,
            group_secs: 10,
            etcd_puts_max: 200_000,
            kills: 20,
            pipeline_depth: 8,
            group_commit_interval_ms: 0,
            kill_checkpoint_every_txns: 50,
        }
    }
}

fn parse_args() -> Result<(String, Opts), String> {
    let mut args = std::env::args().skip(1);
    let what = args.next().ok_or("missing benchmark name")?;
    if !["replay", "live", "memory", "etcd", "replicated", "leader-kill", "all"].contains(&what.as_str()) {
        return Err(format!("unknown benchmark {what:?}"));
    }
    let mut o = Opts::default();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let n: u64 = value.parse().map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--hosts" => o.hosts = n as usize,
            "--replay-tids" => o.replay_tids = n,
            "--replay-repeat" => o.replay_repeat = n,
            "--memory-tids" => o.memory_tids = n,
            "--memory-factor" => o.memory_factor = n,
            "--record-commit-interval-ms" => o.record_commit_interval_ms = n,
            "--record-step-interval-ms" => o.record_step_interval_ms = n,
            "--record-batch-max" => o.record_batch_max = n,
            "--live-secs" => o.live_secs = n,
            "--live-commit-interval-ms" => o.live_commit_interval_ms = n,
            "--live-step-interval-ms" => o.live_step_interval_ms = n,
            "--floor-samples" => o.floor_samples = n as usize,
            "--coordinators" => o.coordinators = n as usize,
            "--group-hosts" => o.group_hosts = n as usize,
            "--group-secs" => o.group_secs = n,
            "--etcd-puts-max" => o.etcd_puts_max = n,
            "--kills" => o.kills = n as usize,
            "--pipeline-depth" => o.pipeline_depth = n,
            "--group-commit-interval-ms" => o.group_commit_interval_ms = n,
            "--kill-checkpoint-every-txns" => o.kill_checkpoint_every_txns = n,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.hosts == 0 || o.replay_tids == 0 || o.memory_tids == 0 || o.memory_factor == 0 || o.live_secs == 0 || o.replay_repeat == 0
        || o.coordinators == 0 || o.group_hosts == 0 || o.group_secs == 0 || o.etcd_puts_max == 0 || o.kills == 0
    {
        return Err("sizes must be at least 1".into());
    }
    Ok((what, o))
}

/// One row of the results table.
struct Row {
    what: String,
    measured: String,
    baseline: String,
    ratio: String,
    goal: String,
    met: Option<bool>,
}

fn row(what: &str, measured: String, baseline: String, ratio: String, goal: &str, met: Option<bool>) -> Row {
    Row { what: what.into(), measured, baseline, ratio, goal: goal.into(), met }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

// ----------------------------------------------------------------- helpers

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) a process has used so far, in ms.
fn cpu_ms(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields, in clock ticks (100 Hz on Linux).
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?) * 10)
}

/// CPU time used so far by every thread of `pid` still alive, in µs
/// (`/proc/<pid>/task/*/schedstat`, nanosecond resolution).
fn cpu_micros(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let text = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += text.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0) / 1000;
    }
    Some(total)
}

fn cluster_opts(o: &Opts, commit_interval_ms: u64, step_interval_ms: u64, cluster: &str) -> ClusterOpts {
    ClusterOpts {
        hosts: o.hosts,
        commit_interval_ms,
        checkpoint_every_txns: 0,
        report_deadline_ms: 10_000,
        generator_seed: 7,
        step_interval_ms,
        cluster_id: cluster.into(),
        pipeline_depth: 1,
        coordinator_flags: Vec::new(),
    }
}

/// Stops every process of `c` with SIGTERM: hosts first (so nothing
/// commits after), then the coordinator. Returns the last committed tid.
async fn stop_cluster(c: &mut Cluster) -> anyhow::Result<u64> {
    for h in c.hosts.iter_mut() {
        h.terminate();
    }
    let last = c.status().await?.last_committed_tid;
    c.coordinator.terminate();
    Ok(last)
}

/// Runs a cluster live until `tids` transactions committed, then stops it.
/// Returns the cluster (stopped, data kept) and the last committed tid.
async fn record(o: &Opts, tids: u64, cluster: &str) -> anyhow::Result<(Cluster, u64)> {
    let batch = o.record_batch_max.to_string();
    let mut c = Cluster::start_with(cluster_opts(o, o.record_commit_interval_ms, o.record_step_interval_ms, cluster), |_, args| {
        args.extend(["--generator-batch-max".into(), batch.clone()])
    });
    let started = Instant::now();
    let timeout = Duration::from_secs(60) + Duration::from_millis(tids * 200);
    c.wait_for(&format!("{tids} committed tids"), timeout, |s| s.last_committed_tid >= tids).await;
    let last = stop_cluster(&mut c).await?;
    let secs = started.elapsed().as_secs_f64();
    say(format!("recorded {last} committed tids on {} hosts in {secs:.1} s ({:.0} tids/s)", o.hosts, last as f64 / secs));
    Ok((c, last))
}

/// Restarts a recorded cluster and waits until the coordinator reports the
/// replay of `tids` committed tids done. Samples RSS meanwhile.
struct Replayed {
    stats: pb::ReplayStats,
    /// CPU of the coordinator and of the hosts from the first status seen
    /// Replaying to the one showing the replay done (polled every 10 ms).
    cpu_micros: Option<(u64, Vec<u64>)>,
    coordinator_peak_kib: u64,
    host_peak_kib: u64,
    coordinator_sampled_kib: u64,
    host_sampled_kib: u64,
}

/// How long a replay of `tids` may take, alone or coordinated, before the
/// bench gives up on it: generous, so only a hang reaches it.
fn replay_deadline(tids: u64) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(tids * 100)
}

async fn replay_coordinated(c: &mut Cluster, tids: u64) -> anyhow::Result<Replayed> {
    c.coordinator.start();
    let deadline = Instant::now() + replay_deadline(tids);
    // Waited for by events, not by polling: the replay is timed inside the
    // coordinator, and a GetStatus poll every 10 ms cost about 10 ms of
    // CPU per replay (this process's and the coordinator's, ~2% of the
    // hosts'), taken from the hosts being measured; the replay alone has
    // no such visitor. The watch opens before any host starts, so it sees
    // the replay begin; per-tid commits are left out.
    let mut events = watch_events(&c.addr, deadline).await?;
    for h in c.hosts.iter_mut() {
        h.start();
    }
    let (mut coord_sampled, mut host_sampled) = (0u64, 0u64);
    let sample = |c: &Cluster, coord: &mut u64, host: &mut u64| -> (u64, u64) {
        let (cr, ch) = c.coordinator.pid().and_then(rss_kib).unwrap_or_default();
        *coord = (*coord).max(cr);
        let mut host_peak = 0;
        for h in &c.hosts {
            let (hr, hh) = h.pid().and_then(rss_kib).unwrap_or_default();
            *host = (*host).max(hr);
            host_peak = host_peak.max(hh);
        }
        (ch, host_peak)
    };
    let cpu_all = |c: &Cluster| -> (u64, Vec<u64>) {
        let host = c.hosts.iter().map(|h| h.pid().and_then(cpu_micros).unwrap_or(0)).collect();
        (c.coordinator.pid().and_then(cpu_micros).unwrap_or(0), host)
    };
    let mut cpu_at_replay_start: Option<(u64, Vec<u64>)> = None;
    // Wall-clock bounds of the measured window, printed so that a
    // system-wide profile (`perf record -k realtime`) can be cut to it.
    let mut window_start_unix_us = 0u128;
    // Resident memory is sampled now and then (the peaks come from VmHWM).
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        use pb::pipeline_event::Event as E;
        let event = tokio::select! {
            _ = ticker.tick() => {
                sample(c, &mut coord_sampled, &mut host_sampled);
                anyhow::ensure!(Instant::now() <= deadline, "replay did not finish in time\n{}", c.logs());
                continue;
            }
            event = events.message() => match event {
                Ok(Some(e)) => e.event,
                Ok(None) => anyhow::bail!("the coordinator ended its event stream before the replay was done\n{}", c.logs()),
                Err(status) => anyhow::bail!("the coordinator's event stream failed: {status}\n{}", c.logs()),
            },
        };
        match event {
            // Every host restored: the coordinator's replay timer starts now.
            Some(E::Recovering(_)) if cpu_at_replay_start.is_none() => {
                window_start_unix_us = unix_micros();
                cpu_at_replay_start = Some(cpu_all(c));
            }
            Some(E::Failed(f)) => anyhow::bail!("replay failed: {}\n{}", f.summary, c.logs()),
            Some(E::ReplayDone(r)) => {
                let cpu_micros = cpu_at_replay_start.as_ref().map(|(c0, h0)| {
                    let (c1, h1) = cpu_all(c);
                    (c1.saturating_sub(*c0), h1.iter().zip(h0).map(|(b, a)| b.saturating_sub(*a)).collect())
                });
                say(format!("  measured window (unix µs, as seen here): {window_start_unix_us}..{}", unix_micros()));
                let (coord_peak, host_peak) = sample(c, &mut coord_sampled, &mut host_sampled);
                anyhow::ensure!(r.tids == tids, "replayed {} tids, expected {tids}", r.tids);
                let hosts: Vec<String> =
                    c.hosts.iter().map(|h| h.pid().and_then(cpu_ms).map_or("?".into(), |ms| ms.to_string())).collect();
                say(format!(
                    "  CPU used since start (incl. startup): coordinator {} ms, hosts {} ms",
                    c.coordinator.pid().and_then(cpu_ms).map_or("?".into(), |ms| ms.to_string()),
                    hosts.join("/")
                ));
                return Ok(Replayed {
                    stats: r,
                    cpu_micros,
                    coordinator_peak_kib: coord_peak,
                    host_peak_kib: host_peak,
                    coordinator_sampled_kib: coord_sampled,
                    host_sampled_kib: host_sampled,
                });
            }
            _ => {}
        }
    }
}

fn unix_micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

/// `Admin/WatchEvents` on a coordinator that is starting: retried until it
/// leads and answers (bounded by `deadline`). Its channel has no request
/// timeout: the stream lasts as long as the replay.
async fn watch_events(addr: &str, deadline: Instant) -> anyhow::Result<tonic::Streaming<pb::PipelineEvent>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(Duration::from_millis(500)).tcp_nodelay(true).connect_lazy();
    let mut admin = AdminClient::new(channel);
    loop {
        match admin.watch_events(pb::WatchEventsRequest { without_commits: true }).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(status) if Instant::now() > deadline => anyhow::bail!("the coordinator at {addr} never served WatchEvents: {status}"),
            // Not up, or not leading yet.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

struct Alone {
    records: u64,
    tids: u64,
    /// Wall time from the first host's start to the last host's end.
    span_micros: u64,
    per_host: Vec<(u64, f64)>,
    /// Each host's CPU time over its replay (all threads).
    cpu_micros: Vec<u64>,
}

/// Every host replays its journal alone, all at once, no coordinator. At
/// the coordinated hosts' log level (the harness starts them with
/// RUST_LOG=info), so that both runs are the same host doing the same
/// work apart from the coordination.
///
/// The replays start together: each host opens and summarises its journal
/// and restores its engine, says it is ready, and waits for the word on
/// stdin (`--replay-start-on-stdin`), which goes to all of them once every
/// one is ready. Started one after the other, the first host's clock ran
/// while the others were still reading their journals (10-17 ms at 1000
/// tids, growing with the journal), on the same two cores: start-up work
/// inside the baseline's span that the coordinated replay's clock (from
/// every host restored) does not include.
fn replay_alone(c: &Cluster, through_tid: u64) -> anyhow::Result<Alone> {
    let mut children = Vec::new();
    for i in 0..c.opts.hosts {
        let log = c.dir.path().join(format!("{}-alone.log", host_id(i)));
        let child = Command::new(bin_dir().join("host-agent"))
            .args(["--replay-alone", "--replay-start-on-stdin", "--replay-through-tid", &through_tid.to_string()])
            .args(["--host-id", &host_id(i), "--cluster-id", &c.opts.cluster_id])
            .arg("--data-dir")
            .arg(c.host_dir(i))
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            // A file, not a pipe: nobody reads stderr until the end, and a
            // full pipe would stop the host before it says it is ready.
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        children.push((child, log));
    }
    // A host that hangs (before its ready line or in its replay) would
    // hang the bench: past the deadline every host is killed, and the
    // reads below end with the logs' tails.
    let deadline = replay_deadline(through_tid);
    let pids: Vec<u32> = children.iter().map(|(child, _)| child.id()).collect();
    let (finished, watchdog) = std::sync::mpsc::channel::<()>();
    let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let timed_out = timed_out.clone();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = watchdog.recv_timeout(deadline) {
                timed_out.store(true, std::sync::atomic::Ordering::SeqCst);
                for pid in pids {
                    // SAFETY: kill(2) takes no pointers. A child already
                    // reaped leaves a stale pid, which Linux hands out again
                    // only once the pid space wraps: not within the deadline.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        })
    };
    let result = replay_alone_run(children, through_tid, deadline, &timed_out);
    drop(finished);
    let _ = watchdog.join();
    result
}

/// `replay_alone` once its hosts are spawned (and watched).
fn replay_alone_run(
    mut children: Vec<(std::process::Child, PathBuf)>,
    through_tid: u64,
    deadline: Duration,
    timed_out: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<Alone> {
    use std::io::BufRead;
    let failed = |i: usize, log: &Path, what: &str| {
        let killed = if timed_out.load(std::sync::atomic::Ordering::SeqCst) { format!(" (killed after {deadline:?})") } else { String::new() };
        anyhow::anyhow!("host-agent --replay-alone of {} {what}{killed}: {}", host_id(i), tail(&std::fs::read_to_string(log).unwrap_or_default(), 20))
    };
    // Every host ready (its stdout's first line), then the word to all.
    let mut readers = Vec::new();
    for (i, (child, log)) in children.iter_mut().enumerate() {
        let mut out = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        out.read_line(&mut line)?;
        let ready: serde_json::Value = serde_json::from_str(&line).map_err(|_| failed(i, log, "did not say it was ready"))?;
        anyhow::ensure!(ready["ready"] == host_id(i), "{} said {line:?} instead of being ready", host_id(i));
        readers.push(out);
    }
    for (child, _) in children.iter_mut() {
        child.stdin.take().expect("piped stdin").write_all(b"go\n")?;
    }
    let mut out = Alone { records: 0, tids: 0, span_micros: 0, per_host: Vec::new(), cpu_micros: Vec::new() };
    let (mut first_start, mut last_start, mut last_end) = (u64::MAX, 0u64, 0u64);
    for (i, ((mut child, log), mut reader)) in children.into_iter().zip(readers).enumerate() {
        let mut report = String::new();
        reader.read_to_string(&mut report)?;
        let status = child.wait()?;
        anyhow::ensure!(status.success(), failed(i, &log, "failed"));
        let v: serde_json::Value = serde_json::from_str(&report).map_err(|_| failed(i, &log, "printed no report"))?;
        let get = |k: &str| v[k].as_u64().unwrap_or(0);
        anyhow::ensure!(get("tids") == through_tid, "{} replayed {} tids alone, expected {through_tid}", host_id(i), get("tids"));
        out.records += get("records");
        out.tids = out.tids.max(get("tids"));
        first_start = first_start.min(get("started_unix_us"));
        last_start = last_start.max(get("started_unix_us"));
        last_end = last_end.max(get("started_unix_us") + get("micros"));
        out.per_host.push((get("records"), v["records_per_s"].as_f64().unwrap_or(0.0)));
        out.cpu_micros.push(get("cpu_micros"));
    }
    out.span_micros = last_end.saturating_sub(first_start).max(1);
    say(format!("  the hosts' replays started within {} of each other", micros(last_start.saturating_sub(first_start) as f64)));
    say(format!("  measured window (unix µs, as the hosts saw it): {first_start}..{last_end}"));
    Ok(out)
}

// ------------------------------------------------------------------ floor

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

struct Floor {
    rtt_p50: f64,
    sync_p50: f64,
    sum_p50: f64,
    sum_p99: f64,
}

/// Loopback TCP round trip (64 bytes, Nagle off) + one fdatasync of a
/// small file in `dir`, each sample timed as one; in microseconds.
fn measure_floor(dir: &Path, samples: usize) -> anyhow::Result<Floor> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut client = std::net::TcpStream::connect(addr)?;
    client.set_nodelay(true)?;
    let path = dir.join("floor-fsync");
    let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
    let (mut rtt, mut sync, mut sum) = (Vec::new(), Vec::new(), Vec::new());
    let mut buf = [7u8; 64];
    for _ in 0..samples {
        let t0 = Instant::now();
        client.write_all(&buf)?;
        client.read_exact(&mut buf)?;
        let t1 = Instant::now();
        file.write_all(&buf)?;
        file.sync_data()?;
        let t2 = Instant::now();
        rtt.push((t1 - t0).as_secs_f64() * 1e6);
        sync.push((t2 - t1).as_secs_f64() * 1e6);
        sum.push((t2 - t0).as_secs_f64() * 1e6);
    }
    drop(client);
    let _ = echo.join();
    let _ = std::fs::remove_file(&path);
    for v in [&mut rtt, &mut sync, &mut sum] {
        v.sort_by(f64::total_cmp);
    }
    Ok(Floor {
        rtt_p50: percentile(&rtt, 0.5),
        sync_p50: percentile(&sync, 0.5),
        sum_p50: percentile(&sum, 0.5),
        sum_p99: percentile(&sum, 0.99),
    })
}

fn floor_line(when: &str, f: &Floor) -> String {
    format!(
        "  floor {when}: round trip p50 {}, fdatasync p50 {}, together p50 {} p99 {}",
        micros(f.rtt_p50),
        micros(f.sync_p50),
        micros(f.sum_p50),
        micros(f.sum_p99)
    )
}

/// Percentile of the observations between two snapshots of a per-bucket
/// histogram, interpolated linearly inside the bucket; in microseconds.
fn histogram_percentile(before: &pb::LatencyHistogram, after: &pb::LatencyHistogram, q: f64) -> Option<f64> {
    let counts: Vec<u64> =
        after.counts.iter().enumerate().map(|(i, c)| c - before.counts.get(i).copied().unwrap_or(0)).collect();
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * q).ceil().max(1.0);
    let mut seen = 0u64;
    for (i, c) in counts.iter().enumerate() {
        if *c == 0 {
            continue;
        }
        if (seen + c) as f64 >= rank {
            let lo = if i == 0 { 0 } else { after.upper_micros[i - 1] } as f64;
            let hi = after.upper_micros[i];
            let hi = if hi == u64::MAX { lo * 2.0 } else { hi as f64 };
            return Some(lo + (hi - lo) * (rank - seen as f64) / *c as f64);
        }
        seen += c;
    }
    None
}

// ------------------------------------------------------------- benchmarks

/// Copies (`cp -a`) the data directories of `c` (coordinator and hosts)
/// from `from` to `to`, replacing what `to` held.
fn copy_data_dirs(c: &Cluster, from: &Path, to: &Path) -> anyhow::Result<()> {
    let names: Vec<String> = std::iter::once("coordinator".to_string()).chain((0..c.opts.hosts).map(host_id)).collect();
    for name in names {
        let dst = to.join(&name);
        if dst.exists() {
            std::fs::remove_dir_all(&dst)?;
        }
        let ok = Command::new("cp").arg("-a").arg(from.join(&name)).arg(&dst).status()?.success();
        anyhow::ensure!(ok, "cp -a {} failed", from.join(&name).display());
    }
    Ok(())
}

/// The replay alone of one run, reported as it ends.
fn bench_replay_alone(o: &Opts, c: &Cluster, last: u64) -> anyhow::Result<Alone> {
    say(format!("replay: {} hosts replay {last} tids alone (no coordinator), all at once", o.hosts));
    settle_disk();
    let alone = replay_alone(c, last)?;
    let alone_rps = alone.records as f64 * 1e6 / alone.span_micros as f64;
    for (i, (records, rps)) in alone.per_host.iter().enumerate() {
        say(format!("  {}: {records} records, {rps:.0} records/s alone", host_id(i)));
    }
    say(format!("  together: {} records in {} -> {alone_rps:.0} records/s", alone.records, micros(alone.span_micros as f64)));
    Ok(alone)
}

/// The coordinated replay of one run, reported as it ends.
async fn bench_replay_coordinated(c: &mut Cluster, last: u64) -> anyhow::Result<Replayed> {
    say(format!("replay: restart the cluster; the coordinator drives the replay of {last} tids"));
    settle_disk();
    let r = replay_coordinated(c, last).await?;
    let coord_rps = r.stats.records as f64 * 1e6 / r.stats.micros.max(1) as f64;
    say(format!("  {} tids, {} records in {} -> {coord_rps:.0} records/s", r.stats.tids, r.stats.records, micros(r.stats.micros as f64)));
    Ok(r)
}

/// `bench_replay` `--replay-repeat` times on the same recording (restored
/// from a copy before each run after the first): one row per run, then the
/// goal's row over the runs' median. Alone and coordinated alternate (in
/// every other run the coordinated replay goes first), so both see the
/// same machine. Single runs scatter widely on the 2-core VM
/// (0.75-1.09x for one build, standard deviation 0.09 over 45 runs): three
/// CPU-bound hosts share two cores, and where the scheduler puts them
/// decides which host finishes first and how long a core then idles,
/// alike in both modes. The median of 5 still moved by about 0.05 from one
/// invocation to the next; of 11, by about a third less, and still by
/// ±0.05 on a noisier day (session 16: 0.83-0.95 over eight invocations
/// of one build), hence 41: a pair takes under a second.
async fn bench_replay_repeated(o: &Opts, c: &mut Cluster, last: u64, rows: &mut Vec<Row>) -> anyhow::Result<Replayed> {
    let snapshot = tempfile::tempdir()?;
    if o.replay_repeat > 1 {
        copy_data_dirs(c, c.dir.path(), snapshot.path())?;
    }
    let mut result = None;
    let mut runs: Vec<ReplayRun> = Vec::new();
    for run in 1..=o.replay_repeat {
        if run > 1 {
            stop_cluster(c).await.ok();
            copy_data_dirs(c, snapshot.path(), c.dir.path())?;
        }
        say(format!("replay run {run} of {}", o.replay_repeat));
        // Even runs replay coordinated first (needs the snapshot to restore
        // in between); the last run is an odd one when the count is odd.
        let coordinated_first = (run % 2 == 0 && o.replay_repeat > 1).then(|| snapshot.path());
        let (r, measured) = bench_replay(o, c, last, coordinated_first).await?;
        rows.push(row(
            &format!("replay run {run}: {last} tids × {} hosts, records/s (coordinated vs alone)", o.hosts),
            format!("{:.0}/s", measured.coordinated_rps),
            format!("{:.0}/s", measured.alone_rps),
            format!("{:.2}×", measured.ratio()),
            "(run)",
            None,
        ));
        runs.push(measured);
        result = Some(r);
    }
    let median = |f: &dyn Fn(&ReplayRun) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = median(&|r| r.ratio());
    let mut ratios: Vec<f64> = runs.iter().map(ReplayRun::ratio).collect();
    ratios.sort_by(f64::total_cmp);
    let (q1, q3) = (percentile(&ratios, 0.25), percentile(&ratios, 0.75));
    rows.push(row(
        &format!(
            "replay {last} tids × {} hosts, records/s (coordinated vs alone), median of {} runs (middle half {q1:.2}–{q3:.2}×)",
            o.hosts,
            runs.len()
        ),
        format!("{:.0}/s", median(&|r| r.coordinated_rps)),
        format!("{:.0}/s", median(&|r| r.alone_rps)),
        // Three decimals: at two, a median of 0.897 printed as "0.90×"
        // next to a goal of 0.9 marked missed.
        format!("{ratio:.3}×"),
        "≥ 0.9×",
        Some(ratio >= 0.9),
    ));
    rows.push(row(
        "replay, per tid (coordinated vs alone), medians",
        micros(median(&|r| r.coordinated_micros) / last as f64),
        micros(median(&|r| r.alone_micros) / last as f64),
        format!("{:.2}×", median(&|r| r.coordinated_micros / r.alone_micros)),
        "(info)",
        None,
    ));
    rows.push(row(
        "replay CPU, all processes (coordinated vs alone), medians",
        format!("{:.0} ms", median(&|r| r.coordinated_cpu_ms)),
        format!("{:.0} ms", median(&|r| r.alone_cpu_ms)),
        format!("{:.2}×", median(&|r| r.coordinated_cpu_ms / r.alone_cpu_ms)),
        "(info)",
        None,
    ));
    Ok(result.expect("at least one run"))
}

/// Writes every dirty page back before a measurement starts. A recording,
/// a restore of the data directories or the benchmark before leaves tens
/// of MiB dirty; the kernel writes them back whenever they expire (30 s
/// here), which lands under whichever measurement runs then and slows
/// every fdatasync in it.
fn settle_disk() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// One replay run's measurements.
struct ReplayRun {
    coordinated_rps: f64,
    alone_rps: f64,
    coordinated_micros: f64,
    alone_micros: f64,
    coordinated_cpu_ms: f64,
    alone_cpu_ms: f64,
}

impl ReplayRun {
    fn ratio(&self) -> f64 {
        self.coordinated_rps / self.alone_rps
    }
}

/// One run: the replay alone and the coordinated one on the same
/// recording. With `coordinated_first` (a snapshot of the recording to
/// restore in between), the coordinated replay goes first, so that
/// alternating runs cancel whatever the first side leaves the second (a
/// warm page cache, a busy disk).
async fn bench_replay(o: &Opts, c: &mut Cluster, last: u64, coordinated_first: Option<&Path>) -> anyhow::Result<(Replayed, ReplayRun)> {
    let (alone, r) = match coordinated_first {
        Some(snapshot) => {
            let r = bench_replay_coordinated(c, last).await?;
            stop_cluster(c).await.ok();
            copy_data_dirs(c, snapshot, c.dir.path())?;
            (bench_replay_alone(o, c, last)?, r)
        }
        None => {
            let alone = bench_replay_alone(o, c, last)?;
            (alone, bench_replay_coordinated(c, last).await?)
        }
    };
    let alone_rps = alone.records as f64 * 1e6 / alone.span_micros as f64;
    let coord_rps = r.stats.records as f64 * 1e6 / r.stats.micros.max(1) as f64;
    // CPU is steadier than wall time on a shared machine: compare it too.
    let ms = |v: &[u64]| v.iter().map(|u| format!("{:.0}", *u as f64 / 1000.0)).collect::<Vec<_>>().join("/");
    let alone_cpu: u64 = alone.cpu_micros.iter().sum();
    let mut coordinated_cpu = f64::NAN;
    match &r.cpu_micros {
        Some((coord, hosts)) => {
            coordinated_cpu = (coord + hosts.iter().sum::<u64>()) as f64 / 1000.0;
            say(format!(
                "  CPU during the replay: alone hosts {} ms (sum {:.0}); coordinated: coordinator {:.0} ms, hosts {} ms (sum {:.0}, {:.2}× alone)",
                ms(&alone.cpu_micros),
                alone_cpu as f64 / 1000.0,
                *coord as f64 / 1000.0,
                ms(hosts),
                coordinated_cpu,
                coordinated_cpu * 1000.0 / alone_cpu.max(1) as f64
            ))
        }
        None => say("  CPU during the replay: not sampled (no status showed Replaying)"),
    }
    if r.stats.records != alone.records {
        say(format!("  WARNING: records differ: coordinated {} vs alone {}", r.stats.records, alone.records));
    }
    let run = ReplayRun {
        coordinated_rps: coord_rps,
        alone_rps,
        coordinated_micros: r.stats.micros as f64,
        alone_micros: alone.span_micros as f64,
        coordinated_cpu_ms: coordinated_cpu,
        alone_cpu_ms: alone_cpu as f64 / 1000.0,
    };
    Ok((r, run))
}

async fn bench_live(o: &Opts, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    // In `all` the replay and memory benchmarks ran just before and left
    // tens of MiB dirty: written back now, not under the floor or the
    // commits measured here.
    settle_disk();
    let dir = tempfile::tempdir()?;
    say(format!("live: floor = loopback round trip + fdatasync in {}, {} samples", dir.path().display(), o.floor_samples));
    let floor_before = measure_floor(dir.path(), o.floor_samples)?;
    say(floor_line("before", &floor_before));
    let plain = live_run(o, None).await?;
    // The same cluster with mutual TLS on every connection, right after:
    // what encryption and the handshakes add to a commit (info; the goal is
    // judged on the plaintext run, against a plaintext floor).
    settle_disk();
    let certs = tempfile::tempdir()?;
    let ca = lockstep_tests::certs::TestCa::new(certs.path(), "bench");
    let tls = live_run(o, Some(ca.issue(certs.path(), "node"))).await?;
    // The disk is shared: measure the floor again once the clusters are
    // gone and compare against the lower of the two (the stricter goal).
    let floor_after = measure_floor(dir.path(), o.floor_samples)?;
    say(floor_line("after", &floor_after));
    let floor = if floor_after.sum_p50 < floor_before.sum_p50 { floor_after } else { floor_before };
    rows.push(row(
        &format!("live, empty steps, {} hosts: committed tids/s", o.hosts),
        format!("{:.0}/s", plain.tids_per_s),
        format!("commit interval {} ms", o.live_commit_interval_ms),
        "-".into(),
        "(info)",
        None,
    ));
    rows.push(row(
        "live commit latency p50 (Prepare sent → Commit sent) vs floor p50",
        micros(plain.p50),
        format!("{} (rtt {} + fdatasync {})", micros(floor.sum_p50), micros(floor.rtt_p50), micros(floor.sync_p50)),
        format!("{:.2}×", plain.p50 / floor.sum_p50),
        "≤ 3×",
        Some(plain.p50 <= 3.0 * floor.sum_p50),
    ));
    rows.push(row(
        "live commit latency p99 vs floor p99",
        micros(plain.p99),
        micros(floor.sum_p99),
        format!("{:.2}×", plain.p99 / floor.sum_p99),
        "(info)",
        None,
    ));
    rows.push(row(
        "live with mutual TLS: commit latency p50 / p99, tids/s (vs the plaintext run)",
        format!("{} / {}, {:.0}/s", micros(tls.p50), micros(tls.p99), tls.tids_per_s),
        format!("{} / {}, {:.0}/s", micros(plain.p50), micros(plain.p99), plain.tids_per_s),
        format!("{:.2}× p50", tls.p50 / plain.p50),
        "(info)",
        None,
    ));
    Ok(())
}

/// What one live run measured.
struct Live {
    tids_per_s: f64,
    p50: f64,
    p99: f64,
}

/// One live run: 1 coordinator + `o.hosts` hosts with empty steps, plaintext
/// or (`tls`) mutual TLS on every connection with these files.
async fn live_run(o: &Opts, tls: Option<lockstep_tests::certs::TlsFiles>) -> anyhow::Result<Live> {
    let how = if tls.is_some() { "mutual TLS" } else { "plaintext" };
    say(format!(
        "live ({how}): 1 coordinator + {} hosts, empty steps every {} ms, commit interval {} ms, {} s",
        o.hosts, o.live_step_interval_ms, o.live_commit_interval_ms, o.live_secs
    ));
    let opts = cluster_opts(o, o.live_commit_interval_ms, o.live_step_interval_ms, "bench-live");
    let empty_steps = |_: usize, args: &mut Vec<String>| args.extend(["--generator-batch-max".into(), "0".into()]);
    let c = match &tls {
        Some(files) => Cluster::start_tls(opts, files, |_| files.clone(), files.clone(), empty_steps),
        None => Cluster::start_with(opts, empty_steps),
    };
    c.wait_for("Running with 20 commits (warm-up)", Duration::from_secs(60), |s| {
        s.pipeline_state == "Running" && s.last_committed_tid >= 20
    })
    .await;
    let s0 = c.status().await?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.live_secs)).await;
    let s1 = c.status().await?;
    let secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(s1.pipeline_state == "Running", "live cluster left Running: {s1:?}\n{}", c.logs());
    drop(c);
    let tids = s1.last_committed_tid - s0.last_committed_tid;
    let (h0, h1) = (s0.commit_latency.unwrap_or_default(), s1.commit_latency.unwrap_or_default());
    let p50 = histogram_percentile(&h0, &h1, 0.5).unwrap_or(f64::NAN);
    let p99 = histogram_percentile(&h0, &h1, 0.99).unwrap_or(f64::NAN);
    let n = h1.total - h0.total;
    let mean = (h1.sum_micros - h0.sum_micros) as f64 / n.max(1) as f64;
    say(format!(
        "  {tids} commits in {secs:.1} s = {:.0} tids/s; latency p50 {} p99 {} mean {} ({n} timed)",
        tids as f64 / secs,
        micros(p50),
        micros(p99),
        micros(mean)
    ));
    let part = |h0: Option<pb::LatencyHistogram>, h1: Option<pb::LatencyHistogram>| {
        let (h0, h1) = (h0.unwrap_or_default(), h1.unwrap_or_default());
        let n = (h1.total - h0.total).max(1) as f64;
        let p = |q| histogram_percentile(&h0, &h1, q).map_or("-".to_string(), micros);
        format!("p50 {} p99 {} mean {}", p(0.5), p(0.99), micros((h1.sum_micros - h0.sum_micros) as f64 / n))
    };
    say(format!("  of which hosts (Prepare sent → last Prepared in): {}", part(s0.commit_prepare_latency.clone(), s1.commit_prepare_latency.clone())));
    say(format!("  of which ledger (commit proposed → Commit sent): {}", part(s0.commit_ledger_latency.clone(), s1.commit_ledger_latency.clone())));
    Ok(Live { tids_per_s: tids as f64 / secs, p50, p99 })
}

fn memory_rows(o: &Opts, short: (u64, &Replayed), long: (u64, &Replayed), rows: &mut Vec<Row>) {
    let (n, a) = short;
    let (m, b) = long;
    say(format!(
        "memory: peak RSS (VmHWM) coordinator {} -> {}, hosts (max) {} -> {}; sampled VmRSS max coordinator {} -> {}, hosts {} -> {}",
        mib(a.coordinator_peak_kib),
        mib(b.coordinator_peak_kib),
        mib(a.host_peak_kib),
        mib(b.host_peak_kib),
        mib(a.coordinator_sampled_kib),
        mib(b.coordinator_sampled_kib),
        mib(a.host_sampled_kib),
        mib(b.host_sampled_kib)
    ));
    let cr = b.coordinator_peak_kib as f64 / a.coordinator_peak_kib.max(1) as f64;
    let hr = b.host_peak_kib as f64 / a.host_peak_kib.max(1) as f64;
    rows.push(row(
        &format!("coordinator peak RSS replaying {m} vs {n} tids"),
        mib(b.coordinator_peak_kib),
        mib(a.coordinator_peak_kib),
        format!("{cr:.2}×"),
        "flat (≤ 1.2×)",
        Some(cr <= 1.2),
    ));
    rows.push(row(
        &format!("host peak RSS (max of {}) replaying {m} vs {n} tids", o.hosts),
        mib(b.host_peak_kib),
        mib(a.host_peak_kib),
        format!("{hr:.2}×"),
        "flat (≤ 1.2×)",
        Some(hr <= 1.2),
    ));
    rows.push(row(
        &format!("coordinator peak RSS, {} hosts, {m} tids", o.hosts),
        mib(b.coordinator_peak_kib),
        "64 MiB".into(),
        format!("{:.2}×", b.coordinator_peak_kib as f64 / (64.0 * 1024.0)),
        "< 64 MiB",
        Some(b.coordinator_peak_kib < 64 * 1024),
    ));
}

// --------------------------------------------- etcd baseline (3 members)

/// The etcd v3 API subset in `tests/proto/etcd_kv_subset.proto`.
mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}

const ETCD_HINT: &str = "etcd not found on PATH or at /usr/bin/etcd; install it with: sudo apt-get install -y etcd-server";

/// `etcd` on PATH, else Debian's `/usr/bin/etcd`. The bench installs nothing.
fn etcd_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("etcd")).find(|f| f.is_file()));
    on_path.or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()))
}

/// A gRPC channel that connects on first use and reconnects after the peer
/// restarted; every call is bounded, so a dead member never hangs a loop.
fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Three etcd members on loopback, each with its own data directory in a
/// temp dir, with etcd's defaults for everything that matters to the
/// measurement (WAL fsync on every commit, 100 ms heartbeat, 1 s election
/// timeout). Killed on drop (each member is a [`Proc`]).
struct EtcdCluster {
    _dir: tempfile::TempDir,
    members: Vec<Proc>,
    client_addrs: Vec<String>,
}

impl EtcdCluster {
    fn start(n: usize) -> anyhow::Result<EtcdCluster> {
        let bin = etcd_binary().ok_or_else(|| anyhow::anyhow!(ETCD_HINT))?;
        let dir = tempfile::tempdir()?;
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peer_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let name = |i: usize| format!("etcd-{}", i + 1);
        let initial_cluster =
            (0..n).map(|i| format!("{}=http://127.0.0.1:{}", name(i), peer_ports[i])).collect::<Vec<_>>().join(",");
        // A token per run, so members of an earlier run can never join this one.
        let token = format!("lockstep-bench-{}", std::process::id());
        let mut members = Vec::new();
        for i in 0..n {
            let client = format!("http://127.0.0.1:{}", client_ports[i]);
            let peer = format!("http://127.0.0.1:{}", peer_ports[i]);
            let args: Vec<String> = [
                "--name",
                &name(i),
                "--data-dir",
                &dir.path().join(name(i)).display().to_string(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-token",
                &token,
                "--initial-cluster-state",
                "new",
                // Logging only; etcd 3.4 otherwise warns that capnslog is deprecated.
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            members.push(Proc::spawn(&name(i), bin.clone(), args, dir.path().join(format!("{}.log", name(i)))));
        }
        let client_addrs = client_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        Ok(EtcdCluster { _dir: dir, members, client_addrs })
    }

    /// Waits (bounded) until every member answers Maintenance.Status and all
    /// name the same leader, one of them; returns the leader's index.
    async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        let clients: Vec<_> = self
            .client_addrs
            .iter()
            .map(|a| channel(a).map(etcdpb::maintenance_client::MaintenanceClient::new))
            .collect::<anyhow::Result<_>>()?;
        loop {
            let mut seen = Vec::new();
            for c in &clients {
                if let Ok(r) = c.clone().status(etcdpb::StatusRequest {}).await {
                    let r = r.into_inner();
                    seen.push((r.header.map(|h| h.member_id).unwrap_or(0), r.leader));
                }
            }
            if seen.len() == clients.len() && seen[0].1 != 0 && seen.iter().all(|(_, l)| *l == seen[0].1) {
                if let Some(i) = seen.iter().position(|(m, _)| *m == seen[0].1) {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("etcd cluster not healthy after {timeout:?}; members said {seen:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        self.members.iter().map(|m| format!("---- {} log ----\n{}", m.name, tail(&m.log(), 20))).collect::<Vec<_>>().join("\n")
    }
}

/// Puts per second and client-observed latency of one client doing
/// sequential puts (each waits for the previous answer).
struct PutRun {
    puts: u64,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
}

/// One client, sequential puts to the leader (no follower forwarding hop,
/// as the Lockstep hosts talk to the coordinator leader), 64-byte values
/// over 1024 keys, for at most `secs` seconds and `max` puts, after 100
/// warm-up puts. Checks that the store revision rose by exactly one per put.
async fn etcd_puts(addr: &str, secs: u64, max: u64) -> anyhow::Result<PutRun> {
    let kv = etcdpb::kv_client::KvClient::new(channel(addr)?);
    let value = vec![b'v'; 64];
    let put = |i: u64| {
        let req = etcdpb::PutRequest { key: format!("bench/{}", i % 1024).into_bytes(), value: value.clone(), ..Default::default() };
        let mut kv = kv.clone();
        async move { kv.put(req).await.map(|r| r.into_inner().header.map(|h| h.revision).unwrap_or(0)) }
    };
    let mut rev0 = 0;
    for i in 0..100 {
        rev0 = put(i).await?;
    }
    let (mut lat, mut rev) = (Vec::new(), rev0);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    while (lat.len() as u64) < max && Instant::now() < end {
        let t = Instant::now();
        rev = put(lat.len() as u64).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(rev - rev0 == lat.len() as i64, "etcd revision rose by {} for {} puts", rev - rev0, lat.len());
    lat.sort_by(f64::total_cmp);
    Ok(PutRun { puts: lat.len() as u64, secs, p50_us: percentile(&lat, 0.5), p99_us: percentile(&lat, 0.99) })
}

async fn bench_etcd(o: &Opts, rows: &mut Vec<Row>) -> anyhow::Result<PutRun> {
    // The baseline and `replicated` after it each start on a settled disk.
    settle_disk();
    say(format!("etcd: 3 members on loopback ({}), 1 client, sequential puts, {} s", etcd_binary().map(|p| p.display().to_string()).unwrap_or_default(), o.group_secs));
    let etcd = EtcdCluster::start(3)?;
    let leader = etcd.wait_healthy(Duration::from_secs(60)).await?;
    say(format!("  healthy; leader etcd-{}", leader + 1));
    let r = etcd_puts(&etcd.client_addrs[leader], o.group_secs, o.etcd_puts_max).await?;
    drop(etcd);
    say(format!("  {} puts in {:.1} s = {:.0} puts/s; latency p50 {} p99 {}", r.puts, r.secs, r.puts as f64 / r.secs, micros(r.p50_us), micros(r.p99_us)));
    rows.push(row(
        "etcd, 3 members, 1 client, sequential puts/s",
        format!("{:.0}/s", r.puts as f64 / r.secs),
        format!("put latency p50 {} p99 {}", micros(r.p50_us), micros(r.p99_us)),
        "-".into(),
        "(baseline)",
        None,
    ));
    Ok(r)
}

// ------------------------------------- replicated coordinator (raft group)

/// `--coordinators` `coordinator serve --peers …` processes on loopback
/// (raft node ids 1..=N) and `--group-hosts` host agents with empty steps
/// that list every coordinator and follow the leader's redirect: the test
/// harness's [`lockstep_tests::Group`], with one Admin channel per node kept
/// open (the kill benchmark polls every 2 ms) and errors instead of panics.
/// Killed on drop.
struct Group {
    group: lockstep_tests::Group,
    admins: Vec<AdminClient<Channel>>,
}

impl Group {
    fn start(o: &Opts, checkpoint_every_txns: u64, pipeline_depth: u64, commit_interval_ms: u64, cluster: &str) -> anyhow::Result<Group> {
        // Fail with a clear word if this build predates the replicated CLI.
        let help = Command::new(bin_dir().join("coordinator")).args(["serve", "--help"]).output()?;
        anyhow::ensure!(
            String::from_utf8_lossy(&help.stdout).contains("--peers"),
            "this coordinator build has no `serve --peers` (the replicated coordinator CLI); rebuild from a tree that has it"
        );
        let opts = ClusterOpts {
            hosts: o.group_hosts,
            commit_interval_ms,
            checkpoint_every_txns,
            report_deadline_ms: 10_000,
            generator_seed: 7,
            step_interval_ms: o.live_step_interval_ms,
            cluster_id: cluster.into(),
            pipeline_depth,
            coordinator_flags: Vec::new(),
        };
        let group = lockstep_tests::Group::start_with(o.coordinators, opts, |_, args| {
            args.extend(["--generator-batch-max".into(), "0".into()]);
        });
        let admins = group.addrs.iter().map(|a| channel(a).map(AdminClient::new)).collect::<anyhow::Result<_>>()?;
        Ok(Group { group, admins })
    }

    /// GetStatus of node index `i` (raft id i+1); None when it does not answer.
    async fn status(&self, i: usize) -> Option<pb::Status> {
        self.admins[i].clone().get_status(pb::GetStatusRequest {}).await.ok().map(|r| r.into_inner())
    }

    /// The node that says it leads (and answers from its own, not a stale, ledger).
    async fn leader(&self, skip: Option<usize>) -> Option<(usize, pb::Status)> {
        for i in (0..self.group.addrs.len()).filter(|i| Some(*i) != skip) {
            if let Some(s) = self.status(i).await.filter(|s| s.is_leader && !s.stale) {
                return Some((i, s));
            }
        }
        None
    }

    /// Polls until a leader's status satisfies `pred`, bounded by `timeout`.
    async fn wait_leader(&self, what: &str, timeout: Duration, pred: impl Fn(&pb::Status) -> bool) -> anyhow::Result<(usize, pb::Status)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((i, s)) = self.leader(None).await {
                anyhow::ensure!(s.pipeline_state != "Failed", "pipeline Failed on node {}: {}\n{}", i + 1, s.failure, self.logs());
                if pred(&s) {
                    return Ok((i, s));
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("timed out waiting for {what}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn logs(&self) -> String {
        format!("{}\n(logs in {})", self.group.logs(), self.group.dir.path().display())
    }
}

async fn bench_replicated(o: &Opts, etcd: Option<&PutRun>, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    settle_disk();
    say(format!(
        "replicated: {} coordinators (raft) + {} hosts, empty steps every {} ms, commit interval {} ms, {} s",
        o.coordinators, o.group_hosts, o.live_step_interval_ms, o.group_commit_interval_ms, o.group_secs
    ));
    let g = Group::start(o, 0, o.pipeline_depth, o.group_commit_interval_ms, "bench-replicated")?;
    let (li, s0) = g
        .wait_leader("a leader, Running with 20 commits (warm-up)", Duration::from_secs(60), |s| {
            s.pipeline_state == "Running" && s.last_committed_tid >= 20
        })
        .await?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.group_secs)).await;
    let s1 = g.status(li).await.ok_or_else(|| anyhow::anyhow!("leader node {} stopped answering\n{}", li + 1, g.logs()))?;
    let secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(s1.is_leader && s1.pipeline_state == "Running", "node {} lost the lead or left Running during the run: {s1:?}\n{}", li + 1, g.logs());
    drop(g);
    let tids = s1.last_committed_tid - s0.last_committed_tid;
    let rate = tids as f64 / secs;
    let (h0, h1) = (s0.commit_latency.unwrap_or_default(), s1.commit_latency.unwrap_or_default());
    let p50 = histogram_percentile(&h0, &h1, 0.5).unwrap_or(f64::NAN);
    let p99 = histogram_percentile(&h0, &h1, 0.99).unwrap_or(f64::NAN);
    say(format!("  leader node {}: {tids} commits in {secs:.1} s = {rate:.0} tids/s; commit latency p50 {} p99 {}", li + 1, micros(p50), micros(p99)));
    let what = format!("replicated, {} coordinators + {} hosts, empty steps: committed tids/s vs etcd puts/s", o.coordinators, o.group_hosts);
    match etcd {
        Some(e) => {
            let base = e.puts as f64 / e.secs;
            rows.push(row(&what, format!("{rate:.0}/s"), format!("{base:.0}/s"), format!("{:.2}×", rate / base), "≥ 2×", Some(rate >= 2.0 * base)));
        }
        None => rows.push(row(&what, format!("{rate:.0}/s"), "no etcd (not installed)".into(), "-".into(), "≥ 2×", None)),
    }
    rows.push(row(
        "replicated commit latency p50 / p99 (Prepare sent → Commit sent, raft commit included)",
        format!("{} / {}", micros(p50), micros(p99)),
        etcd.map(|e| format!("etcd put {} / {}", micros(e.p50_us), micros(e.p99_us))).unwrap_or_else(|| "-".into()),
        "-".into(),
        "(info)",
        None,
    ));
    Ok(())
}

/// Kills (SIGKILL) the leader `--kills` times and times each kill to the
/// first commit that the new leader drove itself; restarts the killed node
/// and waits for it to catch up before the next kill.
async fn bench_leader_kill(o: &Opts, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    say(format!(
        "leader-kill: {} coordinators + {} hosts, {} × kill -9 the leader, time to the next commit on the new leader",
        o.coordinators, o.group_hosts, o.kills
    ));
    // Checkpoints bound what a new leader may have to replay, so the 20th
    // kill measures the same thing as the first.
    // One tid at a time: with a pipeline, a leader kill always finds tids
    // prepared and awaiting their commit, and recovery replays.
    let mut g = Group::start(o, o.kill_checkpoint_every_txns, 1, o.live_commit_interval_ms, "bench-leader-kill")?;
    let step = Duration::from_secs(60);
    // Per kill: kill -> a survivor leads; -> it has every host connected
    // again; -> it shows a commit of its own (the measured one).
    let (mut elected, mut reconnected, mut committed) = (Vec::new(), Vec::new(), Vec::new());
    for k in 1..=o.kills {
        let (li, _) = g.wait_leader("a leader, Running", step, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 5).await?;
        // Read the leader's last commit as late as possible before the kill.
        // The coordinator runs one transaction at a time, so the killed
        // leader's log can hold at most one commit (L+1) that a survivor
        // then only learns is committed; L+2 is the first commit the new
        // leader drove itself. (Overshoot: at most one transaction, ~ms.)
        let before = g.status(li).await.ok_or_else(|| anyhow::anyhow!("leader stopped answering"))?;
        let t0 = Instant::now();
        g.group.nodes[li].kill();
        let target = before.last_committed_tid + 2;
        let deadline = t0 + step;
        let (mut elected_at, mut reconnected_at) = (None, None);
        let new_leader = loop {
            if let Some((ni, s)) = g.leader(Some(li)).await {
                elected_at.get_or_insert_with(|| t0.elapsed());
                if !s.hosts.is_empty() && s.hosts.iter().all(|h| h.connected) {
                    reconnected_at.get_or_insert_with(|| t0.elapsed());
                }
                anyhow::ensure!(s.pipeline_state != "Failed", "kill {k}: pipeline Failed on node {}: {}\n{}", ni + 1, s.failure, g.logs());
                if s.last_committed_tid >= target {
                    committed.push(t0.elapsed().as_secs_f64() * 1e6);
                    break (ni, s);
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("kill {k}: no commit past tid {} within {step:?} of killing node {}\n{}", target - 1, li + 1, g.logs());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        elected.push(elected_at.unwrap_or_default().as_secs_f64() * 1e6);
        // A commit needs every host, so they were all back by then even if
        // no poll saw it before the commit.
        reconnected.push(reconnected_at.map(|d| d.as_secs_f64() * 1e6).unwrap_or(*committed.last().unwrap()));
        say(format!(
            "  kill {k}: node {} killed at tid {}; node {} leads after {}, hosts all back after {}, committed tid {} after {}",
            li + 1,
            before.last_committed_tid,
            new_leader.0 + 1,
            micros(*elected.last().unwrap()),
            micros(*reconnected.last().unwrap()),
            new_leader.1.last_committed_tid,
            micros(*committed.last().unwrap())
        ));
        // Bring the killed node back on its data dir and let it catch up to
        // where the new leader is now before the next kill, so every kill
        // leaves a full majority of up-to-date members.
        g.group.nodes[li].start();
        let caught_up_to = new_leader.1.last_committed_tid;
        let deadline = Instant::now() + step;
        loop {
            if let Some(s) = g.status(li).await {
                if s.leader_id != 0 && s.last_committed_tid >= caught_up_to {
                    break;
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("kill {k}: restarted node {} did not catch up to tid {caught_up_to}\n{}", li + 1, g.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(g);
    for v in [&mut elected, &mut reconnected, &mut committed] {
        v.sort_by(f64::total_cmp);
    }
    let (p50, p99) = (percentile(&committed, 0.5), percentile(&committed, 0.99));
    say(format!(
        "  kill -> next commit: p50 {} p99 {} (min {} max {}); kill -> new leader: p50 {} p99 {}; kill -> hosts back: p50 {} p99 {}",
        micros(p50),
        micros(p99),
        micros(committed[0]),
        micros(*committed.last().unwrap()),
        micros(percentile(&elected, 0.5)),
        micros(percentile(&elected, 0.99)),
        micros(percentile(&reconnected, 0.5)),
        micros(percentile(&reconnected, 0.99))
    ));
    rows.push(row(
        &format!("leader kill → next commit on the new leader, p50 over {} kills", o.kills),
        micros(p50),
        "300 ms".into(),
        format!("{:.2}×", p50 / 300_000.0),
        "< 300 ms",
        Some(p50 < 300_000.0),
    ));
    rows.push(row(
        &format!("leader kill → next commit, p99 over {} kills", o.kills),
        micros(p99),
        format!(
            "kill → new leader p50 {} p99 {}; → hosts back p50 {} p99 {}",
            micros(percentile(&elected, 0.5)),
            micros(percentile(&elected, 0.99)),
            micros(percentile(&reconnected, 0.5)),
            micros(percentile(&reconnected, 0.99))
        ),
        "-".into(),
        "(info)",
        None,
    ));
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| benchmark | measured | baseline | ratio | goal | met |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        println!("| {} | {} | {} | {} | {} | {} |", r.what, r.measured, r.baseline, r.ratio, r.goal, met);
    }
}

async fn run(what: &str, o: &Opts) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    say(format!("building the daemons (release) in {}", bin_dir().display()));
    let all = what == "all";
    let (do_replay, do_live, do_memory) = (all || what == "replay", all || what == "live", all || what == "memory");
    let (do_etcd, do_replicated, do_kill) =
        (all || what == "etcd" || what == "replicated", all || what == "replicated", all || what == "leader-kill");
    let long_tids = o.memory_tids * o.memory_factor;
    // `all` replays the memory benchmark's long journal for the replay ratio.
    let replay_tids = if do_memory { long_tids } else { o.replay_tids };
    let mut long = None;
    if do_replay || do_memory {
        say(format!("recording {replay_tids} tids"));
        let (mut c, last) = record(o, replay_tids, "bench-long").await?;
        let r = if do_replay {
            bench_replay_repeated(o, &mut c, last, &mut rows).await?
        } else {
            replay_coordinated(&mut c, last).await?
        };
        long = Some((last, r));
    }
    if do_memory {
        say(format!("memory: recording the short journal, {} tids", o.memory_tids));
        let (mut c, last) = record(o, o.memory_tids, "bench-short").await?;
        let short = replay_coordinated(&mut c, last).await?;
        drop(c);
        let (long_last, long) = long.as_ref().expect("recorded above");
        memory_rows(o, (last, &short), (*long_last, long), &mut rows);
    }
    if do_live {
        bench_live(o, &mut rows).await?;
    }
    // The baseline of `replicated`, in the same run. Without etcd, `all`
    // still reports the rest (and says why the ratio is missing).
    let mut etcd = None;
    if do_etcd {
        match bench_etcd(o, &mut rows).await {
            Ok(r) => etcd = Some(r),
            Err(e) if all && etcd_binary().is_none() => say(format!("etcd: SKIPPED: {e}")),
            Err(e) => return Err(e),
        }
    }
    if do_replicated {
        bench_replicated(o, etcd.as_ref(), &mut rows).await?;
    }
    if do_kill {
        bench_leader_kill(o, &mut rows).await?;
    }
    Ok(rows)
}

#[tokio::main]
async fn main() {
    let (what, opts) = match parse_args() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    say(format!("{what} with {opts:?}"));
    match run(&what, &opts).await {
        Ok(rows) => print_table(&rows),
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            std::process::exit(1);
        }
    }
}
