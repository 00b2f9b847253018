//! Every encode and decode of the project: frames, messages, handshake, task values.

use std::io::Read;

use bytes::{Buf, BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

use crate::errors::{CodecError, FrameError, HandshakeError};
use crate::messages::{
    Encoding, FromWorker, HANDSHAKE_MAGIC, Hello, PROTOCOL_VERSION, TaskFailure, TaskId, TaskInfo,
};

const PREFIX: usize = 4;

fn encode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Decodes `bytes` with a bincode allocation limit scaled to the payload: a length inside
/// the payload may not claim much more memory than the payload could legitimately describe.
/// Without the limit, a 10-byte payload claiming a 2^40-byte `String` aborts the process.
fn bincode_decode<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, CodecError> {
    // In-memory size may legitimately exceed the encoded size (varints, 24-byte `String`
    // headers), hence the factor; the floor keeps tiny payloads with small containers valid.
    let budget = bytes.len().saturating_mul(32).max(64 << 10);
    // bincode's limit is a type-level constant: use the largest rung of the ladder that is
    // not above the budget. Rounding up instead would let a claim exceed the budget.
    macro_rules! with_limit {
        ($($n:literal),*; $floor:literal) => {{
            $(if budget >= $n {
                let cfg = bincode::config::standard().with_limit::<$n>();
                return finish(bincode::serde::borrow_decode_from_slice::<T, _>(bytes, cfg)?, bytes.len());
            })*
            // The budget is never below the floor.
            let cfg = bincode::config::standard().with_limit::<$floor>();
            finish(bincode::serde::borrow_decode_from_slice::<T, _>(bytes, cfg)?, bytes.len())
        }};
    }
    // Powers of two, so rounding down costs at most half the budget.
    with_limit!(
        17179869184, 8589934592, 4294967296, 2147483648, 1073741824, 536870912, 268435456, 134217728, 67108864, 33554432, 16777216, 8388608, 4194304, 2097152, 1048576, 524288, 262144, 131072; 65536
    )
}

fn finish<T>((value, used): (T, usize), len: usize) -> Result<T, CodecError> {
    if used == len {
        Ok(value)
    } else {
        Err(CodecError::Trailing(len - used))
    }
}

/// Encodes a protocol message (without the length prefix).
pub fn encode_message<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(msg, encode_config())?)
}

/// Decodes a protocol message from one frame's payload (already capped by the framing).
pub fn decode_message<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    bincode_decode(payload)
}

/// `FromWorker` as far as `Done`, with the result borrowed from the frame. The variants
/// before `Done` only hold their place (bincode numbers variants in order); any other
/// message fails to decode here and goes through [`decode_message`].
#[derive(Deserialize)]
enum DoneView<'a> {
    #[allow(dead_code)]
    Progress,
    #[allow(dead_code)]
    Message,
    Done {
        task_id: TaskId,
        peak_rss: Option<u64>,
        #[serde(borrow)]
        outcome: Result<&'a serde_bytes::Bytes, TaskFailure>,
    },
}

/// A `FromWorker::Done` read in place (see [`decode_done_in_place`]).
#[derive(Debug)]
pub struct DoneInPlace {
    /// Finished task.
    pub task_id: TaskId,
    /// The worker's peak resident memory during the task, if it measured one.
    pub peak_rss: Option<u64>,
    /// On success, where the result lies in the payload.
    pub outcome: Result<std::ops::Range<usize>, TaskFailure>,
}

/// A `FromWorker::Done` read in place: on success, where its result lies in `payload`,
/// so a large result reaches the caller without a copy. `None` when the frame is not a
/// well-formed `Done` (decode it with [`decode_message`] then).
pub fn decode_done_in_place(payload: &[u8]) -> Option<DoneInPlace> {
    match bincode_decode::<DoneView<'_>>(payload).ok()? {
        DoneView::Done {
            task_id,
            peak_rss,
            outcome,
        } => Some(DoneInPlace {
            task_id,
            peak_rss,
            outcome: outcome.map(|bytes| {
                let start = bytes.as_ptr() as usize - payload.as_ptr() as usize;
                start..start + bytes.len()
            }),
        }),
        _ => None,
    }
}

