//! Property tests of every parser of data a user or a download can supply: arbitrary bytes, and
//! mutations of the real fixture files (bit flips, truncations, huge or negative numbers, NaN,
//! deep nesting, wrong types). Each must return `Ok` or `Err` — never panic, never take long —
//! and an `Ok` config must describe a model of a plausible size, checked before anyone builds it.
//!
//! Time budget: the cases below add up to about 1,900 parser calls; in the dev profile on two
//! cores the whole module runs in well under 60 s (most cases take microseconds; the tokenizer
//! and image cases a few milliseconds). The per-property `cases` are what keeps it bounded in CI:
//! raise them locally (PROPTEST_CASES does not override an explicit config) to fuzz longer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

use super::common::fixture;
use dcae::imaging::{
    encode_png_with_text, load_rgb_from_bytes, read_png_text, read_png_text_from_bytes, GenerationParams, ImageLimits,
    PromptParams,
};
use dcae::model::diffusion::DiffusionConfig;
use dcae::model::sana::prompt::{default_instruction, preprocess, SanaTokenizer};
use dcae::model::sana::text_encoder::Gemma2Config;
use dcae::model::sana::transformer::SanaTransformerConfig;
use dcae::model::DcaeConfig;
use dcae::model::sana::flow::FlowSchedulerConfig;
use dcae::model::load::{dcae_config_from_json, python_json, read_json};
use dcae::model::sana::layout::{pipeline_kind, resolve_pipeline_dir};
use dcae::weights::tensor_file::{read_f32, read_nchw};
use dcae::weights::Checkpoint;

/// One parser call may take this long; far more than any legitimate small input needs, so only
/// a hang or a runaway allocation trips it.
const SLOW: Duration = Duration::from_secs(5);

/// Runs `f`, turning a panic or a slow call into a test failure that names the parser and the
/// input (proptest then shrinks it and prints the smallest one).
fn guarded<T>(what: &str, input: &dyn std::fmt::Debug, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let start = Instant::now();
    let out = catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        TestCaseError::fail(format!("{what} panicked ({msg}) on input {input:?}"))
    })?;
    let took = start.elapsed();
    if took > SLOW {
        return Err(TestCaseError::fail(format!("{what} took {took:?} on input {input:?}")));
    }
    Ok(out)
}

/// Short inputs are printed whole; long ones by their length and ends.
struct Shown<'a>(&'a [u8]);

impl std::fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = String::from_utf8_lossy(self.0);
        if s.len() <= 600 {
            write!(f, "{s:?}")
        } else {
            let head: String = s.chars().take(300).collect();
            let tail: String = s.chars().rev().take(200).collect::<Vec<_>>().into_iter().rev().collect();
            write!(f, "{} bytes: {head:?} … {tail:?}", self.0.len())
        }
    }
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// JSON mutations
// ---------------------------------------------------------------------------------------------

/// Raw JSON text put in place of one value: numbers no config holds, Python's non-JSON numbers,
/// wrong types, deep nesting and long lists.
fn replacements() -> Vec<String> {
    let mut r: Vec<String> = [
        "1e300", "-1e300", "1e999", "18446744073709551615", "18446744073709551616", "9223372036854775807",
        "4294967296", "2147483648", "1048576", "65536", "65535", "-1", "0", "1", "2", "3", "0.5", "-0.0", "1e-300",
        "NaN", "Infinity", "-Infinity", "null", "true", "false", "\"\"", "\"x\"", "\"rms_norm\"", "\"EfficientViTBlock\"",
        "[]", "{}", "[0]", "[-1]", "[1e300]", "[18446744073709551615]", "[[]]", "[null]", "[\"x\"]", "{\"a\": 1}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    r.push(format!("{}0{}", "[".repeat(200), "]".repeat(200)));
    r.push(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)));
    r.push(format!("[{}]", vec!["65536"; 64].join(",")));
    r.push(format!("[{}]", vec!["0"; 10_000].join(",")));
    r.push(format!("\"{}\"", "a".repeat(100_000)));
    r
}

/// Every path to a value in `v` (object keys and array indices), the root included.
fn paths(v: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                prefix.push(Seg::Key(k.clone()));
                paths(x, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                prefix.push(Seg::Index(i));
                paths(x, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

fn at<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, s| match s {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::Index(i) => v.get_mut(*i),
    })
}

/// One edit of a JSON document.
#[derive(Clone, Debug)]
enum JsonEdit {
    /// Replaces the value at path number `.0` (modulo their count) by replacement `.1`.
    Replace(usize, usize),
    /// Removes the value at that path from its object or list.
    Remove(usize),
    /// Adds a key (a known one of the other model kinds, or junk) with a replacement value.
    AddKey(usize, usize),
}

const EXTRA_KEYS: &[&str] = &[
    "model_name", "autoencoder", "uvit", "sampler", "scaling_factor", "in_channels", "latent_channels", "attention_head_dim",
    "encoder_qkv_multiscales", "decoder_qkv_multiscales", "out_channels", "interpolation_scale", "sliding_window", "layer_types",
    "rope_scaling", "rope_parameters", "weight_map", "_class_name", "\u{0}", "",
];

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        6 => (any::<usize>(), any::<usize>()).prop_map(|(p, r)| JsonEdit::Replace(p, r)),
        1 => any::<usize>().prop_map(JsonEdit::Remove),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(k, r)| JsonEdit::AddKey(k, r)),
    ]
}

