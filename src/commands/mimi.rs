//! `flm-edge mimi encode|decode`: the codec alone, streaming one 80 ms frame at a time.

use std::path::PathBuf;

use anyhow::Result;
use flm_edge::engine::Device;
use flm_edge::{codes_npy, wav};
use flm_kernels::mimi::{FRAME, Mimi};

use super::{mimi_path, threads};

#[derive(clap::Subcommand)]
pub enum Args {
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
        /// cpu, cuda, vulkan, gpu, or a device such as cuda0 (GPU backends: builds with their feature).
        #[arg(long, default_value = "cpu")]
        backend: Device,
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
        #[arg(long, default_value = "cpu")]
        backend: Device,
    },
}

impl Args {
    /// The device asked for.
    pub fn device(&self) -> Device {
        match self {
            Args::Encode { backend, .. } | Args::Decode { backend, .. } => *backend,
        }
    }
}

pub fn exec(a: Args) -> Result<()> {
    match a {
        Args::Encode {
            model,
            input,
            output,
            threads: t,
            backend,
        } => {
            let pcm = wav::read_mono_24k(&input)?;
            let mut mimi = Mimi::load(&mimi_path(&model)?, backend, threads(t))?;
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
        Args::Decode {
            model,
            input,
            output,
            threads: t,
            backend,
        } => {
            let codes = codes_npy::read(&input)?;
            let mut mimi = Mimi::load(&mimi_path(&model)?, backend, threads(t))?;
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
    }
    Ok(())
}
