//! The `flm-edge` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use flm_conversion::{ConvertOptions, Gguf, MimiDtype, Quant};
use flm_edge::{bench, codes_npy, inspect, model_dir::ModelDir, wav};
use flm_kernels::mimi::{FRAME, Mimi};

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
    /// The Mimi codec alone: audio to codes and back, streaming one 80 ms frame at a time.
    Mimi {
        #[command(subcommand)]
        cmd: MimiCmd,
    },
    /// Benchmarks of the real-time stages.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
}

#[derive(Subcommand)]
enum MimiCmd {
    /// Any PCM WAV (8–48 kHz, mono or stereo) to int32 codes [8, T] in a .npy file.
    Encode {
        /// A model folder or its mimi.gguf.
        #[arg(long, value_name = "MODEL_DIR|mimi.gguf")]
        model: PathBuf,
        #[arg(long, value_name = "in.wav")]
        input: PathBuf,
        #[arg(long, value_name = "codes.npy")]
        output: PathBuf,
        /// CPU threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Codes [8, T] (.npy, int32 or int64) to a 24 kHz mono WAV, 1920 samples per frame.
    Decode {
        #[arg(long, value_name = "MODEL_DIR|mimi.gguf")]
        model: PathBuf,
        #[arg(long, value_name = "codes.npy")]
        input: PathBuf,
        #[arg(long, value_name = "out.wav")]
        output: PathBuf,
        #[arg(long)]
        threads: Option<usize>,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Streaming Mimi encode and decode, ms per 80 ms frame (median, p99), on the CPU backend.
    Mimi {
        #[arg(long, value_name = "MODEL_DIR|mimi.gguf")]
        model: PathBuf,
        /// Timed frames (after 10 warm-up frames).
        #[arg(long, default_value_t = 200)]
        frames: usize,
        #[arg(long)]
        threads: Option<usize>,
        /// Also time each graph node alone and list the most expensive ops.
        #[arg(long)]
        ops: bool,
    },
}

fn threads(t: Option<usize>) -> usize {
    t.unwrap_or_else(flm_edge::default_threads)
}

/// The Mimi file of a model folder (checked against its siblings) or a mimi.gguf path.
fn mimi_path(model: &std::path::Path) -> Result<PathBuf> {
    if model.is_dir() {
        let m = ModelDir::open(model)?;
        Ok(m.path(flm_conversion::model_files::MIMI_FILE))
    } else {
        Ok(model.to_path_buf())
    }
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
        Cmd::Mimi {
            cmd:
                MimiCmd::Encode {
                    model,
                    input,
                    output,
                    threads: t,
                },
        } => {
            let pcm = wav::read_mono_24k(&input)?;
            let mut mimi = Mimi::load(&mimi_path(&model)?, threads(t))?;
            // A last partial frame is completed with silence.
            let frames = pcm.len().div_ceil(FRAME);
            let mut padded = pcm;
            padded.resize(frames * FRAME, 0.0);
            let mut codes = vec![0i32; frames * 8];
            for f in 0..frames {
                mimi.encode(
                    &padded[f * FRAME..(f + 1) * FRAME],
                    &mut codes[f * 8..(f + 1) * 8],
                )?;
            }
            codes_npy::write(&output, &codes)?;
            eprintln!("{} frames encoded to {}", frames, output.display());
        }
        Cmd::Mimi {
            cmd:
                MimiCmd::Decode {
                    model,
                    input,
                    output,
                    threads: t,
                },
        } => {
            let codes = codes_npy::read(&input)?;
            let mut mimi = Mimi::load(&mimi_path(&model)?, threads(t))?;
            let frames = codes.len() / 8;
            let mut pcm = vec![0f32; frames * FRAME];
            for f in 0..frames {
                mimi.decode(
                    &codes[f * 8..(f + 1) * 8],
                    &mut pcm[f * FRAME..(f + 1) * FRAME],
                )?;
            }
            wav::write_mono_24k(&output, &pcm)?;
            eprintln!("{} frames decoded to {}", frames, output.display());
        }
        Cmd::Bench {
            cmd:
                BenchCmd::Mimi {
                    model,
                    frames,
                    threads: t,
                    ops,
                },
        } => {
            let n = threads(t);
            let mut mimi = Mimi::load(&mimi_path(&model)?, n)?;
            if ops {
                bench::print_ops(mimi.profile(20)?);
                mimi.reset();
            }
            let r = bench::mimi(&mut mimi, frames.max(1), 10, n)?;
            let total = r.encode.median + r.decode.median;
            println!(
                "Mimi streaming, CPU backend, {} threads, {} frames of 80 ms (warm)",
                r.threads, r.frames
            );
            println!(
                "  encode  median {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms",
                r.encode.median, r.encode.p99, r.encode.max
            );
            println!(
                "  decode  median {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms",
                r.decode.median, r.decode.p99, r.decode.max
            );
            println!(
                "  encode + decode median {:.2} ms per 80 ms frame: real-time factor {:.3}",
                total,
                total / 80.0
            );
            println!(
                "  weights {:.1} MiB",
                r.weight_bytes as f64 / (1 << 20) as f64
            );
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
