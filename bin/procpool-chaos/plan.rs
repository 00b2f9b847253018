//! The fault plan and its rules: what each chaos task is (a good computation with a known
//! answer, or one of the faults), how it is submitted, and which outcomes are right for it.
//! Kept apart from the run loop so the verdict rules can be read (and unit tested) in one
//! place.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use procpool::{Pool, TaskError, TaskHandle};
use procpool_demo_tasks as demo;
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// What a task does when nothing else interferes with it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    /// `add`, `square` or `sum` with a known answer.
    Good(Good),
    Segfault,
    Abort,
    Panic(String),
    Exit(i32),
    /// Never ends by itself: `sleep_ms` or a `grandchild` sleep, past its timeout.
    Hang {
        grandchild: bool,
    },
    /// `alloc_mb` of several times `max_rss`.
    MemoryBomb {
        mb: u64,
    },
}

/// A good task and its arguments.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Good {
    Add(i64, i64),
    Square(i64),
    Sum(Vec<i64>),
}

impl Good {
    /// The answer the worker must return.
    pub(crate) fn expected(&self) -> i64 {
        match self {
            Good::Add(a, b) => a.wrapping_add(*b),
            Good::Square(x) => x.wrapping_mul(*x),
            Good::Sum(v) => v.iter().fold(0i64, |a, x| a.wrapping_add(*x)),
        }
    }
}

/// Something done to the pool right after a task is submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// SIGKILL one random live worker, from outside the pool.
    KillWorker,
    /// Cancel up to this many random in-flight tasks at once.
    CancelStorm(usize),
    /// Agents mode: SIGKILL a whole agent (its workers die with it); a fresh one starts.
    KillAgent,
    /// Agents mode: SIGSTOP an agent past its lease, then SIGCONT it.
    StopAgent,
    /// Agents mode: SIGKILL the `redis-server` and start it again on the same data.
    RestartBroker,
}

/// One planned task: its kind, and the event that follows its submission.
#[derive(Clone, Debug)]
pub(crate) struct Planned {
    pub(crate) index: usize,
    pub(crate) kind: Kind,
    pub(crate) event: Option<Event>,
}

/// Rows of the summary table, in order.
pub(crate) const KIND_NAMES: [&str; 7] = [
    "good",
    "segfault",
    "abort",
    "panic",
    "exit",
    "hang",
    "memory_bomb",
];

impl Kind {
    /// Row of the summary table.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Kind::Good(_) => "good",
            Kind::Segfault => "segfault",
            Kind::Abort => "abort",
            Kind::Panic(_) => "panic",
            Kind::Exit(_) => "exit",
            Kind::Hang { .. } => "hang",
            Kind::MemoryBomb { .. } => "memory_bomb",
        }
    }

    /// Fails every attempt in a way the default retry policy retries (crash-class): with
    /// `r` retries such a task runs exactly `1 + r` times.
    fn always_retried(&self) -> bool {
        !matches!(self, Kind::Good(_) | Kind::Panic(_))
    }
}

/// Settings the plan and the verdicts depend on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) fault_percent: u8,
    /// Deadline of the hanging tasks.
    pub(crate) timeout: Duration,
    pub(crate) max_rss: u64,
    pub(crate) retries: u32,
    /// Agents mode: tasks run on agents through a broker. A task's attempts are then the
    /// agents that started it (an agent's own retries do not show), and an attempt lost
    /// with its agent counts against `lost_budget`.
    pub(crate) remote: bool,
    /// Agents mode: attempts lost with their agent before a task ends `lost`.
    pub(crate) lost_budget: u32,
}

/// Draws task `index` of the plan. A fault is one of eight, evenly: six task faults and
/// two events (a worker kill, a cancel storm) that ride on a good task.
pub(crate) fn draw(rng: &mut impl Rng, index: usize, limits: &Limits) -> Planned {
    let mut planned = Planned {
        index,
        kind: Kind::Good(draw_good(rng)),
        event: None,
    };
    if rng.random_range(0..100u8) >= limits.fault_percent {
        return planned;
    }
    let max_rss_mb = limits.max_rss.div_ceil(1 << 20);
    match rng.random_range(0..8) {
        0 => planned.kind = Kind::Segfault,
        1 => planned.kind = Kind::Abort,
        2 => planned.kind = Kind::Panic(format!("chaos panic #{index}")),
        3 => planned.kind = Kind::Exit(rng.random_range(1..=125)),
        4 => {
            planned.kind = Kind::Hang {
                grandchild: rng.random(),
            }
        }
        5 => {
            planned.kind = Kind::MemoryBomb {
                mb: (max_rss_mb * 4).max(max_rss_mb + 256),
            }
        }
        6 => planned.event = Some(Event::KillWorker),
        _ => planned.event = Some(Event::CancelStorm(rng.random_range(1..=5))),
    }
    planned
}

