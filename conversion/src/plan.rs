//! The tensors of the three model files, where each comes from in the released checkpoints,
//! and the shape each source must have.
//!
//! PyTorch shapes are [out, in]; GGUF (ggml) shapes are the reverse. No tensor needs a
//! transpose: converting is a change of element type, plus stacking the per-codebook and
//! per-position tables of one kind into one 3-D tensor.

use crate::hf_config::FlmConfig;
use crate::mimi_layout::{Conv, HALVES, TAPS};
use crate::quant::{MimiDtype, Role};

/// How source values are changed on the way.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    None,
    /// Multiply every value (muP multipliers folded into weights).
    Scale(f32),
    /// Mimi codebook: divide row r of `embedding_sum` by max(usage[r], 1e-5); one usage
    /// tensor per stacked source.
    Codebook {
        usage: Vec<String>,
    },
    /// No source: zeros (q/k/v biases of a checkpoint trained without them).
    Zeros,
    /// Zero rows appended to each source up to this many rows.
    PadRows(usize),
    /// Zeros appended to each row up to this length.
    PadCols(usize),
    /// A Mimi conv's weight re-laid-out as its taps (`mimi_layout`).
    ConvTaps(Conv),
    /// A Mimi transposed conv's weight re-laid-out as its two halves (`mimi_layout`).
    ConvHalves(Conv),
}

/// One tensor of an output file.
#[derive(Clone, Debug)]
pub struct Item {
    pub name: String,
    /// Source tensors, stacked along a new slowest axis when there is more than one.
    pub sources: Vec<String>,
    /// PyTorch shape each source must have.
    pub shape: Vec<usize>,
    pub role: Role,
    pub transform: Transform,
    /// The config.json key that sets each source dimension, for errors.
    pub dims_from: Vec<&'static str>,
}

impl Item {
    fn new(
        name: impl Into<String>,
        source: impl Into<String>,
        shape: &[usize],
        role: Role,
    ) -> Item {
        Item {
            name: name.into(),
            sources: vec![source.into()],
            shape: shape.to_vec(),
            role,
            transform: Transform::None,
            dims_from: vec![],
        }
    }

    fn stacked(name: impl Into<String>, sources: Vec<String>, shape: &[usize], role: Role) -> Item {
        Item {
            sources,
            ..Item::new(name, "", shape, role)
        }
    }

