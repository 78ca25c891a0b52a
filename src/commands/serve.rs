//! `flm-edge serve`: the appliance.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use flm_edge::engine::Device;
use flm_edge::serve::conversations::{Conversations, Feed};
use flm_edge::serve::{ServeOptions, serve};

#[derive(clap::Args)]
pub struct Args {
    /// Configuration file (TOML; every key is documented in boards/flm-edge.toml).
    #[arg(long, value_name = "config.toml")]
    config: Option<PathBuf>,
    /// Board profile under the configuration file: jetson-agx-orin, jetson-orin-nx,
    /// jetson-orin-nano, x86-dev.
    #[arg(long, value_name = "NAME")]
    board: Option<String>,
    /// Model folder (overrides the configuration's `model`).
    #[arg(long, value_name = "MODEL_DIR")]
    model: Option<PathBuf>,
    /// cpu, cuda, vulkan, gpu, or a device such as cuda0 (overrides the configuration's
    /// `backend`).
    #[arg(long)]
    backend: Option<Device>,
    /// Serve remote clients (FLM-Audio's websocket protocol) at this address (overrides
    /// `server.listen`); with no `[audio]` configured, the network is the only source.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Replay this WAV as the user's voice instead of capturing.
    #[arg(long, value_name = "x.wav", requires = "output_wav")]
    input_wav: Option<PathBuf>,
    /// Write the reply here (as long as the input, time-aligned) instead of playing it.
    #[arg(long, value_name = "y.wav", requires = "input_wav")]
    output_wav: Option<PathBuf>,
    /// Replay at real-time pace (otherwise as fast as the model goes, nothing dropped).
    #[arg(long)]
    realtime: bool,
    /// Record what the model hears (after echo cancellation, mute and resampling) into this
    /// 24 kHz mono WAV (overrides `status.record_heard`).
    #[arg(long, value_name = "FILE.wav")]
    record_heard: Option<PathBuf>,
}

pub fn exec(a: Args) -> Result<()> {
    // The network front: the HTTP stack of remote clients, the page and the status routes.
    let front = |cfg: &flm_edge::config::Config,
                 owner: Arc<Conversations>|
     -> Result<Arc<dyn Feed>> { Ok(flm_edge::remote::start(cfg, owner)?) };
    let opts = ServeOptions {
        board: a.board,
        config: a.config,
        model: a.model,
        backend: a.backend.map(|b| b.to_string()),
        listen: a.listen,
        input_wav: a.input_wav,
        output_wav: a.output_wav,
        realtime: a.realtime,
        record_heard: a.record_heard,
    };
    serve(opts, &front)
}
