//! Samples in, the table, the ratios against the targets and the JSON document out.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::params::{all_metrics, higher_is_better};

/// Every sample of the run, by metric and system, aligned on the repetition so that
/// same-repetition ratios can be taken.
#[derive(Default)]
pub struct Results {
    pub reps: usize,
    pub systems: Vec<String>,
    samples: BTreeMap<(String, String), Vec<Option<f64>>>,
    unsupported: BTreeMap<(String, String), String>,
    pub notes: Vec<String>,
}

pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

fn stat(values: &[f64]) -> Option<Stat> {
    if values.is_empty() {
        return None;
    }
    Some(Stat {
        median: crate::median(values.to_vec()),
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// A figure with three significant digits, thousands as `k` and millions as `M`.
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if a >= 1e3 {
        format!("{:.2}k", x / 1e3)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// One target: of issue 5 for the local pool, of issue 13 for the broker mode.
struct Target {
    /// The system the target is about.
    subject: &'static str,
    metric: &'static str,
    /// Compared with another system's same-repetition figure, or absolute.
    against: Option<&'static str>,
    /// The other system's metric when it is not `metric` (the broker's throughput against
    /// the local pool's strict throughput).
    against_metric: Option<&'static str>,
    /// The bound on the ratio (or on the value when absolute).
    bound: f64,
    /// `true`: the ratio or value must be at most `bound`; `false`: at least.
    at_most: bool,
    goal: &'static str,
}

/// The fields most targets share: about the local pool, against the same metric.
const LOCAL: Target = Target {
    subject: "procpool",
    metric: "",
    against: None,
    against_metric: None,
    bound: 0.0,
    at_most: true,
    goal: "",
};

const TARGETS: &[Target] = &[
    Target {
        metric: "rtt_us",
        against: Some("floor_tokio"),
        bound: 1.5,
        at_most: true,
        goal: "<= 1.5x floor_tokio",
        ..LOCAL
    },
    Target {
        metric: "rtt_us",
        against: Some("procspawn"),
        bound: 1.0 / 3.0,
        at_most: true,
        goal: "<= 1/3 of procspawn",
        ..LOCAL
    },
    Target {
        metric: "tput_strict_per_s",
        against: Some("floor_tokio"),
        bound: 0.7,
        at_most: false,
        goal: ">= 70% of floor_tokio",
        ..LOCAL
    },
    Target {
        metric: "tput_strict_per_s",
        against: Some("procspawn"),
        bound: 4.0,
        at_most: false,
        goal: ">= 4x procspawn",
        ..LOCAL
    },
    Target {
        metric: "tput_window_per_s",
        against: None,
        bound: 500_000.0,
        at_most: false,
        goal: ">= 500k/s",
        ..LOCAL
    },
    Target {
        metric: "spawn_ready_ms",
        against: None,
        bound: 1.5,
        at_most: true,
        goal: "<= 1.5 ms",
        ..LOCAL
    },
    Target {
        metric: "fresh_process_per_s",
        against: None,
        bound: 1000.0,
        at_most: false,
        goal: ">= 1000/s",
        ..LOCAL
    },
    Target {
        metric: "cancel_resolve_ms",
        against: None,
        bound: 0.5,
        at_most: true,
        goal: "<= 0.5 ms",
        ..LOCAL
    },
    Target {
        metric: "cancel_replace_ms",
        against: None,
        bound: 2.0,
        at_most: true,
        goal: "<= 2 ms",
        ..LOCAL
    },
    Target {
        metric: "crash_detect_ms",
        against: None,
        bound: 1.0,
        at_most: true,
        goal: "<= 1 ms",
        ..LOCAL
    },
    Target {
        metric: "blob_mb_per_s",
        against: Some("floor_pipe"),
        bound: 0.5,
        at_most: false,
        goal: ">= 50% of the raw-frame floor (floor_pipe)",
        ..LOCAL
    },
    Target {
        metric: "blob_mb_per_s",
        against: Some("procspawn"),
        bound: 2.0,
        at_most: false,
        goal: ">= 2x procspawn",
        ..LOCAL
    },
    Target {
        metric: "idle_worker_rss_mb",
        against: None,
        bound: 5.0,
        at_most: true,
        goal: "<= 5 MiB",
        ..LOCAL
    },
    Target {
        metric: "queued_task_bytes",
        against: None,
        bound: 1024.0,
        at_most: true,
        goal: "<= 1024 B",
        ..LOCAL
    },
    // Issue 16: the command line at library speed, the window and spawning against
    // the framed floor.
    Target {
        metric: "cli_jobs_per_s",
        against: Some("procpool"),
        against_metric: Some("tput_window_per_s"),
        bound: 0.5,
        at_most: false,
        goal: ">= 50% of procpool's tput_window_per_s",
        ..LOCAL
    },
    Target {
        metric: "tput_window_per_s",
        against: Some("floor_tokio"),
        bound: 0.5,
        at_most: false,
        goal: ">= 50% of floor_tokio",
        ..LOCAL
    },
    Target {
        metric: "spawn_ready_ms",
        against: Some("floor_tokio"),
        bound: 1.2,
        at_most: true,
        goal: "<= 1.2x floor_tokio",
        ..LOCAL
    },
    Target {
        metric: "fresh_process_per_s",
        against: Some("floor_tokio"),
        bound: 0.85,
        at_most: false,
        goal: ">= 85% of floor_tokio",
        ..LOCAL
    },
    Target {
        subject: "procpool_broker",
        metric: "broker_rtt_us",
        against: Some("celery"),
        bound: 0.2,
        at_most: true,
        goal: "<= 1/5 of celery",
        ..LOCAL
    },
    Target {
        subject: "procpool_broker",
        metric: "broker_tput_per_s",
        against: Some("celery"),
        bound: 5.0,
        at_most: false,
        goal: ">= 5x celery",
        ..LOCAL
    },
    Target {
        subject: "procpool_broker",
        metric: "broker_tput_per_s",
        against: Some("procpool"),
        against_metric: Some("tput_strict_per_s"),
        bound: 0.25,
        at_most: false,
        goal: ">= 25% of procpool's tput_strict_per_s",
    },
    Target {
        subject: "procpool_broker",
        metric: "requeue_after_kill_ms",
        against: None,
        bound: 5000.0,
        at_most: true,
        goal: "<= 5000 ms",
        ..LOCAL
    },
];

/// The local pool: the subject of the start/build comparison.
const SUBJECT: &str = "procpool";

impl Results {
    pub fn new(systems: Vec<String>, reps: usize) -> Results {
        Results {
            reps,
            systems,
            ..Default::default()
        }
    }

    pub fn add(&mut self, metric: &str, system: &str, rep: usize, value: f64) {
        let v = self
            .samples
            .entry((metric.to_owned(), system.to_owned()))
            .or_insert_with(|| vec![None; self.reps]);
        v[rep] = Some(value);
    }

    /// A sample that failed: the metric still gets its row.
    pub fn mark_failed(&mut self, metric: &str, system: &str) {
        self.samples
            .entry((metric.to_owned(), system.to_owned()))
            .or_insert_with(|| vec![None; self.reps]);
    }

    pub fn set_unsupported(&mut self, metric: &str, system: &str, why: &str) {
        self.unsupported
            .insert((metric.to_owned(), system.to_owned()), why.to_owned());
    }

    fn values(&self, metric: &str, system: &str) -> Vec<f64> {
        self.samples
            .get(&(metric.to_owned(), system.to_owned()))
            .map(|v| v.iter().flatten().copied().collect())
            .unwrap_or_default()
    }

    pub fn stat(&self, metric: &str, system: &str) -> Option<Stat> {
        stat(&self.values(metric, system))
    }

    /// Ratios of `a` to `b` taken within each repetition.
    fn paired(&self, metric: &str, a: &str, b: &str) -> Option<Stat> {
        self.paired_across(metric, a, metric, b)
    }

    /// Ratios of `a`'s `metric_a` to `b`'s `metric_b` taken within each repetition.
    fn paired_across(&self, metric_a: &str, a: &str, metric_b: &str, b: &str) -> Option<Stat> {
        let (va, vb) = (
            self.samples.get(&(metric_a.to_owned(), a.to_owned()))?,
            self.samples.get(&(metric_b.to_owned(), b.to_owned()))?,
        );
        let ratios: Vec<f64> = va
            .iter()
            .zip(vb)
            .filter_map(|(x, y)| Some(x.as_ref()? / y.as_ref()?))
            .filter(|r| r.is_finite())
            .collect();
        stat(&ratios)
    }

    fn metrics_present(&self) -> Vec<&'static str> {
        all_metrics()
            .into_iter()
            .filter(|m| {
                self.systems.iter().any(|s| {
                    let k = (m.to_string(), s.clone());
                    self.samples.contains_key(&k) || self.unsupported.contains_key(&k)
                })
            })
            .collect()
    }

    /// The human table: systems as columns, metrics as rows, median [min–max].
    pub fn table(&self) -> String {
        let metrics = self.metrics_present();
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut header = vec!["metric".to_owned()];
        header.extend(self.systems.iter().cloned());
        rows.push(header);
        for m in &metrics {
            let mut row = vec![m.to_string()];
            for s in &self.systems {
                let k = (m.to_string(), s.clone());
                row.push(match self.stat(m, s) {
                    Some(st) => format!(
                        "{} [{}–{}]",
                        fmt_num(st.median),
                        fmt_num(st.min),
                        fmt_num(st.max)
                    ),
                    None if self.unsupported.contains_key(&k) => "—".to_owned(),
                    None if self.samples.contains_key(&k) => "failed".to_owned(),
                    None => "".to_owned(),
                });
            }
            rows.push(row);
        }
        let cols = rows[0].len();
        let width: Vec<usize> = (0..cols)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (i, r) in rows.iter().enumerate() {
            let mut line = String::new();
            for c in 0..cols {
                let pad = width[c] - r[c].chars().count();
                if c == 0 {
                    let _ = write!(line, "{}{}", r[c], " ".repeat(pad));
                } else {
                    let _ = write!(line, "  {}{}", " ".repeat(pad), r[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
            if i == 0 {
                out.push_str(&"-".repeat(width.iter().sum::<usize>() + 2 * (cols - 1)));
                out.push('\n');
            }
        }
        out
    }

    fn target_rows(&self) -> Vec<Value> {
        let mut rows = Vec::new();
        for t in TARGETS
            .iter()
            .filter(|t| self.systems.iter().any(|s| s == t.subject))
        {
            let other_metric = t.against_metric.unwrap_or(t.metric);
            let (figure, range) = match t.against {
                Some(other) => match self.paired_across(t.metric, t.subject, other_metric, other) {
                    Some(st) => (Some(st.median), Some((st.min, st.max))),
                    None => (None, None),
                },
                None => match self.stat(t.metric, t.subject) {
                    Some(st) => (Some(st.median), Some((st.min, st.max))),
                    None => (None, None),
                },
            };
            let met = figure.map(|f| {
                if t.at_most {
                    f <= t.bound
                } else {
                    f >= t.bound
                }
            });
            // For an absolute target, what the framed floor managed in the same run.
            let floor = match t.against {
                None => self.stat(t.metric, "floor_tokio").map(|s| s.median),
                Some(_) => None,
            };
            rows.push(json!({
                "system": t.subject,
                "metric": t.metric,
                "goal": t.goal,
                "against": t.against,
                "against_metric": other_metric,
                "figure": figure,
                "figure_min": range.map(|r| r.0),
                "figure_max": range.map(|r| r.1),
                "kind": if t.against.is_some() { "same-repetition ratio" } else { "value" },
                "met": met,
                "floor_tokio": floor,
            }));
        }
        rows
    }

    /// The ratios block: each target, the figure, met or missed.
    pub fn ratios(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "the targets (ratios: median of same-repetition ratios [min–max]):"
        );
        for r in self.target_rows() {
            let system = r["system"].as_str().unwrap_or_default();
            let metric = r["metric"].as_str().unwrap_or_default();
            let goal = r["goal"].as_str().unwrap_or_default();
            let ratio = !r["against"].is_null();
            let figure = match (
                r["figure"].as_f64(),
                r["figure_min"].as_f64(),
                r["figure_max"].as_f64(),
            ) {
                (Some(f), Some(lo), Some(hi)) if ratio => {
                    format!("{f:.2}x [{lo:.2}–{hi:.2}]")
                }
                (Some(f), Some(lo), Some(hi)) => {
                    format!("{} [{}–{}]", fmt_num(f), fmt_num(lo), fmt_num(hi))
                }
                _ => "no data".to_owned(),
            };
            let verdict = match r["met"].as_bool() {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "n/a",
            };
            let context = match r["floor_tokio"].as_f64() {
                Some(f) => format!("  (floor_tokio {})", fmt_num(f)),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  {verdict:<6} {system:<15} {metric:<21} {goal:<44} {figure}{context}"
            );
        }
        out
    }

    /// When `procpool_build` ran too: `procpool` (on the bench's runtime, `start`) against
    /// it (its own supervisor thread, `build`), same-repetition ratios per metric.
    pub fn mode_ratios(&self) -> Option<String> {
        if !self.systems.iter().any(|s| s == "procpool_build") {
            return None;
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "procpool (start) / procpool_build (build), same-repetition ratios, median [min–max]:"
        );
        for m in self.metrics_present() {
            if let Some(st) = self.paired(m, SUBJECT, "procpool_build") {
                let _ = writeln!(
                    out,
                    "  {m:<20} {:.2}x [{:.2}–{:.2}]",
                    st.median, st.min, st.max
                );
            }
        }
        Some(out)
    }

    pub fn json(&self, machine: Value, config: Value, elapsed_s: f64) -> Value {
        let mut metrics = serde_json::Map::new();
        let mut mins = serde_json::Map::new();
        let mut maxs = serde_json::Map::new();
        let mut samples = serde_json::Map::new();
        let mut unsupported = serde_json::Map::new();
        for m in self.metrics_present() {
            let mut med = serde_json::Map::new();
            let mut lo = serde_json::Map::new();
            let mut hi = serde_json::Map::new();
            let mut all = serde_json::Map::new();
            let mut un = serde_json::Map::new();
            for s in &self.systems {
                if let Some(st) = self.stat(m, s) {
                    med.insert(s.clone(), json!(st.median));
                    lo.insert(s.clone(), json!(st.min));
                    hi.insert(s.clone(), json!(st.max));
                    all.insert(s.clone(), json!(self.values(m, s)));
                }
                if let Some(why) = self.unsupported.get(&(m.to_owned(), s.clone())) {
                    un.insert(s.clone(), json!(why));
                }
            }
            metrics.insert(m.to_owned(), Value::Object(med));
            mins.insert(m.to_owned(), Value::Object(lo));
            maxs.insert(m.to_owned(), Value::Object(hi));
            samples.insert(m.to_owned(), Value::Object(all));
            if !un.is_empty() {
                unsupported.insert(m.to_owned(), Value::Object(un));
            }
        }
        json!({
            "machine": machine,
            "metrics": metrics,
            "metrics_min": mins,
            "metrics_max": maxs,
            "samples": samples,
            "unsupported": unsupported,
            "targets": self.target_rows(),
            "higher_is_better": all_metrics().into_iter().filter(|m| higher_is_better(m)).collect::<Vec<_>>(),
            "config": config,
            "notes": self.notes,
            "elapsed_s": elapsed_s,
        })
    }
}
