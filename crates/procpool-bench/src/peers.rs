//! The peers, run as separate programs, one process per sample:
//! `PROGRAM... GROUP --n N ...` prints one JSON line, either
//! `{"values": {"metric": x, ...}}` or `{"unsupported": "why"}`; `PROGRAM... info` prints
//! `{"info": {...}}` (versions for the machine description).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::Outcome;
use crate::params::{Group, Params};
use crate::sys;

pub struct Peer {
    argv: Vec<OsString>,
    /// Options appended to every measurement (the broker's URL).
    extra: Vec<String>,
}

impl Peer {
    pub fn new(argv: Vec<OsString>) -> Peer {
        Peer {
            argv,
            extra: Vec::new(),
        }
    }

    /// The same peer, given these options after the group's own.
    pub fn with_options(mut self, extra: Vec<String>) -> Peer {
        self.extra = extra;
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]);
        cmd
    }

    fn call(&self, args: &[String], timeout: Duration) -> Result<serde_json::Value> {
        let mut cmd = self.command();
        cmd.args(args);
        let (status, out) = sys::run_captured(cmd, timeout)?;
        if !status.success() {
            bail!("{:?} {}: {status}", self.argv, args.join(" "));
        }
        let line = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
        serde_json::from_str(line).with_context(|| format!("peer output {out:?}"))
    }

    pub fn info(&self) -> Result<BTreeMap<String, serde_json::Value>> {
        let v = self.call(&["info".into()], Duration::from_secs(30))?;
        Ok(serde_json::from_value(v["info"].clone())?)
    }

    pub fn measure(&mut self, g: Group, p: &Params) -> Result<Outcome> {
        if g.is_cli() {
            return Ok(Outcome::unsupported("no batch command line"));
        }
        let mut args = vec![
            g.name().to_owned(),
            "--n".into(),
            match g {
                Group::Rtt => p.rtt_n,
                Group::TputStrict => p.tput_n,
                Group::TputWindow => p.window_n,
                Group::SpawnReady => p.spawn_k,
                Group::FreshProcess => p.fresh_n,
                Group::Cancel => p.cancel_k,
                Group::Crash => p.crash_k,
                Group::Blob => p.blob_k,
                Group::IdleRss => 1,
                Group::Queued => p.queued_n,
                Group::CliJobs => p.cli_jobs,
                Group::CliRtt => p.rtt_n,
                Group::BrokerRtt => p.broker_rtt_n,
                Group::BrokerTput => p.broker_tput_n,
                Group::RequeueAfterKill => p.requeue_k,
            }
            .to_string(),
            "--window".into(),
            p.window.to_string(),
            "--bytes".into(),
            p.blob_bytes.to_string(),
        ];
        args.extend(self.extra.iter().cloned());
        // A Celery throughput sample of 10 000 tasks takes about a minute here.
        let v = self.call(&args, Duration::from_secs(600))?;
        if let Some(why) = v["unsupported"].as_str() {
            return Ok(Outcome::unsupported(why));
        }
        let values = v["values"].as_object().context("no values")?;
        let mut out = Vec::new();
        for &m in g.metrics() {
            if let Some(x) = values.get(m).and_then(|x| x.as_f64()) {
                out.push((m, x));
            }
        }
        if out.is_empty() {
            bail!("peer gave none of {:?}: {v}", g.metrics());
        }
        Ok(Outcome::many(out))
    }
}
