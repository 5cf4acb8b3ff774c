//! `cargo xtask bench NAME`: benchmarks that compare hull with a baseline on
//! this machine and end with one `RESULT <name> key=value…` line.
//!
//! Timings are measured here, never asserted in tests. Each benchmark runs
//! a few times from cold state (fresh roots) and reports the median.

mod image_pull;
mod net;
mod pod_start;
mod stream;
mod vmm_boot;

use anyhow::{Result, bail};
use clap::Args;

/// Arguments of `cargo xtask bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Which benchmark: image-pull, net, pod-start, stream, vmm-boot.
    name: String,
    /// Runs per side; the median is reported (default 3; pod-start: 10).
    #[arg(long)]
    runs: Option<usize>,
    /// Approximate uncompressed size of the test image (image-pull).
    #[arg(long, default_value_t = 100)]
    megabytes: usize,
}

/// Runs the benchmark `args.name`.
pub fn run_cli(args: BenchArgs) -> Result<()> {
    let runs = args.runs.unwrap_or(match args.name.as_str() {
        "pod-start" => pod_start::DEFAULT_RUNS,
        _ => DEFAULT_RUNS,
    });
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    match args.name.as_str() {
        "image-pull" => image_pull::run(runs, args.megabytes),
        "net" => net::run_bench(),
        "pod-start" => pod_start::run_bench(runs),
        "stream" => stream::run_bench(),
        "vmm-boot" => vmm_boot::run_bench(runs),
        other => bail!(
            "unknown benchmark {other:?}; known: image-pull, net, pod-start, stream, vmm-boot"
        ),
    }
}

/// Runs the `hull-integration` bench target `target` (which measures and
/// prints its own RESULT line) in one test VM boot: builds the guest
/// kernel, the agent initramfs, release `hulld` and `hull-vmm`, and the
/// bench binary first.
fn run_integration_bench_in_test_vm(target: &str) -> Result<()> {
    use crate::testvm::{self, RunOptions, suite};
    let kernel = crate::kernel::build()?;
    let initramfs = crate::initramfs::build(false)?;
    crate::util::build_release_runtime()?;
    let binary = suite::build_vm_bench(target)?;
    let command = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!(
            "cd {} && exec env HULL_GUEST_VMLINUX={} HULL_GUEST_BZIMAGE={} HULL_AGENT_INITRAMFS={} {}",
            testvm::shell_quote(
                &crate::util::workspace_root()
                    .join("integration")
                    .display()
                    .to_string()
            ),
            testvm::shell_quote(&kernel.vmlinux.display().to_string()),
            testvm::shell_quote(&kernel.bzimage.display().to_string()),
            testvm::shell_quote(&initramfs.display().to_string()),
            testvm::shell_quote(&binary.display().to_string()),
        ),
    ];
    let code = testvm::run(&command, &RunOptions::default())?;
    if code != 0 {
        bail!("the {target} benchmark failed inside the test VM (exit status {code})");
    }
    Ok(())
}

/// Runs per side when `--runs` is not given (pod-start has its own).
const DEFAULT_RUNS: usize = 3;

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if !sorted.len().is_multiple_of(2) {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
