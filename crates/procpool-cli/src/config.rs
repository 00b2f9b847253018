//! Where a flag's value comes from when it is not on the command line: a `PROCPOOL_*`
//! environment variable, then the TOML file of `--config` (or `PROCPOOL_CONFIG`), then the
//! built-in default. Nothing here knows a single flag: it walks the clap command and fits
//! every long flag of every subcommand, those added later included, with its variable
//! (clap's `env`) and with the file's value as its default (`default_value`). clap then
//! applies the precedence itself: command line, variable, default.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, CommandFactory as _};

use crate::cli::Cli;

/// The variable naming the config file when `--config` is not given.
pub(crate) const CONFIG_ENV: &str = "PROCPOOL_CONFIG";

/// Flags whose variable is not `PROCPOOL_<NAME>`, and why.
const ENV_EXCEPTIONS: &[(&str, &str)] = &[
    // PROCPOOL_WORKER is what tells a process it was started as a worker
    // (`procpool::worker::WORKER_ENV`): an operator exporting it would turn the CLI itself into a
    // worker.
    ("worker", "PROCPOOL_WORKER_PATH"),
];

/// A problem with the config file: reported before anything runs (exit 2).
#[derive(Debug)]
pub(crate) struct ConfigError(pub(crate) String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The environment variable of the flag `--long`.
pub(crate) fn env_name(long: &str) -> String {
    match ENV_EXCEPTIONS.iter().find(|(flag, _)| *flag == long) {
        Some((_, name)) => (*name).to_owned(),
        None => format!("PROCPOOL_{}", long.to_ascii_uppercase().replace('-', "_")),
    }
}

/// The full command line definition for `argv`: every flag with its variable, and the
/// config file's values (if any) as defaults.
pub(crate) fn command(argv: &[OsString]) -> Result<clap::Command, ConfigError> {
    let cmd = with_env(Cli::command());
    match config_path(argv) {
        None => Ok(cmd),
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError(format!(
                    "cannot read the config file {}: {e}",
                    path.display()
                ))
            })?;
            apply(cmd, &text, &path)
        }
    }
}

/// `PROCPOOL_<FLAG>` on every long flag of `cmd` and of its subcommands, recursively.
fn with_env(cmd: clap::Command) -> clap::Command {
    let cmd = cmd.mut_args(|arg| match arg.get_long() {
        Some(long) => {
            let name = env_name(long);
            // Values stay out of --help: a variable may hold a secret (a token).
            arg.env(name).hide_env_values(true)
        }
        None => arg,
    });
    cmd.mut_subcommands(with_env)
}

/// `--config FILE` / `--config=FILE` from the raw arguments (the file must be read before
/// clap parses them), else `PROCPOOL_CONFIG`.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            // A missing value is clap's to report.
            return args.next().map(PathBuf::from);
        }
        if let Some(value) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(PathBuf::from(value));
        }
    }
    std::env::var_os(CONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The config file's values onto `cmd` as defaults. Keys at the top apply to the root's
/// (global) flags and to every subcommand that has the flag; a table named after a
/// subcommand applies to it only, after the top, so it wins.
fn apply(mut cmd: clap::Command, text: &str, path: &Path) -> Result<clap::Command, ConfigError> {
    let file = path.display();
    let table: toml::Table = toml::from_str(text)
        .map_err(|e| ConfigError(format!("config file {file}: {}", e.to_string().trim_end())))?;
    let mut top = BTreeMap::new();
    let mut tables = BTreeMap::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(t) => {
                if cmd.find_subcommand(&key).is_none() {
                    let names: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
                    return Err(ConfigError(format!(
                        "config file {file}: unknown table [{key}] (tables are subcommands: {})",
                        names.join(", ")
                    )));
                }
                tables.insert(key, t);
            }
            value => {
                top.insert(key, value);
            }
        }
    }

    for (key, value) in &top {
        let value = scalar(value, key, &file)?;
        let mut known = false;
        if let Some(id) = arg_id(&cmd, key) {
            check(&cmd, &id, &value, key, &file)?;
            cmd = cmd.mut_arg(&id, |a| set_default(a, &value));
            known = true;
        }
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for name in names {
            let sub = cmd.find_subcommand(&name).expect("listed just above");
            if let Some(id) = arg_id(sub, key) {
                check(sub, &id, &value, key, &file)?;
                cmd = cmd.mut_subcommand(&name, |s| s.mut_arg(&id, |a| set_default(a, &value)));
                known = true;
            }
        }
        if !known {
            return Err(ConfigError(format!(
                "config file {file}: unknown key `{key}` (keys are long flag names, e.g. \
                 `workers` for --workers)"
            )));
        }
    }

    for (name, table) in &tables {
        for (key, value) in table {
            let dotted = format!("{name}.{key}");
            let value = scalar(value, &dotted, &file)?;
            let sub = cmd.find_subcommand(name).expect("checked when collected");
            let Some(id) = arg_id(sub, key) else {
                let hint = if arg_id(&cmd, key).is_some() {
                    " (it applies to every subcommand: set it at the top of the file)"
                } else {
                    ""
                };
                return Err(ConfigError(format!(
                    "config file {file}: unknown key `{dotted}`: `procpool {name}` has no \
                     --{key}{hint}"
                )));
            };
            check(sub, &id, &value, &dotted, &file)?;
            cmd = cmd.mut_subcommand(name, |s| s.mut_arg(&id, |a| set_default(a, &value)));
        }
    }
    Ok(cmd)
}

