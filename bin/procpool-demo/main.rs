//! `procpool-demo`: a worker binary serving the demo tasks of `procpool-demo-tasks`.
//! Started by a procpool supervisor it serves tasks; started by hand it lists them.

// Nothing else references the crate: without this its tasks would not be linked.
extern crate procpool_demo_tasks as _;

fn main() {
    procpool::init();
    println!("procpool-demo is a procpool worker binary; run it through a supervisor:");
    println!(
        "  procpool run --worker {} --jobs JOBS.jsonl",
        std::env::args().next().unwrap_or_default()
    );
    println!(
        "  procpool tasks --worker {}",
        std::env::args().next().unwrap_or_default()
    );
}
