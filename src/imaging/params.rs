//! Generation settings stored in a PNG's `parameters` text chunk, in the human-readable layout
//! AUTOMATIC1111's web UI made common: image viewers and "PNG info" tools show it as is, and the
//! app can read it back to regenerate the same image.
//!
//! ```text
//! class: 279 (Arctic fox), 333 (hamster)
//! Steps: 30, Sampler: DPM-Solver (order 3, fast), CFG scale: 6.0, Seed: 0, Model: dc-ae-f64c128-in-1.0 + uvit-2b, Batch: 2
//! ```
//!
//! Values are written bare when that is unambiguous. A value containing a comma outside balanced
//! parentheses, a colon, a double quote, a line break or unbalanced parentheses is written as a
//! JSON string (`Model: "a, b"`), as A1111 does, so every string round-trips.

use super::error::{ImagingError, Result};

/// The PNG text key under which [`GenerationParams::to_parameters_text`] is stored.
pub const PARAMETERS_KEY: &str = "parameters";

/// Everything needed to reproduce a class-conditional generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// ImageNet class ids (1000 = unconditional), one per image or cycled over the batch.
    pub classes: Vec<u32>,
    /// Classifier-free guidance scale.
    pub guidance: f32,
    pub steps: usize,
    pub seed: u64,
    /// Model identifier, e.g. the autoencoder and diffusion model names.
    pub model: String,
    /// Human-readable sampler description.
    pub sampler: String,
    /// Number of images generated together.
    pub batch: usize,
    /// Image-to-image: where the run started from.
    pub img2img: Option<Img2Img>,
}

/// The source of an image-to-image run, as the PNG records it (A1111's `Denoising strength`).
#[derive(Debug, Clone, PartialEq)]
pub struct Img2Img {
    /// The source image's file name (or "history item 3").
    pub source: String,
    pub strength: f32,
}

impl Img2Img {
    pub(super) fn fields(this: &Option<Self>) -> Vec<(&'static str, String)> {
        match this {
            Some(i) => vec![("Denoising strength", format!("{:?}", i.strength)), ("Source", quote_if_needed(&i.source))],
            None => Vec::new(),
        }
    }

    pub(super) fn parse(fields: &[(String, String)]) -> Result<Option<Self>> {
        let field = |key: &str| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str());
        match field("Denoising strength") {
            Some(v) => Ok(Some(Img2Img { source: field("Source").unwrap_or_default().to_owned(), strength: parse_number(v, "Denoising strength")? })),
            None => Ok(None),
        }
    }
}

impl GenerationParams {
    /// The `parameters` text: a class line with names for people, then one `Key: value` line.
    pub fn to_parameters_text(&self) -> String {
        let classes: Vec<String> = self.classes.iter().map(|&id| class_entry(id)).collect();
        let fields = [
            ("Steps", self.steps.to_string()),
            ("Sampler", quote_if_needed(&self.sampler)),
            // `{:?}` prints the shortest text that parses back to the same f32, always with a dot.
            ("CFG scale", format!("{:?}", self.guidance)),
            ("Seed", self.seed.to_string()),
            ("Model", quote_if_needed(&self.model)),
            ("Batch", self.batch.to_string()),
        ];
        let mut fields = fields.to_vec();
        fields.extend(Img2Img::fields(&self.img2img));
        let line: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("class: {}\n{}", classes.join(", "), line.join(", "))
    }

    /// Reads text written by [`Self::to_parameters_text`] (keys case-insensitive, unknown keys
    /// ignored, `Batch` defaulting to 1). Class names in parentheses are informative only: the
    /// numeric ids are what count.
    pub fn parse_parameters_text(text: &str) -> Result<Self> {
        let mut class_line = None;
        let mut fields = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(rest) =
                strip_prefix_ci(line, "classes:").or_else(|| strip_prefix_ci(line, "class:"))
            {
                class_line = Some(rest);
            } else if strip_prefix_ci(line, "steps:").is_some() {
                fields = split_fields(line)?;
            }
        }
        let class_line = class_line.ok_or_else(|| err("no \"class:\" line"))?;
        if fields.is_empty() {
            return Err(err("no \"Steps: …\" line"));
        }
        let field = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| err(&format!("missing \"{key}\"")))
        };
        Ok(Self {
            classes: parse_classes(class_line)?,
            guidance: parse_number(field("CFG scale")?, "CFG scale")?,
            steps: parse_number(field("Steps")?, "Steps")?,
            seed: parse_number(field("Seed")?, "Seed")?,
            model: field("Model")?.to_owned(),
            sampler: field("Sampler")?.to_owned(),
            batch: match field("Batch") {
                Ok(v) => parse_number(v, "Batch")?,
                Err(_) => 1,
            },
            img2img: Img2Img::parse(&fields)?,
        })
    }
}

