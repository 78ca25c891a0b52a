//! Which ggml type each tensor is stored in, for each `--quant` choice.
//!
//! The policy follows llama.cpp's own quantizer (`llama_tensor_get_type_impl` in
//! `src/llama-quant.cpp` of the pinned llama-cpp-sys-2 0.1.161): norms, biases and small tables
//! stay f32; the K-quant choices are llama.cpp's mixes for the backbone (a `qwen2` model):
//! `q5_k` is Q5_K_M, `q4_k` is Q4_K_M and `q3_k` is Q3_K_M, each with llama.cpp's extra bits
//! for attn_v and ffn_down (and, under Q3_K_M, attn_output) in the same layers, and Q6_K for
//! the output head. `tests/llama_quantize.rs` holds them against llama.cpp's quantizer.
//!
//! Where this project deliberately differs from llama.cpp:
//! - Tables read by row lookup (text, audio and depth-transformer embeddings) are kept at q8_0
//!   under every 3- to 5-bit choice (llama.cpp stores `token_embd` at the mix's base type): only
//!   a few rows are read per step, so the extra precision costs no bandwidth, and 17 embeddings
//!   are summed, so errors add up. Q8_0 rather than a K-quant also keeps the row lookup
//!   (`get_rows`) on the GPU for the CUDA backend.
//! - The depth transformer's logit heads are Q6_K like llama.cpp's output head; its other
//!   matrices (and `dep.linear_in`) take the mix's base type. llama.cpp never sees this file; its
//!   name rules for attn_qkv / attn_output / ffn_down are applied to the backbone only.
//! - The depth transformer's MLP width is padded to a whole number of 256-value blocks in
//!   quantized files (`plan::depth_ffn_width`).
//!
//! A row length that does not fit a type's block falls back the way llama.cpp does.

use std::fmt;
use std::str::FromStr;

use anyhow::bail;

use crate::ggml_type::GgmlType;

/// The `--quant` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    F32,
    F16,
    Q8_0,
    /// llama.cpp's Q5_K_M.
    Q5K,
    /// llama.cpp's Q4_K_M.
    Q4K,
    Q4_0,
    /// llama.cpp's Q3_K_M.
    Q3K,
}

impl Quant {
    /// Largest first.
    pub const ALL: [Quant; 7] = [
        Quant::F32,
        Quant::F16,
        Quant::Q8_0,
        Quant::Q5K,
        Quant::Q4K,
        Quant::Q4_0,
        Quant::Q3K,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Quant::F32 => "f32",
            Quant::F16 => "f16",
            Quant::Q8_0 => "q8_0",
            Quant::Q5K => "q5_k",
            Quant::Q4K => "q4_k",
            Quant::Q4_0 => "q4_0",
            Quant::Q3K => "q3_k",
        }
    }

    /// llama.cpp's `general.file_type` (enum llama_ftype in include/llama.h) for the backbone
    /// file.
    pub fn llama_ftype(self) -> u32 {
        match self {
            Quant::F32 => 0,
            Quant::F16 => 1,
            Quant::Q4_0 => 2,
            Quant::Q8_0 => 7,
            Quant::Q3K => 12, // LLAMA_FTYPE_MOSTLY_Q3_K_M
            Quant::Q4K => 15, // LLAMA_FTYPE_MOSTLY_Q4_K_M
            Quant::Q5K => 17, // LLAMA_FTYPE_MOSTLY_Q5_K_M
        }
    }
}

impl fmt::Display for Quant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Quant {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Quant> {
        match Quant::ALL.iter().find(|q| q.name().eq_ignore_ascii_case(s)) {
            Some(q) => Ok(*q),
            None => bail!(
                "unknown quantization `{s}` (choose f32, f16, q8_0, q5_k, q4_k, q4_0 or q3_k)"
            ),
        }
    }
}

