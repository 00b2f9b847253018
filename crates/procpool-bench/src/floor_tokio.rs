//! The framed floor: what a minimal supervisor written with tokio costs. The parent runs a
//! `current_thread` runtime and speaks u32-LE length-prefixed bincode frames
//! (tokio-util's `LengthDelimitedCodec`) with children that are this binary in
//! `child frame-worker` mode: a ready frame first, then one `Done` per `Run`, the result
//! typed and decoded on both sides. For spawns it is this binary started to its ready frame.
//!
//! Its child writes its answers once its input is empty, many in one write: a crash would
//! lose the answers still buffered. `floor_tokio_each` is the same floor with the child
//! writing each answer before it reads the next request, as a pool that attributes
//! crashes exactly must: a reference for what that guarantee costs, with no target of its
//! own.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::runtime::Runtime;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::params::{Group, Params};
use crate::sys;
use crate::{Outcome, median, ms, rtt_chunks, us};

const MAX_FRAME: usize = 64 << 20;

#[derive(Serialize, Deserialize)]
enum Req {
    Run {
        id: u128,
        name: String,
        #[serde(with = "serde_bytes")]
        args: Vec<u8>,
    },
    Blob {
        id: u128,
        n: u64,
    },
    Sleep {
        id: u128,
        ms: u64,
    },
    Crash,
}

#[derive(Serialize, Deserialize)]
enum Resp {
    Ready {
        pid: u32,
    },
    Done {
        id: u128,
        result: Result<ByteBuf, String>,
    },
}

/// The same layout as `Resp` (bincode numbers variants in order), borrowing the result so
/// the child sends a blob without copying it first.
#[derive(Serialize)]
enum RespRef<'a> {
    #[allow(dead_code)]
    Ready { pid: u32 },
    Done {
        id: u128,
        result: Result<&'a serde_bytes::Bytes, String>,
    },
}

fn cfg() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .little_endian()
        .length_field_length(4)
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

