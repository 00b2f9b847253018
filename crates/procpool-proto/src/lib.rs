//! The procpool wire protocol: what travels between a supervisor and its worker processes.
//!
//! This crate is only the wire: the message enums ([`ToWorker`], [`FromWorker`]), the
//! handshake ([`Hello`]), the frame codec ([`FrameCodec`] for tokio, [`read_frame`] /
//! [`encode_frame`] for blocking code) and the two argument/result encodings
//! ([`Encoding::Bincode`] for the Rust API, [`Encoding::Json`] for the CLI). It knows
//! nothing of processes (`procpool-os`), pools (`procpool-core`) or task registries
//! (`procpool-worker`). Every byte that is encoded or decoded goes through its `codec`
//! module, so the format can be swapped in one place.
//!
//! ```
//! use procpool_proto::{decode_message, encode_message, Encoding, TaskId, ToWorker};
//! let msg = ToWorker::Run { task_id: TaskId(7), name: "add".into(), args: vec![2, 4], encoding: Encoding::Bincode };
//! let bytes = encode_message(&msg).unwrap();
//! let back: ToWorker = decode_message(&bytes).unwrap();
//! assert_eq!(back, msg);
//! ```
//!
//! # Caveats
//! Frames are capped ([`DEFAULT_MAX_FRAME`] unless configured) and the cap is checked on the
//! length prefix, before any buffer is allocated. Lengths *inside* a payload are bounded by
//! bincode's decode limit, scaled to the payload: a forged `String` length cannot make the
//! decoder claim more than 32 times the payload's size (at least 64 KiB).
#![deny(missing_docs)]

mod codec;
mod errors;
mod messages;

pub use codec::{
    DoneInPlace, FrameCodec, decode_args, decode_done_in_place, decode_hello, decode_message,
    decode_value, encode_frame, encode_frame_into, encode_hello, encode_message, encode_value,
    is_on_channel, read_frame, write_done_ok,
};
pub use errors::{CodecError, FrameError, HandshakeError};
pub use messages::{
    DEFAULT_MAX_FRAME, ENV_MAX_FRAME, ENV_PARENT_PID, ENV_PEAK_RSS, ENV_PREFETCH, ENV_RLIMITS,
    ENV_WORKER, Encoding, FromWorker, HANDSHAKE_MAGIC, Hello, LARGE_FRAME, PROTOCOL_VERSION,
    ParamInfo, RunRef, TaskFailure, TaskId, TaskInfo, ToWorker,
};
