//! Convolutions on software wgpu adapters (lavapipe, WARP): dense ones as im2col matrix
//! products, the rest with cubecl's direct kernel, both untuned, instead of cubecl's tuned
//! choice of convolution kernel.
//!
//! Why: measured on lavapipe (2-core EPYC), a one-shot f32c32-in encode of a 64² image took
//! 323 s and a second one 114 s, 92 % of it in the direct convolution kernel, which is all the
//! convolution tuner finds for a 3×3 convolution there and which runs at 0.25–0.5 GFLOP/s
//! (512→512 at 16²: 4.8 s); the tuner also runs each candidate 3 times to warm up and 10 times
//! timed on every new shape, so a one-shot run mostly tunes. Dense stride-1 convolutions become
//! im2col products ([`im2col_conv`], [`product`]): the same encode takes 71 s, then 33 s.
//! Grouped and strided convolutions, a small share of the work, run the direct kernel without
//! the tuning that could only pick it. `DCAE_SOFTWARE_AUTOTUNE=1` keeps cubecl's own choice
//! for every convolution (to compare).
//!
//! Contact points: `engine::backend` marks the software device it opens ([`mark_software`]);
//! [`super::layers::Conv`] asks [`conv2d`] before burn's own convolution. Hardware adapters and
//! the CUDA backend are never pinned: there the tuner chooses between real alternatives, once
//! per shape, and remembers it across runs.

use burn::nn::conv::Conv2d;
use burn::tensor::{backend::Backend, Tensor};

/// Pins the kernels of `device`, a software adapter's device.
#[cfg(feature = "wgpu")]
pub fn mark_software(device: &burn::backend::wgpu::WgpuDevice) {
    if std::env::var_os("DCAE_SOFTWARE_AUTOTUNE").is_some_and(|v| v == "1") {
        return;
    }
    let mut pinned = PINNED.lock().unwrap_or_else(|p| p.into_inner());
    if !pinned.contains(device) {
        pinned.push(device.clone());
    }
}

#[cfg(feature = "wgpu")]
static PINNED: std::sync::Mutex<Vec<burn::backend::wgpu::WgpuDevice>> = std::sync::Mutex::new(Vec::new());

/// `c(x)` as the module docs say when `x` is on a pinned device ([`mark_software`]); `None`
/// elsewhere, and where the kernels refuse the shape (burn's own path runs then).
pub fn conv2d<B: Backend>(c: &Conv2d<B>, x: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "wgpu")]
    {
        wgpu_conv(c, x)
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = (c, x);
        None
    }
}

/// Matrix products [`im2col_conv`] has run in this process (one per band of rows): tests check
/// that the software path is the one taken.
static IM2COL_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[doc(hidden)]
pub fn im2col_calls() -> usize {
    IM2COL_CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(feature = "wgpu")]
type Cube = burn_cubecl::tensor::CubeTensor<burn::backend::wgpu::WgpuRuntime>;

/// `t`'s cubecl tensor, when `B` is burn's wgpu backend.
#[cfg(feature = "wgpu")]
fn cube<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<Cube> {
    let p: Box<dyn std::any::Any> = Box::new(t.into_primitive().tensor());
    p.downcast::<Cube>().ok().map(|b| *b)
}

#[cfg(feature = "wgpu")]
fn from_cube<B: Backend, const D: usize>(t: Cube) -> Option<Tensor<B, D>> {
    let t: Box<dyn std::any::Any> = Box::new(t);
    let p = *t.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(p)))
}

#[cfg(feature = "wgpu")]
fn wgpu_conv<B: Backend>(c: &Conv2d<B>, x: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
    use burn::backend::wgpu::{Wgpu, WgpuDevice, WgpuRuntime};
    use burn::tensor::ops::ConvOptions;
    use burn_cubecl::kernel::conv::{conv_forward, ConvStrategy};
    use std::any::{Any, TypeId};

    if TypeId::of::<B>() != TypeId::of::<Wgpu>() {
        return None;
    }
    let device = x.device();
    let d = (&device as &dyn Any).downcast_ref::<WgpuDevice>()?;
    if !PINNED.lock().unwrap_or_else(|p| p.into_inner()).contains(d) {
        return None;
    }
    let [kh, kw] = c.kernel_size;
    if c.groups == 1 && c.stride == [1, 1] && c.dilation == [1, 1] && kh == kw && kh % 2 == 1 {
        if let Some(y) = im2col_conv(c, x, super::limits::max_tensor_bytes::<B>(&device)) {
            return Some(y);
        }
    }
    // Only the "same" padding [`super::layers::conv2d`] builds: (k−1)/2 on every side.
    let padding = [kh / 2, kw / 2];
    let options = ConvOptions::new(c.stride, padding, c.dilation, c.groups);
    let bias = match &c.bias {
        Some(b) => Some(cube(b.val())?),
        None => None,
    };
    let y = conv_forward::<WgpuRuntime, 2>(cube(x.clone())?, cube(c.weight.val())?, bias, options, ConvStrategy::Direct).ok()?;
    from_cube(y)
}

