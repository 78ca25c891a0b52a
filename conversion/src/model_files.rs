//! The files of a converted model folder and the metadata keys that flm-edge reads.

/// The Qwen2 backbone, in llama.cpp's `qwen2` architecture.
pub const BACKBONE_FILE: &str = "backbone.gguf";
/// Audio embeddings, depth transformer, FLM metadata and tokenizer.
pub const AUDIO_FILE: &str = "audio.gguf";
/// The Mimi codec.
pub const MIMI_FILE: &str = "mimi.gguf";
pub const ALL_FILES: [&str; 3] = [BACKBONE_FILE, AUDIO_FILE, MIMI_FILE];

/// Identifies the checkpoint a file was converted from; the three files of a model must agree.
pub const KEY_MODEL_ID: &str = "flm.model_id";

pub const AUDIO_ARCH: &str = "flm-audio";
pub const MIMI_ARCH: &str = "mimi";

/// Keys of the audio file.
pub mod audio_keys {
    pub const QUANT: &str = "flm.quant";
    pub const EMBEDDING_LENGTH: &str = "flm.embedding_length";
    pub const TEXT_VOCAB: &str = "flm.text_vocab_size";
    pub const CONTEXT_LENGTH: &str = "flm.context_length";
    pub const N_CODEBOOKS: &str = "flm.n_codebooks";
    pub const AUDIO_VOCAB: &str = "flm.audio_vocab_size";
    pub const TEXT_WAIT: &str = "flm.token.text_wait";
    pub const AUDIO_PAD: &str = "flm.token.audio_pad";
    pub const AUDIO_EMPTY: &str = "flm.token.audio_empty";
    pub const BOS: &str = "flm.token.bos";
    pub const EOS: &str = "flm.token.eos";
    /// 17 delays in steps: text, 8 speaking codebooks, 8 listening codebooks.
    pub const DELAYS: &str = "flm.delays";
    pub const DEP_EMBEDDING_LENGTH: &str = "flm.depformer.embedding_length";
    pub const DEP_HEAD_COUNT: &str = "flm.depformer.head_count";
    pub const DEP_BLOCK_COUNT: &str = "flm.depformer.block_count";
    pub const DEP_FEED_FORWARD: &str = "flm.depformer.feed_forward_length";
    pub const DEP_NORM_EPS: &str = "flm.depformer.layer_norm_rms_epsilon";
    pub const TOKENIZER_JSON: &str = "flm.tokenizer.json";
    /// Sampling defaults: `flm.sampling.{text,audio}.{temperature,top_p,top_k,repetition_penalty,repetition_window}`.
    pub const SAMPLING: &str = "flm.sampling";
    /// Audio repetition penalty applies to codebooks 0..this.
    pub const AUDIO_PENALTY_CODEBOOKS: &str = "flm.sampling.audio.repetition_codebooks";
}

/// Keys of the Mimi file.
pub mod mimi_keys {
    pub const SAMPLE_RATE: &str = "mimi.sample_rate";
    pub const FRAME_SIZE: &str = "mimi.frame_size";
    pub const N_CODEBOOKS: &str = "mimi.n_codebooks";
    pub const CODEBOOK_SIZE: &str = "mimi.codebook_size";
    pub const CODEBOOK_DIM: &str = "mimi.codebook_dim";
    pub const LATENT_DIM: &str = "mimi.latent_dim";
    pub const N_FILTERS: &str = "mimi.seanet.n_filters";
    pub const RATIOS: &str = "mimi.seanet.ratios";
    pub const BLOCK_COUNT: &str = "mimi.transformer.block_count";
    pub const HEAD_COUNT: &str = "mimi.transformer.head_count";
    pub const FEED_FORWARD: &str = "mimi.transformer.feed_forward_length";
    pub const CONTEXT: &str = "mimi.transformer.context";
    pub const ROPE_MAX_PERIOD: &str = "mimi.transformer.rope_max_period";
    pub const NORM_EPS: &str = "mimi.transformer.layer_norm_epsilon";
    pub const WEIGHT_DTYPE: &str = "mimi.weight_dtype";
}

/// Sampling defaults of the official `LMGen` (server and command-line client).
pub struct SamplingDefaults {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    pub repetition_penalty: f32,
    pub repetition_window: u32,
}

pub const TEXT_SAMPLING: SamplingDefaults = SamplingDefaults {
    temperature: 0.01,
    top_p: 0.9,
    top_k: 1,
    repetition_penalty: 1.03,
    repetition_window: 50,
};
pub const AUDIO_SAMPLING: SamplingDefaults = SamplingDefaults {
    temperature: 0.5,
    top_p: 0.9,
    top_k: 1,
    repetition_penalty: 1.2,
    repetition_window: 50,
};
pub const AUDIO_PENALTY_CODEBOOKS: u32 = 4;
/// RMSNorm epsilon of the depth transformer (`depth_gpt.RMSNorm`), not in config.json.
pub const DEPFORMER_NORM_EPS: f32 = 1e-6;