/// The id of the flag `--long` among `cmd`'s own arguments. `--config` itself cannot be
/// set from the file.
fn arg_id(cmd: &clap::Command, long: &str) -> Option<String> {
    if long == "config" {
        return None;
    }
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .map(|a| a.get_id().as_str().to_owned())
}

/// A TOML value as the flag's text, as it would be written on the command line.
fn scalar(
    value: &toml::Value,
    key: &str,
    file: &impl std::fmt::Display,
) -> Result<String, ConfigError> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => Err(ConfigError(format!(
            "config file {file}: `{key}` must be a single value (a string, number or boolean)"
        ))),
    }
}

/// Runs the flag's own parser on the file's value now, so a bad value is reported with
/// the key and the file rather than as if it had been typed.
fn check(
    cmd: &clap::Command,
    id: &str,
    value: &str,
    key: &str,
    file: &impl std::fmt::Display,
) -> Result<(), ConfigError> {
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_id() == id)
        .expect("the id was found among these arguments");
    let probe_arg: Arg = arg.clone().required(false).global(false);
    let outcome = if is_switch(arg) {
        // A switch takes no value on the command line: check it as a boolean.
        match value {
            "true" | "false" => Ok(()),
            other => Err(format!("expects true or false, not {other:?}")),
        }
    } else {
        let long = arg.get_long().expect("only long flags are configurable");
        let probe = clap::Command::new("procpool")
            .no_binary_name(true)
            .disable_help_flag(true)
            .disable_version_flag(true)
            .arg(probe_arg);
        probe
            .try_get_matches_from([format!("--{long}={value}")])
            .map(drop)
            .map_err(|e| {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or_default();
                first.strip_prefix("error: ").unwrap_or(first).to_owned()
            })
    };
    outcome.map_err(|why| ConfigError(format!("config file {file}: `{key}`: {why}")))
}

fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// The file's value as the flag's default. A flag the file sets is no longer required on
/// the command line.
fn set_default(arg: Arg, value: &str) -> Arg {
    arg.default_value(value.to_owned()).required(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(cmd: clap::Command, args: &[&str]) -> Result<clap::ArgMatches, clap::Error> {
        cmd.try_get_matches_from(std::iter::once("procpool").chain(args.iter().copied()))
    }

    fn with_file(text: &str) -> Result<clap::Command, ConfigError> {
        apply(with_env(Cli::command()), text, Path::new("test.toml"))
    }

    #[test]
    fn every_flag_has_a_variable_and_none_is_a_protocol_variable() {
        // The variables the supervisor and its workers use between themselves.
        let reserved = [
            procpool::worker::WORKER_ENV,
            "PROCPOOL_PARENT_PID",
            "PROCPOOL_MAX_FRAME",
            "PROCPOOL_RLIMITS",
            "PROCPOOL_PREFETCH",
            "PROCPOOL_TEST_RUN",
        ];
        let mut cmd = with_env(Cli::command());
        cmd.build();
        let mut seen = 0;
        for sub in std::iter::once(&cmd).chain(cmd.get_subcommands()) {
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if ["help", "version"].contains(&long) {
                    continue;
                }
                let env = arg
                    .get_env()
                    .unwrap_or_else(|| panic!("--{long} of {} has no variable", sub.get_name()));
                let env = env.to_str().unwrap();
                assert!(env.starts_with("PROCPOOL_"), "{env}");
                assert!(!reserved.contains(&env), "--{long} uses {env}");
                seen += 1;
            }
        }
        assert!(seen > 20, "{seen}");
        assert_eq!(env_name("worker"), "PROCPOOL_WORKER_PATH");
        assert_eq!(
            env_name("max-tasks-per-worker"),
            "PROCPOOL_MAX_TASKS_PER_WORKER"
        );
    }

    #[test]
    fn top_level_keys_reach_every_subcommand_and_tables_win() {
        let cmd = with_file(
            "worker = \"/top\"\nlog-level = \"info\"\n[run]\nworker = \"/run\"\nworkers = 3\n\
             quiet = true\n",
        )
        .unwrap();
        let m = parse(cmd.clone(), &["run", "--jobs", "j"]).unwrap();
        assert_eq!(
            m.get_one::<crate::cli::LogLevel>("log_level").copied(),
            Some(crate::cli::LogLevel::Info)
        );
        let (_, run) = m.subcommand().unwrap();
        assert_eq!(run.get_one::<PathBuf>("worker").unwrap(), Path::new("/run"));
        assert_eq!(run.get_one::<u32>("workers"), Some(&3));
        assert_eq!(run.get_one::<bool>("quiet"), Some(&true));
        let m = parse(cmd.clone(), &["tasks"]).unwrap();
        let (_, tasks) = m.subcommand().unwrap();
        assert_eq!(
            tasks.get_one::<PathBuf>("worker").unwrap(),
            Path::new("/top")
        );
        // The command line still wins.
        let m = parse(cmd, &["run", "--jobs", "j", "--workers", "5"]).unwrap();
        assert_eq!(
            m.subcommand().unwrap().1.get_one::<u32>("workers"),
            Some(&5)
        );
    }

    #[test]
    fn a_required_flag_can_come_from_the_file() {
        let cmd = with_file("[run]\njobs = \"/jobs.jsonl\"\n").unwrap();
        let m = parse(cmd, &["run"]).unwrap();
        let run = m.subcommand().unwrap().1;
        assert_eq!(
            run.get_one::<PathBuf>("jobs").unwrap(),
            Path::new("/jobs.jsonl")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = |text: &str| with_file(text).unwrap_err().0;
        let e = err("wrokers = 3\n");
        assert!(e.contains("unknown key `wrokers`"), "{e}");
        let e = err("[run]\njson = true\n");
        assert!(e.contains("unknown key `run.json`"), "{e}");
        let e = err("[tasks]\nlog-level = \"info\"\n");
        assert!(e.contains("set it at the top"), "{e}");
        let e = err("[frob]\nx = 1\n");
        assert!(e.contains("unknown table [frob]"), "{e}");
        let e = err("[run]\ntimeout = \"soon\"\n");
        assert!(
            e.contains("`run.timeout`") && e.contains("not a duration"),
            "{e}"
        );
        let e = err("workers = 0\n");
        assert!(e.contains("`workers`"), "{e}");
        let e = err("quiet = \"yes\"\n");
        assert!(e.contains("`quiet`: expects true or false"), "{e}");
        let e = err("workers = [1, 2]\n");
        assert!(e.contains("single value"), "{e}");
        let e = err("config = \"other.toml\"\n");
        assert!(e.contains("unknown key `config`"), "{e}");
        let e = err("workers = \n");
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn config_path_from_the_arguments() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&argv(&["p", "run", "--config", "a.toml"])),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            config_path(&argv(&["p", "--config=b.toml", "run"])),
            Some(PathBuf::from("b.toml"))
        );
    }
}
