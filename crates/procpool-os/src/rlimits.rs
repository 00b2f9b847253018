//! Resource limits a worker applies to itself at start, and which of them the platform
//! can enforce (checked when a pool is built, so an unenforceable limit is an error
//! rather than a silent no-op).

use nix::sys::resource::{Resource, setrlimit};

use crate::errors::OsError;
use crate::os;

/// A per-worker resource limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rlimit {
    /// `RLIMIT_AS`: address space, reserved memory included.
    AddressSpace,
    /// `RLIMIT_CPU`: CPU seconds over the worker's life.
    CpuSeconds,
    /// `RLIMIT_NOFILE`: open descriptors.
    OpenFiles,
}

impl Rlimit {
    const ALL: [Rlimit; 3] = [Rlimit::AddressSpace, Rlimit::CpuSeconds, Rlimit::OpenFiles];

    /// The key of this limit in the worker's `PROCPOOL_RLIMITS` spec.
    pub fn key(self) -> &'static str {
        match self {
            Rlimit::AddressSpace => "as",
            Rlimit::CpuSeconds => "cpu",
            Rlimit::OpenFiles => "nofile",
        }
    }

    fn resource(self) -> Resource {
        match self {
            Rlimit::AddressSpace => Resource::RLIMIT_AS,
            Rlimit::CpuSeconds => Resource::RLIMIT_CPU,
            Rlimit::OpenFiles => Resource::RLIMIT_NOFILE,
        }
    }
}

/// Fails with [`OsError::UnsupportedLimit`] when this platform accepts `limit` but does not
/// enforce it (`RLIMIT_AS` on macOS), so that a pool asking for it is refused at build
/// time instead of running unbounded.
pub fn check_rlimit(limit: Rlimit) -> Result<(), OsError> {
    check_in(os::UNENFORCED_RLIMITS, limit)
}

fn check_in(unenforced: &[(Rlimit, &'static str)], limit: Rlimit) -> Result<(), OsError> {
    match unenforced.iter().find(|(l, _)| *l == limit) {
        Some((_, why)) => Err(OsError::UnsupportedLimit {
            limit: limit.key(),
            why,
        }),
        None => Ok(()),
    }
}

/// In the worker: applies `as=BYTES,cpu=SECS,nofile=N` (any subset) to itself. A limit
/// the platform does not enforce is refused here too, should a supervisor ask for it.
pub fn apply_rlimits(spec: &str) -> Result<(), OsError> {
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (limit, value) = parse_part(part)?;
        check_rlimit(limit)?;
        // For CPU time the hard limit sits one second above the soft one: at the soft limit
        // the kernel sends SIGXCPU (reported as a limit), while equal limits would go
        // straight to SIGKILL, indistinguishable from any other kill.
        let hard = if limit == Rlimit::CpuSeconds {
            value.saturating_add(1)
        } else {
            value
        };
        setrlimit(limit.resource(), value, hard).map_err(|e| OsError::WorkerSetup {
            what: "setrlimit",
            source: e.into(),
        })?;
    }
    Ok(())
}

fn parse_part(part: &str) -> Result<(Rlimit, u64), OsError> {
    let bad = || OsError::WorkerSetup {
        what: "parse the resource limits",
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("bad limit {part:?}"),
        ),
    };
    let (key, value) = part.split_once('=').ok_or_else(bad)?;
    let value: u64 = value.parse().map_err(|_| bad())?;
    let limit = Rlimit::ALL
        .into_iter()
        .find(|l| l.key() == key)
        .ok_or_else(bad)?;
    Ok((limit, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parts_parse() {
        assert_eq!(parse_part("as=1024").unwrap(), (Rlimit::AddressSpace, 1024));
        assert_eq!(parse_part("cpu=3").unwrap(), (Rlimit::CpuSeconds, 3));
        assert_eq!(parse_part("nofile=64").unwrap(), (Rlimit::OpenFiles, 64));
        for bad in ["as", "as=x", "rss=1", "=1"] {
            assert!(parse_part(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unenforced_limit_is_refused_with_its_reason() {
        let table = [(Rlimit::AddressSpace, "not enforced here")];
        let err = check_in(&table, Rlimit::AddressSpace).unwrap_err();
        assert_eq!(
            err.to_string(),
            "resource limit `as` is not supported on this platform: not enforced here"
        );
        assert!(check_in(&table, Rlimit::CpuSeconds).is_ok());
        assert!(check_in(&[], Rlimit::AddressSpace).is_ok());
    }
}
