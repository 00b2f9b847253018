//! `procpool-bench`: the engine of `scripts/bench`.
//!
//! Runs every metric of issue 5 for the floor (raw pipes; a minimal tokio framed
//! ping-pong), procpool through its public API and its `procpool run` command line
//! (issue 16), and the peers (procspawn's `Pool` and
//! Python's `ProcessPoolExecutor`, as separate programs), alternating systems inside each
//! repetition so that drift of the machine hits all of them alike. Prints a table (median
//! [min–max] over the repetitions) and the ratios against the targets; `--json FILE`
//! writes the same as a JSON document.

mod broker;
mod cli;
mod floor_pipe;
mod floor_tokio;
mod params;
mod peers;
mod pp;
mod report;
mod sys;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use params::{Group, Params, Scale};

/// What one sample of one group gave.
pub enum Outcome {
    Values(Vec<(&'static str, f64)>),
    Unsupported(String),
}

impl Outcome {
    pub fn one(metric: &'static str, v: f64) -> Outcome {
        Outcome::Values(vec![(metric, v)])
    }

    pub fn many(values: Vec<(&'static str, f64)>) -> Outcome {
        Outcome::Values(values)
    }

    pub fn unsupported(why: &str) -> Outcome {
        Outcome::Unsupported(why.to_owned())
    }
}

/// `0..n` in up to 10 consecutive chunks. Round trips are timed per chunk and the sample
/// is the median of the chunk means, so a burst of load from outside spoils one chunk, not
/// the whole sample.
pub fn rtt_chunks(n: u64) -> Vec<std::ops::Range<u64>> {
    let k = n.clamp(1, 10);
    (0..k).map(|c| c * n / k..(c + 1) * n / k).collect()
}

/// Median of a non-empty list.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Parser)]
#[command(
    name = "procpool-bench",
    about = "procpool beside the physical floor and its peers; see scripts/bench",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    child: Option<Child>,

    /// The short run: the whole set in well under a minute (same as --scale quick).
    #[arg(long)]
    quick: bool,

    /// Size of the samples.
    #[arg(long, value_enum, default_value = "full")]
    scale: Scale,

    /// Repetitions (each one runs every system once per metric, in rotated order).
    /// Default 7, or 5 with --quick.
    #[arg(long)]
    reps: Option<usize>,

    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Systems to run, comma-separated: floor_pipe, floor_tokio, floor_tokio_each, procpool,
    /// procpool_build, procspawn, python_ppe. Default: the floors, procpool, and each peer
    /// whose program is given. `procpool` runs the pool on the bench's runtime
    /// (`PoolBuilder::start`); `procpool_build` on its own supervisor thread (`build`), for
    /// comparison; `floor_tokio_each` is the framed floor with its child writing each
    /// answer at once, as exact crash attribution requires (a reference, no target).
    #[arg(long, value_delimiter = ',')]
    systems: Option<Vec<String>>,

    /// Groups or metrics to run, comma-separated (e.g. rtt_us,blob). Default: all.
    #[arg(long, value_delimiter = ',')]
    metrics: Option<Vec<String>>,

    /// The procpool worker binary. Default: `procpool-demo` next to this binary, else this
    /// binary itself (it links the demo tasks and calls `procpool::init()`).
    #[arg(long)]
    worker: Option<PathBuf>,

    /// `max_rss` in bytes for the pools of the `procpool` columns (not for `queued_*`, nor
    /// the command line's metrics): the memory checks' cost, read against the floors.
    #[arg(long)]
    max_rss: Option<u64>,

    /// The `procpool` command line measured by `cli_jobs_per_s` and `cli_rtt_us`, with
    /// --worker as its worker. Default: `procpool` next to this binary.
    #[arg(long)]
    cli: Option<PathBuf>,

    /// The procspawn peer program (scripts/bench-peers/procspawn-peer, built).
    #[arg(long)]
    procspawn_peer: Option<PathBuf>,

    /// The Python peer script (scripts/bench-peers/python_ppe.py).
    #[arg(long)]
    python_script: Option<PathBuf>,

    /// The Python interpreter for --python-script.
    #[arg(long, default_value = "python3")]
    python: PathBuf,

    /// The broker set (`scripts/bench --broker` starts a private redis-server and passes
    /// its URL): systems procpool, procpool_broker and celery, metrics rtt_us,
    /// tput_strict_per_s and the broker_* ones.
    #[arg(long)]
    broker_url: Option<String>,

    /// The Celery peer script (scripts/bench-peers/celery_peer.py).
    #[arg(long)]
    celery_script: Option<PathBuf>,

    /// The Python interpreter of the Celery peer's virtual environment.
    #[arg(long, default_value = "python3")]
    celery_python: PathBuf,
}

#[derive(Subcommand)]
enum Child {
    /// Internal: the child side of a floor or a measurement in a separate process.
    #[command(hide = true)]
    Child {
        mode: ChildMode,
        #[arg(long)]
        n: Option<u64>,
        #[arg(long)]
        worker: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ChildMode {
    PipeEcho,
    FrameWorker,
    FrameWorkerEach,
    QueuedProcpool,
    QueuedProcpoolBuild,
}

const ALL_SYSTEMS: [&str; 9] = [
    "floor_pipe",
    "floor_tokio",
    "floor_tokio_each",
    "procpool",
    "procpool_build",
    "procspawn",
    "python_ppe",
    "procpool_broker",
    "celery",
];

/// The systems of a `--broker` run.
const BROKER_SYSTEMS: [&str; 3] = ["procpool", "procpool_broker", "celery"];

fn main() {
    // Lets this binary serve as the procpool worker when procpool-demo is not built.
    procpool::init();
    let cli = Cli::parse();
    let result = match cli.child {
        Some(Child::Child { mode, n, worker }) => run_child(mode, n, worker),
        None => run(cli),
    };
    if let Err(e) = result {
        eprintln!("procpool-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run_child(mode: ChildMode, n: Option<u64>, worker: Option<PathBuf>) -> Result<()> {
    match mode {
        ChildMode::PipeEcho => floor_pipe::child_main(),
        ChildMode::FrameWorker => floor_tokio::child_main(false),
        ChildMode::FrameWorkerEach => floor_tokio::child_main(true),
        ChildMode::QueuedProcpool | ChildMode::QueuedProcpoolBuild => pp::queued_child(
            &worker.context("--worker is required")?,
            n.context("--n is required")?,
            match mode {
                ChildMode::QueuedProcpoolBuild => pp::Mode::Build,
                _ => pp::Mode::Start,
            },
        ),
    }
}

/// One system under measurement.
enum System {
    Pipe(floor_pipe::FloorPipe),
    Tokio(floor_tokio::FloorTokio),
    Procpool(pp::Procpool),
    Broker(broker::BrokerSystem),
    Peer(peers::Peer),
}

impl System {
    fn measure(&mut self, rt: &tokio::runtime::Runtime, g: Group, p: &Params) -> Result<Outcome> {
        match self {
            System::Pipe(s) => s.measure(g, p),
            System::Tokio(s) => s.measure(rt, g, p),
            System::Procpool(s) => s.measure(rt, g, p),
            System::Broker(s) => s.measure(rt, g, p),
            System::Peer(s) => s.measure(g, p),
        }
    }
}

fn default_worker(exe: &Path) -> (PathBuf, Option<String>) {
    let demo = exe.with_file_name("procpool-demo");
    if demo.is_file() {
        (demo, None)
    } else {
        (
            exe.to_owned(),
            Some(format!(
                "{} not found: procpool's worker is this bench binary (it links the demo tasks)",
                demo.display()
            )),
        )
    }
}

fn run(cli: Cli) -> Result<()> {
    let started = Instant::now();
    let scale = if cli.quick { Scale::Quick } else { cli.scale };
    let reps = cli
        .reps
        .unwrap_or(if scale == Scale::Full { 7 } else { 5 })
        .max(1);
    let params = Params::new(scale);
    let exe = std::env::current_exe().context("current_exe")?;
    let (worker, worker_note) = match &cli.worker {
        Some(w) => (w.clone(), None),
        None => default_worker(&exe),
    };
    let cli_path = cli
        .cli
        .clone()
        .unwrap_or_else(|| exe.with_file_name("procpool"));
    sys::disable_core_dumps();

    let broker = cli.broker_url.is_some();
    let groups: Vec<Group> = match &cli.metrics {
        None if broker => Group::BROKER.to_vec(),
        None => Group::LOCAL.to_vec(),
        Some(list) => {
            let mut gs = Vec::new();
            for m in list {
                let g = Group::parse(m).with_context(|| format!("unknown metric {m}"))?;
                if !gs.contains(&g) {
                    gs.push(g);
                }
            }
            gs
        }
    };
    let wanted: Vec<String> = match &cli.systems {
        Some(list) => list.clone(),
        None if broker => BROKER_SYSTEMS
            .iter()
            .filter(|s| **s != "celery" || cli.celery_script.is_some())
            .map(|s| s.to_string())
            .collect(),
        None => ALL_SYSTEMS
            .iter()
            .filter(|s| match **s {
                // Only on request: the same pool on its own supervisor thread, and the
                // framed floor writing each answer at once (a reference, no target).
                "procpool_build" | "floor_tokio_each" => false,
                "procspawn" => cli.procspawn_peer.is_some(),
                "python_ppe" => cli.python_script.is_some(),
                "procpool_broker" | "celery" => false,
                _ => true,
            })
            .map(|s| s.to_string())
            .collect(),
    };

    let mut machine = sys::machine();
    let mut systems: Vec<(String, System)> = Vec::new();
    for name in &wanted {
        let s = match name.as_str() {
            "floor_pipe" => System::Pipe(floor_pipe::FloorPipe::new(&exe)),
            "floor_tokio" => System::Tokio(floor_tokio::FloorTokio::new(&exe, false)),
            "floor_tokio_each" => System::Tokio(floor_tokio::FloorTokio::new(&exe, true)),
            "procpool" => System::Procpool(pp::Procpool::new(
                &worker,
                cli.max_rss,
                &exe,
                &cli_path,
                pp::Mode::Start,
            )),
            "procpool_build" => System::Procpool(pp::Procpool::new(
                &worker,
                cli.max_rss,
                &exe,
                &cli_path,
                pp::Mode::Build,
            )),
            "procspawn" => {
                let path = cli
                    .procspawn_peer
                    .clone()
                    .context("procspawn needs --procspawn-peer")?;
                System::Peer(peers::Peer::new(vec![path.into_os_string()]))
            }
            "python_ppe" => {
                let script = cli
                    .python_script
                    .clone()
                    .context("python_ppe needs --python-script")?;
                System::Peer(peers::Peer::new(vec![
                    cli.python.clone().into_os_string(),
                    OsString::from("-u"),
                    script.into_os_string(),
                ]))
            }
            "procpool_broker" => {
                let url = cli
                    .broker_url
                    .clone()
                    .context("procpool_broker needs --broker-url")?;
                System::Broker(broker::BrokerSystem::new(&worker, &exe, &url))
            }
            "celery" => {
                let script = cli
                    .celery_script
                    .clone()
                    .context("celery needs --celery-script")?;
                let url = cli
                    .broker_url
                    .clone()
                    .context("celery needs --broker-url")?;
                System::Peer(
                    peers::Peer::new(vec![
                        cli.celery_python.clone().into_os_string(),
                        OsString::from("-u"),
                        script.into_os_string(),
                    ])
                    .with_options(vec!["--redis-url".into(), url]),
                )
            }
            other => bail!("unknown system {other} (one of {})", ALL_SYSTEMS.join(", ")),
        };
        if let System::Peer(p) = &s {
            let info = p
                .info()
                .with_context(|| format!("the {name} peer does not answer `info`"))?;
            for (k, v) in info {
                machine.insert(k, v);
            }
        }
        systems.push((name.clone(), s));
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let names: Vec<String> = systems.iter().map(|(n, _)| n.clone()).collect();
    let mut results = report::Results::new(names.clone(), reps);
    if let Some(n) = worker_note {
        results.notes.push(n);
    }
    eprintln!(
        "procpool-bench: {} systems, {} groups, {reps} repetitions, scale {scale:?}",
        names.len(),
        groups.len()
    );
    let mut timing: std::collections::BTreeMap<(&str, String), f64> = Default::default();
    for rep in 0..reps {
        eprint!("rep {}/{reps}:", rep + 1);
        for &g in &groups {
            eprint!(" {}", g.name());
            // Rotate the order each repetition: no system always runs first or last.
            let k = systems.len();
            for j in 0..k {
                let i = (j + rep) % k;
                let (name, system) = &mut systems[i];
                let p = params.for_system(name, scale);
                let t = Instant::now();
                let outcome = system.measure(&rt, g, &p);
                *timing.entry((g.name(), name.clone())).or_default() += t.elapsed().as_secs_f64();
                match outcome {
                    Ok(Outcome::Values(values)) => {
                        for (m, v) in values {
                            results.add(m, name, rep, v);
                        }
                    }
                    Ok(Outcome::Unsupported(why)) => {
                        for m in g.metrics() {
                            results.set_unsupported(m, name, &why);
                        }
                    }
                    Err(e) => {
                        let note = format!("rep {}: {} {}: {e:#}", rep + 1, name, g.name());
                        eprintln!("\n  failed: {note}");
                        results.notes.push(note);
                        for m in g.metrics() {
                            results.mark_failed(m, name);
                        }
                    }
                }
            }
        }
        eprintln!();
    }
    machine.insert("loadavg_end".into(), sys::loadavg().into());
    machine.insert("date_unix".into(), sys::unix_time().into());
    let elapsed = started.elapsed().as_secs_f64();

    println!();
    println!(
        "procpool-bench — {} on {} ({} CPUs), load {} → {}; {reps} repetitions, scale {scale:?}",
        machine
            .get("profile")
            .and_then(|v| v.as_str())
            .unwrap_or("?"),
        machine
            .get("cpu_model")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown CPU"),
        machine.get("cpus").cloned().unwrap_or_default(),
        machine
            .get("loadavg_start")
            .and_then(|v| v.as_str())
            .unwrap_or("?"),
        machine
            .get("loadavg_end")
            .and_then(|v| v.as_str())
            .unwrap_or("?"),
    );
    println!("median [min–max] over the repetitions; — = the system has no such feature");
    println!();
    print!("{}", results.table());
    println!();
    print!("{}", results.ratios());
    if let Some(modes) = results.mode_ratios() {
        println!();
        print!("{modes}");
    }
    println!();
    println!("Definitions:");
    for line in definitions(&params, scale) {
        println!("  {line}");
    }
    if !results.notes.is_empty() {
        println!();
        println!("Notes:");
        for n in &results.notes {
            println!("  {n}");
        }
    }
    println!();
    let mut by_system: std::collections::BTreeMap<&str, f64> = Default::default();
    for ((_, s), t) in &timing {
        *by_system.entry(s.as_str()).or_default() += t;
    }
    let spent: Vec<String> = by_system
        .iter()
        .map(|(s, t)| format!("{s} {t:.1} s"))
        .collect();
    println!("total {elapsed:.1} s ({})", spent.join(", "));

    if let Some(path) = &cli.json {
        let config = json!({
            "scale": format!("{scale:?}").to_lowercase(),
            "reps": reps,
            "systems": names,
            "groups": groups.iter().map(|g| g.name()).collect::<Vec<_>>(),
            "params": params,
            "params_python_ppe": params.for_system("python_ppe", scale),
            "params_celery": params.for_system("celery", scale),
            "worker": worker,
            "definitions": definitions(&params, scale),
            "seconds_spent": timing
                .iter()
                .map(|((g, s), t)| (format!("{g}/{s}"), json!((t * 100.0).round() / 100.0)))
                .collect::<serde_json::Map<_, _>>(),
        });
        let doc = results.json(serde_json::to_value(machine)?, config, elapsed);
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn definitions(p: &Params, scale: Scale) -> Vec<String> {
    let py = p.for_system("python_ppe", scale);
    let cel = p.for_system("celery", scale);
    vec![
        "all systems: 2 workers; units: us, ms, tasks/s, MiB/s, MiB, bytes".into(),
        "procpool: PoolBuilder::start, the pool on the bench's current-thread runtime (procpool_build, on request: PoolBuilder::build, its own supervisor thread)".into(),
        format!(
            "rtt_us: {} sequential submit -> typed result in 10 chunks, median of the chunk means (python: {})",
            p.rtt_n, py.rtt_n
        ),
        format!(
            "tput_strict_per_s: {} no-op tasks, one in flight per worker (python: {}, kept at 2 in flight by the caller)",
            p.tput_n, py.tput_n
        ),
        format!(
            "tput_window_per_s: {} no-op tasks, {} in flight per worker (procpool: prefetch({}); python: {} tasks, its built-in call queue; procspawn has no window)",
            p.window_n,
            p.window,
            p.window - 1,
            py.window_n
        ),
        format!(
            "spawn_ready_ms: cold pool -> first result, mean of {}; floor_pipe = 2x spawn+exit of /bin/true, floor_tokio = 2x this binary to its ready frame + one call",
            p.spawn_k
        ),
        format!(
            "fresh_process_per_s: {} tasks, a new process each (procpool max_tasks_per_worker(1); python max_tasks_per_child=1, forkserver: fork refuses it; procspawn: spawn() per task; floors: 2 lanes of spawn+exit) (python: {})",
            p.fresh_n, py.fresh_n
        ),
        format!(
            "cancel_resolve_ms / cancel_replace_ms: kill a running sleep -> its future resolved / a replacement worker ready, mean of {} (procspawn: replacement = a no-op answered by it, one round trip included; floors: SIGKILL -> EOF + reap / + a new child's ready byte)",
            p.cancel_k
        ),
        format!(
            "crash_detect_ms: submit of a SIGSEGV task -> typed error, mean of {}",
            p.crash_k
        ),
        format!(
            "blob_mb_per_s: {} results of {} MiB each, decoded (floor_pipe: raw frame into a reused buffer; floor_tokio: framed, bincode-decoded into a fresh buffer) (python: {})",
            p.blob_k,
            p.blob_bytes >> 20,
            py.blob_k
        ),
        format!(
            "cli_jobs_per_s: `procpool run --workers 2 --prefetch-jobs {}` of a file of {} no-op jobs (`add`) with --out FILE, start to exit (procpool only)",
            p.window - 1,
            p.cli_jobs
        ),
        format!(
            "cli_rtt_us: the same command with --jobs -: a job line into its stdin -> its record out of its stdout, {} in 10 chunks, median of the chunk means (procpool only)",
            p.rtt_n
        ),
        "idle_worker_rss_mb: VmRSS of the idle workers (mean of 2) after a task each".into(),
        format!(
            "queued_task_bytes: supervisor RSS growth per task with {} queued behind 2 busy workers, handles kept (python: {})",
            p.queued_n, py.queued_n
        ),
        format!(
            "broker_rtt_us (--broker): {} sequential no-op tasks through a private redis-server, submit -> result in the submitter, median of 10 chunk means; procpool_broker: 2 `procpool agent`s x 1 worker, --prefetch-tasks 1 each; celery: prefork concurrency 2, acks_late, prefetch multiplier 1 (one task ahead per process), Redis broker and result backend (celery: {})",
            p.broker_rtt_n, cel.broker_rtt_n
        ),
        format!(
            "broker_tput_per_s (--broker): {} no-op tasks submitted at once, every result collected (celery: {})",
            p.broker_tput_n, cel.broker_tput_n
        ),
        format!(
            "requeue_after_kill_ms (--broker): SIGKILL of the agent running a long task -> that task started by the other agent, mean of {}",
            p.requeue_k
        ),
    ]
}