/// A good task with small enough arguments that its answer is easy to read in a report.
fn draw_good(rng: &mut impl Rng) -> Good {
    match rng.random_range(0..3) {
        0 => Good::Add(
            rng.random_range(-1_000_000_000..=1_000_000_000),
            rng.random_range(-1_000_000_000..=1_000_000_000),
        ),
        1 => Good::Square(rng.random_range(-3_000_000_000..=3_000_000_000)),
        _ => {
            let n = rng.random_range(0..=8);
            Good::Sum(
                (0..n)
                    .map(|_| rng.random_range(-1_000_000..=1_000_000))
                    .collect(),
            )
        }
    }
}

/// Submits the planned task. Hanging tasks get the short `--timeout`; every other task
/// runs under the pool's (long) safety deadline.
pub(crate) fn submit(pool: &Pool, kind: &Kind, timeout: Duration) -> AnyHandle {
    match kind {
        Kind::Good(Good::Add(a, b)) => AnyHandle::new(pool.submit(demo::add::task(*a, *b))),
        Kind::Good(Good::Square(x)) => AnyHandle::new(pool.submit(demo::square::task(*x))),
        Kind::Good(Good::Sum(v)) => AnyHandle::new(pool.submit(demo::sum::task(v.clone()))),
        Kind::Segfault => AnyHandle::new(pool.submit(demo::segfault::task())),
        Kind::Abort => AnyHandle::new(pool.submit(demo::abort::task())),
        Kind::Panic(msg) => AnyHandle::new(pool.submit(demo::panic::task(msg.clone()))),
        Kind::Exit(code) => AnyHandle::new(pool.submit(demo::exit::task(*code))),
        Kind::Hang { grandchild: false } => {
            AnyHandle::new(pool.submit(demo::sleep_ms::task(3_600_000).timeout(timeout)))
        }
        Kind::Hang { grandchild: true } => {
            AnyHandle::new(pool.submit(demo::grandchild::task(3_600).timeout(timeout)))
        }
        Kind::MemoryBomb { mb } => AnyHandle::new(pool.submit(demo::alloc_mb::task(*mb))),
    }
}

/// A [`TaskHandle`] of any result type, resolving to the result as JSON, so tasks of
/// different types can share one `JoinSet`.
pub(crate) struct AnyHandle(Box<dyn Erased>);

trait Erased: Send {
    fn poll_value(&mut self, cx: &mut Context<'_>) -> Poll<Result<Value, TaskError>>;
    fn cancel(&self);
    fn attempts(&self) -> u32;
    fn worker_pid(&self) -> Option<u32>;
}

impl<R: DeserializeOwned + Serialize + 'static> Erased for TaskHandle<R> {
    fn poll_value(&mut self, cx: &mut Context<'_>) -> Poll<Result<Value, TaskError>> {
        Pin::new(self)
            .poll(cx)
            .map(|r| r.map(|v| serde_json::to_value(v).expect("demo results are plain numbers")))
    }
    fn cancel(&self) {
        TaskHandle::cancel(self)
    }
    fn attempts(&self) -> u32 {
        TaskHandle::attempts(self)
    }
    fn worker_pid(&self) -> Option<u32> {
        TaskHandle::worker_pid(self)
    }
}

impl AnyHandle {
    fn new<R: DeserializeOwned + Serialize + 'static>(h: TaskHandle<R>) -> Self {
        AnyHandle(Box::new(h))
    }

    pub(crate) fn cancel(&self) {
        self.0.cancel()
    }

    /// Times the task was started so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.0.attempts()
    }

    /// The worker that ran the task's last attempt.
    pub(crate) fn worker_pid(&self) -> Option<u32> {
        self.0.worker_pid()
    }
}