/// The `--mimi-dtype` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MimiDtype {
    F32,
    F16,
    /// The transformers' matrices and the SEANet's, down-sample's and transposed convs'
    /// matrices at q8_0; see `Role::MimiWeight`. (q4_K was measured and is not offered:
    /// README, "Mimi codec".)
    Q8_0,
}

impl MimiDtype {
    pub const ALL: [MimiDtype; 3] = [MimiDtype::F32, MimiDtype::F16, MimiDtype::Q8_0];

    pub fn name(self) -> &'static str {
        match self {
            MimiDtype::F32 => "f32",
            MimiDtype::F16 => "f16",
            MimiDtype::Q8_0 => "q8_0",
        }
    }

    /// Whether matrices are stored in quantized blocks: the convs' then in the layout the
    /// runtime multiplies them by (`mimi_layout`), since blocks cannot be re-laid-out at load.
    pub fn is_quantized(self) -> bool {
        matches!(self, MimiDtype::Q8_0)
    }
}

impl fmt::Display for MimiDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MimiDtype {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<MimiDtype> {
        match MimiDtype::ALL
            .iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
        {
            Some(d) => Ok(*d),
            None => bail!("unknown Mimi dtype `{s}` (choose f32, f16 or q8_0)"),
        }
    }
}

/// What a tensor is used for, which decides its storage type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Norm weights, biases, layer scales, position tables: always f32.
    Vector,
    /// Tables read by row lookup.
    Embedding,
    /// Logit heads.
    Output,
    /// Matrix weights without a rule of their own: the base type of the choice (backbone
    /// attn_q, attn_k, ffn_gate, ffn_up; every depth-transformer matrix but its heads).
    Weight,
    /// The backbone's attn_v of layer `layer` (of `n_layers`); llama.cpp counts attn_v tensors
    /// in file order, one per layer.
    AttnV { layer: usize, n_layers: usize },
    /// The backbone's ffn_down of layer `layer` (of `n_layers`).
    FfnDown { layer: usize, n_layers: usize },
    /// The backbone's attn_output.
    AttnOutput,
    /// Mimi codebooks: nearest-neighbour search needs f32.
    Codebook,
    /// Mimi's matrices (the transformers', the SEANet's, down-sample's and transposed
    /// convs'): `--mimi-dtype`.
    MimiWeight,
    /// Mimi's small weights (the one-channel first and last convs, the depthwise up-sample,
    /// the RVQ projections: 0.7 % of its weights): `--mimi-dtype` when f32 or f16, f32 under
    /// a quantized one (nothing to save; the RVQ projections' rows of one value fit no block).
    MimiSmall,
}

/// The storage type of a tensor whose rows have `row_len` elements, and a note when the
/// preferred type did not fit.
pub fn choose(
    quant: Quant,
    mimi: MimiDtype,
    role: Role,
    row_len: u64,
) -> (GgmlType, Option<String>) {
    let preferred = match role {
        Role::Vector | Role::Codebook => GgmlType::F32,
        Role::MimiWeight => match mimi {
            MimiDtype::F32 => GgmlType::F32,
            MimiDtype::F16 => GgmlType::F16,
            MimiDtype::Q8_0 => GgmlType::Q8_0,
        },
        Role::MimiSmall => match mimi {
            MimiDtype::F16 => GgmlType::F16,
            _ => GgmlType::F32,
        },
        _ => match (quant, role) {
            (Quant::F32, _) => GgmlType::F32,
            (Quant::F16, _) => GgmlType::F16,
            // Looked-up tables cost memory, not bandwidth (17 rows a step), and the 17 rows
            // are summed, so their rounding adds up: one step more precise than the matrices.
            (Quant::Q8_0, Role::Embedding) => GgmlType::F16,
            (Quant::Q8_0, _) => GgmlType::Q8_0,
            // Not llama.cpp (which gives token_embd the base type of Q3_K_M / Q4_K_M / Q5_K_M
            // and Q4_0): see the module comment.
            (_, Role::Embedding) => GgmlType::Q8_0,
            // llama.cpp: the output head of every mix but Q8_0 is Q6_K (llama-quant.cpp:490-510).
            (_, Role::Output) => GgmlType::Q6_K,
            (Quant::Q4_0, _) => GgmlType::Q4_0,
            (q, role) => k_mix(q, role),
        },
    };
    let mut ty = preferred;
    while !row_len.is_multiple_of(ty.block_size()) {
        ty = fallback(ty);
    }
    let note = (ty != preferred).then(|| {
        format!(
            "row of {row_len} is not a multiple of the {preferred} block ({}), stored as {ty}",
            preferred.block_size()
        )
    });
    (ty, note)
}

