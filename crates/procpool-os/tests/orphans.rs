//! Adopted orphans with real processes. One test in its own binary: becoming a subreaper
//! changes the whole test process, and the reaper must not race other tests' children.
// Linux only: it makes the test process a child subreaper and reads `/proc`.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `sh -c script`, waits for it, and returns the pid it printed (a background job
/// it left behind, now re-parented to this process).
fn leave_behind(script: &str) -> u32 {
    let mut sh = Command::new("sh")
        .args(["-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let mut line = String::new();
    BufReader::new(sh.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(sh.wait().unwrap().success());
    line.trim().parse().expect("a pid")
}

fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = s.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.next()?.parse().ok()?))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn adopted_orphans_are_reaped_or_killed_and_workers_are_left_to_their_owner() {
    procpool_os::become_subreaper().expect("PR_SET_CHILD_SUBREAPER");
    let me = std::process::id();

    // A descendant that escaped into its own session, still running: adopted by us.
    let escaped = leave_behind("setsid sleep 30 >/dev/null 2>&1 & echo $!");
    wait_for("the escaped sleep to be adopted", || {
        stat(escaped).is_some_and(|(_, ppid)| ppid == me)
    });

    // A descendant that exits soon after its parent: adopted, then a zombie of ours.
    let short = leave_behind("sleep 0.05 >/dev/null 2>&1 & echo $!");
    // A registered worker that exits at once: a zombie too, but its owner's to reap.
    let mut worker = procpool_os::spawn_worker(
        || Command::new("true").spawn(),
        |c: &std::process::Child| Some(c.id()),
    )
    .expect("spawn a worker");
    wait_for("both zombies", || {
        stat(short).is_some_and(|(s, _)| s == 'Z')
            && stat(worker.id()).is_some_and(|(s, _)| s == 'Z')
    });

    let reaped = procpool_os::reap_adopted();
    assert_eq!(reaped, vec![short], "only the adopted zombie is reaped");
    assert!(stat(short).is_none(), "the zombie is gone");
    assert!(stat(escaped).is_some(), "a running orphan is left running");
    // The worker's status is still there for its owner.
    assert!(worker.wait().unwrap().success());
    procpool_os::worker_reaped(worker.id());

    let killed = procpool_os::kill_adopted();
    assert_eq!(killed, vec![escaped]);
    assert!(
        stat(escaped).is_none(),
        "the escaped sleep is killed and reaped"
    );
    assert!(procpool_os::reap_adopted().is_empty());
}
