//! The `config.json` of a released FLM-Audio checkpoint (Hugging Face `FLMAudioConfig`).

use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct TokenInfo {
    pub text_wait_token_id: u32,
    pub aud_pad_token_id: u32,
    pub aud_emp_token_id: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct DepthGptConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    #[serde(default)]
    pub bias: bool,
    #[serde(default = "yes")]
    pub use_cmlp: bool,
    #[serde(default = "yes")]
    pub use_rmsnorm: bool,
    #[serde(default = "yes")]
    pub use_swiglu: bool,
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn silu() -> String {
    "silu".into()
}

/// The fields of `config.json` that shape the model. Unknown keys are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct FlmConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "silu")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<serde_json::Value>,
    pub bos_token_id: Option<u32>,
    /// An id or a list of ids.
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub disable_att_o_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    pub aud_vocab_size: usize,
    pub aud_channel: usize,
    pub mm_token_info: TokenInfo,
    pub aud_depthgpt: DepthGptConfig,
    #[serde(default)]
    pub use_mup: bool,
    #[serde(default = "one")]
    pub mup_scale_factor: f64,
    #[serde(default = "one")]
    pub output_mult: f64,
    #[serde(default = "one")]
    pub input_mult: f64,
}

impl FlmConfig {
    pub fn load(path: &Path) -> Result<FlmConfig> {
        let label = path.display();
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{label}: cannot read"))?;
        let cfg: FlmConfig =
            serde_json::from_str(&text).with_context(|| format!("{label}: bad config"))?;
        cfg.validate()
            .with_context(|| format!("{label}: bad config"))?;
        Ok(cfg)
    }

    pub fn n_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Per-position SwiGLU width of the depth transformer, as `DepthGPT` computes it.
    pub fn depth_ffn(&self) -> usize {
        8 * self.aud_depthgpt.n_embd / 3
    }

    /// Scale folded into the 17 input embedding tables (muP `input_mult`).
    pub fn input_scale(&self) -> f32 {
        if self.use_mup {
            self.input_mult as f32
        } else {
            1.0
        }
    }

    /// Scale folded into `lm_head` (muP `output_mult / mup_scale_factor`).
    pub fn output_scale(&self) -> f32 {
        if self.use_mup {
            (self.output_mult / self.mup_scale_factor) as f32
        } else {
            1.0
        }
    }

    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|v| vec![v as u32]).unwrap_or_default()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            _ => vec![],
        }
    }

    fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("aud_vocab_size", self.aud_vocab_size),
            ("aud_channel", self.aud_channel),
            ("aud_depthgpt.n_layer", self.aud_depthgpt.n_layer),
            ("aud_depthgpt.n_head", self.aud_depthgpt.n_head),
            ("aud_depthgpt.n_embd", self.aud_depthgpt.n_embd),
        ];
        for (k, v) in positive {
            ensure!(v > 0, "`{k}` must be positive");
        }
        let heads = self.num_attention_heads;
        let kv = self.n_kv_heads();
        ensure!(
            kv > 0 && heads.is_multiple_of(kv),
            "`num_key_value_heads` {kv} does not divide `num_attention_heads` {heads}"
        );
        ensure!(
            self.head_dim() * heads == self.hidden_size,
            "`head_dim` {} × `num_attention_heads` {heads} is not `hidden_size` {}",
            self.head_dim(),
            self.hidden_size
        );
        ensure!(
            self.head_dim().is_multiple_of(2),
            "`head_dim` must be even for RoPE"
        );
        ensure!(
            self.hidden_act == "silu",
            "`hidden_act` is `{}`; only silu is supported",
            self.hidden_act
        );
        ensure!(
            self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0,
            "`rms_norm_eps` {} is out of range",
            self.rms_norm_eps
        );
        ensure!(self.rope_theta > 0.0, "`rope_theta` must be positive");
        if let Some(rs) = &self.rope_scaling {
            let ty = rs
                .get("rope_type")
                .or_else(|| rs.get("type"))
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            ensure!(
                matches!(ty, "default" | "mrope"),
                "`rope_scaling` type `{ty}` is not supported (FLM-Audio uses plain 1-D RoPE)"
            );
        }
        ensure!(
            self.disable_att_o_bias,
            "`disable_att_o_bias` is false: an o_proj bias is not supported"
        );
        ensure!(
            !self.mlp_bias,
            "`mlp_bias` is true: MLP biases are not supported"
        );
        let ti = &self.mm_token_info;
        ensure!(
            (ti.text_wait_token_id as usize) < self.vocab_size,
            "`mm_token_info.text_wait_token_id` {} is outside `vocab_size` {}",
            ti.text_wait_token_id,
            self.vocab_size
        );
        for (k, v) in [
            ("aud_pad_token_id", ti.aud_pad_token_id),
            ("aud_emp_token_id", ti.aud_emp_token_id),
        ] {
            ensure!(
                (v as usize) < self.aud_vocab_size,
                "`mm_token_info.{k}` {v} is outside `aud_vocab_size`"
            );
        }
        ensure!(
            ti.aud_pad_token_id != ti.aud_emp_token_id,
            "`mm_token_info`: pad and empty audio tokens are the same id"
        );
        let d = &self.aud_depthgpt;
        ensure!(
            d.n_embd.is_multiple_of(d.n_head),
            "`aud_depthgpt.n_embd` {} is not a multiple of `n_head` {}",
            d.n_embd,
            d.n_head
        );
        ensure!(
            !d.bias,
            "`aud_depthgpt.bias` is true: depth transformer biases are not supported"
        );
        ensure!(
            d.use_cmlp && d.use_rmsnorm && d.use_swiglu,
            "`aud_depthgpt`: only use_cmlp, use_rmsnorm and use_swiglu all true is supported"
        );
        ensure!(
            self.mup_scale_factor != 0.0
                && self.output_mult.is_finite()
                && self.input_mult.is_finite(),
            "muP multipliers must be finite and `mup_scale_factor` non-zero"
        );
        Ok(())
    }
}
