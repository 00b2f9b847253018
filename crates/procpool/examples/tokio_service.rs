//! A tokio service with the pool on its own runtime (`PoolBuilder::start`): concurrent
//! requests each run a task in a worker process, a batch streams its results as they
//! end, and a slow request is cancelled by dropping its guard.
//!
//! Run: `cargo run -p procpool --example tokio_service`

use std::time::Duration;

use futures::StreamExt;
use procpool::{Pool, Shutdown};

/// Fibonacci, slowly: CPU work that would stall an async runtime if run on it.
#[procpool::task]
fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib_inner(n - 1) + fib_inner(n - 2)
    }
}

fn fib_inner(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib_inner(n - 1) + fib_inner(n - 2)
    }
}

/// Sleeps: a request that takes too long.
#[procpool::task]
fn slow(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[procpool::main]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::builder().workers(2).start().await?;

    // Concurrent "requests", each from a task of its own.
    let requests: Vec<_> = (20..24)
        .map(|n| {
            let pool = pool.clone();
            tokio::spawn(async move { (n, pool.run(fib::task(n)).await) })
        })
        .collect();
    for request in requests {
        let (n, result) = request.await?;
        println!("fib({n}) = {}", result?);
    }

    // A batch, results as they end, at most 4 in flight.
    let mut results = pool.map((1..=8).map(fib::task)).in_flight(4);
    let mut total = 0;
    while let Some((_id, result)) = results.next().await {
        total += result?;
    }
    println!("sum of fib(1..=8) = {total}");

    // A request whose client went away: dropping the guard kills its worker.
    let guard = pool.submit(slow::task(60_000)).cancel_on_drop();
    let pid = guard.started().await;
    println!("slow request on worker {pid:?}, cancelled by dropping it");
    drop(guard);

    pool.shutdown(Shutdown::Drain).await;
    println!("every worker reaped");
    Ok(())
}
