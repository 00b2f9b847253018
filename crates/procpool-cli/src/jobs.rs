//! The job stream: reads JSON Lines jobs one line at a time (never the whole file) and
//! validates each into a [`Job`] or a [`BadJob`]. It owns the job format and its rules
//! (required fields, unique ids, 1-based line numbers, which lines `--resume` skips), so
//! the batch loop in `run.rs` only sees well-formed jobs, ready-made rejections and skips.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use crate::detached::Detached;
use crate::ledger::{Claim, Key, Ledger};
use crate::lines::is_blank;
use crate::plan::Plan;

/// One valid job line.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Job {
    pub(crate) id: String,
    pub(crate) task: String,
    /// Always a JSON array (positional arguments).
    pub(crate) args: Value,
    /// Arguments by parameter name (`kwargs`); empty when the job has none.
    pub(crate) kwargs: Map<String, Value>,
    /// 1-based line number in the job stream.
    pub(crate) line: u64,
    /// The job's own `timeout_ms` and `retries`, overriding the pool's.
    pub(crate) policy: JobPolicy,
}

/// Per-job overrides of the pool's policies; `None` keeps the pool's.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct JobPolicy {
    /// `timeout_ms`: deadline of each attempt.
    pub(crate) timeout: Option<Duration>,
    /// `retries`: crash-class retries.
    pub(crate) retries: Option<u32>,
}

/// A line that cannot run, with what could still be read from it.
#[derive(Debug, PartialEq)]
pub(crate) struct BadJob {
    pub(crate) line: u64,
    pub(crate) id: Option<String>,
    pub(crate) task: Option<String>,
    pub(crate) message: String,
}

/// What one non-blank line turned into.
#[derive(Debug, PartialEq)]
pub(crate) enum Parsed {
    Job(Job),
    Bad(BadJob),
    /// An earlier run already wrote this line's record (`--resume`).
    Skipped,
}

/// Fields a job line may have; anything else is rejected, so a typo such as `"arg"` is
/// reported instead of silently running with no arguments.
const FIELDS: [&str; 6] = ["id", "task", "args", "kwargs", "timeout_ms", "retries"];

/// Opens the job stream: a file, or stdin for `-`. Errors here mean nothing ran.
/// Standard input and pipes (`--jobs <(generate)`) are read on a detached thread, so a
/// writer that keeps them open cannot hold up the exit after a signal.
pub(crate) async fn open(path: &Path) -> anyhow::Result<Box<dyn AsyncBufRead + Unpin + Send>> {
    if path.as_os_str() == "-" {
        let stdin = Detached::spawn("procpool-stdin", std::io::stdin())
            .context("cannot start the thread that reads the jobs")?;
        return Ok(Box::new(BufReader::new(stdin)));
    }
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open the job file {}", path.display()))?;
    let meta = file
        .metadata()
        .await
        .with_context(|| format!("cannot read the job file {}", path.display()))?;
    if meta.is_dir() {
        anyhow::bail!("the job file {} is a directory", path.display());
    }
    if !meta.is_file() {
        let pipe = Detached::spawn("procpool-jobs", file.into_std().await)
            .context("cannot start the thread that reads the jobs")?;
        return Ok(Box::new(BufReader::new(pipe)));
    }
    // Each read of a file is a trip to tokio's blocking threads and back: few, large ones.
    Ok(Box::new(BufReader::with_capacity(FILE_BUFFER, file)))
}

/// The read buffer of a job file.
const FILE_BUFFER: usize = 256 << 10;

/// Where a line's verdict (new, duplicate, done by an earlier run) comes from.
pub(crate) enum Seen {
    /// Worked out as the jobs stream in, in memory (standard input).
    Streaming(Ledger),
    /// Worked out before the batch, in bounded memory (a job file).
    Planned(Plan),
}

