//! `flm-edge bench`: the real-time stages timed, warm, with what they cost a device.

use std::path::PathBuf;

use anyhow::Result;
use flm_edge::bench;
use flm_edge::engine::Device;
use flm_edge::model_dir::ModelDir;
use flm_kernels::mimi::Mimi;

use super::{EngineArgs, mimi_path, threads};

#[derive(clap::Subcommand)]
pub enum Args {
    /// Streaming Mimi encode and decode, ms per 80 ms frame (median, p99).
    Mimi {
        #[arg(long, value_name = "MODEL_DIR|mimi.gguf")]
        model: PathBuf,
        /// Timed frames (after 10 warm-up frames).
        #[arg(long, default_value_t = 200)]
        frames: usize,
        #[arg(long)]
        threads: Option<usize>,
        /// cpu, cuda, vulkan, gpu, or a device such as cuda0 (GPU backends: builds with their feature).
        #[arg(long, default_value = "cpu")]
        backend: Device,
        /// Also time each graph node alone and list the most expensive ops.
        #[arg(long)]
        ops: bool,
        /// Encode and decode this many streams together (1 to 16), each call one frame of
        /// each, and one stream alone before them for the ratio of the times.
        #[arg(long, default_value_t = 1)]
        streams: usize,
    },
    /// One step of the language model (embed, backbone, depth transformer, sampling), ms per
    /// 80 ms step, and the backbone's graph next to llama.cpp's decode of the same file.
    Step {
        #[arg(long, value_name = "MODEL_DIR")]
        model: PathBuf,
        /// Timed steps (after 5 warm-up steps).
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Also time each node of the depth transformer's step graph alone.
        #[arg(long)]
        ops: bool,
        /// Shift the context every N timed steps, as when it is full: the cost of a shift at
        /// any `--context` without stepping through it first.
        #[arg(long, value_name = "N")]
        shift_every: Option<usize>,
        /// Leave out llama.cpp's decode beside the backbone's graph (it loads the backbone a
        /// second time).
        #[arg(long)]
        no_peer: bool,
        /// Step this many conversations together (1 to 16), and one alone before them for
        /// the ratio of the step times.
        #[arg(long, default_value_t = 1)]
        conversations: usize,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

impl Args {
    /// The device asked for.
    pub fn device(&self) -> Device {
        match self {
            Args::Mimi { backend, .. } => *backend,
            Args::Step { engine, .. } => engine.backend,
        }
    }
}

pub fn exec(a: Args) -> Result<()> {
    match a {
        Args::Step {
            model,
            steps,
            ops,
            shift_every,
            no_peer,
            conversations,
            engine: args,
        } => step(model, steps, ops, shift_every, no_peer, conversations, args),
        Args::Mimi {
            model,
            frames,
            threads: t,
            backend,
            ops,
            streams,
        } => mimi(model, frames, t, backend, ops, streams),
    }
}

fn step(
    model: PathBuf,
    steps: usize,
    ops: bool,
    shift_every: Option<usize>,
    no_peer: bool,
    conversations: usize,
    args: EngineArgs,
) -> Result<()> {
    use flm_edge::engine::Engine;
    let dir = ModelDir::open(&model)?;
    let opts = args.options(&dir)?;
    let threads = opts.threads;
    // One conversation alone first (its engine dropped before the others load).
    let alone = if conversations > 1 {
        let mut one = Engine::load(&dir, &opts)?;
        Some(bench::step(&mut one, &dir, steps, 5, threads, None, None)?)
    } else {
        None
    };
    let mut engine = Engine::with_conversations(&dir, &opts, conversations)?;
    let peer = (!no_peer).then_some(opts.device);
    let r = bench::step(&mut engine, &dir, steps, 5, threads, shift_every, peer)?;
    if ops {
        bench::print_ops(engine.depformer().profile(20)?);
    }
    let quant = dir
        .audio
        .get_str(flm_conversion::model_files::audio_keys::QUANT)
        .unwrap_or("?");
    println!(
        "LM step, {}, {} threads, {quant} weights, {} conversation(s) together, {} steps (warm)",
        engine.device_name(),
        r.threads,
        conversations,
        r.steps
    );
    let row = |name: &str, s: &bench::Stats| {
        println!(
            "  {name:<9} median {:8.2} ms  p99 {:8.2} ms  max {:8.2} ms",
            s.median, s.p99, s.max
        )
    };
    row("embed", &r.embed);
    row("backbone", &r.backbone);
    if let Some(sh) = &r.shift_backbone {
        println!(
            "    {} steps shifted the context (the oldest half of the KV cache dropped, every key left re-rotated and moved): backbone median {:.2} ms, max {:.2} ms",
            r.shifts, sh.median, sh.max
        );
    }
    row("depth", &r.depth);
    row("sampling", &r.sample);
    row("total", &r.total);
    if r.text_on_device {
        println!(
            "    (on a device both graphs are queued and waited for once: backbone is the time to queue, depth the wait for both)"
        );
    }
    println!(
        "  the backbone's graph alone, and llama.cpp's decode of the same file and embedding, alternated:"
    );
    row("graph", &r.backbone_alone);
    if let Some(p) = &r.peer {
        row("llama.cpp", &p.decode);
        println!(
            "    llama.cpp: {} graph split(s){}",
            p.splits.map_or("?".to_string(), |n| n.to_string()),
            p.syncs.map_or(String::new(), |n| format!(
                "; on the device at most {n} host synchronisations per decode (its scheduler waits and copies each of the graph's {} input tensors, and the outputs are read once)",
                (n - 1) / 2
            ))
        );
    }
    println!(
        "  weights read per step {:.1} MiB; peak RSS {:.0} MiB",
        r.weight_bytes_per_step as f64 / (1 << 20) as f64,
        r.peak_rss_bytes as f64 / (1 << 20) as f64
    );
    let how = if r.text_on_device {
        "the text token drawn in the backbone's graph"
    } else {
        "the host draws the text token from the logit row"
    };
    println!(
        "  backbone, depth transformer and sampling: {} ({how})",
        bench::traffic_line(&r.traffic, r.steps, "step")
    );
    if let Some(one) = alone {
        println!(
            "  {conversations} conversations together: step median {:.2} ms, one alone {:.2} ms in the same run: {:.2}× the time for {conversations}× the conversations; one alone: {}",
            r.total.median,
            one.total.median,
            r.total.median / one.total.median,
            bench::traffic_line(&one.traffic, one.steps, "step")
        );
    }
    Ok(())
}

fn mimi(
    model: PathBuf,
    frames: usize,
    t: Option<usize>,
    backend: Device,
    ops: bool,
    streams: usize,
) -> Result<()> {
    let n = threads(t);
    let mut mimi = Mimi::load(&mimi_path(&model)?, backend, n)?;
    if ops {
        bench::print_ops(mimi.profile(20)?);
        mimi.reset();
    }
    let r = bench::mimi(&mut mimi, frames.max(1), 10, n)?;
    let total = r.encode.median + r.decode.median;
    println!(
        "Mimi streaming, {} backend, {} threads, {} frames of 80 ms (warm)",
        mimi.backend_name(),
        r.threads,
        r.frames
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
    println!(
        "  encode and decode: {}",
        bench::traffic_line(&r.traffic, r.frames, "frame")
    );
    if streams > 1 {
        drop(mimi);
        let mut together = Mimi::load_streams(&mimi_path(&model)?, backend, n, streams)?;
        if ops {
            println!("{streams} streams together:");
            bench::print_ops(together.profile(20)?);
            together.reset();
        }
        let s = bench::mimi(&mut together, frames.max(1), 10, n)?;
        let both = s.encode.median + s.decode.median;
        println!(
            "  {streams} streams together, one frame of each per call: encode median {:.2} ms, decode median {:.2} ms; {:.2} ms against {:.2} ms for one alone in the same run: {:.2}× the time for {streams}× the streams",
            s.encode.median,
            s.decode.median,
            both,
            total,
            both / total
        );
        println!(
            "  {streams} streams, encode and decode: {}",
            bench::traffic_line(&s.traffic, s.frames, "frame")
        );
    }
    let (enc, dec) = bench::opus(frames.max(1))?;
    println!(
        "Ogg-Opus of remote clients (24 kHz mono, 80 ms pages, one thread): encode median {:.3} ms (p99 {:.3}), decode median {:.3} ms (p99 {:.3}) per frame",
        enc.median, enc.p99, dec.median, dec.p99
    );
    let aec = bench::echo(frames.max(1))?;
    println!(
        "Echo cancellation (AEC3 at 48 kHz, render and capture, one thread): median {:.3} ms (p99 {:.3}) per frame",
        aec.median, aec.p99
    );
    Ok(())
}
