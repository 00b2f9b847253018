//! Property tests ("fuzzing in CI") of the frame decoder and of message decoding.
//!
//! Every decoder of the wire is fed arbitrary bytes, mutated valid frames and forged
//! lengths: it must return a value or an error, never panic, and never allocate much more
//! than the input could describe. Valid messages must survive encode → frame → decode
//! through both the tokio codec (in random chunk splits) and the blocking `read_frame`.
//!
//! 256 cases per property by default (a few seconds in debug); `PROPTEST_CASES=N` runs
//! longer (`scripts/fuzz` does). The coverage-guided counterpart is
//! `crates/procpool-proto/fuzz/`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::io::Read;

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_bytes::ByteBuf;
use tokio_util::codec::{Decoder, Encoder};

use procpool_proto::{
    CodecError, Encoding, FrameCodec, FrameError, FromWorker, HANDSHAKE_MAGIC, Hello,
    PROTOCOL_VERSION, ParamInfo, TaskFailure, TaskId, TaskInfo, ToWorker, decode_args,
    decode_hello, decode_message, decode_value, encode_frame, encode_hello, encode_message,
    encode_value, read_frame,
};

const PREFIX: usize = 4;

// ---------------------------------------------------------------------------------------
// A global allocator that records the largest single allocation made by this thread while
// a measurement runs (other test threads allocate concurrently and must not count).

struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = TRACKING.try_with(|tracking| {
        if tracking.get() {
            let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
        }
    });
}

// SAFETY: forwards every call unchanged to `System`; the bookkeeping only touches
// const-initialised thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the largest single allocation it made.
fn largest_alloc_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    TRACKING.with(|t| t.set(true));
    let r = f();
    TRACKING.with(|t| t.set(false));
    (r, LARGEST.with(Cell::get))
}

/// What one decode of a `payload_len` byte payload may allocate at once.
///
/// Lengths of strings and byte buffers are checked against bincode's decode limit, which
/// `codec.rs` scales to the payload; lengths of sequences are not, but serde's visitors
/// preallocate at most 1 MiB for them (`serde::__private::size_hint::cautious`).
fn alloc_bound(payload_len: usize) -> usize {
    64 * payload_len + (1 << 20)
}

/// The same for values containing maps: serde preallocates up to 1 MiB of entries, and a
/// hash table holding that many rounds its bucket count up to a power of two (measured:
/// 1.6 MiB for `HashMap<String, Vec<String>>`). No protocol message contains a map.
fn alloc_bound_with_maps(payload_len: usize) -> usize {
    64 * payload_len + (2 << 20)
}

/// Every decoder of the crate on `bytes` with the protocol's own types (no maps).
fn decode_protocol(bytes: &[u8]) {
    let _ = decode_message::<ToWorker>(bytes);
    let _ = decode_message::<FromWorker>(bytes);
    let _ = decode_hello(bytes);
    for enc in [Encoding::Bincode, Encoding::Json] {
        for arity in [0, 1, 3, 4] {
            let _ = decode_args::<(i64, String, Vec<u8>)>(enc, bytes, arity);
        }
        let _ = decode_args::<()>(enc, bytes, 0);
        let _ = decode_value::<(i64, String, Vec<u8>)>(enc, bytes);
        let _ = decode_value::<Vec<Vec<u8>>>(enc, bytes);
        let _ = decode_value::<Vec<String>>(enc, bytes);
        let _ = decode_value::<Option<f64>>(enc, bytes);
    }
}

/// Every decoder of the crate on `bytes`, results dropped: must not panic.
fn decode_everything(bytes: &[u8]) {
    decode_protocol(bytes);
    for enc in [Encoding::Bincode, Encoding::Json] {
        let _ = decode_value::<HashMap<String, Vec<String>>>(enc, bytes);
    }
    let _ = decode_value::<serde_json::Value>(Encoding::Json, bytes);
}

// ---------------------------------------------------------------------------------------
// bincode 2 "standard" wire pieces, to forge payloads by hand.

/// bincode's varint for an unsigned integer.
fn varint(v: u64) -> Vec<u8> {
    match v {
        0..=250 => vec![v as u8],
        251..=0xFFFF => [&[251u8][..], &(v as u16).to_le_bytes()].concat(),
        0x1_0000..=0xFFFF_FFFF => [&[252u8][..], &(v as u32).to_le_bytes()].concat(),
        _ => [&[253u8][..], &v.to_le_bytes()].concat(),
    }
}

fn text(s: &str) -> Vec<u8> {
    [varint(s.len() as u64), s.as_bytes().to_vec()].concat()
}

fn hello_header() -> Vec<u8> {
    [&HANDSHAKE_MAGIC[..], &PROTOCOL_VERSION.to_le_bytes()].concat()
}

// ---------------------------------------------------------------------------------------
// Readers and drivers.

/// A reader returning `data` in chunks of the given sizes (cycled); a size of 0 means
/// "fail once with `Interrupted`", which `read_frame` must retry.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [usize],
    i: usize,
    interrupted: bool,
}

