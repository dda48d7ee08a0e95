//! The `parameters` text of a text-to-image PNG, in AUTOMATIC1111's layout: the prompt, a
//! `Negative prompt:` line when there is one, then one line of `Key: value` settings.
//!
//! ```text
//! a cat sleeping on a sunny windowsill
//! Negative prompt: blurry
//! Steps: 20, Sampler: Flow DPM-Solver++ (order 2), CFG scale: 4.5, Seed: 0, Size: 1024x1024, Model: Efficient-Large-Model/Sana_600M_1024px_diffusers, Batch: 1
//! ```
//!
//! A batch of several prompts keeps the first as the prompt text (what other tools show) and
//! all of them, in order, as a JSON list under `Prompts`.

use super::error::{ImagingError, Result};
use super::params::{parse_number, quote_if_needed, split_fields, strip_prefix_ci, Img2Img};

#[derive(Debug, Clone, PartialEq)]
pub struct PromptParams {
    /// One per image of the batch.
    pub prompts: Vec<String>,
    pub negative_prompt: String,
    pub steps: usize,
    pub sampler: String,
    pub guidance: f32,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub model: String,
    /// The complex human instruction was prepended (the pipelines' default).
    pub instruction: bool,
    /// Image-to-image: where the run started from.
    pub img2img: Option<Img2Img>,
}

fn err(message: &str) -> ImagingError {
    ImagingError::Parameters(message.to_owned())
}

impl PromptParams {
    pub fn to_parameters_text(&self) -> String {
        let mut fields = vec![
            ("Steps", self.steps.to_string()),
            ("Sampler", quote_if_needed(&self.sampler)),
            ("CFG scale", format!("{:?}", self.guidance)),
            ("Seed", self.seed.to_string()),
            ("Size", format!("{}x{}", self.width, self.height)),
            ("Model", quote_if_needed(&self.model)),
            ("Batch", self.prompts.len().to_string()),
        ];
        if self.prompts.len() > 1 {
            // A JSON list, itself quoted as one value so that its commas do not split the line.
            fields.push(("Prompts", quote_if_needed(&serde_json::to_string(&self.prompts).unwrap_or_default())));
        }
        if !self.instruction {
            fields.push(("Instruction", "off".into()));
        }
        fields.extend(Img2Img::fields(&self.img2img));
        let line: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let mut text = self.prompts.first().cloned().unwrap_or_default();
        if !self.negative_prompt.is_empty() {
            text.push_str("\nNegative prompt: ");
            text.push_str(&self.negative_prompt);
        }
        text.push('\n');
        text.push_str(&line.join(", "));
        text
    }

    /// Reads what [`Self::to_parameters_text`] writes (and A1111's own text-to-image chunks):
    /// the settings are the last line that starts with `Steps:`; above it the prompt, and the
    /// negative prompt from its `Negative prompt:` line on.
    pub fn parse_parameters_text(text: &str) -> Result<Self> {
        let lines: Vec<&str> = text.lines().collect();
        let settings = lines.iter().rposition(|l| strip_prefix_ci(l.trim(), "steps:").is_some()).ok_or_else(|| err("no \"Steps: …\" line"))?;
        let fields = split_fields(lines[settings].trim())?;
        let field = |key: &str| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str());
        let need = |key: &str| field(key).ok_or_else(|| err(&format!("missing \"{key}\"")));
        let above = &lines[..settings];
        let neg_at = above.iter().position(|l| strip_prefix_ci(l, "negative prompt:").is_some());
        let prompt = above[..neg_at.unwrap_or(above.len())].join("\n");
        let negative_prompt = match neg_at {
            Some(i) => {
                let mut rest: Vec<&str> = above[i..].to_vec();
                rest[0] = strip_prefix_ci(rest[0], "negative prompt:").unwrap_or("");
                rest.join("\n")
            }
            None => String::new(),
        };
        let prompts = match field("Prompts") {
            Some(list) => serde_json::from_str::<Vec<String>>(list).map_err(|e| err(&format!("bad Prompts list: {e}")))?,
            None => vec![prompt],
        };
        let (width, height) = match field("Size") {
            Some(size) => {
                let (w, h) = size.split_once(['x', 'X', '×']).ok_or_else(|| err(&format!("Size {size:?} is not WIDTHxHEIGHT")))?;
                (parse_number(w, "Size")?, parse_number(h, "Size")?)
            }
            None => (0, 0),
        };
        Ok(Self {
            prompts,
            negative_prompt,
            steps: parse_number(need("Steps")?, "Steps")?,
            sampler: field("Sampler").unwrap_or_default().to_owned(),
            guidance: parse_number(need("CFG scale")?, "CFG scale")?,
            seed: parse_number(need("Seed")?, "Seed")?,
            width,
            height,
            model: field("Model").unwrap_or_default().to_owned(),
            instruction: !field("Instruction").is_some_and(|v| v.eq_ignore_ascii_case("off")),
            img2img: Img2Img::parse(&fields)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_awkward_prompts() {
        let p = PromptParams {
            prompts: vec!["a café, \"Sana\" ☕\nsecond line".into(), "Steps: not a setting".into()],
            negative_prompt: "blurry, low quality".into(),
            steps: 20,
            sampler: "Flow DPM-Solver++ (order 2)".into(),
            guidance: 4.5,
            seed: 42,
            width: 1024,
            height: 768,
            model: "Efficient-Large-Model/Sana_600M_1024px_diffusers".into(),
            instruction: false,
            img2img: Some(Img2Img { source: "photo, 2.png".into(), strength: 0.65 }),
        };
        assert_eq!(PromptParams::parse_parameters_text(&p.to_parameters_text()).unwrap(), p);
        let single = PromptParams { prompts: vec!["one".into()], negative_prompt: String::new(), instruction: true, ..p };
        assert_eq!(PromptParams::parse_parameters_text(&single.to_parameters_text()).unwrap(), single);
    }
}
