//! `procpool`: the supervisor CLI (see `procpool --help`); the code is in `procpool-cli`.

fn main() -> std::process::ExitCode {
    procpool_cli::main()
}
