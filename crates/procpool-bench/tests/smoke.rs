//! The harness must not rot: run the engine at its tiny scale on the floors and procpool
//! in both of its modes (no peer is built or needed) and check the JSON document `scripts/bench --json` relies on.

#[path = "../../../tests/support/redis.rs"]
#[expect(
    dead_code,
    reason = "the TLS and restart helpers serve the broker tests"
)]
mod redis_server;

use std::path::PathBuf;
use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_procpool-bench");

const METRICS: [&str; 11] = [
    "rtt_us",
    "tput_strict_per_s",
    "tput_window_per_s",
    "spawn_ready_ms",
    "fresh_process_per_s",
    "cancel_resolve_ms",
    "cancel_replace_ms",
    "crash_detect_ms",
    "blob_mb_per_s",
    "idle_worker_rss_mb",
    "queued_task_bytes",
];

/// The `procpool` binary beside this one: the agents of the broker set and the command
/// line of `cli_jobs_per_s` and `cli_rtt_us`.
fn assert_cli_built() {
    let cli = PathBuf::from(BENCH).with_file_name("procpool");
    assert!(
        cli.is_file(),
        "{} not built (cargo build --bin procpool)",
        cli.display()
    );
}

fn out_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("procpool-bench-{name}-{}.json", std::process::id()))
}

#[test]
fn tiny_run_writes_every_metric_for_procpool_and_the_floors() {
    assert_cli_built();
    let json = out_path("smoke");
    let out = Command::new(BENCH)
        .args([
            "--scale",
            "tiny",
            "--reps",
            "2",
            "--systems",
            "floor_pipe,floor_tokio,floor_tokio_each,procpool,procpool_build",
            // The bench binary links the demo tasks and can serve as the worker, so the
            // test does not depend on procpool-demo having been built.
            "--worker",
            BENCH,
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run procpool-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("the targets (ratios"), "{stdout}");
    assert!(stdout.contains("rtt_us"), "{stdout}");
    // The pool on the bench's runtime against the same on its own thread.
    assert!(stdout.contains("procpool_build (build)"), "{stdout}");

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).unwrap();
    let _ = std::fs::remove_file(&json);
    assert!(
        doc["machine"]["cpus"].as_u64().unwrap_or(0) >= 1,
        "{}",
        doc["machine"]
    );
    assert_eq!(doc["machine"]["profile"], "debug");
    let metrics = doc["metrics"].as_object().expect("metrics object");
    for m in METRICS {
        let per_system = metrics
            .get(m)
            .and_then(|v| v.as_object())
            .unwrap_or_else(|| panic!("no {m} in {}", doc["metrics"]));
        for system in ["procpool", "procpool_build"] {
            let pp = per_system.get(system).and_then(|v| v.as_f64());
            assert!(
                pp.is_some_and(|v| v.is_finite() && v > 0.0),
                "{m}: {system} {pp:?}"
            );
        }
        if m != "queued_task_bytes" {
            for floor in ["floor_pipe", "floor_tokio", "floor_tokio_each"] {
                let v = per_system.get(floor).and_then(|v| v.as_f64());
                assert!(v.is_some_and(|v| v > 0.0), "{m}: {floor} {v:?}");
            }
        } else {
            assert!(per_system.get("floor_pipe").is_none());
            assert_eq!(
                doc["unsupported"]["queued_task_bytes"]["floor_pipe"],
                "a floor has no queue"
            );
        }
        // No peer was asked for: none appears.
        assert!(per_system.get("procspawn").is_none() && per_system.get("python_ppe").is_none());
        assert_eq!(
            doc["samples"][m]["procpool"].as_array().map(Vec::len),
            Some(2)
        );
    }
    // The command line (the `procpool` binary built beside this one) runs once, in the
    // procpool column.
    for m in ["cli_jobs_per_s", "cli_rtt_us"] {
        let v = doc["metrics"][m]["procpool"].as_f64();
        assert!(v.is_some_and(|v| v.is_finite() && v > 0.0), "{m}: {v:?}");
        assert!(doc["unsupported"][m]["procpool_build"].is_string(), "{m}");
        assert_eq!(
            doc["unsupported"][m]["floor_tokio"],
            "a floor has no batch command line"
        );
    }
    let targets = doc["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 18);
    for t in targets {
        // Absolute targets and those against a floor have a verdict; those against
        // procspawn have none without it.
        let against_peer = t["against"] == "procspawn";
        assert_eq!(t["met"].is_boolean(), !against_peer, "{t}");
    }
    assert!(
        doc["notes"].as_array().is_some_and(|n| n.is_empty()),
        "{}",
        doc["notes"]
    );
}

/// The broker set at tiny scale on a private redis-server: two `procpool agent`s (the
/// `procpool` binary built beside this one) serving this bench binary's demo tasks, one
/// agent SIGKILLed under a running task. Celery is not needed for it.
#[test]
fn tiny_broker_run_measures_procpool_broker_beside_the_local_pool() {
    assert_cli_built();
    let redis = redis_server::RedisServer::start();
    let json = out_path("broker");
    let out = Command::new(BENCH)
        .args(["--scale", "tiny", "--reps", "1", "--broker-url"])
        .arg(redis.url())
        .args(["--worker", BENCH, "--json"])
        .arg(&json)
        .output()
        .expect("run procpool-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(
        doc["config"]["systems"],
        serde_json::json!(["procpool", "procpool_broker"])
    );
    let value = |m: &str, s: &str| doc["metrics"][m][s].as_f64();
    for m in [
        "broker_rtt_us",
        "broker_tput_per_s",
        "requeue_after_kill_ms",
    ] {
        let v = value(m, "procpool_broker");
        assert!(v.is_some_and(|v| v.is_finite() && v > 0.0), "{m}: {v:?}");
        assert!(doc["unsupported"][m]["procpool"].is_string(), "{m}");
    }
    for m in ["rtt_us", "tput_strict_per_s"] {
        assert!(value(m, "procpool").is_some_and(|v| v > 0.0), "{m}");
    }
    // Against Celery: no verdict without it; against the local pool and absolute: one.
    let targets = doc["targets"].as_array().expect("targets");
    let broker: Vec<_> = targets
        .iter()
        .filter(|t| t["system"] == "procpool_broker")
        .collect();
    assert_eq!(broker.len(), 4, "{targets:?}");
    for t in broker {
        assert_eq!(t["met"].is_boolean(), t["against"] != "celery", "{t}");
    }
    assert!(
        doc["notes"].as_array().is_some_and(|n| n.is_empty()),
        "{}",
        doc["notes"]
    );
}

#[test]
fn unknown_system_is_refused() {
    let out = Command::new(BENCH)
        .args(["--scale", "tiny", "--systems", "nope"])
        .output()
        .expect("run procpool-bench");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown system nope"));
}
