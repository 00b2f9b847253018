//! `procpool agent` and the `--broker` mode of `run`, `serve` and `tasks`: the command
//! line side of `procpool-broker`.

use anyhow::Context as _;
use procpool::{Pool, Shutdown};
use procpool_broker::{AgentOptions, ClientOptions, RedisBroker, StopMode};

use crate::cli::{AgentArgs, OnSignal, PolicyArgs};
use crate::run::{Host, start_pool};
use crate::signals::{Signals, Stop};
use crate::{Exit, Failure};

/// A pool on the broker at `url`; an unreachable broker is a setup failure (exit 2)
/// whose message names the URL, password elided. `--timeout` and `--retries` of the
/// submitter apply to its tasks; the other policies are the agents'.
pub(crate) async fn connect(
    url: &str,
    namespace: &str,
    policy: Option<&PolicyArgs>,
) -> Result<Pool, Failure> {
    let options = ClientOptions {
        namespace: namespace.to_owned(),
        timeout: policy.and_then(|p| p.timeout),
        retries: policy.and_then(|p| p.retries),
        ..ClientOptions::default()
    };
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
    // The first signal stops the agent per --on-signal; a second one during a drain
    // hands the remaining tasks back at once.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Stop>();
    let (force_tx, force_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let first = signals.recv().await;
        let _ = stop_tx.send(first);
        signals.recv().await;
        let _ = force_tx.send(());
    });
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Stop>();
    let on_signal = args.on_signal;
    let stop = async move {
        if let Ok(first) = stop_rx.await {
            let _ = first_tx.send(first);
        }
        match on_signal {
            OnSignal::Drain => StopMode::Drain,
            OnSignal::Cancel => StopMode::Cancel,
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
        AgentOptions {
            prefetch: args.prefetch_tasks as usize,
            ..AgentOptions::default()
        },
        stop,
        force,
    )
    .await;
    pool.shutdown(Shutdown::Kill).await;
    outcome.map_err(|e| Failure::Runtime(e.into()))?;
    Ok(match first_rx.await {
        Ok(Stop::Interrupt) => Exit::Interrupted,
        Ok(Stop::Terminate) => Exit::Terminated,
        Err(_) => Exit::JobsFailed,
    })
}
