//! Percentiles and the report files.

use std::path::PathBuf;

use serde::Serialize;

/// A distribution summed up, in the unit of its samples.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Summary {
    pub(crate) count: usize,
    pub(crate) mean: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Summary {
    pub(crate) fn of(samples: &mut [f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = (q * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Self {
            count: samples.len(),
            mean: samples.iter().sum::<f64>() / samples.len() as f64,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: samples[samples.len() - 1],
        }
    }
}

/// The repository root (benchmarks write under `docs/` and `target/bench/`). `cargo run` sets
/// CARGO_MANIFEST_DIR for the process: it wins over the compile-time value, which names the
/// checkout that built the binary (checkouts can share one target directory).
/// A runtime value is used only if it is this crate's (a process started by another cargo
/// command, such as `cargo xtask`, inherits that command's).
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.ends_with("crates/llm-bench"))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../..")
}

/// Writes `value` as JSON to `target/bench/NAME.json` (under `CARGO_TARGET_DIR` when set).
pub(crate) fn write_json(name: &str, value: &impl Serialize) -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), PathBuf::from)
        .join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
    Ok(path)
}

/// Replaces the section between `<!-- MARKER:begin -->` and `<!-- MARKER:end -->` of
/// `docs/DOC` (appending it when absent).
pub(crate) fn write_section(doc: &str, marker: &str, text: &str) -> anyhow::Result<()> {
    let path = root().join("docs").join(doc);
    let (begin, end) = (
        format!("<!-- {marker}:begin -->"),
        format!("<!-- {marker}:end -->"),
    );
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    let section = format!("{begin}\n{text}{end}");
    let updated = match (current.find(&begin), current.find(&end)) {
        (Some(from), Some(to)) if from < to => format!(
            "{}{section}{}",
            &current[..from],
            &current[to + end.len()..]
        ),
        _ => format!("{current}\n{section}\n"),
    };
    std::fs::write(&path, updated)?;
    Ok(())
}

/// Resident memory of a process, in bytes, from `/proc`.
pub(crate) fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for process {pid}"))?;
    Ok(kib * 1024)
}

/// CPU time (user plus system) a process has used, in seconds, from `/proc`.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th
    // fields of the line, in clock ticks.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(index)
            .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
            .parse::<f64>()?)
    };
    let per_second = rustix::param::clock_ticks_per_second() as f64;
    Ok((ticks(11)? + ticks(12)?) / per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let summary = Summary::of(&mut samples);
        assert_eq!((summary.p50, summary.p90, summary.p99), (50.0, 90.0, 99.0));
        assert_eq!(summary.max, 100.0);
        assert_eq!(Summary::of(&mut []).count, 0);
    }

    #[test]
    fn proc_readings_of_this_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).expect("VmRSS") > 0);
        assert!(cpu_seconds(pid).expect("stat") >= 0.0);
    }
}
