//! `flm-edge serve`: the appliance. Loads the model, warms it up, tells systemd it is ready,
//! then runs the real-time pipeline between the ALSA devices (or, for evaluation, a WAV file
//! replayed at real-time pace) until SIGTERM; SIGHUP reloads the configuration.

pub mod alsa_io;
pub mod clock_match;
pub mod device;
pub mod file_io;
pub mod metrics;
pub mod pipeline;
pub mod realtime;
pub mod resample;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flm_conversion::model_files::{AUDIO_FILE, MIMI_FILE, audio_keys};
use flm_kernels::mimi::Mimi;
use sd_notify::NotifyState;

use crate::config::Config;
use crate::detok::Detokenizer;
use crate::engine::{Engine, EngineOptions, Sampling, SamplingOverrides};
use crate::model_dir::ModelDir;
use alsa_io::{AlsaCapture, AlsaPlayback, DeviceSpec};
use device::{CaptureDevice, PlaybackDevice};
use metrics::Metrics;
use pipeline::{Model, Schedule};

pub struct ServeOptions {
    pub board: Option<String>,
    pub config: Option<PathBuf>,
    /// Overrides the config's model folder.
    pub model: Option<PathBuf>,
    /// Overrides the config's backend.
    pub backend: Option<String>,
    /// Replay: the user's voice from this WAV instead of the capture device.
    pub input_wav: Option<PathBuf>,
    /// Replay: the reply into this WAV (as long as the input) instead of the playback device.
    pub output_wav: Option<PathBuf>,
    /// Replay at real-time pace (else as fast as the model goes, nothing dropped).
    pub realtime: bool,
}

/// Engine options from the configuration and the model's own sampling defaults.
pub fn engine_options(cfg: &Config, model: &ModelDir) -> Result<EngineOptions> {
    let o = &cfg.sampling;
    let text = SamplingOverrides {
        temperature: o.text_temperature,
        top_p: o.text_top_p,
        top_k: o.text_top_k,
        repetition_penalty: o.text_repetition_penalty,
        repetition_window: None,
    };
    let audio = SamplingOverrides {
        temperature: o.audio_temperature,
        top_p: o.audio_top_p,
        top_k: o.audio_top_k,
        repetition_penalty: o.audio_repetition_penalty,
        repetition_window: None,
    };
    let s =
        Sampling::for_model(model, &text, &audio, o.greedy).context("configuration [sampling]")?;
    Ok(EngineOptions {
        threads: if cfg.threads == 0 {
            crate::default_threads()
        } else {
            cfg.threads
        },
        sampling: s,
        seed: o.seed,
        context: (cfg.context.positions > 0).then_some(cfg.context.positions),
        sink: cfg.context.sink,
        kv_f32: None,
        device: cfg
            .backend
            .parse()
            .map_err(|e| anyhow::anyhow!("key `backend`: {e}"))?,
    })
}

/// Loads the model and runs one warm-up step (graphs built, buffers sized), then starts
/// from a clean state.
pub fn load_model(cfg: &Config) -> Result<Model> {
    let Some(dir) = &cfg.model else {
        bail!("no model folder: set `model` in the configuration or pass --model");
    };
    let dir = ModelDir::open(dir)?;
    let opts = engine_options(cfg, &dir)?;
    let tokenizer = dir
        .audio
        .get_str(audio_keys::TOKENIZER_JSON)
        .with_context(|| dir.path(AUDIO_FILE).display().to_string())?;
    let detok = Detokenizer::from_json(tokenizer)?;
    let mut mimi = Mimi::load(&dir.path(MIMI_FILE), opts.device, opts.threads)?;
    let mut engine = Engine::load(&dir, &opts)?;
    let mut codes = [0i32; 8];
    let mut pcm = [0f32; device::FRAME];
    mimi.encode(&pcm, &mut codes)?;
    engine.step(&codes)?;
    mimi.decode(&codes, &mut pcm)?;
    mimi.reset();
    engine.reset();
    Ok(Model {
        engine,
        mimi,
        detok,
    })
}

fn spec(cfg: &Config, name: &str) -> DeviceSpec {
    let a = &cfg.audio;
    DeviceSpec {
        name: name.to_string(),
        rate: a.rate,
        channels: a.channels,
        format: a.format.clone(),
        period_ms: a.period_ms,
        periods: a.periods,
    }
}

