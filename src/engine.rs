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

pub struct Engine {
    backbone: Backbone,
    embedder: Embedder,
    depformer: Depformer,
    ring: TokenRing,
    init: InitialTokens,
    sampling: Sampling,
    /// The host's text draw (when the backbone's device does not draw it).
    text_sampler: Sampler,
    rng: SampleRng,
    seed: u64,
    text_window: Window,
    audio_windows: Vec<Window>,
    /// Backbone position of the next step.
    pos: i32,
    policy: ContextPolicy,
    /// A shift asked for by `shift_context_now`, reported by the next step.
    shift_pending: bool,
    /// Codes the speaking heads may emit: 0..this (pad and empty are masked).
    n_codes: usize,
    embd: Vec<f32>,
    text_logits: Vec<f32>,
    hidden: Vec<f32>,
    /// Whether the step runs on a device (the text token is then drawn in the graph).
    on_device: bool,
}

impl Engine {
    pub fn load(model: &ModelDir, opts: &EngineOptions) -> Result<Engine> {
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
        let mut depformer = Depformer::load(&audio_path, opts.device, opts.threads)?;
        let mut backbone = Backbone::load(
            &backbone_path,
            depformer.backend(),
            BackboneOptions {
                positions: positions as usize,
                kv_f32,
                streams: 1,
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
        Ok(Engine {
            text_sampler: Sampler::new(bshape.vocab, s.text),
            rng: SampleRng::new(opts.seed),
            seed: opts.seed,
            text_window: Window::new(s.text.repetition_window),
            audio_windows: (0..CODEBOOKS)
                .map(|_| Window::new(s.audio.repetition_window))
                .collect(),
            pos: 0,
            policy: ContextPolicy {
                positions,
                sink: opts.sink,
            },
            shift_pending: false,
            n_codes,
            embd: vec![0.0; bshape.embd],
            text_logits: vec![0.0; bshape.vocab],
            hidden: vec![0.0; bshape.embd],
            on_device,
            sampling: s,
            backbone,
            embedder,
            depformer,
            ring,
            init,
        })
    }

    pub fn policy(&self) -> ContextPolicy {
        self.policy
    }

    /// Backbone position of the next step.
    pub fn position(&self) -> i32 {
        self.pos
    }

    /// Highest position in the backbone's KV cache (-1 when empty).
    pub fn max_cached_position(&self) -> i32 {
        self.backbone.used(0) as i32 - 1
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// The text logits of the last step (a blocking read, for tests and tools).
    pub fn text_logits(&mut self) -> Result<&[f32]> {
        self.backbone.read_logits(&mut self.text_logits)?;
        Ok(&self.text_logits)
    }

    /// The backbone's hidden state of the last step, after its final norm (a blocking read,
    /// for tests and tools).
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
        self.text_window = Window::new(s.text.repetition_window);
        self.audio_windows = (0..CODEBOOKS)
            .map(|_| Window::new(s.audio.repetition_window))
            .collect();
        self.sampling = s;
        self.reset();
        Ok(())
    }

    /// Starts a new conversation.
    pub fn reset(&mut self) {
        self.backbone.clear(0);
        self.ring.reset(self.init);
        self.text_window.clear();
        for w in &mut self.audio_windows {
            w.clear();
        }
        self.rng = SampleRng::new(self.seed);
        self.pos = 0;
    }

    /// One step with the user's codes of the current frame.
    pub fn step(&mut self, user: &[i32; CODEBOOKS]) -> Result<StepOutput> {
        self.run_step(user, None)
    }

    /// Teacher forcing: computes this step's choices as `step` does, but continues the
    /// streams with `forced` (text, then 8 speaking codes) instead. The output reports the
    /// engine's own choices.
    pub fn step_forced(
        &mut self,
        user: &[i32; CODEBOOKS],
        forced: &[i32; 1 + CODEBOOKS],
    ) -> Result<StepOutput> {
        self.run_step(user, Some(forced))
    }

    fn run_step(
        &mut self,
        user: &[i32; CODEBOOKS],
        forced: Option<&[i32; 1 + CODEBOOKS]>,
    ) -> Result<StepOutput> {
        for (q, &c) in user.iter().enumerate() {
            ensure!(
                c >= 0 && (c as usize) < self.n_codes,
                "user code {c} of codebook {q} is outside 0..{}",
                self.n_codes
            );
        }
        let mut times = StageTimes::default();
        let context_shifted = self.make_room()? | std::mem::take(&mut self.shift_pending);
        // One uniform number per token, whether or not it is used.
        let u_text = self.rng.uniform();
        let mut u_audio = [0f32; CODEBOOKS];
        for u in &mut u_audio {
            *u = self.rng.uniform();
        }

        let t0 = Instant::now();
        self.ring.push_user(user);
        let col = self.ring.input();
        self.embedder.sum(
            col[0],
            &col[1..=CODEBOOKS],
            &col[1 + CODEBOOKS..],
            &mut self.embd,
        )?;
        let t1 = Instant::now();
        times.embed = ms(t1 - t0);

        let backend = self.depformer.backend();
        self.backbone.submit(
            backend,
            &self.embd,
            &[self.pos as usize],
            &[&self.text_window.ids],
            &[u_text],
        )?;
        self.pos += 1;
        let mut text = [0i32];
        if !self.on_device {
            // The CPU ran the graph before `submit` returned: the row is in host memory.
            let t = Instant::now();
            self.backbone.read_logits(&mut self.text_logits)?;
            text[0] =
                self.text_sampler
                    .sample(&mut self.text_logits, &self.text_window.ids, u_text);
            times.sample = ms(t.elapsed());
        }
        let t2 = Instant::now();
        times.backbone = ms(t2 - t1) - times.sample;
        let text_in = forced.map(|f| f[0]);

        let windows: [&[i32]; CODEBOOKS] = std::array::from_fn(|c| {
            if c < self.sampling.audio_penalty_codebooks {
                self.audio_windows[c].ids.as_slice()
            } else {
                &[]
            }
        });
        // On a device: waits for both graphs.
        let codes = self
            .depformer
            .step(None, &windows, &u_audio, forced.map(|f| &f[1..]))?;
        if self.on_device {
            self.backbone.drawn_text(&mut text)?;
        }
        let text = text[0];
        let text_in = text_in.unwrap_or(text);
        self.text_window.push(text_in);
        let mut audio = [0i32; CODEBOOKS];
        audio.copy_from_slice(codes);
        times.depth = ms(t2.elapsed());
        let fed: [i32; CODEBOOKS] = match forced {
            Some(f) => std::array::from_fn(|c| f[1 + c]),
            None => audio,
        };
        for (w, &a) in self.audio_windows.iter_mut().zip(&fed) {
            w.push(a);
        }
        let frame = self.ring.push_model(text_in, &fed);
        Ok(StepOutput {
            text,
            audio,
            frame,
            times,
            context_shifted,
        })
    }

    /// One backbone step alone at the next position, waited for (benchmarks: the backbone's
    /// own time on a device, where a whole step waits once for both graphs). The
    /// conversation is not continued: `reset` before stepping it again.
    pub fn backbone_alone(&mut self, embd: &[f32]) -> Result<()> {
        ensure!(
            (self.pos as u32) < self.policy.positions,
            "backbone: the context is full"
        );
        let backend = self.depformer.backend();
        self.backbone
            .submit(backend, embd, &[self.pos as usize], &[&[]], &[0.5])?;
        backend.synchronize();
        self.pos += 1;
        Ok(())
    }

    /// Shifts the context now, as when it is full, by half of what it holds past the sink:
    /// the kept keys are re-rotated and moved down (`bench step` measures a shift this way
    /// without first stepping through the whole context).
    /// False (and nothing done) while no step past the sink would be dropped.
    pub fn shift_context_now(&mut self) -> Result<bool> {
        let sink = self.policy.sink as i32;
        let n = (self.pos - sink) / 2;
        if n <= 0 {
            return Ok(false);
        }
        self.backbone
            .discard(self.depformer.backend(), 0, sink as usize, n as usize)?;
        self.pos -= n;
        self.shift_pending = true;
        Ok(true)
    }

    /// Applies the context policy before a step that would not fit.
    fn make_room(&mut self) -> Result<bool> {
        let ContextPolicy { positions, sink } = self.policy;
        if (self.pos as u32) < positions {
            return Ok(false);
        }
        let n = (positions - sink) / 2;
        self.backbone
            .discard(self.depformer.backend(), 0, sink as usize, n as usize)?;
        self.pos -= n as i32;
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