fn encode<T: Serialize>(v: &T) -> Result<Bytes> {
    Ok(Bytes::from(bincode::serde::encode_to_vec(v, cfg())?))
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T> {
    let (v, _) = bincode::serde::decode_from_slice(b, cfg())?;
    Ok(v)
}

fn run_req(id: u128, a: i64) -> Result<Bytes> {
    encode(&Req::Run {
        id,
        name: "add".into(),
        args: bincode::serde::encode_to_vec((a, 1i64), cfg())?,
    })
}

fn check_done(frame: &[u8], id: u128, a: i64) -> Result<()> {
    match decode::<Resp>(frame)? {
        Resp::Done {
            id: got,
            result: Ok(bytes),
        } if got == id => {
            let sum: i64 = decode(&bytes)?;
            ensure!(sum == a + 1, "wrong sum");
            Ok(())
        }
        _ => bail!("unexpected answer"),
    }
}

/// How to start a floor child: this binary, and whether it writes each answer at once.
#[derive(Clone)]
struct Launch {
    exe: PathBuf,
    write_each: bool,
}

struct FrameChild {
    child: Child,
    rx: FramedRead<ChildStdout, LengthDelimitedCodec>,
    tx: FramedWrite<ChildStdin, LengthDelimitedCodec>,
}

impl FrameChild {
    /// Starts the child and returns without waiting for its ready frame.
    fn start(launch: &Launch) -> Result<FrameChild> {
        let mode = if launch.write_each {
            "frame-worker-each"
        } else {
            "frame-worker"
        };
        let mut child = Command::new(&launch.exe)
            .args(["child", mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the framed floor child")?;
        let rx = FramedRead::new(child.stdout.take().expect("piped"), codec());
        let tx = FramedWrite::new(child.stdin.take().expect("piped"), codec());
        Ok(FrameChild { child, rx, tx })
    }

    async fn ready(&mut self) -> Result<()> {
        let f = self.rx.next().await.context("no ready frame")??;
        ensure!(
            matches!(decode::<Resp>(&f)?, Resp::Ready { .. }),
            "not ready"
        );
        Ok(())
    }

    async fn spawn(launch: &Launch) -> Result<FrameChild> {
        let mut c = FrameChild::start(launch)?;
        c.ready().await?;
        Ok(c)
    }

    async fn call(&mut self, id: u128, a: i64) -> Result<()> {
        self.tx.send(run_req(id, a)?).await?;
        let f = self.rx.next().await.context("end of stream")??;
        check_done(&f, id, a)
    }

    async fn wait_death(mut self) -> Result<std::process::ExitStatus> {
        ensure!(self.rx.next().await.is_none(), "expected end of stream");
        Ok(self.child.wait().await?)
    }

    async fn close(self) {
        let FrameChild { mut child, tx, .. } = self;
        drop(tx);
        let _ = child.wait().await;
    }
}

pub struct FloorTokio {
    launch: Launch,
}

impl FloorTokio {
    /// The floor; with `write_each`, its child writes each answer before the next request.
    pub fn new(exe: &Path, write_each: bool) -> FloorTokio {
        FloorTokio {
            launch: Launch {
                exe: exe.to_owned(),
                write_each,
            },
        }
    }

    pub fn measure(&mut self, rt: &Runtime, g: Group, p: &Params) -> Result<Outcome> {
        rt.block_on(self.measure_async(g, p))
    }

    async fn pair(&self) -> Result<(FrameChild, FrameChild)> {
        let mut a = FrameChild::start(&self.launch)?;
        let mut b = FrameChild::start(&self.launch)?;
        a.ready().await?;
        b.ready().await?;
        Ok((a, b))
    }

    async fn measure_async(&mut self, g: Group, p: &Params) -> Result<Outcome> {
        let exe = self.launch.clone();
        match g {
            Group::Rtt => {
                let (mut a, mut b) = self.pair().await?;
                for i in 0..100 {
                    a.call(i, i as i64).await?;
                    b.call(i, i as i64).await?;
                }
                let mut chunks = Vec::new();
                for range in rtt_chunks(p.rtt_n) {
                    let (t, len) = (Instant::now(), range.end - range.start);
                    for i in range {
                        let c = if i % 2 == 0 { &mut a } else { &mut b };
                        c.call(i as u128, i as i64).await?;
                    }
                    chunks.push(us(t.elapsed()) / len as f64);
                }
                let v = median(chunks);
                a.close().await;
                b.close().await;
                Ok(Outcome::one("rtt_us", v))
            }
            Group::TputStrict | Group::TputWindow => {
                let (n, window, metric) = if g == Group::TputStrict {
                    (p.tput_n, 1, "tput_strict_per_s")
                } else {
                    (p.window_n, p.window, "tput_window_per_s")
                };
                let (mut a, mut b) = self.pair().await?;
                let t = Instant::now();
                let (ra, rb) = tokio::join!(
                    lane(&mut a, n.div_ceil(2), window),
                    lane(&mut b, n / 2, window)
                );
                let v = n as f64 / t.elapsed().as_secs_f64();
                ra?;
                rb?;
                a.close().await;
                b.close().await;
                Ok(Outcome::one(metric, v))
            }
            Group::SpawnReady => {
                let mut total = Duration::ZERO;
                for _ in 0..p.spawn_k {
                    let t = Instant::now();
                    let (mut a, b) = self.pair().await?;
                    a.call(1, 1).await?;
                    total += t.elapsed();
                    a.close().await;
                    b.close().await;
                }
                Ok(Outcome::one("spawn_ready_ms", ms(total) / p.spawn_k as f64))
            }
            Group::FreshProcess => {
                let n = p.fresh_n;
                let fresh_lane = |count: u64| {
                    let exe = exe.clone();
                    async move {
                        for i in 0..count {
                            let mut c = FrameChild::spawn(&exe).await?;
                            c.call(i as u128, 1).await?;
                            c.close().await;
                        }
                        anyhow::Ok(())
                    }
                };
                let t = Instant::now();
                let (ra, rb) = tokio::join!(fresh_lane(n.div_ceil(2)), fresh_lane(n / 2));
                let v = n as f64 / t.elapsed().as_secs_f64();
                ra?;
                rb?;
                Ok(Outcome::one("fresh_process_per_s", v))
            }
            Group::Cancel => {
                let (mut victim, mut other) = self.pair().await?;
                let mut resolve = Duration::ZERO;
                let mut replace = Duration::ZERO;
                for i in 0..p.cancel_k {
                    victim
                        .tx
                        .send(encode(&Req::Sleep {
                            id: i as u128,
                            ms: 60_000,
                        })?)
                        .await?;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let t = Instant::now();
                    sys::kill_pid(victim.child.id().context("no pid")?);
                    let status = victim.wait_death().await?;
                    let t1 = t.elapsed();
                    victim = FrameChild::spawn(&exe).await?;
                    let t2 = t.elapsed();
                    ensure!(!status.success(), "killed child exited cleanly");
                    resolve += t1;
                    replace += t2;
                }
                other.call(1, 1).await?;
                victim.close().await;
                other.close().await;
                Ok(Outcome::many(vec![
                    ("cancel_resolve_ms", ms(resolve) / p.cancel_k as f64),
                    ("cancel_replace_ms", ms(replace) / p.cancel_k as f64),
                ]))
            }
            Group::Crash => {
                let mut total = Duration::ZERO;
                for i in 0..p.crash_k {
                    let mut c = FrameChild::spawn(&exe).await?;
                    c.call(i as u128, 1).await?;
                    let t = Instant::now();
                    c.tx.send(encode(&Req::Crash)?).await?;
                    let status = c.wait_death().await?;
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
                let (mut a, b) = self.pair().await?;
                blob(&mut a, 0, p.blob_bytes).await?;
                let t = Instant::now();
                for i in 0..p.blob_k {
                    blob(&mut a, i as u128, p.blob_bytes).await?;
                }
                let secs = t.elapsed().as_secs_f64();
                a.close().await;
                b.close().await;
                Ok(Outcome::one(
                    "blob_mb_per_s",
                    (p.blob_bytes * p.blob_k) as f64 / (1 << 20) as f64 / secs,
                ))
            }
            Group::IdleRss => {
                let (mut a, mut b) = self.pair().await?;
                a.call(1, 1).await?;
                b.call(2, 2).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let pids = [a.child.id(), b.child.id()]
                    .into_iter()
                    .collect::<Option<Vec<u32>>>()
                    .context("no pid")?;
                let v = sys::mean_rss_mib(&pids)?;
                a.close().await;
                b.close().await;
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

/// A 10 MiB result: one frame, decoded into a fresh buffer.
async fn blob(c: &mut FrameChild, id: u128, n: u64) -> Result<()> {
    c.tx.send(encode(&Req::Blob { id, n })?).await?;
    let f = c.rx.next().await.context("end of stream")??;
    match decode::<Resp>(&f)? {
        Resp::Done {
            id: got,
            result: Ok(b),
        } if got == id && b.len() as u64 == n => Ok(()),
        _ => bail!("unexpected blob answer"),
    }
}

/// `n` calls on one child with `window` in flight; answers that arrived together are
/// answered together (one flush).
async fn lane(c: &mut FrameChild, n: u64, window: u64) -> Result<()> {
    let mut sent = 0u64;
    let mut got = 0u64;
    while sent < window.min(n) {
        c.tx.feed(run_req(sent as u128, sent as i64)?).await?;
        sent += 1;
    }
    SinkExt::<Bytes>::flush(&mut c.tx).await?;
    while got < n {
        let f = c.rx.next().await.context("end of stream")??;
        check_done(&f, got as u128, got as i64)?;
        got += 1;
        if sent < n {
            c.tx.feed(run_req(sent as u128, sent as i64)?).await?;
            sent += 1;
        }
        while let Some(Some(f)) = c.rx.next().now_or_never() {
            check_done(&f?, got as u128, got as i64)?;
            got += 1;
            if sent < n {
                c.tx.feed(run_req(sent as u128, sent as i64)?).await?;
                sent += 1;
            }
        }
        SinkExt::<Bytes>::flush(&mut c.tx).await?;
    }
    Ok(())
}

/// `child frame-worker`: a ready frame, then one `Done` per request. Blocking I/O, like
/// procpool's worker. With `write_each` every answer is written before the next request
/// is read; otherwise answers wait in the buffer until the input is empty.
pub fn child_main(write_each: bool) -> Result<()> {
    // SAFETY: fds 0 and 1 are this process's stdin and stdout, owned from here on.
    let (input, output) = unsafe { (File::from_raw_fd(0), File::from_raw_fd(1)) };
    let mut r = BufReader::with_capacity(64 << 10, input);
    let mut w = BufWriter::with_capacity(64 << 10, output);
    let mut out = Vec::new();
    let mut write = |w: &mut BufWriter<File>, msg: &RespRef<'_>| -> Result<()> {
        out.clear();
        out.extend_from_slice(&[0; 4]);
        bincode::serde::encode_into_std_write(msg, &mut out, cfg())?;
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_le_bytes());
        w.write_all(&out)?;
        Ok(())
    };
    write(
        &mut w,
        &RespRef::Ready {
            pid: std::process::id(),
        },
    )?;
    w.flush()?;
    let mut frame = Vec::new();
    let mut blob = Vec::new();
    loop {
        let mut prefix = [0u8; 4];
        if let Err(e) = r.read_exact(&mut prefix) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Ok(());
            }
            return Err(e.into());
        }
        let len = u32::from_le_bytes(prefix) as usize;
        ensure!(len <= MAX_FRAME, "frame too large");
        frame.resize(len, 0);
        r.read_exact(&mut frame)?;
        match decode::<Req>(&frame)? {
            Req::Run { id, name, args } => {
                ensure!(name == "add", "unknown task {name}");
                let (a, b): (i64, i64) = decode(&args)?;
                let result = bincode::serde::encode_to_vec(a.wrapping_add(b), cfg())?;
                write(
                    &mut w,
                    &RespRef::Done {
                        id,
                        result: Ok(serde_bytes::Bytes::new(&result)),
                    },
                )?;
            }
            Req::Blob { id, n } => {
                if blob.len() as u64 != n {
                    blob = sys::pattern(n as usize);
                }
                write(
                    &mut w,
                    &RespRef::Done {
                        id,
                        result: Ok(serde_bytes::Bytes::new(&blob)),
                    },
                )?;
            }
            Req::Sleep { id, ms } => {
                std::thread::sleep(Duration::from_millis(ms));
                let result = bincode::serde::encode_to_vec(ms, cfg())?;
                write(
                    &mut w,
                    &RespRef::Done {
                        id,
                        result: Ok(serde_bytes::Bytes::new(&result)),
                    },
                )?;
            }
            Req::Crash => crate::floor_pipe::crash(),
        }
        if write_each || r.buffer().is_empty() {
            w.flush()?;
        }
    }
}