impl<'a> Chunked<'a> {
    fn new(data: &'a [u8], sizes: &'a [usize]) -> Self {
        Chunked {
            data,
            sizes,
            i: 0,
            interrupted: false,
        }
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.data.is_empty() || out.is_empty() {
            return Ok(0);
        }
        let size = self.sizes[self.i % self.sizes.len()];
        self.i += 1;
        if size == 0 && !self.interrupted {
            self.interrupted = true;
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        self.interrupted = false;
        let n = size.max(1).min(out.len()).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Frames read by `read_frame` until the end of `data` or the first error, with the
/// largest capacity the reused buffer reached.
fn drive_sync(
    data: &[u8],
    sizes: &[usize],
    max: usize,
) -> (Vec<Vec<u8>>, Option<FrameError>, usize) {
    let mut r = Chunked::new(data, sizes);
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut largest = 0;
    loop {
        let res = read_frame(&mut r, &mut buf, max);
        largest = largest.max(buf.capacity());
        match res {
            Ok(true) => {
                assert!(
                    buf.len() <= max,
                    "frame of {} above the cap {max}",
                    buf.len()
                );
                frames.push(buf.clone());
            }
            Ok(false) => return (frames, None, largest),
            Err(e) => return (frames, Some(e), largest),
        }
    }
}

/// Frames decoded by `FrameCodec` from `data` arriving in chunks of the given sizes
/// (cycled), as `FramedRead` drives it: decode after every chunk, `decode_eof` at the end.
/// Checks after every call that the buffer did not grow beyond a frame plus a chunk.
fn drive_codec(data: &[u8], sizes: &[usize], max: usize) -> (Vec<BytesMut>, Option<FrameError>) {
    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let biggest_chunk = sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .clamp(1, data.len().max(1));
    // A pending frame plus one chunk, doubled for amortised growth.
    let cap_bound = 2 * (PREFIX + max + biggest_chunk) + 64;
    let mut pos = 0;
    let mut i = 0;
    loop {
        loop {
            let res = codec.decode(&mut buf);
            assert!(
                buf.capacity() <= cap_bound,
                "buffer capacity {} above {cap_bound} (cap {max})",
                buf.capacity()
            );
            match res {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
        if pos == data.len() {
            loop {
                match codec.decode_eof(&mut buf) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => return (frames, None),
                    Err(e) => return (frames, Some(e)),
                }
            }
        }
        let n = sizes[i % sizes.len()].max(1).min(data.len() - pos);
        i += 1;
        buf.extend_from_slice(&data[pos..pos + n]);
        pos += n;
    }
}

// ---------------------------------------------------------------------------------------
// Strategies.

fn config() -> ProptestConfig {
    // `ProptestConfig::default()` reads PROPTEST_CASES (default 256) and friends.
    ProptestConfig {
        // Shrinking forged-length payloads can take long; cap it.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

fn task_id() -> impl Strategy<Value = TaskId> {
    prop_oneof![
        Just(TaskId(0)),
        Just(TaskId(u128::MAX)),
        any::<u128>().prop_map(TaskId),
        any::<u64>().prop_map(|v| TaskId(v.into())),
    ]
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Bincode), Just(Encoding::Json)]
}

fn blob() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::collection::vec(any::<u8>(), 0..1024),
    ]
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        1 => "[a-z_]{0,12}",
        1 => ".{0,300}",
    ]
}

/// Any `f32` but NaN (NaN != NaN would fail the round-trip comparison, not the codec).
fn fraction() -> impl Strategy<Value = f32> {
    use proptest::num::f32;
    f32::POSITIVE | f32::NEGATIVE | f32::NORMAL | f32::SUBNORMAL | f32::ZERO | f32::INFINITE
}

fn to_worker() -> impl Strategy<Value = ToWorker> {
    prop_oneof![
        (task_id(), word(), blob(), encoding()).prop_map(|(task_id, name, args, encoding)| {
            ToWorker::Run {
                task_id,
                name,
                args,
                encoding,
            }
        }),
        (task_id(), blob()).prop_map(|(task_id, bytes)| ToWorker::Message { task_id, bytes }),
        Just(ToWorker::Shutdown),
        task_id().prop_map(|task_id| ToWorker::Cancel { task_id }),
    ]
}

fn failure() -> impl Strategy<Value = TaskFailure> {
    prop_oneof![
        (word(), word()).prop_map(|(type_name, message)| TaskFailure::User { type_name, message }),
        (word(), prop::option::of(word()), prop::option::of(word())).prop_map(
            |(message, location, backtrace)| TaskFailure::Panicked {
                message,
                location,
                backtrace,
            }
        ),
        word().prop_map(|name| TaskFailure::UnknownTask { name }),
        word().prop_map(|message| TaskFailure::BadArgs { message }),
        word().prop_map(|message| TaskFailure::Codec { message }),
    ]
}

fn from_worker() -> impl Strategy<Value = FromWorker> {
    prop_oneof![
        (task_id(), fraction(), word()).prop_map(|(task_id, fraction, message)| {
            FromWorker::Progress {
                task_id,
                fraction,
                message,
            }
        }),
        (task_id(), blob()).prop_map(|(task_id, bytes)| FromWorker::Message { task_id, bytes }),
        (
            task_id(),
            proptest::option::of(any::<u64>()),
            prop_oneof![
                blob().prop_map(|b| Ok(ByteBuf::from(b))),
                failure().prop_map(Err)
            ]
        )
            .prop_map(|(task_id, peak_rss, outcome)| FromWorker::Done {
                task_id,
                peak_rss,
                outcome
            }),
        task_id().prop_map(|task_id| FromWorker::Skipped { task_id }),
        task_id().prop_map(|task_id| FromWorker::Running { task_id }),
    ]
}

fn task_info() -> impl Strategy<Value = TaskInfo> {
    (
        word(),
        prop::collection::vec(
            (word(), word()).prop_map(|(name, type_name)| ParamInfo { name, type_name }),
            0..4,
        ),
        word(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(name, params, result, fallible, is_async)| TaskInfo {
            name,
            params,
            result,
            fallible,
            is_async,
        })
}

fn hello() -> impl Strategy<Value = Hello> {
    (any::<u32>(), prop::collection::vec(task_info(), 0..5)).prop_map(|(pid, tasks)| Hello {
        version: PROTOCOL_VERSION,
        pid,
        tasks,
    })
}

/// Chunk sizes for splitting a stream; 0 is an `Interrupted` read for `read_frame`.
fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        prop::collection::vec(0usize..8, 1..16),
        prop::collection::vec(0usize..256, 1..16),
        Just(vec![usize::MAX]),
    ]
}

