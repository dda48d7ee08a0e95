//! The parameters of any image the app makes: a class-conditional generation
//! ([`GenerationParams`]) or a text-to-image one ([`PromptParams`]). One PNG `parameters` chunk
//! holds either; which one is told by its first line (`class: …` or the prompt).

use super::error::Result;
use super::params::{strip_prefix_ci, GenerationParams};
use super::prompt_params::PromptParams;

#[derive(Debug, Clone, PartialEq)]
pub enum ImageParams {
    Class(GenerationParams),
    Text(PromptParams),
}

impl ImageParams {
    pub fn to_parameters_text(&self) -> String {
        match self {
            ImageParams::Class(p) => p.to_parameters_text(),
            ImageParams::Text(p) => p.to_parameters_text(),
        }
    }

    /// A first line `class: <ids>` that reads as class ids makes it a class-conditional chunk;
    /// anything else with a `Steps:` line is A1111's text-to-image layout (so a prompt that
    /// happens to start with "class:" stays a prompt).
    pub fn parse_parameters_text(text: &str) -> Result<Self> {
        let first = text.lines().next().unwrap_or("").trim();
        if strip_prefix_ci(first, "class:").is_some() || strip_prefix_ci(first, "classes:").is_some() {
            if let Ok(p) = GenerationParams::parse_parameters_text(text) {
                return Ok(ImageParams::Class(p));
            }
        }
        PromptParams::parse_parameters_text(text).map(ImageParams::Text)
    }

    pub fn class(&self) -> Option<&GenerationParams> {
        match self {
            ImageParams::Class(p) => Some(p),
            ImageParams::Text(_) => None,
        }
    }

    pub fn text(&self) -> Option<&PromptParams> {
        match self {
            ImageParams::Text(p) => Some(p),
            ImageParams::Class(_) => None,
        }
    }

    pub fn seed(&self) -> u64 {
        match self {
            ImageParams::Class(p) => p.seed,
            ImageParams::Text(p) => p.seed,
        }
    }

    pub fn steps(&self) -> usize {
        match self {
            ImageParams::Class(p) => p.steps,
            ImageParams::Text(p) => p.steps,
        }
    }

    pub fn guidance(&self) -> f32 {
        match self {
            ImageParams::Class(p) => p.guidance,
            ImageParams::Text(p) => p.guidance,
        }
    }

    pub fn model(&self) -> &str {
        match self {
            ImageParams::Class(p) => &p.model,
            ImageParams::Text(p) => &p.model,
        }
    }

    pub fn sampler(&self) -> &str {
        match self {
            ImageParams::Class(p) => &p.sampler,
            ImageParams::Text(p) => &p.sampler,
        }
    }

    pub fn set_sampler(&mut self, sampler: String) {
        match self {
            ImageParams::Class(p) => p.sampler = sampler,
            ImageParams::Text(p) => p.sampler = sampler,
        }
    }

    pub fn batch(&self) -> usize {
        match self {
            ImageParams::Class(p) => p.batch.max(1),
            ImageParams::Text(p) => p.prompts.len().max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_kind_round_trips_and_is_told_apart() {
        let class = ImageParams::Class(GenerationParams {
            classes: vec![207],
            guidance: 6.0,
            steps: 30,
            seed: 1,
            model: "m".into(),
            sampler: "s".into(),
            batch: 1,
            img2img: None,
        });
        let text = ImageParams::Text(PromptParams {
            prompts: vec!["class: not a class line, just a prompt".into()],
            negative_prompt: "blurry".into(),
            steps: 20,
            sampler: "Flow DPM-Solver++ (order 2)".into(),
            guidance: 4.5,
            seed: 7,
            width: 512,
            height: 384,
            model: "Sana".into(),
            instruction: true,
            img2img: None,
        });
        assert_eq!(ImageParams::parse_parameters_text(&class.to_parameters_text()).unwrap(), class);
        // A prompt that starts like a class line (but names no class ids) stays a prompt.
        assert_eq!(ImageParams::parse_parameters_text(&text.to_parameters_text()).unwrap(), text);
    }
}
