//! `flm-edge serve`: the appliance. Loads the model, warms it up, tells systemd it is ready,
//! then runs the real-time pipeline between the ALSA devices (or, for evaluation, a WAV file
//! replayed at real-time pace) until SIGTERM; SIGHUP reloads the configuration.

pub mod abort;
pub mod alsa_io;
pub mod clock_match;
pub mod conversation;
pub mod conversations;
pub mod device;
pub mod echo_path;
pub mod far_clock;
pub mod file_io;
pub mod heard;
pub mod jetson;
pub mod link;
pub mod local;
pub mod memory;
pub mod metrics;
pub mod network_io;
pub mod page_cache;
pub mod pipeline;
pub mod realtime;
pub mod resample;
pub mod status;
pub mod together;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flm_conversion::model_files::{AUDIO_FILE, BACKBONE_FILE, MIMI_FILE, audio_keys};
use flm_kernels::mimi::Mimi;
use sd_notify::NotifyState;

use crate::config::{Config, Source};
use crate::detok::Detokenizer;
use crate::engine::{Engine, EngineOptions, Sampling, SamplingOverrides};
use crate::model_dir::ModelDir;
use alsa_io::{AlsaCapture, AlsaPlayback, DeviceSpec};
use conversations::{Conversations, Feed};
use device::{CaptureDevice, PlaybackDevice};
use link::{PipelineEnd, Text};
use metrics::Metrics;
use pipeline::{Model, Schedule};

