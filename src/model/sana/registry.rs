//! The published SANA pipelines (all under `Efficient-Large-Model/` on the Hugging Face Hub):
//! what each one is, so that benchmarks can build its architecture with random weights and the
//! UI can list it before anything is downloaded.

use super::transformer::SanaTransformerConfig;
use crate::weights::pipeline::PipelineKind;

/// The owner of every published SANA repo.
pub const OWNER: &str = "Efficient-Large-Model";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanaArch {
    /// 28 blocks, 1152 wide.
    Sana600M,
    /// 20 blocks, 2240 wide.
    Sana1600M,
    /// SANA 1.5: the 1.6B block with qk-norm, 20 or 60 layers.
    Sana15 { layers: usize },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegisteredSana {
    /// Repo name under [`OWNER`].
    pub name: &'static str,
    pub kind: PipelineKind,
    pub arch: SanaArch,
    /// Latent side at the training resolution (×32 px).
    pub sample_size: usize,
    /// The 2K / 4K models' position-embedding scale.
    pub interpolation_scale: Option<f64>,
    /// DPM-Solver's flow shift (3, or 6 for 4K).
    pub flow_shift: f64,
}

impl RegisteredSana {
    pub fn repo(&self) -> String {
        format!("{OWNER}/{}", self.name)
    }

    pub fn transformer_config(&self) -> SanaTransformerConfig {
        let base = match self.arch {
            SanaArch::Sana600M => SanaTransformerConfig::sana_600m(self.sample_size),
            SanaArch::Sana1600M => SanaTransformerConfig::sana_1600m(self.sample_size),
            SanaArch::Sana15 { layers } => SanaTransformerConfig::sana15(layers),
        };
        let cfg = SanaTransformerConfig { interpolation_scale: self.interpolation_scale, ..base };
        match self.kind {
            PipelineKind::Sprint => SanaTransformerConfig::sprint(cfg),
            PipelineKind::Sana => cfg,
        }
    }
}

const fn sana(name: &'static str, arch: SanaArch, sample_size: usize) -> RegisteredSana {
    RegisteredSana { name, kind: PipelineKind::Sana, arch, sample_size, interpolation_scale: None, flow_shift: 3.0 }
}

pub const SANA_MODELS: &[RegisteredSana] = &[
    sana("Sana_600M_512px_diffusers", SanaArch::Sana600M, 16),
    sana("Sana_600M_1024px_diffusers", SanaArch::Sana600M, 32),
    sana("Sana_1600M_512px_diffusers", SanaArch::Sana1600M, 16),
    sana("Sana_1600M_512px_MultiLing_diffusers", SanaArch::Sana1600M, 16),
    sana("Sana_1600M_1024px_diffusers", SanaArch::Sana1600M, 32),
    sana("Sana_1600M_1024px_MultiLing_diffusers", SanaArch::Sana1600M, 32),
    sana("Sana_1600M_1024px_BF16_diffusers", SanaArch::Sana1600M, 32),
    RegisteredSana { interpolation_scale: Some(1.0), ..sana("Sana_1600M_2Kpx_BF16_diffusers", SanaArch::Sana1600M, 64) },
    RegisteredSana { interpolation_scale: Some(2.0), flow_shift: 6.0, ..sana("Sana_1600M_4Kpx_BF16_diffusers", SanaArch::Sana1600M, 128) },
    sana("SANA1.5_1.6B_1024px_diffusers", SanaArch::Sana15 { layers: 20 }, 32),
    sana("SANA1.5_4.8B_1024px_diffusers", SanaArch::Sana15 { layers: 60 }, 32),
    RegisteredSana { kind: PipelineKind::Sprint, ..sana("Sana_Sprint_0.6B_1024px_diffusers", SanaArch::Sana600M, 32) },
    RegisteredSana { kind: PipelineKind::Sprint, ..sana("Sana_Sprint_1.6B_1024px_diffusers", SanaArch::Sana1600M, 32) },
];

/// The registered pipeline called `name` (with or without the owner).
pub fn registered_sana(name: &str) -> Option<&'static RegisteredSana> {
    let base = name.trim().trim_start_matches(OWNER).trim_start_matches('/');
    SANA_MODELS.iter().find(|m| m.name.eq_ignore_ascii_case(base))
}
