//! Messages of the limits a worker can break, with figures that show the difference.

/// The `limit_exceeded` message for a worker whose resident memory `rss`, read while the
/// task ran, went above `max` (both in bytes).
pub(crate) fn rss_above_limit(rss: u64, max: u64) -> String {
    let (rss, max, exact) = figures(rss, max);
    format!("worker resident memory {rss} is above the {max} limit{exact}")
}

/// The `limit_exceeded` message for a task whose peak resident memory (the worker's
/// high-water mark over the task) went above `max` (both in bytes).
pub(crate) fn rss_peak_above_limit(peak: u64, max: u64) -> String {
    let (peak, max, exact) = figures(peak, max);
    format!("worker resident memory peaked at {peak} during the task, above the {max} limit{exact}")
}

/// A reading, its limit and what follows the limit: in MiB when the rounded figures
/// differ; with the exact bytes when rounding would read "256 MiB is above the 256 MiB
/// limit".
fn figures(rss: u64, max: u64) -> (String, String, String) {
    let (rss_mib, max_mib) = (rss >> 20, max >> 20);
    if rss_mib != max_mib {
        (
            format!("{rss_mib} MiB"),
            format!("{max_mib} MiB"),
            String::new(),
        )
    } else {
        (
            format!("{rss} bytes"),
            format!("{max_mib} MiB"),
            format!(" ({max} bytes)"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{rss_above_limit, rss_peak_above_limit};

    #[test]
    fn figures_in_mib_when_they_differ() {
        assert_eq!(
            rss_above_limit(300 << 20, 256 << 20),
            "worker resident memory 300 MiB is above the 256 MiB limit"
        );
    }

    #[test]
    fn exact_bytes_when_rounding_hides_the_difference() {
        let msg = rss_above_limit((256 << 20) + 4096, 256 << 20);
        assert_eq!(
            msg,
            "worker resident memory 268439552 bytes is above the 256 MiB limit \
             (268435456 bytes)"
        );
        // A limit that is not a whole number of MiB.
        let msg = rss_above_limit(1_000_000_001, 1_000_000_000);
        assert!(msg.contains("1000000001 bytes"), "{msg}");
        assert!(msg.contains("(1000000000 bytes)"), "{msg}");
    }

    #[test]
    fn a_peak_says_so() {
        assert_eq!(
            rss_peak_above_limit(48 << 20, 32 << 20),
            "worker resident memory peaked at 48 MiB during the task, above the 32 MiB limit"
        );
    }
}