pub struct ServeOptions {
    pub board: Option<String>,
    pub config: Option<PathBuf>,
    /// Overrides the config's model folder.
    pub model: Option<PathBuf>,
    /// Overrides the config's backend.
    pub backend: Option<String>,
    /// Overrides the config's `server.listen`.
    pub listen: Option<String>,
    /// Replay: the user's voice from this WAV instead of the capture device.
    pub input_wav: Option<PathBuf>,
    /// Replay: the reply into this WAV (as long as the input) instead of the playback device.
    pub output_wav: Option<PathBuf>,
    /// Replay at real-time pace (else as fast as the model goes, nothing dropped).
    pub realtime: bool,
    /// Overrides the config's `status.record_heard`: what the model hears, into this WAV.
    pub record_heard: Option<PathBuf>,
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
            serve_threads()
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

/// `threads = 0`: every core but one. Threads that compute together wait for each other at
/// every op; when another program takes the core of one of them, all wait. Measured with one
/// busy program on two cores (README, "Sharing the CPU"): two threads missed every deadline,
/// one missed none.
pub fn serve_threads() -> usize {
    crate::default_threads().saturating_sub(1).max(1)
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
    let n = cfg.server.max_conversations as usize;
    // One Mimi of n streams: one copy of the weights, every conversation's frame in one
    // encode and one decode graph.
    let mut mimi = Mimi::load_streams(&dir.path(MIMI_FILE), opts.device, opts.threads, n)?;
    let mut engine = Engine::with_conversations(&dir, &opts, n)?;
    let mut detoks = vec![];
    for _ in 1..n {
        detoks.push(Detokenizer::from_json(tokenizer)?);
    }
    let mut codes = [0i32; 8];
    let mut pcm = [0f32; device::FRAME];
    mimi.encode(&pcm, &mut codes)?;
    mimi.decode(&codes, &mut pcm)?;
    mimi.reset();
    let users = vec![Some(codes); n];
    engine.step_some(&users)?;
    if n > 1 {
        // The step with some conversations waiting, built and sized too.
        let some: Vec<_> = (0..n).map(|c| (c == 0).then_some(codes)).collect();
        engine.step_some(&some)?;
    }
    engine.reset();
    // The weights are where they will be read from: the files' other cached pages go (on a
    // device, a second copy of the weights in the memory the GPU shares).
    for f in [BACKBONE_FILE, AUDIO_FILE, MIMI_FILE] {
        if let Err(e) = page_cache::drop_unmapped(&dir.path(f)) {
            eprintln!(
                "warning: {}: page cache not dropped ({e})",
                dir.path(f).display()
            );
        }
    }
    let c = &cfg.conversation;
    Ok(Model {
        engine,
        mimi,
        detok,
        control: Arc::new(conversation::Control::new(c.idle_reset_s, c.quiet_dbfs)),
        heard: None,
        detoks,
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
    if let Some(l) = &opts.listen {
        cfg.server.listen = l.clone();
    }
    if let Some(h) = &opts.record_heard {
        cfg.status.record_heard = h.display().to_string();
    }
    cfg.check()?;
    Ok(cfg)
}

/// The signals' flags. `stop`: SIGTERM or SIGINT. `reload`: SIGHUP. `interrupt`: any of them,
/// or a network conversation waiting: it ends the running pipeline, and the serve loop then
/// stops, reloads or takes the conversation.
struct Signals {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    interrupt: Arc<AtomicBool>,
}

impl Signals {
    fn register() -> Result<Signals> {
        let s = Signals {
            stop: Arc::new(AtomicBool::new(false)),
            reload: Arc::new(AtomicBool::new(false)),
            interrupt: Arc::new(AtomicBool::new(false)),
        };
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, s.stop.clone())?;
            signal_hook::flag::register(sig, s.interrupt.clone())?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, s.reload.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGHUP, s.interrupt.clone())?;
        Ok(s)
    }
}

/// The network front (the HTTP stack of `crate::remote`), started once the model is loaded:
/// given the configuration and the owner of the model, it serves the remote clients and
/// returns where the page's events go.
pub type StartFront<'a> = &'a dyn Fn(&Config, Arc<Conversations>) -> Result<Arc<dyn Feed>>;

pub fn serve(opts: ServeOptions, start_front: StartFront) -> Result<()> {
    let mut cfg = load_config(&opts)?;
    // A device that is not there is one line, before the model is read.
    flm_kernels::device::Device::check(cfg.backend.parse()?)?;
    let signals = Signals::register()?;
    let metrics = Arc::new(Metrics::new());
    // A file that cannot be written is one line, before the model is read. The recorder is
    // dropped however this function ends (its sizes written, the file closed).
    let (recorder, mut heard) = match cfg.status.record_heard.as_str() {
        "" => (None, None),
        p => {
            let (r, tap) = heard::Recorder::start(Path::new(p), metrics.clone())?;
            (Some(r), Some(tap))
        }
    };
    abort::install();
    abort::at(None, abort::Stage::Load);
    // On a Jetson: the power mode and whether the clocks are locked (warnings when they scale).
    jetson::log(Path::new("/"));
    status::notify(&[NotifyState::Status("loading the model")]);
    apply_compute_nice(cfg.compute_nice);
    let replay = opts.input_wav.is_some() || opts.output_wav.is_some();
    let several = cfg.server.max_conversations > 1;
    if several && replay {
        bail!(
            "key `server.max_conversations`: a replay (--input-wav) runs one conversation; set 1"
        );
    }
    // With ALSA devices, the local microphone's conversation is one of the N: the network
    // clients have the N-1 other places.
    let local = several && cfg.source() == Source::Alsa && cfg.server.local_conversation;
    if let Some(m) = &cfg.model {
        memory::check(m, &cfg, opts.board.as_deref())?;
    }
    let t0 = Instant::now();
    let mut model = load_model(&cfg)?;
    eprintln!(
        "flm-edge: model {} loaded and warmed up in {:.1} s",
        cfg.model.as_ref().unwrap().display(),
        t0.elapsed().as_secs_f64()
    );
    model.heard = heard.take();
    if let Some(r) = &recorder {
        eprintln!(
            "flm-edge: recording what the model hears into {}",
            r.path().display()
        );
    }
    let mut owner = Conversations::new(
        metrics.clone(),
        model.control.clone(),
        signals.interrupt.clone(),
        std::thread::current(),
        cfg.server.receive_buffer_s as usize * device::RATE as usize,
    );
    if several {
        owner = owner.several(cfg.server.max_conversations as usize - local as usize);
    }
    let owner = Arc::new(owner);
    let feed = start_front(&cfg, owner.clone())?;
    let events = match cfg.status.events.as_str() {
        "" => status::EventStream::without_socket(),
        p => status::EventStream::listen(Path::new(p), model.control.clone())?,
    }
    .feeding(feed);
    status::supervise(
        metrics.clone(),
        signals.stop.clone(),
        Duration::from_secs(cfg.status.log_interval_s.max(1) as u64),
    );
    let mut base = model.engine.sampling();
    owner.set_base(base);
    loop {
        // Cleared first: whatever happens from here on ends the next pipeline at once.
        signals.interrupt.store(false, Relaxed);
        if signals.stop.load(Relaxed) {
            eprintln!("flm-edge: stopped after {}", metrics.totals());
            break;
        }
        if let Some(conversation) = owner.take_offer() {
            converse(&cfg, &mut model, conversation, &owner, &signals, &events)?;
            continue;
        }
        if signals.reload.swap(false, Relaxed) {
            status::notify(&[NotifyState::Reloading]);
            reload(&opts, &mut cfg, &mut model, &metrics);
            base = model.engine.sampling();
            owner.set_base(base);
            continue;
        }
        let schedule = schedule(&cfg);
        let mut state = "listening";
        let mut on_event = |e: &pipeline::Event| {
            events.send(e, e.state() != state);
            state = e.state();
        };
        if several {
            // Up to `server.max_conversations` in one step: the local microphone's (its
            // devices opened as alone, its events as alone), and network conversations;
            // without it, the local devices stay closed.
            model.start_over();
            let (mut cap, mut play);
            let (mut cap_rt, mut play_rt);
            let mut on_local_event = on_event;
            let local = if local {
                metrics.idle.store(false, Relaxed);
                (cap, play) = open_devices(&cfg, &metrics)?;
                let prio = cfg.audio.rt_priority;
                (cap_rt, play_rt) = (
                    Realtime::new(&mut cap, prio),
                    Realtime::new(&mut play, prio),
                );
                Some(together::Local {
                    capture: &mut cap_rt,
                    playback: &mut play_rt,
                    schedule,
                    on_event: &mut on_local_event,
                })
            } else {
                metrics.idle.store(true, Relaxed);
                None
            };
            status::notify(&[NotifyState::Ready]);
            together::run(
                &mut model,
                &owner,
                &signals.interrupt,
                cfg.schedule.latency_frames,
                cfg.status.show_peers,
                &events,
                local,
            )?;
            continue;
        }
        let on_event: Option<&mut (dyn FnMut(&pipeline::Event) + Send)> = Some(&mut on_event);
        if replay {
            replay_wav(
                &opts, &mut model, base, schedule, &metrics, &signals, on_event,
            )?;
            break;
        }
        match cfg.source() {
            Source::Network => {
                // Nothing to do until a client comes: healthy, the watchdog fed.
                status::notify(&[NotifyState::Ready]);
                metrics.idle.store(true, Relaxed);
                while !signals.interrupt.load(Relaxed) {
                    std::thread::park_timeout(Duration::from_millis(100));
                }
                metrics.idle.store(false, Relaxed);
            }
            Source::Alsa => {
                // Steps are owed from here on. The local microphone's conversation keeps the
                // configuration's sampling: `/api/settings` is for network conversations.
                metrics.idle.store(false, Relaxed);
                let (mut cap, mut play) = open_devices(&cfg, &metrics)?;
                let prio = cfg.audio.rt_priority;
                let mut cap = Realtime::new(&mut cap, prio);
                let mut play = Realtime::new(&mut play, prio);
                status::notify(&[NotifyState::Ready]);
                // The local microphone's conversation keeps the configuration's sampling:
                // `/api/settings` is for network conversations.
                conversations::hold(
                    &mut model,
                    base,
                    || {},
                    &mut cap,
                    &mut play,
                    schedule,
                    &metrics,
                    &signals.interrupt,
                    on_event,
                )?;
            }
        }
    }
    status::notify(&[NotifyState::Stopping]);
    // The frames still in the ring written, the header's sizes, the file closed.
    drop(recorder);
    Ok(())
}

/// The capture and playback devices, joined through the echo canceller when it is on.
fn open_devices(cfg: &Config, metrics: &Arc<Metrics>) -> Result<(AlsaCapture, AlsaPlayback)> {
    let cap = AlsaCapture::open(spec(cfg, &cfg.audio.capture), metrics)?;
    let play = AlsaPlayback::open(spec(cfg, &cfg.audio.playback), metrics)?;
    if cfg.audio.echo_cancel != "aec3" {
        return Ok((cap, play));
    }
    let (far, echo) = echo_path::link(cfg.audio.rate, metrics.clone())?;
    Ok((cap.with_echo(echo), play.with_echo(far)))
}

fn schedule(cfg: &Config) -> Schedule {
    Schedule {
        latency_frames: cfg.schedule.latency_frames,
        max_backlog_frames: cfg.schedule.max_backlog_frames,
        stall: None,
        fail: None,
    }
}

/// `--input-wav` / `--output-wav`: the file stands for the microphone, the reply is written
/// time-aligned with it.
#[allow(clippy::too_many_arguments)]
fn replay_wav(
    opts: &ServeOptions,
    model: &mut Model,
    sampling: Sampling,
    schedule: Schedule,
    metrics: &Metrics,
    signals: &Signals,
    on_event: Option<&mut (dyn FnMut(&pipeline::Event) + Send)>,
) -> Result<()> {
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
    conversations::hold(
        model,
        sampling,
        || {},
        &mut cap,
        &mut play,
        schedule,
        metrics,
        &signals.interrupt,
        on_event,
    )?;
    let mut reply = play.into_pcm();
    reply.truncate(len);
    crate::wav::write_mono_24k(output, &reply)?;
    eprintln!("flm-edge: replayed {}", metrics.totals());
    Ok(())
}

/// One network conversation: a fresh model state with the client's settings, the pipeline
/// between the client's audio and its socket, then the model is free again.
fn converse(
    cfg: &Config,
    model: &mut Model,
    conversation: PipelineEnd,
    owner: &Conversations,
    signals: &Signals,
    events: &status::EventStream,
) -> Result<()> {
    let metrics = &owner.metrics;
    let PipelineEnd {
        audio_in,
        audio_out,
        mut text,
        state,
        peer,
        sampling,
    } = conversation;
    if let Err(e) = sampling.check() {
        state.finish();
        owner.release();
        eprintln!("flm-edge: conversation with {peer} refused: {e:#}");
        return Ok(());
    }
    metrics.remote.begin(metrics.deadline_misses.load(Relaxed));
    eprintln!("flm-edge: conversation with {peer} begins");
    // The client's address is in the event lines (and the page's) only when asked for.
    let line = |what: &str| {
        let mut l = serde_json::json!({ "conversation": what });
        if cfg.status.show_peers {
            l["peer"] = peer.as_str().into();
        }
        l
    };
    events.send_line(&line("begin"));
    status::notify(&[NotifyState::Ready]);
    let (mut cap, mut play) = network_io::devices(
        audio_in,
        audio_out,
        state.clone(),
        signals.interrupt.clone(),
    );
    let mut shown = "listening";
    // The client's text is lossless: while its ring is full (the socket sends every 10 ms),
    // this thread waits, unless the client has gone.
    let text_state = state.clone();
    let mut send_text = move |mut t: Text| {
        while let Err(rtrb::PushError::Full(back)) = text.push(t) {
            if text_state.client_gone.load(Relaxed) {
                return;
            }
            t = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let mut on_event = |e: &pipeline::Event| {
        if !e.piece.is_empty() {
            send_text(Text::Piece(e.piece.clone()));
        }
        if e.text_end {
            send_text(Text::End);
        }
        events.send(e, e.state() != shown);
        shown = e.state();
    };
    let result = conversations::hold(
        model,
        sampling,
        || state.start(),
        &mut cap,
        &mut play,
        schedule(cfg),
        metrics,
        &signals.interrupt,
        Some(&mut on_event),
    );
    state.finish();
    metrics.remote.end(metrics.deadline_misses.load(Relaxed));
    let r = &metrics.remote;
    eprintln!(
        "flm-edge: conversation with {peer} ends: {} frames in, {} out, {} late",
        r.frames_in.load(Relaxed),
        r.frames_out.load(Relaxed),
        r.late(metrics.deadline_misses.load(Relaxed)),
    );
    events.send_line(&line("end"));
    owner.release();
    result
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
    if old.status.record_heard != new.status.record_heard {
        keys.push("status.record_heard");
    }
    if old.status.log_interval_s != new.status.log_interval_s {
        keys.push("status.log_interval_s");
    }
    // The compute threads, started at the first load, keep the value they were started with.
    if old.compute_nice != new.compute_nice {
        keys.push("compute_nice");
    }
    // The HTTP server is started once, with these.
    let (o, n) = (&old.server, &new.server);
    for (changed, key) in [
        (o.listen != n.listen, "server.listen"),
        (
            o.tls_cert != n.tls_cert || o.tls_key != n.tls_key,
            "server.tls_cert/tls_key",
        ),
        (
            o.max_connections != n.max_connections,
            "server.max_connections",
        ),
        (
            o.idle_timeout_s != n.idle_timeout_s,
            "server.idle_timeout_s",
        ),
        (o.page_dir != n.page_dir, "server.page_dir"),
        (
            o.max_conversations != n.max_conversations,
            "server.max_conversations",
        ),
        (
            o.local_conversation != n.local_conversation,
            "server.local_conversation",
        ),
        (o.token != n.token, "server.token"),
        (
            o.allowed_origins != n.allowed_origins,
            "server.allowed_origins",
        ),
        (
            o.max_conversation_s != n.max_conversation_s,
            "server.max_conversation_s",
        ),
    ] {
        if changed {
            keys.push(key);
        }
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
        || old.memory_mib != new.memory_mib
}

/// Applies a configuration read again on SIGHUP: the audio devices and the schedule at the
/// pipeline's restart, the model (loaded again when any of its keys changed, the watchdog fed
/// meanwhile), and names the keys that wait for a restart. A configuration that does not
/// parse, or a model that does not load, leaves the previous one serving.
fn reload(opts: &ServeOptions, cfg: &mut Config, model: &mut Model, metrics: &Metrics) {
    let mut new = match load_config(opts) {
        Ok(new) => new,
        Err(e) => {
            eprintln!(
                "flm-edge: configuration not reloaded: {e:#}; the previous one keeps serving"
            );
            return;
        }
    };
    let later = needs_restart(cfg, &new);
    // The admission of conversations is set up once, at start.
    new.server.max_conversations = cfg.server.max_conversations;
    new.server.local_conversation = cfg.server.local_conversation;
    if engine_changed(cfg, &new) {
        // A model load can outlast the watchdog: it is fed while the load runs (up to a
        // bound), and systemd is told that the reload may take longer than its timeout.
        metrics.loading.store(true, Relaxed);
        status::notify(&[NotifyState::ExtendTimeoutUsec(600_000_000)]);
        // The new context or budget must fit the memory too.
        let fits = match &new.model {
            Some(m) => memory::check(m, &new, opts.board.as_deref()),
            None => Ok(()),
        };
        let loaded = fits.and_then(|()| load_model(&new));
        metrics.loading.store(false, Relaxed);
        match loaded {
            Ok(m) => {
                // The control socket keeps the same control (and a mute stays on), and the
                // recording goes on.
                let control = model.control.clone();
                let heard = model.heard.take();
                // (`detoks` comes with the new model.)
                *model = m;
                model.control = control;
                model.heard = heard;
            }
            Err(e) => {
                eprintln!(
                    "flm-edge: configuration not reloaded: the model did not load ({e:#}); the previous one keeps serving"
                );
                model.start_over();
                return;
            }
        }
    } else {
        model.start_over();
    }
    model
        .control
        .configure(new.conversation.idle_reset_s, new.conversation.quiet_dbfs);
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

/// Gives this thread, which loads and steps the model, `compute_nice` before the model starts
/// its compute threads, so that they inherit it.
fn apply_compute_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    if let Err(why) = realtime::set_nice(nice) {
        eprintln!(
            "flm-edge: warning: the model's threads stay at nice {} (compute_nice {nice} refused: {why}); grant CAP_SYS_NICE or LimitNICE",
            realtime::nice()
        );
    }
}

/// Raises the audio thread that first uses a device to real-time priority, once.
struct Realtime<'a, D: ?Sized> {
    inner: &'a mut D,
    prio: u32,
    applied: bool,
}

impl<'a, D: ?Sized> Realtime<'a, D> {
    fn new(inner: &'a mut D, prio: u32) -> Self {
        Realtime {
            inner,
            prio,
            applied: false,
        }
    }

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
    fn pacing(&self) -> device::Pacing {
        self.inner.pacing()
    }
}
