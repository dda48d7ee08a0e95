//! Step previews: every step's x0 estimate mapped to RGB by the model's latent→RGB projection.
//!
//! With a wgpu render state (the normal app) the projection runs on the GPU: the latents are
//! uploaded (a few KB), `shaders/latent_rgb.wgsl` writes one rgba8 texture per image, and the
//! textures are registered with egui's renderer, so nothing comes back to the CPU. Without one
//! (the glow renderer, or tests) the same projection runs on the CPU into egui textures.

use std::time::Instant;

use eframe::egui::{self, Color32, ColorImage, TextureHandle, TextureId, TextureOptions, Vec2};

use crate::engine::worker::projection::Projection;
use crate::engine::worker::LatentBatch;

#[cfg(feature = "wgpu")]
pub use gpu::LatentRgbGpu;

/// A preview image ready to paint.
#[derive(Clone, Copy, Debug)]
pub struct PreviewImage {
    pub texture: TextureId,
    /// Size in pixels of the texture (the latent's size × the upsampling factor).
    pub size: Vec2,
}

pub struct PreviewRenderer {
    #[cfg(feature = "wgpu")]
    gpu: Option<gpu::EguiGpuPreview>,
    cpu_textures: Vec<TextureHandle>,
    /// Wall time of the last projection on the UI thread (GPU: encode + submit only).
    pub last_ms: f64,
    /// Mean over this session.
    total_ms: f64,
    count: u64,
    calls: u64,
}

impl PreviewRenderer {
    /// `render_state` is eframe's wgpu state when the wgpu renderer runs.
    #[cfg(feature = "wgpu")]
    pub fn new(render_state: Option<&eframe::egui_wgpu::RenderState>) -> Self {
        let gpu = render_state.and_then(|rs| match gpu::EguiGpuPreview::new(rs) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("GPU preview unavailable, projecting on the CPU: {e}");
                None
            }
        });
        Self { gpu, cpu_textures: Vec::new(), last_ms: 0.0, total_ms: 0.0, count: 0, calls: 0 }
    }

    #[cfg(not(feature = "wgpu"))]
    pub fn new() -> Self {
        Self { cpu_textures: Vec::new(), last_ms: 0.0, total_ms: 0.0, count: 0, calls: 0 }
    }

    /// "GPU (WGSL)" or "CPU".
    pub fn kind(&self) -> &'static str {
        #[cfg(feature = "wgpu")]
        if self.gpu.is_some() {
            return "GPU shader";
        }
        "CPU"
    }

    pub fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.total_ms / self.count as f64
        }
    }

    /// Projects every image of `latents`; returns one paintable image per batch entry.
    pub fn project(&mut self, ctx: &egui::Context, latents: &LatentBatch, proj: &Projection) -> Vec<PreviewImage> {
        let t = Instant::now();
        let [b, c, h, w] = latents.shape;
        if c != proj.channels || latents.data.len() < b * c * h * w {
            return Vec::new();
        }
        #[cfg(feature = "wgpu")]
        if let Some(gpu) = &mut self.gpu {
            let out = gpu.project(latents, proj);
            self.record(t);
            return out;
        }
        let mut out = Vec::with_capacity(b);
        for i in 0..b {
            let rgba = proj.to_rgba(latents.image(i), h, w);
            let image = ColorImage::from_rgba_unmultiplied([w, h], &rgba);
            // Linear filtering gives the same bilinear upsampling the shader does.
            if let Some(tex) = self.cpu_textures.get_mut(i) {
                tex.set(image, TextureOptions::LINEAR);
            } else {
                self.cpu_textures.push(ctx.load_texture(format!("preview-{i}"), image, TextureOptions::LINEAR));
            }
            let tex = &self.cpu_textures[i];
            out.push(PreviewImage { texture: tex.id(), size: Vec2::new(w as f32, h as f32) });
        }
        self.record(t);
        out
    }

    fn record(&mut self, t: Instant) {
        self.last_ms = t.elapsed().as_secs_f64() * 1e3;
        self.calls += 1;
        // The first call creates textures (and on the GPU the pipeline's first use); the mean
        // is of the steady state.
        if self.calls > 1 {
            self.total_ms += self.last_ms;
            self.count += 1;
        }
    }
}

/// A solid placeholder for an image not yet previewed.
pub fn placeholder_color() -> Color32 {
    Color32::from_gray(40)
}

#[cfg(feature = "wgpu")]
mod gpu {
    use std::sync::Arc;

    use eframe::egui::{TextureId, Vec2};
    use eframe::egui_wgpu;
    use eframe::wgpu;

    use super::PreviewImage;
    use crate::engine::worker::projection::Projection;
    use crate::engine::worker::LatentBatch;

    /// Preview textures aim for about this many pixels on the long side.
    const TARGET_SIDE: usize = 256;

    /// The compute pipeline of shaders/latent_rgb.wgsl on some wgpu device.
    pub struct LatentRgbGpu {
        pub device: wgpu::Device,
        pub queue: wgpu::Queue,
        project: wgpu::ComputePipeline,
        upsample: wgpu::ComputePipeline,
        layout: wgpu::BindGroupLayout,
        latent_buf: Option<(wgpu::Buffer, u64)>,
        proj_buf: Option<(wgpu::Buffer, u64)>,
    }

