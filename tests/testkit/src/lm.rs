//! The FLM-Audio language model checkpoint: `config.json`, tokenizer files and weights named
//! and shaped as in the release (`model.*`, `lm_head.weight`, `aud_output_layers.*`).

use std::path::Path;

use anyhow::Result;
use serde_json::json;

use crate::rng::{Init, for_tensor};
use crate::safetensors_out::{self, Dtype, Entry};

#[derive(Clone, Debug)]
pub struct LmSpec {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub audio_vocab: usize,
    pub codebooks: usize,
    pub dep_embd: usize,
    pub dep_heads: usize,
    pub dep_layers: usize,
    pub dtype: Dtype,
    /// 1 writes `model.safetensors`; more write shards and `model.safetensors.index.json`.
    pub shards: usize,
    /// Add the `rotary_emb.inv_freq` buffers an older modeling file saved.
    pub inv_freq: bool,
    /// A model that always waits: whatever it hears, its text head picks the wait token
    /// (`TEXT_WAIT`). The layers add nothing to the residual stream (their output projections
    /// are zero), every embedding carries 1 in the first dimension, and `lm_head` reads that
    /// dimension for the wait token alone. For tests of what a silent model leads to.
    pub waits: bool,
}

/// The text token FLM-Audio emits while it waits (`mm_token_info.text_wait_token_id`).
pub const TEXT_WAIT: usize = 151665;

impl LmSpec {
    /// The released model: 7.7 B backbone (Qwen2.5-7B shapes) and a 0.49 B depth transformer.
    pub fn full() -> LmSpec {
        LmSpec {
            vocab: 152064,
            hidden: 3584,
            layers: 28,
            heads: 28,
            kv_heads: 4,
            ffn: 18944,
            audio_vocab: 2050,
            codebooks: 8,
            dep_embd: 1024,
            dep_heads: 16,
            dep_layers: 6,
            dtype: Dtype::BF16,
            shards: 4,
            inv_freq: false,
            waits: false,
        }
    }

