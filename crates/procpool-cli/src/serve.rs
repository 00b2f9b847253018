//! `procpool serve`: starts the pool and hands it to the control plane in
//! `procpool-serve`, which owns the routes, the events and the shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use procpool_serve::{OnSignal, ServeSettings, Server};

use crate::cli::ServeArgs;
use crate::control::{Control, ControlServer, Jobs};
use crate::exit::{Exit, Failure};
use crate::run::{Host, open_pool};
use crate::signals::{Signals, Stop};

pub(crate) async fn serve(args: ServeArgs) -> Result<Exit, Failure> {
    let mut settings = ServeSettings::default();
    settings.listen = args.listen;
    settings.token = args.token.filter(|t| !t.is_empty());
    settings.result_ttl = args.result_ttl;
    settings.max_body = usize::try_from(args.max_body).unwrap_or(usize::MAX);
    settings.max_active = usize::try_from(args.max_active).unwrap_or(usize::MAX);
    settings.max_results_bytes = usize::try_from(args.max_results_bytes).unwrap_or(usize::MAX);
    settings.client_buffer_bytes = usize::try_from(args.client_buffer).unwrap_or(usize::MAX);
    settings.on_signal = match args.on_signal.as_str() {
        "drain" => OnSignal::Drain,
        _ => OnSignal::Cancel,
    };
    // Checked before the workers start: a refused address costs nothing.
    if settings.token.is_none() && !settings.listen.ip().is_loopback() {
        return Err(Failure::Setup(
            procpool_serve::ServeError::NoToken {
                addr: settings.listen,
            }
            .into(),
        ));
    }
    // Installed first: from here on a SIGTERM is a graceful stop, never a silent death.
    let signals = Signals::install()
        .context("cannot install the signal handlers")
        .map_err(Failure::Setup)?;
    let pool = open_pool(
        &args.broker,
        Some(&args.submit),
        &args.worker,
        args.workers.map(|n| n as usize),
        Some(&args.policy),
        Host::OwnThread,
    )
    .await?;
    let server = Server::bind(pool.clone(), settings)
        .await
        .map_err(|e| Failure::Setup(e.into()))?;
    let tasks = server.control();
    let (drain_tx, mut drain_rx) = tokio::sync::mpsc::unbounded_channel();
    let control = Arc::new(Control::new(
        "serve",
        pool,
        Jobs::Serve(tasks.clone()),
        drain_tx,
    ));
    // `procpool ctl drain`: the server drains as on a signal with --on-signal drain.
    tokio::spawn(async move {
        if drain_rx.recv().await.is_some() {
            tasks.drain();
        }
    });
    let _control_server = ControlServer::open(args.control.control.as_deref(), control.clone())
        .map_err(Failure::Setup)?;
    // The server stops gracefully at the first signal and at once at the second.
    let stops = Box::pin(futures::stream::unfold(signals, move |mut s| {
        let control = control.clone();
        async move {
            let stop = s.recv().await;
            control.set_draining();
            Some((stop, s))
        }
    }));
    say!(
        "procpool serve: listening on http://{}",
        server.local_addr()
    );
    let stop = server
        .run(stops)
        .await
        .map_err(|e| Failure::Runtime(e.into()))?
        .unwrap_or(Stop::Drain);
    say!("procpool serve: stopped by {}", stop.name());
    Ok(stop.exit())
}
