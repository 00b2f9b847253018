//! [`ServeSettings`]: everything `procpool serve` is told, resolved. The server takes only
//! this struct; where a value came from (flag, environment) is the command line's business.

use std::net::SocketAddr;
use std::time::Duration;

/// What the first SIGTERM or SIGINT does to the tasks that are running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnSignal {
    /// Cancel them: their workers are killed and reaped, their clients see `cancelled`.
    #[default]
    Cancel,
    /// Let them finish (queued ones included); nothing new is accepted meanwhile.
    Drain,
}

/// Settings of a [`Server`](crate::Server).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeSettings {
    /// Address to listen on; port 0 picks a free one ([`Server::local_addr`](crate::Server::local_addr)
    /// tells which).
    pub listen: SocketAddr,
    /// When set, every `/v1` request needs `Authorization: Bearer <token>`. Required on
    /// any address that is not loopback.
    pub token: Option<String>,
    /// How long a finished task stays readable with `GET /v1/tasks/{id}`; after that it
    /// answers `410 Gone`. A completed cache-keyed task also answers new submissions with
    /// its key for that long.
    pub result_ttl: Duration,
    /// Largest request body accepted, in bytes; a larger one gets `413`.
    pub max_body: usize,
    /// Most tasks accepted and not yet finished; a submission beyond gets `429`.
    pub max_active: usize,
    /// What the first stop signal does to running tasks.
    pub on_signal: OnSignal,
    /// Most bytes the results (and errors) of ended tasks may hold, counted as JSON plus
    /// a small overhead per task; past it the oldest expire before their TTL and read as
    /// `410`.
    pub max_results_bytes: usize,
    /// Most bytes of events one WebSocket client may have waiting; a client further
    /// behind loses its oldest events and reads a `lagged` event with how many.
    pub client_buffer_bytes: usize,
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            token: None,
            result_ttl: Duration::from_secs(600),
            max_body: 1 << 20,
            max_active: 10_000,
            on_signal: OnSignal::Cancel,
            max_results_bytes: 256 << 20,
            client_buffer_bytes: 16 << 20,
        }
    }
}