impl Future for AnyHandle {
    type Output = Result<Value, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_value(cx)
    }
}

/// How one task ended, with what may have interfered with it.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) planned: Planned,
    pub(crate) outcome: Result<Value, TaskError>,
    pub(crate) attempts: u32,
    pub(crate) worker_pid: Option<u32>,
    /// A cancel was sent while the task had no verdict yet.
    pub(crate) cancel_requested: bool,
    /// Worker kills sent between its submission and its verdict.
    pub(crate) kills_during: u64,
    /// Agents mode: agent kills, stops and broker restarts between its submission and
    /// its verdict.
    pub(crate) agent_events_during: u64,
}

/// Why an outcome is right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// The planned outcome, undisturbed.
    AsPlanned,
    /// Cancelled by a cancel storm.
    Cancelled,
    /// Its worker was SIGKILLed from outside.
    Killed,
    /// Agents mode: its agent was killed or stopped under it (the task then ran
    /// elsewhere, or ended `lost` at its budget).
    AgentLost,
}

/// The verdict on one task: `Ok` with why it is right, or `Err` with what is wrong.
/// `killed`: workers SIGKILLed from outside; `lost_workers`: agents mode, the workers of
/// agents that were killed or stopped (known by their parent when it was hit).
pub(crate) fn judge(
    f: &Finished,
    limits: &Limits,
    killed: &HashSet<u32>,
    lost_workers: &HashSet<u32>,
) -> Result<Accepted, String> {
    if limits.remote {
        return judge_remote(f, limits, killed, lost_workers);
    }
    let max_attempts = 1 + limits.retries;
    let interfered = f.cancel_requested || f.kills_during > 0;
    let accepted = outcome_verdict(f, limits, killed)?;
    // Attempts: a crash-class fault runs 1 + retries times, anything else once, unless
    // a cancel cut it short or an outside kill added a retry.
    let attempts_ok = match accepted {
        Accepted::Cancelled => f.attempts <= max_attempts,
        _ if interfered => (1..=max_attempts).contains(&f.attempts),
        _ if f.planned.kind.always_retried() => f.attempts == max_attempts,
        _ => f.attempts == 1,
    };
    if !attempts_ok {
        return Err(format!(
            "{} attempts for {} (retries {})",
            f.attempts,
            describe(&f.outcome),
            limits.retries
        ));
    }
    Ok(accepted)
}

/// [`judge`] in agents mode. Attempts are agent attempts: one, unless an agent-level
/// event (kill, stop, broker restart) requeued the task; `lost` is right only for a task
/// whose last attempt ran on a killed or stopped agent, after its whole budget.
fn judge_remote(
    f: &Finished,
    limits: &Limits,
    killed: &HashSet<u32>,
    lost_workers: &HashSet<u32>,
) -> Result<Accepted, String> {
    let on_lost_agent = f.worker_pid.is_some_and(|pid| lost_workers.contains(&pid));
    let hit = f.agent_events_during > 0;
    let accepted = match &f.outcome {
        Err(TaskError::Lost { .. }) if hit && on_lost_agent => {
            if f.attempts < limits.lost_budget {
                return Err(format!(
                    "lost after {} agent attempts, budget {}",
                    f.attempts, limits.lost_budget
                ));
            }
            Accepted::AgentLost
        }
        _ => match outcome_verdict(f, limits, killed)? {
            Accepted::AsPlanned if hit && f.attempts > 1 => Accepted::AgentLost,
            a => a,
        },
    };
    // A requeue that is not counted (an entry read by a stopped agent but not started,
    // a broker restart) adds an attempt too, at most one per agent-level event.
    let most = 1 + if hit {
        u64::from(limits.lost_budget) + f.agent_events_during
    } else {
        0
    };
    // A cancel that reaches the agent before the worker's start is reported may still
    // lose the race to a quick task: the value comes back with no `started` event.
    let least = u64::from(!f.cancel_requested);
    let attempts_ok = match accepted {
        Accepted::Cancelled => u64::from(f.attempts) <= most,
        _ => (least..=most).contains(&u64::from(f.attempts)),
    };
    if !attempts_ok {
        return Err(format!(
            "{} agent attempts for {} ({} agent-level events meanwhile)",
            f.attempts,
            describe(&f.outcome),
            f.agent_events_during
        ));
    }
    Ok(accepted)
}

