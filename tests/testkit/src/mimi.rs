//! The Mimi checkpoint (`tokenizer-e351c8d8-checkpoint125.safetensors`): 318 f32 tensors,
//! named and shaped as Kyutai's loader expects, with random values.
//!
//! Values: conv and linear weights uniform with std 1/sqrt(fan_in) so that activations stay
//! O(1) through the SEANet; biases std 0.02; LayerNorm weight ~1, bias ~0; LayerScale 0.1
//! (trained checkpoints have scales around 0.01–0.3, the init value is 0.01); codebook
//! `embedding_sum` std 0.3 with `cluster_usage` uniform in [0.5, 1.5], so that the effective
//! codebook vectors (sum / usage, std ~0.35) have the scale of the projected latent (std ~0.3
//! on speech with these weights): with codebooks much larger than the latent, the
//! smallest-norm code wins every frame and the codes would not vary over time.

use std::path::Path;

use anyhow::Result;

use crate::rng::{Init, for_tensor};
use crate::safetensors_out::{self, Dtype, Entry};

/// Standard deviation of `embedding_sum` (see the module comment).
pub const CODEBOOK_STD: f32 = 0.3;

/// Codebooks stored in the released checkpoint (1 semantic + 31 acoustic).
pub const STORED_CODEBOOKS: usize = 32;

/// A tensor to write: name, shape (PyTorch order), value distribution.
pub type Tensor = (String, Vec<usize>, Init);

/// Weights keep activations O(1): std 1/sqrt(fan_in).
fn w(fan_in: usize) -> Init {
    Init {
        mean: 0.0,
        std: 1.0 / (fan_in as f32).sqrt(),
    }
}

const BIAS: Init = Init {
    mean: 0.0,
    std: 0.02,
};

fn conv(t: &mut Vec<Tensor>, p: String, shape: [usize; 3], fan_in: usize) {
    t.push((format!("{p}.weight"), shape.to_vec(), w(fan_in)));
    t.push((format!("{p}.bias"), vec![shape[0]], BIAS));
}

fn resblock(t: &mut Vec<Tensor>, p: &str, dim: usize) {
    conv(
        t,
        format!("{p}.block.1.conv.conv"),
        [dim / 2, dim, 3],
        dim * 3,
    );
    conv(
        t,
        format!("{p}.block.3.conv.conv"),
        [dim, dim / 2, 1],
        dim / 2,
    );
}