/// Applies the edits; the replacements go in as raw text, so NaN, 1e999 and 100k-deep nesting
/// reach the parser as a file would carry them.
fn mutate_json(original: &Value, edits: &[JsonEdit]) -> String {
    let repl = replacements();
    let mut v = original.clone();
    let mut raw: Vec<String> = Vec::new();
    let mut marker = |r: usize| {
        raw.push(repl[r % repl.len()].clone());
        Value::String(format!("\u{1}RAW{}\u{1}", raw.len() - 1))
    };
    for e in edits {
        let mut all = Vec::new();
        paths(&v, &mut Vec::new(), &mut all);
        match *e {
            JsonEdit::Replace(p, r) => {
                let path = &all[p % all.len()];
                let m = marker(r);
                if let Some(slot) = at(&mut v, path) {
                    *slot = m;
                }
            }
            JsonEdit::Remove(p) => {
                let path = &all[p % all.len()];
                if let Some((last, parent)) = path.split_last() {
                    match (at(&mut v, parent), last) {
                        (Some(Value::Object(o)), Seg::Key(k)) => {
                            o.remove(k);
                        }
                        (Some(Value::Array(a)), Seg::Index(i)) if *i < a.len() => {
                            a.remove(*i);
                        }
                        _ => {}
                    }
                }
            }
            JsonEdit::AddKey(k, r) => {
                let m = marker(r);
                if let Some(o) = v.as_object_mut() {
                    o.insert(EXTRA_KEYS[k % EXTRA_KEYS.len()].to_string(), m);
                }
            }
        }
    }
    let mut text = serde_json::to_string_pretty(&v).unwrap_or_default();
    for (i, r) in raw.iter().enumerate() {
        text = text.replace(&format!("\"\\u0001RAW{i}\\u0001\""), r);
    }
    text
}

/// Text-level damage on top: a truncation and/or flipped bits.
#[derive(Clone, Debug)]
struct ByteDamage {
    truncate: Option<usize>,
    flips: Vec<(usize, u8)>,
}

fn byte_damage() -> impl Strategy<Value = ByteDamage> {
    (proptest::option::weighted(0.2, any::<usize>()), proptest::collection::vec((any::<usize>(), 0u8..8), 0..3))
        .prop_map(|(truncate, flips)| ByteDamage { truncate, flips })
}

fn damage(mut bytes: Vec<u8>, d: &ByteDamage, within: usize) -> Vec<u8> {
    let within = within.min(bytes.len());
    if within > 0 {
        for &(at, bit) in &d.flips {
            bytes[at % within] ^= 1 << bit;
        }
    }
    if let Some(t) = d.truncate {
        bytes.truncate(t % (bytes.len() + 1));
    }
    bytes
}

/// The JSON a config parser is given: python_json first, as read_json does.
fn parse_json(bytes: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(bytes).ok()?;
    serde_json::from_str(&python_json(text)).ok()
}

// ---------------------------------------------------------------------------------------------
// Size bounds an accepted config must satisfy (independent of the parsers' own arithmetic)
// ---------------------------------------------------------------------------------------------

/// 2^34 parameters (64 GiB of f32): the largest published model here is about 5 billion.
const MAX_PLAUSIBLE_PARAMS: u128 = 1 << 34;

fn dcae_size_ok(c: &DcaeConfig) -> Result<(), String> {
    let (e, d) = (&c.encoder, &c.decoder);
    let mut params: u128 = (c.in_channels as u128 + c.latent_channels as u128) * 9 * 2 * *e.width_list.iter().max().unwrap_or(&0) as u128;
    for (widths, depths, blocks) in [(&e.width_list, &e.depth_list, &e.block_type), (&d.width_list, &d.depth_list, &d.block_type)] {
        for ((&w, &depth), b) in widths.iter().zip(depths).zip(blocks) {
            let w = w as u128;
            let kernels: u128 = match b {
                dcae::model::config::BlockType::EfficientVit { scales } => scales.iter().map(|&k| 3 * w * (k as u128).pow(2) + 9 * w * w).sum(),
                _ => 0,
            };
            // A block is at most a few dozen w² (ResBlock 18, EViT about 16 plus its scales),
            // and each stage has a resampling block of at most 36 w².
            params += (depth as u128) * (32 * w * w + kernels) + 36 * w * w;
        }
    }
    if params > MAX_PLAUSIBLE_PARAMS || c.in_channels > 64 {
        return Err(format!("accepted a DC-AE of about {params} parameters ({} input channels): {c:?}", c.in_channels));
    }
    Ok(())
}

fn uvit_size_ok(c: &DiffusionConfig) -> Result<(), String> {
    dcae_size_ok(&c.autoencoder)?;
    let Some(u) = c.uvit() else { return Ok(()) };
    let (d, m) = (u.hidden_size as u128, (u.hidden_size as f64 * u.mlp_ratio) as u128);
    let tokens = (u.input_size as u128 / u.patch_size.max(1) as u128).pow(2) + 2;
    let params = (u.depth as u128 + 1) * (6 * d * d + 2 * d * m) + tokens * d + (u.num_classes as u128 + 1) * d
        + 2 * d * (u.in_channels as u128) * (u.patch_size as u128).pow(2);
    if params > MAX_PLAUSIBLE_PARAMS || tokens > 1 << 20 {
        return Err(format!("accepted a UViT of about {params} parameters and {tokens} tokens: {u:?}"));
    }
    Ok(())
}

