//! The raw floor: 64-byte messages over the stdin/stdout pipes of a child (this binary in
//! `child pipe-echo` mode), blocking I/O, no framing library, no runtime. For spawns it is
//! the spawn + exit of `/bin/true`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::params::{Group, Params};
use crate::sys;
use crate::{Outcome, median, ms, rtt_chunks, us};

const MSG: usize = 64;
const OP_ECHO: u8 = 0;
const OP_BLOB: u8 = 1;
const OP_SLEEP: u8 = 2;
const OP_CRASH: u8 = 3;

struct PipeChild {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl PipeChild {
    fn spawn(exe: &Path) -> Result<PipeChild> {
        let mut child = Command::new(exe)
            .args(["child", "pipe-echo"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the pipe floor child")?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let mut ready = [0u8; 1];
        stdout.read_exact(&mut ready).context("ready byte")?;
        Ok(PipeChild {
            child,
            stdin,
            stdout,
        })
    }

    fn send(&mut self, op: u8, arg: u64) -> Result<()> {
        let mut m = [0u8; MSG];
        m[0] = op;
        m[1..9].copy_from_slice(&arg.to_le_bytes());
        self.stdin.write_all(&m)?;
        Ok(())
    }

    fn echo(&mut self, i: u64) -> Result<()> {
        self.send(OP_ECHO, i)?;
        let mut m = [0u8; MSG];
        self.stdout.read_exact(&mut m)?;
        ensure!(m[1..9] == i.to_le_bytes(), "wrong echo");
        Ok(())
    }

    /// Waits for the end of stream and reaps the child.
    fn wait_death(mut self) -> Result<std::process::ExitStatus> {
        let mut b = [0u8; 1];
        let n = self.stdout.read(&mut b)?;
        ensure!(n == 0, "expected end of stream");
        Ok(self.child.wait()?)
    }

    fn close(self) {
        let PipeChild {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let _ = child.wait();
    }
}

pub struct FloorPipe {
    exe: std::path::PathBuf,
}

impl FloorPipe {
    pub fn new(exe: &Path) -> FloorPipe {
        FloorPipe {
            exe: exe.to_owned(),
        }
    }

    fn pair(&self) -> Result<Vec<PipeChild>> {
        Ok(vec![
            PipeChild::spawn(&self.exe)?,
            PipeChild::spawn(&self.exe)?,
        ])
    }

    pub fn measure(&mut self, g: Group, p: &Params) -> Result<Outcome> {
        match g {
            Group::Rtt => {
                let mut ch = self.pair()?;
                for i in 0..100 {
                    ch[(i % 2) as usize].echo(i)?;
                }
                let mut chunks = Vec::new();
                for range in rtt_chunks(p.rtt_n) {
                    let (t, len) = (Instant::now(), range.end - range.start);
                    for i in range {
                        ch[(i % 2) as usize].echo(i)?;
                    }
                    chunks.push(us(t.elapsed()) / len as f64);
                }
                let v = median(chunks);
                ch.into_iter().for_each(PipeChild::close);
                Ok(Outcome::one("rtt_us", v))
            }
            Group::TputStrict => {
                let mut ch = self.pair()?;
                let v = throughput(&mut ch, p.tput_n, 1)?;
                ch.into_iter().for_each(PipeChild::close);
                Ok(Outcome::one("tput_strict_per_s", v))
            }
            Group::TputWindow => {
                let mut ch = self.pair()?;
                let v = throughput(&mut ch, p.window_n, p.window)?;
                ch.into_iter().for_each(PipeChild::close);
                Ok(Outcome::one("tput_window_per_s", v))
            }
            Group::SpawnReady => {
                let mut total = Duration::ZERO;
                for _ in 0..p.spawn_k {
                    let t = Instant::now();
                    let mut a = spawn_true()?;
                    let mut b = spawn_true()?;
                    a.wait()?;
                    b.wait()?;
                    total += t.elapsed();
                }
                Ok(Outcome::one("spawn_ready_ms", ms(total) / p.spawn_k as f64))
            }
            Group::FreshProcess => {
                let n = p.fresh_n;
                let t = Instant::now();
                std::thread::scope(|s| -> Result<()> {
                    let lanes: Vec<_> = (0..2)
                        .map(|lane| {
                            s.spawn(move || -> Result<()> {
                                for _ in (lane..n).step_by(2) {
                                    spawn_true()?.wait()?;
                                }
                                Ok(())
                            })
                        })
                        .collect();
                    for l in lanes {
                        l.join().expect("lane thread")?;
                    }
                    Ok(())
                })?;
                Ok(Outcome::one(
                    "fresh_process_per_s",
                    n as f64 / t.elapsed().as_secs_f64(),
                ))
            }
            Group::Cancel => {
                let mut other = PipeChild::spawn(&self.exe)?;
                let mut resolve = Duration::ZERO;
                let mut replace = Duration::ZERO;
                let mut victim = PipeChild::spawn(&self.exe)?;
                for _ in 0..p.cancel_k {
                    victim.send(OP_SLEEP, 0)?;
                    std::thread::sleep(Duration::from_millis(1));
                    let t = Instant::now();
                    sys::kill_pid(victim.child.id());
                    let status = victim.wait_death()?;
                    let t1 = t.elapsed();
                    victim = PipeChild::spawn(&self.exe)?;
                    let t2 = t.elapsed();
                    ensure!(!status.success(), "killed child exited cleanly");
                    resolve += t1;
                    replace += t2;
                }
                other.echo(1)?;
                victim.close();
                other.close();
                Ok(Outcome::many(vec![
                    ("cancel_resolve_ms", ms(resolve) / p.cancel_k as f64),
                    ("cancel_replace_ms", ms(replace) / p.cancel_k as f64),
                ]))
            }
            Group::Crash => {
                let mut total = Duration::ZERO;
                for _ in 0..p.crash_k {
                    let mut c = PipeChild::spawn(&self.exe)?;
                    c.echo(1)?;
                    let t = Instant::now();
                    c.send(OP_CRASH, 0)?;
                    let status = c.wait_death()?;
                    total += t.elapsed();
                    use std::os::unix::process::ExitStatusExt;
                    ensure!(status.signal() == Some(libc::SIGSEGV), "{status}");
                }
                Ok(Outcome::one(
                    "crash_detect_ms",
                    ms(total) / p.crash_k as f64,
                ))
            }
            Group::Blob => {
                let mut c = PipeChild::spawn(&self.exe)?;
                let mut buf = Vec::new();
                blob(&mut c, p.blob_bytes, &mut buf)?;
                let t = Instant::now();
                for _ in 0..p.blob_k {
                    blob(&mut c, p.blob_bytes, &mut buf)?;
                }
                let secs = t.elapsed().as_secs_f64();
                c.close();
                Ok(Outcome::one(
                    "blob_mb_per_s",
                    (p.blob_bytes * p.blob_k) as f64 / (1 << 20) as f64 / secs,
                ))
            }
            Group::IdleRss => {
                let mut ch = self.pair()?;
                for (i, c) in ch.iter_mut().enumerate() {
                    c.echo(i as u64)?;
                }
                std::thread::sleep(Duration::from_millis(20));
                let pids: Vec<u32> = ch.iter().map(|c| c.child.id()).collect();
                let v = sys::mean_rss_mib(&pids)?;
                ch.into_iter().for_each(PipeChild::close);
                Ok(Outcome::one("idle_worker_rss_mb", v))
            }
            Group::Queued => Ok(Outcome::unsupported("a floor has no queue")),
            Group::CliJobs | Group::CliRtt => {
                Ok(Outcome::unsupported("a floor has no batch command line"))
            }
            Group::BrokerRtt | Group::BrokerTput | Group::RequeueAfterKill => {
                Ok(Outcome::unsupported("a floor has no broker"))
            }
        }
    }
}

fn spawn_true() -> Result<Child> {
    let bin = if Path::new("/bin/true").exists() {
        "/bin/true"
    } else {
        "true"
    };
    Command::new(bin).spawn().context("spawning true")
}

/// Reads one raw 10 MiB frame into a reused buffer (the raw-frame floor).
fn blob(c: &mut PipeChild, n: u64, buf: &mut Vec<u8>) -> Result<()> {
    c.send(OP_BLOB, n)?;
    let mut prefix = [0u8; 4];
    c.stdout.read_exact(&mut prefix)?;
    let len = u32::from_le_bytes(prefix) as usize;
    ensure!(len as u64 == n, "blob of {len} bytes");
    buf.resize(len, 0);
    c.stdout.read_exact(buf)?;
    Ok(())
}

/// `n` echoes over two children with `window` in flight per child, one thread polling
/// both pipes.
fn throughput(ch: &mut [PipeChild], n: u64, window: u64) -> Result<f64> {
    let mut sent = [0u64; 2];
    let mut got = [0u64; 2];
    let quota = [n.div_ceil(2), n / 2];
    let mut partial = [0usize; 2];
    let mut buf = vec![0u8; 64 << 10];
    let zeros = vec![0u8; window as usize * MSG];
    let t = Instant::now();
    for k in 0..2 {
        let first = window.min(quota[k]);
        ch[k].stdin.write_all(&zeros[..first as usize * MSG])?;
        sent[k] = first;
    }
    while got[0] < quota[0] || got[1] < quota[1] {
        let mut fds: Vec<libc::pollfd> = ch
            .iter()
            .map(|c| libc::pollfd {
                fd: c.stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid array of pollfd.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10_000) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        ensure!(r > 0, "pipe floor stalled");
        for k in 0..2 {
            if fds[k].revents == 0 {
                continue;
            }
            let read = ch[k].stdout.read(&mut buf)?;
            ensure!(read > 0, "pipe floor child went away");
            let bytes = partial[k] + read;
            let done = (bytes / MSG) as u64;
            partial[k] = bytes % MSG;
            got[k] += done;
            let more = done.min(quota[k] - sent[k]);
            ch[k].stdin.write_all(&zeros[..more as usize * MSG])?;
            sent[k] += more;
        }
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// `child pipe-echo`: a ready byte, then one answer per 64-byte message.
pub fn child_main() -> Result<()> {
    // SAFETY: fds 0 and 1 are this process's stdin and stdout, owned from here on.
    let (input, output) = unsafe { (File::from_raw_fd(0), File::from_raw_fd(1)) };
    let mut r = BufReader::with_capacity(64 << 10, input);
    let mut w = BufWriter::with_capacity(64 << 10, output);
    w.write_all(&[1])?;
    w.flush()?;
    let mut blob: Vec<u8> = Vec::new();
    let mut m = [0u8; MSG];
    loop {
        if let Err(e) = r.read_exact(&mut m) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Ok(());
            }
            return Err(e.into());
        }
        match m[0] {
            OP_ECHO => w.write_all(&m)?,
            OP_BLOB => {
                let n = u64::from_le_bytes(m[1..9].try_into().expect("8 bytes")) as usize;
                if blob.len() != n {
                    blob = sys::pattern(n);
                }
                w.write_all(&(n as u32).to_le_bytes())?;
                w.write_all(&blob)?;
            }
            OP_SLEEP => std::thread::sleep(Duration::from_secs(60)),
            OP_CRASH => crash(),
            op => bail!("unknown op {op}"),
        }
        if r.buffer().is_empty() {
            w.flush()?;
        }
    }
}

/// Dies of SIGSEGV, like the demo `segfault` task.
pub fn crash() -> ! {
    // SAFETY: deliberately unsound: the floor of crash detection needs a real fault.
    unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u64>(), 1) };
    unreachable!("survived a null write")
}
