//! The subcommands of `flm-edge`, one file each: its arguments and its body. `main.rs`
//! parses and dispatches.

pub mod aec;
pub mod bench;
pub mod convert;
pub mod devices;
pub mod inspect;
pub mod licenses;
pub mod mimi;
pub mod run;
pub mod selftest;
pub mod serve;

use std::path::{Path, PathBuf};

use anyhow::Result;
use flm_edge::engine::{Device, EngineOptions, Sampling, SamplingOverrides};
use flm_edge::model_dir::ModelDir;

/// CPU threads: those asked for, or every core the process may use.
pub fn threads(t: Option<usize>) -> usize {
    t.unwrap_or_else(flm_edge::default_threads)
}

/// The Mimi file of a model folder (checked against its siblings) or a mimi.gguf path.
pub fn mimi_path(model: &Path) -> Result<PathBuf> {
    if model.is_dir() {
        let m = ModelDir::open(model)?;
        Ok(m.path(flm_conversion::model_files::MIMI_FILE))
    } else {
        Ok(model.to_path_buf())
    }
}

/// Options of the step engine shared by the commands that run the model.
#[derive(clap::Args)]
pub struct EngineArgs {
    /// Seed of the samplers.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Argmax for text and audio (repetition penalties still apply).
    #[arg(long)]
    greedy: bool,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// cpu, cuda or vulkan (builds with that feature; the best device of the backend), gpu
    /// (any), or a device such as cuda0: the backbone, the depth transformer and Mimi.
    #[arg(long, default_value = "cpu")]
    pub backend: Device,
    /// Backbone context in steps (default: the model's, 8192 for the release); when full,
    /// the oldest steps after the first `--sink` are dropped.
    #[arg(long, value_name = "STEPS")]
    context: Option<u32>,
    /// Steps at the start of the conversation that are never dropped.
    #[arg(long, default_value_t = 16)]
    sink: u32,
    /// Keep the backbone's KV cache in f32 (default: f32 for f32 weights, else f16).
    #[arg(long)]
    kv_f32: bool,
    #[arg(long)]
    temp_text: Option<f32>,
    #[arg(long)]
    top_p_text: Option<f32>,
    #[arg(long)]
    top_k_text: Option<u32>,
    #[arg(long)]
    penalty_text: Option<f32>,
    #[arg(long)]
    penalty_window_text: Option<usize>,
    #[arg(long)]
    temp_audio: Option<f32>,
    #[arg(long)]
    top_p_audio: Option<f32>,
    #[arg(long)]
    top_k_audio: Option<u32>,
    #[arg(long)]
    penalty_audio: Option<f32>,
    #[arg(long)]
    penalty_window_audio: Option<usize>,
}

impl EngineArgs {
    /// Engine options: the model's sampling defaults with these flags on top.
    pub fn options(&self, model: &ModelDir) -> Result<EngineOptions> {
        let text = SamplingOverrides {
            temperature: self.temp_text,
            top_p: self.top_p_text,
            top_k: self.top_k_text,
            repetition_penalty: self.penalty_text,
            repetition_window: self.penalty_window_text,
        };
        let audio = SamplingOverrides {
            temperature: self.temp_audio,
            top_p: self.top_p_audio,
            top_k: self.top_k_audio,
            repetition_penalty: self.penalty_audio,
            repetition_window: self.penalty_window_audio,
        };
        let s = Sampling::for_model(model, &text, &audio, self.greedy)?;
        Ok(EngineOptions {
            device: self.backend,
            threads: threads(self.threads),
            sampling: s,
            seed: self.seed,
            context: self.context,
            sink: self.sink,
            kv_f32: self.kv_f32.then_some(true),
        })
    }
}
