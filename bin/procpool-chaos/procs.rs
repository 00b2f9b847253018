//! What the chaos runner sees of processes through `/proc`: the descendants of this
//! process, the members of the worker process groups it saw, and its open descriptors.
//! This is how "nothing is left behind" is checked, without trusting the pool's own
//! bookkeeping; and how a worker is made sure to be ours before it is SIGKILLed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// One line of the process table.
#[derive(Clone, Debug)]
pub(crate) struct Proc {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
    pub(crate) pgrp: u32,
    pub(crate) session: u32,
    /// Clock ticks after boot.
    pub(crate) start: u64,
    pub(crate) state: char,
    pub(crate) comm: String,
}

/// `/proc/PID/stat`, or `None` if the process is gone.
pub(crate) fn stat(pid: u32) -> Option<Proc> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`; comm may itself hold spaces and parentheses.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    // Fields 3 (state) onwards; see proc_pid_stat(5).
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).copied();
    Some(Proc {
        pid,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        start: field(22)?.parse().ok()?,
        state: field(3)?.chars().next()?,
        comm,
    })
}

/// Every process visible in `/proc`.
pub(crate) fn all() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .collect()
}

/// Whether `pid` is a live (not yet reaped) child of this process: only then is it safe
/// to signal it by pid, since its pid cannot be reused before we reap it.
pub(crate) fn is_own_child(pid: u32) -> bool {
    stat(pid).is_some_and(|p| p.ppid == std::process::id())
}

/// Whose pool a process belongs to, by the `PROCPOOL_PARENT_PID` every worker (and
/// whatever it starts) inherits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// Ours: `PROCPOOL_PARENT_PID=<this pid>`.
    Ours,
    /// Another supervisor's.
    Other,
    /// No mark (or the environment is unreadable).
    None,
}

fn mark(pid: u32) -> Mark {
    const KEY: &[u8] = b"PROCPOOL_PARENT_PID=";
    let ours = std::process::id().to_string();
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return Mark::None;
    };
    match env.split(|b| *b == 0).find_map(|v| v.strip_prefix(KEY)) {
        Some(value) if value == ours.as_bytes() => Mark::Ours,
        Some(_) => Mark::Other,
        None => Mark::None,
    }
}

/// Processes that should not exist any more:
/// - descendants of this process (zombies included);
/// - processes carrying our mark (workers and what they started, even after they were
///   reparented to init);
/// - members of a worker process group we saw, in our session, started after us, with no
///   mark at all (the ones that escaped both of the above by clearing their environment
///   and being orphaned). Session, start time and the other supervisors' marks keep a
///   recycled group id (pids wrap quickly on a busy machine) from counting.
///
/// A zombie whose parent is not us is dead already: reaping it is its new parent's job
/// (init here, which may take its time), so it does not count. Our own zombies do.
pub(crate) fn leftovers(groups: &HashSet<u32>) -> Vec<Proc> {
    let me = std::process::id();
    let Some(own) = stat(me) else {
        return Vec::new();
    };
    let procs = all();
    let parent: HashMap<u32, u32> = procs.iter().map(|p| (p.pid, p.ppid)).collect();
    let descends_from_me = |mut pid: u32| {
        for _ in 0..64 {
            match parent.get(&pid) {
                Some(&pp) if pp == me => return true,
                Some(&pp) if pp > 1 => pid = pp,
                _ => return false,
            }
        }
        false
    };
    procs
        .into_iter()
        .filter(|p| p.pid != me)
        .filter(|p| !(matches!(p.state, 'Z' | 'X') && p.ppid != me))
        .filter(|p| {
            descends_from_me(p.pid)
                || match mark(p.pid) {
                    Mark::Ours => true,
                    Mark::Other => false,
                    Mark::None => {
                        groups.contains(&p.pgrp) && p.session == own.session && p.start >= own.start
                    }
                }
        })
        .collect()
}

/// [`leftovers`], given up to `settle` to go away (a group just killed takes a moment
/// to be reaped by init).
pub(crate) fn leftovers_after(groups: &HashSet<u32>, settle: Duration) -> Vec<Proc> {
    let end = Instant::now() + settle;
    loop {
        let left = leftovers(groups);
        if left.is_empty() || Instant::now() >= end {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Agents mode: besides [`leftovers`] (our descendants, which the agents and their live
/// workers are), every process in `seen` (pid -> start time: agents, workers, the broker)
/// still there, and members of the worker groups seen (a worker orphaned by a killed
/// agent, or what it started), in our session and started after us. Workers of an agent
/// carry the agent's mark, not ours, so the marks cannot find them.
pub(crate) fn leftovers_seen(seen: &HashMap<u32, u64>, groups: &HashSet<u32>) -> Vec<Proc> {
    let me = std::process::id();
    let Some(own) = stat(me) else {
        return Vec::new();
    };
    let mut left = leftovers(groups);
    let known: HashSet<u32> = left.iter().map(|p| p.pid).collect();
    left.extend(
        all()
            .into_iter()
            .filter(|p| p.pid != me && !known.contains(&p.pid))
            .filter(|p| !(matches!(p.state, 'Z' | 'X') && p.ppid != me))
            .filter(|p| {
                seen.get(&p.pid) == Some(&p.start)
                    || (groups.contains(&p.pgrp)
                        && p.session == own.session
                        && p.start >= own.start)
            }),
    );
    left
}

/// [`leftovers_seen`], given up to `settle` to go away.
pub(crate) fn leftovers_seen_after(
    seen: &HashMap<u32, u64>,
    groups: &HashSet<u32>,
    settle: Duration,
) -> Vec<Proc> {
    let end = Instant::now() + settle;
    loop {
        let left = leftovers_seen(seen, groups);
        if left.is_empty() || Instant::now() >= end {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Open descriptors of this process.
pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// What each open descriptor points at (`socket:[..]`, a path), for a leak's report.
pub(crate) fn fd_targets() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            Some(format!(
                "{}->{}",
                e.file_name().to_string_lossy(),
                target.display()
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_stat_and_sees_a_child() {
        let me = stat(std::process::id()).expect("own stat");
        assert_eq!(me.pid, std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(is_own_child(child.id()));
        let left = leftovers(&HashSet::new());
        assert!(
            left.iter()
                .any(|p| p.pid == child.id() && p.comm == "sleep")
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_own_child(child.id()));
        assert!(leftovers_after(&HashSet::new(), Duration::from_secs(1)).is_empty());
    }
}
