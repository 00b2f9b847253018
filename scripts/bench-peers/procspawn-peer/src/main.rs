//! procspawn's `Pool` measured for `scripts/bench`, one metric group per invocation:
//!
//! ```text
//! procspawn-peer GROUP --n N [--window W] [--bytes B]   -> {"values": {"metric": x, ...}}
//!                                                        or {"unsupported": "why"}
//! procspawn-peer info                                    -> {"info": {...}}
//! ```
//!
//! Kept out of procpool's workspace (its own `[workspace]`), built by `scripts/bench` into
//! its own target directory.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use procspawn::Pool;
use serde_bytes::ByteBuf;
use serde_json::json;

const WORKERS: usize = 2;
/// Handles kept outstanding in the throughput run: each spawn opens two ipc-channel
/// socketpairs, so queueing all 20 000 at once would exhaust the descriptor limit.
const OUTSTANDING: usize = 64;

fn add((a, b): (i64, i64)) -> i64 {
    a.wrapping_add(b)
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn segfault(_: ()) {
    // SAFETY: deliberately unsound: the task exists to crash its worker.
    unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u64>(), 1) }
}

/// The pattern of procpool's demo `bytes` task, produced per call like there.
fn bytes(n: u64) -> ByteBuf {
    ByteBuf::from((0..n).map(|i| i as u8).collect::<Vec<u8>>())
}

fn pool() -> Pool {
    Pool::new(WORKERS).expect("procspawn pool")
}

