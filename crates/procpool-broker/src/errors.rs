//! Errors of the broker crate.

use thiserror::Error;

/// A broker operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker URL cannot be used (syntax, scheme, an unsupported option).
    #[error("invalid broker URL {url}: {message}")]
    Url {
        /// The URL, password elided.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The broker could not be reached or refused the connection.
    #[error("cannot reach the broker at {url}: {message}")]
    Connect {
        /// The URL, password elided.
        url: String,
        /// Why.
        message: String,
    },
    /// A command failed (connection lost, timeout, a script error).
    #[error("broker command failed: {0}")]
    Command(String),
    /// The broker returned something that is not what this version writes.
    #[error("unexpected data from the broker: {0}")]
    Data(String),
    /// Settings that cannot work (a lease shorter than two renewals).
    #[error("invalid broker settings: {0}")]
    Config(String),
    /// A pool for the agent could not be started.
    #[error("agent: {0}")]
    Agent(String),
}

impl From<redis::RedisError> for BrokerError {
    fn from(e: redis::RedisError) -> Self {
        // A RedisError never carries the connection URL, so no credential can leak here.
        BrokerError::Command(e.to_string())
    }
}