/// Lengths a forger would claim: around powers of two, and anything.
fn forged_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        (10u32..64).prop_map(|k| 1u64 << k),
        (10u32..64).prop_map(|k| (1u64 << k) - 1),
        (10u32..64).prop_map(|k| (1u64 << k) + 1),
        any::<u64>(),
    ]
}

/// One edit of a valid stream of frames.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(prop::sample::Index, u8),
    SetByte(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, Vec<u8>),
    Remove(prop::sample::Index, usize),
    /// Overwrite the first length prefix.
    SetLength(u32),
    /// Add a small delta to the first length prefix.
    NudgeLength(i8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    use prop::sample::Index;
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => (any::<Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => any::<u32>().prop_map(Mutation::SetLength),
        1 => any::<i8>().prop_map(Mutation::NudgeLength),
    ]
}

fn mutate(data: &mut Vec<u8>, m: &Mutation) {
    if data.is_empty() {
        return;
    }
    match m {
        Mutation::FlipBit(i, b) => {
            let i = i.index(data.len());
            data[i] ^= 1 << b;
        }
        Mutation::SetByte(i, v) => {
            let i = i.index(data.len());
            data[i] = *v;
        }
        Mutation::Truncate(i) => data.truncate(i.index(data.len())),
        Mutation::Insert(i, v) => {
            let i = i.index(data.len() + 1);
            data.splice(i..i, v.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let i = i.index(data.len());
            let end = (i + n).min(data.len());
            data.drain(i..end);
        }
        Mutation::SetLength(len) if data.len() >= PREFIX => {
            data[..PREFIX].copy_from_slice(&len.to_le_bytes());
        }
        Mutation::NudgeLength(d) if data.len() >= PREFIX => {
            let len = u32::from_le_bytes(data[..PREFIX].try_into().unwrap());
            let len = len.wrapping_add_signed(i32::from(*d));
            data[..PREFIX].copy_from_slice(&len.to_le_bytes());
        }
        Mutation::SetLength(_) | Mutation::NudgeLength(_) => {}
    }
}

fn frame_all<T: serde::Serialize>(msgs: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for m in msgs {
        encode_frame(m, &mut buf, usize::MAX).unwrap();
        out.extend_from_slice(&buf);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Arbitrary bytes: no panic, a value or an error.

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    /// Payloads that start like the real thing get further into the decoders.
    #[test]
    fn arbitrary_tails_after_valid_heads_never_panic(
        head in prop_oneof![
            Just(Vec::new()),
            Just(hello_header()),
            (0u8..6).prop_map(|v| vec![v]),
            (0u8..6, task_id()).prop_map(|(v, id)| [vec![v], encode_message(&id).unwrap()].concat()),
            Just(b"[1, \"".to_vec()),
        ],
        tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        decode_everything(&[head, tail].concat());
    }

    #[test]
    fn frame_codec_on_arbitrary_chunks_never_panics(
        data in prop::collection::vec(any::<u8>(), 0..2048),
        sizes in chunks(),
        max in prop_oneof![0usize..64, 0usize..4096, Just(procpool_proto::DEFAULT_MAX_FRAME)],
    ) {
        let (frames, err) = drive_codec(&data, &sizes, max);
        // Whatever came out is a prefix of the input, split as the prefixes say.
        let mut pos = 0;
        for f in &frames {
            let len = u32::from_le_bytes(data[pos..pos + PREFIX].try_into().unwrap()) as usize;
            prop_assert_eq!(len, f.len());
            prop_assert_eq!(&data[pos + PREFIX..pos + PREFIX + len], &f[..]);
            pos += PREFIX + len;
        }
        // Both paths agree frame for frame.
        let (sync_frames, sync_err, largest) = drive_sync(&data, &sizes, max);
        prop_assert!(largest <= max.max(8), "read_frame buffer grew to {largest} (cap {max})");
        prop_assert_eq!(sync_frames.len(), frames.len());
        for (a, b) in sync_frames.iter().zip(&frames) {
            prop_assert_eq!(&a[..], &b[..]);
        }
        prop_assert_eq!(err.is_some(), sync_err.is_some());
        if let Some(FrameError::TooLarge { len, max: m }) = err {
            prop_assert!(len > max && m == max);
            prop_assert!(
                matches!(sync_err, Some(FrameError::TooLarge { len: l, .. }) if l == len),
                "{sync_err:?}"
            );
        }
    }

    #[test]
    fn read_frame_on_arbitrary_input_never_panics(
        data in prop::collection::vec(any::<u8>(), 0..2048),
        sizes in chunks(),
        max in prop_oneof![0usize..64, 0usize..4096],
    ) {
        let (_, _, largest) = drive_sync(&data, &sizes, max);
        prop_assert!(largest <= max.max(8), "read_frame buffer grew to {largest} (cap {max})");
    }

    /// A reused buffer holds one frame: growing it for a bigger frame must not overshoot
    /// the cap (amortised `Vec` growth would double it).
    #[test]
    fn read_frame_buffer_never_exceeds_the_cap(
        max in 1usize..4096,
        lens in prop::collection::vec(any::<prop::sample::Index>(), 1..6),
        sizes in chunks(),
    ) {
        let payloads: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, l)| vec![i as u8; l.index(max + 1)])
            .collect();
        let data: Vec<u8> = payloads
            .iter()
            .flat_map(|p| [&(p.len() as u32).to_le_bytes()[..], p].concat())
            .collect();
        let (frames, err, largest) = drive_sync(&data, &sizes, max);
        prop_assert!(err.is_none(), "{err:?}");
        prop_assert_eq!(&frames, &payloads);
        prop_assert!(largest <= max.max(8), "read_frame buffer grew to {largest} (cap {max})");
    }

    #[test]
    fn json_args_never_panic(
        items in prop::collection::vec(
            prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                any::<f64>().prop_map(|v| v.to_string()),
                word().prop_map(|s| serde_json::to_string(&s).unwrap()),
                Just("null".to_string()),
                Just("[1,2,300]".to_string()),
                Just("{}".to_string()),
                "[\\[\\]{}\",:0-9a-z ]{0,12}",
            ],
            0..6,
        ),
        arity in 0usize..6,
    ) {
        let json = format!("[{}]", items.join(","));
        let _ = decode_args::<(i64, String, Vec<u8>)>(Encoding::Json, json.as_bytes(), arity);
        let _ = decode_args::<()>(Encoding::Json, json.as_bytes(), arity);
        let _ = decode_args::<(i64,)>(Encoding::Json, json.as_bytes(), arity);
    }
}

