//! Writes seeded FLM-Audio / Mimi checkpoints in the released formats (test and benchmark data).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use flm_testkit::{LmSpec, write_lm, write_mimi};

#[derive(Parser)]
#[command(
    about = "Seeded FLM-Audio and Mimi checkpoints in the released formats, for tests and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Size {
    Tiny,
    Full,
}

#[derive(Subcommand)]
enum Cmd {
    /// The language model folder (config.json, tokenizer, safetensors).
    Lm {
        #[arg(long, value_enum, default_value = "tiny")]
        size: Size,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Number of safetensors shards (default: 1 for tiny, 4 for full).
        #[arg(long)]
        shards: Option<usize>,
        #[arg(long)]
        out: PathBuf,
    },
    /// The Mimi codec checkpoint (full size, f32).
    Mimi {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Lm {
            size,
            seed,
            shards,
            out,
        } => {
            let mut spec = match size {
                Size::Tiny => LmSpec::tiny(),
                Size::Full => LmSpec::full(),
            };
            if let Some(n) = shards {
                spec.shards = n;
            }
            write_lm(&out, &spec, seed)
        }
        Cmd::Mimi { seed, out } => write_mimi(&out, seed),
    }
}
