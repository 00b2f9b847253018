//! `procpool ctl`: asks a live `procpool run`, `serve` or `agent` on this machine over its
//! control socket (served by `control.rs`, protocol in `ctl_wire.rs`) and prints the
//! reply as text for people or, with `--json`, as one JSON object.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use interprocess::local_socket::GenericFilePath;
use interprocess::local_socket::tokio::{Stream, prelude::*};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

use crate::cli::{CtlAction, CtlArgs};
use crate::ctl_wire::{
    self, CancelReply, DrainReply, JobsReply, Reply, Request, StatusReply, WorkersReply,
};
use crate::exit::{Exit, Failure};

/// How long a supervisor may take to answer: it answers from memory, so only a stopped
/// (SIGSTOP) or wedged process takes this long.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn ctl(args: CtlArgs) -> Result<Exit, Failure> {
    let path = match &args.control {
        Some(path) => path.clone(),
        None => find_socket().await.map_err(Failure::Setup)?,
    };
    let (cmd, id) = match &args.action {
        CtlAction::Status => ("status", None),
        CtlAction::Jobs => ("jobs", None),
        CtlAction::Workers => ("workers", None),
        CtlAction::Cancel { id } => ("cancel", Some(id.clone())),
        CtlAction::Drain => ("drain", None),
    };
    let request = Request {
        v: ctl_wire::VERSION,
        cmd: cmd.to_owned(),
        id,
    };
    let reply = ask(&path, &request).await.map_err(Failure::Setup)?;
    let text = if args.json {
        let mut s = serde_json::to_string(&reply).map_err(|e| Failure::Runtime(e.into()))?;
        s.push('\n');
        s
    } else {
        match (&reply.result, &reply.error) {
            (Some(result), _) => human(&args.action, result.clone()).map_err(Failure::Runtime)?,
            (None, Some(error)) => {
                say!("procpool ctl: {} ({})", error.message, error.kind);
                String::new()
            }
            (None, None) => {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "the supervisor sent a reply with neither a result nor an error"
                )));
            }
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    Ok(if reply.ok {
        Exit::Success
    } else {
        Exit::JobsFailed
    })
}

/// The one live control socket of this user; several or none is an error that says what
/// to do.
async fn find_socket() -> anyhow::Result<PathBuf> {
    let mut live = Vec::new();
    for path in ctl_wire::candidate_sockets()? {
        // A socket whose process died (SIGKILL) is left behind: nobody answers on it.
        if Stream::connect(path.as_path().to_fs_name::<GenericFilePath>()?)
            .await
            .is_ok()
        {
            live.push(path);
        }
    }
    match live.len() {
        1 => Ok(live.remove(0)),
        0 => anyhow::bail!(
            "no live procpool run, serve or agent of this user was found in {}; pass \
             --control PATH for a socket elsewhere",
            ctl_wire::socket_dir()?.display()
        ),
        _ => {
            let list: Vec<String> = live.iter().map(|p| format!("  {}", p.display())).collect();
            anyhow::bail!(
                "{} live supervisors; pick one with --control PATH:\n{}",
                live.len(),
                list.join("\n")
            )
        }
    }
}

/// Sends one request and reads its reply.
async fn ask(path: &Path, request: &Request) -> anyhow::Result<Reply> {
    let name = path.to_fs_name::<GenericFilePath>()?;
    let conn = Stream::connect(name)
        .await
        .with_context(|| format!("cannot connect to the control socket {}", path.display()))?;
    let mut tx = &conn;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    let exchange = async {
        tx.write_all(&line).await?;
        let mut reply = Vec::new();
        BufReader::new(&conn)
            .take(ctl_wire::MAX_REPLY as u64)
            .read_until(b'\n', &mut reply)
            .await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .with_context(|| format!("no answer on {} within {ANSWER_TIMEOUT:?}", path.display()))?
        .with_context(|| format!("error talking to {}", path.display()))?;
    serde_json::from_slice(&reply)
        .with_context(|| format!("{} sent a reply that is not one", path.display()))
}

/// The result as text for people.
fn human(action: &CtlAction, result: serde_json::Value) -> anyhow::Result<String> {
    let mut s = String::new();
    match action {
        CtlAction::Status => {
            let r: StatusReply = parse(result)?;
            let _ = writeln!(
                s,
                "procpool {} (pid {}), up {:.1}s{}",
                r.supervisor,
                r.pid,
                r.uptime_ms as f64 / 1000.0,
                if r.draining { ", draining" } else { "" }
            );
            if let Some(j) = &r.jobs {
                let _ = writeln!(
                    s,
                    "jobs: {} running, {} queued, {} completed, {} failed, {} cancelled, \
                     {} bad_job",
                    j.running, j.queued, j.completed, j.failed, j.cancelled, j.bad_job
                );
            }
            let w = &r.workers;
            let _ = writeln!(
                s,
                "workers: {} busy, {} idle, {} starting (at most {}); {} tasks queued in \
                 the pool",
                w.busy, w.idle, w.starting, w.size, r.pool_queued
            );
        }
        CtlAction::Jobs => {
            let r: JobsReply = parse(result)?;
            let rows = r.jobs.into_iter().map(|j| {
                [
                    j.id,
                    j.task,
                    j.status,
                    j.attempt.map_or("-".into(), |a| a.to_string()),
                    j.worker_pid.map_or("-".into(), |p| p.to_string()),
                    j.elapsed_ms
                        .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                ]
            });
            table(
                &mut s,
                ["ID", "TASK", "STATUS", "ATTEMPT", "WORKER", "ELAPSED"],
                rows,
            );
        }
        CtlAction::Workers => {
            let r: WorkersReply = parse(result)?;
            let rows = r.workers.into_iter().map(|w| {
                [
                    w.pid.to_string(),
                    w.rss_bytes.map_or("-".into(), |b| {
                        bytesize::ByteSize::b(b).display().iec().to_string()
                    }),
                    w.job.unwrap_or_else(|| "-".into()),
                ]
            });
            table(&mut s, ["PID", "RSS", "JOB"], rows);
        }
        CtlAction::Cancel { .. } => {
            let r: CancelReply = parse(result)?;
            let _ = writeln!(s, "cancelled job {} (it was {})", r.id, r.was);
        }
        CtlAction::Drain => {
            let r: DrainReply = parse(result)?;
            let _ = writeln!(
                s,
                "draining: no new job starts; {} running or queued finish first",
                r.unfinished
            );
        }
    }
    Ok(s)
}

fn parse<T: DeserializeOwned>(value: serde_json::Value) -> anyhow::Result<T> {
    serde_json::from_value(value).context("the supervisor's reply has an unexpected shape")
}

/// Left-aligned columns, two spaces apart.
fn table<const N: usize>(
    out: &mut String,
    head: [&str; N],
    rows: impl Iterator<Item = [String; N]>,
) {
    let rows: Vec<[String; N]> = rows.collect();
    let mut widths = head.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let head = head.map(str::to_owned);
    for row in std::iter::once(&head).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}
