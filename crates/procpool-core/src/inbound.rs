//! The worker's frames as its executor reads them: from the worker's result pipe, and
//! one frame from the channel at each `OnChannel` announcement on the pipe (a large
//! frame: see `procpool_proto::LARGE_FRAME`). The pipe reaches EOF once the worker and
//! every copy of its end are gone: that EOF is the worker's death.

use bytes::BytesMut;
use futures::{FutureExt as _, StreamExt as _};
use procpool_proto::{FrameCodec, FrameError};
use tokio::net::unix::{OwnedReadHalf, pipe};
use tokio_util::codec::FramedRead;

/// The worker's frames, in the order it sent them.
pub(crate) struct Inbound {
    pipe: FramedRead<pipe::Receiver, FrameCodec>,
    channel: FramedRead<OwnedReadHalf, FrameCodec>,
    /// An announcement was read: the next frame is the channel's. Kept here, not in the
    /// future, so that a `select!` that drops [`Inbound::next`] loses nothing.
    on_channel: bool,
}

impl Inbound {
    pub(crate) fn new(pipe: pipe::Receiver, channel: OwnedReadHalf, max_frame: usize) -> Self {
        Inbound {
            pipe: FramedRead::new(pipe, FrameCodec::new(max_frame)),
            channel: FramedRead::new(channel, FrameCodec::new(max_frame)),
            on_channel: false,
        }
    }

    /// The next frame; `None` at the end. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<Result<BytesMut, FrameError>> {
        loop {
            if self.on_channel {
                // The channel's end here is the worker's death in the middle of the frame.
                let frame = self.channel.next().await;
                self.on_channel = false;
                return frame;
            }
            match self.pipe.next().await {
                Some(Ok(frame)) if procpool_proto::is_on_channel(&frame) => {
                    self.on_channel = true;
                }
                other => return other,
            }
        }
    }

    /// The next frame if it is already read, without waiting.
    pub(crate) fn ready(&mut self) -> Option<Option<Result<BytesMut, FrameError>>> {
        self.next().now_or_never()
    }
}
