//! The supervisor's side of a worker's handshake: the `Hello` frame on the channel, with
//! the read end of the worker's result pipe attached to it (`SCM_RIGHTS`). Every frame
//! after it comes on that pipe (see `procpool_os::result_pipe` for why).

use std::os::fd::{AsFd, OwnedFd};

use bytes::BytesMut;
use procpool_proto::{FrameCodec, Hello};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::net::unix::pipe;
use tokio_util::codec::Decoder as _;

/// Bytes asked of the channel per read while the handshake comes in.
const CHUNK: usize = 16 << 10;

/// A worker through its handshake.
pub(crate) struct Handshake {
    pub(crate) hello: Hello,
    /// Where the worker's frames come from from now on.
    pub(crate) results: pipe::Receiver,
}

/// Reads the handshake from `channel`. The error says what went wrong in words for the
/// pool's start failure. A worker of another protocol version is told apart before the
/// pipe is asked for: its handshake has the same first bytes in every version.
pub(crate) async fn read(channel: &UnixStream, max_frame: usize) -> Result<Handshake, String> {
    let mut codec = FrameCodec::new(max_frame);
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut results: Option<OwnedFd> = None;
    let frame = loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => break frame,
            Ok(None) => {}
            Err(e) => return Err(format!("bad handshake frame: {e}")),
        }
        let (n, fd) = channel
            .async_io(Interest::READABLE, || {
                procpool_os::recv_with_fd(channel.as_fd(), &mut chunk)
            })
            .await
            .map_err(|e| format!("bad handshake frame: {e}"))?;
        if n == 0 {
            return Err("the worker closed its channel before the handshake \
                 (is it a procpool worker whose main calls procpool::init first?)"
                .to_owned());
        }
        // A second descriptor is no pipe of ours: dropped, so closed.
        if results.is_none() {
            results = fd;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let hello = procpool_proto::decode_hello(&frame).map_err(|e| e.to_string())?;
    let results = results.ok_or("the worker sent no result pipe with its handshake")?;
    let results = pipe::Receiver::from_owned_fd(results)
        .map_err(|e| format!("the worker's result pipe is unusable: {e}"))?;
    Ok(Handshake { hello, results })
}
