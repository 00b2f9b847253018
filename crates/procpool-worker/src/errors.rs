//! Errors that end a worker process.

use thiserror::Error;

/// Why the worker loop stopped with an error.
#[derive(Debug, Error)]
pub enum WorkerError {
    /// The process-level setup failed.
    #[error(transparent)]
    Os(#[from] procpool_os::OsError),
    /// The environment set by the supervisor is missing or malformed.
    #[error("bad worker environment: {0}")]
    Env(String),
    /// The channel to the supervisor failed.
    #[error("worker channel error")]
    Frame(#[from] procpool_proto::FrameError),
    /// A frame from the supervisor did not decode.
    #[error("undecodable frame from the supervisor")]
    Codec(#[from] procpool_proto::CodecError),
    /// The supervisor broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}
