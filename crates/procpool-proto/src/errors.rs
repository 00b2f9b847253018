//! Errors of the wire layer.

use thiserror::Error;

/// A value or message could not be encoded or decoded.
#[derive(Debug, Error)]
pub enum CodecError {
    /// bincode encoding failed.
    #[error("bincode encoding failed: {0}")]
    BincodeEncode(#[from] bincode::error::EncodeError),
    /// bincode decoding failed (including a length inside the payload above the cap).
    #[error("bincode decoding failed: {0}")]
    BincodeDecode(#[from] bincode::error::DecodeError),
    /// JSON encoding or decoding failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Bytes were left over after a complete message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// Positional arguments did not match the function's parameters.
    #[error("{0}")]
    Arity(String),
}

/// A frame could not be read or written.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The length prefix claims more than the cap; nothing was allocated.
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Claimed length.
        len: usize,
        /// Configured cap.
        max: usize,
    },
    /// I/O on the channel failed.
    #[error("channel i/o error")]
    Io(#[from] std::io::Error),
}

/// The first frame of a worker was not an acceptable handshake.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The frame does not start with the procpool magic: not a procpool worker.
    #[error("not a procpool worker: the first frame does not start with the procpool handshake")]
    NotAWorker,
    /// A procpool worker of another protocol version.
    #[error(
        "protocol version mismatch: worker speaks version {worker}, supervisor speaks version {supervisor}"
    )]
    VersionMismatch {
        /// Version announced by the worker.
        worker: u32,
        /// Version of this supervisor.
        supervisor: u32,
    },
    /// The handshake body did not decode.
    #[error("malformed handshake")]
    Malformed(#[source] CodecError),
}
