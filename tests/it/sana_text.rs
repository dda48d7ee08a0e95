//! SANA text side: tokenizer ids, prompt assembly and the Gemma-2 encoder against the sana-tiny goldens.

use std::collections::BTreeSet;

use burn::tensor::{Int, Tensor, TensorData};
use dcae::model::sana::prompt::{
    default_instruction, preprocess, PromptError, SanaTokenizer, TextEncoder, DEFAULT_COMPLEX_HUMAN_INSTRUCTION,
};
use dcae::model::sana::text_encoder::{Gemma2, Gemma2Config, LayerType};
use dcae::weights::{Checkpoint, CheckpointLoader, KeyRecorder, Layout, RandomWeights};
use safetensors::{Dtype, SafeTensors};

use super::common::{device, fixture, max_abs_diff, values, B};

const MSL: usize = 300;
/// The golden README's suggested tolerance for te_*/enc_* (7× the measured f32-vs-f64 spread).
const TOL: f32 = 5e-4;

fn expected_bytes() -> Vec<u8> {
    std::fs::read(fixture("sana-tiny/expected.safetensors")).expect("read expected.safetensors")
}

fn golden_i64(st: &SafeTensors, name: &str) -> (Vec<i64>, Vec<usize>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::I64, "{name}");
    let v = t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    (v, t.shape().to_vec())
}

fn golden_f32(st: &SafeTensors, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    let v = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (v, t.shape().to_vec())
}

fn as_u32(v: &[i64]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

fn prompts() -> Vec<String> {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("sana-tiny/cases.json")).unwrap()).unwrap();
    cases["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

fn tokenizer() -> SanaTokenizer {
    SanaTokenizer::from_file(&fixture("sana-tiny/tokenizer/tokenizer.json")).unwrap_or_else(|e| panic!("{e}"))
}

fn tiny_config() -> Gemma2Config {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("sana-tiny/text_encoder/config.json")).unwrap()).unwrap();
    let cfg = Gemma2Config::from_json(&v).unwrap_or_else(|e| panic!("{e}"));
    cfg.validate().unwrap_or_else(|e| panic!("{e}"));
    cfg
}

fn tiny_model() -> Gemma2<B> {
    let cfg = tiny_config();
    let ckpt = Checkpoint::open(fixture("sana-tiny/text_encoder/model.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    let mut loader = CheckpointLoader::<B>::new(&ckpt, "", Layout::Original, &device());
    let model = Gemma2::load(&mut loader, &cfg);
    loader.finish("Gemma-2 text encoder").unwrap_or_else(|e| panic!("{e}"));
    model
}

fn tiny_encoder() -> TextEncoder<B> {
    TextEncoder { tokenizer: tokenizer(), model: tiny_model() }
}

fn int_tensor(v: &[u32], shape: [usize; 2]) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = v.iter().map(|&x| i64::from(x)).collect();
    Tensor::from_data(TensorData::new(v, shape), &device())
}

fn ints<const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().to_vec::<i64>().unwrap()
}

fn no_progress() -> impl FnMut(usize, usize) -> bool {
    |_, _| true
}

