//! The `flm-edge` command: parses the command line and dispatches to the subcommand's module
//! (`commands/`, one file each).

mod commands;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use flm_edge::engine::Device;

use commands::*;

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
    Convert(convert::Args),
    /// Show the metadata and tensors of GGUF files, or of the three files of a model folder.
    Inspect(inspect::Args),
    /// The Mimi codec alone: audio to codes and back, streaming one 80 ms frame at a time.
    Mimi {
        #[command(subcommand)]
        cmd: mimi::Args,
    },
    /// A whole conversation from a file, offline: one 80 ms step per input frame, as fast as
    /// the machine allows.
    Run(run::Args),
    /// The appliance: listen and speak through ALSA every 80 ms until SIGTERM (SIGHUP reloads
    /// the configuration). With --input-wav/--output-wav, replays a file through the same
    /// pipeline instead of the devices.
    Serve(serve::Args),
    /// ALSA cards and PCM names usable as `audio.capture` / `audio.playback`, and the
    /// compute devices of this build.
    Devices,
    /// Echo cancellation on files (WebRTC's AEC3, as the daemon runs it): removes from the
    /// microphone recording the echo of what the loudspeaker played. For tuning a new
    /// enclosure. Any PCM WAV in; out: the microphone's length, 24 kHz mono.
    Aec(aec::Args),
    /// Does a device compute what the CPU computes? Writes a small seeded model, runs Mimi
    /// and greedy steps on both, prints one line per check; exits non-zero when one fails.
    Selftest(selftest::Args),
    /// The licenses and notices of the code built into flm-edge (WebRTC's AEC3, libopus,
    /// llama.cpp and ggml, the Rust crates).
    Licenses,
    /// Benchmarks of the real-time stages.
    Bench {
        #[command(subcommand)]
        cmd: bench::Args,
    },
}

impl Cmd {
    /// The device a command asked for with `--backend` (serve reads its configuration).
    fn device(&self) -> Option<Device> {
        match self {
            Cmd::Run(a) => Some(a.engine.backend),
            Cmd::Mimi { cmd } => Some(cmd.device()),
            Cmd::Bench { cmd } => Some(cmd.device()),
            Cmd::Selftest(a) => Some(a.backend),
            _ => None,
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // A device that is not there is one line, before any file is read.
    if let Some(device) = cli.cmd.device() {
        device.check()?;
    }
    match cli.cmd {
        Cmd::Convert(a) => convert::exec(a),
        Cmd::Inspect(a) => inspect::exec(a),
        Cmd::Mimi { cmd } => mimi::exec(cmd),
        Cmd::Run(a) => run::exec(a),
        Cmd::Serve(a) => serve::exec(a),
        Cmd::Devices => devices::exec(),
        Cmd::Aec(a) => aec::exec(a),
        Cmd::Selftest(a) => selftest::exec(a),
        Cmd::Licenses => licenses::exec(),
        Cmd::Bench { cmd } => bench::exec(cmd),
    }
}

fn main() -> ExitCode {
    let result = run(Cli::parse());
    flm_kernels::log::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain, outermost first.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
