//! The `flm-edge` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use flm_conversion::{ConvertOptions, Gguf, MimiDtype, Quant};
use flm_edge::{inspect, model_dir::ModelDir};

#[derive(Parser)]
#[command(
    name = "flm-edge",
    version,
    about = "FLM-Audio full-duplex spoken dialog on edge boards"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert the released safetensors checkpoints into a model folder of GGUF files.
    Convert {
        /// The released FLM-Audio folder (config.json, tokenizer.json, *.safetensors).
        #[arg(long, value_name = "HF_DIR")]
        lm: PathBuf,
        /// The Mimi checkpoint (tokenizer-e351c8d8-checkpoint125.safetensors).
        #[arg(long, value_name = "MIMI.safetensors")]
        mimi: PathBuf,
        /// Output model folder.
        #[arg(long, value_name = "MODEL_DIR")]
        out: PathBuf,
        /// Weight type of the language model: f32, f16, q8_0, q4_0 or q4_k.
        #[arg(long, default_value = "q4_k")]
        quant: Quant,
        /// Weight type of Mimi: f32 or f16.
        #[arg(long, default_value = "f32")]
        mimi_dtype: MimiDtype,
        /// Replace the model files of an output folder that is not empty.
        #[arg(long)]
        force: bool,
    },
    /// Show the metadata and tensors of GGUF files, or of the three files of a model folder.
    Inspect {
        #[arg(required = true, value_name = "FILE.gguf|MODEL_DIR")]
        paths: Vec<PathBuf>,
    },
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Convert {
            lm,
            mimi,
            out,
            quant,
            mimi_dtype,
            force,
        } => {
            let mut log = |line: &str| eprintln!("{line}");
            let summary = flm_conversion::convert(ConvertOptions {
                lm_dir: lm,
                mimi,
                out_dir: out,
                quant,
                mimi_dtype,
                force,
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
        }
        Cmd::Inspect { paths } => {
            for p in paths {
                if p.is_dir() {
                    let m = ModelDir::open(&p)?;
                    println!("model folder {} (model id {})", p.display(), m.model_id);
                    for (name, g) in [
                        ("backbone.gguf", &m.backbone),
                        ("audio.gguf", &m.audio),
                        ("mimi.gguf", &m.mimi),
                    ] {
                        println!("\n== {}\n{}", m.path(name).display(), inspect::render(g));
                    }
                } else {
                    let g = Gguf::open(&p)?;
                    println!("== {}\n{}", p.display(), inspect::render(&g));
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain, outermost first.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
