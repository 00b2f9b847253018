//! Duplicate ids and `--resume` skips for a job *file*, in bounded memory. Before the
//! batch starts, one pass reads the id of every line; an external sort puts equal ids side
//! by side, next to the ids an earlier run finished; what comes out, sorted by line, is
//! the short list of lines that do not simply run (duplicates, jobs already done). The
//! batch reads that list alongside the jobs. Memory stays at a few MiB whatever the length
//! of the file; the sort spills to unnamed temporary files (about 24 bytes per job, for
//! the length of the pass). Standard input or a pipe cannot be read twice: they keep the
//! in-memory [`Ledger`](crate::ledger::Ledger), whose verdicts this reproduces exactly.

use std::io::{self, BufRead as _};
use std::path::Path;

use anyhow::Context as _;

use crate::extsort::{Sorted, Sorter};
use crate::ledger::{Claim, Closed, Key};

/// Records one sort holds in memory before spilling: 4 MiB of `(key, line)` pairs.
const SORT_BOUND: usize = 128 << 10;

/// Verdict flags, in the low bits of `line << FLAG_BITS | flags`.
const DUPLICATE: u64 = 1;
const RESUMED: u64 = 2;
/// An earlier run wrote a `bad_job` record for this line.
const BAD_LINE_DONE: u64 = 4;
const FLAG_BITS: u32 = 3;
const FLAG_MASK: u64 = (1 << FLAG_BITS) - 1;

/// `(id key, line)` of every line with an id, and `(id key, 0)` for every id an earlier
/// run finished; line numbers start at 1, so those sort first among equal keys.
type Entry = (u128, u64);

/// Collects what an earlier run finished, then reads the job file.
pub(crate) struct PlanBuilder {
    entries: Sorter<Entry>,
    verdicts: Sorter<u64>,
}

impl PlanBuilder {
    pub(crate) fn new() -> Self {
        PlanBuilder {
            entries: Sorter::new(SORT_BOUND),
            verdicts: Sorter::new(SORT_BOUND),
        }
    }

    /// An earlier run wrote a record closing this job.
    pub(crate) fn done(&mut self, closed: Closed) -> io::Result<()> {
        match closed {
            Closed::Id(key) => self.entries.push((key.0, 0)),
            Closed::BadLine(line) => self.verdicts.push(verdict(line, BAD_LINE_DONE)),
        }
    }

    /// Reads the job file at `path` once and works out every line's verdict.
    pub(crate) fn scan(mut self, path: &Path) -> anyhow::Result<Plan> {
        let context = || format!("cannot read the job file {}", path.display());
        let file = std::fs::File::open(path).with_context(context)?;
        let mut reader = io::BufReader::with_capacity(256 << 10, file);
        let mut buf = Vec::new();
        let (mut line, mut jobs, mut len) = (0u64, 0u64, 0u64);
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).with_context(context)?;
            if n == 0 {
                break;
            }
            // Counted as `JobReader` counts them: every line, blank or not.
            line += 1;
            len += n as u64;
            if crate::lines::is_blank(&buf) {
                continue;
            }
            jobs += 1;
            if let Some(id) = crate::lines::line_id(&buf) {
                self.entries.push((Key::id(&id).0, line))?;
            }
        }
        let spill = || "cannot sort the job ids (temporary files)".to_owned();
        let mut unmatched_ids = 0;
        // Per id: done by an earlier run, and whether a line of it was met yet.
        let mut current: Option<(u128, bool, bool)> = None;
        for entry in self.entries.finish().with_context(spill)? {
            let (key, line) = entry.with_context(spill)?;
            let (_, done, met) = match &mut current {
                Some(c) if c.0 == key => c,
                _ => {
                    if let Some((_, true, false)) = current {
                        unmatched_ids += 1;
                    }
                    current.insert((key, false, false))
                }
            };
            if line == 0 {
                *done = true;
            } else if *met {
                self.verdicts
                    .push(verdict(line, DUPLICATE))
                    .with_context(spill)?;
            } else {
                *met = true;
                if *done {
                    self.verdicts
                        .push(verdict(line, RESUMED))
                        .with_context(spill)?;
                }
            }
        }
        if let Some((_, true, false)) = current {
            unmatched_ids += 1;
        }
        Ok(Plan {
            verdicts: self.verdicts.finish().with_context(spill)?,
            peeked: None,
            at: (0, 0),
            jobs,
            len,
            unmatched_ids,
            bad_lines_done: 0,
            last_bad_line: 0,
            bad_lines_taken: 0,
        })
    }
}

