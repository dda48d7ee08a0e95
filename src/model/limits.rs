//! The largest single tensor a device can hold, and how the models stay under it.
//!
//! Why: on the GPU backends every tensor is one buffer binding. cubecl sizes its memory pages
//! by the device's `max_storage_buffer_binding_size` (wgpu) or a quarter of the VRAM (CUDA) and
//! refuses a larger tensor with a panic on its device thread, which the caller only sees later
//! as "server unhealthy" (the project's study of the wgpu / cubecl limits). wgpu caps the binding at 2 GiB − 4
//! on Vulkan / DX12, 4 GiB − 4 on Metal, Intel's Windows driver at 1 GiB − 4 and lavapipe at
//! 128 MiB. So the models ask [`max_tensor_bytes`] before they make a big tensor:
//! - weights above it are held in parts and computed part by part ([`crate::model::layers::Conv`]),
//! - the autoencoder's activations are tiled below it ([`crate::model::tiling`]),
//! - Gemma-2's embedding table never goes to the device ([`crate::weights::HostTable`]),
//! - and a run that would still need a larger tensor fails before any work ([`TooLarge`]).
//!
//! [`CAP_ENV`] lowers the cap to emulate a smaller adapter: on wgpu the device is opened with
//! that binding limit (`engine::backend`), so cubecl pages by it too; on the other backends only
//! our own decisions follow it (which is how the CPU tests take the split and tiled paths).
//!
//! Contact points: `engine::backend` (opens the device, reports [`DeviceLimits`]), `layers::conv2d`,
//! `tiling::fit`, `sana::text_encoder`, `engine::memory` (budgets).

use std::any::Any;
use std::cell::Cell;

use burn::tensor::backend::Backend;

/// Caps the largest single tensor (bytes, or with a `KiB` / `MiB` / `GiB` suffix) below the
/// device's own limit, to emulate a smaller adapter (e.g. `128MiB` for lavapipe, `1GiB` for
/// Intel's Windows driver).
pub const CAP_ENV: &str = "DCAE_GPU_MAX_BINDING";

/// What one device can hold, as far as its API says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct DeviceLimits {
    /// The largest single tensor (wgpu: `max_storage_buffer_binding_size`, lowered by
    /// [`CAP_ENV`]; CUDA: cubecl's page, a quarter of the VRAM).
    pub max_tensor: Option<u64>,
    /// The adapter's own binding limit before [`CAP_ENV`] (wgpu).
    pub adapter_max_binding: Option<u64>,
    /// The largest buffer (wgpu `max_buffer_size`).
    pub max_buffer: Option<u64>,
    /// Device memory in all (CUDA: the VRAM; Vulkan: the device-local heaps; a software
    /// adapter: the system's memory; Metal: not told).
    pub memory_total: Option<u64>,
    /// Device memory free when the device opened (CUDA's `cuMemGetInfo`).
    pub memory_free: Option<u64>,
}

impl DeviceLimits {
    /// One line for the CLI's `backend:` report and the status bar's tooltip.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = self.max_tensor {
            let lowered = match self.adapter_max_binding {
                Some(a) if a > t => format!(" (lowered from {} by {CAP_ENV})", human(a)),
                _ => String::new(),
            };
            parts.push(format!("largest tensor {}{lowered}", human(t)));
        }
        if let Some(b) = self.max_buffer {
            parts.push(format!("largest buffer {}", human(b)));
        }
        match (self.memory_total, self.memory_free) {
            (Some(t), Some(f)) => parts.push(format!("memory {} ({} free)", human(t), human(f))),
            (Some(t), None) => parts.push(format!("memory {}", human(t))),
            (None, _) => parts.push("memory not reported by the driver".into()),
        }
        parts.join(", ")
    }
}

/// `bytes` as people read it: "128 MiB", "2.00 GiB", "1.5 KiB".
pub fn human(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB * KIB {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    } else if b >= KIB * KIB {
        format!("{:.0} MiB", b / (KIB * KIB))
    } else if b >= KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{bytes} B")
    }
}

/// A size as [`CAP_ENV`] takes it: bytes, or a number with `KiB`, `MiB`, `GiB` (also `K`, `M`,
/// `G`, `KB`, `MB`, `GB`, all binary).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{text}` is not a size: write bytes or e.g. 128MiB"))?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("`{text}`: unknown unit `{other}` (use KiB, MiB or GiB)")),
    };
    let bytes = n * mul as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < 1e18) {
        return Err(format!("`{text}` is not a usable size"));
    }
    Ok(bytes as u64)
}

/// [`CAP_ENV`] if set; an error names the variable and what it takes.
pub fn cap_from_env() -> Result<Option<u64>, String> {
    match std::env::var(CAP_ENV) {
        Ok(v) if !v.trim().is_empty() => parse_size(&v).map(Some).map_err(|e| format!("{CAP_ENV}: {e}")),
        _ => Ok(None),
    }
}

