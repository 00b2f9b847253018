//! `procpool agent` and the `--broker` mode of `run`, `serve` and `tasks`: the command
//! line side of `procpool-broker`.

use std::sync::Arc;

use anyhow::Context as _;
use procpool::{Pool, Shutdown};
use procpool_broker::{AgentOptions, AgentTasks, ClientOptions, RedisBroker, StopMode};

use crate::cli::{AgentArgs, OnSignal, PolicyArgs, SubmitArgs};
use crate::control::{Control, ControlServer, Jobs};
use crate::run::{Host, retry_policy, start_pool};
use crate::signals::{Signals, Stop};
use crate::{Exit, Failure};

/// A pool on the broker at `url`; an unreachable broker is a setup failure (exit 2)
/// whose message names the URL, password elided. `--timeout` and `--retries` of the
/// submitter apply to its tasks; the other policies are the agents'.
pub(crate) async fn connect(
    url: &str,
    namespace: &str,
    submit: Option<&SubmitArgs>,
    policy: Option<&PolicyArgs>,
) -> Result<Pool, Failure> {
    if policy.is_some_and(|p| p.retry_on.is_some()) {
        return Err(Failure::Setup(anyhow::anyhow!(
            "--retry-on applies where the tasks run: set it on the agents \
             (procpool agent --retry-on); --retries here sets how many"
        )));
    }
    let mut options = ClientOptions {
        namespace: namespace.to_owned(),
        timeout: policy.and_then(|p| p.timeout),
        retries: policy.and_then(|p| p.retries),
        ..ClientOptions::default()
    };
    if let Some(s) = submit {
        options.lost_budget = s.lost_budget;
        options.result_ttl = s.broker_result_ttl;
    }
    procpool_broker::connect(url, options)
        .await
        .map_err(|e| Failure::Setup(e.into()))
}

pub(crate) async fn agent(args: AgentArgs) -> Result<Exit, Failure> {
    let Some(url) = &args.broker.broker else {
        return Err(Failure::Setup(anyhow::anyhow!(
            "procpool agent needs --broker URL (or PROCPOOL_BROKER)"
        )));
    };
    let options = AgentOptions {
        lease: args.lease,
        prefetch: args.prefetch_tasks as usize,
        retry: retry_policy(&args.policy, 0),
        ..AgentOptions::default()
    };
    options.check().context("--lease").map_err(Failure::Setup)?;
    let mut signals = Signals::install()
        .context("cannot install the signal handlers")
        .map_err(Failure::Setup)?;
    let broker = RedisBroker::connect(
        url,
        &args.broker.namespace,
        procpool_broker::DEFAULT_MAX_FRAME,
    )
    .await
    .map_err(|e| Failure::Setup(e.into()))?;
    let pool = start_pool(
        &args.worker,
        args.workers.map(|n| n as usize),
        Some(&args.policy),
        Host::OwnThread,
    )
    .await?;
    let (drain_tx, mut drain_rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks = AgentTasks::default();
    let control = Arc::new(Control::new(
        "agent",
        pool.clone(),
        Jobs::Agent(tasks.clone()),
        drain_tx,
    ));
    let _control_server = ControlServer::open(args.control.control.as_deref(), control.clone())
        .map_err(Failure::Setup)?;
    // The first signal stops the agent per --on-signal, and `procpool ctl drain` with a
    // drain; a signal after either hands the remaining tasks back at once.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Stop>();
    let (force_tx, force_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let first = tokio::select! {
            stop = signals.recv() => {
                control.set_draining();
                stop
            }
            Some(()) = drain_rx.recv() => Stop::Drain,
        };
        let _ = stop_tx.send(first);
        signals.recv().await;
        let _ = force_tx.send(());
    });
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Stop>();
    let on_signal = args.on_signal;
    let stop = async move {
        let first = stop_rx.await.ok();
        if let Some(first) = first {
            let _ = first_tx.send(first);
        }
        match (first, on_signal) {
            (Some(Stop::Drain), _) | (_, OnSignal::Drain) => StopMode::Drain,
            _ => StopMode::Cancel,
        }
    };
    let force = async move {
        if force_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let outcome = procpool_broker::run_agent(
        std::sync::Arc::new(broker),
        pool.clone(),
        options,
        tasks,
        stop,
        force,
    )
    .await;
    pool.shutdown(Shutdown::Kill).await;
    outcome.map_err(|e| Failure::Runtime(e.into()))?;
    Ok(match first_rx.await {
        Ok(stop) => stop.exit(),
        Err(_) => Exit::JobsFailed,
    })
}
