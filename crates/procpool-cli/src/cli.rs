//! The command line, as clap derive structs: every flag, its default and its help text in
//! one place, so `--help` and the code cannot drift apart. No logic lives here: the
//! `PROCPOOL_*` variables and the config file are added to every flag generically by
//! `config.rs`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Multi-process worker pool: run batch jobs on crash-isolated worker processes.
#[derive(Debug, Parser)]
#[command(name = "procpool", version, propagate_version = true)]
#[command(after_long_help = CONFIG_HELP)]
pub(crate) struct Cli {
    /// Log verbosity on stderr. Default: `RUST_LOG` if set, else `warn`.
    #[arg(long, global = true, value_enum, value_name = "LEVEL")]
    pub(crate) log_level: Option<LogLevel>,

    /// Log lines as text for people or as JSON objects (one per line) for log collectors.
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub(crate) log_format: LogFormat,

    /// TOML file with defaults for any flag (see CONFIGURATION in `procpool --help`).
    /// Read before the command line is parsed.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run JSON Lines jobs on a pool of workers, writing one JSON result line per job.
    Run(RunArgs),
    /// List the tasks a worker binary serves, with parameter and result types.
    Tasks(TasksArgs),
    /// Serve a pool over HTTP and WebSocket: submit, poll and cancel tasks, follow their
    /// events, scrape metrics.
    Serve(ServeArgs),
    /// Run the tasks queued on a broker (`--broker URL`) on a local pool of workers: one
    /// of many agents, on as many machines, that `procpool run --broker` feeds.
    Agent(AgentArgs),
    /// Look into a live `procpool run`, `serve` or `agent` on this machine through its
    /// control socket: counts, running jobs, workers; cancel one job; drain.
    Ctl(CtlArgs),
}

/// `--control PATH`: where `run`, `serve` and `agent` open their control socket.
#[derive(Debug, Args)]
pub(crate) struct ControlArgs {
    /// Control socket for `procpool ctl` (a Unix socket, mode 0600, removed on exit).
    /// Default: `$XDG_RUNTIME_DIR/procpool/SUBCOMMAND-PID.sock`, or
    /// `/tmp/procpool-UID/SUBCOMMAND-PID.sock` (a 0700 directory) without
    /// XDG_RUNTIME_DIR. A stale socket left by a dead process is replaced; one a live
    /// process listens on is refused.
    #[arg(long, value_name = "PATH")]
    pub(crate) control: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_long_help = CTL_AFTER_HELP)]
pub(crate) struct CtlArgs {
    /// The control socket of the supervisor to ask. Default: the only live one of this
    /// user (several: they are listed, pick one with --control).
    #[arg(long, value_name = "PATH")]
    pub(crate) control: Option<PathBuf>,

    /// Print the reply as one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,

    #[command(subcommand)]
    pub(crate) action: CtlAction,
}

/// What `procpool ctl` asks.
#[derive(Clone, Debug, Subcommand)]
pub(crate) enum CtlAction {
    /// Jobs by status, queued jobs, workers by state.
    Status,
    /// The running and queued jobs (tasks of serve and agent): id, task, attempt, worker
    /// pid, time running.
    Jobs,
    /// The worker processes: pid, resident memory, the job each runs.
    Workers,
    /// Cancel one job by its id: a queued job never runs, a running one has its worker
    /// killed; its record says `cancelled` (serve: its status; agent: for good, on the
    /// broker).
    Cancel {
        /// The job's `id` (from the job file); the task id for serve and agent.
        id: String,
    },
    /// Stop dispatching and let the running jobs finish, as SIGTERM does with
    /// `--on-signal drain`.
    Drain,
}

/// `--broker` and `--namespace`: run through a broker's agents instead of local workers.
#[derive(Debug, Args)]
pub(crate) struct BrokerArgs {
    /// Redis broker URL (`redis://[user:password@]host[:port][/db]`): the tasks run on
    /// the agents (`procpool agent`) connected to it instead of local workers, and
    /// --worker is not needed.
    #[arg(long, env = "PROCPOOL_BROKER", value_name = "URL")]
    pub(crate) broker: Option<String>,

    /// Namespace on the broker: submitters and agents of one namespace share a queue.
    #[arg(
        long,
        env = "PROCPOOL_NAMESPACE",
        value_name = "NS",
        default_value = "procpool"
    )]
    pub(crate) namespace: String,
}

