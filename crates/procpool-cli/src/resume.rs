//! `procpool run --resume`: reads the records an earlier run left in `--out`, one line at
//! a time, handing each job it closes to the checks that skip them (the in-memory
//! `Ledger` or the job file's `Plan`), and finds where a torn last line begins (a record
//! cut off by a SIGKILL mid-write) so that it can be cut before appending.

use std::borrow::Cow;
use std::io::BufRead as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

use crate::ledger::{Closed, Key};

/// What the results file holds.
pub(crate) struct Previous {
    /// Records read.
    pub(crate) records: u64,
    /// Of those, the ones that did not complete (they decide the exit code too).
    pub(crate) not_completed: u64,
    /// Length of the file up to and including its last newline; anything after it is a
    /// torn record, cut before appending.
    pub(crate) keep_len: u64,
    /// Bytes after `keep_len`.
    pub(crate) torn: u64,
}

/// The fields of a record that say which job it closes. Others (the result above all)
/// are skipped unread.
#[derive(Deserialize)]
struct Closing<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    status: Cow<'a, str>,
    #[serde(borrow)]
    error: Option<ErrorKind<'a>>,
    line: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorKind<'a> {
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
}

/// Reads `path`, passing each job a record closes to `closed`; a missing file is an
/// empty one (nothing ran yet).
pub(crate) fn read(
    path: &Path,
    mut closed: impl FnMut(Closed) -> std::io::Result<()>,
) -> anyhow::Result<Previous> {
    let mut previous = Previous {
        records: 0,
        not_completed: 0,
        keep_len: 0,
        torn: 0,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(previous),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot open the results file {}", path.display()));
        }
    };
    let mut reader = std::io::BufReader::with_capacity(64 << 10, file);
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("error reading the results file {}", path.display()))?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            previous.torn = n as u64;
            break;
        }
        number += 1;
        previous.keep_len += n as u64;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (key, completed) = closing_key(&buf).map_err(|why| {
            anyhow::anyhow!(
                "line {number} of the results file {} is not a result record ({why}); refusing \
                 to append to it",
                path.display()
            )
        })?;
        closed(key).context("cannot keep the list of jobs to skip")?;
        previous.records += 1;
        previous.not_completed += u64::from(!completed);
    }
    Ok(previous)
}

/// The job a record line closes (its line number for a `bad_job`, else its id), and
/// whether the job completed.
fn closing_key(line: &[u8]) -> Result<(Closed, bool), String> {
    let record: Closing = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if !matches!(&*record.status, "completed" | "failed" | "cancelled") {
        return Err(format!("unknown status {:?}", record.status));
    }
    let bad_job = record
        .error
        .as_ref()
        .and_then(|e| e.kind.as_deref())
        .is_some_and(|k| k == "bad_job");
    let key = if bad_job {
        record
            .line
            .map(Closed::BadLine)
            .ok_or_else(|| "a bad_job record without a line number".to_owned())?
    } else {
        record
            .id
            .map(|id| Closed::Id(Key::id(&id)))
            .ok_or_else(|| "a record without an id".to_owned())?
    };
    Ok((key, record.status == "completed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> anyhow::Result<(Previous, Vec<Closed>)> {
        let dir = std::env::temp_dir().join(format!(
            "procpool-resume-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&dir, text).unwrap();
        let mut closed = Vec::new();
        let out = read(&dir, |c| {
            closed.push(c);
            Ok(())
        });
        std::fs::remove_file(&dir).unwrap();
        out.map(|p| (p, closed))
    }

    #[test]
    fn records_bad_jobs_and_a_torn_tail() {
        let text = concat!(
            "{\"id\":\"a\",\"status\":\"completed\",\"result\":{\"big\":[1,2,3]},\"line\":1}\n",
            "\n",
            "{\"id\":\"a\",\"status\":\"failed\",\"error\":{\"kind\":\"bad_job\"},\"line\":4}\n",
            "{\"status\":\"failed\",\"error\":{\"kind\":\"bad_job\"},\"line\":5}\n",
            "{\"id\":\"b\",\"status\":\"cancelled\",\"error\":{\"kind\":\"cancelled\"},\"line\":2}\n",
            "{\"id\":\"c\",\"sta",
        );
        let (p, closed) = read_text(text).unwrap();
        assert_eq!(p.records, 4);
        assert_eq!(p.not_completed, 3);
        let torn = "{\"id\":\"c\",\"sta".len();
        assert_eq!(p.torn, torn as u64);
        assert_eq!(p.keep_len, (text.len() - torn) as u64);
        assert_eq!(
            closed,
            [
                Closed::Id(Key::id("a")),
                Closed::BadLine(4),
                Closed::BadLine(5),
                Closed::Id(Key::id("b")),
            ]
        );
    }

    #[test]
    fn a_missing_file_is_empty_and_garbage_is_refused() {
        let p = read(Path::new("/nonexistent/results.jsonl"), |_| Ok(())).unwrap();
        assert_eq!((p.records, p.keep_len, p.torn), (0, 0, 0));
        let e = read_text("{\"id\":\"a\",\"status\":\"completed\",\"line\":1}\nnot json\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("line 2 of the results file"), "{e}");
        let e = read_text("{\"status\":\"completed\",\"line\":1}\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("without an id"), "{e}");
        let e = read_text("{\"id\":\"a\",\"status\":\"running\"}\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown status"), "{e}");
    }
}
