// Latent → RGB preview projection (DC-AE Studio).
//
// Two passes over one image of the batch:
//   `project`  — one invocation per latent pixel: rgb = W·z + b, with W a 3×C matrix and b a
//                bias fitted per model (src/engine/worker/projection.rs). Written to `rgb`.
//   `upsample` — one invocation per output pixel: bilinear interpolation of `rgb` (pixel centres
//                aligned, edges clamped) to the output size, written to an rgba8unorm storage
//                texture that egui samples directly.
// Projecting first and interpolating after equals interpolating the latent and projecting it
// (the map is linear), at a fraction of the cost: C multiply-adds per latent pixel instead of
// 4·C per output pixel. The colours are gamma-encoded, like the pixels the map was fitted on.

struct Params {
    channels: u32,
    height: u32,
    width: u32,
    out_height: u32,
    out_width: u32,
    // Offset (in floats) of this image inside the latent buffer.
    offset: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// [B, C, H, W], row-major.
@group(0) @binding(1) var<storage, read> latent: array<f32>;
// 3×C weights (row-major, one row per colour) followed by the 3 biases.
@group(0) @binding(2) var<storage, read> proj: array<f32>;
@group(0) @binding(3) var out_tex: texture_storage_2d<rgba8unorm, write>;
// [H, W, 3] projected colours of this image, in [-1, 1].
@group(0) @binding(4) var<storage, read_write> rgb: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn project(@builtin(global_invocation_id) gid: vec3<u32>) {
    let hw = params.height * params.width;
    let p = gid.x;
    if (p >= hw) {
        return;
    }
    let c = params.channels;
    var acc = vec3<f32>(proj[3u * c], proj[3u * c + 1u], proj[3u * c + 2u]);
    for (var ch = 0u; ch < c; ch = ch + 1u) {
        let v = latent[params.offset + ch * hw + p];
        acc = acc + v * vec3<f32>(proj[ch], proj[c + ch], proj[2u * c + ch]);
    }
    rgb[3u * p] = acc.x;
    rgb[3u * p + 1u] = acc.y;
    rgb[3u * p + 2u] = acc.z;
}

fn rgb_at(x: u32, y: u32) -> vec3<f32> {
    let i = 3u * (y * params.width + x);
    return vec3<f32>(rgb[i], rgb[i + 1u], rgb[i + 2u]);
}

@compute @workgroup_size(8, 8, 1)
fn upsample(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= params.out_width || gid.y >= params.out_height) {
        return;
    }
    // Output pixel centre → latent coordinates (half-pixel aligned, like align_corners=False).
    let sx = (f32(gid.x) + 0.5) * f32(params.width) / f32(params.out_width) - 0.5;
    let sy = (f32(gid.y) + 0.5) * f32(params.height) / f32(params.out_height) - 0.5;
    let fx = clamp(sx, 0.0, f32(params.width - 1u));
    let fy = clamp(sy, 0.0, f32(params.height - 1u));
    let x0 = u32(floor(fx));
    let y0 = u32(floor(fy));
    let x1 = min(x0 + 1u, params.width - 1u);
    let y1 = min(y0 + 1u, params.height - 1u);
    let tx = fx - f32(x0);
    let ty = fy - f32(y0);
    let top = mix(rgb_at(x0, y0), rgb_at(x1, y0), tx);
    let bottom = mix(rgb_at(x0, y1), rgb_at(x1, y1), tx);
    let v = mix(top, bottom, ty);
    // [-1, 1] → [0, 1], as imaging::to_rgb8 maps to bytes.
    let out = clamp((v * 127.5 + 128.0) / 255.0, vec3<f32>(0.0), vec3<f32>(1.0));
    textureStore(out_tex, vec2<i32>(i32(gid.x), i32(gid.y)), vec4<f32>(out, 1.0));
}