/// Whether the outcome is right for the planned kind, given cancels and worker kills.
fn outcome_verdict(
    f: &Finished,
    limits: &Limits,
    killed: &HashSet<u32>,
) -> Result<Accepted, String> {
    Ok(match (&f.planned.kind, &f.outcome) {
        (_, Err(TaskError::Cancelled)) if f.cancel_requested => Accepted::Cancelled,
        (
            _,
            Err(TaskError::Crashed {
                signal: Some(9), ..
            }),
        ) if f.worker_pid.is_some_and(|pid| killed.contains(&pid)) => Accepted::Killed,
        (Kind::Good(g), Ok(v)) if *v == json!(g.expected()) => Accepted::AsPlanned,
        (Kind::Good(g), Ok(v)) => {
            return Err(format!("wrong value {v}, expected {}", g.expected()));
        }
        (
            Kind::Segfault,
            Err(TaskError::Crashed {
                signal: Some(11), ..
            }),
        ) => Accepted::AsPlanned,
        (
            Kind::Abort,
            Err(TaskError::Crashed {
                signal: Some(6), ..
            }),
        ) => Accepted::AsPlanned,
        (Kind::Panic(want), Err(TaskError::Panicked { message, .. })) if message == want => {
            Accepted::AsPlanned
        }
        (
            Kind::Exit(want),
            Err(TaskError::Crashed {
                signal: None,
                exit_code: Some(code),
                ..
            }),
        ) if code == want => Accepted::AsPlanned,
        (Kind::Hang { .. }, Err(TaskError::TimedOut { after })) if *after == limits.timeout => {
            Accepted::AsPlanned
        }
        (Kind::MemoryBomb { .. }, Err(TaskError::LimitExceeded { .. })) => Accepted::AsPlanned,
        (_, outcome) => return Err(format!("unexpected outcome {}", describe(outcome))),
    })
}

/// Column of the summary table for an outcome.
pub(crate) fn outcome_name(outcome: &Result<Value, TaskError>) -> &'static str {
    match outcome {
        Ok(_) => "completed",
        Err(e) => e.kind(),
    }
}