fn verdict(line: u64, flags: u64) -> u64 {
    line << FLAG_BITS | flags
}

/// The verdicts of a job file, read in line order as the batch reads its lines.
pub(crate) struct Plan {
    verdicts: Sorted<u64>,
    peeked: Option<u64>,
    /// The last line asked about, and its flags.
    at: (u64, u64),
    jobs: u64,
    len: u64,
    /// Ids an earlier run finished that no line of the file has.
    unmatched_ids: u64,
    /// Lines with a `bad_job` record of an earlier run: read past so far, the last of
    /// them, and those that were bad again and so skipped.
    bad_lines_done: u64,
    last_bad_line: u64,
    bad_lines_taken: u64,
}

impl Plan {
    /// Non-blank lines in the file.
    pub(crate) fn jobs(&self) -> u64 {
        self.jobs
    }

    /// Bytes the pass read: the batch reads no further, so lines appended meanwhile are
    /// not read without a verdict.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The verdict of a line with an id (lines are asked about in increasing order).
    pub(crate) fn claim(&mut self, line: u64) -> io::Result<Claim> {
        let flags = self.flags(line)?;
        Ok(if flags & RESUMED != 0 {
            Claim::Resumed
        } else if flags & DUPLICATE != 0 {
            Claim::Duplicate
        } else {
            Claim::New
        })
    }

    /// Whether an earlier run wrote a `bad_job` record for this (bad) line.
    pub(crate) fn take_bad_line(&mut self, line: u64) -> io::Result<bool> {
        let taken = self.flags(line)? & BAD_LINE_DONE != 0;
        self.bad_lines_taken += u64::from(taken);
        Ok(taken)
    }

    /// After the whole file: records of the earlier run that match no line.
    pub(crate) fn unmatched_records(&mut self) -> io::Result<u64> {
        self.flags(u64::MAX >> FLAG_BITS)?;
        Ok(self.unmatched_ids + self.bad_lines_done - self.bad_lines_taken)
    }