// ---------------------------------------------------------------------------------------
// The cap.

proptest! {
    #![proptest_config(config())]

    /// A prefix above the cap is refused on the prefix alone: the buffer does not grow.
    #[test]
    fn prefix_above_cap_is_rejected_before_the_buffer_grows(
        max in prop_oneof![0usize..1024, 0usize..(64 << 20)],
        excess in prop_oneof![1u64..16, any::<u64>()],
        tail in prop::collection::vec(any::<u8>(), 0..64),
        trickle in any::<bool>(),
    ) {
        let len = (max as u64).saturating_add(excess).min(u64::from(u32::MAX));
        prop_assume!(len as usize > max);
        let data = [&(len as u32).to_le_bytes()[..], &tail].concat();

        let mut codec = FrameCodec::new(max);
        let mut buf = BytesMut::new();
        let err = if trickle {
            // The prefix arrives byte by byte: no reservation on a partial prefix either.
            let mut err = None;
            for b in &data {
                buf.extend_from_slice(&[*b]);
                let before = buf.capacity();
                match codec.decode(&mut buf) {
                    Ok(None) => prop_assert_eq!(buf.capacity(), before),
                    Ok(Some(_)) => {
                        return Err(TestCaseError::fail("a frame from an over-cap prefix"));
                    }
                    Err(e) => {
                        prop_assert_eq!(buf.capacity(), before);
                        err = Some(e);
                        break;
                    }
                }
            }
            err.expect("the prefix is complete")
        } else {
            buf.extend_from_slice(&data);
            let before = buf.capacity();
            let err = codec.decode(&mut buf).unwrap_err();
            prop_assert_eq!(buf.capacity(), before);
            err
        };
        prop_assert!(buf.capacity() < 1024, "capacity {}", buf.capacity());
        prop_assert!(
            matches!(err, FrameError::TooLarge { len: l, max: m } if l as u64 == len && m == max),
            "{err:?}"
        );

        let mut vec = Vec::new();
        let err = read_frame(&mut Chunked::new(&data, &[1, 3]), &mut vec, max).unwrap_err();
        prop_assert!(
            matches!(err, FrameError::TooLarge { len: l, .. } if l as u64 == len),
            "{err:?}"
        );
        prop_assert_eq!(vec.capacity(), 0);
    }

    /// A payload of exactly the cap passes; one byte more fails, on both paths.
    #[test]
    fn frame_of_exactly_the_cap_passes_and_cap_plus_one_fails(
        payload in prop::collection::vec(any::<u8>(), 0..4096),
        sizes in chunks(),
    ) {
        let cap = payload.len();
        let frame = [&(cap as u32).to_le_bytes()[..], &payload].concat();
        let (frames, err) = drive_codec(&frame, &sizes, cap);
        prop_assert!(err.is_none(), "{err:?}");
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(&frames[0][..], &payload[..]);
        let (frames, err, _) = drive_sync(&frame, &sizes, cap);
        prop_assert!(err.is_none(), "{err:?}");
        prop_assert_eq!(&frames, &vec![payload.clone()]);

        if cap > 0 {
            let (frames, err) = drive_codec(&frame, &sizes, cap - 1);
            prop_assert!(frames.is_empty());
            prop_assert!(
                matches!(err, Some(FrameError::TooLarge { len, max }) if len == cap && max == cap - 1),
                "{err:?}"
            );
            let (frames, err, _) = drive_sync(&frame, &sizes, cap - 1);
            prop_assert!(frames.is_empty());
            prop_assert!(
                matches!(err, Some(FrameError::TooLarge { len, max }) if len == cap && max == cap - 1),
                "{err:?}"
            );
        }
    }

    /// The encoders honour the cap the same way: exactly the cap passes, one less fails
    /// and leaves the destination as it was.
    #[test]
    fn encoders_enforce_the_cap_exactly(msg in from_worker(), junk in prop::collection::vec(any::<u8>(), 0..8)) {
        let n = encode_message(&msg).unwrap().len();
        let mut buf = Vec::new();
        encode_frame(&msg, &mut buf, n).unwrap();
        prop_assert_eq!(buf.len(), PREFIX + n);
        let res = encode_frame(&msg, &mut buf, n - 1);
        prop_assert!(matches!(res, Err(FrameError::TooLarge { len, .. }) if len == n), "{res:?}");
        prop_assert!(buf.is_empty());

        let mut dst = BytesMut::from(&junk[..]);
        FrameCodec::new(n).encode(&msg, &mut dst).unwrap();
        prop_assert_eq!(dst.len(), junk.len() + PREFIX + n);
        let mut dst = BytesMut::from(&junk[..]);
        let err = FrameCodec::new(n - 1).encode(&msg, &mut dst).unwrap_err();
        prop_assert!(matches!(err, FrameError::TooLarge { len, .. } if len == n), "{err:?}");
        prop_assert_eq!(&dst[..], &junk[..]);
    }
}