#[test]
fn default_instruction_is_diffusers_text() {
    let chi = default_instruction();
    assert_eq!(DEFAULT_COMPLEX_HUMAN_INSTRUCTION.len(), 8);
    assert_eq!(chi.chars().count(), 1057);
    assert!(chi.ends_with("User Prompt: "));
    assert_eq!(hex(&sha256(chi.as_bytes())), "48290080bb4fd4a264bdc81d0647ac0221359a36506e2b3e954616d6cb48c3da");
    // The digest routine itself, on FIPS 180-2's two-block example.
    assert_eq!(
        hex(&sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
}

#[test]
fn python_lower_strip() {
    assert_eq!(preprocess("  A Bus  "), "a bus");
    assert_eq!(preprocess("\u{1c}\u{1f}\tX\u{3000}\u{85}"), "x");
    assert_eq!(preprocess("ΟΔΟΣ"), "\u{3bf}\u{3b4}\u{3bf}\u{3c2}", "final sigma, as Python's lower()");
    assert_eq!(preprocess("\u{200b}a"), "\u{200b}a", "ZERO WIDTH SPACE is not whitespace in Python");
}

#[test]
fn tokenizer_ids_match_golden() {
    let bytes = expected_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tok = tokenizer();
    let chi = default_instruction();

    let (chi_ids, _) = golden_i64(&st, "tok_chi_ids");
    assert_eq!(tok.encode(&chi, true).unwrap(), as_u32(&chi_ids), "tok_chi_ids");
    let n_chi = chi_ids.len();
    assert_eq!(n_chi, 161);

    for (i, p) in prompts().iter().enumerate() {
        let (raw, _) = golden_i64(&st, &format!("tok_p{i}_raw_ids"));
        assert_eq!(tok.encode(p, true).unwrap(), as_u32(&raw), "tok_p{i}_raw_ids");

        let t = tok.positive(p, Some(&chi), MSL).unwrap();
        let (ids, shape) = golden_i64(&st, &format!("tok_p{i}_ids"));
        assert_eq!(shape, [1, n_chi + MSL - 2]);
        assert_eq!(t.ids, as_u32(&ids), "tok_p{i}_ids");
        let (mask, _) = golden_i64(&st, &format!("tok_p{i}_mask"));
        assert_eq!(t.mask, as_u32(&mask), "tok_p{i}_mask");
        let (sel, _) = golden_i64(&st, &format!("tok_p{i}_sel_ids"));
        assert_eq!(t.keep.len(), MSL);
        assert_eq!(t.kept_ids(), as_u32(&sel), "tok_p{i}_sel_ids");
        assert_eq!(t.dropped_tokens, 0);
    }

    let neg = tok.negative("", MSL).unwrap();
    let (ids, _) = golden_i64(&st, "tok_neg_ids");
    let (mask, _) = golden_i64(&st, "tok_neg_mask");
    assert_eq!(neg.ids, as_u32(&ids), "tok_neg_ids");
    assert_eq!(neg.mask, as_u32(&mask), "tok_neg_mask");
    assert_eq!(neg.keep, (0..MSL).collect::<Vec<_>>());
}

#[test]
fn text_encoder_hidden_matches_golden() {
    let bytes = expected_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let model = tiny_model();
    let mut worst = 0.0f32;
    for i in 0..prompts().len() {
        let (ids, shape) = golden_i64(&st, &format!("tok_p{i}_ids"));
        let (mask, _) = golden_i64(&st, &format!("tok_p{i}_mask"));
        let shape = [shape[0], shape[1]];
        let hidden = model
            .forward(int_tensor(&as_u32(&ids), shape), int_tensor(&as_u32(&mask), shape), &mut no_progress())
            .unwrap();
        let (want, want_shape) = golden_f32(&st, &format!("te_p{i}_hidden"));
        assert_eq!(hidden.dims().to_vec(), want_shape);
        let got = values(hidden);
        assert!(got.iter().all(|x| x.is_finite()), "te_p{i}_hidden has non-finite values");
        let err = max_abs_diff(&got, &want);
        // Real rows alone (the pad rows carry the larger, RoPE-dominated error).
        let d = want_shape[2];
        let real: Vec<usize> = mask.iter().enumerate().filter(|(_, m)| **m == 1).map(|(j, _)| j).collect();
        let pick = |v: &[f32]| real.iter().flat_map(|&j| v[j * d..(j + 1) * d].to_vec()).collect::<Vec<_>>();
        let err_real = max_abs_diff(&pick(&got), &pick(&want));
        eprintln!("te_p{i}_hidden: max |diff| {err:.3e} (real rows {err_real:.3e})");
        worst = worst.max(err);
    }
    eprintln!("te_p*_hidden: worst max |diff| {worst:.3e} (tolerance {TOL:.0e})");
    assert!(worst < TOL, "te_p*_hidden off by {worst}");
}

/// bf16 activations, the CUDA path, run here through the CPU backend's bf16 ops (which round
/// every result to bf16 as a GPU's do): within [`BF16_RELATIVE_TOLERANCE`] of the f32 goldens,
/// and measurably not the f32 path.
#[test]
fn text_encoder_in_bf16_within_its_tolerance() {
    use burn::tensor::DType;
    use dcae::cli::parity::BF16_RELATIVE_TOLERANCE;
    use dcae::model::precision::{Precision, PrecisionChoice};
    let bytes = expected_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f32_model = tiny_model();
    let model = tiny_model().with_precision(Precision::Bf16);
    assert_eq!(model.precision(), Precision::Bf16);
    // The embedding table stays on the host as stored; its rows are cast after the lookup.
    assert!(model.embed_tokens.rows() > 0);
    assert_eq!(model.layers[0].mlp.down_proj.weight.val().dtype(), DType::BF16);
    assert_eq!(model.layers[0].self_attn.q_proj.weight.val().dtype(), DType::BF16);
    // The norms are f32 islands and keep f32 scales.
    assert_eq!(model.layers[0].input_layernorm.scale.val().dtype(), DType::F32);
    // f16 is taken as bf16 for this bf16-trained model.
    assert_eq!(tiny_model().with_precision(Precision::F16).precision(), Precision::Bf16);
    // What a user gets on the CPU: f32 arithmetic (from weights kept as stored), whatever asked.
    for choice in [PrecisionChoice::Auto, PrecisionChoice::F16, PrecisionChoice::F32] {
        assert_eq!(choice.resolve_bf16_trained::<B>(&device()), Precision::F32);
    }
    let (mut worst_rel, mut least_moved) = (0.0f32, f32::INFINITY);
    for i in 0..prompts().len() {
        let (ids, shape) = golden_i64(&st, &format!("tok_p{i}_ids"));
        let (mask, _) = golden_i64(&st, &format!("tok_p{i}_mask"));
        let shape = [shape[0], shape[1]];
        let run = |m: &Gemma2<B>| m.forward(int_tensor(&as_u32(&ids), shape), int_tensor(&as_u32(&mask), shape), &mut no_progress()).unwrap();
        let hidden = run(&model);
        assert_eq!(hidden.dtype(), DType::F32, "handed out in f32");
        let got = values(hidden);
        assert!(got.iter().all(|x| x.is_finite()), "te_p{i}_hidden (bf16) has non-finite values");
        let (want, _) = golden_f32(&st, &format!("te_p{i}_hidden"));
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(&got, &want);
        let moved = max_abs_diff(&got, &values(run(&f32_model)));
        eprintln!("te_p{i}_hidden in bf16: max |diff| {err:.3e} = {:.2e} of max |golden| {scale:.3}; {moved:.3e} from the f32 path", err / scale);
        worst_rel = worst_rel.max(err / scale);
        least_moved = least_moved.min(moved);
    }
    eprintln!("bf16 text encoder: worst {worst_rel:.2e} of max |golden| (tolerance {BF16_RELATIVE_TOLERANCE:.0e})");
    assert!(worst_rel as f64 <= BF16_RELATIVE_TOLERANCE, "bf16 text encoder off by {worst_rel:.2e} of the golden's scale");
    assert!(least_moved > TOL, "the bf16 path gave the f32 result ({least_moved:e}): it did not compute in bf16");
}

#[test]
fn encode_prompts_match_golden() {
    let bytes = expected_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let enc = tiny_encoder();
    let chi = default_instruction();
    let prompts = prompts();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();

    let out = enc.encode_prompts(&refs, Some(&chi), MSL, &mut no_progress()).unwrap().unwrap();
    assert_eq!(out.embeds.dims(), [refs.len(), MSL, 48]);
    assert_eq!(out.mask.dims(), [refs.len(), MSL]);
    assert_eq!(out.dropped_tokens, vec![0; refs.len()]);
    let mut worst = 0.0f32;
    for i in 0..refs.len() {
        let (want, _) = golden_f32(&st, &format!("enc_p{i}_prompt_embeds"));
        let got = values(out.embeds.clone().narrow(0, i, 1));
        let err = max_abs_diff(&got, &want);
        eprintln!("enc_p{i}_prompt_embeds: max |diff| {err:.3e}");
        worst = worst.max(err);
        let (mask, _) = golden_i64(&st, &format!("enc_p{i}_prompt_attention_mask"));
        assert_eq!(ints(out.mask.clone().narrow(0, i, 1)), mask, "enc_p{i}_prompt_attention_mask");
    }
    assert!(worst < TOL, "enc_p*_prompt_embeds off by {worst}");

    // One prompt alone gives its row of the batch (each prompt is its own Gemma pass).
    let one = enc.encode_prompts(&refs[2..3], Some(&chi), MSL, &mut no_progress()).unwrap().unwrap();
    assert_eq!(values(one.embeds), values(out.embeds.narrow(0, 2, 1)));

    let neg = enc.encode_negative("", MSL, &mut no_progress()).unwrap().unwrap();
    let (want, shape) = golden_f32(&st, "enc_negative_prompt_embeds");
    assert_eq!(neg.embeds.dims().to_vec(), shape);
    let err = max_abs_diff(&values(neg.embeds), &want);
    eprintln!("enc_negative_prompt_embeds: max |diff| {err:.3e}");
    assert!(err < TOL, "enc_negative_prompt_embeds off by {err}");
    let (mask, _) = golden_i64(&st, "enc_negative_prompt_attention_mask");
    assert_eq!(ints(neg.mask), mask, "enc_negative_prompt_attention_mask");
}

#[test]
fn long_prompt_reports_dropped_tokens() {
    let tok = tokenizer();
    let chi = default_instruction();
    let prompt = "A cat sleeping on a sunny windowsill. ".repeat(100);
    let n_chi = tok.encode(&chi, true).unwrap().len();
    let len = n_chi + MSL - 2;
    // The instruction and the prompt tokenise as one text; the instruction alone fits, so every
    // token past `len` is a prompt token.
    let whole = tok.encode(&format!("{chi}{}", preprocess(&prompt)), true).unwrap();
    assert!(whole.len() > len + 300, "the prompt should be far too long");

    let t = tok.positive(&prompt, Some(&chi), MSL).unwrap();
    assert_eq!(t.ids.len(), len);
    assert_eq!(t.dropped_tokens, whole.len() - len);
    assert_eq!(t.ids[..], whole[..len], "truncation keeps the head of the text");
    assert!(t.mask.iter().all(|&m| m == 1));

    let bare = tok.encode(&preprocess(&prompt), true).unwrap();
    let t = tok.positive(&prompt, None, MSL).unwrap();
    assert_eq!((t.ids.len(), t.dropped_tokens), (MSL, bare.len() - MSL));
    let n = tok.negative(&prompt, MSL).unwrap();
    assert_eq!(n.dropped_tokens, bare.len() - MSL);

    let short = tok.positive("a cat", Some(&chi), MSL).unwrap();
    assert_eq!(short.dropped_tokens, 0);
}

#[test]
fn huge_prompt_with_control_characters_does_not_panic() {
    let enc = tiny_encoder();
    let chi = default_instruction();
    let pieces = ["\u{0}", "\u{7}", "\r\n", "\t", "\u{1b}[31m", "é", "☕", "\u{202e}", "\u{fffd}", "ǅ", "İ", "<bos>", "<pad>", "word ", "\u{10ffff}"];
    let mut prompt = String::new();
    let mut i = 0usize;
    while prompt.chars().count() < 100_000 {
        prompt.push_str(pieces[i % pieces.len()]);
        i = i.wrapping_mul(31).wrapping_add(7) % 1009;
    }
    let t = enc.tokenizer.positive(&prompt, Some(&chi), MSL).unwrap();
    assert_eq!(t.ids.len(), 161 + MSL - 2);
    assert!(t.dropped_tokens > 1000, "dropped {}", t.dropped_tokens);
    let out = enc.encode_prompts(&[&prompt], Some(&chi), MSL, &mut no_progress()).unwrap().unwrap();
    assert_eq!(out.dropped_tokens, vec![t.dropped_tokens]);
    assert!(values(out.embeds).iter().all(|x| x.is_finite()));
    let neg = enc.encode_negative(&prompt, MSL, &mut no_progress()).unwrap().unwrap();
    assert!(neg.dropped_tokens[0] > 1000);

    // Whitespace-only and empty prompts are a bare <bos>.
    for p in ["", "   \n\t\u{1f}"] {
        let t = enc.tokenizer.positive(p, None, MSL).unwrap();
        assert_eq!(t.mask.iter().sum::<u32>(), 1, "{p:?}");
    }
}

#[test]
fn bad_sequence_length_and_empty_batch_are_errors() {
    let enc = tiny_encoder();
    for msl in [0, 1, 1_000_000] {
        let e = enc.tokenizer.positive("a cat", Some("x"), msl).unwrap_err();
        assert!(matches!(e, PromptError::SequenceLength { .. }), "{e}");
        assert!(e.to_string().contains("max_sequence_length"), "{e}");
    }
    let e = enc.encode_prompts(&[], None, MSL, &mut no_progress()).unwrap_err();
    assert!(matches!(e, PromptError::NoPrompts), "{e}");
    // Longer than the model's positions.
    let mut small = enc;
    let mut cfg = small.model.config().clone();
    cfg.max_position_embeddings = 100;
    small.model = Gemma2::load(&mut RandomWeights::<B>::new(&device()), &cfg);
    let e = small.encode_prompts(&["a cat"], None, MSL, &mut no_progress()).unwrap_err();
    assert!(matches!(e, PromptError::TooLong { tokens: 300, max: 100 }), "{e}");
}

#[test]
fn tokenizer_model_vocab_mismatch_is_an_error() {
    let mut cfg = tiny_config();
    cfg.vocab_size = 8; // the fixture tokenizer has 1024 ids
    let enc = TextEncoder { tokenizer: tokenizer(), model: Gemma2::<B>::load(&mut RandomWeights::new(&device()), &cfg) };
    let e = enc.encode_prompts(&["a cat"], None, MSL, &mut no_progress()).unwrap_err();
    assert!(matches!(e, PromptError::VocabMismatch { vocab: 8, .. }), "{e}");
    assert!(e.to_string().contains("different models"), "{e}");
}

#[test]
fn corrupt_tokenizer_files_are_errors() {
    let good = std::fs::read(fixture("sana-tiny/tokenizer/tokenizer.json")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("garbage", vec![0xff, 0xfe, 0x00, 0x13, 0x37]),
        ("wrong json", b"{\"hello\": 1}".to_vec()),
    ];
    for (what, bytes) in cases {
        let e = SanaTokenizer::from_bytes(&bytes, "my/tokenizer.json").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, PromptError::Parse { .. }), "{what}: {msg}");
        assert!(msg.contains("my/tokenizer.json") && msg.contains("download"), "{what}: {msg}");
    }
    // A valid tokenizer without Gemma's special tokens.
    let text = String::from_utf8(good).unwrap().replace("<bos>", "<sob>");
    let e = SanaTokenizer::from_bytes(text.as_bytes(), "other.json").unwrap_err();
    assert!(matches!(&e, PromptError::MissingToken { token, .. } if token == "<bos>"), "{e}");

    let missing = fixture("sana-tiny/tokenizer/no-such-tokenizer.json");
    let e = SanaTokenizer::from_file(&missing).unwrap_err();
    assert!(matches!(e, PromptError::Io { .. }), "{e}");
    assert!(e.to_string().contains("no-such-tokenizer.json"), "{e}");
}