/// The configuration: board profile, file, then the command line's overrides, checked.
fn load_config(opts: &ServeOptions) -> Result<Config> {
    let mut cfg = Config::load(opts.board.as_deref(), opts.config.as_deref())?;
    if let Some(m) = &opts.model {
        cfg.model = Some(m.clone());
    }
    if let Some(b) = &opts.backend {
        cfg.backend = b.clone();
    }
    cfg.check()?;
    Ok(cfg)
}

pub fn serve(opts: ServeOptions) -> Result<()> {
    let mut cfg = load_config(&opts)?;
    // A device that is not there is one line, before the model is read.
    flm_kernels::device::Device::check(cfg.backend.parse()?)?;
    // `stop`: SIGTERM or SIGINT. `interrupt`: any of them or SIGHUP; it ends the pipeline,
    // which then stops for good or starts again with the configuration read anew.
    let stop = Arc::new(AtomicBool::new(false));
    let interrupt = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
        signal_hook::flag::register(sig, interrupt.clone())?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, interrupt.clone())?;
    status::notify(&[NotifyState::Status("loading the model")]);
    let t0 = Instant::now();
    let mut model = load_model(&cfg)?;
    eprintln!(
        "flm-edge: model {} loaded and warmed up in {:.1} s",
        cfg.model.as_ref().unwrap().display(),
        t0.elapsed().as_secs_f64()
    );
    let metrics = Arc::new(Metrics::new());
    if !cfg.status.metrics.is_empty() {
        status::serve_metrics(&cfg.status.metrics, metrics.clone())?;
    }
    let events = match cfg.status.events.as_str() {
        "" => None,
        p => Some(status::EventStream::listen(Path::new(p))?),
    };
    status::supervise(
        metrics.clone(),
        stop.clone(),
        Duration::from_secs(cfg.status.log_interval_s.max(1) as u64),
    );
    let replay = opts.input_wav.is_some() || opts.output_wav.is_some();
    loop {
        let schedule = Schedule {
            latency_frames: cfg.schedule.latency_frames,
            max_backlog_frames: cfg.schedule.max_backlog_frames,
            stall: None,
            fail: None,
        };
        let mut speaking = false;
        let mut on_event = |e: &pipeline::Event| {
            if let Some(ev) = &events {
                ev.send(e, e.speaking != speaking);
            }
            speaking = e.speaking;
        };
        let on_event: Option<&mut (dyn FnMut(&pipeline::Event) + Send)> = Some(&mut on_event);
        if replay {
            let input = opts
                .input_wav
                .as_ref()
                .context("--output-wav needs --input-wav")?;
            let output = opts
                .output_wav
                .as_ref()
                .context("--input-wav needs --output-wav")?;
            let pcm = crate::wav::read_mono_24k(input)?;
            let len = pcm.len();
            let origin = opts.realtime.then(Instant::now);
            let mut cap = file_io::WavCapture::new(pcm, origin);
            let mut play = file_io::WavPlayback::new(cap.frames(), origin);
            metrics.capture_present.store(true, Relaxed);
            metrics.playback_present.store(true, Relaxed);
            status::notify(&[NotifyState::Ready]);
            pipeline::run(
                &mut model, &mut cap, &mut play, schedule, &metrics, &interrupt, on_event,
            )?;
            let mut reply = play.into_pcm();
            reply.truncate(len);
            crate::wav::write_mono_24k(output, &reply)?;
            eprintln!("flm-edge: replayed {}", metrics.totals());
            break;
        }
        let mut cap = AlsaCapture::open(spec(&cfg, &cfg.audio.capture), &metrics)?;
        let mut play = AlsaPlayback::open(spec(&cfg, &cfg.audio.playback), &metrics)?;
        let prio = cfg.audio.rt_priority;
        let mut cap = Realtime {
            inner: &mut cap,
            prio,
            applied: false,
        };
        let mut play = Realtime {
            inner: &mut play,
            prio,
            applied: false,
        };
        status::notify(&[NotifyState::Ready]);
        pipeline::run(
            &mut model, &mut cap, &mut play, schedule, &metrics, &interrupt, on_event,
        )?;
        if stop.load(Relaxed) {
            eprintln!("flm-edge: stopped after {}", metrics.totals());
            break;
        }
        // SIGHUP: a new configuration.
        interrupt.store(false, Relaxed);
        status::notify(&[NotifyState::Reloading]);
        reload(&opts, &mut cfg, &mut model, &metrics);
    }
    status::notify(&[NotifyState::Stopping]);
    Ok(())
}