fn call(pool: &Pool, a: i64) {
    let v = pool.spawn((a, 1), add).join().expect("add");
    assert_eq!(v, a + 1);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Direct children of this process (procspawn keeps no list of its workers' pids).
fn children() -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    procspawn::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let group = args.first().map(String::as_str).unwrap_or("");
    let n = arg(&args, "--n", 1).max(1);
    let blob_bytes = arg(&args, "--bytes", 10 << 20);
    let out = match group {
        "info" => json!({"info": {"procspawn": "1.0.2"}}),
        "rtt" => {
            let pool = pool();
            for i in 0..50 {
                call(&pool, i);
            }
            // Timed in 10 chunks; the median of the chunk means, like the engine does.
            let k = n.clamp(1, 10);
            let mut chunks: Vec<f64> = (0..k)
                .map(|c| {
                    let range = c * n / k..(c + 1) * n / k;
                    let len = (range.end - range.start) as f64;
                    let t = Instant::now();
                    for i in range {
                        call(&pool, i as i64);
                    }
                    t.elapsed().as_secs_f64() * 1e6 / len
                })
                .collect();
            chunks.sort_by(|a, b| a.total_cmp(b));
            let m = chunks.len();
            let median = if m % 2 == 1 {
                chunks[m / 2]
            } else {
                (chunks[m / 2 - 1] + chunks[m / 2]) / 2.0
            };
            json!({"values": {"rtt_us": median}})
        }
        "tput_strict" => {
            let pool = pool();
            for i in 0..50 {
                call(&pool, i);
            }
            let t = Instant::now();
            let mut pending = VecDeque::new();
            for i in 0..n {
                if pending.len() == OUTSTANDING {
                    let (a, h): (i64, procspawn::JoinHandle<i64>) = pending.pop_front().unwrap();
                    assert_eq!(h.join().expect("add"), a + 1);
                }
                pending.push_back((i as i64, pool.spawn((i as i64, 1), add)));
            }
            for (a, h) in pending {
                assert_eq!(h.join().expect("add"), a + 1);
            }
            json!({"values": {"tput_strict_per_s": n as f64 / t.elapsed().as_secs_f64()}})
        }
        "tput_window" => json!({"unsupported":
            "no prefetch window: a worker gets its next call only after its previous result"}),
        "spawn_ready" => {
            let mut total = Duration::ZERO;
            for _ in 0..n {
                let t = Instant::now();
                let pool = pool();
                call(&pool, 1);
                total += t.elapsed();
                drop(pool);
            }
            json!({"values": {"spawn_ready_ms": ms(total) / n as f64}})
        }
        "fresh_process" => {
            let t = Instant::now();
            std::thread::scope(|s| {
                for lane in 0..2u64 {
                    s.spawn(move || {
                        for i in (lane..n).step_by(2) {
                            let v = procspawn::spawn((i as i64, 1), add).join().expect("add");
                            assert_eq!(v, i as i64 + 1);
                        }
                    });
                }
            });
            json!({"values": {"fresh_process_per_s": n as f64 / t.elapsed().as_secs_f64()}})
        }
        "cancel" => {
            let mut resolve = Duration::ZERO;
            let mut replace = Duration::ZERO;
            for _ in 0..n {
                // Both workers busy, so the no-op after the kill can only run on the
                // replacement of the killed one.
                let pool = pool();
                call(&pool, 1);
                let mut victim = pool.spawn(60_000, sleep_ms);
                let mut other = pool.spawn(60_000, sleep_ms);
                while victim.pid().is_none() || other.pid().is_none() {
                    std::thread::sleep(Duration::from_micros(100));
                }
                std::thread::sleep(Duration::from_millis(2));
                let t = Instant::now();
                victim.kill().expect("kill");
                let r = victim.join();
                let t1 = t.elapsed();
                assert!(r.is_err(), "a killed task gave a result");
                call(&pool, 2);
                let t2 = t.elapsed();
                other.kill().ok();
                resolve += t1;
                replace += t2;
                drop(other);
                drop(pool);
            }
            json!({"values": {
                "cancel_resolve_ms": ms(resolve) / n as f64,
                "cancel_replace_ms": ms(replace) / n as f64,
            }})
        }
        "crash" => {
            let pool = pool();
            call(&pool, 1);
            let mut total = Duration::ZERO;
            for _ in 0..n {
                // Let a respawn after the previous crash finish first.
                std::thread::sleep(Duration::from_millis(20));
                call(&pool, 1);
                let t = Instant::now();
                let r = pool.spawn((), segfault).join();
                total += t.elapsed();
                assert!(r.is_err(), "a segfault gave a result");
            }
            // The pool restarts the crashed worker; a pool dropped meanwhile leaves that
            // start half done (and the new worker panics noisily).
            std::thread::sleep(Duration::from_millis(20));
            call(&pool, 1);
            json!({"values": {"crash_detect_ms": ms(total) / n as f64}})
        }
        "blob" => {
            let pool = pool();
            let one = || {
                let b = pool.spawn(blob_bytes, bytes).join().expect("bytes");
                assert_eq!(b.len() as u64, blob_bytes);
            };
            one();
            let t = Instant::now();
            for _ in 0..n {
                one();
            }
            let mib = (blob_bytes * n) as f64 / (1 << 20) as f64;
            json!({"values": {"blob_mb_per_s": mib / t.elapsed().as_secs_f64()}})
        }
        "idle_rss" => {
            let pool = pool();
            let a = pool.spawn(5, sleep_ms);
            let b = pool.spawn(5, sleep_ms);
            a.join().expect("sleep");
            b.join().expect("sleep");
            std::thread::sleep(Duration::from_millis(20));
            let pids = children();
            assert!(!pids.is_empty(), "no worker found");
            let kib: u64 = pids.iter().map(|&p| rss_kib(p)).sum();
            json!({"values": {"idle_worker_rss_mb": kib as f64 / pids.len() as f64 / 1024.0}})
        }
        "queued" => json!({"unsupported":
            "each queued call holds two ipc-channel socketpairs (4 descriptors): a million do not fit in the descriptor limit"}),
        other => {
            eprintln!("procspawn-peer: unknown group {other:?}");
            std::process::exit(2);
        }
    };
    println!("{out}");
}