/// The backbone matrices of llama.cpp's K-quant mixes for a non-MoE model other than Falcon and
/// LLaMA-2-70B, without an importance matrix (`llama_tensor_get_type_impl`, llama-quant.cpp of
/// llama-cpp-sys-2 0.1.161; line numbers of that file).
fn k_mix(quant: Quant, role: Role) -> GgmlType {
    use GgmlType as T;
    match (quant, role) {
        // Q3_K_M, base type Q3_K (llama-quant.cpp:901).
        // attn_v: the first two attn_v tensors Q5_K, the others Q4_K (:583-584).
        (Quant::Q3K, Role::AttnV { layer, .. }) => {
            if layer < 2 {
                T::Q5_K
            } else {
                T::Q4_K
            }
        }
        // ffn_down: layers below n/16 Q5_K, all others Q4_K (for Falcon only the
        // use_more_bits layers would be Q4_K and the rest Q3_K) (:634-637).
        (Quant::Q3K, Role::FfnDown { layer, n_layers }) => {
            if layer < n_layers / 16 {
                T::Q5_K
            } else {
                T::Q4_K
            }
        }
        // attn_output: Q4_K (:681).
        (Quant::Q3K, Role::AttnOutput) => T::Q4_K,
        (Quant::Q3K, _) => T::Q3_K,
        // Q4_K_M, base type Q4_K (:904): attn_v (:590-591) and ffn_down (:646-652) Q6_K in
        // the use_more_bits layers; attn_output keeps the base type.
        (Quant::Q4K, Role::AttnV { layer, n_layers } | Role::FfnDown { layer, n_layers })
            if more_bits_layer(layer, n_layers) =>
        {
            T::Q6_K
        }
        (Quant::Q4K, _) => T::Q4_K,
        // Q5_K_M, base type Q5_K (:906): attn_v (:590-591) and ffn_down (:657) Q6_K in the
        // use_more_bits layers; attn_output keeps the base type.
        (Quant::Q5K, Role::AttnV { layer, n_layers } | Role::FfnDown { layer, n_layers })
            if more_bits_layer(layer, n_layers) =>
        {
            T::Q6_K
        }
        (Quant::Q5K, _) => T::Q5_K,
        (q, _) => unreachable!("{q} is not a K-quant mix"),
    }
}

/// llama.cpp's fallback chain for rows that do not fit a block size (`tensor_type_fallback`,
/// llama-quant.cpp:390-444): a 256-value K-quant block falls back to a 32-value type, and a
/// row that does not fit that either (or a 32-value type's own block) to f16.
fn fallback(ty: GgmlType) -> GgmlType {
    match ty {
        t if t == GgmlType::Q3_K => GgmlType::Q4_0,
        t if t == GgmlType::Q4_K => GgmlType::Q5_0,
        t if t == GgmlType::Q5_K => GgmlType::Q5_1,
        t if t == GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    }
}

