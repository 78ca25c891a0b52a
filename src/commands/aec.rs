//! `flm-edge aec`: echo cancellation on files.

use std::path::PathBuf;

use anyhow::Result;
use flm_edge::wav;

#[derive(clap::Args)]
pub struct Args {
    /// What the loudspeaker played.
    #[arg(long, value_name = "far.wav")]
    far: PathBuf,
    /// What the microphone recorded, on the same clock from the same start.
    #[arg(long, value_name = "mic.wav")]
    mic: PathBuf,
    #[arg(long, value_name = "out.wav")]
    output: PathBuf,
}

pub fn exec(a: Args) -> Result<()> {
    let (far, mic) = (wav::read_mono_24k(&a.far)?, wav::read_mono_24k(&a.mic)?);
    // AEC3 runs at 16, 32 or 48 kHz: the 24 kHz signals go through it at 48 kHz.
    let up = |x: &[f32]| wav::resample(x, 24_000, 48_000);
    let out = flm_edge::echo::cancel(&up(&far)?, &up(&mic)?, 48_000)?;
    let mut out = wav::resample(&out, 48_000, 24_000)?;
    out.resize(mic.len(), 0.0);
    wav::write_mono_24k(&a.output, &out)
}
