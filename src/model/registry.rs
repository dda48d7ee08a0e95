//! The one registry of published models: every name the app, the CLI and the model code know,
//! with its kind, its download size, its autoencoder's scaling factor and its default settings.
//!
//! Each family keeps the architecture details it needs ([`RegisteredUvit`], [`RegisteredSana`]);
//! this table is the only place a published model is listed, so the Models view, `dcae bench`
//! and `DcaeConfig::published` cannot disagree about what exists.

use super::sana::registry::{RegisteredSana, SanaArch};
use super::uvit::{ClassNet, RegisteredUvit, UvitSize};
use crate::model::sana::layout::PipelineKind;

/// MIT HAN Lab: the DC-AE autoencoders and the UViT zoo.
pub const HAN_LAB: &str = "mit-han-lab";
/// NVlabs' SANA pipelines in the diffusers layout.
pub const SANA_OWNER: &str = super::sana::registry::OWNER;

/// What a published model is, with what its family needs to build it without its files.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spec {
    Autoencoder { scaling_factor: f32 },
    /// Class-conditional UViT / USiT / DiT (ImageNet classes) with its DC-AE in one checkpoint.
    ClassToImage(RegisteredUvit),
    /// A SANA / Sprint text-to-image pipeline (diffusers layout: text encoder, transformer,
    /// DC-AE, scheduler).
    TextToImage(RegisteredSana),
}

/// The settings a generation starts from until the user changes them (the model's own files
/// win where they say otherwise, e.g. a pipeline's scheduler config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    pub steps: usize,
    pub guidance: f32,
    /// Square side in pixels at the training resolution.
    pub resolution: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pretrained {
    pub owner: &'static str,
    pub name: &'static str,
    pub about: &'static str,
    /// Download size per component (name, bytes), from the checkpoints' manifests; one entry
    /// `("weights", n)` for single-file models, `None` where nobody measured it.
    pub components: Option<&'static [(&'static str, u64)]>,
    pub spec: Spec,
    /// Shown in the app's Models view (the whole UViT zoo stays CLI-only; the app is built
    /// around the best one).
    pub in_app: bool,
}

impl Pretrained {
    pub fn repo(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    pub fn approx_bytes(&self) -> Option<u64> {
        self.components.map(|c| c.iter().map(|(_, b)| b).sum())
    }

    pub fn is_generator(&self) -> bool {
        !matches!(self.spec, Spec::Autoencoder { .. })
    }

    /// The scaling factor of the latent space the model lives in.
    pub fn scaling_factor(&self) -> f32 {
        match self.spec {
            Spec::Autoencoder { scaling_factor } => scaling_factor,
            Spec::ClassToImage(u) => u.scaling_factor,
            Spec::TextToImage(_) => SANA_SCALING_FACTOR,
        }
    }

    /// The name of the DC-AE it encodes and decodes with (itself for an autoencoder).
    pub fn autoencoder(&self) -> &'static str {
        match self.spec {
            Spec::Autoencoder { .. } => self.name,
            Spec::ClassToImage(u) => u.autoencoder,
            Spec::TextToImage(_) => "dc-ae-f32c32-sana-1.1",
        }
    }

    pub fn defaults(&self) -> Option<Defaults> {
        match self.spec {
            Spec::Autoencoder { .. } => None,
            // The whole zoo is trained at 512 px. Steps: the original's evaluation settings
            // (DPM-Solver 30, ADM respaced to 250, the ODE's 250-point grid). Guidance: the
            // README's FID settings for DiT (1.3) and USiT (1.2 H, 1.15 2B); the UViTs keep
            // the stronger 6.0 the app has always shown them with.
            Spec::ClassToImage(u) => Some(match u.net {
                ClassNet::Uvit(_) => Defaults { steps: 30, guidance: 6.0, resolution: 512 },
                ClassNet::DitXl => Defaults { steps: 250, guidance: 1.3, resolution: 512 },
                ClassNet::Usit(UvitSize::TwoB) => Defaults { steps: 250, guidance: 1.15, resolution: 512 },
                ClassNet::Usit(_) => Defaults { steps: 250, guidance: 1.2, resolution: 512 },
            }),
            // diffusers' SanaPipeline / SanaSprintPipeline call defaults.
            Spec::TextToImage(s) => Some(match s.kind {
                PipelineKind::Sana => Defaults { steps: 20, guidance: 4.5, resolution: s.sample_size * 32 },
                PipelineKind::Sprint => Defaults { steps: 2, guidance: 4.5, resolution: s.sample_size * 32 },
            }),
        }
    }
}