impl Seen {
    fn claim(&mut self, id: &str, line: u64) -> std::io::Result<Claim> {
        match self {
            Seen::Streaming(ledger) => Ok(ledger.claim(Key::id(id))),
            Seen::Planned(plan) => plan.claim(line),
        }
    }

    fn take_bad_line(&mut self, line: u64) -> std::io::Result<bool> {
        match self {
            Seen::Streaming(ledger) => Ok(ledger.take_done(Key::line(line))),
            Seen::Planned(plan) => plan.take_bad_line(line),
        }
    }
}

/// Reads jobs line by line; the verdicts on ids come from [`Seen`].
pub(crate) struct JobReader<R> {
    reader: R,
    /// The line being read. Kept across calls so that a cancelled [`JobReader::next`]
    /// loses nothing: `read_until` appends what it got and resumes on the next call.
    buf: Vec<u8>,
    /// Number of the last complete line.
    line: u64,
    /// Ids seen, and the jobs an earlier run finished.
    seen: Seen,
}

impl<R: AsyncBufRead + Unpin> JobReader<R> {
    /// A reader that skips the jobs `seen` knows an earlier run finished.
    pub(crate) fn new(reader: R, seen: Seen) -> Self {
        JobReader {
            reader,
            buf: Vec::new(),
            line: 0,
            seen,
        }
    }

    /// The next non-blank line, parsed; `None` at the end of the stream. Cancel safe
    /// (usable as a `select!` branch): a partly read line stays in `buf`.
    pub(crate) async fn next(&mut self) -> std::io::Result<Option<Parsed>> {
        loop {
            let n = self.reader.read_until(b'\n', &mut self.buf).await?;
            if n == 0 && self.buf.is_empty() {
                return Ok(None);
            }
            // A complete line (or the unterminated last one): no await from here on.
            self.line += 1;
            let line = std::mem::take(&mut self.buf);
            if is_blank(&line) {
                continue;
            }
            return self.parse(&line).map(Some);
        }
    }

    fn parse(&mut self, bytes: &[u8]) -> std::io::Result<Parsed> {
        let line = self.line;
        if let Some(job) = usual_job(bytes, line) {
            return Ok(match self.seen.claim(&job.id, line)? {
                Claim::New => Parsed::Job(job),
                Claim::Resumed => Parsed::Skipped,
                Claim::Duplicate => {
                    return self.bad(BadJob {
                        line,
                        message: duplicate_id(&job.id),
                        id: Some(job.id),
                        task: Some(job.task),
                    });
                }
            });
        }
        let mut bad = BadJob {
            line,
            id: None,
            task: None,
            message: String::new(),
        };
        let obj = match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(obj)) => obj,
            Ok(other) => {
                bad.message = format!("a job must be a JSON object, not {}", type_of(&other));
                return self.bad(bad);
            }
            Err(e) => {
                bad.message = format!("invalid JSON: {e}");
                return self.bad(bad);
            }
        };
        bad.id = obj.get("id").and_then(Value::as_str).map(str::to_owned);
        bad.task = obj.get("task").and_then(Value::as_str).map(str::to_owned);
        // The id is claimed even when the rest of the line is bad, so that every record
        // of a run has a distinct id.
        let claim = match &bad.id {
            Some(id) => self.seen.claim(id, line)?,
            None => Claim::New,
        };
        if claim == Claim::Resumed {
            return Ok(Parsed::Skipped);
        }
        let duplicate = claim == Claim::Duplicate;
        match validate(obj, line) {
            Ok(job) if !duplicate => Ok(Parsed::Job(job)),
            Ok(job) => {
                bad.message = duplicate_id(&job.id);
                self.bad(bad)
            }
            Err(message) => {
                bad.message = if duplicate {
                    format!("{message}; also, the id is a duplicate")
                } else {
                    message
                };
                self.bad(bad)
            }
        }
    }

    /// After the whole stream: records of earlier runs for jobs that are not in it.
    pub(crate) fn unmatched_records(&mut self) -> std::io::Result<u64> {
        match &mut self.seen {
            Seen::Streaming(ledger) => Ok(ledger.pending_done()),
            Seen::Planned(plan) => plan.unmatched_records(),
        }
    }

    /// A bad line, unless an earlier run already wrote its `bad_job` record. Bad lines
    /// are matched by line number: a duplicate carries the id of the job that owns it, so
    /// matching it by id would skip that job.
    fn bad(&mut self, bad: BadJob) -> std::io::Result<Parsed> {
        Ok(if self.seen.take_bad_line(bad.line)? {
            Parsed::Skipped
        } else {
            Parsed::Bad(bad)
        })
    }
}

