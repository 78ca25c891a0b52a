//! The `flm-edge` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use flm_conversion::{ConvertOptions, Gguf, MimiDtype, Quant};
use flm_edge::engine::{Device, EngineOptions, Sampling, SamplingOverrides};
use flm_edge::run::{RunOptions, UserInput};
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
        /// Weight type of the language model: f32, f16, q8_0, q5_k, q4_k, q4_0 or q3_k.
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
    /// A whole conversation from a file, offline: one 80 ms step per input frame, as fast as
    /// the machine allows.
    #[command(group(clap::ArgGroup::new("user").required(true).args(["input", "input_codes"])))]
    Run {
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
        engine: EngineArgs,
    },
    /// The appliance: listen and speak through ALSA every 80 ms until SIGTERM (SIGHUP reloads
    /// the configuration). With --input-wav/--output-wav, replays a file through the same
    /// pipeline instead of the devices.
    Serve {
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
    },
    /// ALSA cards and PCM names usable as `audio.capture` / `audio.playback`, and the
    /// compute devices of this build.
    Devices,
    /// Echo cancellation on files (WebRTC's AEC3, as the daemon runs it): removes from the
    /// microphone recording the echo of what the loudspeaker played. For tuning a new
    /// enclosure. Any PCM WAV in; out: the microphone's length, 24 kHz mono.
    Aec {
        /// What the loudspeaker played.
        #[arg(long, value_name = "far.wav")]
        far: PathBuf,
        /// What the microphone recorded, on the same clock from the same start.
        #[arg(long, value_name = "mic.wav")]
        mic: PathBuf,
        #[arg(long, value_name = "out.wav")]
        output: PathBuf,
    },
    /// Does a device compute what the CPU computes? Writes a small seeded model, runs Mimi
    /// and greedy steps on both, prints one line per check; exits non-zero when one fails.
    Selftest {
        /// The device under test: cpu, cuda, vulkan, gpu, or a device such as cuda0.
        #[arg(long, default_value = "gpu")]
        backend: Device,
        /// The device it is compared with.
        #[arg(long, default_value = "cpu")]
        reference: Device,
        /// Steps of the language model (80 ms frames of the test clip).
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// CPU threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Seed of the test model's weights.
        #[arg(long, default_value_t = 3)]
        seed: u64,
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

#[derive(Subcommand)]
enum BenchCmd {
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
    },
    /// One step of the language model (embed, backbone, depth transformer, sampling), ms per
    /// 80 ms step, next to llama.cpp's own decode of one token of the same backbone.
    Step {
        #[arg(long, value_name = "MODEL_DIR")]
        model: PathBuf,
        /// Timed steps (after 5 warm-up steps).
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Also time each node of the depth transformer's last position alone.
        #[arg(long)]
        ops: bool,
        /// Shift the context every N timed steps, as when it is full (llama.cpp re-rotates
        /// the whole cache, so this costs what a full context's shift costs): the cost of a
        /// shift at any `--context` without stepping through it first.
        #[arg(long, value_name = "N")]
        shift_every: Option<usize>,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

/// Options of the step engine shared by the commands that run the model.
#[derive(clap::Args)]
struct EngineArgs {
    /// Seed of the samplers.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Argmax for text and audio (repetition penalties still apply).
    #[arg(long)]
    greedy: bool,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// cpu, cuda or vulkan (builds with that feature; the best device of the backend), gpu
    /// (any), or a device such as cuda0: the backbone, the depth transformer and Mimi.
    #[arg(long, default_value = "cpu")]
    backend: Device,
    /// Backbone context in steps (default: the model's, 8192 for the release); when full,
    /// the oldest steps after the first `--sink` are dropped.
    #[arg(long, value_name = "STEPS")]
    context: Option<u32>,
    /// Steps at the start of the conversation that are never dropped.
    #[arg(long, default_value_t = 16)]
    sink: u32,
    /// Keep the backbone's KV cache in f32 (default: f32 for f32 weights, else f16).
    #[arg(long)]
    kv_f32: bool,
    #[arg(long)]
    temp_text: Option<f32>,
    #[arg(long)]
    top_p_text: Option<f32>,
    #[arg(long)]
    top_k_text: Option<u32>,
    #[arg(long)]
    penalty_text: Option<f32>,
    #[arg(long)]
    penalty_window_text: Option<usize>,
    #[arg(long)]
    temp_audio: Option<f32>,
    #[arg(long)]
    top_p_audio: Option<f32>,
    #[arg(long)]
    top_k_audio: Option<u32>,
    #[arg(long)]
    penalty_audio: Option<f32>,
    #[arg(long)]
    penalty_window_audio: Option<usize>,
}

impl EngineArgs {
    /// Engine options: the model's sampling defaults with these flags on top.
    fn options(&self, model: &ModelDir) -> Result<EngineOptions> {
        let text = SamplingOverrides {
            temperature: self.temp_text,
            top_p: self.top_p_text,
            top_k: self.top_k_text,
            repetition_penalty: self.penalty_text,
            repetition_window: self.penalty_window_text,
        };
        let audio = SamplingOverrides {
            temperature: self.temp_audio,
            top_p: self.top_p_audio,
            top_k: self.top_k_audio,
            repetition_penalty: self.penalty_audio,
            repetition_window: self.penalty_window_audio,
        };
        let s = Sampling::for_model(model, &text, &audio, self.greedy)?;
        Ok(EngineOptions {
            device: self.backend,
            threads: threads(self.threads),
            sampling: s,
            seed: self.seed,
            context: self.context,
            sink: self.sink,
            kv_f32: self.kv_f32.then_some(true),
            keep_text_logits: false,
        })
    }
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

impl Cmd {
    /// The device a command asked for with `--backend` (serve reads its configuration).
    fn device(&self) -> Option<Device> {
        match self {
            Cmd::Run { engine, .. } => Some(engine.backend),
            Cmd::Mimi {
                cmd: MimiCmd::Encode { backend, .. } | MimiCmd::Decode { backend, .. },
            } => Some(*backend),
            Cmd::Bench {
                cmd: BenchCmd::Mimi { backend, .. },
            } => Some(*backend),
            Cmd::Bench {
                cmd: BenchCmd::Step { engine, .. },
            } => Some(engine.backend),
            Cmd::Selftest { backend, .. } => Some(*backend),
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
                    backend,
                },
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
        Cmd::Mimi {
            cmd:
                MimiCmd::Decode {
                    model,
                    input,
                    output,
                    threads: t,
                    backend,
                },
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
        Cmd::Run {
            model,
            input,
            input_codes,
            output,
            transcript,
            engine,
        } => {
            let dir = ModelDir::open(&model)?;
            let opts = engine.options(&dir)?;
            let input = match (input, input_codes) {
                (_, Some(codes)) => UserInput::Codes(codes),
                (Some(wav), None) => UserInput::Wav(wav),
                (None, None) => unreachable!("clap requires one"),
            };
            let summary = flm_edge::run::run(RunOptions {
                model,
                input,
                output: output.clone(),
                transcript,
                engine: opts,
            })?;
            eprintln!(
                "{} steps, median {:.1} ms per 80 ms step; reply in {}",
                summary.steps,
                summary.median_step_ms,
                output.display()
            );
            if !summary.text.is_empty() {
                println!("{}", summary.text);
            }
        }
        Cmd::Serve {
            config,
            board,
            model,
            backend,
            listen,
            input_wav,
            output_wav,
            realtime,
        } => flm_edge::serve::serve(flm_edge::serve::ServeOptions {
            board,
            config,
            model,
            backend: backend.map(|b| b.to_string()),
            listen,
            input_wav,
            output_wav,
            realtime,
        })?,
        Cmd::Aec { far, mic, output } => {
            let (far, mic) = (wav::read_mono_24k(&far)?, wav::read_mono_24k(&mic)?);
            // AEC3 runs at 16, 32 or 48 kHz: the 24 kHz signals go through it at 48 kHz.
            let up = |x: &[f32]| wav::resample(x, 24_000, 48_000);
            let out = flm_edge::echo::cancel(&up(&far)?, &up(&mic)?, 48_000)?;
            let mut out = wav::resample(&out, 48_000, 24_000)?;
            out.resize(mic.len(), 0.0);
            wav::write_mono_24k(&output, &out)?;
        }
        Cmd::Devices => {
            print!("{}", flm_edge::serve::alsa_io::list_devices()?);
            println!("\ncompute devices (--backend, `backend`):");
            for d in flm_kernels::device::list() {
                println!(
                    "  {:<8} {:?}  {}  {:.1} GiB",
                    d.name,
                    d.kind,
                    d.description,
                    d.memory_total as f64 / (1u64 << 30) as f64
                );
            }
        }
        Cmd::Selftest {
            backend,
            reference,
            steps,
            threads: t,
            seed,
        } => {
            let checks = flm_edge::selftest::selftest(&flm_edge::selftest::SelftestOptions {
                device: backend,
                reference,
                steps,
                threads: threads(t),
                seed,
            })?;
            println!(
                "selftest: {backend} against {reference}, {steps} steps, f32, q8_0, q4_k and q3_k weights, seed {seed}"
            );
            for c in &checks {
                println!("{c}");
            }
            let failed = checks.iter().filter(|c| !c.pass).count();
            if failed > 0 {
                anyhow::bail!("selftest: {failed} of {} checks failed", checks.len());
            }
            println!("selftest: all {} checks passed", checks.len());
        }
        Cmd::Bench {
            cmd:
                BenchCmd::Step {
                    model,
                    steps,
                    ops,
                    shift_every,
                    engine: args,
                },
        } => {
            let dir = ModelDir::open(&model)?;
            let opts = args.options(&dir)?;
            let threads = opts.threads;
            let mut engine = flm_edge::engine::Engine::load(&dir, &opts)?;
            let r = bench::step(&mut engine, &dir, steps, 5, threads, shift_every)?;
            if ops {
                bench::print_ops(engine.depformer().profile(20)?);
            }
            let quant = dir
                .audio
                .get_str(flm_conversion::model_files::audio_keys::QUANT)
                .unwrap_or("?");
            println!(
                "LM step, {}, {} threads, {quant} weights (mmap), {} steps (warm)",
                engine.device_name(),
                r.threads,
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
            println!(
                "    of which text head (final norm + lm_head) ≈ {:.2} ms",
                r.text_head
            );
            if let Some(sh) = &r.shift_backbone {
                println!(
                    "    {} steps shifted the context (the oldest half of the KV cache dropped, every key left re-rotated): backbone median {:.2} ms, max {:.2} ms",
                    r.shifts, sh.median, sh.max
                );
            }
            row("depth", &r.depth);
            row("sampling", &r.sample);
            row("total", &r.total);
            row("llama.cpp", &r.llama_decode);
            println!("    (llama_decode of one text token, same backbone, same run)");
            let around = r.embed.median + r.sample.median;
            let base = r.llama_decode.median;
            println!(
                "  around the backbone (embed + sampling): {:.2} % of llama.cpp's decode; depth transformer {:.1} %",
                100.0 * around / base,
                100.0 * r.depth.median / base
            );
            println!(
                "  weights read per step {:.1} MiB; peak RSS {:.0} MiB",
                r.weight_bytes_per_step as f64 / (1 << 20) as f64,
                r.peak_rss_bytes as f64 / (1 << 20) as f64
            );
            println!(
                "  depth transformer and sampling: {}",
                bench::traffic_line(&r.traffic, r.steps, "step")
            );
            let down = if r.text_on_device {
                "text token and hidden state down: the token drawn on the device"
            } else {
                "logits and hidden state down: the host draws the text token"
            };
            println!(
                "  backbone: 1 llama_decode per step in {} graph split(s) (input embedding up, {down}){}",
                r.graph_splits.map_or("?".to_string(), |n| n.to_string()),
                r.decode_syncs.map_or(String::new(), |n| format!(
                    "; on the device at most {n} host synchronisations per decode (its scheduler waits and copies each of the graph's {} input tensors, and the outputs are read once)",
                    (n - 1) / 2
                ))
            );
        }
        Cmd::Bench {
            cmd:
                BenchCmd::Mimi {
                    model,
                    frames,
                    threads: t,
                    backend,
                    ops,
                },
        } => {
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
        }
    }
    Ok(())
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
