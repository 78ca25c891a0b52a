//! One 80 ms step of FLM-Audio: the user's 8 codes in, the model's text token and 8 speaking
//! codes out.
//!
//! embed (sum of 17 rows, on the host) → backbone (one graph, KV-cached) → hidden state and
//! text token → depth transformer (one graph, 8 positions) → speaking codes. Both graphs run
//! on one backend, and the depth transformer reads the hidden state where the backbone left
//! it: on a device a step is one upload per graph, two queued computes, one download per graph
//! and one wait. Everything a step touches is sized at load: the step allocates nothing.
//!
//! The tokens are drawn where their logits are: the 8 codes inside the depth transformer's
//! graph, and the text token inside the backbone's graph on a device (on the CPU the host
//! draws it from the logit row, which is then in host memory anyway). Each step draws 9
//! uniform numbers from the conversation's seeded generator, greedy or not, so that the
//! draws of a seed are the same on every device.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use flm_conversion::Gguf;
use flm_conversion::model_files::{AUDIO_FILE, BACKBONE_FILE, audio_keys};
use flm_kernels::backbone::{Backbone, BackboneOptions};
use flm_kernels::depformer::{CodeSampling, Depformer};
pub use flm_kernels::ggml::Device;
use flm_kernels::sampling::{SampleRng, Sampler, SamplingParams};

use crate::embed::Embedder;
use crate::model_dir::ModelDir;
use crate::token_ring::{CODEBOOKS, InitialTokens, TokenRing};

/// Sampling of both streams; defaults come from the model file.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    pub text: SamplingParams,
    pub audio: SamplingParams,
    /// The audio repetition penalty applies to codebooks 0..this.
    pub audio_penalty_codebooks: usize,
}

/// Changes to one stream's sampling; None keeps the model's value.
#[derive(Clone, Copy, Debug, Default)]
pub struct SamplingOverrides {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub repetition_penalty: Option<f32>,
    pub repetition_window: Option<usize>,
}

impl SamplingOverrides {
    fn apply(&self, p: &mut SamplingParams) {
        p.temperature = self.temperature.unwrap_or(p.temperature);
        p.top_p = self.top_p.unwrap_or(p.top_p);
        p.top_k = self.top_k.unwrap_or(p.top_k);
        p.repetition_penalty = self.repetition_penalty.unwrap_or(p.repetition_penalty);
        p.repetition_window = self.repetition_window.unwrap_or(p.repetition_window);
    }
}

impl Sampling {
    /// The model's defaults with `text` and `audio` on top (argmax everywhere when
    /// `greedy`), checked.
    pub fn for_model(
        model: &ModelDir,
        text: &SamplingOverrides,
        audio: &SamplingOverrides,
        greedy: bool,
    ) -> Result<Sampling> {
        let label = model.path(AUDIO_FILE).display().to_string();
        let mut s = Sampling::from_model(&model.audio, &label)?;
        text.apply(&mut s.text);
        audio.apply(&mut s.audio);
        if greedy {
            s = s.greedy();
        }
        s.check()?;
        Ok(s)
    }

    pub fn from_model(g: &Gguf, label: &str) -> Result<Sampling> {
        let f = |k: String| -> Result<f64> { g.get_f64(&k).with_context(|| label.to_string()) };
        let params = |stream: &str| -> Result<SamplingParams> {
            let k = |n: &str| format!("{}.{stream}.{n}", audio_keys::SAMPLING);
            Ok(SamplingParams {
                temperature: f(k("temperature"))? as f32,
                top_p: f(k("top_p"))? as f32,
                top_k: f(k("top_k"))? as u32,
                repetition_penalty: f(k("repetition_penalty"))? as f32,
                repetition_window: f(k("repetition_window"))? as usize,
            })
        };
        Ok(Sampling {
            text: params("text")?,
            audio: params("audio")?,
            audio_penalty_codebooks: f(audio_keys::AUDIO_PENALTY_CODEBOOKS.into())? as usize,
        })
    }

    /// Argmax everywhere (penalties still apply, as with `use_sampling=False`).
    pub fn greedy(mut self) -> Sampling {
        self.text.temperature = 0.0;
        self.audio.temperature = 0.0;
        self
    }

