//! Which ggml type each tensor is stored in, for each `--quant` choice.
//!
//! The policy follows llama.cpp's own quantizer: norms, biases and small tables stay f32;
//! `q4_k` is llama.cpp's Q4_K_M (Q6_K for the output head and for attn_v / ffn_down in the
//! layers Q4_K_M gives more bits). Tables read by row lookup (text, audio and depth-transformer
//! embeddings) are kept at q8_0 under the 4-bit choices: only a few rows are read per step, so
//! the extra precision costs no bandwidth, and 17 embeddings are summed, so errors add up.
//! Q8_0 rather than a K-quant also keeps the row lookup (`get_rows`) on the GPU for the CUDA
//! backend. A row length that does not fit a type's block falls back the way llama.cpp does.

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
    Q4_0,
    Q4K,
}

impl Quant {
    pub const ALL: [Quant; 5] = [Quant::F32, Quant::F16, Quant::Q8_0, Quant::Q4_0, Quant::Q4K];

    pub fn name(self) -> &'static str {
        match self {
            Quant::F32 => "f32",
            Quant::F16 => "f16",
            Quant::Q8_0 => "q8_0",
            Quant::Q4_0 => "q4_0",
            Quant::Q4K => "q4_k",
        }
    }

    /// llama.cpp's `general.file_type` (enum llama_ftype) for the backbone file.
    pub fn llama_ftype(self) -> u32 {
        match self {
            Quant::F32 => 0,
            Quant::F16 => 1,
            Quant::Q4_0 => 2,
            Quant::Q8_0 => 7,
            Quant::Q4K => 15, // LLAMA_FTYPE_MOSTLY_Q4_K_M
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
            None => bail!("unknown quantization `{s}` (choose f32, f16, q8_0, q4_0 or q4_k)"),
        }
    }
}

/// The `--mimi-dtype` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MimiDtype {
    F32,
    F16,
}

impl MimiDtype {
    pub fn name(self) -> &'static str {
        match self {
            MimiDtype::F32 => "f32",
            MimiDtype::F16 => "f16",
        }
    }
}

impl FromStr for MimiDtype {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<MimiDtype> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(MimiDtype::F32),
            "f16" => Ok(MimiDtype::F16),
            _ => bail!("unknown Mimi dtype `{s}` (choose f32 or f16)"),
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
    /// Matrix weights.
    Weight,
    /// Matrix weights that Q4_K_M stores with more bits (attn_v, ffn_down in some layers).
    WeightMoreBits,
    /// Mimi codebooks: nearest-neighbour search needs f32.
    Codebook,
    /// Mimi convolution and linear weights: `--mimi-dtype`.
    MimiWeight,
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
        },
        _ => match (quant, role) {
            (Quant::F32, _) => GgmlType::F32,
            (Quant::F16, _) => GgmlType::F16,
            // Looked-up tables cost memory, not bandwidth (17 rows a step), and the 17 rows
            // are summed, so their rounding adds up: one step more precise than the matrices.
            (Quant::Q8_0, Role::Embedding) => GgmlType::F16,
            (Quant::Q8_0, _) => GgmlType::Q8_0,
            (_, Role::Embedding) => GgmlType::Q8_0,
            (_, Role::Output) => GgmlType::Q6_K,
            (Quant::Q4_0, _) => GgmlType::Q4_0,
            (Quant::Q4K, Role::WeightMoreBits) => GgmlType::Q6_K,
            (Quant::Q4K, _) => GgmlType::Q4_K,
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

/// llama.cpp's fallback chain for rows that do not fit a block size.
fn fallback(ty: GgmlType) -> GgmlType {
    match ty {
        t if t == GgmlType::Q4_K => GgmlType::Q5_0,
        t if t == GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    }
}

/// Q4_K_M's choice of layers whose attn_v and ffn_down get more bits (llama.cpp `use_more_bits`).
pub fn more_bits_layer(layer: usize, n_layers: usize) -> bool {
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
    fn q4_k_m_layer_choice_matches_llama_cpp_for_28_layers() {
        let picked: Vec<usize> = (0..28).filter(|&l| more_bits_layer(l, 28)).collect();
        // n/8 = 3, 7n/8 = 24: layers 0-2, 24-27, and every third from 5.
        assert_eq!(
            picked,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]
        );
    }
}
