//! The worker channel: both ends close-on-exec (set atomically on Linux, right after
//! `socketpair` on macOS), and connected.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

#[test]
fn both_channel_ends_are_close_on_exec_and_connected() {
    let (ours, theirs) = procpool_os::channel_pair().expect("socketpair");
    for end in [&ours, &theirs] {
        let flags = FdFlag::from_bits_truncate(fcntl(end, FcntlArg::F_GETFD).unwrap());
        assert!(flags.contains(FdFlag::FD_CLOEXEC));
    }
    let (mut ours, mut theirs) = (UnixStream::from(ours), UnixStream::from(theirs));
    ours.write_all(b"ping").unwrap();
    let mut got = [0; 4];
    theirs.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
}
