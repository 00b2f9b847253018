//! Micro-benchmarks of the wire, for regressions: encode and decode of `Run` and `Done`
//! (a tiny task and a 1 MiB payload), the typed result decode, and the frame paths (the
//! tokio `FrameCodec` the supervisor reads with, `encode_frame`/`read_frame` the worker
//! uses, and the in-place paths of a result: `decode_done_in_place`, `write_done_ok`).
//! `cargo bench -p procpool-proto`; scripts/bench measures whole processes.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use procpool_proto::{
    DEFAULT_MAX_FRAME, Encoding, FrameCodec, FromWorker, TaskId, ToWorker, decode_done_in_place,
    decode_message, decode_value, encode_frame, encode_message, encode_value, read_frame,
    write_done_ok,
};
use serde_bytes::ByteBuf;
use tokio_util::codec::{Decoder, Encoder};

const MIB: usize = 1 << 20;

fn run(args: Vec<u8>) -> ToWorker {
    ToWorker::Run {
        task_id: TaskId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        name: "add".into(),
        args,
        encoding: Encoding::Bincode,
    }
}

fn done(result: Vec<u8>) -> FromWorker {
    FromWorker::Done {
        task_id: TaskId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        peak_rss: None,
        outcome: Ok(ByteBuf::from(result)),
    }
}

fn small_args() -> Vec<u8> {
    encode_value(Encoding::Bincode, &(40i64, 2i64)).unwrap()
}

fn big() -> Vec<u8> {
    (0..MIB).map(|i| i as u8).collect()
}

fn messages(c: &mut Criterion) {
    let cases: [(&str, ToWorker, FromWorker, usize); 2] = [
        (
            "small",
            run(small_args()),
            done(encode_value(Encoding::Bincode, &42i64).unwrap()),
            0,
        ),
        (
            "1MiB",
            run(big()),
            done(encode_value(Encoding::Bincode, &ByteBuf::from(big())).unwrap()),
            MIB,
        ),
    ];
    for (size, run_msg, done_msg, bytes) in cases {
        let mut g = c.benchmark_group(format!("message/{size}"));
        if bytes > 0 {
            g.throughput(Throughput::Bytes(bytes as u64));
        }
        let run_bytes = encode_message(&run_msg).unwrap();
        let done_bytes = encode_message(&done_msg).unwrap();
        g.bench_function("encode_run", |b| {
            b.iter(|| encode_message(black_box(&run_msg)).unwrap())
        });
        g.bench_function("decode_run", |b| {
            b.iter(|| decode_message::<ToWorker>(black_box(&run_bytes)).unwrap())
        });
        g.bench_function("encode_done", |b| {
            b.iter(|| encode_message(black_box(&done_msg)).unwrap())
        });
        g.bench_function("decode_done", |b| {
            b.iter(|| decode_message::<FromWorker>(black_box(&done_bytes)).unwrap())
        });
        // What the parent does with a `Done`: the message, then the typed result inside.
        if bytes > 0 {
            g.bench_function("decode_done_then_result", |b| {
                b.iter(
                    || match decode_message::<FromWorker>(black_box(&done_bytes)).unwrap() {
                        FromWorker::Done { outcome: Ok(r), .. } => {
                            decode_value::<ByteBuf>(Encoding::Bincode, &r).unwrap()
                        }
                        _ => unreachable!(),
                    },
                )
            });
        } else {
            g.bench_function("decode_done_then_result", |b| {
                b.iter(
                    || match decode_message::<FromWorker>(black_box(&done_bytes)).unwrap() {
                        FromWorker::Done { outcome: Ok(r), .. } => {
                            decode_value::<i64>(Encoding::Bincode, &r).unwrap()
                        }
                        _ => unreachable!(),
                    },
                )
            });
        }
        g.finish();
    }
}

fn frames(c: &mut Criterion) {
    const BATCH: usize = 64;
    let mut g = c.benchmark_group("frame");

    // The supervisor's read side: `BATCH` small `Done` frames arrived in one read.
    let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
    let mut many = BytesMut::new();
    for _ in 0..BATCH {
        codec.encode(&done(vec![84]), &mut many).unwrap();
    }
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("codec_decode_64_small", |b| {
        b.iter_batched(
            || many.clone(),
            |mut buf| {
                let mut n = 0;
                while let Some(frame) = codec.decode(&mut buf).unwrap() {
                    black_box(decode_message::<FromWorker>(&frame).unwrap());
                    n += 1;
                }
                assert_eq!(n, BATCH);
            },
            BatchSize::SmallInput,
        )
    });

    // One 1 MiB `Done` frame: framing, then decoding it.
    let mut one = BytesMut::new();
    codec.encode(&done(big()), &mut one).unwrap();
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("codec_decode_1MiB", |b| {
        b.iter_batched(
            || one.clone(),
            |mut buf| {
                let frame = codec.decode(&mut buf).unwrap().unwrap();
                black_box(decode_message::<FromWorker>(&frame).unwrap())
            },
            BatchSize::LargeInput,
        )
    });

    // What the supervisor does now: the result found in place, only the caller decodes it.
    g.bench_function("codec_decode_1MiB_in_place", |b| {
        b.iter_batched(
            || one.clone(),
            |mut buf| {
                let frame = codec.decode(&mut buf).unwrap().unwrap();
                let done = decode_done_in_place(&frame).unwrap();
                black_box(frame.freeze().slice(done.outcome.unwrap()))
            },
            BatchSize::LargeInput,
        )
    });

    // The supervisor's write side: a `Run` into the reused write buffer.
    let small_run = run(small_args());
    g.throughput(Throughput::Elements(1));
    g.bench_function("codec_encode_run_small", |b| {
        let mut dst = BytesMut::with_capacity(4096);
        b.iter(|| {
            dst.clear();
            codec.encode(black_box(&small_run), &mut dst).unwrap();
        })
    });

    // The worker's side: `encode_frame` into a reused buffer, `read_frame` from a reader.
    let small_done = done(vec![84]);
    g.bench_function("encode_frame_done_small", |b| {
        let mut buf = Vec::new();
        b.iter(|| encode_frame(black_box(&small_done), &mut buf, DEFAULT_MAX_FRAME).unwrap())
    });
    let mut wire = Vec::new();
    encode_frame(&small_run, &mut wire, DEFAULT_MAX_FRAME).unwrap();
    g.bench_function("read_frame_run_small", |b| {
        let mut buf = Vec::new();
        b.iter(|| {
            assert!(read_frame(&mut black_box(&wire[..]), &mut buf, DEFAULT_MAX_FRAME).unwrap());
            black_box(decode_message::<ToWorker>(&buf).unwrap())
        })
    });
    // What the worker does now for a successful result: head + result, one vectored write.
    let big_result = big();
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("write_done_ok_1MiB", |b| {
        let mut head = Vec::new();
        let mut sink = std::io::sink();
        b.iter(|| {
            write_done_ok(
                &mut sink,
                &mut head,
                TaskId(1),
                None,
                black_box(&big_result),
                DEFAULT_MAX_FRAME,
            )
            .unwrap()
        })
    });
    let big_done = done(big());
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("encode_frame_done_1MiB", |b| {
        let mut buf = Vec::new();
        b.iter(|| encode_frame(black_box(&big_done), &mut buf, DEFAULT_MAX_FRAME).unwrap())
    });
    g.finish();
}

criterion_group!(benches, messages, frames);
criterion_main!(benches);
