//! From prompt text to the text embeddings SANA's transformer attends to, exactly as diffusers'
//! `SanaPipeline.encode_prompt` / `_get_gemma_prompt_embeds` build them (`clean_caption=False`):
//!
//! 1. the prompt is lower-cased and stripped (Python's `str.lower().strip()`);
//! 2. the complex human instruction (CHI) is prepended, and the pair tokenised together with
//!    `<bos>`, right-padded / truncated to `n_chi + max_sequence_length − 2` tokens, where `n_chi`
//!    counts the instruction's own tokens with `<bos>`;
//! 3. Gemma-2 runs over the whole sequence (the prompt tokens see the instruction through causal
//!    attention, which is why it is never encoded alone);
//! 4. rows `[0] + the last max_sequence_length − 1` of the hidden states and the mask are kept.
//!
//! The negative prompt skips the instruction and is padded to `max_sequence_length`.

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use super::text_encoder::Gemma2;

/// The default `complex_human_instruction` of diffusers' `SanaPipeline.__call__` (a model input:
/// reproduced verbatim, the pipeline joins it with newlines).
pub const DEFAULT_COMPLEX_HUMAN_INSTRUCTION: [&str; 8] = [
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:",
    "User Prompt: ",
];

/// The default instruction as the pipeline uses it: the lines joined with `\n` (1057 characters,
/// ending in `"User Prompt: "`).
pub fn default_instruction() -> String {
    DEFAULT_COMPLEX_HUMAN_INSTRUCTION.join("\n")
}

/// The pipelines' default `max_sequence_length`.
pub const DEFAULT_MAX_SEQUENCE_LENGTH: usize = 300;

/// Bounds of `max_sequence_length`: the row selection needs two rows, and the attention matrices
/// grow with the square of the length (Gemma-2 was trained up to 8192 positions).
pub const MIN_SEQUENCE_LENGTH: usize = 2;
pub const MAX_SEQUENCE_LENGTH: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot read the tokenizer file {path}: {source}. Point the loader at the model's tokenizer/tokenizer.json (download the model again if it is missing)")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{origin} is not a usable tokenizer.json ({reason}); the file may be truncated or corrupt: delete it and download the model again")]
    Parse { origin: String, reason: String },
    #[error("{origin} has no `{token}` token; SANA needs Gemma-2's tokenizer (tokenizer/tokenizer.json of the SANA repository)")]
    MissingToken { origin: String, token: String },
    #[error("the tokenizer could not encode the prompt: {reason}")]
    Encode { reason: String },
    #[error("max_sequence_length {value} is out of range: use {MIN_SEQUENCE_LENGTH}..={MAX_SEQUENCE_LENGTH} (SANA uses 300)")]
    SequenceLength { value: usize },
    #[error("the tokenizer produced token id {id}, but the text encoder has only {vocab} embeddings: the tokenizer and the text encoder belong to different models")]
    VocabMismatch { id: u32, vocab: usize },
    #[error("the prompt needs {tokens} positions, more than the text encoder's max_position_embeddings {max}: lower max_sequence_length")]
    TooLong { tokens: usize, max: usize },
    #[error("no prompt to encode")]
    NoPrompts,
}

/// One prompt, tokenised as the pipeline feeds it to Gemma-2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// What the encoder gets: `n_chi + L − 2` ids with the instruction, `L` without
    /// (`L` = max_sequence_length); `<bos>` first, `<pad>` after the text.
    pub ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding; same length as `ids`.
    pub mask: Vec<u32>,
    /// Rows of the encoder output the pipeline keeps (`L` of them): `[0]` + the last `L − 1` with
    /// the instruction, `0..L` without.
    pub keep: Vec<usize>,
    /// Prompt tokens lost to truncation (0 if it fit).
    pub dropped_tokens: usize,
}

impl TokenizedPrompt {
    /// `ids` at the `keep` rows (what the kept hidden states were computed for).
    pub fn kept_ids(&self) -> Vec<u32> {
        self.keep.iter().filter_map(|&i| self.ids.get(i).copied()).collect()
    }

    pub fn kept_mask(&self) -> Vec<u32> {
        self.keep.iter().filter_map(|&i| self.mask.get(i).copied()).collect()
    }
}

