//! Timing and memory measurements shared by the benchmarks (`bench`) and `generate`; a module
//! of its own so that neither imports the other for them.

use std::time::Instant;

/// Wall-clock seconds of repeated runs (NaN statistics when there were none).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Timings {
    pub median_s: f64,
    pub min_s: f64,
    pub mean_s: f64,
    pub runs: usize,
    /// Every run, in the order they ran.
    pub all_s: Vec<f64>,
}

impl Timings {
    pub fn from_samples(all_s: Vec<f64>) -> Self {
        let mut s = all_s.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = match n {
            0 => f64::NAN,
            n if n % 2 == 1 => s[n / 2],
            n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
        };
        let min = s.first().copied().unwrap_or(f64::NAN);
        let mean = if n == 0 { f64::NAN } else { s.iter().sum::<f64>() / n as f64 };
        Self { median_s: median, min_s: min, mean_s: mean, runs: n, all_s }
    }
}

/// Runs `f` once to warm up (kernel compilation, allocator), then `runs` times.
pub fn time_runs(runs: usize, mut f: impl FnMut()) -> Timings {
    f();
    let samples = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    Timings::from_samples(samples)
}

/// Peak resident memory of this process so far, in MiB (Linux: VmHWM).
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