/// What a submitter asks of the broker for its tasks (`run` and `serve` with --broker).
#[derive(Debug, Args)]
#[command(next_help_heading = "Broker submitter (with --broker)")]
pub(crate) struct SubmitArgs {
    /// Attempts of a task that may be lost with their agent (killed, stalled past its
    /// lease) before the task fails with the error kind `lost`: a task that kills its
    /// agent does not loop.
    #[arg(long, value_name = "N", default_value = "3",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) lost_budget: u32,

    /// How long the broker keeps a finished task's result and events for its
    /// submitters, e.g. `10m`, `1h`; a submitter that is away longer (or a broker that
    /// forgot the task) reports it `lost`.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_timeout)]
    pub(crate) broker_result_ttl: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    #[command(flatten)]
    pub(crate) worker: WorkerArgs,

    #[command(flatten)]
    pub(crate) broker: BrokerArgs,

    #[command(flatten)]
    pub(crate) control: ControlArgs,

    /// Number of worker processes, and so of tasks taken at once. Default: the CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) workers: Option<u32>,

    /// Tasks taken beyond the free workers, queued on the agent so a worker never waits
    /// for the broker between two short tasks. 0: a task is taken only for a free worker,
    /// so a long task never holds another back from an idle agent.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) prefetch_tasks: u32,

    /// What the first SIGINT or SIGTERM does to the running tasks: `drain` lets them
    /// finish, `cancel` kills their workers and hands the tasks back to the queue (another
    /// agent runs them). Either way no new task is taken; exit 130 or 143.
    #[arg(long, value_enum, value_name = "MODE", default_value = "cancel")]
    pub(crate) on_signal: OnSignal,

    /// The lease on the tasks this agent runs, renewed every second: an agent that
    /// could not renew it for this long counts as gone, and its tasks go to another
    /// agent within about the lease plus a second (it kills their workers itself half a
    /// second before). At least 2s (two renewals), e.g. `3s`, `10s`. A longer lease
    /// rides out longer stalls (a paused VM, a slow network) but hands the tasks of a
    /// dead agent on later.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_timeout)]
    pub(crate) lease: Duration,

    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// `2026-01-01T00:00:00Z  WARN message key=value`.
    Text,
    /// `{"timestamp": ..., "level": "WARN", "message": ..., "key": value}`.
    Json,
}

/// `--on-signal`: what the first SIGINT or SIGTERM does to the jobs already dispatched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OnSignal {
    /// Let every dispatched job finish and write its record.
    Drain,
    /// Kill the workers at once; every dispatched job unfinished is `cancelled`.
    Cancel,
}

/// Log levels for `--log-level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Flags shared by every subcommand that starts workers.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// Worker executable: a binary built with procpool that calls `procpool::init()`.
    /// Default: this executable, when it registers tasks itself (a program whose `main`
    /// is `procpool_cli::main()`); the plain `procpool` binary needs it.
    #[arg(long, value_name = "PATH")]
    pub(crate) worker: Option<PathBuf>,

    /// Seconds a worker may take to start and complete its handshake.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub(crate) start_timeout: Duration,
}

#[derive(Debug, Args)]
#[command(after_long_help = RUN_AFTER_HELP)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) worker: WorkerArgs,

    #[command(flatten)]
    pub(crate) broker: BrokerArgs,

    #[command(flatten)]
    pub(crate) control: ControlArgs,

    /// JSON Lines job file; `-` reads the jobs from stdin. Read as a stream, not loaded
    /// whole.
    #[arg(long, value_name = "FILE|-")]
    pub(crate) jobs: PathBuf,

    /// Number of worker processes. Default: the available CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) workers: Option<u32>,

    /// Jobs sent ahead to a busy worker, so it starts the next one without waiting for a
    /// round trip through the supervisor: for many short jobs. A crash or a timeout still
    /// fails only the job that was running; the ones sent ahead go back to the queue. A
    /// job sent ahead waits for the one before it on that worker, even if another
    /// worker becomes free. Local workers only (with --broker, agents take
    /// --prefetch-tasks). Default: 0.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) prefetch_jobs: u32,

    /// Write the result lines to FILE (created, or truncated if it exists; appended to
    /// with --resume) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,

    /// Continue an interrupted batch: keep the records already in --out, skip every job
    /// that has one, run the rest and append their records (see RESUME below). Needs
    /// --out.
    #[arg(long)]
    pub(crate) resume: bool,

    /// What the first SIGINT or SIGTERM does to the jobs already dispatched: `drain` lets
    /// them finish, `cancel` kills their workers. Either way no new job starts, every
    /// dispatched job gets its record, and a second signal kills at once.
    #[arg(long, value_enum, value_name = "MODE", default_value = "cancel")]
    pub(crate) on_signal: OnSignal,

    #[command(flatten)]
    pub(crate) feedback: FeedbackArgs,

    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    #[command(flatten)]
    pub(crate) submit: SubmitArgs,
}

