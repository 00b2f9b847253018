//! The worker's result pipe, and its hand-off to the supervisor over the channel
//! (`SCM_RIGHTS`), the same on Linux and macOS.
//!
//! Why a pipe for the worker's frames: a worker writes each result as soon as its task
//! ends (a result held back would die with the worker, and its crash would be blamed on
//! a task that completed). On a unix socket every such write is a buffer of its own, which
//! the supervisor's kernel handles one by one, and each wakes the reader; a pipe merges
//! small writes into one page and wakes its reader only when it was empty, so one `read`
//! takes many results in one copy. Large frames still go on the socket, which moves big
//! buffers faster (`procpool_proto::LARGE_FRAME`).

use std::io;
use std::io::{IoSlice, IoSliceMut, PipeReader, PipeWriter};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::errors::OsError;

/// In the worker: a pipe for the frames it sends to the supervisor, both ends
/// close-on-exec (so nothing a task execs holds it, and it reaches EOF when the worker
/// dies). Returns the read end, to hand over with [`send_with_fd`], and the write end,
/// to keep.
pub fn result_pipe() -> Result<(PipeReader, PipeWriter), OsError> {
    std::io::pipe().map_err(|e| OsError::WorkerSetup {
        what: "create the result pipe",
        source: e,
    })
}

/// In the worker: writes all of `bytes` on the stream socket `socket`, with `fd` attached
/// to the first byte (`SCM_RIGHTS`). The socket is blocking.
pub fn send_with_fd(socket: BorrowedFd<'_>, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    let fds = [fd.as_raw_fd()];
    let mut sent = 0;
    while sent < bytes.len() {
        // The descriptor rides with the first write only; a partial write carried it.
        let rights = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage<'_>] = if sent == 0 { &rights } else { &[] };
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(&bytes[sent..])],
            cmsgs,
            MsgFlags::empty(),
            None,
        ) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// In the supervisor: reads what `socket` holds into `buf`, and the descriptor sent with
/// it, if any (close-on-exec: see [`crate::os::RECV_CLOEXEC`]). Descriptors beyond the
/// first are closed. On a non-blocking socket with nothing to read it fails with
/// [`io::ErrorKind::WouldBlock`], as a reactor expects.
pub fn recv_with_fd(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            crate::os::RECV_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => {}
            other => break other?,
        }
    };
    let mut received = None;
    // A truncated control message (more descriptors than we take) is refused by `cmsgs`:
    // the kernel closed what did not fit, and none of it is the pipe.
    if let Ok(cmsgs) = msg.cmsgs() {
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    // SAFETY: the kernel just installed this descriptor for us; nothing
                    // else owns it.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    crate::os::after_receive(fd.as_fd())?;
                    received.get_or_insert(fd);
                }
            }
        }
    }
    Ok((msg.bytes, received))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_pipe_sent_with_a_frame_arrives_with_it_and_carries_data() {
        let (worker, supervisor) = UnixStream::pair().unwrap();
        let (rd, mut wr) = result_pipe().unwrap();
        send_with_fd(worker.as_fd(), b"hello", rd.as_fd()).unwrap();
        drop(rd);
        let mut buf = [0u8; 16];
        let (n, fd) = recv_with_fd(supervisor.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let mut pipe = std::fs::File::from(fd.expect("the pipe came with the frame"));
        let flags = nix::fcntl::fcntl(pipe.as_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0, "received close-on-exec");
        wr.write_all(b"done").unwrap();
        drop(wr);
        let mut got = Vec::new();
        pipe.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"done", "then EOF once the only write end is closed");
    }
}