    pub fn check(&self) -> Result<()> {
        for (name, p) in [("text", &self.text), ("audio", &self.audio)] {
            ensure!(
                p.temperature >= 0.0 && p.temperature.is_finite(),
                "{name} temperature {} must be ≥ 0",
                p.temperature
            );
            ensure!(
                (0.0..=1.0).contains(&p.top_p),
                "{name} top-p {} must be in 0..1",
                p.top_p
            );
            ensure!(
                p.repetition_penalty >= 1.0 && p.repetition_penalty.is_finite(),
                "{name} repetition penalty {} must be ≥ 1",
                p.repetition_penalty
            );
            ensure!(
                p.repetition_window <= 4096,
                "{name} repetition window {} is over 4096",
                p.repetition_window
            );
        }
        Ok(())
    }
}

/// How the backbone keeps running past its context: when the KV cache is full, the first
/// `sink` positions stay (an attention sink: the start of the conversation) and the oldest
/// half of the rest is dropped; the later positions move down, so RoPE positions never pass
/// the context the model was trained on.
#[derive(Clone, Copy, Debug)]
pub struct ContextPolicy {
    /// Positions (steps) the backbone holds: at most the model's context length.
    pub positions: u32,
    pub sink: u32,
}

impl ContextPolicy {
    /// Steps a full context drops: half of what it holds past the sink.
    pub fn shift(&self) -> u32 {
        (self.positions - self.sink) / 2
    }
}

pub struct EngineOptions {
    /// Where the backbone and the depth transformer run.
    pub device: Device,
    pub threads: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Backbone context in steps; None uses the model's (8192 for the release).
    pub context: Option<u32>,
    pub sink: u32,
    /// KV cache in f32; None: f32 when the backbone's weights are f32, else f16.
    pub kv_f32: Option<bool>,
}

/// Milliseconds per stage of one step.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimes {
    /// Sum of the 17 embedding rows.
    pub embed: f64,
    /// The backbone's graph, text head included (and the text draw on a device). On a device
    /// the graphs are queued and waited for once: this is the time to queue them, and
    /// `depth` holds the wait for both.
    pub backbone: f64,
    /// The depth transformer's step: 8 positions and their draws.
    pub depth: f64,
    /// The host's draw of the text token (on the CPU; zero where the device draws it).
    pub sample: f64,
}

impl StageTimes {
    pub fn total(&self) -> f64 {
        self.embed + self.backbone + self.depth + self.sample
    }
}

#[derive(Clone, Copy, Debug)]
pub struct StepOutput {
    /// Text token chosen at this step.
    pub text: i32,
    /// Speaking codes chosen at this step (acoustics belong to the previous audio frame).
    pub audio: [i32; CODEBOOKS],
    /// The output frame completed by this step: text and semantic code of the previous step,
    /// acoustic codes of this one. None after the first step.
    pub frame: Option<[i32; 1 + CODEBOOKS]>,
    pub times: StageTimes,
    /// True when this step first discarded old context.
    pub context_shifted: bool,
}

/// The last `cap` tokens of one stream, for the repetition penalty (order does not matter).
struct Window {
    ids: Vec<i32>,
    cap: usize,
    next: usize,
}

impl Window {
    fn new(cap: usize) -> Window {
        Window {
            ids: Vec::with_capacity(cap),
            cap,
            next: 0,
        }
    }

    fn push(&mut self, id: i32) {
        if self.cap == 0 {
            return;
        }
        if self.ids.len() < self.cap {
            self.ids.push(id);
        } else {
            self.ids[self.next] = id;
            self.next = (self.next + 1) % self.cap;
        }
    }

    fn clear(&mut self) {
        self.ids.clear();
        self.next = 0;
    }
}

/// One conversation's part of the step: its streams, draws and position.
struct Conversation {
    ring: TokenRing,
    rng: SampleRng,
    text_window: Window,
    audio_windows: Vec<Window>,
    /// Backbone position of the next step.
    pos: i32,
    /// A shift asked for by `shift_context_now`, reported by the next step.
    shift_pending: bool,
}