/// Gemma-2's tokenizer with the pipeline's conventions: `<bos>` in front, no `<eos>`, right
/// padding with `<pad>` (GemmaTokenizerFast with `add_bos_token=True, add_eos_token=False`).
pub struct SanaTokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
    pad: u32,
}

impl std::fmt::Debug for SanaTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SanaTokenizer").field("bos", &self.bos).field("pad", &self.pad).finish_non_exhaustive()
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a panic".into())
}

impl SanaTokenizer {
    /// Reads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, PromptError> {
        let bytes = std::fs::read(path).map_err(|source| PromptError::Io { path: path.to_path_buf(), source })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses the contents of a `tokenizer.json`; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, PromptError> {
        let parse_err = |reason: String| PromptError::Parse { origin: origin.to_string(), reason };
        // The tokenizers crate panics on some malformed files (its decoder deserializer calls
        // `expect`); a damaged download must be an error, never a crash.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|p| parse_err(format!("the tokenizers library failed on it ({}); the file is damaged: download it again", panic_text(p.as_ref()))))?;
        let mut inner = parsed.map_err(|e| parse_err(e.to_string()))?;
        // Truncation and padding are done here, the pipeline's way; settings stored in the file
        // would otherwise apply behind our back.
        inner.with_truncation(None).map_err(|e| parse_err(e.to_string()))?;
        inner.with_padding(None);
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| PromptError::MissingToken { origin: origin.to_string(), token: token.to_string() })
        };
        let (bos, pad) = (id("<bos>")?, id("<pad>")?);
        Ok(Self { inner, bos, pad })
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of `text` as is (no lower-casing), with `<bos>` in front when `bos`.
    pub fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>, PromptError> {
        let enc = self.inner.encode(text, false).map_err(|e| PromptError::Encode { reason: e.to_string() })?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if bos {
            ids.push(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The instruction (`None`: none) followed by the lower-cased, stripped prompt, tokenised with
    /// `<bos>`, right-padded / truncated.
    pub fn positive(&self, prompt: &str, instruction: Option<&str>, max_sequence_length: usize) -> Result<TokenizedPrompt, PromptError> {
        check_length(max_sequence_length)?;
        let msl = max_sequence_length;
        let prompt = preprocess(prompt);
        let Some(chi) = instruction else {
            return self.padded(&prompt, msl, (0..msl).collect());
        };
        let n_chi = self.encode(chi, true)?.len();
        let len = n_chi + msl - 2;
        // select_index = [0] + range(−(L−1), 0)
        let keep = std::iter::once(0).chain(len + 1 - msl..len).collect();
        self.padded(&format!("{chi}{prompt}"), len, keep)
    }

    /// The negative prompt: lower-cased and stripped, no instruction, padded to
    /// `max_sequence_length`, every row kept.
    pub fn negative(&self, prompt: &str, max_sequence_length: usize) -> Result<TokenizedPrompt, PromptError> {
        self.positive(prompt, None, max_sequence_length)
    }

    fn padded(&self, text: &str, len: usize, keep: Vec<usize>) -> Result<TokenizedPrompt, PromptError> {
        let mut ids = self.encode(text, true)?;
        let dropped_tokens = ids.len().saturating_sub(len);
        ids.truncate(len);
        let real = ids.len();
        ids.resize(len, self.pad);
        let mask = (0..len).map(|i| u32::from(i < real)).collect();
        Ok(TokenizedPrompt { ids, mask, keep, dropped_tokens })
    }
}

fn check_length(msl: usize) -> Result<(), PromptError> {
    if (MIN_SEQUENCE_LENGTH..=MAX_SEQUENCE_LENGTH).contains(&msl) {
        Ok(())
    } else {
        Err(PromptError::SequenceLength { value: msl })
    }
}

/// Python's `text.lower().strip()`. Rust's `to_lowercase` applies the same full Unicode mapping
/// (final sigma included); `str.strip()` also strips the separators U+001C–U+001F, which Rust's
/// `trim` keeps.
pub fn preprocess(text: &str) -> String {
    text.to_lowercase().trim_matches(is_python_space).to_string()
}

fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Tokenizer and encoder together; what the pipeline calls.
pub struct TextEncoder<B: Backend> {
    pub tokenizer: SanaTokenizer,
    pub model: Gemma2<B>,
}

/// Encoded prompts, one row each.
#[derive(Debug, Clone)]
pub struct PromptEmbeds<B: Backend> {
    /// `[n, L, hidden]`.
    pub embeds: Tensor<B, 3>,
    /// `[n, L]`, 1 for real tokens.
    pub mask: Tensor<B, 2, Int>,
    /// Per row, the prompt tokens lost to truncation.
    pub dropped_tokens: Vec<usize>,
}

impl<B: Backend> TextEncoder<B> {
    pub fn new(tokenizer: SanaTokenizer, model: Gemma2<B>) -> Self {
        Self { tokenizer, model }
    }

    /// Each prompt encoded on its own (batch 1 per Gemma pass, like the reference's per-prompt
    /// rows), rows concatenated. `instruction`: the CHI text ([`default_instruction`] for the
    /// pipelines' default), or `None` for none. `progress(done, total)` counts layers over all
    /// prompts; returning false cancels -> `Ok(None)`.
    pub fn encode_prompts(
        &self,
        prompts: &[&str],
        instruction: Option<&str>,
        max_sequence_length: usize,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Option<PromptEmbeds<B>>, PromptError> {
        if prompts.is_empty() {
            return Err(PromptError::NoPrompts);
        }
        // Tokenise everything first, so that a bad prompt fails before any Gemma pass.
        let tokenized = prompts
            .iter()
            .map(|p| self.tokenizer.positive(p, instruction, max_sequence_length))
            .collect::<Result<Vec<_>, _>>()?;
        self.run(&tokenized, progress)
    }

    /// The negative prompt (CFG's unconditional row), one row.
    pub fn encode_negative(
        &self,
        prompt: &str,
        max_sequence_length: usize,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Option<PromptEmbeds<B>>, PromptError> {
        let t = self.tokenizer.negative(prompt, max_sequence_length)?;
        self.run(std::slice::from_ref(&t), progress)
    }

    /// Gemma on each tokenised prompt, the kept rows of each, concatenated.
    pub fn run(&self, tokenized: &[TokenizedPrompt], progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<Option<PromptEmbeds<B>>, PromptError> {
        if tokenized.is_empty() {
            return Err(PromptError::NoPrompts);
        }
        let cfg = self.model.config();
        for t in tokenized {
            if let Some(&id) = t.ids.iter().find(|&&id| id as usize >= cfg.vocab_size) {
                return Err(PromptError::VocabMismatch { id, vocab: cfg.vocab_size });
            }
            if t.ids.len() > cfg.max_position_embeddings {
                return Err(PromptError::TooLong { tokens: t.ids.len(), max: cfg.max_position_embeddings });
            }
        }
        let device = self.model.device();
        let layers = cfg.num_hidden_layers;
        let total = layers * tokenized.len();
        let (mut embeds, mut masks) = (Vec::new(), Vec::new());
        for (p, t) in tokenized.iter().enumerate() {
            let len = t.ids.len();
            let ints = |v: &[u32]| {
                let v: Vec<i64> = v.iter().map(|&x| i64::from(x)).collect();
                Tensor::<B, 2, Int>::from_data(TensorData::new(v, [1, len]), &device)
            };
            let (ids, mask) = (ints(&t.ids), ints(&t.mask));
            let mut inner = |done: usize, _: usize| progress(p * layers + done, total);
            let Some(hidden) = self.model.forward(ids, mask.clone(), &mut inner) else {
                return Ok(None);
            };
            let keep: Vec<i64> = t.keep.iter().map(|&i| i as i64).collect();
            let keep = Tensor::<B, 1, Int>::from_data(TensorData::new(keep, [t.keep.len()]), &device);
            embeds.push(hidden.select(1, keep.clone())); // [1, L, D]
            masks.push(mask.select(1, keep)); // [1, L]
        }
        Ok(Some(PromptEmbeds {
            embeds: Tensor::cat(embeds, 0),
            mask: Tensor::cat(masks, 0),
            dropped_tokens: tokenized.iter().map(|t| t.dropped_tokens).collect(),
        }))
    }
}
