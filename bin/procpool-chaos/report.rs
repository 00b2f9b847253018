//! The chaos runner's tallies and its summary table: counts by planned kind and actual
//! outcome, what interfered, throughput, and every violation. Printing lives here so the
//! run loop only counts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::plan::{Accepted, KIND_NAMES};

/// Columns of the table: the outcomes a chaos task can legitimately have, then the rest.
const OUTCOMES: [&str; 8] = [
    "completed",
    "crashed",
    "panicked",
    "timed_out",
    "limit_exceeded",
    "cancelled",
    "lost",
    "other",
];

/// Everything counted during a run.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// (planned kind, outcome column) -> tasks.
    cells: BTreeMap<(&'static str, &'static str), u64>,
    /// planned kind -> tasks whose verdict was right because of a cancel / a kill.
    cancelled: BTreeMap<&'static str, u64>,
    killed: BTreeMap<&'static str, u64>,
    /// planned kind -> tasks whose agent was killed or stopped under them (agents mode).
    agent_lost: BTreeMap<&'static str, u64>,
    /// planned kind -> violations.
    wrong: BTreeMap<&'static str, u64>,
    /// Every violation, in the order found (only the first ones are printed).
    pub(crate) violations: Vec<String>,
    pub(crate) kills_sent: u64,
    pub(crate) kills_skipped: u64,
    pub(crate) storms: u64,
    pub(crate) cancels_sent: u64,
    pub(crate) max_attempts: u32,
    /// Lines printed under the table before the timing (agents mode: agent events).
    pub(crate) notes: Vec<String>,
}

/// Violations printed in full; the rest are only counted.
const SHOWN_VIOLATIONS: usize = 20;

impl Tally {
    /// Counts one task's verdict.
    pub(crate) fn task(
        &mut self,
        kind: &'static str,
        outcome: &'static str,
        verdict: Result<Accepted, String>,
        attempts: u32,
    ) {
        let column = if OUTCOMES.contains(&outcome) {
            outcome
        } else {
            "other"
        };
        *self.cells.entry((kind, column)).or_default() += 1;
        self.max_attempts = self.max_attempts.max(attempts);
        match verdict {
            Ok(Accepted::AsPlanned) => {}
            Ok(Accepted::Cancelled) => *self.cancelled.entry(kind).or_default() += 1,
            Ok(Accepted::Killed) => *self.killed.entry(kind).or_default() += 1,
            Ok(Accepted::AgentLost) => *self.agent_lost.entry(kind).or_default() += 1,
            Err(why) => {
                *self.wrong.entry(kind).or_default() += 1;
                self.violations.push(why);
            }
        }
    }

    /// A violation that is not about one task (leftover process, stuck pool, ...).
    pub(crate) fn violation(&mut self, why: String) {
        self.violations.push(why);
    }

    /// The summary table and the violations.
    pub(crate) fn render(&self, elapsed: Duration, worker_starts: u64) -> String {
        let mut out = String::new();
        let header: Vec<&str> = ["planned", "tasks"]
            .into_iter()
            .chain(OUTCOMES)
            .chain(["by_cancel", "by_kill", "by_agent", "wrong"])
            .collect();
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut totals = vec![0u64; header.len() - 1];
        for kind in KIND_NAMES {
            let mut row = vec![kind.to_owned()];
            let mut nums = Vec::new();
            let tasks: u64 = OUTCOMES
                .iter()
                .map(|o| self.cells.get(&(kind, *o)).copied().unwrap_or(0))
                .sum();
            nums.push(tasks);
            for o in OUTCOMES {
                nums.push(self.cells.get(&(kind, o)).copied().unwrap_or(0));
            }
            for map in [&self.cancelled, &self.killed, &self.agent_lost, &self.wrong] {
                nums.push(map.get(kind).copied().unwrap_or(0));
            }
            for (t, n) in totals.iter_mut().zip(&nums) {
                *t += n;
            }
            row.extend(nums.iter().map(u64::to_string));
            rows.push(row);
        }
        let mut total = vec!["total".to_owned()];
        total.extend(totals.iter().map(u64::to_string));
        rows.push(total);
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].len())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[&str]| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i == 0 {
                    let _ = write!(s, "{c:<w$}");
                } else {
                    let _ = write!(s, "  {c:>w$}");
                }
            }
            s.push('\n');
            s
        };
        out.push_str(&line(&header));
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            out.push_str(&line(&cells));
        }
        let tasks = totals[0];
        let secs = elapsed.as_secs_f64();
        let _ = writeln!(
            out,
            "events: {} worker SIGKILLs sent ({} found no worker), {} cancel storms ({} cancels sent)",
            self.kills_sent, self.kills_skipped, self.storms, self.cancels_sent
        );
        let _ = writeln!(
            out,
            "workers started: {worker_starts}; most attempts of one task: {}",
            self.max_attempts
        );
        for note in &self.notes {
            let _ = writeln!(out, "{note}");
        }
        let _ = writeln!(
            out,
            "time: {secs:.2} s, {:.0} tasks/s",
            if secs > 0.0 { tasks as f64 / secs } else { 0.0 }
        );
        for why in self.violations.iter().take(SHOWN_VIOLATIONS) {
            let _ = writeln!(out, "VIOLATION: {why}");
        }
        if self.violations.len() > SHOWN_VIOLATIONS {
            let _ = writeln!(
                out,
                "... and {} more violations",
                self.violations.len() - SHOWN_VIOLATIONS
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_counts_rows_columns_and_totals() {
        let mut t = Tally::default();
        t.task("good", "completed", Ok(Accepted::AsPlanned), 1);
        t.task("good", "cancelled", Ok(Accepted::Cancelled), 0);
        t.task("segfault", "crashed", Ok(Accepted::AsPlanned), 1);
        t.task("hang", "pool_closed", Err("boom".into()), 1);
        let text = t.render(Duration::from_secs(2), 5);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0][0], "planned");
        assert_eq!(
            rows[1],
            [
                "good", "2", "1", "0", "0", "0", "0", "1", "0", "0", "1", "0", "0", "0"
            ]
        );
        let hang = rows.iter().find(|r| r[0] == "hang").unwrap();
        assert_eq!(hang[1], "1");
        assert_eq!(hang[9], "1", "pool_closed lands in other");
        assert_eq!(hang[13], "1", "and is wrong");
        let total = rows.iter().find(|r| r[0] == "total").unwrap();
        assert_eq!(total[1], "4");
        assert!(text.contains("2 tasks/s"), "{text}");
        assert!(text.contains("VIOLATION: boom"), "{text}");
    }
}