impl Conversation {
    fn new(ring: TokenRing, seed: u64, s: &Sampling) -> Conversation {
        Conversation {
            ring,
            rng: SampleRng::new(seed),
            text_window: Window::new(s.text.repetition_window),
            audio_windows: (0..CODEBOOKS)
                .map(|_| Window::new(s.audio.repetition_window))
                .collect(),
            pos: 0,
            shift_pending: false,
        }
    }
}

/// Most conversations stepped together.
pub const MAX_CONVERSATIONS: usize = 16;

pub struct Engine {
    backbone: Backbone,
    embedder: Embedder,
    depformer: Depformer,
    convs: Vec<Conversation>,
    init: InitialTokens,
    sampling: Sampling,
    /// The host's text draw (when the backbone's device does not draw it).
    text_sampler: Sampler,
    seed: u64,
    policy: ContextPolicy,
    /// Codes the speaking heads may emit: 0..this (pad and empty are masked).
    n_codes: usize,
    // Scratch sized at load, for every conversation.
    embd: Vec<f32>,
    text_logits: Vec<f32>,
    hidden: Vec<f32>,
    u_text: Vec<f32>,
    u_audio: Vec<f32>,
    positions: Vec<usize>,
    texts: Vec<i32>,
    outputs: Vec<StepOutput>,
    /// Whether the step runs on a device (the text token is then drawn in the graph).
    on_device: bool,
}

impl Engine {
    /// The engine of one conversation.
    pub fn load(model: &ModelDir, opts: &EngineOptions) -> Result<Engine> {
        Engine::with_conversations(model, opts, 1)
    }