fn duplicate_id(id: &str) -> String {
    format!("duplicate id {id:?} (ids must be unique)")
}

/// A job line of the usual shape, read straight into its fields: the JSON tree of the
/// whole line that [`validate`] reads (a map of owned keys, a value per field) costs
/// about as much as the rest of the job's way through the command. `None` for anything
/// else (a line that is not an object, a duplicate field, a `null`, a number out of
/// range, an empty id, a bad nested task): the general path then reads it, so that both
/// accept exactly the same lines, make the same job of each, and bad lines get its
/// messages.
fn usual_job(bytes: &[u8], line: u64) -> Option<Job> {
    /// The fields of `FIELDS`; a missing one takes its default, a `null` or an unknown
    /// field fails (unlike `Option`, `Given` refuses `null`, as `validate` does).
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Usual {
        id: String,
        task: String,
        #[serde(default)]
        args: Vec<Value>,
        #[serde(default)]
        kwargs: Map<String, Value>,
        #[serde(default)]
        timeout_ms: Given<u64>,
        #[serde(default)]
        retries: Given<u32>,
    }
    // serde reads a struct from a JSON array too (`["a", "t"]`): only objects here.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let usual: Usual = serde_json::from_slice(bytes).ok()?;
    if usual.id.is_empty() || usual.task.is_empty() || usual.timeout_ms.0 == Some(0) {
        return None;
    }
    let args = Value::Array(usual.args);
    check_nested(&args, &usual.kwargs).ok()?;
    Some(Job {
        id: usual.id,
        task: usual.task,
        args,
        kwargs: usual.kwargs,
        line,
        policy: JobPolicy {
            timeout: usual.timeout_ms.0.map(Duration::from_millis),
            retries: usual.retries.0,
        },
    })
}

/// A field that may be left out but not given as `null`.
struct Given<T>(Option<T>);

impl<T> Default for Given<T> {
    fn default() -> Self {
        Given(None)
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Given<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(|v| Given(Some(v)))
    }
}

fn validate(mut obj: Map<String, Value>, line: u64) -> Result<Job, String> {
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field {unknown:?} (a job has only \"id\", \"task\", \"args\", \"kwargs\", \
             \"timeout_ms\" and \"retries\")"
        ));
    }
    let id = match obj.remove("id") {
        None => return Err("missing \"id\" (every job needs a unique string id)".into()),
        Some(Value::String(s)) if s.is_empty() => return Err("\"id\" is empty".into()),
        Some(Value::String(s)) => s,
        Some(other) => return Err(format!("\"id\" must be a string, not {}", type_of(&other))),
    };
    let task = match obj.remove("task") {
        None => return Err("missing \"task\"".into()),
        Some(Value::String(s)) if s.is_empty() => return Err("\"task\" is empty".into()),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(format!(
                "\"task\" must be a string, not {}",
                type_of(&other)
            ));
        }
    };
    let args = match obj.remove("args") {
        None => Value::Array(Vec::new()),
        Some(args @ Value::Array(_)) => args,
        Some(other) => {
            return Err(format!(
                "\"args\" must be an array of positional arguments, not {}",
                type_of(&other)
            ));
        }
    };
    let kwargs = match obj.remove("kwargs") {
        None => Map::new(),
        Some(Value::Object(kwargs)) => kwargs,
        Some(other) => {
            return Err(format!(
                "\"kwargs\" must be an object of arguments by parameter name, not {}",
                type_of(&other)
            ));
        }
    };
    // Nested tasks are checked here, so a malformed one is a `bad_job` with its line.
    check_nested(&args, &kwargs)?;
    let policy = JobPolicy {
        timeout: match obj.remove("timeout_ms") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(ms) if ms > 0 => Some(Duration::from_millis(ms)),
                _ => {
                    return Err(format!(
                        "\"timeout_ms\" must be a whole number of milliseconds above 0, not {}",
                        describe(&v)
                    ));
                }
            },
        },
        retries: match obj.remove("retries") {
            None => None,
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => Some(n),
                None => {
                    return Err(format!(
                        "\"retries\" must be a whole number >= 0, not {}",
                        describe(&v)
                    ));
                }
            },
        },
    };
    Ok(Job {
        id,
        task,
        args,
        kwargs,
        line,
        policy,
    })
}