#[test]
fn gemma_config_parsing() {
    let cfg = tiny_config();
    assert_eq!(
        (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers),
        (1024, 48, 96, 2)
    );
    assert_eq!((cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim), (4, 2, 16));
    assert_eq!(cfg.query_pre_attn_scalar, 24.0);
    assert_eq!(cfg.attn_logit_softcapping, Some(50.0));
    assert_eq!(cfg.sliding_window, Some(4096));
    assert_eq!(cfg.layer_types, vec![LayerType::SlidingAttention, LayerType::FullAttention]);
    assert_eq!(cfg.hidden_activation, "gelu_pytorch_tanh");

    // Absent keys are transformers' defaults, which are Gemma-2-2B's.
    let d = Gemma2Config::from_json(&serde_json::json!({})).unwrap();
    assert_eq!(d, Gemma2Config::gemma2_2b());
    d.validate().unwrap();
    assert_eq!(d.num_params(), Some(2_614_341_888));

    // transformers 5.x layout.
    let v = serde_json::json!({
        "num_hidden_layers": 3, "rope_parameters": {"rope_type": "default", "rope_theta": 500.0},
        "layer_types": ["full_attention", "sliding_attention", "full_attention"],
        "attn_logit_softcapping": null, "sliding_window": null, "query_pre_attn_scalar": 24.0
    });
    let c = Gemma2Config::from_json(&v).unwrap();
    assert_eq!(c.rope_theta, 500.0);
    assert_eq!(c.layer_types[1], LayerType::SlidingAttention);
    assert_eq!((c.attn_logit_softcapping, c.sliding_window), (None, None));
    c.validate().unwrap();
}

