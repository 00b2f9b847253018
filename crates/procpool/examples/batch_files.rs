//! A crash-isolated batch over files: each file is counted in a worker process; one input
//! crashes its worker (as a bad file can crash a parser), and the batch reports why and
//! goes on. Plain `main`, no async runtime: `Pool::map_blocking`.
//!
//! Run: `cargo run -p procpool --example batch_files [FILES...]` (without files it makes
//! a few in a temporary directory, one of them poisoned).

use std::path::PathBuf;
use std::time::Duration;

use procpool::{Pool, RetryPolicy, Task};

/// Counts the words of a file. A file starting with `POISON` aborts the process: the kind
/// of crash that would take a thread pool down with it.
#[procpool::task]
fn count_words(path: String) -> Result<usize, String> {
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    if text.starts_with("POISON") {
        std::process::abort();
    }
    Ok(text.split_whitespace().count())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a worker (this binary, re-executed by the pool) this serves tasks and exits.
    procpool::init();

    let mut files: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let scratch = tempfile::tempdir()?;
    if files.is_empty() {
        for (name, text) in [
            ("a.txt", "one two three"),
            ("b.txt", "four five"),
            ("poison.txt", "POISON pill"),
            ("c.txt", "six seven eight nine"),
        ] {
            let path = scratch.path().join(name);
            std::fs::write(&path, text)?;
            files.push(path);
        }
        files.push(scratch.path().join("missing.txt"));
    }

    let pool = Pool::builder()
        .workers(2)
        .timeout(Duration::from_secs(30))
        // A crash is retried once (it could be the machine); a hang is not.
        .retry(RetryPolicy::new(1).retry_timed_out(false))
        .build()?;
    let tasks: Vec<Task<usize>> = files
        .iter()
        .map(|f| count_words::task(f.display().to_string()))
        .collect();
    let names: Vec<_> = tasks.iter().map(Task::id).zip(&files).collect();

    let (mut words, mut failed) = (0, 0);
    // In input order; `map_blocking` would give completion order.
    for (id, result) in pool.map_ordered_blocking(tasks) {
        let file = names
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, f)| f.display());
        match result {
            Ok(n) => {
                words += n;
                println!("{n:>8}  {}", file.expect("every id is a file"));
            }
            // `user_error` for the function's own error, `crashed` (with the signal) for the
            // poisoned file: only its worker died.
            Err(e) => {
                failed += 1;
                println!(
                    "{:>8}  {}: {e}",
                    e.kind(),
                    file.expect("every id is a file")
                );
            }
        }
    }
    println!("{words} words, {failed} files failed");
    pool.shutdown_blocking(procpool::Shutdown::Drain);
    Ok(())
}