/// Whether a frame's payload is `FromWorker::OnChannel`: the next frame comes on the
/// channel. Only one-byte payloads are decoded, so the frames of every result are not
/// decoded twice.
pub fn is_on_channel(payload: &[u8]) -> bool {
    payload.len() == 1
        && matches!(
            decode_message::<FromWorker>(payload),
            Ok(FromWorker::OnChannel)
        )
}

/// Writes a `Done` with a successful result as one frame: the prefix and the message head
/// from `head` (reused), the result from where it lies, in one vectored write. The result
/// is not copied into a frame buffer first. Returns `FrameError::TooLarge` without writing
/// when the frame would exceed `max`.
pub fn write_done_ok(
    w: &mut impl std::io::Write,
    head: &mut Vec<u8>,
    task_id: TaskId,
    peak_rss: Option<u64>,
    result: &[u8],
    max: usize,
) -> Result<(), FrameError> {
    head.clear();
    head.extend_from_slice(&[0; PREFIX]);
    let empty: FromWorker = FromWorker::Done {
        task_id,
        peak_rss,
        outcome: Ok(serde_bytes::ByteBuf::new()),
    };
    let io = |e| FrameError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
    bincode::serde::encode_into_std_write(&empty, head, encode_config()).map_err(io)?;
    // The empty result ends the head with its length, 0 (one byte): put the real one.
    head.pop();
    bincode::serde::encode_into_std_write(result.len() as u64, head, encode_config())
        .map_err(io)?;
    let len = head.len() - PREFIX + result.len();
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    head[..PREFIX].copy_from_slice(&(len as u32).to_le_bytes());
    let mut slices = [std::io::IoSlice::new(head), std::io::IoSlice::new(result)];
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Encodes the handshake payload: magic, version (u32 LE), then the bincode body.
pub fn encode_hello(hello: &Hello) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&HANDSHAKE_MAGIC);
    out.extend_from_slice(&hello.version.to_le_bytes());
    bincode::serde::encode_into_std_write((hello.pid, &hello.tasks), &mut out, encode_config())?;
    Ok(out)
}

/// Decodes and checks a handshake payload against [`PROTOCOL_VERSION`].
pub fn decode_hello(payload: &[u8]) -> Result<Hello, HandshakeError> {
    let magic = HANDSHAKE_MAGIC.len();
    if payload.len() < magic + 4 || payload[..magic] != HANDSHAKE_MAGIC {
        return Err(HandshakeError::NotAWorker);
    }
    let version = u32::from_le_bytes(payload[magic..magic + 4].try_into().expect("4 bytes"));
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::VersionMismatch {
            worker: version,
            supervisor: PROTOCOL_VERSION,
        });
    }
    let (pid, tasks): (u32, Vec<TaskInfo>) =
        bincode_decode(&payload[magic + 4..]).map_err(HandshakeError::Malformed)?;
    Ok(Hello {
        version,
        pid,
        tasks,
    })
}

/// Encodes a task argument tuple or result in the chosen encoding.
pub fn encode_value<T: Serialize + ?Sized>(
    enc: Encoding,
    value: &T,
) -> Result<Vec<u8>, CodecError> {
    match enc {
        Encoding::Bincode => Ok(bincode::serde::encode_to_vec(value, encode_config())?),
        Encoding::Json => Ok(serde_json::to_vec(value)?),
    }
}

/// Decodes a task result (or any single value) in the chosen encoding.
pub fn decode_value<T: DeserializeOwned>(enc: Encoding, bytes: &[u8]) -> Result<T, CodecError> {
    match enc {
        Encoding::Bincode => bincode_decode(bytes),
        Encoding::Json => Ok(serde_json::from_slice(bytes)?),
    }
}