fn describe(outcome: &Result<Value, TaskError>) -> String {
    match outcome {
        Ok(v) => format!("completed with {v}"),
        Err(e) => format!("{}: {e}", e.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const LIMITS: Limits = Limits {
        fault_percent: 30,
        timeout: Duration::from_millis(200),
        max_rss: 128 << 20,
        retries: 0,
        remote: false,
        lost_budget: 3,
    };

    fn finished(kind: Kind, outcome: Result<Value, TaskError>) -> Finished {
        Finished {
            planned: Planned {
                index: 0,
                kind,
                event: None,
            },
            outcome,
            attempts: 1,
            worker_pid: Some(42),
            cancel_requested: false,
            kills_during: 0,
            agent_events_during: 0,
        }
    }

    fn crash(signal: Option<i32>, exit_code: Option<i32>) -> TaskError {
        TaskError::Crashed {
            signal,
            exit_code,
            stderr_tail: vec![],
        }
    }

    #[test]
    fn plan_is_reproducible_and_mixes_faults() {
        let plan = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..2000)
                .map(|i| draw(&mut rng, i, &LIMITS))
                .collect::<Vec<_>>()
        };
        let (a, b) = (plan(7), plan(7));
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| x.kind == y.kind && x.event == y.event)
        );
        let faults = a
            .iter()
            .filter(|p| !matches!(p.kind, Kind::Good(_)) || p.event.is_some())
            .count();
        assert!(
            (500..700).contains(&faults),
            "{faults} faults of 2000 at 30%"
        );
        for name in KIND_NAMES {
            assert!(a.iter().any(|p| p.kind.name() == name), "no {name}");
        }
        assert!(a.iter().any(|p| p.event == Some(Event::KillWorker)));
        assert!(
            a.iter()
                .any(|p| matches!(p.event, Some(Event::CancelStorm(_))))
        );
        if let Some(Planned {
            kind: Kind::MemoryBomb { mb },
            ..
        }) = a.iter().find(|p| matches!(p.kind, Kind::MemoryBomb { .. }))
        {
            assert_eq!(*mb, 512, "4 x 128 MiB");
        }
    }

    #[test]
    fn verdicts() {
        let none = HashSet::new();
        let ok = |f: &Finished| judge(f, &LIMITS, &none, &none);
        assert_eq!(
            ok(&finished(Kind::Good(Good::Add(2, 3)), Ok(json!(5)))),
            Ok(Accepted::AsPlanned)
        );
        assert!(ok(&finished(Kind::Good(Good::Add(2, 3)), Ok(json!(6)))).is_err());
        assert_eq!(
            ok(&finished(Kind::Segfault, Err(crash(Some(11), None)))),
            Ok(Accepted::AsPlanned)
        );
        assert!(ok(&finished(Kind::Segfault, Err(crash(Some(6), None)))).is_err());
        assert_eq!(
            ok(&finished(Kind::Exit(7), Err(crash(None, Some(7))))),
            Ok(Accepted::AsPlanned)
        );
        assert!(ok(&finished(Kind::Exit(7), Err(crash(None, Some(8))))).is_err());
        let timed_out = |ms| TaskError::TimedOut {
            after: Duration::from_millis(ms),
        };
        let hang = Kind::Hang { grandchild: false };
        assert!(ok(&finished(hang.clone(), Err(timed_out(200)))).is_ok());
        assert!(ok(&finished(hang.clone(), Err(timed_out(300)))).is_err());
        // A cancel is only right when one was sent.
        let mut f = finished(hang, Err(TaskError::Cancelled));
        assert!(ok(&f).is_err());
        f.cancel_requested = true;
        f.attempts = 0;
        assert_eq!(ok(&f), Ok(Accepted::Cancelled));
        // A SIGKILL crash is only right on a worker that was killed from outside.
        let mut f = finished(Kind::Good(Good::Square(3)), Err(crash(Some(9), None)));
        assert!(ok(&f).is_err());
        let killed: HashSet<u32> = [42].into();
        f.kills_during = 1;
        assert_eq!(judge(&f, &LIMITS, &killed, &none), Ok(Accepted::Killed));
        // Retries: crash-class faults run exactly 1 + retries times.
        let retrying = Limits {
            retries: 2,
            ..LIMITS
        };
        let mut f = finished(Kind::Abort, Err(crash(Some(6), None)));
        assert!(judge(&f, &retrying, &none, &none).is_err());
        f.attempts = 3;
        assert!(judge(&f, &retrying, &none, &none).is_ok());
        let f = finished(
            Kind::Panic("p".into()),
            Err(TaskError::Panicked {
                message: "p".into(),
                location: None,
                backtrace: None,
            }),
        );
        assert!(judge(&f, &retrying, &none, &none).is_ok());
    }

    #[test]
    fn remote_verdicts() {
        let remote = Limits {
            remote: true,
            retries: 2,
            ..LIMITS
        };
        let none = HashSet::new();
        let lost_workers: HashSet<u32> = [42].into();
        let lost = || TaskError::Lost {
            message: "died".into(),
        };
        // An agent's own retries do not show: a crashing fault is one agent attempt.
        let f = finished(Kind::Abort, Err(crash(Some(6), None)));
        assert_eq!(judge(&f, &remote, &none, &none), Ok(Accepted::AsPlanned));
        // Requeued after its agent died: right value, more attempts, only after an event.
        let mut f = finished(Kind::Good(Good::Add(2, 3)), Ok(json!(5)));
        f.attempts = 2;
        assert!(judge(&f, &remote, &none, &none).is_err());
        f.agent_events_during = 1;
        assert_eq!(judge(&f, &remote, &none, &none), Ok(Accepted::AgentLost));
        // `lost`: only on a killed or stopped agent, and only after the whole budget.
        let mut f = finished(Kind::Good(Good::Add(2, 3)), Err(lost()));
        f.attempts = 3;
        assert!(judge(&f, &remote, &none, &lost_workers).is_err());
        f.agent_events_during = 3;
        assert!(judge(&f, &remote, &none, &none).is_err());
        assert_eq!(
            judge(&f, &remote, &none, &lost_workers),
            Ok(Accepted::AgentLost)
        );
        f.attempts = 2;
        assert!(judge(&f, &remote, &none, &lost_workers).is_err());
    }
}
