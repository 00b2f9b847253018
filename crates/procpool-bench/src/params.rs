//! What is measured: the groups of metrics, their units, and the sizes of one sample.

use serde::Serialize;

/// One kind of measurement. A group yields one or more metrics per sample (a cancel gives
/// both the time to the resolved future and the time to a ready replacement).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    Rtt,
    TputStrict,
    TputWindow,
    SpawnReady,
    FreshProcess,
    Cancel,
    Crash,
    Blob,
    IdleRss,
    Queued,
    /// The `procpool run` command line over a job file of no-op jobs, records to a file.
    CliJobs,
    /// The `procpool run` command line, one job at a time through pipes.
    CliRtt,
    /// Broker mode: one no-op task at a time, submit -> result in the submitter.
    BrokerRtt,
    /// Broker mode: many no-op tasks submitted at once, every result collected.
    BrokerTput,
    /// Broker mode: SIGKILL of the agent running a long task -> it starts elsewhere.
    RequeueAfterKill,
}

impl Group {
    /// The groups of a run without `--broker`: the local pool against its floors and peers.
    pub const LOCAL: [Group; 12] = [
        Group::Rtt,
        Group::TputStrict,
        Group::TputWindow,
        Group::SpawnReady,
        Group::FreshProcess,
        Group::Cancel,
        Group::Crash,
        Group::Blob,
        Group::IdleRss,
        Group::Queued,
        Group::CliJobs,
        Group::CliRtt,
    ];

    /// The groups of `--broker`: the local pool's round trip and strict throughput for
    /// the ratios, then the broker set.
    pub const BROKER: [Group; 5] = [
        Group::Rtt,
        Group::TputStrict,
        Group::BrokerRtt,
        Group::BrokerTput,
        Group::RequeueAfterKill,
    ];

    /// Every group once, in table order: the local set, then the broker's own groups.
    pub fn all() -> impl Iterator<Item = Group> {
        Group::LOCAL
            .into_iter()
            .chain(Group::BROKER.into_iter().filter(|g| g.is_broker()))
    }

    /// Whether this group measures the `procpool` command line (only procpool has one).
    pub fn is_cli(self) -> bool {
        matches!(self, Group::CliJobs | Group::CliRtt)
    }

    /// Whether this group measures a broker (the local systems have no such feature).
    pub fn is_broker(self) -> bool {
        matches!(
            self,
            Group::BrokerRtt | Group::BrokerTput | Group::RequeueAfterKill
        )
    }

    /// The name peers are called with.
    pub fn name(self) -> &'static str {
        match self {
            Group::Rtt => "rtt",
            Group::TputStrict => "tput_strict",
            Group::TputWindow => "tput_window",
            Group::SpawnReady => "spawn_ready",
            Group::FreshProcess => "fresh_process",
            Group::Cancel => "cancel",
            Group::Crash => "crash",
            Group::Blob => "blob",
            Group::IdleRss => "idle_rss",
            Group::Queued => "queued",
            Group::CliJobs => "cli_jobs",
            Group::CliRtt => "cli_rtt",
            Group::BrokerRtt => "broker_rtt",
            Group::BrokerTput => "broker_tput",
            Group::RequeueAfterKill => "requeue_after_kill",
        }
    }

    /// The metrics one sample of this group yields.
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Group::Rtt => &["rtt_us"],
            Group::TputStrict => &["tput_strict_per_s"],
            Group::TputWindow => &["tput_window_per_s"],
            Group::SpawnReady => &["spawn_ready_ms"],
            Group::FreshProcess => &["fresh_process_per_s"],
            Group::Cancel => &["cancel_resolve_ms", "cancel_replace_ms"],
            Group::Crash => &["crash_detect_ms"],
            Group::Blob => &["blob_mb_per_s"],
            Group::IdleRss => &["idle_worker_rss_mb"],
            Group::Queued => &["queued_task_bytes"],
            Group::CliJobs => &["cli_jobs_per_s"],
            Group::CliRtt => &["cli_rtt_us"],
            Group::BrokerRtt => &["broker_rtt_us"],
            Group::BrokerTput => &["broker_tput_per_s"],
            Group::RequeueAfterKill => &["requeue_after_kill_ms"],
        }
    }

    /// Accepts a group name or the name of one of its metrics.
    pub fn parse(s: &str) -> Option<Group> {
        Group::all().find(|g| g.name() == s || g.metrics().contains(&s))
    }
}

/// Every metric in table order.
pub fn all_metrics() -> Vec<&'static str> {
    Group::all()
        .flat_map(|g| g.metrics().iter().copied())
        .collect()
}