    /// The engine of `n` conversations stepped together (`step_all`): one backbone and one
    /// depth transformer step for all of them, each with its own streams, draws (seeded
    /// alike), positions and context shifts.
    pub fn with_conversations(model: &ModelDir, opts: &EngineOptions, n: usize) -> Result<Engine> {
        ensure!(
            (1..=MAX_CONVERSATIONS).contains(&n),
            "{n} conversations in one step: 1 to {MAX_CONVERSATIONS}"
        );
        opts.device.check()?;
        let audio_path = model.path(AUDIO_FILE);
        let backbone_path = model.path(BACKBONE_FILE);
        let label = audio_path.display().to_string();
        let g = &model.audio;
        let u = |k: &str| -> Result<u64> { g.get_u64(k).with_context(|| label.clone()) };
        let trained = u(audio_keys::CONTEXT_LENGTH)? as u32;
        let positions = opts.context.unwrap_or(trained);
        ensure!(
            positions >= 2 * opts.sink + 16 && positions <= trained,
            "context of {positions} steps: must be between {} and the model's {trained}",
            2 * opts.sink + 16
        );
        opts.sampling.check()?;
        let delays: Vec<usize> = match g.get(audio_keys::DELAYS) {
            Some(flm_conversion::gguf::Value::Array(flm_conversion::gguf::Array::I32(d))) => {
                d.iter().map(|&x| x.max(0) as usize).collect()
            }
            _ => anyhow::bail!("{label}: `{}` is missing or not i32", audio_keys::DELAYS),
        };
        let init = InitialTokens {
            text_wait: i32::try_from(u(audio_keys::TEXT_WAIT)?).unwrap_or(i32::MAX),
            audio_pad: i32::try_from(u(audio_keys::AUDIO_PAD)?).unwrap_or(i32::MAX),
        };
        let ring = TokenRing::new(&delays, init).with_context(|| label.clone())?;
        let f32_weights = model.backbone.get_u64("general.file_type").ok() == Some(0);
        let kv_f32 = opts.kv_f32.unwrap_or(f32_weights);
        let mut depformer = Depformer::with_streams(&audio_path, opts.device, opts.threads, n)?;
        let mut backbone = Backbone::load(
            &backbone_path,
            depformer.backend(),
            BackboneOptions {
                positions: positions as usize,
                kv_f32,
                streams: n,
            },
        )?;
        let shape = *depformer.shape();
        let bshape = *backbone.shape();
        ensure!(
            shape.codebooks == CODEBOOKS && shape.hidden == bshape.embd,
            "{label}: depth transformer for {} codebooks and width {}, backbone width {}",
            shape.codebooks,
            shape.hidden,
            bshape.embd
        );
        // On a device the text token is drawn in the backbone's graph and only it comes back;
        // on the CPU the logit row is in host memory already, and the host draws it faster
        // than the graph's sort of the vocabulary would.
        let on_device = !opts.device.resolve()?.is_cpu();
        backbone.configure(depformer.backend(), on_device.then_some(opts.sampling.text))?;
        depformer.read_hidden_from(backbone.hidden_tensor())?;
        // The policy's shift (see `make_room`), built now so that a step never builds one.
        let policy = ContextPolicy {
            positions,
            sink: opts.sink,
        };
        backbone.prepare_shifts(
            depformer.backend(),
            policy.sink as usize,
            policy.shift() as usize,
        )?;
        eprintln!(
            "backbone on {}: {:.0} MiB of weights, KV cache {:.0} MiB ({positions} positions, {})",
            depformer.backend_name(),
            mib(backbone.weight_bytes()),
            mib(backbone.cache_bytes()),
            if kv_f32 { "f32" } else { "f16" }
        );
        let embedder = Embedder::open(
            (&backbone_path, &model.backbone),
            (&audio_path, &model.audio),
            bshape.embd,
            shape.vocab,
            CODEBOOKS,
        )?;
        // The initial tokens index the embedding tables at every step: a damaged file must
        // not reach them.
        ensure!(
            (0..shape.vocab as i64).contains(&(init.audio_pad as i64))
                && init.audio_pad <= shape.empty,
            "{label}: `{}` is {}, outside the audio vocabulary 0..={}",
            audio_keys::AUDIO_PAD,
            init.audio_pad,
            shape.empty
        );
        ensure!(
            (0..bshape.vocab as i64).contains(&(init.text_wait as i64)),
            "{label}: `{}` is {}, outside the text vocabulary 0..{}",
            audio_keys::TEXT_WAIT,
            init.text_wait,
            bshape.vocab
        );
        let n_codes = init.audio_pad.min(shape.empty) as usize;
        let s = opts.sampling;
        depformer.configure(code_sampling(&s, n_codes))?;
        let empty = StepOutput {
            text: 0,
            audio: [0; CODEBOOKS],
            frame: None,
            times: StageTimes::default(),
            context_shifted: false,
        };
        Ok(Engine {
            text_sampler: Sampler::new(bshape.vocab, s.text),
            convs: (0..n)
                .map(|_| Conversation::new(ring.clone(), opts.seed, &s))
                .collect(),
            seed: opts.seed,
            policy,
            n_codes,
            embd: vec![0.0; bshape.embd * n],
            text_logits: vec![0.0; bshape.vocab * n],
            hidden: vec![0.0; bshape.embd * n],
            u_text: vec![0.0; n],
            u_audio: vec![0.0; CODEBOOKS * n],
            positions: vec![0; n],
            texts: vec![0; n],
            outputs: vec![empty; n],
            on_device,
            sampling: s,
            backbone,
            embedder,
            depformer,
            init,
        })
    }

    pub fn policy(&self) -> ContextPolicy {
        self.policy
    }

    /// Conversations stepped together.
    pub fn conversations(&self) -> usize {
        self.convs.len()
    }

    /// Backbone position of the next step (of the first conversation).
    pub fn position(&self) -> i32 {
        self.convs[0].pos
    }

    /// Backbone position of conversation `c`'s next step.
    pub fn position_of(&self, c: usize) -> i32 {
        self.convs[c].pos
    }