/// The layers whose attn_v and ffn_down Q4_K_M and Q5_K_M give Q6_K (llama.cpp `use_more_bits`,
/// llama-quant.cpp:452-454): the first and last eighth, and every third layer between.
fn more_bits_layer(layer: usize, n_layers: usize) -> bool {
    let (lo, hi) = (n_layers / 8, 7 * n_layers / 8);
    layer < lo || layer >= hi || (layer - lo) % 3 == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_follow_block_sizes() {
        let m = MimiDtype::F32;
        assert_eq!(choose(Quant::Q4K, m, Role::Weight, 3584).0, GgmlType::Q4_K);
        assert_eq!(choose(Quant::Q4K, m, Role::Weight, 2730).0, GgmlType::F16);
        assert_eq!(choose(Quant::Q4K, m, Role::Weight, 96).0, GgmlType::Q5_0);
        assert_eq!(choose(Quant::Q4K, m, Role::Output, 96).0, GgmlType::Q8_0);
        assert_eq!(choose(Quant::Q4_0, m, Role::Weight, 3584).0, GgmlType::Q4_0);
        assert_eq!(choose(Quant::Q8_0, m, Role::Vector, 3584).0, GgmlType::F32);
        assert!(choose(Quant::Q4K, m, Role::Weight, 3584).1.is_none());
        assert!(choose(Quant::Q8_0, m, Role::Weight, 2730).1.is_some());
        assert_eq!(
            choose(Quant::Q4K, MimiDtype::F16, Role::MimiWeight, 7).0,
            GgmlType::F16
        );
    }

    #[test]
    fn k_quant_fallbacks_follow_llama_cpp() {
        let m = MimiDtype::F32;
        // llama-quant.cpp:413-418: Q3_K -> Q4_0, Q5_K -> Q5_1, then f16 (:429-438).
        assert_eq!(choose(Quant::Q3K, m, Role::Weight, 128).0, GgmlType::Q4_0);
        assert_eq!(choose(Quant::Q5K, m, Role::Weight, 128).0, GgmlType::Q5_1);
        assert_eq!(choose(Quant::Q3K, m, Role::Weight, 2730).0, GgmlType::F16);
        assert_eq!(choose(Quant::Q5K, m, Role::Weight, 2730).0, GgmlType::F16);
        assert_eq!(
            choose(Quant::Q3K, m, Role::AttnOutput, 96).0,
            GgmlType::Q5_0
        );
        assert_eq!(choose(Quant::Q3K, m, Role::Output, 96).0, GgmlType::Q8_0);
        assert_eq!(choose(Quant::Q5K, m, Role::Output, 96).0, GgmlType::Q8_0);
        let v0 = Role::AttnV {
            layer: 0,
            n_layers: 28,
        };
        assert_eq!(choose(Quant::Q3K, m, v0, 96).0, GgmlType::Q5_1);
        assert_eq!(choose(Quant::Q5K, m, v0, 96).0, GgmlType::Q8_0);
        assert!(choose(Quant::Q3K, m, Role::Weight, 128).1.is_some());
        assert!(choose(Quant::Q5K, m, Role::Weight, 3584).1.is_none());
    }

    #[test]
    fn names_ftypes_and_parsing() {
        for q in Quant::ALL {
            assert_eq!(q.name().parse::<Quant>().unwrap(), q);
            assert_eq!(q.name().to_uppercase().parse::<Quant>().unwrap(), q);
        }
        // include/llama.h: LLAMA_FTYPE_MOSTLY_Q3_K_M = 12, _Q4_K_M = 15, _Q5_K_M = 17.
        assert_eq!(Quant::Q3K.llama_ftype(), 12);
        assert_eq!(Quant::Q4K.llama_ftype(), 15);
        assert_eq!(Quant::Q5K.llama_ftype(), 17);
        let err = "q2_k".parse::<Quant>().unwrap_err().to_string();
        for q in Quant::ALL {
            assert!(err.contains(q.name()), "{err}");
        }
    }

    /// Types of the backbone matrices of layer `l` of 28 (Qwen2.5-7B shapes: 3584 wide, MLP
    /// 18944): attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down.
    fn layer_types(quant: Quant, l: usize) -> [GgmlType; 7] {
        let n_layers = 28;
        let c = |role, row| choose(quant, MimiDtype::F32, role, row).0;
        [
            c(Role::Weight, 3584),
            c(Role::Weight, 3584),
            c(Role::AttnV { layer: l, n_layers }, 3584),
            c(Role::AttnOutput, 3584),
            c(Role::Weight, 3584),
            c(Role::Weight, 3584),
            c(Role::FfnDown { layer: l, n_layers }, 18944),
        ]
    }

    #[test]
    fn q4_k_m_layer_choice_matches_llama_cpp_for_28_layers() {
        let picked: Vec<usize> = (0..28).filter(|&l| more_bits_layer(l, 28)).collect();
        // n/8 = 3, 7n/8 = 24: layers 0-2, 24-27, and every third from 5.
        assert_eq!(
            picked,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]
        );
        use GgmlType as T;
        for l in 0..28 {
            let v = if picked.contains(&l) {
                T::Q6_K
            } else {
                T::Q4_K
            };
            let want = [T::Q4_K, T::Q4_K, v, T::Q4_K, T::Q4_K, T::Q4_K, v];
            assert_eq!(layer_types(Quant::Q4K, l), want, "layer {l}");
        }
    }

    #[test]
    fn q5_k_m_layer_choice_matches_llama_cpp_for_28_layers() {
        // llama-quant.cpp (llama-cpp-sys-2 0.1.161), LLAMA_FTYPE_MOSTLY_Q5_K_M: base type Q5_K
        // (:906); attn_v Q6_K where use_more_bits(i_attention_wv, n_attention_wv) (:590-591);
        // ffn_down Q6_K where use_more_bits(i_layer, n_layer) (:657); attn_output no rule
        // (:669-687), so Q5_K; output Q6_K (:508-509); token_embd no rule, so Q5_K in
        // llama.cpp (:525-542) but q8_0 here.
        use GgmlType as T;
        let more = [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27];
        for l in 0..28 {
            let v = if more.contains(&l) { T::Q6_K } else { T::Q5_K };
            let want = [T::Q5_K, T::Q5_K, v, T::Q5_K, T::Q5_K, T::Q5_K, v];
            assert_eq!(layer_types(Quant::Q5K, l), want, "layer {l}");
        }
        let c = |role, row| choose(Quant::Q5K, MimiDtype::F32, role, row).0;
        assert_eq!(c(Role::Output, 3584), T::Q6_K);
        assert_eq!(c(Role::Embedding, 3584), T::Q8_0);
        assert_eq!(c(Role::Vector, 3584), T::F32);
    }

    #[test]
    fn q3_k_m_layer_choice_matches_llama_cpp_for_28_layers() {
        // llama-quant.cpp (llama-cpp-sys-2 0.1.161), LLAMA_FTYPE_MOSTLY_Q3_K_M: base type Q3_K
        // (:901); attn_v Q5_K for i_attention_wv < 2, else Q4_K (:583-584); ffn_down Q5_K for
        // i_layer < n_layer/16 (= 1), else Q4_K as the architecture is not Falcon (:634-637);
        // attn_output Q4_K (:681); output Q6_K (:508-509); token_embd no rule, so Q3_K in
        // llama.cpp (:525-542) but q8_0 here.
        use GgmlType as T;
        for l in 0..28 {
            let v = if l < 2 { T::Q5_K } else { T::Q4_K };
            let down = if l < 1 { T::Q5_K } else { T::Q4_K };
            let want = [T::Q3_K, T::Q3_K, v, T::Q4_K, T::Q3_K, T::Q3_K, down];
            assert_eq!(layer_types(Quant::Q3K, l), want, "layer {l}");
        }
        let c = |role, row| choose(Quant::Q3K, MimiDtype::F32, role, row).0;
        assert_eq!(c(Role::Output, 3584), T::Q6_K);
        assert_eq!(c(Role::Embedding, 3584), T::Q8_0);
        assert_eq!(c(Role::Vector, 3584), T::F32);
        // The depth transformer's matrices (1024 wide, MLP padded to 2816) take the base type.
        assert_eq!(c(Role::Weight, 1024), T::Q3_K);
        assert_eq!(c(Role::Weight, 2816), T::Q3_K);
    }
}
