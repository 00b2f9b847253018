//! `FrameCodec` fed arbitrary bytes in arbitrary chunks, checked against `read_frame`.
//!
//! Input: byte 0 picks the cap, bytes 1..5 seed the chunk sizes, the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use procpool_proto::{FromWorker, ToWorker};
use procpool_proto_fuzz::{PREFIX, chunk_sizes, codec_frames, message_roundtrip, sync_frames};

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let max = match data[0] & 3 {
        0 => usize::from(data[0] >> 2),
        1 => 1 << 12,
        2 => 1 << 16,
        _ => 1 << 20,
    };
    let sizes = chunk_sizes(u32::from_le_bytes(data[1..5].try_into().unwrap()));
    let stream = &data[5..];

    let (frames, codec_failed) = codec_frames(stream, &sizes, max);
    let (sync, sync_failed) = sync_frames(stream, &sizes, max);
    // Both paths see the same frames and fail at the same place.
    assert_eq!(frames.len(), sync.len());
    assert_eq!(codec_failed, sync_failed);
    let mut pos = 0;
    for (a, b) in frames.iter().zip(&sync) {
        assert_eq!(&a[..], &b[..]);
        let len = u32::from_le_bytes(stream[pos..pos + PREFIX].try_into().unwrap()) as usize;
        assert_eq!(len, a.len());
        assert_eq!(&stream[pos + PREFIX..pos + PREFIX + len], &a[..]);
        pos += PREFIX + len;
    }
    if !codec_failed {
        assert_eq!(
            pos,
            stream.len(),
            "a clean end must consume the whole stream"
        );
    }
    for f in &sync {
        message_roundtrip::<ToWorker>("ToWorker", f);
        message_roundtrip::<FromWorker>("FromWorker", f);
    }
});