    fn flags(&mut self, line: u64) -> io::Result<u64> {
        if self.at.0 == line {
            return Ok(self.at.1);
        }
        let mut flags = 0;
        loop {
            let next = match self.peeked.take() {
                Some(next) => next,
                None => match self.verdicts.next() {
                    Some(next) => next?,
                    None => break,
                },
            };
            let at = next >> FLAG_BITS;
            if at > line {
                self.peeked = Some(next);
                break;
            }
            // Several records may name one line; they come side by side.
            if next & BAD_LINE_DONE != 0 && at != self.last_bad_line {
                self.bad_lines_done += 1;
                self.last_bad_line = at;
            }
            if at == line {
                flags |= next & FLAG_MASK;
            }
        }
        self.at = (line, flags);
        Ok(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;

    /// The plan and the in-memory ledger agree line by line, and on the unmatched count.
    fn agree(jobs: &str, closed: &[Closed]) -> Vec<(Claim, bool)> {
        let path = std::env::temp_dir().join(format!(
            "procpool-plan-{}-{}",
            std::process::id(),
            rand_suffix(jobs)
        ));
        std::fs::write(&path, jobs).unwrap();
        let mut builder = PlanBuilder {
            entries: Sorter::new(3),
            verdicts: Sorter::new(2),
        };
        let mut ledger = Ledger::default();
        for c in closed {
            builder.done(*c).unwrap();
            ledger.mark(*c);
        }
        let mut plan = builder.scan(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut out = Vec::new();
        for (i, text) in jobs.split_inclusive('\n').enumerate() {
            let line = i as u64 + 1;
            if crate::lines::is_blank(text.as_bytes()) {
                continue;
            }
            let claim = match crate::lines::line_id(text.as_bytes()) {
                Some(id) => {
                    let c = plan.claim(line).unwrap();
                    assert_eq!(c, ledger.claim(Key::id(&id)), "line {line}");
                    c
                }
                None => Claim::New,
            };
            // As `JobReader` does: only a line that is bad asks about its record.
            let bad = claim == Claim::Duplicate || !text.contains("task");
            let taken = bad && plan.take_bad_line(line).unwrap();
            if bad {
                assert_eq!(taken, ledger.take_done(Key::line(line)), "line {line}");
            }
            out.push((claim, taken));
        }
        assert_eq!(plan.unmatched_records().unwrap(), ledger.pending_done());
        assert_eq!(plan.len(), jobs.len() as u64);
        assert_eq!(plan.jobs(), out.len() as u64);
        out
    }

    fn rand_suffix(s: &str) -> u128 {
        Key::id(s).0
    }

    #[test]
    fn duplicates_resumes_and_bad_lines_as_the_ledger_has_them() {
        use Claim::*;
        let jobs = concat!(
            "{\"id\":\"a\",\"task\":\"t\"}\n",
            "{\"id\":\"b\",\"task\":\"t\"}\n",
            "\n",
            "{\"id\":\"b\",\"task\":\"t\"}\n",
            "oops\n",
            "{\"id\":\"a\",\"task\":\"t\"}\n",
            "{\"id\":\"c\",\"task\":\"t\"}\n",
            "{\"id\":\"c\",\"task\":\"t\"}\n",
            "  \r\n",
            "{\"id\":\"c\"}",
        );
        // Nothing earlier: the second and third of an id are duplicates.
        let fresh = agree(jobs, &[]);
        let claims: Vec<Claim> = fresh.iter().map(|c| c.0).collect();
        assert_eq!(
            claims,
            [
                New, New, Duplicate, New, Duplicate, New, Duplicate, Duplicate
            ]
        );
        // An earlier run finished `a` and `z` (not in the file), wrote bad_job records
        // for line 4 (twice), line 5 and line 7 (not bad now), and line 99.
        let earlier = [
            Closed::Id(Key::id("a")),
            Closed::Id(Key::id("z")),
            Closed::BadLine(4),
            Closed::BadLine(4),
            Closed::BadLine(5),
            Closed::BadLine(7),
            Closed::BadLine(99),
        ];
        let resumed = agree(jobs, &earlier);
        assert_eq!(resumed[0], (Resumed, false));
        assert_eq!(resumed[2], (Duplicate, true));
        assert_eq!(resumed[3], (New, true));
        assert_eq!(resumed[4], (Duplicate, false));
    }

    #[test]
    fn many_ids_across_spilled_runs() {
        let mut jobs = String::new();
        let mut earlier = Vec::new();
        for i in 0..3000 {
            jobs.push_str(&format!("{{\"id\":\"j{}\",\"task\":\"t\"}}\n", i % 2200));
            if i % 7 == 0 {
                earlier.push(Closed::Id(Key::id(&format!("j{}", i * 3))));
            }
            if i % 11 == 0 {
                earlier.push(Closed::BadLine(i * 2 + 1));
            }
        }
        let claims = agree(&jobs, &earlier);
        assert_eq!(
            claims.iter().filter(|c| c.0 == Claim::Duplicate).count(),
            800
        );
        assert!(claims.iter().any(|c| c.0 == Claim::Resumed));
        assert!(claims.iter().any(|c| c.1));
    }
}