fn sana_size_ok(c: &SanaTransformerConfig) -> Result<(), String> {
    let (d, x, cap, f) = (
        (c.num_attention_heads as u128) * (c.attention_head_dim as u128),
        (c.num_cross_attention_heads as u128) * (c.cross_attention_head_dim as u128),
        c.caption_channels as u128,
        (c.mlp_ratio * (c.num_attention_heads as f64) * (c.attention_head_dim as f64)) as u128,
    );
    let block = 4 * d * d + 4 * d * x + 3 * d * f;
    let params = (c.num_layers as u128) * block + cap * d + 2 * d * (c.in_channels as u128) + 8 * d * d;
    if params > MAX_PLAUSIBLE_PARAMS || c.in_channels > 4096 || c.sample_size > 4096 {
        return Err(format!("accepted a SANA transformer of about {params} parameters: {c:?}"));
    }
    Ok(())
}

fn gemma_size_ok(c: &Gemma2Config) -> Result<(), String> {
    let (d, m) = (c.hidden_size as u128, c.intermediate_size as u128);
    let (q, kv) = ((c.num_attention_heads as u128) * (c.head_dim as u128), (c.num_key_value_heads as u128) * (c.head_dim as u128));
    let params = (c.vocab_size as u128) * d + (c.num_hidden_layers as u128) * (d * (2 * q + 2 * kv) + 3 * d * m);
    // Gemma-2 comes up to 27B; its own bound is 2^36.
    if params > 1 << 36 {
        return Err(format!("accepted a Gemma-2 of about {params} parameters: {c:?}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Config parsers
// ---------------------------------------------------------------------------------------------

const AE_CONFIGS: &[&str] = &[
    "ae-tiny-in/config.json",
    "ae-tiny-in/diffusers/config.json",
    "ae-tiny-sana/config.json",
    "ae-tiny-sana/diffusers/config.json",
    "ae-wide/config.json",
    "sana-tiny/vae/config.json",
    "sana-tiny/sprint/vae/config.json",
    "uvit-tiny/config.json",
];

/// Every config parser on one document; the bound checks of accepted configs included.
fn all_config_parsers(bytes: &[u8]) -> Result<(), TestCaseError> {
    let shown = Shown(bytes);
    let Some(v) = guarded("python_json + serde_json", &shown, || parse_json(bytes))? else {
        return Ok(());
    };
    let check = |r: Result<(), String>| r.map_err(TestCaseError::fail);
    if let Ok(c) = guarded("DcaeConfig::from_json", &shown, || DcaeConfig::from_json(&v, "fuzz"))? {
        check(dcae_size_ok(&c))?;
    }
    if let Ok(c) = guarded("dcae_config_from_json", &shown, || dcae_config_from_json(&v, "fuzz"))? {
        check(dcae_size_ok(&c))?;
        // Asked for before validation (model scan); must not panic either.
        guarded("DcaeConfig::factor", &shown, || c.factor())?;
    }
    if let Ok(c) = guarded("DiffusionConfig::from_json", &shown, || DiffusionConfig::from_json(&v, "fuzz"))? {
        check(uvit_size_ok(&c))?;
        guarded("DiffusionConfig::image_size", &shown, || c.image_size())?;
    }
    if let Ok(c) = guarded("SanaTransformerConfig::from_json", &shown, || SanaTransformerConfig::from_json(&v))? {
        if guarded("SanaTransformerConfig::validate", &shown, || c.validate())?.is_ok() {
            check(sana_size_ok(&c))?;
            guarded("SanaTransformerConfig::num_params", &shown, || c.num_params())?;
        }
    }
    if let Ok(c) = guarded("Gemma2Config::from_json", &shown, || Gemma2Config::from_json(&v))? {
        if guarded("Gemma2Config::validate", &shown, || c.validate())?.is_ok() {
            check(gemma_size_ok(&c))?;
        }
    }
    guarded("FlowSchedulerConfig::from_json", &shown, || FlowSchedulerConfig::from_json(&v))?.ok();
    Ok(())
}

proptest! {
    // 64 cases × 6 parsers: about 2 s.
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_parsers_take_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        all_config_parsers(&bytes)?;
    }

    #[test]
    fn config_parsers_take_arbitrary_text(text in "\\PC{0,300}") {
        all_config_parsers(text.as_bytes())?;
    }
}

proptest! {
    // 384 cases, each through every config parser: about 10 s.
    #![proptest_config(ProptestConfig { cases: 384, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_parsers_take_mutated_configs(
        file in 0usize..64,
        edits in proptest::collection::vec(json_edit(), 1..4),
        dmg in byte_damage(),
    ) {
        let files: Vec<&str> = AE_CONFIGS.iter().copied().chain([
            "sana-tiny/transformer/config.json",
            "sana-tiny/sprint/transformer/config.json",
            "sana-tiny/text_encoder/config.json",
            "sana-tiny/scheduler/scheduler_config.json",
            "sana-tiny/scheduler_flow_euler/scheduler_config.json",
            "sana-tiny/sprint/scheduler/scheduler_config.json",
        ]).collect();
        let rel = files[file % files.len()];
        let original: Value = serde_json::from_str(&python_json(&String::from_utf8_lossy(&read(rel)))).map_err(|e| TestCaseError::fail(format!("{rel}: {e}")))?;
        // Edits inside the autoencoder block of a combined config too, not only at its top.
        let text = mutate_json(&original, &edits);
        let bytes = damage(text.into_bytes(), &dmg, usize::MAX);
        all_config_parsers(&bytes).map_err(|e| TestCaseError::fail(format!("{rel} mutated by {edits:?} {dmg:?}: {e}")))?;
    }
}

/// The real configs themselves parse: the mutations above start from valid inputs.
#[test]
fn fixture_configs_are_accepted() {
    for rel in AE_CONFIGS {
        let v = read_json(&fixture(rel)).unwrap();
        let c = dcae_config_from_json(&v, "fixture").unwrap_or_else(|e| panic!("{rel}: {e}"));
        dcae_size_ok(&c).unwrap();
    }
    let v = read_json(&fixture("uvit-tiny/config.json")).unwrap();
    uvit_size_ok(&DiffusionConfig::from_json(&v, "uvit-tiny").unwrap()).unwrap();
    for rel in ["sana-tiny/transformer/config.json", "sana-tiny/sprint/transformer/config.json"] {
        let c = SanaTransformerConfig::from_json(&read_json(&fixture(rel)).unwrap()).unwrap();
        c.validate().unwrap();
        sana_size_ok(&c).unwrap();
    }
    let g = Gemma2Config::from_json(&read_json(&fixture("sana-tiny/text_encoder/config.json")).unwrap()).unwrap();
    g.validate().unwrap();
    gemma_size_ok(&g).unwrap();
    // The published registry is within the bounds as well.
    for name in dcae::model::registry::autoencoders().map(|p| p.name) {
        dcae_size_ok(&DcaeConfig::published(name).unwrap()).unwrap();
    }
    gemma_size_ok(&Gemma2Config::gemma2_2b()).unwrap();
    sana_size_ok(&SanaTransformerConfig::sana15(60)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// model_index.json, shard indexes, safetensors, tensor files
// ---------------------------------------------------------------------------------------------

fn model_index_parsers(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    std::fs::write(dir.join("model_index.json"), bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let shown = Shown(bytes);
    guarded("pipeline_kind", &shown, || pipeline_kind(dir))?.ok();
    guarded("resolve_pipeline_dir", &shown, || resolve_pipeline_dir(dir, Some("fp16")))?.ok();
    Ok(())
}

/// A `*.safetensors.index.json` beside a copy of one real shard.
fn index_parsers(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let index = dir.join("model.safetensors.index.json");
    std::fs::write(&index, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    guarded("Checkpoint::open_index", &Shown(bytes), || Checkpoint::open_index(&index).map(|c| c.keys().count()))?.ok();
    Ok(())
}

/// Every safetensors reader on one file: the checkpoint (and a read of each of its tensors, as a
/// load would), and the tensor-file functions of the CLI.
fn safetensors_parsers(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = dir.join("fuzz.safetensors");
    std::fs::write(&path, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let shown = Shown(&bytes[..bytes.len().min(4096)]);
    guarded("Checkpoint::open + read_f32", &shown, || {
        if let Ok(c) = Checkpoint::open(&path) {
            let keys: Vec<String> = c.keys().map(str::to_string).collect();
            for k in keys {
                let _ = c.read_f32(&k);
            }
        }
    })?;
    for name in ["latent", "recon", "image", "noise", "x"] {
        guarded("tensor_file::read_f32", &shown, || read_f32(&path, name))?.ok();
        guarded("tensor_file::read_nchw", &shown, || read_nchw(&path, name))?.ok();
    }
    Ok(())
}

/// A safetensors file whose header is `header` (raw text) with length prefix `len`.
fn safetensors_bytes(header: &[u8], len: u64, data: &[u8]) -> Vec<u8> {
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

fn split_safetensors(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), bytes[8 + n..].to_vec())
}

/// A small real tensor file, as `dcae encode` writes them.
fn small_tensor_file() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    let v: Vec<f32> = (0..2 * 4 * 3 * 3).map(|i| i as f32).collect();
    dcae::weights::tensor_file::write_f32(&p, &[("latent", &v, &[2, 4, 3, 3]), ("x", &v[..8], &[8])], &[("k", "v".into())]).unwrap();
    std::fs::read(p).unwrap()
}

const SAFETENSORS: &[&str] = &["uvit-tiny/expected.safetensors", "ae-tiny-in/expected.safetensors", "sana-tiny/text_encoder/model.bf16.safetensors"];

/// The length prefixes worth lying with.
const LENGTHS: &[u64] = &[0, 1, 7, 8, u64::MAX, u64::MAX - 7, 1 << 60, 1 << 32, (1 << 31) - 1, 100_000_000];

proptest! {
    // 96 cases: about 3 s (each writes and maps a file of at most a few hundred kB).
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_readers_take_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        header in "\\PC{0,200}",
        len in 0usize..16,
    ) {
        let dir = tempfile::tempdir().unwrap();
        safetensors_parsers(dir.path(), &bytes)?;
        // A plausible prefix, then junk: past the length check into the header parser.
        let claimed = LENGTHS.get(len).copied().unwrap_or(header.len() as u64);
        safetensors_parsers(dir.path(), &safetensors_bytes(header.as_bytes(), claimed, &bytes))?;
    }

    #[test]
    fn safetensors_readers_take_mutated_files(
        file in 0usize..4,
        edits in proptest::collection::vec(json_edit(), 0..3),
        dmg in byte_damage(),
        len in 0usize..24,
        header_only in any::<bool>(),
    ) {
        let original = match SAFETENSORS.get(file) {
            Some(rel) => read(rel),
            None => small_tensor_file(),
        };
        let (header, data) = split_safetensors(&original);
        let text = if edits.is_empty() { serde_json::to_string(&header).unwrap() } else { mutate_json(&header, &edits) };
        // Mostly the true length of the (edited) header; sometimes a lie.
        let claimed = LENGTHS.get(len).copied().unwrap_or(text.len() as u64);
        let bytes = safetensors_bytes(text.as_bytes(), claimed, &data);
        let within = if header_only { 8 + text.len() } else { usize::MAX };
        let bytes = damage(bytes, &dmg, within);
        let dir = tempfile::tempdir().unwrap();
        safetensors_parsers(dir.path(), &bytes)
            .map_err(|e| TestCaseError::fail(format!("file {file} edits {edits:?} {dmg:?} length {claimed}: {e}")))?;
    }

    #[test]
    fn shard_index_and_model_index_take_mutations(
        edits in proptest::collection::vec(json_edit(), 0..3),
        dmg in byte_damage(),
        arbitrary in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let shard = read("uvit-tiny/expected.safetensors");
        std::fs::write(dir.path().join("shard-1.safetensors"), &shard).unwrap();
        let (header, _) = split_safetensors(&shard);
        let map: serde_json::Map<String, Value> = header.as_object().unwrap().keys().filter(|k| *k != "__metadata__")
            .map(|k| (k.clone(), Value::from("shard-1.safetensors"))).collect();
        let index = serde_json::json!({"metadata": {"total_size": 1}, "weight_map": map});
        let bytes = damage(mutate_json(&index, &edits).into_bytes(), &dmg, usize::MAX);
        index_parsers(dir.path(), &bytes)?;
        index_parsers(dir.path(), &arbitrary)?;

        let pipe = tempfile::tempdir().unwrap();
        let model_index: Value = serde_json::from_slice(&read("sana-tiny/model_index.json")).unwrap();
        let bytes = damage(mutate_json(&model_index, &edits).into_bytes(), &dmg, usize::MAX);
        model_index_parsers(pipe.path(), &bytes)?;
        model_index_parsers(pipe.path(), &arbitrary)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Images, PNG text chunks, parameters
// ---------------------------------------------------------------------------------------------

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Recomputes every chunk's CRC, so mutations reach the chunk parsers instead of stopping at
/// the checksum.
fn fix_crcs(bytes: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= bytes.len()) else { return };
        let crc = crc32(&bytes[at + 4..end]);
        bytes[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

fn image_parsers(bytes: &[u8]) -> Result<(), TestCaseError> {
    let shown = Shown(&bytes[..bytes.len().min(256)]);
    guarded("load_rgb_from_bytes", &shown, || load_rgb_from_bytes(bytes, &ImageLimits::default()).map(|i| i.dimensions()))?.ok();
    if let Ok(entries) = guarded("read_png_text_from_bytes", &shown, || read_png_text_from_bytes(bytes))? {
        for (_, text) in entries {
            params_parsers(&text)?;
        }
    }
    Ok(())
}

fn params_parsers(text: &str) -> Result<(), TestCaseError> {
    guarded("GenerationParams::parse_parameters_text", &text, || GenerationParams::parse_parameters_text(text))?.ok();
    guarded("PromptParams::parse_parameters_text", &text, || PromptParams::parse_parameters_text(text))?.ok();
    Ok(())
}

fn generation_params() -> GenerationParams {
    GenerationParams {
        classes: vec![207, 360, 1000],
        guidance: 4.5,
        steps: 30,
        seed: 18446744073709551615,
        model: "dc-ae-f32c32-in-1.0-uvit-h-in-512px".into(),
        sampler: "DPM-Solver (order 3, fast)".into(),
        batch: 3,
        img2img: None,
    }
}

fn prompt_params() -> PromptParams {
    PromptParams {
        prompts: vec!["a cat, \"quoted\"\nnewline".into(), "ünïcödé 🐱".into()],
        negative_prompt: "blurry, Steps: 5".into(),
        steps: 20,
        sampler: "Flow DPM-Solver++ (order 2)".into(),
        guidance: 4.5,
        seed: 42,
        width: 1024,
        height: 1024,
        model: "Sana_600M".into(),
        instruction: false,
        img2img: None,
    }
}

/// PNGs to mutate: the fixtures, and small ones carrying both kinds of parameters text.
fn png_seeds() -> Vec<Vec<u8>> {
    let img = image::RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
    let g = generation_params().to_parameters_text();
    let p = prompt_params().to_parameters_text();
    vec![
        read("imaging/dmcrop_src_6x4.png"),
        read("imaging/pair_tiny_a.png"),
        read("ae-tiny-in/input_small.png"),
        encode_png_with_text(&img, &[("parameters", &g), ("Software", "dcae")]).unwrap(),
        encode_png_with_text(&img, &[("parameters", &p), ("Comment", "ünïcödé")]).unwrap(),
    ]
}

proptest! {
    // 192 cases: about 3 s.
    #![proptest_config(ProptestConfig { cases: 192, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn image_and_png_text_readers_take_mutated_pngs(
        seed in 0usize..5,
        dmg in byte_damage(),
        fix in any::<bool>(),
        junk in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = damage(png_seeds().swap_remove(seed), &dmg, usize::MAX);
        if fix {
            fix_crcs(&mut bytes);
        }
        image_parsers(&bytes).map_err(|e| TestCaseError::fail(format!("seed {seed} {dmg:?} crc fixed {fix}: {e}")))?;
        // Arbitrary bytes behind a PNG signature.
        let mut signed = b"\x89PNG\r\n\x1a\n".to_vec();
        signed.extend_from_slice(&junk);
        image_parsers(&signed)?;
        image_parsers(&junk)?;
    }
}

proptest! {
    // 256 cases × 2 parsers: under 1 s.
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parameters_text_parsers_take_arbitrary_text(text in "(\\PC|\\n|\\r|\\t|\\x00|,|:|\"|\\\\){0,400}") {
        params_parsers(&text)?;
    }

    #[test]
    fn parameters_text_parsers_take_mutated_text(
        which in any::<bool>(),
        at in any::<usize>(),
        insert in prop_oneof![
            proptest::sample::select(vec![
                "18446744073709551616", "-1", "NaN", "inf", "1e300", "\"", ",", "\n", ": ", "Steps: ", "class: ",
                "99999999999x99999999999", "[\"a\", ", "0x0",
            ]).prop_map(str::to_string),
            Just("x".repeat(10_000)),
            "\\PC{0,8}",
        ],
        cut in any::<usize>(),
    ) {
        let text = if which { generation_params().to_parameters_text() } else { prompt_params().to_parameters_text() };
        let mut chars: Vec<char> = text.chars().collect();
        let at = at % (chars.len() + 1);
        chars.splice(at..(at + cut % 4).min(chars.len()), insert.chars());
        let text: String = chars.into_iter().collect();
        params_parsers(&text)?;
    }
}

#[test]
fn fixture_pngs_and_parameters_read_back() {
    for (i, png) in png_seeds().iter().enumerate() {
        load_rgb_from_bytes(png, &ImageLimits::default()).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        read_png_text_from_bytes(png).unwrap();
    }
    assert_eq!(GenerationParams::parse_parameters_text(&generation_params().to_parameters_text()).unwrap(), generation_params());
    assert_eq!(PromptParams::parse_parameters_text(&prompt_params().to_parameters_text()).unwrap(), prompt_params());
    assert!(read_png_text(fixture("imaging/pair_tiny_a.png")).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Tokenizer and prompts
// ---------------------------------------------------------------------------------------------

fn tokenizer() -> &'static SanaTokenizer {
    static T: std::sync::OnceLock<SanaTokenizer> = std::sync::OnceLock::new();
    T.get_or_init(|| SanaTokenizer::from_bytes(&read("sana-tiny/tokenizer/tokenizer.json"), "fixture").unwrap())
}

fn prompt_parsers(prompt: &str) -> Result<(), TestCaseError> {
    let t = tokenizer();
    let chi = default_instruction();
    guarded("preprocess", &prompt, || preprocess(prompt))?;
    for msl in [2, 300] {
        if let Ok(p) = guarded("SanaTokenizer::positive", &prompt, || t.positive(prompt, Some(&chi), msl))? {
            prop_assert_eq!(p.keep.len(), msl);
            prop_assert!(p.keep.iter().all(|&i| i < p.ids.len()));
        }
        guarded("SanaTokenizer::positive (no instruction)", &prompt, || t.positive(prompt, None, msl))?.ok();
        guarded("SanaTokenizer::negative", &prompt, || t.negative(prompt, msl))?.ok();
    }
    for msl in [0, 1, 8193, usize::MAX] {
        prop_assert!(guarded("SanaTokenizer::positive (bad length)", &prompt, || t.positive(prompt, Some(&chi), msl))?.is_err());
    }
    Ok(())
}

proptest! {
    // 128 cases: about 2 s.
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prompts_any_utf8_and_control_characters(
        prompt in prop_oneof![
            any::<String>(),
            "[\\x00-\\x1f\\x7f-\\x{9f}\\x{200b}-\\x{200f}\\x{2028}\\x{2029}\\x{feff}\\x{fffd} a<>]{0,200}",
            "(<bos>|<pad>|<eos>|<unk>|<start_of_turn>|\\PC){0,100}",
        ],
    ) {
        prompt_parsers(&prompt)?;
    }
}

proptest! {
    // 48 cases, each parsing a 36 kB tokenizer.json: about 5 s.
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn tokenizer_json_takes_mutations(
        edits in proptest::collection::vec(json_edit(), 0..3),
        dmg in byte_damage(),
        arbitrary in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let original: Value = serde_json::from_slice(&read("sana-tiny/tokenizer/tokenizer.json")).unwrap();
        let text = if edits.is_empty() { serde_json::to_string(&original).unwrap() } else { mutate_json(&original, &edits) };
        let bytes = damage(text.into_bytes(), &dmg, usize::MAX);
        for b in [&bytes, &arbitrary] {
            let shown = Shown(&b[..b.len().min(2048)]);
            if let Ok(t) = guarded("SanaTokenizer::from_bytes", &shown, || SanaTokenizer::from_bytes(b, "fuzz"))? {
                guarded("SanaTokenizer::positive (mutated tokenizer)", &shown, || t.positive("a red cat", Some(&default_instruction()), 300))?.ok();
            }
        }
    }
}

/// A prompt of 100k characters (the size) is tokenised and truncated, not refused or
/// slow: one deterministic case, as the properties above keep their inputs short.
#[test]
fn hundred_thousand_character_prompts() {
    let t = tokenizer();
    for unit in ["a red cat ", "\u{0}\u{7}\u{1b}[31m\r\n", "🐱ünï ", "<bos><pad>"] {
        let prompt: String = unit.chars().cycle().take(100_000).collect();
        let start = Instant::now();
        let p = t.positive(&prompt, Some(&default_instruction()), 300).unwrap();
        assert_eq!(p.keep.len(), 300);
        assert!(p.dropped_tokens > 0 || unit.trim().is_empty(), "{unit:?}");
        t.negative(&prompt, 300).unwrap();
        assert!(start.elapsed() < Duration::from_secs(20), "{unit:?}: {:?}", start.elapsed());
    }
}

// ---------------------------------------------------------------------------------------------
// The hand-made bad files of tests/fixtures/bad/ through the CLI (see its README.md)
// ---------------------------------------------------------------------------------------------

/// Copies `from` (a fixture folder) into `to`, symlinking its files: the model folders of the
/// cases below differ from the fixture by one file only.
fn link_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            link_tree(&src, &dst);
        } else {
            std::os::unix::fs::symlink(&src, &dst).unwrap();
        }
    }
}

/// A model folder: `base` with `file` replaced by the bad file `bad`.
fn model_with(tmp: &Path, case: &str, base: &str, file: &str, bad: &str) -> std::path::PathBuf {
    let dir = tmp.join(case);
    link_tree(&fixture(base), &dir);
    let target = dir.join(file);
    let _ = std::fs::remove_file(&target);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(fixture(&format!("bad/{bad}")), &target).unwrap();
    dir
}

#[test]
fn bad_files_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ae = fixture("ae-tiny-in");
    let bad = |f: &str| fixture(&format!("bad/{f}"));
    let out_dir = t.join("out");
    let decode = |latent: std::path::PathBuf| -> Vec<std::ffi::OsString> {
        vec!["decode".into(), "--backend".into(), "cpu".into(), "--model".into(), ae.clone().into(), latent.into(), "--out-dir".into(), out_dir.clone().into()]
    };
    let reconstruct = |model: std::path::PathBuf, image: std::path::PathBuf| -> Vec<std::ffi::OsString> {
        vec!["reconstruct".into(), "--backend".into(), "cpu".into(), "--model".into(), model.into(), image.into()]
    };
    let generate = |model: std::path::PathBuf| -> Vec<std::ffi::OsString> {
        vec!["generate".into(), "--backend".into(), "cpu".into(), "--model".into(), model.into(), "--prompt".into(), "x".into(), "--steps".into(), "1".into(), "--out".into(), t.join("g.png").into()]
    };
    let good_png = fixture("ae-tiny-in/input.png");
    let weights = |bad_file: &str| model_with(t, bad_file, "ae-tiny-in", "model.safetensors", bad_file);
    let config = |bad_file: &str| model_with(t, bad_file, "ae-tiny-in/diffusers", "config.json", bad_file);
    let mut other_pipeline = t.join("other-pipeline");
    std::fs::create_dir_all(&other_pipeline).unwrap();
    std::fs::copy(bad("model_index-other-pipeline.json"), other_pipeline.join("model_index.json")).unwrap();
    other_pipeline = other_pipeline.canonicalize().unwrap();
    let traversal = model_with(t, "traversal", "sana-tiny", "transformer/diffusion_pytorch_model.safetensors.index.json", "index-path-traversal.json");

    // (bad file, command line, phrase the error must contain)
    let cases: Vec<(&str, Vec<std::ffi::OsString>, &str)> = vec![
        ("truncated.safetensors (latent)", decode(bad("truncated.safetensors")), "not a valid safetensors file"),
        ("header-2e60.safetensors (latent)", decode(bad("header-2e60.safetensors")), "not a valid safetensors file"),
        ("header-longer-than-file.safetensors (latent)", decode(bad("header-longer-than-file.safetensors")), "not a valid safetensors file"),
        ("header-not-json.safetensors (latent)", decode(bad("header-not-json.safetensors")), "not a valid safetensors file"),
        ("wrong-dtype.safetensors (latent)", decode(bad("wrong-dtype.safetensors")), "not a float type"),
        ("negative-shape.safetensors (latent)", decode(bad("negative-shape.safetensors")), "not a valid safetensors file"),
        ("overflowing-shape.safetensors (latent)", decode(bad("overflowing-shape.safetensors")), "not a valid safetensors file"),
        ("empty.safetensors (latent)", decode(bad("empty.safetensors")), "not a valid safetensors file"),
        ("truncated.safetensors (weights)", reconstruct(weights("truncated.safetensors"), good_png.clone()), "delete it and download it again"),
        ("header-2e60.safetensors (weights)", reconstruct(weights("header-2e60.safetensors"), good_png.clone()), "delete it and download it again"),
        ("header-longer-than-file.safetensors (weights)", reconstruct(weights("header-longer-than-file.safetensors"), good_png.clone()), "delete it and download it again"),
        ("header-not-json.safetensors (weights)", reconstruct(weights("header-not-json.safetensors"), good_png.clone()), "delete it and download it again"),
        ("overflowing-shape.safetensors (weights)", reconstruct(weights("overflowing-shape.safetensors"), good_png.clone()), "delete it and download it again"),
        ("empty.safetensors (weights)", reconstruct(weights("empty.safetensors"), good_png.clone()), "delete it and download it again"),
        ("config-zero-width.json", reconstruct(config("config-zero-width.json"), good_png.clone()), "stage 1 has width 0"),
        ("config-huge-width.json", reconstruct(config("config-huge-width.json"), good_png.clone()), "beyond any DC-AE"),
        ("config-wrong-types.json", reconstruct(config("config-wrong-types.json"), good_png.clone()), "`encoder_block_out_channels` must be a list of integers"),
        ("config-nan.json", reconstruct(config("config-nan.json"), good_png.clone()), "`latent_channels` must be a number"),
        ("not-a-png.png", reconstruct(ae.clone(), bad("not-a-png.png")), "is not a PNG, JPEG or WebP image"),
        ("empty.png", reconstruct(ae.clone(), bad("empty.png")), "is empty (0 bytes)"),
        ("one-pixel.png", reconstruct(ae.clone(), bad("one-pixel.png")), "smaller than the model's downsampling factor"),
        ("huge-dimensions.png", reconstruct(ae.clone(), bad("huge-dimensions.png")), "100000x100000"),
        ("model_index-other-pipeline.json", generate(other_pipeline), "StableDiffusionPipeline pipeline, not SANA"),
        ("index-path-traversal.json", generate(traversal), "which is not a file beside the index"),
    ];
    let mut failures = Vec::new();
    for (case, args, phrase) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dcae")).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !stderr.to_lowercase().contains(&phrase.to_lowercase()) || stderr.contains("panicked") {
            failures.push(format!("{case}: exit {:?}, expected an error containing {phrase:?}; stderr:\n{stderr}", out.status.code()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The one bad file no CLI command reads: its parameters and its broken zTXt chunk are refused
/// by the readers the app uses, while the pixels still load.
#[test]
fn broken_parameters_png() {
    let path = fixture("bad/broken-parameters.png");
    assert!(dcae::imaging::load_rgb(&path, &ImageLimits::default()).is_ok());
    let err = read_png_text(&path).unwrap_err().to_string();
    assert!(err.contains("broken-parameters.png"), "{err}");
    let bytes = std::fs::read(&path).unwrap();
    let text_only: Vec<u8> = {
        // The same file without its zTXt chunk: the parameters text itself is then read, and refused.
        let z = bytes.windows(4).position(|w| w == b"zTXt").unwrap() - 4;
        let len = u32::from_be_bytes(bytes[z..z + 4].try_into().unwrap()) as usize;
        [&bytes[..z], &bytes[z + 12 + len..]].concat()
    };
    let entries = read_png_text_from_bytes(&text_only).unwrap();
    let (_, text) = entries.iter().find(|(k, _)| k == "parameters").unwrap();
    let err = GenerationParams::parse_parameters_text(text).unwrap_err().to_string();
    assert!(!err.is_empty());
}

/// Found by `tokenizer_json_takes_mutations`: a tokenizer.json cut off right after `"decoder":`
/// made the tokenizers crate panic (its decoder deserializer calls `expect`); it is an error.
#[test]
fn tokenizer_json_cut_at_the_decoder_is_an_error() {
    let text = String::from_utf8(read("sana-tiny/tokenizer/tokenizer.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let compact = serde_json::to_string(&v).unwrap();
    let cut = compact.find("\"decoder\":").expect("a decoder entry") + "\"decoder\":".len();
    let e = SanaTokenizer::from_bytes(&compact.as_bytes()[..cut], "cut").err().expect("a cut file must not load");
    assert!(e.to_string().contains("cut"), "{e}");
}

/// JPEGs and WebPs to mutate (lossy and lossless WebP, baseline and progressive-free JPEG at two
/// qualities): the app opens all three formats from drops and dialogs, and their decoders are
/// other code than PNG's.
fn jpeg_webp_seeds() -> Vec<Vec<u8>> {
    let img = image::RgbImage::from_fn(24, 17, |x, y| image::Rgb([(x * 10) as u8, (y * 15) as u8, ((x ^ y) * 8) as u8]));
    let mut seeds = Vec::new();
    for quality in [35u8, 95] {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(&img).expect("a JPEG of a small image");
        seeds.push(out);
    }
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::WebP).expect("a lossless WebP of a small image");
    seeds.push(out.into_inner());
    seeds
}

proptest! {
    // 192 cases: about 2 s.
    #![proptest_config(ProptestConfig { cases: 192, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn image_readers_take_mutated_jpegs_and_webps(
        seed in 0usize..3,
        dmg in byte_damage(),
        junk in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = damage(jpeg_webp_seeds().swap_remove(seed), &dmg, usize::MAX);
        image_parsers(&bytes).map_err(|e| TestCaseError::fail(format!("seed {seed} {dmg:?}: {e}")))?;
        // Arbitrary bytes behind each format's signature.
        for magic in [&b"\xff\xd8\xff\xe0"[..], &b"RIFF\x10\x00\x00\x00WEBPVP8 "[..], &b"RIFF\x10\x00\x00\x00WEBPVP8L"[..]] {
            let mut signed = magic.to_vec();
            signed.extend_from_slice(&junk);
            image_parsers(&signed)?;
        }
    }
}
