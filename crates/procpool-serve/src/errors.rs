//! Why a [`Server`](crate::Server) could not start or broke down.

use std::net::SocketAddr;

use thiserror::Error;

/// A server could not start, or failed while running.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A non-loopback address without a token would hand the pool to the network.
    #[error(
        "refusing to listen on {addr} without a token: it is not a loopback address; set \
         --token (or PROCPOOL_TOKEN), or listen on 127.0.0.1"
    )]
    NoToken {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The token is empty or has characters a header cannot carry.
    #[error("the token must be non-empty visible ASCII (it travels in an HTTP header)")]
    BadToken,
    /// The address could not be bound (in use, not ours, ...).
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed while running.
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}