/// `vae/config.json`'s scaling factor in every SANA pipeline (dc-ae-f32c32-sana).
pub const SANA_SCALING_FACTOR: f32 = 0.41407;

// Component sizes from the checkpoints' key / shape / dtype manifests (tests/fixtures/manifests/sana): elements × bytes of the stored dtype.
const GEMMA: (&str, u64) = ("text encoder (Gemma-2-2B, bf16)", 5_229_000_000);
const SANA_VAE: (&str, u64) = ("autoencoder", 1_249_000_000);

const fn ae(name: &'static str, scaling_factor: f32, about: &'static str, bytes: Option<&'static [(&'static str, u64)]>) -> Pretrained {
    Pretrained { owner: HAN_LAB, name, about, components: bytes, spec: Spec::Autoencoder { scaling_factor }, in_app: true }
}

const fn uvit(name: &'static str, autoencoder: &'static str, scaling_factor: f32, size: UvitSize, latent_channels: usize, input_size: usize) -> Pretrained {
    class(name, autoencoder, scaling_factor, ClassNet::Uvit(size), latent_channels, input_size, "class-conditional UViT, ImageNet 512 px")
}

const fn class(name: &'static str, autoencoder: &'static str, scaling_factor: f32, net: ClassNet, latent_channels: usize, input_size: usize, about: &'static str) -> Pretrained {
    Pretrained {
        owner: HAN_LAB,
        name,
        about,
        components: None,
        spec: Spec::ClassToImage(RegisteredUvit { name, autoencoder, scaling_factor, net, latent_channels, input_size }),
        in_app: false,
    }
}

/// A DiT / USiT on f32c32-in (their checkpoints: the autoencoder's 323,369,275 f32 values plus
/// the backbone's, from `tests/fixtures/manifests`).
const fn f32_zoo(name: &'static str, net: ClassNet, about: &'static str, bytes: &'static [(&'static str, u64)]) -> Pretrained {
    in_app(Pretrained { components: Some(bytes), ..class(name, "dc-ae-f32c32-in-1.0", 0.3189, net, 32, 16, about) })
}

const DIT_XL_BYTES: &[(&str, u64)] = &[("weights (fp32)", 4 * (323_369_275 + 675_184_960))];
const USIT_H_BYTES: &[(&str, u64)] = &[("weights (fp32)", 4 * (323_369_275 + 500_868_896))];
const USIT_2B_BYTES: &[(&str, u64)] = &[("weights (fp32)", 4 * (323_369_275 + 1_580_396_576))];

const fn sana(
    name: &'static str,
    about: &'static str,
    kind: PipelineKind,
    arch: SanaArch,
    sample_size: usize,
    components: &'static [(&'static str, u64)],
) -> Pretrained {
    Pretrained {
        owner: SANA_OWNER,
        name,
        about,
        components: Some(components),
        spec: Spec::TextToImage(RegisteredSana { name, kind, arch, sample_size, interpolation_scale: None, flow_shift: 3.0 }),
        in_app: false,
    }
}

/// The same entry with other SANA details (2K / 4K position embeddings, 4K's flow shift).
const fn sana_with(p: Pretrained, interpolation_scale: Option<f64>, flow_shift: f64) -> Pretrained {
    match p.spec {
        Spec::TextToImage(s) => Pretrained { spec: Spec::TextToImage(RegisteredSana { interpolation_scale, flow_shift, ..s }), ..p },
        _ => p,
    }
}

const fn in_app(p: Pretrained) -> Pretrained {
    Pretrained { in_app: true, ..p }
}

const T600: &[(&str, u64)] = &[("transformer (fp32)", 2_367_000_000), GEMMA, SANA_VAE];
const T1600: &[(&str, u64)] = &[("transformer (fp32)", 6_418_000_000), GEMMA, SANA_VAE];
const T1600_BF16: &[(&str, u64)] = &[("transformer (bf16)", 3_209_000_000), GEMMA, SANA_VAE];
const T15_48: &[(&str, u64)] = &[("transformer (bf16)", 9_444_000_000), GEMMA, SANA_VAE];
const SPRINT06: &[(&str, u64)] = &[("transformer (bf16)", 1_187_000_000), GEMMA, SANA_VAE];
const SPRINT16: &[(&str, u64)] = &[("transformer (bf16)", 3_221_000_000), GEMMA, SANA_VAE];

