//! The HTTP and WebSocket control plane over a [`TaskManager`](procpool::TaskManager):
//! what `procpool serve` runs. It defines [`Server`] (bind, serve, stop on a signal),
//! [`ServeSettings`] and [`OnSignal`] (how it is configured), [`ServeControl`] (its tasks
//! and its drain for an operator, e.g. `procpool ctl`) and [`ServeError`]; what stops it
//! is any stream the caller gives (`procpool-cli` gives SIGTERM and SIGINT), or a drain. It is not the pool (`procpool-core`)
//! nor the orchestration (`procpool-manager`): every task goes through the task manager's
//! public API, which gives the sharing by cache key, the events and nested `$task`
//! arguments; the command line that builds the pool is `procpool-cli`.
//!
//! Routes (JSON in and out; `/v1` needs `Authorization: Bearer <token>` when a token is
//! set):
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /v1/tasks` `{"task", "args", "kwargs", "cache_key", "channel", "notify_channels", "timeout_ms", "retries"}` | `202 {"task_id"}`; the same `cache_key` while running gives the same id (and adds its channels); `400` bad body, `413` too large, `422` unknown task or `bad_args` (a keyword argument missing, unknown or also given by position), `429` too many, `503` shutting down |
//! | `GET /v1/tasks/{id}` | `{"task_id", "status", "progress", "result", "error", "worker_pids", ...}` until the result TTL, then `410`; `404` unknown |
//! | `DELETE /v1/tasks/{id}` | cancels it (workers killed and reaped) → `200`; `409` already finished; `404` unknown |
//! | `GET /v1/events?channel=c` | WebSocket: `started`, `progress`, `message`, then `completed`, `failed` or `cancelled` |
//! | `GET /metrics` | Prometheus (OpenMetrics) text |
//! | `GET /healthz` | `200`, or `503` while no worker can start or while shutting down |
//!
//! ```no_run
//! use futures::StreamExt as _;
//! use procpool::Pool;
//! use procpool_serve::{Server, ServeSettings};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Ctrl-C once stops gracefully, twice at once.
//! let stops = Box::pin(futures::stream::repeat_with(|| ()).then(|()| async {
//!     let _ = tokio::signal::ctrl_c().await;
//!     "SIGINT"
//! }));
//! let pool = Pool::builder().worker("target/debug/procpool-demo").build()?;
//! let mut settings = ServeSettings::default();
//! settings.listen = "127.0.0.1:0".parse()?;
//! let server = Server::bind(pool, settings).await?;
//! eprintln!("listening on http://{}", server.local_addr());
//! let signal = server.run(stops).await?;
//! match signal {
//!     Some(signal) => eprintln!("stopped by {signal}"),
//!     None => eprintln!("drained"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Caveats
//! - **Results** are kept in memory for the result TTL after the task ends, within
//!   [`ServeSettings::max_results_bytes`] (256 MiB by default; past it the oldest expire
//!   early); then a read answers `410`, and after 100 000 more expired ids, `404`. They
//!   do not survive a restart.
//! - **Cache keys**: equal keys must mean equal work; only the key is compared. A
//!   completed task's result answers new submissions with its key (under a new task id)
//!   until the result TTL.
//! - **Cancel** (`DELETE`) cancels the task for every submission that shares it.
//! - **Events** are live only: a client sees what is published after it connected, and a
//!   client that falls [`ServeSettings::client_buffer_bytes`] behind (16 MiB by default)
//!   gets a `lagged` event in place of the oldest ones.
//! - **Shutdown** stops accepting connections at the first signal: results of tasks that
//!   drain after it reach WebSocket clients only.
#![deny(missing_docs)]

mod clients;
mod control;
mod errors;
mod events;
mod metrics;
mod report;
mod routes;
mod server;
mod settings;
mod shared;
mod table;

pub use control::{CancelOutcome, LiveTask, ServeControl};
pub use errors::ServeError;
pub use server::Server;
pub use settings::{OnSignal, ServeSettings};