#[test]
fn bad_gemma_configs_are_errors() {
    let parse = |v: serde_json::Value| Gemma2Config::from_json(&v).and_then(|c| c.validate().map(|_| c));
    let cases = [
        (serde_json::json!({"hidden_size": 0}), "hidden_size"),
        (serde_json::json!({"num_key_value_heads": 0}), "num_key_value_heads"),
        (serde_json::json!({"num_attention_heads": 8, "num_key_value_heads": 3}), "num_key_value_heads"),
        (serde_json::json!({"head_dim": 15}), "head_dim"),
        (serde_json::json!({"hidden_activation": "swish"}), "hidden_activation"),
        (serde_json::json!({"rms_norm_eps": -1.0}), "rms_norm_eps"),
        (serde_json::json!({"query_pre_attn_scalar": 0}), "query_pre_attn_scalar"),
        (serde_json::json!({"attn_logit_softcapping": 0.0}), "attn_logit_softcapping"),
        (serde_json::json!({"sliding_window": 0}), "sliding_window"),
        (serde_json::json!({"vocab_size": "many"}), "vocab_size"),
        (serde_json::json!({"hidden_size": -4}), "hidden_size"),
        (serde_json::json!({"hidden_size": 1e300}), "hidden_size"),
        (serde_json::json!({"num_hidden_layers": 4, "layer_types": ["full_attention"]}), "layer_types"),
        (serde_json::json!({"layer_types": ["local"]}), "layer_types"),
        (serde_json::json!({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}), "rope_scaling"),
        (serde_json::json!({"model_type": "llama"}), "gemma2"),
        (serde_json::json!([1, 2]), "JSON object"),
    ];
    for (v, field) in cases {
        let e = parse(v.clone()).expect_err(&format!("{v} should be refused"));
        assert!(e.contains(field), "{v}: `{e}` does not name {field}");
    }
}