// ---------------------------------------------------------------------------------------
// Round trips.

proptest! {
    #![proptest_config(config())]

    #[test]
    fn to_worker_roundtrips_through_both_paths(
        msgs in prop::collection::vec(to_worker(), 0..6),
        sizes in chunks(),
    ) {
        let mut codec = FrameCodec::new(procpool_proto::DEFAULT_MAX_FRAME);
        let mut stream = BytesMut::new();
        for m in &msgs {
            codec.encode(m, &mut stream).unwrap();
        }
        // The tokio encoder and the blocking one write the same bytes.
        prop_assert_eq!(&stream[..], &frame_all(&msgs)[..]);

        let (frames, err) = drive_codec(&stream, &sizes, procpool_proto::DEFAULT_MAX_FRAME);
        prop_assert!(err.is_none(), "{err:?}");
        let back: Vec<ToWorker> = frames.iter().map(|f| decode_message(f).unwrap()).collect();
        prop_assert_eq!(&back, &msgs);

        let (frames, err, _) = drive_sync(&stream, &sizes, procpool_proto::DEFAULT_MAX_FRAME);
        prop_assert!(err.is_none(), "{err:?}");
        let back: Vec<ToWorker> = frames.iter().map(|f| decode_message(f).unwrap()).collect();
        prop_assert_eq!(&back, &msgs);
    }

    #[test]
    fn from_worker_roundtrips_through_both_paths(
        msgs in prop::collection::vec(from_worker(), 0..6),
        sizes in chunks(),
    ) {
        let mut codec = FrameCodec::new(procpool_proto::DEFAULT_MAX_FRAME);
        let mut stream = BytesMut::new();
        for m in &msgs {
            codec.encode(m, &mut stream).unwrap();
        }
        prop_assert_eq!(&stream[..], &frame_all(&msgs)[..]);

        let (frames, err) = drive_codec(&stream, &sizes, procpool_proto::DEFAULT_MAX_FRAME);
        prop_assert!(err.is_none(), "{err:?}");
        let back: Vec<FromWorker> = frames.iter().map(|f| decode_message(f).unwrap()).collect();
        prop_assert_eq!(&back, &msgs);

        let (frames, err, _) = drive_sync(&stream, &sizes, procpool_proto::DEFAULT_MAX_FRAME);
        prop_assert!(err.is_none(), "{err:?}");
        let back: Vec<FromWorker> = frames.iter().map(|f| decode_message(f).unwrap()).collect();
        prop_assert_eq!(&back, &msgs);
    }

    #[test]
    fn hello_roundtrips(hello in hello(), sizes in chunks()) {
        let payload = encode_hello(&hello).unwrap();
        prop_assert_eq!(&decode_hello(&payload).unwrap(), &hello);
        // Framed as the worker frames it.
        let frame = [&(payload.len() as u32).to_le_bytes()[..], &payload].concat();
        let (frames, err, _) = drive_sync(&frame, &sizes, procpool_proto::DEFAULT_MAX_FRAME);
        prop_assert!(err.is_none());
        prop_assert_eq!(&decode_hello(&frames[0]).unwrap(), &hello);
    }

    #[test]
    fn args_roundtrip_in_both_encodings(
        args in (any::<i64>(), word(), blob()),
        enc in encoding(),
    ) {
        let bytes = encode_value(enc, &args).unwrap();
        prop_assert_eq!(&decode_args::<(i64, String, Vec<u8>)>(enc, &bytes, 3).unwrap(), &args);
        prop_assert_eq!(&decode_value::<(i64, String, Vec<u8>)>(enc, &bytes).unwrap(), &args);
        // Too few or too many arguments: JSON says which count was wrong; bincode fails
        // or misreads, never panics.
        let (a, s, b) = args;
        let wrong = [
            encode_value(enc, &(a,)).unwrap(),
            encode_value(enc, &(a, s.clone())).unwrap(),
            encode_value(enc, &(a, s, b, 0u8)).unwrap(),
        ];
        for bytes in &wrong {
            let res = decode_args::<(i64, String, Vec<u8>)>(enc, bytes, 3);
            if enc == Encoding::Json {
                prop_assert!(
                    matches!(&res, Err(CodecError::Arity(m)) if m.starts_with("expected 3 arguments, got ")),
                    "{res:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Mutations of valid frames.

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_to_worker_frames_never_panic(
        msgs in prop::collection::vec(to_worker(), 1..4),
        edits in prop::collection::vec(mutation(), 1..4),
        sizes in chunks(),
    ) {
        let mut data = frame_all(&msgs);
        for m in &edits {
            mutate(&mut data, m);
        }
        let (frames, _) = drive_codec(&data, &sizes, 1 << 16);
        let (sync_frames, _, _) = drive_sync(&data, &sizes, 1 << 16);
        prop_assert_eq!(frames.len(), sync_frames.len());
        for f in &sync_frames {
            let ((), largest) = largest_alloc_during(|| decode_protocol(f));
            prop_assert!(largest <= alloc_bound(f.len()), "{largest} bytes for {} bytes", f.len());
            let ((), largest) = largest_alloc_during(|| decode_everything(f));
            prop_assert!(
                largest <= alloc_bound_with_maps(f.len()),
                "{largest} bytes for {} bytes",
                f.len()
            );
        }
        // The payloads on their own, without framing.
        if data.len() > PREFIX {
            decode_everything(&data[PREFIX..]);
        }
    }

    #[test]
    fn mutated_from_worker_frames_never_panic(
        msgs in prop::collection::vec(from_worker(), 1..4),
        edits in prop::collection::vec(mutation(), 1..4),
        sizes in chunks(),
    ) {
        let mut data = frame_all(&msgs);
        for m in &edits {
            mutate(&mut data, m);
        }
        let (frames, _) = drive_codec(&data, &sizes, 1 << 16);
        let (sync_frames, _, _) = drive_sync(&data, &sizes, 1 << 16);
        prop_assert_eq!(frames.len(), sync_frames.len());
        for f in &sync_frames {
            let ((), largest) = largest_alloc_during(|| decode_protocol(f));
            prop_assert!(largest <= alloc_bound(f.len()), "{largest} bytes for {} bytes", f.len());
            let ((), largest) = largest_alloc_during(|| decode_everything(f));
            prop_assert!(
                largest <= alloc_bound_with_maps(f.len()),
                "{largest} bytes for {} bytes",
                f.len()
            );
        }
        if data.len() > PREFIX {
            decode_everything(&data[PREFIX..]);
        }
    }

    #[test]
    fn mutated_hello_never_panics(hello in hello(), edits in prop::collection::vec(mutation(), 1..4)) {
        let mut payload = encode_hello(&hello).unwrap();
        for m in &edits {
            mutate(&mut payload, m);
        }
        let (res, largest) = largest_alloc_during(|| decode_hello(&payload));
        prop_assert!(largest <= alloc_bound(payload.len()));
        drop(res);
    }

    #[test]
    fn mutated_args_never_panic(
        args in (any::<i64>(), word(), blob()),
        enc in encoding(),
        edits in prop::collection::vec(mutation(), 1..4),
        arity in 0usize..5,
    ) {
        let mut bytes = encode_value(enc, &args).unwrap();
        for m in &edits {
            mutate(&mut bytes, m);
        }
        let (res, largest) =
            largest_alloc_during(|| decode_args::<(i64, String, Vec<u8>)>(enc, &bytes, arity));
        prop_assert!(largest <= alloc_bound(bytes.len()));
        drop(res);
    }
}

// ---------------------------------------------------------------------------------------
// Allocation bounds: forged lengths inside a payload.

/// A decode of a forged payload: whether it failed.
type Decode = fn(&[u8]) -> bool;

/// Hand-made payloads that claim huge lengths, each with its decode.
fn length_bombs() -> Vec<(&'static str, Vec<u8>, Decode)> {
    fn to_worker(b: &[u8]) -> bool {
        decode_message::<ToWorker>(b).is_err()
    }
    fn from_worker(b: &[u8]) -> bool {
        decode_message::<FromWorker>(b).is_err()
    }
    fn hello(b: &[u8]) -> bool {
        decode_hello(b).is_err()
    }
    fn args(b: &[u8]) -> bool {
        decode_args::<(i64, String, Vec<u8>)>(Encoding::Bincode, b, 3).is_err()
    }
    fn nested(b: &[u8]) -> bool {
        decode_value::<Vec<Vec<u8>>>(Encoding::Bincode, b).is_err()
    }
    fn strings(b: &[u8]) -> bool {
        decode_value::<Vec<String>>(Encoding::Bincode, b).is_err()
    }
    fn map(b: &[u8]) -> bool {
        decode_value::<HashMap<String, Vec<String>>>(Encoding::Bincode, b).is_err()
    }
    let id = varint(7);
    vec![
        (
            "Run.name of 2^40 bytes",
            [&[0][..], &id, &varint(1 << 40)].concat(),
            to_worker,
        ),
        (
            "Run.args of 2^32 bytes",
            [&[0][..], &id, &text("add"), &varint(1 << 32)].concat(),
            to_worker,
        ),
        (
            "Message.bytes of u64::MAX bytes",
            [&[1][..], &id, &varint(u64::MAX)].concat(),
            to_worker,
        ),
        (
            "Progress.message of 2^40 bytes",
            [&[0][..], &id, &0.5f32.to_le_bytes(), &varint(1 << 40)].concat(),
            from_worker,
        ),
        (
            "Done(Ok) of 2^32 bytes",
            [&[2][..], &id, &[0], &varint(1 << 32)].concat(),
            from_worker,
        ),
        (
            "Done(Err(Panicked)).message of 2^40 bytes",
            [&[2][..], &id, &[1, 1], &varint(1 << 40)].concat(),
            from_worker,
        ),
        (
            "Hello with 2^40 tasks",
            [hello_header(), varint(1), varint(1 << 40)].concat(),
            hello,
        ),
        (
            "Hello with 2^32 tasks, the first with 2^40 params",
            [
                hello_header(),
                varint(1),
                varint(1 << 32),
                text("t"),
                varint(1 << 40),
            ]
            .concat(),
            hello,
        ),
        (
            "Hello with a task whose name is 2^40 bytes",
            [hello_header(), varint(1), varint(1), varint(1 << 40)].concat(),
            hello,
        ),
        (
            "args: String of 2^40 bytes",
            [varint(14), varint(1 << 40)].concat(),
            args,
        ),
        (
            "args: Vec<u8> of 2^32 bytes",
            [varint(14), text("x"), varint(1 << 32)].concat(),
            args,
        ),
        (
            "Vec<Vec<u8>>: 2^40 vecs of 2^32 bytes",
            [varint(1 << 40), varint(1 << 32)].concat(),
            nested,
        ),
        (
            "Vec<Vec<u8>>: 2^32 vecs, then 2^20 empty ones",
            [varint(1 << 32), vec![0; 1 << 10]].concat(),
            nested,
        ),
        (
            "Vec<String>: 2^32 strings of 2^40 bytes",
            [varint(1 << 32), varint(1 << 40)].concat(),
            strings,
        ),
        (
            "HashMap: 2^40 entries, key of 2^32 bytes",
            [varint(1 << 40), varint(1 << 32)].concat(),
            map,
        ),
        (
            "HashMap: 2^40 entries, value of 2^40 strings",
            [varint(1 << 40), text("k"), varint(1 << 40)].concat(),
            map,
        ),
    ]
}

#[test]
fn the_counting_allocator_counts() {
    let (v, largest) = largest_alloc_during(|| vec![0u8; 10 << 20]);
    assert!(largest >= 10 << 20, "{largest}");
    drop(v);
    let (v, largest) = largest_alloc_during(|| Vec::<u8>::with_capacity(100));
    assert!((100..1 << 10).contains(&largest), "{largest}");
    drop(v);
}

/// bincode's limit is a type-level constant, picked from a ladder of sizes by the payload's
/// budget: whatever the payload length, a claim just under a rung must stay in the bound.
#[test]
fn forged_lengths_at_every_rung_stay_in_the_bound() {
    let mut pads: Vec<usize> = (0..=20).map(|k| 1usize << k).collect();
    pads.extend((9..=20).map(|k| 3usize << (k - 1)));
    for pad in pads {
        let filler = vec![b'a'; pad];
        for k in 12..=36u32 {
            for claim in [(1u64 << k) - 64, 1u64 << k] {
                let payload = [&[1u8][..], &varint(7), &varint(claim), &filler].concat();
                // Fails (or, claim == pad, decodes): either way, within the bound.
                let (_, largest) = largest_alloc_during(|| decode_message::<ToWorker>(&payload));
                let bound = alloc_bound(payload.len());
                assert!(
                    largest <= bound,
                    "a {} byte payload claiming {claim} bytes made a {largest} byte allocation (bound {bound})",
                    payload.len()
                );
            }
        }
    }
}

#[test]
fn length_bombs_are_errors_and_allocate_little() {
    for (what, payload, decode) in length_bombs() {
        let (failed, largest) = largest_alloc_during(|| decode(&payload));
        assert!(failed, "{what}: decoded");
        let bound = if what.starts_with("HashMap") {
            alloc_bound_with_maps(payload.len())
        } else {
            alloc_bound(payload.len())
        };
        assert!(
            largest <= bound,
            "{what}: a {} byte payload made a {largest} byte allocation (bound {bound})",
            payload.len()
        );
    }
}

proptest! {
    #![proptest_config(config())]

    /// A payload of any size whose last length claims anything: the largest allocation
    /// stays within `64 × len + 1 MiB`, whatever the claim.
    #[test]
    fn forged_lengths_allocate_in_proportion_to_the_payload(
        claim in forged_len(),
        pad in prop_oneof![0usize..256, 0usize..(1 << 16), 0usize..(1 << 19)],
        shape in 0usize..6,
    ) {
        let id = varint(7);
        // The claimed bytes never arrive: `pad` filler bytes come instead.
        let filler = vec![b'a'; pad];
        let (payload, decode): (Vec<u8>, Decode) = match shape {
            0 => ([&[1][..], &id, &varint(claim), &filler].concat(), |b| {
                decode_message::<ToWorker>(b).is_err()
            }),
            1 => ([&[0][..], &id, &text("f"), &varint(claim), &filler].concat(), |b| {
                decode_message::<ToWorker>(b).is_err()
            }),
            2 => ([&[2][..], &id, &[0], &varint(claim), &filler].concat(), |b| {
                decode_message::<FromWorker>(b).is_err()
            }),
            3 => ([hello_header(), varint(1), varint(1), varint(claim), filler].concat(), |b| {
                decode_hello(b).is_err()
            }),
            4 => ([varint(1), varint(claim), filler].concat(), |b| {
                decode_args::<(i64, String, Vec<u8>)>(Encoding::Bincode, b, 3).is_err()
            }),
            _ => ([varint(claim), varint(claim), filler].concat(), |b| {
                decode_value::<Vec<Vec<u8>>>(Encoding::Bincode, b).is_err()
            }),
        };
        // A claim the filler satisfies decodes (maybe with trailing bytes); others fail.
        let (_, largest) = largest_alloc_during(|| decode(&payload));
        let bound = alloc_bound(payload.len());
        prop_assert!(
            largest <= bound,
            "shape {shape}: a {} byte payload claiming {claim} made a {largest} byte allocation (bound {bound})",
            payload.len()
        );
    }

    /// Arbitrary bytes with a huge varint spliced in somewhere.
    #[test]
    fn spliced_length_bombs_allocate_little(
        head in prop::collection::vec(any::<u8>(), 0..64),
        claim in forged_len(),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let payload = [head, varint(claim), tail].concat();
        let ((), largest) = largest_alloc_during(|| decode_protocol(&payload));
        prop_assert!(largest <= alloc_bound(payload.len()), "{largest}");
        let ((), largest) = largest_alloc_during(|| decode_everything(&payload));
        prop_assert!(largest <= alloc_bound_with_maps(payload.len()), "{largest}");
    }
}
