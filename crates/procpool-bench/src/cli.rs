//! The `procpool` command line as ops run it (issue 16): `procpool run` of a job file of
//! no-op `add` jobs with the records to a file (`cli_jobs_per_s`), and one job at a time
//! through pipes, a line in and its record out (`cli_rtt_us`). Both with 2 workers of the
//! same worker binary as the `procpool` column, whose figures they are compared with.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::params::Params;
use crate::{median, rtt_chunks, sys, us};

/// The supervisor binary, the worker it runs, and a scratch directory for the job files.
pub struct Cli {
    cli: PathBuf,
    worker: PathBuf,
    dir: PathBuf,
}

/// `{"id": "<prefix><i>", "task": "add", "args": [i, 1]}`: a job whose result is `i + 1`.
fn job_line(prefix: &str, i: u64) -> String {
    format!("{{\"id\":\"{prefix}{i}\",\"task\":\"add\",\"args\":[{i},1]}}\n")
}

/// The prefetch window of `tput_window_per_s`, so both throughputs send the same number
/// of tasks ahead to a busy worker.
fn prefetch(p: &Params) -> String {
    (p.window - 1).to_string()
}

impl Cli {
    pub fn new(cli: &Path, worker: &Path) -> Cli {
        Cli {
            cli: cli.to_owned(),
            worker: worker.to_owned(),
            dir: std::env::temp_dir().join(format!("procpool-bench-cli-{}", std::process::id())),
        }
    }

    fn command(&self, p: &Params) -> Result<Command> {
        ensure!(
            self.cli.is_file(),
            "{} not found (cargo build --release --bin procpool)",
            self.cli.display()
        );
        let mut cmd = Command::new(&self.cli);
        cmd.arg("run")
            .arg("--worker")
            .arg(&self.worker)
            .args(["--workers", "2", "--quiet", "--prefetch-jobs"])
            .arg(prefetch(p));
        Ok(cmd)
    }

    /// `cli_jobs_per_s`: the whole command, from its start to its exit, over
    /// `p.cli_jobs` jobs (the job file is written once, outside the timing).
    pub fn jobs_per_s(&self, p: &Params) -> Result<f64> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let jobs = self.dir.join(format!("jobs-{}.jsonl", p.cli_jobs));
        if !jobs.is_file() {
            let mut text = String::new();
            for i in 0..p.cli_jobs {
                text.push_str(&job_line("j", i));
            }
            std::fs::write(&jobs, text).with_context(|| format!("writing {}", jobs.display()))?;
        }
        let out = self.dir.join("records.jsonl");
        let mut cmd = self.command(p)?;
        cmd.arg("--jobs").arg(&jobs).arg("--out").arg(&out);
        let t = Instant::now();
        let (status, _) = sys::run_captured(cmd, Duration::from_secs(600))?;
        let secs = t.elapsed().as_secs_f64();
        ensure!(status.success(), "procpool run: {status}");
        let records = std::fs::read_to_string(&out).context("reading the records")?;
        let completed = records
            .lines()
            .filter(|l| l.contains("\"status\":\"completed\""))
            .count() as u64;
        ensure!(
            completed == p.cli_jobs,
            "{completed} completed records for {} jobs",
            p.cli_jobs
        );
        Ok(p.cli_jobs as f64 / secs)
    }

    /// `cli_rtt_us`: jobs written one at a time to the command's stdin, each record read
    /// from its stdout before the next job goes in; median of the chunk means.
    pub fn rtt_us(&self, p: &Params) -> Result<f64> {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = self.command(p)?;
        cmd.args(["--jobs", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0);
        let mut child = Session(cmd.spawn().context("starting procpool run")?);
        let mut input = child.0.stdin.take().context("piped stdin")?;
        let mut output = BufReader::new(child.0.stdout.take().context("piped stdout")?);
        let mut line = String::new();
        let mut one = |i: u64| -> Result<()> {
            input.write_all(job_line("r", i).as_bytes())?;
            input.flush()?;
            line.clear();
            output.read_line(&mut line)?;
            let want = format!("\"id\":\"r{i}\",\"task\":\"add\",\"status\":\"completed\"");
            if !line.contains(&want) || !line.contains(&format!("\"result\":{}", i + 1)) {
                bail!("job r{i} gave {line:?}");
            }
            Ok(())
        };
        for i in 0..100 {
            one(i)?;
        }
        let mut chunks = Vec::new();
        for range in rtt_chunks(p.rtt_n) {
            let (t, len) = (Instant::now(), range.end - range.start);
            for i in range {
                one(100 + i)?;
            }
            chunks.push(us(t.elapsed()) / len as f64);
        }
        drop(input);
        let status = child.0.wait().context("reaping procpool run")?;
        ensure!(status.success(), "procpool run: {status}");
        Ok(median(chunks))
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `procpool run` in its own process group, killed with its workers if a sample fails
/// half-way (a normal end reaps it first, and the kill then finds nothing).
struct Session(Child);

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            sys::kill_group(self.0.id());
            let _ = self.0.wait();
        }
    }
}