    fn dims(mut self, keys: &[&'static str]) -> Item {
        self.dims_from = keys.to_vec();
        self
    }

    fn scaled(mut self, s: f32) -> Item {
        if s != 1.0 {
            self.transform = Transform::Scale(s);
        }
        self
    }

    /// ggml shape (fastest axis first) of the output tensor.
    pub fn ne(&self) -> Vec<u64> {
        match self.transform {
            Transform::ConvTaps(c) => return c.taps_ne().to_vec(),
            Transform::ConvHalves(c) => return c.halves_ne().to_vec(),
            _ => {}
        }
        let mut ne: Vec<u64> = self.shape.iter().rev().map(|&d| d as u64).collect();
        match self.transform {
            Transform::PadRows(n) => ne[1] = n as u64,
            Transform::PadCols(n) => ne[0] = n as u64,
            _ => {}
        }
        if self.sources.len() > 1 {
            ne.push(self.sources.len() as u64);
        }
        ne
    }

    pub fn row_len(&self) -> u64 {
        match self.transform {
            Transform::PadCols(n) => n as u64,
            Transform::ConvTaps(_) | Transform::ConvHalves(_) => self.ne()[0],
            _ => self.shape.last().copied().unwrap_or(1) as u64,
        }
    }

    fn padded(mut self, t: Transform) -> Item {
        self.transform = t;
        self
    }
}

/// Names of the depth transformer and audio tables in the audio file.
pub mod audio_names {
    pub const SPEAK_EMBD: &str = "audio.speak_embd";
    pub const LISTEN_EMBD: &str = "audio.listen_embd";
    pub const DEP_IN: &str = "dep.linear_in.weight";
    pub const DEP_WTE: &str = "dep.wte";
    pub const DEP_WPE: &str = "dep.wpe";
    pub const DEP_OUT_NORM: &str = "dep.output_norm.weight";
    pub const DEP_OUT: &str = "dep.output";
    pub fn blk(b: usize, what: &str) -> String {
        format!("dep.blk.{b}.{what}")
    }
}

/// The backbone file: llama.cpp `qwen2` tensor names.
pub fn backbone(cfg: &FlmConfig, has_lm_head: bool) -> Vec<Item> {
    let h = cfg.hidden_size;
    let kv = cfg.n_kv_heads() * cfg.head_dim();
    let ff = cfg.intermediate_size;
    let v = cfg.vocab_size;
    let n = cfg.num_hidden_layers;
    let embd = "model.embed_tokens.text_embeddings.weight";
    let mut items = vec![
        Item::new("token_embd.weight", embd, &[v, h], Role::Embedding)
            .dims(&["vocab_size", "hidden_size"])
            .scaled(cfg.input_scale()),
    ];
    for l in 0..n {
        let p = format!("model.layers.{l}.");
        let t = |s: &str| format!("blk.{l}.{s}");
        // The roles llama.cpp's mixes give their own types (per layer for attn_v and ffn_down).
        let attn_v = Role::AttnV {
            layer: l,
            n_layers: n,
        };
        let ffn_down = Role::FfnDown {
            layer: l,
            n_layers: n,
        };
        let bias = |name: String, src: String, width: usize, key: &'static str| {
            let item = Item::new(name, src, &[width], Role::Vector).dims(&[key]);
            if cfg.attention_bias {
                item
            } else {
                Item {
                    sources: vec![],
                    transform: Transform::Zeros,
                    ..item
                }
            }
        };
        items.extend([
            Item::new(
                t("attn_norm.weight"),
                format!("{p}input_layernorm.weight"),
                &[h],
                Role::Vector,
            )
            .dims(&["hidden_size"]),
            Item::new(
                t("attn_q.weight"),
                format!("{p}self_attn.q_proj.weight"),
                &[h, h],
                Role::Weight,
            )
            .dims(&["hidden_size", "hidden_size"]),
            bias(
                t("attn_q.bias"),
                format!("{p}self_attn.q_proj.bias"),
                h,
                "hidden_size",
            ),
            Item::new(
                t("attn_k.weight"),
                format!("{p}self_attn.k_proj.weight"),
                &[kv, h],
                Role::Weight,
            )
            .dims(&["num_key_value_heads × head_dim", "hidden_size"]),
            bias(
                t("attn_k.bias"),
                format!("{p}self_attn.k_proj.bias"),
                kv,
                "num_key_value_heads × head_dim",
            ),
            Item::new(
                t("attn_v.weight"),
                format!("{p}self_attn.v_proj.weight"),
                &[kv, h],
                attn_v,
            )
            .dims(&["num_key_value_heads × head_dim", "hidden_size"]),
            bias(
                t("attn_v.bias"),
                format!("{p}self_attn.v_proj.bias"),
                kv,
                "num_key_value_heads × head_dim",
            ),
            Item::new(
                t("attn_output.weight"),
                format!("{p}self_attn.o_proj.weight"),
                &[h, h],
                Role::AttnOutput,
            )
            .dims(&["hidden_size", "hidden_size"]),
            Item::new(
                t("ffn_norm.weight"),
                format!("{p}post_attention_layernorm.weight"),
                &[h],
                Role::Vector,
            )
            .dims(&["hidden_size"]),
            Item::new(
                t("ffn_gate.weight"),
                format!("{p}mlp.gate_proj.weight"),
                &[ff, h],
                Role::Weight,
            )
            .dims(&["intermediate_size", "hidden_size"]),
            Item::new(
                t("ffn_up.weight"),
                format!("{p}mlp.up_proj.weight"),
                &[ff, h],
                Role::Weight,
            )
            .dims(&["intermediate_size", "hidden_size"]),
            Item::new(
                t("ffn_down.weight"),
                format!("{p}mlp.down_proj.weight"),
                &[h, ff],
                ffn_down,
            )
            .dims(&["hidden_size", "intermediate_size"]),
        ]);
    }
    items.push(
        Item::new(
            "output_norm.weight",
            "model.norm.weight",
            &[h],
            Role::Vector,
        )
        .dims(&["hidden_size"]),
    );
    let head = if has_lm_head || !cfg.tie_word_embeddings {
        "lm_head.weight"
    } else {
        embd
    };
    items.push(
        Item::new("output.weight", head, &[v, h], Role::Output)
            .dims(&["vocab_size", "hidden_size"])
            .scaled(cfg.output_scale()),
    );
    items
}

