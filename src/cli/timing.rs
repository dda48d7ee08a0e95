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
    /// The untimed warm-up run's time, where there was one: a one-shot command (`dcae
    /// reconstruct`) pays it, so `first_s − median_s` is the first call's extra cost (weight
    /// re-layout and Winograd transforms on the CPU, kernel compilation on GPUs).
    pub first_s: Option<f64>,
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
        Self { median_s: median, min_s: min, mean_s: mean, runs: n, all_s, first_s: None }
    }
}

/// Runs `f` once to warm up (kernel compilation, allocator), then `runs` times; the warm-up's
/// time is kept apart as [`Timings::first_s`].
pub fn time_runs(runs: usize, f: impl FnMut()) -> Timings {
    time_runs_then(runs, f, || {})
}

/// [`time_runs`], calling `after` (untimed) after each timed run, e.g. to read GPU memory.
pub fn time_runs_then(runs: usize, mut f: impl FnMut(), mut after: impl FnMut()) -> Timings {
    let t = Instant::now();
    f();
    let first_s = t.elapsed().as_secs_f64();
    let samples = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            let s = t.elapsed().as_secs_f64();
            after();
            s
        })
        .collect();
    Timings { first_s: Some(first_s), ..Timings::from_samples(samples) }
}

/// The most GPU memory seen (bytes in use, bytes reserved by the allocator) over the samples
/// taken; both stay `None` on the CPU. In-use bytes are read between runs, when the run's
/// temporaries are freed, so they are a lower bound of the true peak; the reserved bytes keep
/// the pool's high-water mark (the allocator does not return memory between runs), the upper
/// bound that decides whether a run fits on a GPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuPeak {
    pub in_use: Option<u64>,
    pub reserved: Option<u64>,
}

impl GpuPeak {
    pub fn sample<B: burn::tensor::backend::Backend>(&mut self, device: &B::Device) {
        if let Some((u, r)) = crate::engine::backend::gpu_memory::<B>(device) {
            self.in_use = Some(self.in_use.unwrap_or(0).max(u));
            self.reserved = Some(self.reserved.unwrap_or(0).max(r));
        }
    }

    fn mib(b: Option<u64>) -> Option<f64> {
        b.map(|b| b as f64 / (1u64 << 20) as f64)
    }

    pub fn in_use_mib(&self) -> Option<f64> {
        Self::mib(self.in_use)
    }

    pub fn reserved_mib(&self) -> Option<f64> {
        Self::mib(self.reserved)
    }

    /// ", GPU 123 MiB in use / 456 MiB reserved", or nothing on the CPU.
    pub fn describe(&self) -> String {
        match (self.in_use_mib(), self.reserved_mib()) {
            (Some(u), Some(r)) => format!(", GPU {u:.0} MiB in use / {r:.0} MiB reserved"),
            _ => String::new(),
        }
    }
}

/// Peak resident memory of this process so far, in MiB (Linux: VmHWM).
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