/// Nested tasks in the arguments are well formed.
fn check_nested(args: &Value, kwargs: &Map<String, Value>) -> Result<(), String> {
    if procpool::manager::JsonGraph::contains_tasks(args) {
        procpool::manager::JsonGraph::parse(args.clone())
            .map_err(|e| format!("in \"args\": {e}"))?;
    }
    for (name, value) in kwargs {
        if procpool::JsonGraph::contains_tasks(value) {
            procpool::JsonGraph::parse(value.clone())
                .map_err(|e| format!("in \"kwargs\" {name:?}: {e}"))?;
        }
    }
    Ok(())
}

/// A number as written (`-5`, `1.5`), anything else by its type.
fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        other => type_of(other).to_owned(),
    }
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Closed;

    async fn parse_all(input: &str) -> Vec<Parsed> {
        parse_with(input, Ledger::default()).await
    }

    async fn parse_with(input: &str, ledger: Ledger) -> Vec<Parsed> {
        let mut reader = JobReader::new(input.as_bytes(), Seen::Streaming(ledger));
        let mut out = Vec::new();
        while let Some(p) = reader.next().await.unwrap() {
            out.push(p);
        }
        out
    }

    fn bad_line(p: &Parsed) -> (u64, &str) {
        match p {
            Parsed::Bad(b) => (b.line, b.message.as_str()),
            other => panic!("expected a bad job, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn lines_blanks_and_defaults() {
        let parsed = parse_all(
            "\n{\"id\":\"a\",\"task\":\"t\",\"args\":[1]}\n  \r\n{\"id\":\"b\",\"task\":\"u\"}",
        )
        .await;
        assert_eq!(
            parsed,
            vec![
                Parsed::Job(Job {
                    id: "a".into(),
                    task: "t".into(),
                    args: serde_json::json!([1]),
                    kwargs: Map::new(),
                    line: 2,
                    policy: JobPolicy::default(),
                }),
                Parsed::Job(Job {
                    id: "b".into(),
                    task: "u".into(),
                    args: serde_json::json!([]),
                    kwargs: Map::new(),
                    line: 4,
                    policy: JobPolicy::default(),
                }),
            ]
        );
    }

    #[tokio::test]
    async fn rejections() {
        let parsed = parse_all(concat!(
            "{\"id\":\"a\",\"task\":\"t\"}\n",
            "{\"id\":\"a\",\"task\":\"t\"}\n",
            "not json\n",
            "[1]\n",
            "{\"task\":\"t\"}\n",
            "{\"id\":7,\"task\":\"t\"}\n",
            "{\"id\":\"c\",\"task\":\"t\",\"args\":5}\n",
            "{\"id\":\"d\",\"task\":\"t\",\"arg\":[]}\n",
            "{\"id\":\"e\"}\n",
        ))
        .await;
        assert!(matches!(parsed[0], Parsed::Job(_)));
        let lines: Vec<u64> = parsed[1..].iter().map(|p| bad_line(p).0).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8, 9]);
        assert!(bad_line(&parsed[1]).1.contains("duplicate id"));
        assert!(bad_line(&parsed[2]).1.starts_with("invalid JSON"));
        assert!(bad_line(&parsed[3]).1.contains("JSON object"));
        assert!(bad_line(&parsed[4]).1.contains("missing \"id\""));
        assert!(bad_line(&parsed[5]).1.contains("must be a string"));
        assert!(bad_line(&parsed[6]).1.contains("\"args\" must be an array"));
        assert!(bad_line(&parsed[7]).1.contains("unknown field \"arg\""));
        assert!(bad_line(&parsed[8]).1.contains("missing \"task\""));
    }

    /// Lines on both sides of what the direct reading takes: it must never accept a line
    /// the JSON tree refuses, nor make another job of one.
    const SHAPES: &[&str] = &[
        r#"{"id":"a","task":"t","args":[1,2]}"#,
        r#"  {"id":"a","task":"t"} "#,
        r#"{"task":"t","id":"a","args":[],"kwargs":{"x":1},"timeout_ms":250,"retries":3}"#,
        r#"{"id":"\u0061\n","task":"t\"q","args":[{"k":[null,true,1.5,"s"]}]}"#,
        r#"{"\u0069d":"a","task":"t"}"#,
        r#"{"id":"a","task":"t","args":[{"$task":"square","args":[2]}]}"#,
        r#"{"id":"a","task":"t","kwargs":{"x":{"$task":"square","kwargs":{"x":3}}}}"#,
        r#"{"id":"a","task":"t","args":[{"k":1,"k":2}]}"#,
        r#"{"id":"a","task":"t","retries":0,"timeout_ms":1}"#,
        r#"{"id":"a","task":"t","id":"b"}"#,
        r#"{"id":"a","task":"t","args":null}"#,
        r#"{"id":"a","task":"t","kwargs":null}"#,
        r#"{"id":"a","task":"t","timeout_ms":null}"#,
        r#"{"id":"a","task":"t","retries":null}"#,
        r#"{"id":"a","task":"t","timeout_ms":0}"#,
        r#"{"id":"a","task":"t","timeout_ms":1.0}"#,
        r#"{"id":"a","task":"t","timeout_ms":-0}"#,
        r#"{"id":"a","task":"t","retries":4294967296}"#,
        r#"{"id":"a","task":"t","retries":"1"}"#,
        r#"{"id":"","task":"t"}"#,
        r#"{"id":"a","task":""}"#,
        r#"{"id":7,"task":"t"}"#,
        r#"{"id":"a"}"#,
        r#"{"task":"t"}"#,
        r#"{"id":"a","task":"t","arg":[]}"#,
        r#"{"id":"a","task":"t","args":{"x":1}}"#,
        r#"{"id":"a","task":"t","args":[{"$task":5}]}"#,
        r#"{"id":"a","task":"t","kwargs":{"x":{"$task":"s","oops":1}}}"#,
        r#"["a","t"]"#,
        r#"{"id":"a","task":"t"} x"#,
        r#"{"id":"a","task":"t""#,
        "\u{c}{\"id\":\"a\",\"task\":\"t\"}",
    ];

    #[test]
    fn the_usual_shape_is_read_as_the_json_tree_reads_it() {
        let mut direct = 0;
        for line in SHAPES {
            let general = match serde_json::from_slice::<Value>(line.as_bytes()) {
                Ok(Value::Object(obj)) => validate(obj, 3),
                _ => Err("not a JSON object".into()),
            };
            if let Some(job) = usual_job(line.as_bytes(), 3) {
                direct += 1;
                assert_eq!(Ok(&job), general.as_ref(), "{line}");
            }
        }
        // The lines of the usual shape (the first nine) do take the direct way.
        assert_eq!(direct, 9);
    }

    #[test]
    fn ids_are_read_as_the_json_tree_reads_them() {
        for line in SHAPES {
            let general = match serde_json::from_slice::<Value>(line.as_bytes()) {
                Ok(Value::Object(obj)) => obj.get("id").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            };
            let id = crate::lines::line_id(line.as_bytes()).map(|id| id.into_owned());
            assert_eq!(id, general, "{line}");
        }
    }

    #[tokio::test]
    async fn per_job_timeout_and_retries() {
        let parsed = parse_all(concat!(
            "{\"id\":\"a\",\"task\":\"t\",\"timeout_ms\":250,\"retries\":2}\n",
            "{\"id\":\"b\",\"task\":\"t\",\"retries\":0}\n",
            "{\"id\":\"c\",\"task\":\"t\",\"timeout_ms\":\"1s\"}\n",
            "{\"id\":\"d\",\"task\":\"t\",\"timeout_ms\":0}\n",
            "{\"id\":\"e\",\"task\":\"t\",\"timeout_ms\":1.5}\n",
            "{\"id\":\"f\",\"task\":\"t\",\"retries\":-1}\n",
            "{\"id\":\"g\",\"task\":\"t\",\"retries\":true}\n",
            "{\"id\":\"h\",\"task\":\"t\",\"retries\":4294967296}\n",
        ))
        .await;
        let Parsed::Job(a) = &parsed[0] else {
            panic!("{:?}", parsed[0])
        };
        assert_eq!(a.policy.timeout, Some(Duration::from_millis(250)));
        assert_eq!(a.policy.retries, Some(2));
        let Parsed::Job(b) = &parsed[1] else {
            panic!("{:?}", parsed[1])
        };
        assert_eq!(
            b.policy,
            JobPolicy {
                timeout: None,
                retries: Some(0)
            }
        );
        let msg = |i: usize| bad_line(&parsed[i]).1.to_owned();
        assert!(
            msg(2).contains("\"timeout_ms\" must be a whole number"),
            "{}",
            msg(2)
        );
        assert!(msg(2).ends_with("not a string"), "{}", msg(2));
        assert!(msg(3).ends_with("not 0"), "{}", msg(3));
        assert!(msg(4).ends_with("not 1.5"), "{}", msg(4));
        assert!(
            msg(5).contains("\"retries\" must be a whole number >= 0, not -1"),
            "{}",
            msg(5)
        );
        assert!(msg(6).ends_with("not a boolean"), "{}", msg(6));
        assert!(msg(7).ends_with("not 4294967296"), "{}", msg(7));
    }

    #[tokio::test]
    async fn resume_skips_finished_ids_and_recorded_bad_lines_only() {
        let mut ledger = Ledger::default();
        // An earlier run: `a` finished, line 3 (a duplicate of `b`) and line 4 (bad JSON)
        // got bad_job records; `b` itself never finished.
        ledger.mark(Closed::Id(Key::id("a")));
        ledger.mark(Closed::BadLine(3));
        ledger.mark(Closed::BadLine(4));
        let parsed = parse_with(
            concat!(
                "{\"id\":\"a\",\"task\":\"t\"}\n",
                "{\"id\":\"b\",\"task\":\"t\"}\n",
                "{\"id\":\"b\",\"task\":\"t\"}\n",
                "oops\n",
                "{\"id\":\"a\",\"task\":\"t\"}\n",
                "oops\n",
            ),
            ledger,
        )
        .await;
        assert_eq!(parsed[0], Parsed::Skipped);
        assert!(
            matches!(&parsed[1], Parsed::Job(j) if j.id == "b"),
            "{:?}",
            parsed[1]
        );
        assert_eq!(parsed[2], Parsed::Skipped);
        assert_eq!(parsed[3], Parsed::Skipped);
        // A second `a` is still a duplicate, and a bad line without a record is reported.
        assert!(bad_line(&parsed[4]).1.contains("duplicate id"));
        assert_eq!(bad_line(&parsed[5]).0, 6);
    }
}