    /// One output texture and the uniform buffer of its dispatch.
    pub struct Slot {
        pub texture: wgpu::Texture,
        pub view: wgpu::TextureView,
        pub size: (u32, u32),
        params: wgpu::Buffer,
        /// Projected colours at latent resolution; grown on demand.
        rgb: Option<(wgpu::Buffer, u64)>,
    }

    impl LatentRgbGpu {
        pub fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("latent_rgb.wgsl"),
                source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/latent_rgb.wgsl").into()),
            });
            let entry = |binding, ty| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty,
                count: None,
            };
            let storage = wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: true },
                has_dynamic_offset: false,
                min_binding_size: None,
            };
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("latent_rgb"),
                entries: &[
                    entry(
                        0,
                        wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                    ),
                    entry(1, storage),
                    entry(2, storage),
                    entry(
                        3,
                        wgpu::BindingType::StorageTexture {
                            access: wgpu::StorageTextureAccess::WriteOnly,
                            format: wgpu::TextureFormat::Rgba8Unorm,
                            view_dimension: wgpu::TextureViewDimension::D2,
                        },
                    ),
                    entry(
                        4,
                        wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage { read_only: false },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                    ),
                ],
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("latent_rgb"),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = |entry: &str| {
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
            };
            let (project, upsample) = (pipeline("project"), pipeline("upsample"));
            Self { device: device.clone(), queue: queue.clone(), project, upsample, layout, latent_buf: None, proj_buf: None }
        }

        /// Upsampling factor so the long side is about `TARGET_SIDE` pixels.
        pub fn scale_for(h: usize, w: usize) -> usize {
            (TARGET_SIDE / h.max(w).max(1)).clamp(1, 64)
        }

        pub fn new_slot(&self, size: (u32, u32)) -> Slot {
            let texture = self.device.create_texture(&wgpu::TextureDescriptor {
                label: Some("latent_rgb preview"),
                size: wgpu::Extent3d { width: size.0, height: size.1, depth_or_array_layers: 1 },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: wgpu::TextureFormat::Rgba8Unorm,
                usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_SRC,
                view_formats: &[],
            });
            let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
            let params = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("latent_rgb params"),
                size: 32,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            Slot { texture, view, size, params, rgb: None }
        }

        fn storage(&self, slot: &mut Option<(wgpu::Buffer, u64)>, data: &[f32], label: &str) {
            let bytes = (data.len() * 4).max(16) as u64;
            if slot.as_ref().is_none_or(|(_, cap)| *cap < bytes) {
                let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: bytes.next_power_of_two(),
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                *slot = Some((buf, bytes.next_power_of_two()));
            }
            if let Some((buf, _)) = slot {
                self.queue.write_buffer(buf, 0, &f32_bytes(data));
            }
        }

        /// Records and submits one dispatch per image; `slots[i]` receives image `i`.
        /// Returns the submission so a benchmark can wait for it.
        pub fn dispatch(&mut self, latents: &LatentBatch, proj: &Projection, slots: &mut [Slot]) -> wgpu::SubmissionIndex {
            let [b, c, h, w] = latents.shape;
            let mut latent_buf = self.latent_buf.take();
            self.storage(&mut latent_buf, &latents.data, "latent_rgb latents");
            self.latent_buf = latent_buf;
            let mut proj_buf = self.proj_buf.take();
            self.storage(&mut proj_buf, &proj.packed(), "latent_rgb projection");
            self.proj_buf = proj_buf;
            let (Some((lat, _)), Some((pr, _))) = (&self.latent_buf, &self.proj_buf) else {
                return self.queue.submit([]);
            };
            let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("latent_rgb") });
            for (i, slot) in slots.iter_mut().enumerate().take(b) {
                let rgb_bytes = (3 * h * w * 4).max(16) as u64;
                if slot.rgb.as_ref().is_none_or(|(_, cap)| *cap < rgb_bytes) {
                    let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("latent_rgb colours"),
                        size: rgb_bytes,
                        usage: wgpu::BufferUsages::STORAGE,
                        mapped_at_creation: false,
                    });
                    slot.rgb = Some((buf, rgb_bytes));
                }
                let Some((rgb, _)) = &slot.rgb else { continue };
                let params: [u32; 8] =
                    [c as u32, h as u32, w as u32, slot.size.1, slot.size.0, (i * c * h * w) as u32, 0, 0];
                let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
                self.queue.write_buffer(&slot.params, 0, &bytes);
                let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("latent_rgb"),
                    layout: &self.layout,
                    entries: &[
                        wgpu::BindGroupEntry { binding: 0, resource: slot.params.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 1, resource: lat.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 2, resource: pr.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 3, resource: wgpu::BindingResource::TextureView(&slot.view) },
                        wgpu::BindGroupEntry { binding: 4, resource: rgb.as_entire_binding() },
                    ],
                });
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("latent_rgb"), timestamp_writes: None });
                pass.set_bind_group(0, &bind, &[]);
                pass.set_pipeline(&self.project);
                pass.dispatch_workgroups(((h * w) as u32).div_ceil(64), 1, 1);
                pass.set_pipeline(&self.upsample);
                pass.dispatch_workgroups(slot.size.0.div_ceil(8), slot.size.1.div_ceil(8), 1);
            }
            self.queue.submit([encoder.finish()])
        }

        /// Reads a slot back as RGBA8 (tests and benchmarks only; blocks until the GPU is done).
        pub fn read_back(&self, slot: &Slot) -> Result<Vec<u8>, String> {
            let (w, h) = slot.size;
            let row = (w * 4).div_ceil(256) * 256;
            let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("latent_rgb readback"),
                size: (row * h) as u64,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut encoder = self.device.create_command_encoder(&Default::default());
            encoder.copy_texture_to_buffer(
                wgpu::TexelCopyTextureInfo { texture: &slot.texture, mip_level: 0, origin: wgpu::Origin3d::ZERO, aspect: wgpu::TextureAspect::All },
                wgpu::TexelCopyBufferInfo {
                    buffer: &buf,
                    layout: wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(row), rows_per_image: Some(h) },
                },
                wgpu::Extent3d { width: w, height: h, depth_or_array_layers: 1 },
            );
            self.queue.submit([encoder.finish()]);
            let slice = buf.slice(..);
            let (tx, rx) = std::sync::mpsc::channel();
            slice.map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| format!("{e:?}"))?;
            rx.recv().map_err(|e| e.to_string())?.map_err(|e| format!("{e:?}"))?;
            let data = slice.get_mapped_range();
            let mut out = Vec::with_capacity((w * h * 4) as usize);
            for y in 0..h {
                let start = (y * row) as usize;
                out.extend_from_slice(&data[start..start + (w * 4) as usize]);
            }
            Ok(out)
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        let mut out: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        while out.len() < 16 {
            out.push(0);
        }
        out
    }

    /// The GPU projector wired to eframe's renderer: slots are registered as egui textures.
    pub struct EguiGpuPreview {
        gpu: LatentRgbGpu,
        renderer: Arc<eframe::egui::mutex::RwLock<egui_wgpu::Renderer>>,
        slots: Vec<Slot>,
        ids: Vec<TextureId>,
    }

    impl EguiGpuPreview {
        pub fn new(rs: &egui_wgpu::RenderState) -> Result<Self, String> {
            // Storage writes to rgba8unorm are core WebGPU; check anyway so an odd adapter falls
            // back to the CPU path instead of failing validation every frame.
            let features = rs.adapter.get_texture_format_features(wgpu::TextureFormat::Rgba8Unorm);
            if !features.allowed_usages.contains(wgpu::TextureUsages::STORAGE_BINDING) {
                return Err("the adapter cannot write rgba8unorm storage textures".into());
            }
            // A GL-only driver (the fallback wgpu takes when Vulkan is missing) may lack compute
            // shaders; creating the pipeline there is a validation error, which wgpu's default
            // handler turns into a panic on the UI thread. Ask first, and catch what is left.
            if !rs.adapter.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
                return Err(format!("the display adapter ({:?}) has no compute shaders", rs.adapter.get_info().backend));
            }
            let scope = rs.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let gpu = LatentRgbGpu::new(&rs.device, &rs.queue);
            if let Some(e) = crate::engine::backend::pollster_block(scope.pop()) {
                return Err(format!("the preview shader does not run on this adapter: {e}"));
            }
            Ok(Self {
                gpu,
                renderer: rs.renderer.clone(),
                slots: Vec::new(),
                ids: Vec::new(),
            })
        }

        pub fn project(&mut self, latents: &LatentBatch, proj: &Projection) -> Vec<PreviewImage> {
            let [b, _, h, w] = latents.shape;
            let s = LatentRgbGpu::scale_for(h, w);
            let size = ((w * s) as u32, (h * s) as u32);
            // Keep registered textures while the size stays; when it changes, point the same
            // TextureId at a new texture so egui never shows a stale one.
            for i in 0..b {
                if i < self.slots.len() {
                    if self.slots[i].size != size {
                        let slot = self.gpu.new_slot(size);
                        self.renderer.write().update_egui_texture_from_wgpu_texture(
                            &self.gpu.device,
                            &slot.view,
                            wgpu::FilterMode::Linear,
                            self.ids[i],
                        );
                        self.slots[i] = slot;
                    }
                } else {
                    let slot = self.gpu.new_slot(size);
                    let id = self.renderer.write().register_native_texture(&self.gpu.device, &slot.view, wgpu::FilterMode::Linear);
                    self.slots.push(slot);
                    self.ids.push(id);
                }
            }
            self.gpu.dispatch(latents, proj, &mut self.slots[..b]);
            self.ids
                .iter()
                .take(b)
                .map(|id| PreviewImage { texture: *id, size: Vec2::new(size.0 as f32, size.1 as f32) })
                .collect()
        }
    }
}
