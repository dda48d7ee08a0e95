//! The two namings of a DC-AE checkpoint.
//!
//! Models ask for tensors by their original efficientvit key. A diffusers checkpoint (the
//! `*-diffusers` repos) stores the same numbers under other names, and two kinds of tensor in
//! another form: the fused LiteMLA `qkv` 1×1 conv is split into three row-thirds
//! (`to_q`/`to_k`/`to_v`; thirds of the rows, *not* queries/keys/values — the per-head
//! `[q|k|v]` interleave lives inside each third) and the attention `proj` 1×1 conv is stored
//! as a Linear weight without its two trailing unit dimensions.

/// How a diffusers tensor relates to the original one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Same numbers, same shape.
    Copy(String),
    /// `[O, I, 1, 1]` stored as `[O, I]`.
    Squeezed(String),
    /// `[3C, C, 1, 1]` stored as three `[C, C]` row-thirds, in this order.
    QkvThirds([String; 3]),
}

/// Rewrites of a block-relative key, tried in order; the first matching prefix wins.
const BLOCK_RULES: &[(&str, &str)] = &[
    ("main.conv.conv.", "conv."),
    ("main.conv.", "conv."),
    ("main.conv1.conv.", "conv1."),
    ("main.conv2.conv.", "conv2."),
    ("main.conv2.norm.", "norm."),
    ("context_module.main.proj.norm.", "attn.norm_out."),
    ("local_module.main.inverted_conv.conv.", "conv_out.conv_inverted."),
    ("local_module.main.depth_conv.conv.", "conv_out.conv_depth."),
    ("local_module.main.point_conv.conv.", "conv_out.conv_point."),
    ("local_module.main.point_conv.norm.", "conv_out.norm."),
];

/// Rewrites of whole keys outside the stages.
const HEAD_RULES: &[(&str, &str)] = &[
    ("encoder.project_in.conv.conv.", "encoder.conv_in.conv."),
    ("encoder.project_in.conv.", "encoder.conv_in."),
    ("encoder.project_out.main.op_list.0.conv.", "encoder.conv_out."),
    ("decoder.project_in.main.conv.", "decoder.conv_in."),
    ("decoder.project_out.op_list.0.", "decoder.norm_out."),
    ("decoder.project_out.op_list.2.conv.conv.", "decoder.conv_out.conv."),
    ("decoder.project_out.op_list.2.conv.", "decoder.conv_out."),
];

/// Where the diffusers conversion puts the tensor that the original checkpoint stores at `key`.
/// `None` for a key outside the DC-AE grammar.
pub fn to_diffusers(key: &str) -> Option<Stored> {
    for (from, to) in HEAD_RULES {
        if let Some(rest) = key.strip_prefix(from) {
            return Some(Stored::Copy(format!("{to}{rest}")));
        }
    }
    // {encoder.stages|decoder.stages}.{s}.op_list.{j}.<block key>
    let (part, renamed, rest) = if let Some(r) = key.strip_prefix("encoder.stages.") {
        ("encoder", "down_blocks", r)
    } else if let Some(r) = key.strip_prefix("decoder.stages.") {
        ("decoder", "up_blocks", r)
    } else {
        return None;
    };
    let (stage, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix("op_list.")?;
    let (op, block_key) = rest.split_once('.')?;
    let base = format!("{part}.{renamed}.{stage}.{op}.");

    if block_key == "context_module.main.qkv.conv.weight" {
        return Some(Stored::QkvThirds(["to_q", "to_k", "to_v"].map(|n| format!("{base}attn.{n}.weight"))));
    }
    if block_key == "context_module.main.proj.conv.weight" {
        return Some(Stored::Squeezed(format!("{base}attn.to_out.weight")));
    }
    if let Some(r) = block_key.strip_prefix("context_module.main.aggreg.") {
        // aggreg.{i}.0 = depthwise 5×5 (proj_in), aggreg.{i}.1 = grouped 1×1 (proj_out)
        let (i, r) = r.split_once('.')?;
        let (which, r) = r.split_once('.')?;
        let name = match which {
            "0" => "proj_in",
            "1" => "proj_out",
            _ => return None,
        };
        return Some(Stored::Copy(format!("{base}attn.to_qkv_multiscale.{i}.{name}.{r}")));
    }
    for (from, to) in BLOCK_RULES {
        if let Some(r) = block_key.strip_prefix(from) {
            return Some(Stored::Copy(format!("{base}{to}{r}")));
        }
    }
    None
}
