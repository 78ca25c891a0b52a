//! `flm-edge run`: a whole conversation from a file, offline.

use std::path::PathBuf;

use anyhow::Result;
use flm_edge::model_dir::ModelDir;
use flm_edge::run::{RunOptions, UserInput};

use super::EngineArgs;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("user").required(true).args(["input", "input_codes"])))]
pub struct Args {
    #[arg(long, value_name = "MODEL_DIR")]
    model: PathBuf,
    /// The user's audio: any PCM WAV, resampled to 24 kHz mono.
    #[arg(long, value_name = "user.wav")]
    input: Option<PathBuf>,
    /// The user's Mimi codes [8, T] (.npy) instead of audio: skips the encoder.
    #[arg(long, value_name = "user_codes.npy")]
    input_codes: Option<PathBuf>,
    /// The reply, 24 kHz mono, as long as the input.
    #[arg(long, value_name = "reply.wav")]
    output: PathBuf,
    /// One JSON object per step: step, text, audio, piece, ms.
    #[arg(long, value_name = "steps.jsonl")]
    transcript: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn exec(a: Args) -> Result<()> {
    let dir = ModelDir::open(&a.model)?;
    let opts = a.engine.options(&dir)?;
    let input = match (a.input, a.input_codes) {
        (_, Some(codes)) => UserInput::Codes(codes),
        (Some(wav), None) => UserInput::Wav(wav),
        (None, None) => unreachable!("clap requires one"),
    };
    let summary = flm_edge::run::run(RunOptions {
        model: a.model,
        input,
        output: a.output.clone(),
        transcript: a.transcript,
        engine: opts,
    })?;
    eprintln!(
        "{} steps, median {:.1} ms per 80 ms step; reply in {}",
        summary.steps,
        summary.median_step_ms,
        a.output.display()
    );
    if !summary.text.is_empty() {
        println!("{}", summary.text);
    }
    Ok(())
}
