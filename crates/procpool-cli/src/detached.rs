//! A blocking reader (standard input, a pipe) read on a detached thread of its own, as
//! an [`AsyncRead`]. A read of a pipe cannot be cancelled: tokio's `stdin()` and `File`
//! read on the runtime's blocking pool, whose shutdown waits for that read, so a signal
//! left `procpool run --jobs -` waiting for a line (or an end of input) that its writer
//! might never send. This thread is never waited for: it ends with the process, or at
//! the end of its input.

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

/// Bytes read at once.
const CHUNK: usize = 64 << 10;

/// Chunks read ahead of the consumer: a slow consumer stops the thread's reads soon.
const AHEAD: usize = 2;

pub(crate) struct Detached {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    /// Bytes of `chunk` already handed out.
    at: usize,
}

impl Detached {
    /// Starts reading `source` on a thread named `name`.
    pub(crate) fn spawn(name: &str, mut source: impl Read + Send + 'static) -> io::Result<Self> {
        let (tx, chunks) = mpsc::channel(AHEAD);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                loop {
                    let mut chunk = vec![0; CHUNK];
                    let read = match source.read(&mut chunk) {
                        Ok(0) => return,
                        Ok(n) => {
                            chunk.truncate(n);
                            Ok(chunk)
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => Err(e),
                    };
                    let failed = read.is_err();
                    // A closed channel: the reader is gone, nobody wants more.
                    if tx.blocking_send(read).is_err() || failed {
                        return;
                    }
                }
            })?;
        Ok(Detached {
            chunks,
            chunk: Vec::new(),
            at: 0,
        })
    }
}

impl AsyncRead for Detached {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.at == this.chunk.len() {
            match ready!(this.chunks.poll_recv(cx)) {
                Some(Ok(chunk)) => {
                    this.chunk = chunk;
                    this.at = 0;
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                // The end of the input: a read of nothing.
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = buf.remaining().min(this.chunk.len() - this.at);
        buf.put_slice(&this.chunk[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    #[tokio::test]
    async fn hands_out_every_byte_then_the_end() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| i as u8).collect();
        let mut reader = Detached::spawn("test-reader", io::Cursor::new(data.clone())).unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
    }
}