#[test]
fn gemma2_2b_keys_match_manifest() {
    let mut rec = KeyRecorder::<B>::new(&device());
    let _ = Gemma2::load(&mut rec, &Gemma2Config::gemma2_2b());
    let got: BTreeSet<(String, Vec<usize>)> =
        rec.keys.into_iter().map(|(k, s)| (k, s.expect("no ignored keys in Gemma-2"))).collect();
    let manifest = std::fs::read_to_string(fixture("manifests/sana/gemma-2-2b-it.text_encoder.tsv")).unwrap();
    let want: BTreeSet<(String, Vec<usize>)> = manifest
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split('\t');
            let key = f.next().unwrap().to_string();
            let shape = f.next().unwrap().trim_matches(['[', ']']).split(',').map(|d| d.trim().parse().unwrap()).collect();
            (key, shape)
        })
        .collect();
    assert_eq!(want.len(), 288);
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(missing.is_empty() && extra.is_empty(), "not requested: {missing:?}\nnot in the file: {extra:?}");
}

#[test]
fn progress_and_cancellation() {
    let enc = tiny_encoder();
    let t = enc.tokenizer.negative("a cat", MSL).unwrap();
    let ids = || int_tensor(&t.ids, [1, MSL]);
    let mask = || int_tensor(&t.mask, [1, MSL]);

    let mut calls = Vec::new();
    let out = enc.model.forward(ids(), mask(), &mut |d, n| {
        calls.push((d, n));
        true
    });
    assert!(out.is_some());
    assert_eq!(calls, vec![(0, 2), (1, 2), (2, 2)]);

    for stop_at in 0..=2 {
        let out = enc.model.forward(ids(), mask(), &mut |d, _| d < stop_at);
        assert!(out.is_none(), "cancel at {stop_at}");
    }

    let mut seen = Vec::new();
    let out = enc.encode_prompts(&["a", "b"], None, MSL, &mut |d, n| {
        seen.push((d, n));
        d < 3
    });
    assert!(matches!(out, Ok(None)));
    assert_eq!(seen.last(), Some(&(3, 4)));
    let out = enc.encode_negative("", MSL, &mut |_, _| false);
    assert!(matches!(out, Ok(None)));
}

