//! Resident memory of a worker's process group, with real processes: a task's child
//! counts towards its worker (issue 14: `max_rss` used to see the group leader only).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use procpool_os::{Pgid, group_rss_bytes, rss_bytes};

#[test]
fn a_group_counts_the_memory_of_the_leaders_children() {
    // The leader stays small; its subshell (same group) holds a 40 MB string until its
    // stdin closes. Ending it that way lets the leader reap it: no kill, no orphan.
    let mut leader = Command::new("sh")
        .args([
            "-c",
            r#"( x=$(head -c 40000000 /dev/zero | tr '\000' a); echo ready; read line ); :"#,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn sh");
    let mut line = String::new();
    BufReader::new(leader.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");

    let pid = leader.id();
    let alone = rss_bytes(pid).expect("the leader is alive");
    let group = group_rss_bytes(Pgid::of_leader(pid)).expect("the group is alive");
    assert!(alone < 20_000_000, "the leader alone holds {alone} bytes");
    assert!(
        group >= alone + 40_000_000,
        "the group holds {group} bytes, the leader alone {alone}"
    );

    drop(leader.stdin.take());
    assert!(leader.wait().unwrap().success());
    assert_eq!(rss_bytes(pid), None, "a reaped process has no memory");
    assert_eq!(group_rss_bytes(Pgid::of_leader(pid)), None);
}
