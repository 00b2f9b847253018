use procpool::{Pool, Task};
use procpool_demo_tasks as demo;

#[tokio::test]
async fn smoke() {
    let pool = Pool::builder()
        .worker(env!("CARGO_BIN_EXE_procpool-demo"))
        .workers(2)
        .build()
        .unwrap();
    println!(
        "{:?}",
        pool.tasks().iter().map(|t| &t.name).collect::<Vec<_>>()
    );
    assert_eq!(pool.run(demo::add::task(1, 2)).await.unwrap(), 3);
    let v = pool
        .run(Task::json("add", serde_json::json!([4, 5])))
        .await
        .unwrap();
    assert_eq!(v, 9);
    for t in [
        demo::segfault::task(),
        demo::abort::task(),
        demo::exit::task(3),
    ] {
        let e = pool.run(t).await.unwrap_err();
        println!("{e} {:?}", e);
    }
    println!(
        "{}",
        pool.run(demo::panic::task("boom".into()))
            .await
            .unwrap_err()
    );
    println!(
        "{}",
        pool.run(demo::fail::task("bad".into())).await.unwrap_err()
    );
    assert_eq!(pool.run(demo::noisy::task(1000)).await.unwrap(), 1000);
    let t0 = std::time::Instant::now();
    for i in 0..2000 {
        assert_eq!(pool.run(demo::square::task(i)).await.unwrap(), i * i);
    }
    println!("rtt {:?}", t0.elapsed() / 2000);
    let h = pool.submit(demo::sleep_ms::task(60000));
    let pid = h.started().await.unwrap();
    let t0 = std::time::Instant::now();
    h.cancel();
    println!(
        "{:?} in {:?} pid {pid} alive {}",
        h.await,
        t0.elapsed(),
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    );
    println!("{:?}", pool.worker_pids().await);
}