/// A dense stride-1 "same" convolution as matrix products: per image and per band of output
/// rows, the k² shifted copies of the input stacked as a `[C·k², rows·W]` matrix (im2col),
/// times the `[O, C·k²]` weight. lavapipe runs its direct convolution kernel at 0.25–0.5
/// GFLOP/s (measured: 512→512 3×3 at 16² in 4.8 s) and a matrix product at about 7; the bands
/// keep the stacked matrix and the product under a quarter of the device's largest tensor.
/// `None` where `B` is not wgpu (the caller checked; kept total for the types).
#[cfg(feature = "wgpu")]
fn im2col_conv<B: Backend>(c: &Conv2d<B>, x: &Tensor<B, 4>, cap: Option<u64>) -> Option<Tensor<B, 4>> {
    use burn::tensor::ops::PadMode;
    let [n, ci, h, w] = x.dims();
    let [co, _, k, _] = c.weight.dims();
    let p = k / 2;
    let kk = ci * k * k;
    let elem = x.dtype().size() as u64;
    let limit = cap.map_or(64 << 20, |c| (c / 4).min(64 << 20));
    let row_bytes = elem * (kk.max(co) * w) as u64;
    let band = ((limit / row_bytes.max(1)) as usize).clamp(1, h.max(1));
    let weight = c.weight.val().reshape([co, kk]);
    let untuned = cube(weight.clone());
    let bias = c.bias.as_ref().map(|b| b.val().reshape([co, 1]));
    let xp = if p > 0 { x.clone().pad((p, p, p, p), PadMode::Constant(0.0)) } else { x.clone() };
    let mut images = Vec::with_capacity(n);
    for i in 0..n {
        let mut bands = Vec::new();
        for r0 in (0..h).step_by(band) {
            let rows = band.min(h - r0);
            let xb = xp.clone().slice([i..i + 1, 0..ci, r0..r0 + rows + 2 * p, 0..w + 2 * p]);
            let cols: Tensor<B, 2> = if k == 1 {
                xb.reshape([ci, rows * w])
            } else {
                let taps: Vec<Tensor<B, 4>> = (0..k * k).map(|t| xb.clone().slice([0..1, 0..ci, t / k..t / k + rows, t % k..t % k + w])).collect();
                // [1, C, k², rows, W]: row c·k² + ky·k + kx, the weight's own order.
                Tensor::stack::<5>(taps, 2).reshape([kk, rows * w])
            };
            let mut y = product(&weight, untuned.as_ref(), cols);
            IM2COL_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(b) = &bias {
                y = y + b.clone();
            }
            bands.push(y.reshape([1, co, rows, w]));
        }
        images.push(Tensor::cat(bands, 2));
    }
    Some(Tensor::cat(images, 0))
}

/// `weight · cols` with cubecl's default matrix product, untuned: on lavapipe a one-shot 64²
/// f32c32-in encode took 71 s this way against 341 s through burn's tuned product (its tuner
/// times four candidates 13 times on every new shape), for 33 s against 26 s once tuned. The
/// default launcher panics where its kernel cannot be set up for a shape (it is set up before
/// anything is queued); burn's tuned product, which skips such candidates, runs then.
#[cfg(feature = "wgpu")]
fn product<B: Backend>(weight: &Tensor<B, 2>, untuned: Option<&Cube>, cols: Tensor<B, 2>) -> Tensor<B, 2> {
    use burn_cubecl::kernel::matmul::{matmul, MatmulStrategy};
    let dtype = cols.dtype();
    if let (Some(w), Some(c)) = (untuned, cube(cols.clone())) {
        let w = w.clone();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || matmul(w, c, None, MatmulStrategy::Cube, dtype)));
        if let Some(y) = run.ok().and_then(Result::ok).and_then(from_cube) {
            return y;
        }
    }
    weight.clone().matmul(cols)
}