/// The audio file: the 16 audio embedding tables and the depth transformer.
/// Width of the depth transformer's MLPs in the file: the checkpoint's (2730 for the release)
/// or, for quantized files, rounded up to a whole number of 256-value blocks with zero
/// weights (exact: a zero gate and up row gives silu(0) · 0 = 0), so that every MLP matrix
/// can be quantized instead of falling back to f16 for rows of 2730.
pub fn depth_ffn_width(cfg: &FlmConfig, quantized: bool) -> usize {
    let f = cfg.depth_ffn();
    if quantized {
        f.next_multiple_of(256)
    } else {
        f
    }
}

pub fn audio(cfg: &FlmConfig, ffn_width: usize) -> Vec<Item> {
    use audio_names::*;
    let h = cfg.hidden_size;
    let av = cfg.aud_vocab_size;
    let c = cfg.aud_channel;
    let d = &cfg.aud_depthgpt;
    let e = d.n_embd;
    let f = cfg.depth_ffn();
    let (pad_rows, pad_cols) = if ffn_width > f {
        (Transform::PadRows(ffn_width), Transform::PadCols(ffn_width))
    } else {
        (Transform::None, Transform::None)
    };
    let per = |fmt: &dyn Fn(usize) -> String| (0..c).map(fmt).collect::<Vec<_>>();
    let dep = "aud_output_layers.";
    let mut items = vec![
        Item::stacked(
            SPEAK_EMBD,
            per(&|i| format!("model.embed_tokens.aud_speak_embeddings.{i}.weight")),
            &[av, h],
            Role::Embedding,
        )
        .dims(&["aud_vocab_size", "hidden_size"])
        .scaled(cfg.input_scale()),
        Item::stacked(
            LISTEN_EMBD,
            per(&|i| format!("model.embed_tokens.aud_listen_embeddings.{i}.weight")),
            &[av, h],
            Role::Embedding,
        )
        .dims(&["aud_vocab_size", "hidden_size"])
        .scaled(cfg.input_scale()),
        Item::new(
            DEP_IN,
            format!("{dep}linear_in.weight"),
            &[c * e, h],
            Role::Weight,
        )
        .dims(&["aud_channel × aud_depthgpt.n_embd", "hidden_size"]),
        Item::stacked(
            DEP_WTE,
            per(&|i| format!("{dep}transformer.wtes.{i}.weight")),
            &[av, e],
            Role::Embedding,
        )
        .dims(&["aud_vocab_size", "aud_depthgpt.n_embd"]),
        Item::new(
            DEP_WPE,
            format!("{dep}transformer.wpe.weight"),
            &[c, e],
            Role::Vector,
        )
        .dims(&["aud_channel", "aud_depthgpt.n_embd"]),
    ];
    for b in 0..d.n_layer {
        let p = format!("{dep}transformer.h.{b}.");
        items.extend([
            Item::new(
                blk(b, "attn_norm.weight"),
                format!("{p}ln_1.weight"),
                &[e],
                Role::Vector,
            )
            .dims(&["aud_depthgpt.n_embd"]),
            Item::new(
                blk(b, "attn_qkv.weight"),
                format!("{p}attn.c_attn.weight"),
                &[3 * e, e],
                Role::Weight,
            )
            .dims(&["3 × aud_depthgpt.n_embd", "aud_depthgpt.n_embd"]),
            Item::new(
                blk(b, "attn_output.weight"),
                format!("{p}attn.c_proj.weight"),
                &[e, e],
                Role::Weight,
            )
            .dims(&["aud_depthgpt.n_embd", "aud_depthgpt.n_embd"]),
            Item::new(
                blk(b, "ffn_norm.weight"),
                format!("{p}ln_2.weight"),
                &[e],
                Role::Vector,
            )
            .dims(&["aud_depthgpt.n_embd"]),
            Item::stacked(
                blk(b, "ffn_gate"),
                per(&|i| format!("{p}mlps.{i}.gate_proj.weight")),
                &[f, e],
                Role::Weight,
            )
            .dims(&["8 × aud_depthgpt.n_embd / 3", "aud_depthgpt.n_embd"])
            .padded(pad_rows.clone()),
            Item::stacked(
                blk(b, "ffn_up"),
                per(&|i| format!("{p}mlps.{i}.up_proj.weight")),
                &[f, e],
                Role::Weight,
            )
            .dims(&["8 × aud_depthgpt.n_embd / 3", "aud_depthgpt.n_embd"])
            .padded(pad_rows.clone()),
            Item::stacked(
                blk(b, "ffn_down"),
                per(&|i| format!("{p}mlps.{i}.down_proj.weight")),
                &[e, f],
                Role::Weight,
            )
            .dims(&["aud_depthgpt.n_embd", "8 × aud_depthgpt.n_embd / 3"])
            .padded(pad_cols.clone()),
        ]);
    }
    items.push(
        Item::new(
            DEP_OUT_NORM,
            format!("{dep}transformer.ln_f.weight"),
            &[e],
            Role::Vector,
        )
        .dims(&["aud_depthgpt.n_embd"]),
    );
    items.push(
        Item::stacked(
            DEP_OUT,
            per(&|i| format!("{dep}lm_heads.{i}.weight")),
            &[av, e],
            Role::Output,
        )
        .dims(&["aud_vocab_size", "aud_depthgpt.n_embd"]),
    );
    items
}

