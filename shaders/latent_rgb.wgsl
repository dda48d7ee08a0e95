// Latent → RGB preview projection (DC-AE Studio).
//
// One invocation per output pixel. The output is `scale` times larger than the latent; the
// latent is sampled bilinearly (pixel centres aligned, edges clamped), then projected with a
// 3×C matrix plus bias fitted per model (see src/engine/worker/projection.rs). Projecting the
// four neighbours and interpolating the colours equals projecting the interpolated latent,
// because the map is linear. The result is gamma-encoded RGB, like the pixels it was fitted
// on, and is written to an rgba8unorm storage texture that egui samples directly.

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
// 3×C weights (row-major, one row per colour) followed by 3 biases.
@group(0) @binding(2) var<storage, read> proj: array<f32>;
@group(0) @binding(3) var out_tex: texture_storage_2d<rgba8unorm, write>;

fn project_at(x: u32, y: u32) -> vec3<f32> {
    let c = params.channels;
    let hw = params.height * params.width;
    let base = params.offset + y * params.width + x;
    var rgb = vec3<f32>(proj[3u * c], proj[3u * c + 1u], proj[3u * c + 2u]);
    for (var ch = 0u; ch < c; ch = ch + 1u) {
        let v = latent[base + ch * hw];
        rgb = rgb + v * vec3<f32>(proj[ch], proj[c + ch], proj[2u * c + ch]);
    }
    return rgb;
}

@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
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
    let top = mix(project_at(x0, y0), project_at(x1, y0), tx);
    let bottom = mix(project_at(x0, y1), project_at(x1, y1), tx);
    let rgb = mix(top, bottom, ty);
    // [-1, 1] → [0, 1], as imaging::to_rgb8 maps to bytes.
    let out = clamp((rgb * 127.5 + 128.0) / 255.0, vec3<f32>(0.0), vec3<f32>(1.0));
    textureStore(out_tex, vec2<i32>(i32(gid.x), i32(gid.y)), vec4<f32>(out, 1.0));
}
