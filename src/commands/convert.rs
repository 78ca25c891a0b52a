//! `flm-edge convert`: the released safetensors checkpoints into a model folder of GGUF files.

use std::path::PathBuf;

use anyhow::Result;
use flm_conversion::{ConvertOptions, MimiDtype, Quant};

#[derive(clap::Args)]
pub struct Args {
    /// The released FLM-Audio folder (config.json, tokenizer.json, *.safetensors).
    #[arg(long, value_name = "HF_DIR")]
    lm: PathBuf,
    /// The Mimi checkpoint (tokenizer-e351c8d8-checkpoint125.safetensors).
    #[arg(long, value_name = "MIMI.safetensors")]
    mimi: PathBuf,
    /// Output model folder.
    #[arg(long, value_name = "MODEL_DIR")]
    out: PathBuf,
    /// Weight type of the language model: f32, f16, q8_0, q5_k, q4_k, q4_0 or q3_k.
    #[arg(long, default_value = "q4_k")]
    quant: Quant,
    /// Weight type of Mimi's matrices: f32, f16 or q8_0 (codebooks, norms, biases and the
    /// smallest convs stay f32 under q8_0).
    #[arg(long, default_value = "f32")]
    mimi_dtype: MimiDtype,
    /// Replace the model files of an output folder that is not empty.
    #[arg(long)]
    force: bool,
}

pub fn exec(a: Args) -> Result<()> {
    let mut log = |line: &str| eprintln!("{line}");
    let summary = flm_conversion::convert(ConvertOptions {
        lm_dir: a.lm,
        mimi: a.mimi,
        out_dir: a.out,
        quant: a.quant,
        mimi_dtype: a.mimi_dtype,
        force: a.force,
        log: &mut log,
    })?;
    for f in &summary.files {
        println!(
            "{}  {} tensors  {:.1} MiB",
            f.path.display(),
            f.tensors,
            f.bytes as f64 / (1 << 20) as f64
        );
    }
    println!("model id {}", summary.model_id);
    Ok(())
}
