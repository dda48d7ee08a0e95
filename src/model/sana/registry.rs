//! What a published SANA pipeline is (all under `Efficient-Large-Model/` on the Hugging Face
//! Hub), so that benchmarks can build its architecture with random weights. The list itself is
//! in [`crate::model::registry`].

use super::transformer::SanaTransformerConfig;
use crate::model::sana::layout::PipelineKind;

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

/// The registered pipeline called `name` (with or without the owner).
pub fn registered_sana(name: &str) -> Option<&'static RegisteredSana> {
    let base = name.trim().trim_start_matches(OWNER).trim_start_matches('/');
    crate::model::registry::sana_models().find(|m| m.name.eq_ignore_ascii_case(base))
}