/// Whether a larger value is better (throughputs) or worse (times, memory).
pub fn higher_is_better(metric: &str) -> bool {
    metric.ends_with("_per_s")
}

/// How big one sample is. Every system gets the same sizes, except where noted in
/// [`Params::for_system`].
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    /// Round trips per `rtt` sample (their mean is the sample).
    pub rtt_n: u64,
    /// No-op tasks per `tput_strict` sample.
    pub tput_n: u64,
    /// No-op tasks per `tput_window` sample.
    pub window_n: u64,
    /// Tasks in flight per worker in `tput_window` (procpool: `prefetch(window - 1)`).
    pub window: u64,
    /// Cold starts per `spawn_ready` sample.
    pub spawn_k: u64,
    /// Tasks (= processes) per `fresh_process` sample.
    pub fresh_n: u64,
    /// Cancels per `cancel` sample.
    pub cancel_k: u64,
    /// Crashes per `crash` sample.
    pub crash_k: u64,
    /// Size of one blob result.
    pub blob_bytes: u64,
    /// Blobs per `blob` sample.
    pub blob_k: u64,
    /// Tasks queued behind busy workers in `queued`.
    pub queued_n: u64,
    /// Jobs in the job file of a `cli_jobs` sample.
    pub cli_jobs: u64,
    /// Round trips per `broker_rtt` sample.
    pub broker_rtt_n: u64,
    /// No-op tasks submitted at once per `broker_tput` sample.
    pub broker_tput_n: u64,
    /// Agent kills per `requeue_after_kill` sample.
    pub requeue_k: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scale {
    /// The documented run.
    Full,
    /// `--quick`: the whole set in well under a minute.
    Quick,
    /// For the smoke test: seconds, in a debug build.
    Tiny,
}

impl Params {
    pub fn new(scale: Scale) -> Params {
        match scale {
            Scale::Full => Params {
                rtt_n: 5_000,
                tput_n: 20_000,
                window_n: 200_000,
                window: 32,
                spawn_k: 5,
                fresh_n: 300,
                cancel_k: 10,
                crash_k: 10,
                blob_bytes: 10 << 20,
                blob_k: 20,
                queued_n: 1_000_000,
                cli_jobs: 200_000,
                broker_rtt_n: 2_000,
                broker_tput_n: 10_000,
                requeue_k: 2,
            },
            Scale::Quick => Params {
                rtt_n: 1_000,
                tput_n: 10_000,
                window_n: 30_000,
                window: 32,
                spawn_k: 3,
                fresh_n: 60,
                cancel_k: 5,
                crash_k: 5,
                blob_bytes: 10 << 20,
                blob_k: 5,
                // As in the full run: the figure is defined with a million queued.
                queued_n: 1_000_000,
                cli_jobs: 50_000,
                broker_rtt_n: 300,
                broker_tput_n: 3_000,
                requeue_k: 1,
            },
            Scale::Tiny => Params {
                rtt_n: 50,
                tput_n: 400,
                window_n: 2_000,
                window: 8,
                spawn_k: 1,
                fresh_n: 4,
                cancel_k: 1,
                crash_k: 1,
                blob_bytes: 1 << 20,
                blob_k: 1,
                queued_n: 5_000,
                cli_jobs: 1_000,
                broker_rtt_n: 20,
                broker_tput_n: 200,
                requeue_k: 1,
            },
        }
    }

    /// Python's pool runs a few thousand tasks a second: in a quick run its counts shrink
    /// so the whole set fits in a minute (its figures are rates and means, so only their
    /// precision suffers).
    pub fn for_system(&self, system: &str, scale: Scale) -> Params {
        let mut p = self.clone();
        if system == "python_ppe" && scale == Scale::Quick {
            p.rtt_n = 200;
            p.tput_n = 1_500;
            p.window_n = 2_000;
            p.fresh_n = 12;
            p.blob_k = 3;
            p.queued_n = 20_000;
        }
        // Celery runs a few hundred tasks a second: fewer per sample, same definitions.
        if system == "celery" {
            p.broker_rtt_n = p
                .broker_rtt_n
                .min(if scale == Scale::Full { 500 } else { 100 });
            p.broker_tput_n = p
                .broker_tput_n
                .min(if scale == Scale::Full { 10_000 } else { 600 });
        }
        if system == "python_ppe" && scale == Scale::Full {
            p.window_n = 20_000;
            p.fresh_n = 60;
            p.queued_n = 200_000;
        }
        p
    }
}
