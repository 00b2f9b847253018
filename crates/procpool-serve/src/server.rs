//! [`Server`]: binds the listener, runs the HTTP routes, the event forwarder and the
//! result sweeper, and stops on a signal: gracefully on the first, at once on the second.

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt as _};
use procpool::{Pool, Shutdown, TaskEvent, TaskManager};
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, oneshot, watch};

use crate::clients::Clients;
use crate::control::ServeControl;
use crate::errors::ServeError;
use crate::events::{self, INTERNAL_CHANNEL, MANAGER_BUFFER};
use crate::metrics::Metrics;
use crate::routes;
use crate::settings::{OnSignal, ServeSettings};
use crate::shared::Shared;
use crate::table::Table;

/// How long the HTTP server may take to finish its requests once it stopped accepting.
const HTTP_GRACE: Duration = Duration::from_secs(5);

/// The `procpool serve` control plane: an HTTP and WebSocket front end to a
/// [`TaskManager`] on a pool (see the crate docs for the routes).
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    addr: SocketAddr,
    events: broadcast::Receiver<TaskEvent>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Checks the settings, binds the listener and sets up the task manager on `pool`.
    /// Refuses a non-loopback address without a token ([`ServeError::NoToken`]).
    pub async fn bind(pool: Pool, settings: ServeSettings) -> Result<Server, ServeError> {
        match &settings.token {
            Some(t) if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(ServeError::BadToken);
            }
            None if !settings.listen.ip().is_loopback() => {
                return Err(ServeError::NoToken {
                    addr: settings.listen,
                });
            }
            _ => {}
        }
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: settings.listen,
            source,
        })?;
        let initial_starts = pool.status().await.worker_starts;
        let manager = TaskManager::builder(pool)
            // The server keeps each result itself and takes it out of the store at once;
            // the TTL only bounds what a crash of that hand-over would leave behind.
            .result_ttl(Some(settings.result_ttl))
            .cache_ttl(Some(settings.result_ttl))
            .event_capacity(MANAGER_BUFFER)
            .build();
        // Subscribed before any task can run, so no event is missed.
        let events = manager.subscribe(INTERNAL_CHANNEL);
        let shared = Arc::new(Shared {
            manager,
            table: Mutex::new(Table::new(settings.result_ttl, settings.max_results_bytes)),
            clients: Clients::new(settings.client_buffer_bytes),
            metrics: Metrics::new(),
            settings,
            initial_starts,
            accepting: AtomicBool::new(true),
            closing: watch::channel(false).0,
            ended: Notify::new(),
            drain: watch::channel(false).0,
        });
        Ok(Server {
            shared,
            listener,
            addr,
            events,
        })
    }

    /// The address the server listens on (with the port picked, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lists and cancels its tasks, and drains it, for an operator (`procpool ctl`).
    pub fn control(&self) -> ServeControl {
        ServeControl::new(self.shared.clone())
    }

    /// Serves until the first item of `stops` (a stop signal, typically SIGTERM or
    /// SIGINT) or a [`ServeControl::drain`], then shuts down gracefully and returns that
    /// item (`None` after a drain):
    ///
    /// 1. no new connection is accepted and submissions get `503`;
    /// 2. running tasks are cancelled (their workers killed) or, with
    ///    [`OnSignal::Drain`] or after [`ServeControl::drain`], finish;
    /// 3. the pool stops, every worker reaped;
    /// 4. the last events go out and the WebSocket streams close;
    /// 5. requests in progress get up to 5 s to finish.
    ///
    /// A second item of `stops` during this kills every worker at once and returns.
    pub async fn run<S>(self, mut stops: S) -> Result<Option<S::Item>, ServeError>
    where
        S: Stream + Send + Unpin,
        S::Item: std::fmt::Debug,
    {
        let shared = self.shared;
        let (drain_tx, drain_rx) = oneshot::channel();
        let forwarder = tokio::spawn(events::forward(shared.clone(), self.events, drain_rx));
        let sweeper = tokio::spawn(sweep(shared.clone()));
        let (stop_http, mut http_stopped) = watch::channel(false);
        let app = routes::router(shared.clone());
        let mut http = tokio::spawn(
            axum::serve(self.listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stopped.wait_for(|s| *s).await;
                })
                .into_future(),
        );

        let mut drain = shared.drain.subscribe();
        let first = tokio::select! {
            Some(signal) = stops.next() => Some(signal),
            // The sender lives in `shared`: this ends only with a drain request.
            Ok(_) = drain.wait_for(|d| *d) => None,
            outcome = &mut http => {
                forwarder.abort();
                sweeper.abort();
                let err = match outcome {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => std::io::Error::other("the HTTP server stopped by itself"),
                    Err(e) => std::io::Error::other(e),
                };
                return Err(ServeError::Serve(err));
            }
        };
        let mode = match first {
            Some(_) => shared.settings.on_signal,
            None => OnSignal::Drain,
        };
        tracing::info!(signal = ?first, ?mode, "stopping");
        shared.accepting.store(false, Ordering::SeqCst);
        let _ = stop_http.send(true);

        let pool = shared.manager.pool().clone();
        let wind_down = async {
            match mode {
                OnSignal::Cancel => {
                    shared.manager.cancel_all_tasks().await;
                    // A submission that raced the signal is killed too.
                    pool.shutdown(Shutdown::Kill).await;
                }
                OnSignal::Drain => {
                    shared.idle().await;
                    pool.shutdown(Shutdown::Drain).await;
                }
            }
        };
        let second = tokio::select! {
            () = wind_down => None,
            Some(signal) = stops.next() => Some(signal),
        };
        if let Some(second) = second {
            tracing::warn!(
                signal = ?second,
                "second signal: killing every worker now"
            );
            pool.shutdown(Shutdown::Kill).await;
            http.abort();
            forwarder.abort();
            sweeper.abort();
            return Ok(first);
        }

        // Every task has ended and its end is in the forwarder's buffer: send it all out,
        // then close the streams.
        let (done_tx, done_rx) = oneshot::channel();
        if drain_tx.send(done_tx).is_ok() {
            let _ = done_rx.await;
        }
        let _ = shared.closing.send(true);
        sweeper.abort();
        tokio::select! {
            _ = tokio::time::timeout(HTTP_GRACE, &mut http) => {}
            Some(_) = stops.next() => {}
        }
        http.abort();
        Ok(first)
    }
}

/// Expires results in the background too (reads and submissions also do it), so an idle
/// server gives their memory back.
async fn sweep(shared: Arc<Shared>) {
    let every =
        (shared.settings.result_ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        shared.table().sweep(Instant::now());
    }
}