/// Keys read once at start, by the status threads: a change waits for a restart.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = vec![];
    if old.status.metrics != new.status.metrics {
        keys.push("status.metrics");
    }
    if old.status.events != new.status.events {
        keys.push("status.events");
    }
    if old.status.log_interval_s != new.status.log_interval_s {
        keys.push("status.log_interval_s");
    }
    keys
}

/// Whether `new` asks for another engine: the model, where and how it runs, its sampling
/// and its context.
fn engine_changed(old: &Config, new: &Config) -> bool {
    old.model != new.model
        || old.threads != new.threads
        || old.backend != new.backend
        || old.sampling != new.sampling
        || old.context != new.context
}

/// Applies a configuration read again on SIGHUP: the audio devices and the schedule at the
/// pipeline's restart, the model (loaded again when any of its keys changed, the watchdog fed
/// meanwhile), and names the keys that wait for a restart. A configuration that does not
/// parse, or a model that does not load, leaves the previous one serving.
fn reload(opts: &ServeOptions, cfg: &mut Config, model: &mut Model, metrics: &Metrics) {
    let new = match load_config(opts) {
        Ok(new) => new,
        Err(e) => {
            eprintln!(
                "flm-edge: configuration not reloaded: {e:#}; the previous one keeps serving"
            );
            return;
        }
    };
    if engine_changed(cfg, &new) {
        // A model load can outlast the watchdog: it is fed while the load runs (up to a
        // bound), and systemd is told that the reload may take longer than its timeout.
        metrics.loading.store(true, Relaxed);
        status::notify(&[NotifyState::ExtendTimeoutUsec(600_000_000)]);
        let loaded = load_model(&new);
        metrics.loading.store(false, Relaxed);
        match loaded {
            Ok(m) => *model = m,
            Err(e) => {
                eprintln!(
                    "flm-edge: configuration not reloaded: the model did not load ({e:#}); the previous one keeps serving"
                );
                model.engine.reset();
                model.mimi.reset();
                model.detok.reset();
                return;
            }
        }
    } else {
        model.engine.reset();
        model.mimi.reset();
        model.detok.reset();
    }
    let later = needs_restart(cfg, &new);
    if later.is_empty() {
        eprintln!("flm-edge: configuration reloaded");
    } else {
        eprintln!(
            "flm-edge: configuration reloaded; {} take effect at the next start",
            later.join(", ")
        );
    }
    *cfg = new;
}

/// Raises the audio thread that first uses a device to real-time priority, once.
struct Realtime<'a, D: ?Sized> {
    inner: &'a mut D,
    prio: u32,
    applied: bool,
}

impl<D: ?Sized> Realtime<'_, D> {
    fn apply(&mut self, dir: &str) {
        if !self.applied {
            self.applied = true;
            if let Err(why) = realtime::set_fifo(self.prio) {
                eprintln!(
                    "flm-edge: warning: {dir} thread stays at normal priority (SCHED_FIFO {} refused: {why}); grant CAP_SYS_NICE or LimitRTPRIO",
                    self.prio
                );
            }
        }
    }
}

impl<D: CaptureDevice + ?Sized> CaptureDevice for Realtime<'_, D> {
    fn next_frame(&mut self, out: &mut device::Pcm, m: &Metrics) -> device::Captured {
        self.apply("capture");
        self.inner.next_frame(out, m)
    }
}

impl<D: PlaybackDevice + ?Sized> PlaybackDevice for Realtime<'_, D> {
    fn play_frame(&mut self, fill: &mut dyn FnMut(&mut device::Pcm), m: &Metrics) -> bool {
        self.apply("playback");
        self.inner.play_frame(fill, m)
    }
    fn skip_frame(&mut self) {
        self.inner.skip_frame()
    }
    fn paced(&self) -> bool {
        self.inner.paced()
    }
}
