//! Small OS helpers: memory of a process, the machine's description, process groups.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    procpool_os::rss_bytes(pid)
        .map(|bytes| bytes / 1024)
        .with_context(|| format!("no resident memory for pid {pid} (gone?)"))
}

/// Mean resident memory of the given processes in MiB.
pub fn mean_rss_mib(pids: &[u32]) -> Result<f64> {
    if pids.is_empty() {
        bail!("no process to measure");
    }
    let mut total = 0u64;
    for &pid in pids {
        total += rss_kib(pid)?;
    }
    Ok(total as f64 / pids.len() as f64 / 1024.0)
}

/// No core files from the crash measurements, for every system alike (children inherit it).
pub fn disable_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a valid pointer to an initialised struct.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
    }
}

/// SIGKILL to a whole process group; a group that is already gone is fine.
pub fn kill_group(pgid: u32) {
    // SAFETY: plain syscall; a negative pid addresses the group.
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
}

/// SIGKILL to one process.
pub fn kill_pid(pid: u32) {
    // SAFETY: plain syscall.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// Runs `cmd` in its own process group with a deadline, and returns its stdout. Whatever
/// it left running in its group is killed afterwards, so no peer worker outlives a sample.
pub fn run_captured(
    mut cmd: Command,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String)> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let exited = exited_by(pid, Instant::now() + timeout);
    // The group is killed while its leader is still unreaped (a zombie at worst), so the
    // group id cannot have been reused by then.
    kill_group(pid);
    let status = child.wait().context("reaping a peer")?;
    if !exited {
        // The reader may still hold a pipe some grandchild kept open: killed above.
        let _ = reader.join();
        bail!("{cmd:?} took more than {timeout:?}; killed");
    }
    let out = reader.join().unwrap_or_default();
    Ok((status, out))
}

/// Waits until the child exits (leaving it unreaped) or the deadline passes.
fn exited_by(pid: u32, deadline: Instant) -> bool {
    loop {
        // SAFETY: siginfo_t is plain data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall with a valid pointer; WNOWAIT leaves the child unreaped.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r != 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // Nothing left to wait for.
            return true;
        }
        // SAFETY: filled by a successful waitid.
        if unsafe { info.si_pid() } != 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn first_line_of(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .next()
        .map(|s| s.trim().to_owned())
}

/// What the numbers were measured on.
pub fn machine() -> BTreeMap<String, serde_json::Value> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(model) = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map(|(_, v)| v.trim().to_owned())
    {
        m.insert("cpu_model".into(), model.into());
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    m.insert("cpus".into(), cpus.into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(kib) = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    {
        m.insert("mem_total_mib".into(), (kib / 1024).into());
    }
    if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        m.insert("kernel".into(), k.trim().into());
    }
    if let Ok(os) = std::fs::read_to_string("/etc/os-release")
        && let Some(name) = os.lines().find_map(|l| l.strip_prefix("PRETTY_NAME="))
    {
        m.insert("os".into(), name.trim_matches('"').into());
    }
    if let Some(v) = first_line_of("rustc", &["-V"]) {
        m.insert("rustc".into(), v.into());
    }
    m.insert("loadavg_start".into(), loadavg().into());
    m.insert(
        "profile".into(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
    );
    m
}

/// The first three fields of /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Seconds since the epoch.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Fills `buf` with the pattern the demo `bytes` task returns.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| i as u8).collect()
}