/// Mimi's fixed hyper-parameters (Kyutai `loaders.py`, as used by FLM-Audio).
pub mod mimi_arch {
    pub const SAMPLE_RATE: u32 = 24_000;
    pub const FRAME_SIZE: u32 = 1920;
    pub const CHANNELS: usize = 1;
    pub const N_FILTERS: usize = 64;
    /// Decoder order; the encoder applies them reversed.
    pub const RATIOS: [usize; 4] = [8, 6, 5, 4];
    pub const KERNEL: usize = 7;
    pub const LAST_KERNEL: usize = 3;
    pub const RESIDUAL_KERNEL: usize = 3;
    pub const COMPRESS: usize = 2;
    pub const LATENT: usize = 512;
    pub const LAYERS: usize = 8;
    pub const HEADS: usize = 8;
    pub const FFN: usize = 2048;
    pub const CONTEXT: usize = 250;
    pub const ROPE_MAX_PERIOD: f32 = 10_000.0;
    pub const NORM_EPS: f32 = 1e-5;
    pub const N_CODEBOOKS: usize = 8;
    pub const CODEBOOK_SIZE: usize = 2048;
    pub const CODEBOOK_DIM: usize = 256;
    /// Stage of the SEANet (index in `model.N`) of each resblock and strided conv.
    pub const ENC_RES: [usize; 4] = [1, 4, 7, 10];
    pub const DEC_RES: [usize; 4] = [3, 6, 9, 12];
}

/// A Mimi conv's weight item (PyTorch shape [OC, IC, K]; transposed: [IC, OC, K]). Under a
/// quantized `dtype` a matrix weight is stored as the matrices the runtime multiplies by
/// (`{out}.taps` or `{out}.halves`, `mimi_layout`), with rows a block can hold; otherwise as
/// the checkpoint has it (`{out}.weight`), which the runtime re-lays out at load.
fn mimi_conv_weight(
    dtype: MimiDtype,
    out: &str,
    src: &str,
    shape: [usize; 3],
    stride: usize,
    transposed: bool,
    role: Role,
) -> Item {
    let mut item = Item::new(format!("{out}.weight"), src, &shape, role);
    if dtype.is_quantized() && role == Role::MimiWeight {
        let (ic, oc) = if transposed {
            (shape[0], shape[1])
        } else {
            (shape[1], shape[0])
        };
        let c = Conv {
            k: shape[2],
            s: stride,
            ic,
            oc,
        };
        if transposed {
            item.name = format!("{out}.{HALVES}");
            item.transform = Transform::ConvHalves(c);
        } else {
            item.name = format!("{out}.{TAPS}");
            item.transform = Transform::ConvTaps(c);
        }
    }
    item
}