/// How the pool treats tasks and workers: deadlines, retries, recycling, sizing. Every
/// flag is optional; without any, tasks run with no deadline and no retry on a fixed-size
/// pool.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Task and worker policies")]
pub(crate) struct PolicyArgs {
    /// Deadline of each attempt of a job, e.g. `200ms`, `5s`, `2m`: at the deadline the
    /// worker's process group gets SIGTERM, then SIGKILL after --grace, and the job is
    /// `timed_out`. A job's own `timeout_ms` wins. Default: none.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub(crate) timeout: Option<Duration>,

    /// Time between the SIGTERM and the SIGKILL of a timed-out job, e.g. `500ms`; `0`
    /// kills at once. Default: 1s.
    #[arg(long, value_name = "DURATION", value_parser = parse_grace)]
    pub(crate) grace: Option<Duration>,

    /// Run a job again, up to N more times, when its worker died under it (`crashed`,
    /// `timed_out`, `limit_exceeded`, `protocol`), with exponential backoff from 50 ms to
    /// 5 s and jitter. Never for a user error or a panic. A job's own `retries` wins.
    /// Default: 0.
    #[arg(long, value_name = "N")]
    pub(crate) retries: Option<u32>,

    /// Which failures --retries (and a job's own `retries`) run again: a comma-separated
    /// list of crashed, timed_out, limit_exceeded, e.g. `crashed,limit_exceeded` fails a
    /// hanging job after its first timeout. Default: all three. (`protocol` failures are
    /// always retried; user errors and panics never.) With --broker, set it on the
    /// agents.
    #[arg(long, value_name = "KINDS", value_enum, value_delimiter = ',')]
    pub(crate) retry_on: Option<Vec<RetryKind>>,

    /// Replace a worker after it ran N tasks (1 = a fresh process per job).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_tasks_per_worker: Option<u64>,

    /// Kill a worker whose resident memory goes above SIZE while it runs a job, e.g.
    /// `512MiB`, `1GB`, `300M` (K, M, G are powers of 1000; KiB, MiB, GiB of 1024); the job
    /// is `limit_exceeded` and a fresh worker takes the next one. Read every 20 ms; on
    /// Linux the job's peak is checked too when it ends, so a brief one is not missed.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) max_rss: Option<u64>,

    /// Workers kept warm even when idle; more start on demand up to --workers. Default:
    /// all of them.
    #[arg(long, value_name = "N")]
    pub(crate) min_workers: Option<u32>,

    /// Stop workers idle for this long, down to --min-workers, e.g. `30s`. Default: never.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub(crate) idle_timeout: Option<Duration>,
}

/// A failure kind `--retry-on` may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(crate) enum RetryKind {
    /// The worker died under the task (signal or exit code).
    Crashed,
    /// The task ran past its deadline.
    TimedOut,
    /// The worker went above --max-rss or an rlimit.
    LimitExceeded,
}

/// What the operator sees on stderr while a batch runs.
#[derive(Debug, Args)]
#[command(next_help_heading = "Progress on stderr")]
pub(crate) struct FeedbackArgs {
    /// No progress bar, no periodic summary, no final table: stderr only gets errors and
    /// the logs asked for.
    #[arg(long)]
    pub(crate) quiet: bool,

