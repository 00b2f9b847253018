//! Shared pieces of the fuzz targets: an allocation meter, input splitting and the
//! checks every target makes.
//!
//! Each target links this library, and with it the `#[global_allocator]` below, which
//! records the largest single allocation of the current thread while a measurement runs.
//! A decode that allocates more than `64 × payload + 1 MiB` at once aborts the target
//! (a crash for libFuzzer), as does a panic.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Read;

use bytes::BytesMut;
use procpool_proto::{FrameCodec, FrameError, read_frame};
use tokio_util::codec::Decoder;

/// Length prefix size of a frame.
pub const PREFIX: usize = 4;

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

/// The largest single allocation a decode of `payload_len` bytes may make.
pub fn alloc_bound(payload_len: usize) -> usize {
    64 * payload_len + (1 << 20)
}

/// Runs `decode` on `payload` and panics if it allocated more than [`alloc_bound`] at once.
pub fn bounded<R>(what: &str, payload: &[u8], decode: impl FnOnce(&[u8]) -> R) -> R {
    LARGEST.with(|l| l.set(0));
    TRACKING.with(|t| t.set(true));
    let r = decode(payload);
    TRACKING.with(|t| t.set(false));
    let largest = LARGEST.with(Cell::get);
    let bound = alloc_bound(payload.len());
    assert!(
        largest <= bound,
        "{what}: a {} byte payload made a {largest} byte allocation (bound {bound})",
        payload.len()
    );
    r
}

/// Chunk sizes (1..=64, or 0 = one `Interrupted` read) drawn from `seed`.
pub fn chunk_sizes(seed: u32) -> Vec<usize> {
    let mut x = seed | 1;
    (0..8)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if seed & 0x8000_0000 != 0 {
                usize::MAX // everything in one read
            } else {
                (x % 65) as usize
            }
        })
        .collect()
}

/// A reader returning its data in the given chunk sizes (cycled); a 0 is one
/// `Interrupted` error, which `read_frame` must retry.
pub struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [usize],
    i: usize,
    interrupted: bool,
}

impl<'a> Chunked<'a> {
    /// Reads `data` in chunks of `sizes`.
    pub fn new(data: &'a [u8], sizes: &'a [usize]) -> Self {
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

/// Frames of `data` as `FramedRead` would produce them, fed in chunks of `sizes`, and
/// whether the stream ended in an error. Panics if the buffer outgrows a frame plus a chunk.
pub fn codec_frames(data: &[u8], sizes: &[usize], max: usize) -> (Vec<BytesMut>, bool) {
    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let biggest = sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .clamp(1, data.len().max(1));
    let cap_bound = 2 * (PREFIX + max + biggest) + 64;
    let (mut pos, mut i) = (0, 0);
    loop {
        loop {
            let res = codec.decode(&mut buf);
            assert!(
                buf.capacity() <= cap_bound,
                "capacity {} (cap {max})",
                buf.capacity()
            );
            match res {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { len, max: m }) => {
                    assert!(len > max && m == max);
                    return (frames, true);
                }
                Err(_) => return (frames, true),
            }
        }
        if pos == data.len() {
            loop {
                match codec.decode_eof(&mut buf) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => return (frames, false),
                    Err(_) => return (frames, true),
                }
            }
        }
        let n = sizes[i % sizes.len()].max(1).min(data.len() - pos);
        i += 1;
        buf.extend_from_slice(&data[pos..pos + n]);
        pos += n;
    }
}

/// Frames of `data` read with `read_frame` in chunks of `sizes`, and whether the stream
/// ended in an error. Panics if the reused buffer outgrows the cap.
pub fn sync_frames(data: &[u8], sizes: &[usize], max: usize) -> (Vec<Vec<u8>>, bool) {
    let mut r = Chunked::new(data, sizes);
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    loop {
        let res = read_frame(&mut r, &mut buf, max);
        assert!(
            buf.capacity() <= max.max(8),
            "read_frame buffer {} (cap {max})",
            buf.capacity()
        );
        match res {
            Ok(true) => frames.push(buf.clone()),
            Ok(false) => return (frames, false),
            Err(_) => return (frames, true),
        }
    }
}

/// Decodes `payload` as a `T` within the allocation bound; if it decodes, its encoding
/// must decode again to a value with the same encoding (the codec is stable).
pub fn message_roundtrip<T>(what: &str, payload: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let decoded = bounded(what, payload, procpool_proto::decode_message::<T>);
    if let Ok(value) = decoded {
        let bytes = procpool_proto::encode_message(&value).expect("a decoded message encodes");
        let again: T = procpool_proto::decode_message(&bytes).expect("its encoding decodes");
        assert_eq!(
            procpool_proto::encode_message(&again).expect("encodes"),
            bytes,
            "{what}: unstable round trip"
        );
    }
}
