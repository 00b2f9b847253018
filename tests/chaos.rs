//! CI's short chaos configuration: the built `procpool-chaos` runs 500 tasks with 30% of
//! faults (crashes of every kind, hangs past their timeout, memory bombs, outside SIGKILLs
//! of workers, cancel storms) on 2 workers, and must find every verdict right and no
//! process left. The long configuration is documented in the README. With `--agents` the
//! same runs over `procpool agent` processes on a private `redis-server`, with agent kills,
//! an agent stopped past its lease and a broker restart.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHAOS: &str = env!("CARGO_BIN_EXE_procpool-chaos");
const DEMO: &str = env!("CARGO_BIN_EXE_procpool-demo");
const PROCPOOL: &str = env!("CARGO_BIN_EXE_procpool");

/// A hung run is killed and fails the test (typical: 5-10 s in debug on 2 vCPUs).
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs `procpool-chaos ARGS` under [`DEADLINE`]; exit code and stdout.
fn chaos(args: &[&str]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(CHAOS)
        .args(args)
        .args(["--worker", DEMO])
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn procpool-chaos");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).expect("utf-8 output");
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for procpool-chaos") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            // Our own child, by its handle. Its pool's workers die with it (parent-death
            // signal on their whole group).
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "procpool-chaos {args:?} ran past {DEADLINE:?}:\n{}",
                reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code(),
        reader.join().expect("stdout reader"),
        started.elapsed(),
    )
}

#[test]
fn short_chaos_run_finds_every_verdict_right_and_nothing_left() {
    let (code, out, took) = chaos(&["--tasks", "500", "--fault-percent", "30", "--workers", "2"]);
    eprintln!("{out}took {took:?}");
    assert_eq!(code, Some(0), "procpool-chaos found violations:\n{out}");
    assert!(out.contains("PASS"), "{out}");
    // The table has one row per planned kind, and every kind of fault was drawn.
    let total: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("total"))
        .expect("a total row")
        .split_whitespace()
        .collect();
    assert_eq!(total[1], "500", "{out}");
    assert_eq!(total.last(), Some(&"0"), "no wrong verdicts: {out}");
    for kind in [
        "good",
        "segfault",
        "abort",
        "panic",
        "exit",
        "hang",
        "memory_bomb",
    ] {
        let row: Vec<&str> = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} row:\n{out}"))
            .split_whitespace()
            .collect();
        assert_ne!(row[1], "0", "no {kind} task was drawn:\n{out}");
    }
    assert!(out.contains("processes left: 0"), "{out}");
}

#[test]
fn chaos_with_retries_runs_crashing_faults_again() {
    let (code, out, _) = chaos(&[
        "--tasks",
        "150",
        "--fault-percent",
        "40",
        "--workers",
        "2",
        "--retries",
        "1",
        "--timeout",
        "100ms",
        "--grace",
        "0",
    ]);
    assert_eq!(code, Some(0), "procpool-chaos found violations:\n{out}");
    assert!(
        out.contains("most attempts of one task: 2"),
        "crash-class faults run twice with --retries 1:\n{out}"
    );
}

#[test]
fn bad_flags_are_refused() {
    for args in [
        &["--timeout", "soon"][..],
        &["--max-rss", "lots"],
        &["--fault-percent", "101"],
        &["--workers", "0"],
        &["--agents", "1"],
        &["--agent-kills", "2"],
    ] {
        let (code, out, _) = chaos(args);
        assert_eq!(code, Some(2), "{args:?}: {out}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }
}

/// The cells of the table row whose first cell is `name`.
fn row<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} row:\n{out}"))
        .split_whitespace()
        .collect()
}

#[test]
fn chaos_over_two_agents_survives_agent_kills_a_stop_and_a_broker_restart() {
    let (code, out, took) = chaos(&[
        "--agents",
        "2",
        "--procpool",
        PROCPOOL,
        "--tasks",
        "300",
        "--fault-percent",
        "30",
        "--workers",
        "2",
        "--agent-kills",
        "3",
        "--agent-stops",
        "1",
        "--broker-restarts",
        "1",
        "--result-ttl",
        "2s",
    ]);
    eprintln!("{out}took {took:?}");
    assert_eq!(code, Some(0), "procpool-chaos found violations:\n{out}");
    assert!(out.contains("PASS"), "{out}");
    assert_eq!(row(&out, "total")[1], "300", "{out}");
    assert_eq!(row(&out, "total").last(), Some(&"0"), "{out}");
    // Every event happened, and the broker kept nothing of a task past its TTL.
    assert!(
        out.contains("3 SIGKILLed (and replaced), 1 SIGSTOPped"),
        "{out}"
    );
    assert!(out.contains("1 restarts"), "{out}");
    assert!(out.contains(", 0 others"), "{out}");
    assert!(out.contains("processes left: 0"), "{out}");
}