    /// A small model with the real vocabulary (so the real tokenizer fits) and every
    /// structural feature of the release: GQA, q/k/v biases, per-position depth MLPs whose
    /// width (8·128/3 = 341) fits no quantization block, stray inv_freq buffers.
    pub fn tiny() -> LmSpec {
        LmSpec {
            hidden: 256,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            ffn: 768,
            dep_embd: 128,
            dep_heads: 4,
            dep_layers: 2,
            shards: 1,
            inv_freq: true,
            ..LmSpec::full()
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    pub fn dep_ffn(&self) -> usize {
        8 * self.dep_embd / 3
    }

    pub fn config_json(&self) -> serde_json::Value {
        let half = self.head_dim() / 2;
        // Qwen2.5-VL's split of the rotary half-dimension (16, 24, 24 of 64), scaled.
        let s0 = half / 4;
        let s1 = (half - s0) / 2;
        json!({
            "architectures": ["FLMAudioForCausalLM"],
            "model_type": "FLMAudio",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "hidden_act": "silu",
            "max_position_embeddings": 8192,
            "initializer_range": 0.02,
            "rms_norm_eps": 1e-05,
            "use_cache": true,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "rope_theta": 1000000.0,
            "rope_scaling": {"type": "mrope", "mrope_section": [s0, s1, half - s0 - s1]},
            "attention_bias": true,
            "disable_att_o_bias": true,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "sliding_window": 32768,
            "use_sliding_window": false,
            "tie_word_embeddings": false,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.51.3",
            "aud_vocab_size": self.audio_vocab,
            "aud_channel": self.codebooks,
            "mm_token_info": {"text_wait_token_id": TEXT_WAIT, "aud_pad_token_id": 2048, "aud_emp_token_id": 2049},
            "aud_depthgpt": {
                "n_layer": self.dep_layers, "n_head": self.dep_heads, "n_embd": self.dep_embd,
                "dropout": 0.0, "bias": false, "use_cmlp": true, "use_rmsnorm": true, "use_swiglu": true
            },
            "use_mup": true,
            "mup_scale_factor": 28,
            "output_mult": 28,
            "input_mult": 1.0
        })
    }

    /// Tensor names, shapes (PyTorch order) and initial value distributions, in checkpoint order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, Init)> {
        let (h, v, av, e) = (self.hidden, self.vocab, self.audio_vocab, self.dep_embd);
        let kv = self.kv_heads * self.head_dim();
        let ones = Init {
            mean: 1.0,
            std: 0.1,
        };
        let bias = Init {
            mean: 0.0,
            std: 0.02,
        };
        let embed = Init {
            mean: 0.0,
            std: 0.02,
        };
        // Weights keep activations O(1): std 1/sqrt(fan_in).
        let w = |fan_in: usize| Init {
            mean: 0.0,
            std: 1.0 / (fan_in as f32).sqrt(),
        };
        // What a layer adds to the residual stream: nothing in a model that waits.
        let out = |fan_in: usize| if self.waits { Init::ZERO } else { w(fan_in) };
        let mut t = vec![];
        let mut add = |name: String, shape: Vec<usize>, init: Init| t.push((name, shape, init));
        add(
            "model.embed_tokens.text_embeddings.weight".into(),
            vec![v, h],
            embed,
        );
        for c in 0..self.codebooks {
            add(
                format!("model.embed_tokens.aud_listen_embeddings.{c}.weight"),
                vec![av, h],
                embed,
            );
        }
        for c in 0..self.codebooks {
            add(
                format!("model.embed_tokens.aud_speak_embeddings.{c}.weight"),
                vec![av, h],
                embed,
            );
        }
        for l in 0..self.layers {
            let p = format!("model.layers.{l}.");
            add(format!("{p}input_layernorm.weight"), vec![h], ones);
            add(format!("{p}self_attn.q_proj.weight"), vec![h, h], w(h));
            add(format!("{p}self_attn.q_proj.bias"), vec![h], bias);
            add(format!("{p}self_attn.k_proj.weight"), vec![kv, h], w(h));
            add(format!("{p}self_attn.k_proj.bias"), vec![kv], bias);
            add(format!("{p}self_attn.v_proj.weight"), vec![kv, h], w(h));
            add(format!("{p}self_attn.v_proj.bias"), vec![kv], bias);
            add(format!("{p}self_attn.o_proj.weight"), vec![h, h], out(h));
            if self.inv_freq {
                add(
                    format!("{p}self_attn.rotary_emb.inv_freq"),
                    vec![self.head_dim() / 2],
                    Init {
                        mean: 0.5,
                        std: 0.2,
                    },
                );
            }
            add(format!("{p}post_attention_layernorm.weight"), vec![h], ones);
            add(format!("{p}mlp.gate_proj.weight"), vec![self.ffn, h], w(h));
            add(format!("{p}mlp.up_proj.weight"), vec![self.ffn, h], w(h));
            add(
                format!("{p}mlp.down_proj.weight"),
                vec![h, self.ffn],
                out(self.ffn),
            );
        }
        add("model.norm.weight".into(), vec![h], ones);
        add("lm_head.weight".into(), vec![v, h], w(h));
        let d = "aud_output_layers.";
        add(
            format!("{d}linear_in.weight"),
            vec![self.codebooks * e, h],
            w(h),
        );
        for c in 0..self.codebooks {
            add(
                format!("{d}transformer.wtes.{c}.weight"),
                vec![av, e],
                Init {
                    mean: 0.0,
                    std: 1.0,
                },
            );
        }
        add(
            format!("{d}transformer.wpe.weight"),
            vec![self.codebooks, e],
            Init {
                mean: 0.0,
                std: 0.5,
            },
        );
        let f = self.dep_ffn();
        for b in 0..self.dep_layers {
            let p = format!("{d}transformer.h.{b}.");
            add(format!("{p}ln_1.weight"), vec![e], ones);
            add(format!("{p}attn.c_attn.weight"), vec![3 * e, e], w(e));
            add(format!("{p}attn.c_proj.weight"), vec![e, e], w(e));
            add(format!("{p}ln_2.weight"), vec![e], ones);
            for c in 0..self.codebooks {
                add(format!("{p}mlps.{c}.gate_proj.weight"), vec![f, e], w(e));
                add(format!("{p}mlps.{c}.up_proj.weight"), vec![f, e], w(e));
                add(format!("{p}mlps.{c}.down_proj.weight"), vec![e, f], w(f));
            }
        }
        add(format!("{d}transformer.ln_f.weight"), vec![e], ones);
        for c in 0..self.codebooks {
            add(format!("{d}lm_heads.{c}.weight"), vec![av, e], w(e));
        }
        t
    }
}

/// Writes a complete model folder for `spec` into `dir` (created if needed).
pub fn write_lm(dir: &Path, spec: &LmSpec, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&spec.config_json())?,
    )?;
    crate::tokenizer::write(dir)?;
    let tensors = spec.tensors();
    let dtype_of = |name: &str| {
        if name.ends_with("inv_freq") {
            Dtype::F32
        } else {
            spec.dtype
        }
    };
    let bytes =
        |(n, s, _): &(String, Vec<usize>, Init)| s.iter().product::<usize>() * dtype_of(n).size();
    let total: usize = tensors.iter().map(bytes).sum();
    // Split into shards of about equal size, in checkpoint order, as save_pretrained does.
    let per_shard = total.div_ceil(spec.shards.max(1));
    let mut groups: Vec<Vec<usize>> = vec![vec![]];
    let mut acc = 0;
    for (i, t) in tensors.iter().enumerate() {
        if acc > 0 && acc + bytes(t) > per_shard && groups.len() < spec.shards {
            groups.push(vec![]);
            acc = 0;
        }
        groups.last_mut().unwrap().push(i);
        acc += bytes(t);
    }
    let n = groups.len();
    let mut weight_map = serde_json::Map::new();
    let meta = json!({"format": "pt"});
    for (g, idx) in groups.iter().enumerate() {
        let file = if spec.shards <= 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", g + 1, n)
        };
        let entries: Vec<Entry> = idx
            .iter()
            .map(|&i| Entry {
                name: tensors[i].0.clone(),
                dtype: dtype_of(&tensors[i].0),
                shape: tensors[i].1.clone(),
            })
            .collect();
        for e in &entries {
            weight_map.insert(e.name.clone(), json!(file));
        }
        let mut rngs: Vec<_> = idx
            .iter()
            .map(|&i| for_tensor(seed, &tensors[i].0))
            .collect();
        // Values written so far, per tensor (they come in chunks).
        let mut done = vec![0; idx.len()];
        safetensors_out::write(&dir.join(&file), &entries, Some(&meta), |k, out| {
            let (name, shape, init) = &tensors[idx[k]];
            init.fill(&mut rngs[k], out);
            if spec.waits {
                always_wait(name, shape, done[k], out);
            }
            done[k] += out.len();
        })?;
    }
    if spec.shards > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            serde_json::to_string_pretty(&index)?,
        )?;
    }
    Ok(())
}

/// The values that make a model wait (`LmSpec::waits`): every embedding row carries 1 in the
/// first dimension, so the residual stream's first dimension is 17 whatever was heard, and
/// `lm_head` reads only that dimension, only for the wait token: its logit is about 64 (the
/// normed stream's first dimension about 16, times 4), every other token's 0, so that no
/// sampling picks another.
fn always_wait(name: &str, shape: &[usize], from: usize, out: &mut [f32]) {
    let row = shape[shape.len() - 1];
    if name.starts_with("model.embed_tokens.") {
        assert_eq!(from % row, 0, "chunks hold whole rows");
        out.chunks_exact_mut(row).for_each(|r| r[0] = 1.0);
    } else if name == "lm_head.weight" {
        out.fill(0.0);
        if let Some(i) = (TEXT_WAIT * row)
            .checked_sub(from)
            .filter(|&i| i < out.len())
        {
            out[i] = 4.0;
        }
    }
}