    /// When stderr is not a terminal, print a one-line summary this often, e.g. `10s`,
    /// `1m`; `0` prints none. (On a terminal, a live progress bar is drawn instead.)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_grace)]
    pub(crate) progress_interval: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct TasksArgs {
    #[command(flatten)]
    pub(crate) worker: WorkerArgs,

    #[command(flatten)]
    pub(crate) broker: BrokerArgs,

    /// Print a JSON array (name, params [{name, type_name}], result, fallible, is_async)
    /// instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
#[command(after_long_help = SERVE_AFTER_HELP)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) worker: WorkerArgs,

    #[command(flatten)]
    pub(crate) broker: BrokerArgs,

    #[command(flatten)]
    pub(crate) control: ControlArgs,

    /// Number of worker processes. Default: the available CPUs.
    #[arg(long, env = "PROCPOOL_WORKERS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) workers: Option<u32>,

    /// Address and port to listen on; port 0 picks a free one. The address it listens
    /// on is printed on stderr as `listening on http://ADDR`. Any address that is not
    /// loopback needs --token.
    #[arg(
        long,
        env = "PROCPOOL_LISTEN",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:7070"
    )]
    pub(crate) listen: std::net::SocketAddr,

    /// Require `Authorization: Bearer TOKEN` on every /v1 request (else 401). Prefer the
    /// environment variable: a flag shows in the process list.
    #[arg(
        long,
        env = "PROCPOOL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,

    /// How long a finished task stays readable with GET /v1/tasks/{id} (then 410 Gone),
    /// e.g. `30s`, `10m`, `1h`.
    #[arg(long, env = "PROCPOOL_RESULT_TTL", value_name = "DURATION", default_value = "10m",
          value_parser = parse_timeout)]
    pub(crate) result_ttl: Duration,

    /// Largest request body accepted (else 413), e.g. `64KiB`, `1MiB`.
    #[arg(long, env = "PROCPOOL_MAX_BODY", value_name = "SIZE", default_value = "1MiB",
          value_parser = parse_size)]
    pub(crate) max_body: u64,

    /// Most tasks accepted and not yet finished; more submissions get 429.
    #[arg(long, env = "PROCPOOL_MAX_ACTIVE", value_name = "N", default_value = "10000",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_active: u64,

    /// Most bytes the results of finished tasks may hold in memory (as JSON); past it
    /// the oldest expire before --result-ttl (then 410 Gone), e.g. `64MiB`, `1GiB`.
    #[arg(long, env = "PROCPOOL_MAX_RESULTS_BYTES", value_name = "SIZE", default_value = "256MiB",
          value_parser = parse_size)]
    pub(crate) max_results_bytes: u64,

    /// Most bytes of events a WebSocket client may have waiting; a slower client loses
    /// its oldest events and reads a `lagged` event with how many, e.g. `1MiB`.
    #[arg(long, env = "PROCPOOL_CLIENT_BUFFER", value_name = "SIZE", default_value = "16MiB",
          value_parser = parse_size)]
    pub(crate) client_buffer: u64,

    /// What the first SIGTERM or SIGINT does to running tasks: `cancel` kills their
    /// workers, `drain` lets them (and the queued ones) finish. A second signal kills
    /// everything at once.
    #[arg(long, env = "PROCPOOL_ON_SIGNAL", value_name = "MODE", default_value = "cancel",
          value_parser = clap::builder::PossibleValuesParser::new(["cancel", "drain"]))]
    pub(crate) on_signal: String,

    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    #[command(flatten)]
    pub(crate) submit: SubmitArgs,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("{s} is outside 0 < SECS <= 86400"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration written the usual way (`200ms`, `5s`, `2m`, `1h 30m`); `0` allowed.
fn parse_grace(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    // humantime wants a unit on everything but a bare `0`.
    humantime::parse_duration(s)
        .map_err(|e| format!("not a duration ({e}); write it like 200ms, 5s or 2m"))
}

/// A duration above zero.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_grace(s)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// A byte size above zero: `512MiB`, `1GB`, `300M`, `4096`.
fn parse_size(s: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("not a size ({e}); write it like 512MiB, 1GB or 300M"))?;
    if size.as_u64() == 0 {
        return Err("must be larger than zero".into());
    }
    Ok(size.as_u64())
}