/// The Mimi file: what encoding and decoding 8 codebooks needs, with matrices at `dtype`.
pub fn mimi(dtype: MimiDtype) -> Vec<Item> {
    use mimi_arch::*;
    let mut items = vec![];
    // A conv of stride `stride`: its weight, then its bias.
    let conv = |items: &mut Vec<Item>,
                out: String,
                src: String,
                shape: [usize; 3],
                stride: usize,
                role: Role| {
        items.push(mimi_conv_weight(
            dtype,
            &out,
            &format!("{src}.weight"),
            shape,
            stride,
            false,
            role,
        ));
        items.push(Item::new(
            format!("{out}.bias"),
            format!("{src}.bias"),
            &[shape[0]],
            Role::Vector,
        ));
    };
    let resblock = |items: &mut Vec<Item>, side: &str, src: &str, n: usize, dim: usize| {
        let hidden = dim / COMPRESS;
        conv(
            items,
            format!("{side}.{n}.b1"),
            format!("{src}.{n}.block.1.conv.conv"),
            [hidden, dim, RESIDUAL_KERNEL],
            1,
            Role::MimiWeight,
        );
        conv(
            items,
            format!("{side}.{n}.b3"),
            format!("{src}.{n}.block.3.conv.conv"),
            [dim, hidden, 1],
            1,
            Role::MimiWeight,
        );
    };
    // SEANet encoder: 1 -> 64 -> 128 -> 256 -> 512 -> 1024 -> 512.
    let src = "encoder.model";
    conv(
        &mut items,
        "enc.0".into(),
        format!("{src}.0.conv.conv"),
        [N_FILTERS, CHANNELS, KERNEL],
        1,
        Role::MimiSmall,
    );
    let mut dim = N_FILTERS;
    for (i, &ratio) in RATIOS.iter().rev().enumerate() {
        let n = ENC_RES[i];
        resblock(&mut items, "enc", src, n, dim);
        conv(
            &mut items,
            format!("enc.{}", n + 2),
            format!("{src}.{}.conv.conv", n + 2),
            [dim * 2, dim, 2 * ratio],
            ratio,
            Role::MimiWeight,
        );
        dim *= 2;
    }
    conv(
        &mut items,
        "enc.14".into(),
        format!("{src}.14.conv.conv"),
        [LATENT, dim, LAST_KERNEL],
        1,
        Role::MimiWeight,
    );
    // SEANet decoder: 512 -> 1024 -> 512 -> 256 -> 128 -> 64 -> 1.
    let src = "decoder.model";
    conv(
        &mut items,
        "dec.0".into(),
        format!("{src}.0.conv.conv"),
        [dim, LATENT, KERNEL],
        1,
        Role::MimiWeight,
    );
    for (i, &ratio) in RATIOS.iter().enumerate() {
        let n = DEC_RES[i] - 1;
        items.push(mimi_conv_weight(
            dtype,
            &format!("dec.{n}"),
            &format!("{src}.{n}.convtr.convtr.weight"),
            [dim, dim / 2, 2 * ratio],
            ratio,
            true,
            Role::MimiWeight,
        ));
        items.push(Item::new(
            format!("dec.{n}.bias"),
            format!("{src}.{n}.convtr.convtr.bias"),
            &[dim / 2],
            Role::Vector,
        ));
        dim /= 2;
        resblock(&mut items, "dec", src, n + 1, dim);
    }
    conv(
        &mut items,
        "dec.14".into(),
        format!("{src}.14.conv.conv"),
        [CHANNELS, dim, LAST_KERNEL],
        1,
        Role::MimiSmall,
    );
    // Transformers.
    for (side, src) in [
        ("enc_tr", "encoder_transformer"),
        ("dec_tr", "decoder_transformer"),
    ] {
        for l in 0..LAYERS {
            let p = format!("{src}.transformer.layers.{l}.");
            let o = |s: &str| format!("{side}.{l}.{s}");
            items.extend([
                Item::new(
                    o("attn_qkv.weight"),
                    format!("{p}self_attn.in_proj_weight"),
                    &[3 * LATENT, LATENT],
                    Role::MimiWeight,
                ),
                Item::new(
                    o("attn_out.weight"),
                    format!("{p}self_attn.out_proj.weight"),
                    &[LATENT, LATENT],
                    Role::MimiWeight,
                ),
                Item::new(
                    o("norm1.weight"),
                    format!("{p}norm1.weight"),
                    &[LATENT],
                    Role::Vector,
                ),
                Item::new(
                    o("norm1.bias"),
                    format!("{p}norm1.bias"),
                    &[LATENT],
                    Role::Vector,
                ),
                Item::new(
                    o("norm2.weight"),
                    format!("{p}norm2.weight"),
                    &[LATENT],
                    Role::Vector,
                ),
                Item::new(
                    o("norm2.bias"),
                    format!("{p}norm2.bias"),
                    &[LATENT],
                    Role::Vector,
                ),
                Item::new(
                    o("ffn_up.weight"),
                    format!("{p}linear1.weight"),
                    &[FFN, LATENT],
                    Role::MimiWeight,
                ),
                Item::new(
                    o("ffn_down.weight"),
                    format!("{p}linear2.weight"),
                    &[LATENT, FFN],
                    Role::MimiWeight,
                ),
                Item::new(
                    o("scale1"),
                    format!("{p}layer_scale_1.scale"),
                    &[LATENT],
                    Role::Vector,
                ),
                Item::new(
                    o("scale2"),
                    format!("{p}layer_scale_2.scale"),
                    &[LATENT],
                    Role::Vector,
                ),
            ]);
        }
    }
    items.push(mimi_conv_weight(
        dtype,
        "downsample",
        "downsample.conv.conv.conv.weight",
        [LATENT, LATENT, 4],
        2,
        false,
        Role::MimiWeight,
    ));
    items.push(Item::new(
        "upsample.weight",
        "upsample.convtr.convtr.convtr.weight",
        &[LATENT, 1, 4],
        Role::MimiSmall,
    ));
    // Split RVQ: one semantic codebook, then 7 acoustic ones, both from the same latent.
    for (group, src) in [("first", "rvq_first"), ("rest", "rvq_rest")] {
        items.push(Item::new(
            format!("rvq.{group}.in_proj.weight"),
            format!("quantizer.{src}.input_proj.weight"),
            &[CODEBOOK_DIM, LATENT, 1],
            Role::MimiSmall,
        ));
        items.push(Item::new(
            format!("rvq.{group}.out_proj.weight"),
            format!("quantizer.{src}.output_proj.weight"),
            &[LATENT, CODEBOOK_DIM, 1],
            Role::MimiSmall,
        ));
    }
    let layer = |q: usize| {
        if q == 0 {
            "quantizer.rvq_first.vq.layers.0._codebook".to_string()
        } else {
            format!("quantizer.rvq_rest.vq.layers.{}._codebook", q - 1)
        }
    };
    let mut codebook = Item::stacked(
        "rvq.codebook",
        (0..N_CODEBOOKS)
            .map(|q| format!("{}.embedding_sum", layer(q)))
            .collect(),
        &[CODEBOOK_SIZE, CODEBOOK_DIM],
        Role::Codebook,
    );
    codebook.transform = Transform::Codebook {
        usage: (0..N_CODEBOOKS)
            .map(|q| format!("{}.cluster_usage", layer(q)))
            .collect(),
    };
    items.push(codebook);
    items
}

/// Checkpoint tensors that are known and deliberately not converted.
pub fn ignored_lm_tensor(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

pub fn ignored_mimi_tensor(name: &str) -> bool {
    name.ends_with("._initialized")
        || name.starts_with("quantizer.rvq_rest.vq.layers.")
        || name.starts_with("quantizer.rvq_first.vq.layers.")
}