use PipelineKind::{Sana as T2I, Sprint};

/// Every published model, in the order the Models view lists them.
pub const PRETRAINED: &[Pretrained] = &[
    in_app(Pretrained {
        about: "UViT-H on f64c128, ImageNet 512 px, FID 2.66",
        components: Some(&[("weights (fp32)", 4_710_000_000)]),
        ..uvit("dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k", "dc-ae-f64c128-in-1.0", 0.2889, UvitSize::H, 128, 8)
    }),
    f32_zoo("dc-ae-f32c32-in-1.0-usit-2b-in-512px", ClassNet::Usit(UvitSize::TwoB), "USiT-2B on f32c32, ImageNet 512 px, FID 1.72", USIT_2B_BYTES),
    f32_zoo("dc-ae-f32c32-in-1.0-usit-h-in-512px", ClassNet::Usit(UvitSize::H), "USiT-H on f32c32, ImageNet 512 px, FID 1.89", USIT_H_BYTES),
    f32_zoo("dc-ae-f32c32-in-1.0-dit-xl-in-512px-trainbs1024", ClassNet::DitXl, "DiT-XL on f32c32 (batch 1024), ImageNet 512 px, FID 2.41", DIT_XL_BYTES),
    f32_zoo("dc-ae-f32c32-in-1.0-dit-xl-in-512px", ClassNet::DitXl, "DiT-XL on f32c32, ImageNet 512 px, FID 2.84", DIT_XL_BYTES),
    in_app(sana("Sana_600M_512px_diffusers", "SANA 600M, 512 px", T2I, SanaArch::Sana600M, 16, T600)),
    in_app(sana("Sana_600M_1024px_diffusers", "SANA 600M, 1024 px", T2I, SanaArch::Sana600M, 32, T600)),
    in_app(sana("Sana_1600M_1024px_diffusers", "SANA 1.6B, 1024 px", T2I, SanaArch::Sana1600M, 32, T1600)),
    in_app(sana("SANA1.5_1.6B_1024px_diffusers", "SANA 1.5 1.6B, 1024 px", T2I, SanaArch::Sana15 { layers: 20 }, 32, T1600_BF16)),
    in_app(sana("Sana_Sprint_0.6B_1024px_diffusers", "SANA-Sprint 0.6B, 1–4 steps, 1024 px", Sprint, SanaArch::Sana600M, 32, SPRINT06)),
    in_app(sana("Sana_Sprint_1.6B_1024px_diffusers", "SANA-Sprint 1.6B, 1–4 steps, 1024 px", Sprint, SanaArch::Sana1600M, 32, SPRINT16)),
    sana("Sana_1600M_512px_diffusers", "SANA 1.6B, 512 px", T2I, SanaArch::Sana1600M, 16, T1600),
    sana("Sana_1600M_512px_MultiLing_diffusers", "SANA 1.6B, 512 px, multilingual", T2I, SanaArch::Sana1600M, 16, T1600),
    sana("Sana_1600M_1024px_MultiLing_diffusers", "SANA 1.6B, 1024 px, multilingual", T2I, SanaArch::Sana1600M, 32, T1600),
    sana("Sana_1600M_1024px_BF16_diffusers", "SANA 1.6B, 1024 px, bf16", T2I, SanaArch::Sana1600M, 32, T1600_BF16),
    sana_with(sana("Sana_1600M_2Kpx_BF16_diffusers", "SANA 1.6B, 2K", T2I, SanaArch::Sana1600M, 64, T1600_BF16), Some(1.0), 3.0),
    sana_with(sana("Sana_1600M_4Kpx_BF16_diffusers", "SANA 1.6B, 4K", T2I, SanaArch::Sana1600M, 128, T1600_BF16), Some(2.0), 6.0),
    sana("SANA1.5_4.8B_1024px_diffusers", "SANA 1.5 4.8B, 1024 px", T2I, SanaArch::Sana15 { layers: 60 }, 32, T15_48),
    ae("dc-ae-f32c32-in-1.0", 0.3189, "f32c32, ImageNet", Some(&[("weights (fp32)", 1_290_000_000)])),
    ae("dc-ae-f64c128-in-1.0", 0.2889, "f64c128, ImageNet", Some(&[("weights (fp32)", 2_710_000_000)])),
    ae("dc-ae-f128c512-in-1.0", 0.4883, "f128c512, ImageNet", None),
    ae("dc-ae-f32c32-mix-1.0", 0.4552, "f32c32, mixed data", Some(&[("weights (fp32)", 1_290_000_000)])),
    ae("dc-ae-f64c128-mix-1.0", 0.4538, "f64c128, mixed data", Some(&[("weights (fp32)", 2_710_000_000)])),
    ae("dc-ae-f128c512-mix-1.0", 0.3620, "f128c512, mixed data", None),
    ae("dc-ae-f32c32-sana-1.0", 0.41407, "f32c32, SANA's autoencoder", Some(&[SANA_VAE])),
    ae("dc-ae-f32c32-sana-1.1", 0.41407, "f32c32, SANA 1.1 (better decoder)", Some(&[SANA_VAE])),
    uvit("dc-ae-f32c32-in-1.0-uvit-s-in-512px", "dc-ae-f32c32-in-1.0", 0.3189, UvitSize::S, 32, 16),
    uvit("dc-ae-f32c32-in-1.0-uvit-h-in-512px", "dc-ae-f32c32-in-1.0", 0.3189, UvitSize::H, 32, 16),
    uvit("dc-ae-f32c32-in-1.0-uvit-2b-in-512px", "dc-ae-f32c32-in-1.0", 0.3189, UvitSize::TwoB, 32, 16),
    uvit("dc-ae-f64c128-in-1.0-uvit-h-in-512px", "dc-ae-f64c128-in-1.0", 0.2889, UvitSize::H, 128, 8),
    uvit("dc-ae-f64c128-in-1.0-uvit-2b-in-512px", "dc-ae-f64c128-in-1.0", 0.2889, UvitSize::TwoB, 128, 8),
    uvit("dc-ae-f64c128-in-1.0-uvit-2b-in-512px-train2000k", "dc-ae-f64c128-in-1.0", 0.2889, UvitSize::TwoB, 128, 8),
];

