//! The build-time registry of task functions and the helpers generated code calls.

use std::fmt::Display;

use procpool_proto::{Encoding, ParamInfo, TaskFailure, TaskInfo};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One registered task function. Written by `#[procpool::task]`, never by hand.
#[derive(Debug)]
pub struct TaskEntry {
    /// Registered name (the function's name).
    pub name: &'static str,
    /// `(name, type as written)` of each positional parameter.
    pub params: &'static [(&'static str, &'static str)],
    /// Result type as written (the `Ok` type for a fallible function).
    pub result: &'static str,
    /// Whether it returns `Result`.
    pub fallible: bool,
    /// Whether it is `async`.
    pub is_async: bool,
    /// Decodes arguments, calls the function, encodes its result.
    pub call: fn(&[u8], Encoding) -> Result<Vec<u8>, TaskFailure>,
}

/// Every task function linked into this binary.
#[linkme::distributed_slice]
pub static TASKS: [TaskEntry];

/// The registry as announced in the handshake, sorted by name.
pub fn manifest() -> Vec<TaskInfo> {
    let mut tasks: Vec<TaskInfo> = TASKS
        .iter()
        .map(|t| TaskInfo {
            name: t.name.to_owned(),
            params: t
                .params
                .iter()
                .map(|(name, ty)| ParamInfo {
                    name: (*name).to_owned(),
                    type_name: (*ty).to_owned(),
                })
                .collect(),
            result: t.result.to_owned(),
            fallible: t.fallible,
            is_async: t.is_async,
        })
        .collect();
    tasks.sort_by(|a, b| a.name.cmp(&b.name));
    tasks
}

pub(crate) fn find(name: &str) -> Option<&'static TaskEntry> {
    TASKS.iter().find(|t| t.name == name)
}

/// Decodes a parameter tuple; failures become [`TaskFailure::BadArgs`].
pub fn decode_args<A: DeserializeOwned>(
    enc: Encoding,
    bytes: &[u8],
    arity: usize,
) -> Result<A, TaskFailure> {
    procpool_proto::decode_args(enc, bytes, arity).map_err(|e| TaskFailure::BadArgs {
        message: e.to_string(),
    })
}

/// Encodes a result; failures become [`TaskFailure::Codec`].
pub fn encode_result<T: Serialize + ?Sized>(
    enc: Encoding,
    value: &T,
) -> Result<Vec<u8>, TaskFailure> {
    procpool_proto::encode_value(enc, value).map_err(|e| TaskFailure::Codec {
        message: format!("error encoding the result: {e}"),
    })
}

/// Turns the `Err` of a fallible task into a user error, keeping the error's type name.
pub fn user_error<E: Display>(err: &E) -> TaskFailure {
    TaskFailure::User {
        type_name: std::any::type_name::<E>().to_owned(),
        // `{:#}` prints the whole cause chain of an anyhow::Error, and plain text otherwise.
        message: format!("{err:#}"),
    }
}
