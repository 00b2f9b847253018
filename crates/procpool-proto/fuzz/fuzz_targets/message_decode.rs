//! `decode_message::<ToWorker>`, `decode_message::<FromWorker>` and `decode_hello` on
//! arbitrary payloads.
//!
//! Input: byte 0 picks the decoder; selector 3 puts a valid handshake magic and version in
//! front of the rest so the fuzzer reaches the handshake body at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use procpool_proto::{
    FromWorker, HANDSHAKE_MAGIC, PROTOCOL_VERSION, ToWorker, decode_hello, encode_hello,
};
use procpool_proto_fuzz::{bounded, message_roundtrip};

fn hello(payload: &[u8]) {
    if let Ok(hello) = bounded("Hello", payload, decode_hello) {
        let bytes = encode_hello(&hello).expect("a decoded handshake encodes");
        assert_eq!(decode_hello(&bytes).expect("its encoding decodes"), hello);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => message_roundtrip::<ToWorker>("ToWorker", payload),
        1 => message_roundtrip::<FromWorker>("FromWorker", payload),
        2 => hello(payload),
        _ => {
            let mut full = Vec::with_capacity(12 + payload.len());
            full.extend_from_slice(&HANDSHAKE_MAGIC);
            full.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            full.extend_from_slice(payload);
            hello(&full);
        }
    }
});
