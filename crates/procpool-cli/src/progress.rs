//! What `procpool run` tells the operator on stderr while it works: a live progress bar
//! when stderr is a terminal, a plain one-line summary every `--progress-interval`
//! otherwise (log files, CI), and a table of the jobs by status and error kind at the
//! end. `--quiet` turns all of it off. The records themselves never go to stderr.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::FeedbackArgs;
use crate::logging;
use crate::records::{Record, Status};

/// How often the bar's counters (running, rate, ETA) are refreshed.
const BAR_REFRESH: Duration = Duration::from_millis(250);

/// The counters and the view.
pub(crate) struct Progress {
    view: View,
    started: Instant,
    /// Jobs with a record written by this run.
    done: u64,
    /// Of those, the ones that did not complete.
    failed: u64,
    /// Jobs skipped because an earlier run finished them (`--resume`).
    skipped: u64,
    /// Workers busy at the last tick.
    running: usize,
    /// Job lines in the job file (non-blank), once counted; `None` for stdin.
    total: Option<u64>,
    /// Records that did not complete, by status and error kind, for the final table
    /// (completed ones are `done - failed`: counted here, each was a map lookup).
    tally: BTreeMap<(Status, &'static str), u64>,
}

enum View {
    Quiet,
    Bar(ProgressBar),
    /// A summary line every `Some(interval)`; `None`: only the final table.
    Lines(Option<Duration>),
}

impl Progress {
    pub(crate) fn new(args: &FeedbackArgs) -> Progress {
        let view = if args.quiet {
            View::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(style(false));
            bar.enable_steady_tick(Duration::from_millis(100));
            logging::attach_bar(&bar);
            View::Bar(bar)
        } else {
            View::Lines(Some(args.progress_interval).filter(|d| !d.is_zero()))
        };
        let progress = Progress {
            view,
            started: Instant::now(),
            done: 0,
            failed: 0,
            skipped: 0,
            running: 0,
            total: None,
            tally: BTreeMap::new(),
        };
        if let View::Bar(bar) = &progress.view {
            bar.set_message(progress.counters());
        }
        progress
    }

    /// How often [`Progress::tick`] should be called; `None`: never.
    pub(crate) fn tick_every(&self) -> Option<Duration> {
        match self.view {
            View::Quiet => None,
            View::Bar(_) => Some(BAR_REFRESH),
            View::Lines(every) => every,
        }
    }

    /// The number of job lines, counted in the background.
    pub(crate) fn set_total(&mut self, lines: u64) {
        self.total = Some(lines);
        if let View::Bar(bar) = &self.view {
            bar.set_style(style(true));
            bar.set_length(self.to_run().unwrap_or_default());
        }
    }

    /// A record was written.
    pub(crate) fn record(&mut self, record: &Record) {
        self.done += 1;
        if record.status != Status::Completed {
            self.failed += 1;
            let kind = record.error.as_ref().map_or("", |e| e.kind);
            *self.tally.entry((record.status, kind)).or_default() += 1;
        }
        if let View::Bar(bar) = &self.view {
            bar.inc(1);
        }
    }

    /// A job was skipped (`--resume`): it leaves this run's total.
    pub(crate) fn skipped(&mut self) {
        self.skipped += 1;
        if let (View::Bar(bar), Some(n)) = (&self.view, self.to_run()) {
            bar.set_length(n);
        }
    }

    /// The periodic refresh: the bar's message, or a summary line.
    pub(crate) fn tick(&mut self, running: usize) {
        self.running = running;
        match &self.view {
            View::Quiet => {}
            View::Bar(bar) => bar.set_message(self.counters()),
            View::Lines(_) => {
                let done = match self.to_run() {
                    Some(total) => format!("{} of {total} jobs done", self.done),
                    None => format!("{} jobs done", self.done),
                };
                say!(
                    "procpool: {:.1}s: {done}, {}",
                    self.started.elapsed().as_secs_f64(),
                    self.counters()
                );
            }
        }
    }

    /// Clears the bar and prints the final table (unless quiet), then any `notes`.
    pub(crate) fn finish(self, notes: &[String]) {
        match &self.view {
            View::Quiet => return,
            View::Bar(bar) => {
                logging::detach_bar();
                bar.finish_and_clear();
            }
            View::Lines(_) => {}
        }
        let _ = std::io::stderr().write_all(self.table().as_bytes());
        for note in notes {
            say!("procpool: {note}");
        }
    }

    /// Jobs this run has to run: the job lines less the skipped ones.
    fn to_run(&self) -> Option<u64> {
        self.total.map(|t| t.saturating_sub(self.skipped))
    }

    /// `3 failed, 8 running, 312 jobs/s, ETA 4m 48s`.
    fn counters(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let mut s = format!(
            "{} failed, {} running, {} jobs/s",
            self.failed,
            self.running,
            rate_text(rate)
        );
        if self.skipped > 0 {
            let _ = write!(s, ", {} skipped", self.skipped);
        }
        if let Some(total) = self.to_run()
            && rate > 0.0
        {
            let left = total.saturating_sub(self.done) as f64 / rate;
            let eta = Duration::from_secs(left.ceil() as u64);
            let _ = write!(s, ", ETA {}", humantime::format_duration(eta));
        }
        s
    }

    /// The final table.
    fn table(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let mut out = format!(
            "procpool: {} jobs done in {:.2}s ({} jobs/s)",
            self.done,
            secs,
            rate_text(if secs > 0.0 {
                self.done as f64 / secs
            } else {
                0.0
            })
        );
        if self.skipped > 0 {
            let _ = write!(out, ", {} skipped (already done)", self.skipped);
        }
        out.push('\n');
        if self.done == 0 {
            return out;
        }
        let completed = self.done - self.failed;
        let rows: Vec<[String; 3]> = (completed > 0)
            .then_some(((Status::Completed, ""), completed))
            .into_iter()
            .chain(self.tally.iter().map(|(key, n)| (*key, *n)))
            .map(|((status, kind), n)| {
                let kind = if kind.is_empty() { "-" } else { kind };
                [
                    status_name(status).to_owned(),
                    kind.to_owned(),
                    n.to_string(),
                ]
            })
            .collect();
        let header = ["STATUS", "ERROR KIND", "JOBS"].map(str::to_owned);
        let mut widths = header.clone().map(|h| h.len());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let _ = writeln!(
                out,
                "  {:<w0$}  {:<w1$}  {:>w2$}",
                row[0],
                row[1],
                row[2],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            );
        }
        out
    }
}

fn style(with_total: bool) -> ProgressStyle {
    let template = if with_total {
        "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} done, {msg}"
    } else {
        "{spinner} {elapsed_precise} {pos} done, {msg}"
    };
    ProgressStyle::with_template(template)
        .expect("the templates are fixed and valid")
        .progress_chars("=> ")
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Completed => "completed",
        Status::Failed => "failed",
        Status::Cancelled => "cancelled",
    }
}

/// Whole numbers from 10 up, one decimal below.
fn rate_text(rate: f64) -> String {
    if rate >= 10.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.1}")
    }
}