/// The class-to-image model the app loads when nothing else is chosen.
pub const DEFAULT_CLASS_MODEL: &str = "dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k";

/// The entry called `name`: the bare name or `owner/name`, any case; an autoencoder also under
/// its `-diffusers` repo name.
pub fn find(name: &str) -> Option<&'static Pretrained> {
    let name = name.trim();
    let (owner, base) = match name.split_once('/') {
        Some((o, b)) => (Some(o), b),
        None => (None, name),
    };
    let base_ae = base.strip_suffix("-diffusers").unwrap_or(base);
    PRETRAINED.iter().find(|p| {
        owner.is_none_or(|o| o.eq_ignore_ascii_case(p.owner))
            && (p.name.eq_ignore_ascii_case(base) || (matches!(p.spec, Spec::Autoencoder { .. }) && p.name.eq_ignore_ascii_case(base_ae)))
    })
}

pub fn autoencoders() -> impl Iterator<Item = &'static Pretrained> {
    PRETRAINED.iter().filter(|p| matches!(p.spec, Spec::Autoencoder { .. }))
}

pub fn uvit_models() -> impl Iterator<Item = &'static RegisteredUvit> {
    PRETRAINED.iter().filter_map(|p| match &p.spec {
        Spec::ClassToImage(u) => Some(u),
        _ => None,
    })
}

pub fn sana_models() -> impl Iterator<Item = &'static RegisteredSana> {
    PRETRAINED.iter().filter_map(|p| match &p.spec {
        Spec::TextToImage(s) => Some(s),
        _ => None,
    })
}

/// The DC-AE a published diffusion model was trained on, for any name that starts with a
/// registered autoencoder's name and names a diffusion backbone (the whole efficientvit zoo,
/// DiT and USiT included, which share the autoencoders).
pub fn diffusion_autoencoder(name: &str) -> Option<&'static str> {
    let base = name.trim().trim_start_matches("mit-han-lab/");
    if let Some(p) = find(base).filter(|p| p.is_generator()) {
        return Some(p.autoencoder());
    }
    if !base.contains("-uvit-") && !base.contains("-dit-") && !base.contains("-usit-") {
        return None;
    }
    autoencoders().map(|p| p.name).find(|n| base.starts_with(n))
}