#[test]
fn sliding_window_masks_far_keys() {
    // With a window of 4 the sliding layer must differ from full attention past position 4 only.
    let mut cfg = tiny_config();
    let full = tiny_model();
    cfg.sliding_window = Some(4);
    let ckpt = Checkpoint::open(fixture("sana-tiny/text_encoder/model.safetensors")).unwrap();
    let mut loader = CheckpointLoader::<B>::new(&ckpt, "", Layout::Original, &device());
    let windowed = Gemma2::<B>::load(&mut loader, &cfg);
    loader.finish("Gemma-2 text encoder").unwrap();
    let ids: Vec<u32> = (10..30).collect();
    let run = |m: &Gemma2<B>| {
        values(m.forward(int_tensor(&ids, [1, 20]), int_tensor(&[1; 20], [1, 20]), &mut no_progress()).unwrap())
    };
    let (a, b) = (run(&full), run(&windowed));
    assert_eq!(a[..4 * 48], b[..4 * 48], "the first window is unaffected");
    assert!(max_abs_diff(&a[4 * 48..], &b[4 * 48..]) > 1e-3, "later rows see fewer keys");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// FIPS 180-4 SHA-256 (a test needs one digest; not worth a dependency).
fn sha256(msg: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut data = msg.to_vec();
    data.push(0x80);
    while data.len() % 64 != 56 {
        data.push(0);
    }
    data.extend_from_slice(&((msg.len() as u64) * 8).to_be_bytes());
    for block in data.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes(c.try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for (k, wi) in K.iter().zip(w) {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(*k).wrapping_add(wi);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            (hh, g, f, e, d, c, b, a) = (g, f, e, d.wrapping_add(t1), c, b, a, t1.wrapping_add(t2));
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