fn err(message: &str) -> ImagingError {
    ImagingError::Parameters(message.to_owned())
}

pub(super) fn strip_prefix_ci<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let head = line.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| line[prefix.len()..].trim())
}

fn class_entry(id: u32) -> String {
    match crate::labels::name(id) {
        Some(name) => format!("{id} ({name})"),
        None if id as usize == crate::labels::NUM_CLASSES => format!("{id} (unconditional)"),
        None => id.to_string(),
    }
}

fn parse_classes(line: &str) -> Result<Vec<u32>> {
    if line.is_empty() {
        return Ok(Vec::new());
    }
    split_top_level(line)?
        .into_iter()
        .map(|entry| {
            let digits: String = entry.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().map_err(|_| {
                err(&format!(
                    "class entry {entry:?} does not start with a class id"
                ))
            })
        })
        .collect()
}

pub(super) fn parse_number<T: std::str::FromStr>(value: &str, key: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| err(&format!("{key} value {value:?} is not a valid number")))
}

/// Whether `value` can be written bare and still be split correctly by [`split_top_level`].
fn needs_quotes(value: &str) -> bool {
    let mut depth = 0i32;
    for c in value.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => return true,
            ':' | '"' | '\n' | '\r' => return true,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    depth != 0 || value.trim() != value
}

pub(super) fn quote_if_needed(value: &str) -> String {
    if needs_quotes(value) {
        serde_json::to_string(value).unwrap_or_else(|_| format!("{value:?}"))
    } else {
        value.to_owned()
    }
}

/// Splits at commas that are outside parentheses and outside double-quoted strings.
fn split_top_level(line: &str) -> Result<Vec<String>> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let (mut depth, mut in_quotes, mut escaped) = (0i32, false, false);
    for c in line.chars() {
        if in_quotes {
            current.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth <= 0 => {
                parts.push(std::mem::take(&mut current).trim().to_owned());
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if in_quotes {
        return Err(err("unterminated quoted value"));
    }
    parts.push(current.trim().to_owned());
    Ok(parts)
}

/// `Key: value, Key: "quoted, value"` into pairs, unquoting JSON strings.
pub(super) fn split_fields(line: &str) -> Result<Vec<(String, String)>> {
    split_top_level(line)?
        .into_iter()
        .map(|part| {
            let (key, value) = part
                .split_once(':')
                .ok_or_else(|| err(&format!("{part:?} is not \"Key: value\"")))?;
            let value = value.trim();
            let value = if value.starts_with('"') {
                serde_json::from_str::<String>(value)
                    .map_err(|e| err(&format!("bad quoted value {value}: {e}")))?
            } else {
                value.to_owned()
            };
            Ok((key.trim().to_owned(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_decisions() {
        assert!(!needs_quotes("DPM-Solver (order 3, fast)"));
        assert!(needs_quotes("a, b"));
        assert!(needs_quotes("x: y"));
        assert!(needs_quotes("(unbalanced"));
        assert!(needs_quotes("closed) (open"));
        assert!(!needs_quotes("dc-ae-f32c32-in-1.0 + uvit-h"));
    }

    #[test]
    fn split_respects_parentheses_and_quotes() {
        let parts = split_top_level(r#"A: 1, B: x (p, q), C: "r, \"s\"", D: 2"#).unwrap();
        assert_eq!(parts, ["A: 1", "B: x (p, q)", r#"C: "r, \"s\"""#, "D: 2"]);
    }
}