/// Decodes positional arguments into the parameter tuple `A` of a function with `arity`
/// parameters. JSON arguments must be an array of exactly `arity` elements; the error
/// says which count was expected.
pub fn decode_args<A: DeserializeOwned>(
    enc: Encoding,
    bytes: &[u8],
    arity: usize,
) -> Result<A, CodecError> {
    match enc {
        Encoding::Bincode => bincode_decode(bytes),
        // Fast path: straight into the parameter tuple (no intermediate JSON tree, which
        // would double the cost of large arguments). On failure, look again to say why.
        Encoding::Json if arity > 0 => {
            serde_json::from_slice(bytes).map_err(|e| json_args_error(bytes, arity, e))
        }
        Encoding::Json => {
            // `()` deserializes from `null`, not from `[]`.
            match serde_json::from_slice::<serde_json::Value>(bytes) {
                // `[]`, or `null` (how a unit argument tuple encodes).
                Ok(serde_json::Value::Null) => Ok(serde_json::from_value(serde_json::Value::Null)?),
                Ok(serde_json::Value::Array(items)) if items.is_empty() => {
                    Ok(serde_json::from_value(serde_json::Value::Null)?)
                }
                Ok(_) => Err(json_args_error(
                    bytes,
                    0,
                    serde_json::Error::io(std::io::ErrorKind::InvalidData.into()),
                )),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Explains why JSON arguments did not decode: not an array, the wrong count, or (the
/// decoder's own message) a wrong type.
fn json_args_error(bytes: &[u8], arity: usize, err: serde_json::Error) -> CodecError {
    let plural = if arity == 1 { "" } else { "s" };
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Array(items)) if items.len() != arity => CodecError::Arity(format!(
            "expected {arity} argument{plural}, got {}",
            items.len()
        )),
        Ok(serde_json::Value::Array(_)) => CodecError::Json(err),
        Ok(_) => CodecError::Arity(format!(
            "arguments must be a JSON array of {arity} positional argument{plural}"
        )),
        Err(_) => CodecError::Json(err),
    }
}

/// Length-prefixed frames for tokio: u32 little-endian length, then the payload. The cap is
/// checked on the prefix, before any buffer grows.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    /// A codec accepting payloads of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameCodec { max }
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        if src.len() < PREFIX {
            return Ok(None);
        }
        let len = u32::from_le_bytes(src[..PREFIX].try_into().expect("4 bytes")) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if src.len() < PREFIX + len {
            // Safe to reserve: `len` was checked against the cap above.
            src.reserve(PREFIX + len - src.len());
            return Ok(None);
        }
        src.advance(PREFIX);
        Ok(Some(src.split_to(len)))
    }
}

impl<T: Serialize> Encoder<&T> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, msg: &T, dst: &mut BytesMut) -> Result<(), FrameError> {
        let start = dst.len();
        dst.put_u32_le(0);
        let mut writer = dst.writer();
        bincode::serde::encode_into_std_write(msg, &mut writer, encode_config())
            .map_err(|e| FrameError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        let dst = writer.into_inner();
        let len = dst.len() - start - PREFIX;
        if len > self.max {
            dst.truncate(start);
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        dst[start..start + PREFIX].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(())
    }
}

/// Reads one frame into `buf` (reused across calls). Returns `Ok(false)` on a clean end
/// of stream before a new frame starts.
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>, max: usize) -> Result<bool, FrameError> {
    let mut prefix = [0u8; PREFIX];
    let mut got = 0;
    while got < PREFIX {
        match r.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    buf.clear();
    // Exact: amortised growth would let the reused buffer reach twice the cap.
    buf.reserve_exact(len);
    buf.resize(len, 0);
    r.read_exact(buf)?;
    Ok(true)
}

/// Encodes `msg` as one complete frame (prefix + payload) into `buf`, reused across
/// calls, so the frame goes out in a single `write_all` without an extra copy.
pub fn encode_frame<T: Serialize>(
    msg: &T,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<(), FrameError> {
    buf.clear();
    encode_frame_into(msg, buf, max)
}

/// Appends `msg` as one complete frame (prefix + payload) to `buf`, so several frames can
/// go out in one write. On error `buf` is left as it was.
pub fn encode_frame_into<T: Serialize>(
    msg: &T,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<(), FrameError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; PREFIX]);
    if let Err(e) = bincode::serde::encode_into_std_write(msg, buf, encode_config()) {
        buf.truncate(start);
        return Err(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e,
        )));
    }
    let len = buf.len() - start - PREFIX;
    if len > max {
        buf.truncate(start);
        return Err(FrameError::TooLarge { len, max });
    }
    buf[start..start + PREFIX].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{FromWorker, TaskFailure, TaskId, ToWorker};

    #[test]
    fn length_bomb_inside_payload_is_an_error_not_an_abort() {
        // Run { task_id, name: String claiming 2^40 bytes }
        let mut payload = vec![0u8]; // variant 0 = Run
        payload.push(7); // task id varint
        payload.push(253); // u64 varint marker
        payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = decode_message::<ToWorker>(&payload).unwrap_err();
        assert!(matches!(err, CodecError::BincodeDecode(_)), "{err}");
    }

    #[test]
    fn oversized_prefix_rejected_before_allocation() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, max: 1024 } if len == u32::MAX as usize));
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn only_the_on_channel_announcement_is_one() {
        assert!(is_on_channel(
            &encode_message(&FromWorker::OnChannel).unwrap()
        ));
        let skipped = encode_message(&FromWorker::Skipped { task_id: TaskId(5) }).unwrap();
        assert!(!is_on_channel(&skipped));
        // One byte that is not the announcement (another variant's tag, truncated).
        assert!(!is_on_channel(&skipped[..1]));
        assert!(!is_on_channel(&[]));
    }

    #[test]
    fn frames_roundtrip_through_both_paths() {
        let msg = FromWorker::Done {
            task_id: TaskId(u128::MAX),
            peak_rss: Some(u64::MAX),
            outcome: Err(TaskFailure::User {
                type_name: "E".into(),
                message: "boom".into(),
            }),
        };
        let mut codec = FrameCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        codec.encode(&msg, &mut buf).unwrap();
        let mut sync_buf = Vec::new();
        assert!(read_frame(&mut &buf[..], &mut sync_buf, 1 << 20).unwrap());
        assert_eq!(decode_message::<FromWorker>(&sync_buf).unwrap(), msg);
        let frame = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(decode_message::<FromWorker>(&frame).unwrap(), msg);
    }

    #[test]
    fn done_in_place_and_vectored_done_match_the_message() {
        let peaks = [None, Some(0), Some(48 << 20), Some(u64::MAX)];
        for (result, peak_rss) in [vec![], vec![7u8; 3], vec![1u8; 300], vec![9u8; 70_000]]
            .into_iter()
            .zip(peaks)
        {
            let msg = FromWorker::Done {
                task_id: TaskId(42 << 70),
                peak_rss,
                outcome: Ok(serde_bytes::ByteBuf::from(result.clone())),
            };
            let mut framed = Vec::new();
            encode_frame(&msg, &mut framed, 1 << 20).unwrap();
            let mut vectored = Vec::new();
            let mut head = Vec::new();
            let id = TaskId(42 << 70);
            write_done_ok(&mut vectored, &mut head, id, peak_rss, &result, 1 << 20).unwrap();
            assert_eq!(vectored, framed, "result of {} bytes", result.len());
            let payload = &framed[PREFIX..];
            let done = decode_done_in_place(payload).unwrap();
            assert_eq!((done.task_id, done.peak_rss), (id, peak_rss));
            assert_eq!(&payload[done.outcome.unwrap()], &result[..]);
        }
        let failed = FromWorker::Done {
            task_id: TaskId(1),
            peak_rss: Some(7),
            outcome: Err(TaskFailure::User {
                type_name: "E".into(),
                message: "boom".into(),
            }),
        };
        let payload = encode_message(&failed).unwrap();
        let done = decode_done_in_place(&payload).unwrap();
        assert_eq!(done.peak_rss, Some(7));
        assert!(matches!(done.outcome, Err(TaskFailure::User { .. })));
        let other = encode_message(&FromWorker::Skipped { task_id: TaskId(1) }).unwrap();
        assert!(decode_done_in_place(&other).is_none());
        let progress = encode_message(&FromWorker::Progress {
            task_id: TaskId(1),
            fraction: 0.5,
            message: "half".into(),
        })
        .unwrap();
        assert!(decode_done_in_place(&progress).is_none());
        let mut out = Vec::new();
        assert!(matches!(
            write_done_ok(&mut out, &mut Vec::new(), TaskId(1), None, &[0; 100], 50),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn borrowed_run_encodes_as_run_and_frames_append() {
        let run = ToWorker::Run {
            task_id: TaskId(7 << 90),
            name: "add".into(),
            args: vec![1, 2, 3],
            encoding: Encoding::Json,
        };
        let borrowed = crate::messages::RunRef::Run {
            task_id: TaskId(7 << 90),
            name: "add",
            args: &[1, 2, 3],
            encoding: Encoding::Json,
        };
        let mut buf = Vec::new();
        encode_frame_into(&borrowed, &mut buf, 1 << 20).unwrap();
        encode_frame_into(&ToWorker::Shutdown, &mut buf, 1 << 20).unwrap();
        let before = buf.len();
        assert!(encode_frame_into(&run, &mut buf, 8).is_err());
        assert_eq!(
            buf.len(),
            before,
            "a refused frame leaves the buffer as it was"
        );
        let mut r = &buf[..];
        let mut frame = Vec::new();
        assert!(read_frame(&mut r, &mut frame, 1 << 20).unwrap());
        assert_eq!(decode_message::<ToWorker>(&frame).unwrap(), run);
        assert!(read_frame(&mut r, &mut frame, 1 << 20).unwrap());
        assert_eq!(
            decode_message::<ToWorker>(&frame).unwrap(),
            ToWorker::Shutdown
        );
        assert!(!read_frame(&mut r, &mut frame, 1 << 20).unwrap());
    }

    #[test]
    fn handshake_names_both_versions() {
        let mut payload = encode_hello(&Hello {
            version: PROTOCOL_VERSION,
            pid: 1,
            tasks: vec![],
        })
        .unwrap();
        payload[8..12].copy_from_slice(&99u32.to_le_bytes());
        let err = decode_hello(&payload).unwrap_err().to_string();
        assert!(
            err.contains("99") && err.contains(&PROTOCOL_VERSION.to_string()),
            "{err}"
        );
        assert!(matches!(
            decode_hello(b"hello world!"),
            Err(HandshakeError::NotAWorker)
        ));
    }

    #[test]
    fn json_args_check_arity() {
        let (a, b): (i64, i64) = decode_args(Encoding::Json, b"[1, 2]", 2).unwrap();
        assert_eq!((a, b), (1, 2));
        let err = decode_args::<(i64, i64)>(Encoding::Json, b"[1]", 2).unwrap_err();
        assert_eq!(err.to_string(), "expected 2 arguments, got 1");
        decode_args::<()>(Encoding::Json, b"[]", 0).unwrap();
        assert!(decode_args::<(i64,)>(Encoding::Json, b"[\"x\"]", 1).is_err());
        let bytes = encode_value(Encoding::Bincode, &(5i64,)).unwrap();
        assert_eq!(
            decode_args::<(i64,)>(Encoding::Bincode, &bytes, 1).unwrap(),
            (5,)
        );
    }
}
