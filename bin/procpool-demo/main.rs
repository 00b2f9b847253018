//! `procpool-demo`: the demo tasks of `procpool-demo-tasks` behind the whole `procpool`
//! command line, in one binary that is both the supervisor and the worker. This is the
//! example for applications: register tasks, make `procpool_cli::main()` the `main`, and
//! `procpool-demo run --jobs FILE` runs them without `--worker` (the binary re-executes
//! itself as the worker). Started by a supervisor (`--worker target/.../procpool-demo`) it
//! only serves tasks: `procpool_cli::main()` calls `procpool::init()` first.

// Nothing else references the crate: without this its tasks would not be linked.
extern crate procpool_demo_tasks as _;

fn main() -> std::process::ExitCode {
    procpool_cli::main()
}
