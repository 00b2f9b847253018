//! `GET /metrics`: the server's Prometheus metrics (OpenMetrics text, which Prometheus
//! reads natively). Task counts are updated as tasks end; pool gauges are read from
//! [`Pool::status`](procpool::Pool::status) at each scrape.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::report::Status;

/// The content type of [`Metrics::encode`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    status: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// What the pool looked like at a scrape.
pub(crate) struct PoolGauges {
    pub(crate) pending: usize,
    pub(crate) running: usize,
    pub(crate) status: procpool::pool::PoolStatus,
    /// Worker processes started after the pool came up.
    pub(crate) restarts: u64,
}

pub(crate) struct Metrics {
    registry: Registry,
    submitted: Counter,
    deduplicated: Counter,
    ended: Family<EndLabels, Counter>,
    active: Family<StatusLabel, Gauge>,
    workers: Family<StateLabel, Gauge>,
    queued: Gauge,
    retrying: Gauge,
    healthy: Gauge,
    worker_starts: Counter,
    worker_restarts: Counter,
    duration: Histogram,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("procpool");
        let m = Metrics {
            registry: Registry::default(),
            submitted: Counter::default(),
            deduplicated: Counter::default(),
            ended: Family::default(),
            active: Family::default(),
            workers: Family::default(),
            queued: Gauge::default(),
            retrying: Gauge::default(),
            healthy: Gauge::default(),
            worker_starts: Counter::default(),
            worker_restarts: Counter::default(),
            // 1 ms to about 65 s.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        };
        // Metrics are cheap handles on shared values: the registry gets clones, and the
        // struct keeps the originals to update.
        registry.register(
            "tasks_submitted",
            "Tasks accepted by POST /v1/tasks (submissions that joined a running task with its cache key included)",
            m.submitted.clone(),
        );
        registry.register(
            "tasks_deduplicated",
            "Submissions that joined a running task with the same cache key instead of running again",
            m.deduplicated.clone(),
        );
        registry.register(
            "tasks_ended",
            "Tasks ended, by status (completed, failed, cancelled) and error kind (none when completed)",
            m.ended.clone(),
        );
        registry.register(
            "tasks_active",
            "Tasks accepted and not ended, by status (pending: none of its tasks on a worker yet)",
            m.active.clone(),
        );
        registry.register(
            "workers",
            "Worker processes by state (starting, idle, busy)",
            m.workers.clone(),
        );
        registry.register(
            "queue_depth",
            "Tasks queued in the pool, waiting for a worker",
            m.queued.clone(),
        );
        registry.register(
            "tasks_retrying",
            "Failed tasks waiting out their backoff before another attempt",
            m.retrying.clone(),
        );
        registry.register(
            "pool_healthy",
            "1 while workers can be started, 0 while the pool is unhealthy",
            m.healthy.clone(),
        );
        registry.register(
            "worker_starts",
            "Worker processes started since the server started, the initial ones included",
            m.worker_starts.clone(),
        );
        registry.register(
            "worker_restarts",
            "Worker processes started after the pool came up: replacements of crashed, killed, timed-out or recycled workers, and on-demand starts",
            m.worker_restarts.clone(),
        );
        registry.register(
            "task_duration_seconds",
            "Time from a task's acceptance to its end, queueing included",
            m.duration.clone(),
        );
        Metrics { registry, ..m }
    }

    pub(crate) fn submitted(&self, deduplicated: bool) {
        self.submitted.inc();
        if deduplicated {
            self.deduplicated.inc();
        }
    }

    pub(crate) fn ended(&self, status: Status, kind: &str, took: Duration) {
        self.ended
            .get_or_create(&EndLabels {
                status: status.as_str().to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// The text of a scrape, with the gauges set from `now`.
    pub(crate) fn encode(&self, now: PoolGauges) -> String {
        let gauge = |family: &Family<StatusLabel, Gauge>, status: &str, v: usize| {
            family
                .get_or_create(&StatusLabel {
                    status: status.to_owned(),
                })
                .set(v as i64);
        };
        gauge(&self.active, "pending", now.pending);
        gauge(&self.active, "running", now.running);
        let st = &now.status;
        for (state, n) in [
            ("starting", st.starting),
            ("idle", st.idle),
            ("busy", st.busy),
        ] {
            self.workers
                .get_or_create(&StateLabel {
                    state: state.to_owned(),
                })
                .set(n as i64);
        }
        self.queued.set(st.queued as i64);
        self.retrying.set(st.retrying as i64);
        self.healthy.set(i64::from(st.unhealthy.is_none()));
        // Totals kept by the pool: stored as they are (they only grow).
        self.worker_starts
            .inner()
            .store(st.worker_starts, Ordering::Relaxed);
        self.worker_restarts
            .inner()
            .store(now.restarts, Ordering::Relaxed);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