    /// Highest position in the backbone's KV cache (-1 when empty).
    pub fn max_cached_position(&self) -> i32 {
        self.backbone.used(0) as i32 - 1
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// The text logits of the last step, [vocab] per conversation (a blocking read, for
    /// tests and tools).
    pub fn text_logits(&mut self) -> Result<&[f32]> {
        self.backbone.read_logits(&mut self.text_logits)?;
        Ok(&self.text_logits)
    }

    /// The backbone's hidden state of the last step, after its final norm, [width] per
    /// conversation (a blocking read, for tests and tools).
    pub fn hidden(&mut self) -> Result<&[f32]> {
        self.backbone.read_hidden(&mut self.hidden)?;
        Ok(&self.hidden)
    }

    pub fn depformer(&mut self) -> &mut Depformer {
        &mut self.depformer
    }

    /// ggml's name of the device the step runs on ("CPU", "CUDA0", …).
    pub fn device_name(&self) -> String {
        self.depformer.backend_name()
    }

    /// The text token of waiting: the model has nothing to say or think.
    pub fn text_wait(&self) -> i32 {
        self.init.text_wait
    }

    /// The sampling in use.
    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    /// Samples with `s` from the next conversation on (call between conversations: the
    /// repetition windows are sized anew, and the conversation starts over).
    pub fn set_sampling(&mut self, s: Sampling) -> Result<()> {
        s.check()?;
        self.depformer.configure(code_sampling(&s, self.n_codes))?;
        self.backbone
            .configure(self.depformer.backend(), self.on_device.then_some(s.text))?;
        self.text_sampler = Sampler::new(self.backbone.shape().vocab, s.text);
        for c in &mut self.convs {
            c.text_window = Window::new(s.text.repetition_window);
            c.audio_windows = (0..CODEBOOKS)
                .map(|_| Window::new(s.audio.repetition_window))
                .collect();
        }
        self.sampling = s;
        self.reset();
        Ok(())
    }

    /// Starts every conversation anew.
    pub fn reset(&mut self) {
        for c in 0..self.convs.len() {
            self.reset_conversation(c);
        }
    }

    /// Starts conversation `c` anew; the others go on.
    pub fn reset_conversation(&mut self, c: usize) {
        self.backbone.clear(c);
        let conv = &mut self.convs[c];
        conv.ring.reset(self.init);
        conv.text_window.clear();
        for w in &mut conv.audio_windows {
            w.clear();
        }
        conv.rng = SampleRng::new(self.seed);
        conv.pos = 0;
        conv.shift_pending = false;
    }

    /// One step with the user's codes of the current frame (one conversation).
    pub fn step(&mut self, user: &[i32; CODEBOOKS]) -> Result<StepOutput> {
        self.one(user, None)
    }

    /// Teacher forcing: computes this step's choices as `step` does, but continues the
    /// streams with `forced` (text, then 8 speaking codes) instead. The output reports the
    /// engine's own choices.
    pub fn step_forced(
        &mut self,
        user: &[i32; CODEBOOKS],
        forced: &[i32; 1 + CODEBOOKS],
    ) -> Result<StepOutput> {
        self.one(user, Some(forced))
    }

    fn one(
        &mut self,
        user: &[i32; CODEBOOKS],
        forced: Option<&[i32; 1 + CODEBOOKS]>,
    ) -> Result<StepOutput> {
        ensure!(
            self.convs.len() == 1,
            "one step of {} conversations: use step_all",
            self.convs.len()
        );
        self.run_step(std::slice::from_ref(user), forced.map(std::slice::from_ref))?;
        Ok(self.outputs[0])
    }

    /// One step of every conversation, `users[c]` the user's codes of conversation c; the
    /// outputs in the same order.
    pub fn step_all(&mut self, users: &[[i32; CODEBOOKS]]) -> Result<&[StepOutput]> {
        self.run_step(users, None)?;
        Ok(&self.outputs)
    }

    /// One step of the conversations that have a frame: `users[c]` the user's codes of
    /// conversation c, or None for one that waits (its client has not sent its frame yet, or
    /// its slot is free). A conversation that waits is not continued: its position, streams,
    /// windows and draws stay as they were, and its output is left as it was, so that its
    /// next step is exactly the one it would have taken alone. (The graph computes every
    /// conversation: a waiting one's cache cell at its position is written and forgotten.)
    pub fn step_some(&mut self, users: &[Option<[i32; CODEBOOKS]>]) -> Result<&[StepOutput]> {
        self.run_some(users, None)?;
        Ok(&self.outputs)
    }

    /// `step_all` with teacher forcing: conversation c continues with `forced[c]` (text, then
    /// 8 speaking codes) instead of its own choices, which the outputs report.
    pub fn step_all_forced(
        &mut self,
        users: &[[i32; CODEBOOKS]],
        forced: &[[i32; 1 + CODEBOOKS]],
    ) -> Result<&[StepOutput]> {
        self.run_step(users, Some(forced))?;
        Ok(&self.outputs)
    }

    fn run_step(
        &mut self,
        users: &[[i32; CODEBOOKS]],
        forced: Option<&[[i32; 1 + CODEBOOKS]]>,
    ) -> Result<()> {
        ensure!(
            users.len() == self.convs.len(),
            "{} users' codes for {} conversations",
            users.len(),
            self.convs.len()
        );
        let some: [Option<[i32; CODEBOOKS]>; MAX_CONVERSATIONS] =
            std::array::from_fn(|c| users.get(c).copied());
        self.run_some(&some[..users.len()], forced)
    }

    fn run_some(
        &mut self,
        users: &[Option<[i32; CODEBOOKS]>],
        forced: Option<&[[i32; 1 + CODEBOOKS]]>,
    ) -> Result<()> {
        let n = self.convs.len();
        ensure!(
            users.len() == n && forced.is_none_or(|f| f.len() == n),
            "{} users' codes and {} forced choices for {n} conversations",
            users.len(),
            forced.map_or(0, |f| f.len())
        );
        for user in users.iter().flatten() {
            for (q, &c) in user.iter().enumerate() {
                ensure!(
                    c >= 0 && (c as usize) < self.n_codes,
                    "user code {c} of codebook {q} is outside 0..{}",
                    self.n_codes
                );
            }
        }
        let mut times = StageTimes::default();
        let width = self.backbone.shape().embd;
        let vocab = self.backbone.shape().vocab;
        let t0 = Instant::now();
        for (c, user) in users.iter().enumerate() {
            let Some(user) = user else {
                // Waits: the cell at its position is computed and forgotten after the step.
                // A full context shifts now, as its next step would (and that step says so).
                if self.make_room(c)? {
                    self.convs[c].shift_pending = true;
                }
                self.u_text[c] = 0.5;
                self.u_audio[c * CODEBOOKS..(c + 1) * CODEBOOKS].fill(0.5);
                self.embd[c * width..(c + 1) * width].fill(0.0);
                self.positions[c] = self.convs[c].pos as usize;
                continue;
            };
            let shifted = self.make_room(c)? | std::mem::take(&mut self.convs[c].shift_pending);
            self.outputs[c].context_shifted = shifted;
            let conv = &mut self.convs[c];
            // One uniform number per token, whether or not it is used.
            self.u_text[c] = conv.rng.uniform();
            for u in &mut self.u_audio[c * CODEBOOKS..(c + 1) * CODEBOOKS] {
                *u = conv.rng.uniform();
            }
            conv.ring.push_user(user);
            let col = conv.ring.input();
            self.embedder.sum(
                col[0],
                &col[1..=CODEBOOKS],
                &col[1 + CODEBOOKS..],
                &mut self.embd[c * width..(c + 1) * width],
            )?;
            self.positions[c] = conv.pos as usize;
            conv.pos += 1;
        }
        let t1 = Instant::now();
        times.embed = ms(t1 - t0);

        let text_windows: [&[i32]; MAX_CONVERSATIONS] =
            std::array::from_fn(|c| self.convs.get(c).map_or(&[][..], |v| &v.text_window.ids));
        let backend = self.depformer.backend();
        self.backbone.submit(
            backend,
            &self.embd,
            &self.positions,
            &text_windows[..n],
            &self.u_text,
        )?;
        if !self.on_device {
            // The CPU ran the graph before `submit` returned: the rows are in host memory.
            let t = Instant::now();
            self.backbone.read_logits(&mut self.text_logits)?;
            for c in (0..n).filter(|&c| users[c].is_some()) {
                self.texts[c] = self.text_sampler.sample(
                    &mut self.text_logits[c * vocab..(c + 1) * vocab],
                    &self.convs[c].text_window.ids,
                    self.u_text[c],
                );
            }
            times.sample = ms(t.elapsed());
        }
        let t2 = Instant::now();
        times.backbone = ms(t2 - t1) - times.sample;

        // Conversation c, codebook k at c · P + k (P the penalised codebooks).
        let p = self.sampling.audio_penalty_codebooks;
        let windows: [&[i32]; MAX_CONVERSATIONS * CODEBOOKS] = std::array::from_fn(|i| {
            let (c, k) = (i / p.max(1), i % p.max(1));
            match self.convs.get(c) {
                Some(conv) if k < p => conv.audio_windows[k].ids.as_slice(),
                _ => &[],
            }
        });
        let forced_codes: [i32; MAX_CONVERSATIONS * CODEBOOKS] = std::array::from_fn(|i| {
            forced
                .and_then(|f| f.get(i / CODEBOOKS))
                .map_or(0, |f| f[1 + i % CODEBOOKS])
        });
        // On a device: waits for both graphs.
        let codes = self.depformer.step(
            None,
            &windows[..n * p],
            &self.u_audio,
            forced.map(|_| &forced_codes[..n * CODEBOOKS]),
        )?;
        if self.on_device {
            self.backbone.drawn_text(&mut self.texts)?;
        }
        times.depth = ms(t2.elapsed());
        for c in 0..n {
            if users[c].is_none() {
                // The graphs have completed: the waiting conversation's cell is forgotten.
                self.backbone.forget_from(c, self.convs[c].pos as usize);
                continue;
            }
            let conv = &mut self.convs[c];
            let text = self.texts[c];
            let forced = forced.map(|f| &f[c]);
            let text_in = forced.map_or(text, |f| f[0]);
            conv.text_window.push(text_in);
            let mut audio = [0i32; CODEBOOKS];
            audio.copy_from_slice(&codes[c * CODEBOOKS..(c + 1) * CODEBOOKS]);
            let fed: [i32; CODEBOOKS] = match forced {
                Some(f) => std::array::from_fn(|k| f[1 + k]),
                None => audio,
            };
            for (w, &a) in conv.audio_windows.iter_mut().zip(&fed) {
                w.push(a);
            }
            let out = &mut self.outputs[c];
            out.frame = conv.ring.push_model(text_in, &fed);
            out.text = text;
            out.audio = audio;
            out.times = times;
        }
        Ok(())
    }

    /// One backbone step alone at the next position, waited for (benchmarks: the backbone's
    /// own time on a device, where a whole step waits once for both graphs). The
    /// conversation is not continued: `reset` before stepping it again.
    pub fn backbone_alone(&mut self, embd: &[f32]) -> Result<()> {
        let n = self.convs.len();
        for c in 0..n {
            ensure!(
                (self.convs[c].pos as u32) < self.policy.positions,
                "backbone: the context is full"
            );
            self.positions[c] = self.convs[c].pos as usize;
            self.convs[c].pos += 1;
            let w = embd.len();
            self.embd[c * w..(c + 1) * w].copy_from_slice(embd);
        }
        let backend = self.depformer.backend();
        let none: [&[i32]; MAX_CONVERSATIONS] = [&[]; MAX_CONVERSATIONS];
        self.u_text.fill(0.5);
        self.backbone.submit(
            backend,
            &self.embd,
            &self.positions,
            &none[..n],
            &self.u_text,
        )?;
        backend.synchronize();
        Ok(())
    }

    /// Shifts the context now, as when it is full, by half of what it holds past the sink:
    /// the kept keys are re-rotated and moved down (`bench step` measures a shift this way
    /// without first stepping through the whole context).
    /// False (and nothing done) while no step past the sink would be dropped.
    pub fn shift_context_now(&mut self) -> Result<bool> {
        let sink = self.policy.sink as i32;
        let mut any = false;
        for c in 0..self.convs.len() {
            let n = (self.convs[c].pos - sink) / 2;
            if n <= 0 {
                continue;
            }
            self.backbone
                .discard(self.depformer.backend(), c, sink as usize, n as usize)?;
            self.convs[c].pos -= n;
            self.convs[c].shift_pending = true;
            any = true;
        }
        Ok(any)
    }

    /// Applies the context policy to conversation `c` before a step that would not fit.
    fn make_room(&mut self, c: usize) -> Result<bool> {
        let ContextPolicy { positions, sink } = self.policy;
        if (self.convs[c].pos as u32) < positions {
            return Ok(false);
        }
        let n = self.policy.shift();
        self.backbone
            .discard(self.depformer.backend(), c, sink as usize, n as usize)?;
        self.convs[c].pos -= n as i32;
        Ok(true)
    }
}

/// How the depth transformer draws codes under `s`.
fn code_sampling(s: &Sampling, codes: usize) -> CodeSampling {
    CodeSampling {
        params: s.audio,
        penalty_codebooks: s.audio_penalty_codebooks,
        codes,
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
