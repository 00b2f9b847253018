//! A TaskManager with two consumers: both ask for the same report by cache key, so it runs
//! once in a worker; each consumer follows its own event channel, and the result is kept
//! to be taken once.
//!
//! Run: `cargo run -p procpool --example two_consumers`

use procpool::manager::Cached;
use procpool::{Pool, TaskEvent, TaskManager};

/// An expensive report, computed in a worker process with progress.
#[procpool::task]
fn report(year: u32) -> String {
    for q in 1..=4 {
        // Expensive enough that the second request finds it still running.
        std::thread::sleep(std::time::Duration::from_millis(50));
        procpool::report_progress(q as f32 / 4.0, format!("quarter {q}"));
    }
    format!("report {year}: all good")
}

#[procpool::main]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::builder().workers(2).start().await?;
    let manager = TaskManager::new(pool.clone());
    let mut alice_events = manager.subscribe("alice");
    let mut bob_events = manager.subscribe("bob");

    // Both consumers ask for the same work: the second attaches to the first run.
    let alice = manager.run_task(
        Cached::new("report-2026", report::task(2026)),
        Some("alice"),
    );
    let bob = manager.run_task(Cached::new("report-2026", report::task(2026)), Some("bob"));
    assert_eq!(alice.id(), bob.id(), "one run, shared");

    println!("alice got: {}", alice.value().await?);
    println!("bob got:   {}", bob.value().await?);

    for (who, events) in [("alice", &mut alice_events), ("bob", &mut bob_events)] {
        while let Ok(event) = events.try_recv() {
            let label = match &event {
                TaskEvent::Started { .. } => "started".to_owned(),
                TaskEvent::Progress { .. } => "progress".to_owned(),
                TaskEvent::Completed { .. } => "completed".to_owned(),
                other => format!("{other:?}"),
            };
            println!("{who}: {label}");
        }
    }

    // The result waits in the store, taken once.
    let stored = manager.get_result(alice.id()).await?;
    println!("taken from the store: {stored}");
    assert!(manager.get_result(alice.id()).await.is_err(), "taken once");

    drop(manager);
    pool.shutdown(procpool::Shutdown::Drain).await;
    Ok(())
}