pub fn tensors() -> Vec<Tensor> {
    let mut t: Vec<Tensor> = vec![];
    // Encoder.
    conv(&mut t, "encoder.model.0.conv.conv".into(), [64, 1, 7], 7);
    let mut dim = 64;
    for (i, ratio) in [4usize, 5, 6, 8].into_iter().enumerate() {
        let n = 1 + 3 * i;
        resblock(&mut t, &format!("encoder.model.{n}"), dim);
        conv(
            &mut t,
            format!("encoder.model.{}.conv.conv", n + 2),
            [dim * 2, dim, 2 * ratio],
            dim * 2 * ratio,
        );
        dim *= 2;
    }
    conv(
        &mut t,
        "encoder.model.14.conv.conv".into(),
        [512, 1024, 3],
        1024 * 3,
    );
    // Decoder.
    conv(
        &mut t,
        "decoder.model.0.conv.conv".into(),
        [1024, 512, 7],
        512 * 7,
    );
    let mut dim = 1024;
    for (i, ratio) in [8usize, 6, 5, 4].into_iter().enumerate() {
        let n = 2 + 3 * i;
        // Transposed conv: weight [in, out, k]; each output sample sums in·k/stride terms.
        t.push((
            format!("decoder.model.{n}.convtr.convtr.weight"),
            vec![dim, dim / 2, 2 * ratio],
            w(dim * 2),
        ));
        t.push((
            format!("decoder.model.{n}.convtr.convtr.bias"),
            vec![dim / 2],
            BIAS,
        ));
        dim /= 2;
        resblock(&mut t, &format!("decoder.model.{}", n + 1), dim);
    }
    conv(
        &mut t,
        "decoder.model.14.conv.conv".into(),
        [1, 64, 3],
        64 * 3,
    );
    // Transformers.
    for side in ["encoder_transformer", "decoder_transformer"] {
        for l in 0..8 {
            let p = format!("{side}.transformer.layers.{l}.");
            t.push((
                format!("{p}self_attn.in_proj_weight"),
                vec![1536, 512],
                w(512),
            ));
            t.push((
                format!("{p}self_attn.out_proj.weight"),
                vec![512, 512],
                w(512),
            ));
            t.push((
                format!("{p}norm1.weight"),
                vec![512],
                Init {
                    mean: 1.0,
                    std: 0.1,
                },
            ));
            t.push((format!("{p}norm1.bias"), vec![512], BIAS));
            t.push((
                format!("{p}norm2.weight"),
                vec![512],
                Init {
                    mean: 1.0,
                    std: 0.1,
                },
            ));
            t.push((format!("{p}norm2.bias"), vec![512], BIAS));
            t.push((format!("{p}linear1.weight"), vec![2048, 512], w(512)));
            t.push((format!("{p}linear2.weight"), vec![512, 2048], w(2048)));
            t.push((
                format!("{p}layer_scale_1.scale"),
                vec![512],
                Init {
                    mean: 0.1,
                    std: 0.02,
                },
            ));
            t.push((
                format!("{p}layer_scale_2.scale"),
                vec![512],
                Init {
                    mean: 0.1,
                    std: 0.02,
                },
            ));
        }
    }
    t.push((
        "downsample.conv.conv.conv.weight".into(),
        vec![512, 512, 4],
        w(512 * 4),
    ));
    t.push((
        "upsample.convtr.convtr.convtr.weight".into(),
        vec![512, 1, 4],
        w(2),
    ));
    // Quantizer.
    for g in ["rvq_first", "rvq_rest"] {
        t.push((
            format!("quantizer.{g}.input_proj.weight"),
            vec![256, 512, 1],
            w(512),
        ));
        t.push((
            format!("quantizer.{g}.output_proj.weight"),
            vec![512, 256, 1],
            w(256),
        ));
    }
    for q in 0..STORED_CODEBOOKS {
        let p = if q == 0 {
            "quantizer.rvq_first.vq.layers.0._codebook".to_string()
        } else {
            format!("quantizer.rvq_rest.vq.layers.{}._codebook", q - 1)
        };
        t.push((
            format!("{p}._initialized"),
            vec![1],
            Init {
                mean: 1.0,
                std: 0.0,
            },
        ));
        t.push((
            format!("{p}.cluster_usage"),
            vec![2048],
            Init {
                mean: 1.0,
                std: 0.29,
            },
        ));
        t.push((
            format!("{p}.embedding_sum"),
            vec![2048, 256],
            Init {
                mean: 0.0,
                std: CODEBOOK_STD,
            },
        ));
    }
    t
}

/// Writes the Mimi checkpoint to `path` (f32, as released).
pub fn write_mimi(path: &Path, seed: u64) -> Result<()> {
    write(path, seed, tensors())
}

/// The same checkpoint with a decoder that outputs silence (its last convolution zero): a
/// model with it says nothing, whatever codes it chooses. For tests of what a silent model
/// leads to.
pub fn write_silent_mimi(path: &Path, seed: u64) -> Result<()> {
    let mut t = tensors();
    for (name, _, init) in t.iter_mut() {
        if name.starts_with("decoder.model.14.") {
            *init = Init::ZERO;
        }
    }
    write(path, seed, t)
}

fn write(path: &Path, seed: u64, tensors: Vec<Tensor>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let entries: Vec<Entry> = tensors
        .iter()
        .map(|(n, s, _)| Entry {
            name: n.clone(),
            dtype: Dtype::F32,
            shape: s.clone(),
        })
        .collect();
    let mut rngs: Vec<_> = tensors
        .iter()
        .map(|(n, _, _)| for_tensor(seed, n))
        .collect();
    safetensors_out::write(path, &entries, None, |k, out| {
        tensors[k].2.fill(&mut rngs[k], out)
    })
}