const RUN_AFTER_HELP: &str = "\
JOBS (one JSON object per line; blank lines are skipped):
  {\"id\": \"j1\", \"task\": \"add\", \"args\": [1, 2]}
  {\"id\": \"j2\", \"task\": \"sleep_ms\", \"args\": [5000], \"timeout_ms\": 500, \"retries\": 1}
  {\"id\": \"j3\", \"task\": \"greet\", \"kwargs\": {\"name\": \"Ada\", \"greeting\": \"Hi\"}}
  id          required, a non-empty string, unique within the run
  task        required, the name of a task the worker serves (see `procpool tasks`)
  args        optional, an array of positional arguments; default []
  kwargs      optional, an object of arguments by parameter name (the names
              `procpool tasks` lists), for the parameters after those in args; a
              parameter of type Option<..> may be left out. A missing parameter, an
              unknown name, or a name also given in args fails the job with kind
              `bad_args` naming it, before anything of the job runs
  timeout_ms  optional, a whole number of milliseconds above 0: this job's deadline,
              overriding --timeout
  retries     optional, a whole number >= 0: this job's crash-class retries,
              overriding --retries
  Any other field, a missing or non-string id, a missing task, args that are not an
  array, a timeout_ms or retries that is not such a number, a line that is not a JSON
  object, or an id seen before makes a `bad_job` record carrying the line number
  (1-based); the other jobs still run.

NESTED TASKS (a task's result as an argument):
  {\"id\": \"m\", \"task\": \"sum\", \"args\": [[{\"$task\": \"square\", \"args\": [2]},
                                    {\"$task\": \"square\", \"args\": [3]}]]}
  Any value anywhere inside args (in arrays, in objects, in another nested task's args)
  may be an object {\"$task\": NAME, \"args\": [...], \"kwargs\": {...}}. The nested
  tasks run first, all
  at once, each as soon as its own nested args are done; every result replaces its
  object, and then the job's task runs with the resolved args (job m completes with
  13). A nested task object has only \"$task\" (a task name), an optional \"args\"
  array and an optional \"kwargs\" object; any other shape makes a `bad_job`. timeout_ms and retries apply to the job's
  own task; nested tasks follow --timeout and --retries. When a nested task fails, the
  job fails with that task's error kind, the other nested tasks are cancelled (their
  workers killed), the job's task never runs (attempts 0, duration_ms from the start
  of the nested tasks), and error.input names the failed one:
  {\"task\": \"segfault\", \"path\": \"$[0][1]\"} (path $[0][1] is args[0][1]).

RESULTS (one JSON line per job, written and flushed as soon as that job ends, or
within 10 ms while a busy batch has more to do, so not in input order):
  {\"id\": \"j1\", \"task\": \"add\", \"line\": 1, \"status\": \"completed\", \"result\": 3,
   \"attempts\": 1, \"duration_ms\": 0.4}
  {\"id\": \"j2\", \"task\": \"segfault\", \"line\": 2, \"status\": \"failed\", \"attempts\": 1,
   \"duration_ms\": 1.2, \"error\": {\"kind\": \"crashed\", \"signal\": \"SIGSEGV\",
   \"message\": \"...\", \"stderr_tail\": []}}
  status      completed | failed | cancelled
  error.kind  user_error (+ type) | panicked (+ location) | crashed (+ signal or
              exit_code, stderr_tail) | timed_out (+ timeout_ms, the deadline hit) |
              limit_exceeded (message: which limit, with the figure) | unknown_task |
              bad_args | bad_job | protocol | cancelled
  error.input the nested task that failed the job: {\"task\": ..., \"path\": ...}
  attempts    how many times the job was started, retries included (0 if it never
              started: refused by the pool, or cancelled while queued)
  duration_ms time from the task first reaching a worker to its result (retries
              included)

RESUME (--resume --out FILE):
  Every record is appended to --out and flushed as soon as its job ends (within 10 ms
  in a busy batch), so after a crash or a SIGKILL of the supervisor FILE holds a record
  for every job that ended before it, but for those of its last instants (held or
  being written, well under 100 ms).
  Run the same command again with --resume: the records in FILE
  are kept, a torn last line (a record cut off mid-write) is removed, every job that
  already has a record is skipped, and the others run and append theirs. However often
  a batch is killed and resumed, it ends with exactly one record per job line.
  Jobs are matched by id: a job is skipped when FILE has a completed, failed or
  cancelled record with its id (a job cancelled by a signal counts as done; use
  --on-signal drain to let dispatched jobs finish instead). `bad_job` records are
  matched by line number, not id: a bad line (no id, a duplicate id, ...) is skipped
  when FILE has a bad_job record for its line, so a duplicate never hides the job that
  owns the id. The job file must therefore not change between the runs. A line of FILE
  that is not a record (other than a torn last line) stops the run before anything
  starts (exit 2). The exit code covers the records kept from the earlier runs too: 0
  only if every record in FILE is `completed`.

MEMORY:
  The supervisor's memory does not grow with the batch. A job file is read once before
  the batch to find duplicate ids and, with --resume, the jobs to skip; past 128k ids
  that check sorts on disk (unnamed temporary files in $TMPDIR, about 24 bytes per job,
  gone when it ends). Jobs from stdin or a pipe are checked as they stream in, in memory:
  16 bytes per job.

SIGNALS:
  The first SIGINT or SIGTERM stops dispatching: no new job is read. Then, per
  --on-signal, the jobs already dispatched (submitted to the pool, running or queued)
  either finish (drain) or are cancelled at once, their workers killed (cancel, the
  default). Either way every dispatched job gets its record, every worker is reaped,
  and procpool exits with 130 (SIGINT) or 143 (SIGTERM). A second SIGINT or SIGTERM
  kills every worker at once (the unfinished jobs get `cancelled` records) and exits
  with the same code. SIGHUP is logged and ignored. Jobs never dispatched get no
  record: run again with --resume to finish them.

PROGRESS (stderr; stdout or --out only ever get records):
  On a terminal, a live bar: jobs done of the total, failed, running, rate, ETA. The
  total is that of the job file (none for stdin). Otherwise a
  line every --progress-interval, e.g.
    procpool: 12.0s: 4000 of 100000 jobs done, 3 failed, 8 running, 333 jobs/s, ETA 4m 48s
  At the end, a table of the jobs by status and error kind. --quiet turns all of this
  off.

EXIT CODES:
  0    every job completed
  1    at least one job did not complete (or the run broke down half-way)
  2    bad usage (a bad flag, --resume without --out, a bad config file or variable), an
       unreadable job or results file, or a worker binary that is missing or is not a
       procpool worker: nothing was run and no record was written
  130  stopped by SIGINT (see SIGNALS)
  143  stopped by SIGTERM, or drained by `procpool ctl drain` (as SIGTERM with
       --on-signal drain)";

const SERVE_AFTER_HELP: &str = "\
ROUTES (JSON; with --token every /v1 route needs `Authorization: Bearer TOKEN`, else 401):
  POST   /v1/tasks        {\"task\": \"add\", \"args\": [1, 2], \"cache_key\": \"k\",
                           \"channel\": \"c\", \"timeout_ms\": 5000, \"retries\": 1}
                          {\"task\": \"greet\", \"kwargs\": {\"name\": \"Ada\"},
                           \"channel\": \"c\", \"notify_channels\": [\"audit\", \"ui\"]}
                          -> 202 {\"task_id\": ID}. Only task is required; args may hold
                          nested tasks {\"$task\": NAME, \"args\": [...], \"kwargs\":
                          {...}} as in `procpool run`; kwargs gives arguments by
                          parameter name. notify_channels: more channels that get the
                          task's events, as channel does. The same cache_key while that
                          task runs -> the same task_id (it runs once; the request's
                          channels are added to it); with --broker, servers on other
                          hosts given the same cache_key share that one run too (each
                          under its own task_id). 400 malformed body or unknown
                          field, 413 body over --max-body, 422 a task the workers do not
                          serve or bad_args (a keyword argument missing, unknown or also
                          given in args), 429 over --max-active, 503 shutting down.
  GET    /v1/tasks/ID     -> {\"task_id\", \"task\", \"status\", \"progress\",
                          \"progress_message\", \"worker_pids\", \"result\", \"error\"}
                          status: pending | running | completed | failed | cancelled;
                          error: {\"kind\", \"message\", ...} as in `procpool run`
                          records. Readable until --result-ttl after the end, then 410;
                          404 for an unknown id.
  DELETE /v1/tasks/ID     cancel: its workers are killed and reaped -> 200 with the
                          task; 409 if it had already finished; 404 unknown.
  GET    /v1/events?channel=C
                          WebSocket of JSON events for the tasks submitted with that
                          channel (every task without ?channel): {\"type\": \"started\"},
                          {\"type\": \"progress\", \"task_id\", \"input_id\", \"progress\":
                          0.4, \"message\"}, {\"type\": \"message\"}, then one of
                          completed (+ result), failed or cancelled (+ error).
  GET    /metrics         Prometheus text (OpenMetrics): tasks by status and error kind,
                          queue depth, workers by state, task durations, worker restarts.
  GET    /healthz         200 {\"status\": \"ok\"}; 503 while no worker can be started or
                          while shutting down.

SIGNALS:
  The first SIGTERM or SIGINT stops accepting connections, cancels the running tasks
  (or lets them finish with --on-signal drain), reaps every worker and exits 143
  (SIGTERM) or 130 (SIGINT). A second one kills every worker at once. SIGHUP is ignored.
  `procpool ctl drain` stops it as SIGTERM with --on-signal drain.

EXIT CODES:
  130/143  stopped by SIGINT/SIGTERM (143 too after `procpool ctl drain`)
  1        the server failed while running
  2        bad usage, an address it cannot listen on, a non-loopback --listen without a
           token, or a worker binary that is missing or is not a procpool worker";

const CTL_AFTER_HELP: &str = "\
EXAMPLES:
  procpool ctl status                  the only live supervisor of this user
  procpool ctl --control PATH jobs     a given one (see `--control` of run/serve/agent)
  procpool ctl cancel job-42           its record says cancelled, the others go on
  procpool ctl drain                   no new job starts; running ones finish; exit 143
  procpool ctl --json workers          one JSON object, for scripts

`procpool run`, `serve` and `agent` answer every command. For serve, `cancel TASK_ID` is
a DELETE of the task and `drain` a SIGTERM with --on-signal drain (no new submission,
running tasks finish). For an agent, `jobs` lists the broker tasks it runs and `cancel
TASK_ID` cancels one for good (the broker's cancel flag: no agent runs it again, its
submitters get `cancelled`); `drain` takes no new task.

PROTOCOL (for other clients): one JSON object per line each way on the Unix socket,
  {\"v\": 1, \"cmd\": \"status\"|\"jobs\"|\"workers\"|\"drain\"}
  {\"v\": 1, \"cmd\": \"cancel\", \"id\": \"job-42\"}
  -> {\"v\": 1, \"ok\": true, \"result\": {...}} or
     {\"v\": 1, \"ok\": false, \"error\": {\"kind\": ..., \"message\": ...}}
  A request line is at most 64 KiB.

EXIT CODES:
  0  the supervisor answered
  1  it refused the request (unknown job, broker unavailable, ...)
  2  no live supervisor found, several found without --control, or bad usage";

const CONFIG_HELP: &str = "\
CONFIGURATION:
  Every flag of every subcommand can also be set by an environment variable or in a TOML
  file; the first found wins: the command line, then the variable, then the file, then
  the built-in default.
  Variables: PROCPOOL_ and the flag's long name in capitals with _ for -, e.g.
  PROCPOOL_WORKERS=8 for --workers, PROCPOOL_ON_SIGNAL=drain; one exception: --worker is
  PROCPOOL_WORKER_PATH (PROCPOOL_WORKER marks a worker process). Switches take true or
  false: PROCPOOL_QUIET=true. Each flag's variable is shown beside it in --help.
  File: --config FILE, or PROCPOOL_CONFIG=FILE. Keys are long flag names. Keys at the top
  apply to every subcommand that has the flag; a [run], [tasks] (or any other subcommand)
  table applies to that subcommand only and wins over the top. Values are strings,
  numbers or booleans, written as on the command line:
    worker = \"/usr/local/bin/my-worker\"
    log-level = \"info\"
    [run]
    workers = 8
    timeout = \"30s\"
    on-signal = \"drain\"
    quiet = true
  A key that no subcommand knows, a table that is not a subcommand, or a value the flag
  refuses is an error naming the key (exit 2). `procpool run --help --config FILE` shows
  the file's values as the defaults.

EXIT CODES:
  0 success; 1 some job did not complete; 2 bad usage or unusable worker, nothing run;
  130/143 stopped by SIGINT/SIGTERM (see `procpool run --help`).";
