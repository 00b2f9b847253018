//! `procpool tasks`: starts one worker, reads the registry it announces in its handshake,
//! and prints it as a table for people or as JSON for scripts. Kept apart from `run.rs`
//! because it shares nothing with the batch loop but the worker flags.

use std::fmt::Write as _;
use std::io::Write as _;

use procpool::Shutdown;
use procpool::pool::TaskInfo;

use crate::cli::TasksArgs;
use crate::exit::{Exit, Failure};
use crate::run::{Host, open_pool};

pub(crate) async fn tasks(args: TasksArgs) -> Result<Exit, Failure> {
    // One worker is enough: every worker of a binary announces the same registry.
    // With --broker: the tasks the live agents serve.
    let pool = open_pool(
        &args.broker,
        None,
        &args.worker,
        Some(1),
        None,
        Host::OwnThread,
    )
    .await?;
    let mut tasks: Vec<TaskInfo> = pool.tasks().to_vec();
    pool.shutdown(Shutdown::Kill).await;
    tasks.sort_by(|a, b| a.name.cmp(&b.name));
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&tasks)
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("error encoding the task list: {e}")))?;
        s.push('\n');
        s
    } else {
        table(&tasks)
    };
    // A reader that stopped early (`| head`) is not an error; a full disk is.
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::Runtime(
            anyhow::anyhow!("cannot write the task list: {e}"),
        )),
        _ => Ok(Exit::Success),
    }
}

/// Columns TASK, PARAMETERS, RESULT, NOTES; `-` for no parameters.
fn table(tasks: &[TaskInfo]) -> String {
    let rows: Vec<[String; 4]> = tasks
        .iter()
        .map(|t| {
            let params = if t.params.is_empty() {
                "-".to_owned()
            } else {
                t.params
                    .iter()
                    .map(|p| format!("{}: {}", p.name, p.type_name))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let notes: Vec<&str> = [(t.fallible, "fallible"), (t.is_async, "async")]
                .into_iter()
                .filter_map(|(on, word)| on.then_some(word))
                .collect();
            [t.name.clone(), params, t.result.clone(), notes.join(", ")]
        })
        .collect();
    let header = ["TASK", "PARAMETERS", "RESULT", "NOTES"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