thread_local! {
    /// A cap for this thread's loads and runs, over everything else (tests of the split and
    /// tiled paths on the CPU, without an environment variable that other tests would see).
    static THREAD_CAP: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Sets this thread's cap until the guard is dropped (see [`max_tensor_bytes`]).
pub fn cap_this_thread(bytes: u64) -> ThreadCap {
    let prev = THREAD_CAP.with(|c| c.replace(Some(bytes)));
    ThreadCap(prev)
}

/// Restores the previous thread cap when dropped.
pub struct ThreadCap(Option<u64>);

impl Drop for ThreadCap {
    fn drop(&mut self) {
        THREAD_CAP.with(|c| c.set(self.0));
    }
}

/// The largest single tensor, in bytes, that `device` holds; `None` when there is no such
/// limit (the CPU backend without [`CAP_ENV`]).
pub fn max_tensor_bytes<B: Backend>(device: &B::Device) -> Option<u64> {
    if let Some(c) = THREAD_CAP.with(|c| c.get()) {
        return Some(c);
    }
    let env = cap_from_env().ok().flatten();
    let dev = backend_cap(device as &dyn Any);
    match (dev, env) {
        (Some(d), Some(e)) => Some(d.min(e)),
        (d, e) => d.or(e),
    }
}

/// What the GPU runtime's allocator takes as one tensor at most (its page size).
fn backend_cap(any: &dyn Any) -> Option<u64> {
    #[cfg(feature = "wgpu")]
    if let Some(d) = any.downcast_ref::<burn::backend::wgpu::WgpuDevice>() {
        use cubecl::Runtime;
        use std::panic::{catch_unwind, AssertUnwindSafe};
        return catch_unwind(AssertUnwindSafe(|| burn::backend::wgpu::WgpuRuntime::client(d).properties().memory.max_page_size)).ok();
    }
    #[cfg(feature = "cuda")]
    if let Some(d) = any.downcast_ref::<burn::backend::cuda::CudaDevice>() {
        use cubecl::Runtime;
        use std::panic::{catch_unwind, AssertUnwindSafe};
        return catch_unwind(AssertUnwindSafe(|| cubecl::cuda::CudaRuntime::client(d).properties().memory.max_page_size)).ok();
    }
    let _ = any;
    None
}

/// How many parts of at most `cap` bytes a tensor of `rows` rows of `row_bytes` each needs
/// (1 when it fits or there is no cap). `None` when a single row is already over the cap.
pub fn parts_for(rows: usize, row_bytes: u64, cap: Option<u64>) -> Option<usize> {
    let Some(cap) = cap else { return Some(1) };
    if row_bytes > cap {
        return None;
    }
    let total = rows as u64 * row_bytes;
    if total <= cap {
        return Some(1);
    }
    let rows_per_part = (cap / row_bytes.max(1)).max(1) as usize;
    Some(rows.div_ceil(rows_per_part))
}

/// `rows` cut into `parts` consecutive (start, len) blocks, the first ones one longer when it
/// does not divide evenly; never an empty block.
pub fn row_blocks(rows: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, rows.max(1));
    let (base, extra) = (rows / parts, rows % parts);
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 0..parts {
        let len = base + usize::from(i < extra);
        if len > 0 {
            out.push((start, len));
        }
        start += len;
    }
    out
}

/// A run that needs one tensor larger than the device holds: what, how large, the limit, and
/// what to change. Raised before any work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} would be one tensor of {} but {device} holds at most {} per tensor: {advice}", human(*.bytes), human(*.limit))]
pub struct TooLarge {
    pub device: String,
    pub limit: u64,
    pub what: String,
    pub bytes: u64,
    pub advice: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_refuse_nonsense() {
        assert_eq!(parse_size("134217728"), Ok(134_217_728));
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size(" 1GiB "), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn parts_keep_every_block_under_the_cap() {
        // The f32c32 decoder's up-convolution, [4096, 1024, 3, 3] f32, under lavapipe's 128 MiB.
        let row = 1024 * 9 * 4;
        let parts = parts_for(4096, row, Some(128 << 20)).unwrap();
        assert_eq!(parts, 2);
        for (_, len) in row_blocks(4096, parts) {
            assert!(len as u64 * row <= 128 << 20);
        }
        assert_eq!(parts_for(4096, row, None), Some(1));
        assert_eq!(parts_for(4096, row, Some(row * 4096)), Some(1));
        assert_eq!(parts_for(10, 100, Some(99)), None);
        // Uneven: 10 rows of 100 bytes under 350 → 3 rows a part → 4 parts.
        assert_eq!(parts_for(10, 100, Some(350)), Some(4));
        let blocks = row_blocks(10, 4);
        assert_eq!(blocks, vec![(0, 3), (3, 3), (6, 2), (8, 2)]);
        assert_eq!(row_blocks(3, 8), vec![(0, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn thread_cap_is_scoped() {
        assert_eq!(THREAD_CAP.with(|c| c.get()), None);
        {
            let _g = cap_this_thread(1000);
            assert_eq!(max_tensor_bytes::<burn::backend::Flex>(&Default::default()), Some(1000));
        }
        assert_eq!(THREAD_CAP.with(|c| c.get()), None);
    }
}
