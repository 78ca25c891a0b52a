//! The depth transformer ("DepthGPT") on ggml: from the backbone's hidden state of one step,
//! the 8 speaking codebooks one after another, KV-cached over its 8 positions.
//!
//! Position c sums three inputs: the token chosen at position c-1 embedded with table c (the
//! empty id 2049 at position 0), the learned position embedding c, and chunk c of
//! `linear_in(h)`. Attention is shared by the positions; the MLP and the output head are
//! per position.
//!
//! A step is one graph: all 8 positions, each codebook's token sampled inside the graph
//! (`sample_graph`: penalty, mask of pad and empty, temperature, top-p or top-k, the draw)
//! and fed to the next position, so the device never waits for the host between codebooks.
//! Its inputs (hidden state, one uniform number per codebook, the penalty windows) go up in
//! one copy, its 8 tokens come down in one, and the host waits once. The graph is built when
//! the sampling is set (between conversations) and reused: a step allocates nothing.
//!
//! Every tensor carries the number of conversations stepped together (`streams`) as its
//! outermost dimension; the engine steps one.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use flm_conversion::Gguf;
use flm_conversion::model_files::{AUDIO_ARCH, audio_keys};
use flm_conversion::plan::audio_names::*;

use crate::ggml::{self, Backend, Buffer, Ctx, Device, Graph, T};
use crate::sample_graph::{self, DrawInputs};
use crate::sampling::SamplingParams;
use crate::staging::{Staging, StagingBuilder};
use crate::weights::{Weights, WeightsBuilder};

/// Nodes of a step graph: some 30 per layer and position, 40 for each draw.
const MAX_NODES: usize = 16_384;

/// Hyper-parameters, read from the audio file.
#[derive(Clone, Copy, Debug)]
pub struct DepformerShape {
    /// Width of the backbone hidden state.
    pub hidden: usize,
    pub embd: usize,
    pub heads: usize,
    pub layers: usize,
    pub ffn: usize,
    /// Audio vocabulary: 2048 codes, pad, empty.
    pub vocab: usize,
    /// Positions: one per speaking codebook.
    pub codebooks: usize,
    pub norm_eps: f32,
    /// The id embedded at position 0.
    pub empty: i32,
}

impl DepformerShape {
    pub fn read(g: &Gguf, label: &str) -> Result<DepformerShape> {
        use audio_keys::*;
        let u = |k: &str| -> Result<usize> {
            let v = g.get_u64(k).with_context(|| label.to_string())?;
            ensure!(v > 0 && v < 1 << 24, "{label}: `{k}` = {v} is out of range");
            Ok(v as usize)
        };
        let s = DepformerShape {
            hidden: u(EMBEDDING_LENGTH)?,
            embd: u(DEP_EMBEDDING_LENGTH)?,
            heads: u(DEP_HEAD_COUNT)?,
            layers: u(DEP_BLOCK_COUNT)?,
            ffn: u(DEP_FEED_FORWARD)?,
            vocab: u(AUDIO_VOCAB)?,
            codebooks: u(N_CODEBOOKS)?,
            norm_eps: g.get_f64(DEP_NORM_EPS).with_context(|| label.to_string())? as f32,
            empty: u(AUDIO_EMPTY)? as i32,
        };
        ensure!(
            s.norm_eps.is_finite() && s.norm_eps > 0.0,
            "{label}: `{DEP_NORM_EPS}` = {} is not a positive number",
            s.norm_eps
        );
        ensure!(
            s.embd.is_multiple_of(s.heads),
            "{label}: depth width {} is not a multiple of {} heads",
            s.embd,
            s.heads
        );
        ensure!(
            (s.empty as usize) < s.vocab,
            "{label}: empty token {} is outside the audio vocabulary {}",
            s.empty,
            s.vocab
        );
        Ok(s)
    }

    pub fn head_dim(&self) -> usize {
        self.embd / self.heads
    }
}

/// How the depth transformer's codes are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CodeSampling {
    pub params: SamplingParams,
    /// The repetition penalty applies to codebooks 0..this (the official 4).
    pub penalty_codebooks: usize,
    /// Codes that may come out: 0..this (pad and empty are masked).
    pub codes: usize,
}

/// The KV cache of every layer: keys and values by row `stream · 8 + position`.
struct Cache {
    k: Vec<T>,
    v: Vec<T>,
    _buffer: Buffer,
    _ctx: Ctx,
}

/// The step's inputs and outputs on both sides, one copy each way.
struct Io {
    inputs: Staging,
    hidden: T,
    /// One uniform number per codebook and stream, [streams, 8].
    uniform: T,
    /// The penalty windows, [W, streams, penalty codebooks]; absent when the penalty is off.
    window: Option<T>,
    /// Tokens fed instead of the drawn ones (teacher forcing), [streams, 8].
    forced: T,
    // Constants, written once.
    penalty: T,
    empty: T,
    slots: T,
    mask: T,
    outputs: Staging,
    /// The drawn codes and their check values, [streams, 8].
    tokens: T,
    checks: T,
    /// Window slots per stream and codebook.
    w: usize,
}

/// A built step graph and its per-position logits (kept for inspection).
struct StepGraph {
    graph: Graph,
    logits: Vec<T>,
}

pub struct Depformer {
    shape: DepformerShape,
    streams: usize,
    sampling: Option<CodeSampling>,
    io: Option<Io>,
    /// The step graph drawing freely, and the one fed with forced tokens (built on first use).
    free: Option<StepGraph>,
    forced: Option<StepGraph>,
    cache: Cache,
    /// The hidden states as another graph on the same backend leaves them (the backbone's),
    /// read in place instead of uploaded.
    hidden_src: Option<T>,
    /// Host-side scratch, sized at load: the uniform numbers and forced tokens codebook-major
    /// as the graph takes them, the codes and check values as it gives them, and the codes
    /// stream-major as `step` returns them.
    by_codebook_f32: Vec<f32>,
    by_codebook_i32: Vec<i32>,
    checks: Vec<f32>,
    codes_out: Vec<i32>,
    // Dropped after the graphs and state that use them.
    weights: Weights,
    backend: Backend,
}

impl Depformer {
    /// ggml's name of the device the graphs run on ("CPU", "CUDA0", …).
    pub fn backend_name(&self) -> String {
        self.backend.name()
    }

    /// The backend the graphs run on: a graph that feeds this one (the backbone's) runs on
    /// it too, so that the device keeps their order without the host waiting between them.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Reads the hidden states from `t` (F32 [hidden, streams], allocated on this backend and
    /// written by a graph queued before each step) instead of uploading them.
    pub fn read_hidden_from(&mut self, t: T) -> Result<()> {
        let s = self.shape;
        ensure!(
            t.ty() == ggml::F32 && t.ne() == [s.hidden as i64, self.streams as i64, 1, 1],
            "depth transformer: hidden states of shape {:?}, expected [{}, {}]",
            t.ne(),
            s.hidden,
            self.streams
        );
        self.hidden_src = Some(t);
        if self.free.is_some() {
            self.forced = None;
            self.free = Some(self.build(false)?);
        }
        Ok(())
    }

    /// Loads the depth transformer of `audio.gguf` onto `device` (with `threads` threads on
    /// the CPU) for one conversation. `configure` sets its sampling before the first step.
    pub fn load(path: &Path, device: Device, threads: usize) -> Result<Depformer> {
        Depformer::with_streams(path, device, threads, 1)
    }

    /// As `load`, stepping `streams` conversations together in one graph.
    pub fn with_streams(
        path: &Path,
        device: Device,
        threads: usize,
        streams: usize,
    ) -> Result<Depformer> {
        ensure!(
            (1..=64).contains(&streams),
            "depth transformer: {streams} streams (1..=64)"
        );
        let label = path.display().to_string();
        let backend = Backend::new(device, threads)?;
        let mut wb = WeightsBuilder::open(path)?;
        let arch = wb
            .gguf()
            .get_str("general.architecture")
            .with_context(|| label.clone())?;
        ensure!(
            arch == AUDIO_ARCH,
            "{label}: architecture `{arch}`, expected `{AUDIO_ARCH}`"
        );
        let s = DepformerShape::read(wb.gguf(), &label)?;
        let i = |v: usize| v as i64;
        let (e, f, v, c) = (i(s.embd), i(s.ffn), i(s.vocab), i(s.codebooks));
        // Matrices are declared per position (one 2-D tensor each), so that the CPU backend
        // can keep them re-laid-out for its fast matrix-vector kernels.
        let cb = s.codebooks;
        for p in 0..cb {
            wb.matrix_part(&per(DEP_IN, p), DEP_IN, &[i(s.hidden), e], p, cb)?;
            wb.matrix_part(&per(DEP_OUT, p), DEP_OUT, &[e, v], p, cb)?;
        }
        wb.tensor(DEP_WTE, &[e, v, c])?;
        wb.tensor(DEP_WPE, &[e, c])?;
        for b in 0..s.layers {
            wb.tensor(&blk(b, "attn_norm.weight"), &[e])?;
            for (name, ne) in [
                ("attn_qkv.weight", [e, 3 * e]),
                ("attn_output.weight", [e, e]),
            ] {
                wb.matrix_part(&blk(b, name), &blk(b, name), &ne, 0, 1)?;
            }
            wb.tensor(&blk(b, "ffn_norm.weight"), &[e])?;
            for (name, ne) in [
                ("ffn_gate", [e, f]),
                ("ffn_up", [e, f]),
                ("ffn_down", [f, e]),
            ] {
                for p in 0..cb {
                    wb.matrix_part(&per(&blk(b, name), p), &blk(b, name), &ne, p, cb)?;
                }
            }
        }
        wb.tensor(DEP_OUT_NORM, &[e])?;
        let weights = wb.build(&backend, backend.is_cpu())?;
        let cache = new_cache(&s, streams, &backend)?;
        let n = s.codebooks * streams;
        Ok(Depformer {
            shape: s,
            streams,
            sampling: None,
            io: None,
            free: None,
            forced: None,
            cache,
            hidden_src: None,
            by_codebook_f32: vec![0.0; n],
            by_codebook_i32: vec![0; n],
            checks: vec![0.0; n],
            codes_out: vec![0; n],
            weights,
            backend,
        })
    }

    pub fn shape(&self) -> &DepformerShape {
        &self.shape
    }

    /// Bytes of weights on the backend (all of them are read by the 8 positions of a step).
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    /// Draws codes with `sampling` from the next step on: builds the step graph (checked
    /// against the device: an op it cannot run is one error line) and its inputs.
    pub fn configure(&mut self, sampling: CodeSampling) -> Result<()> {
        let s = self.shape;
        ensure!(
            (1..=s.vocab).contains(&sampling.codes),
            "depth transformer: {} codes of a vocabulary of {}",
            sampling.codes,
            s.vocab
        );
        ensure!(
            sampling.penalty_codebooks <= s.codebooks,
            "depth transformer: penalty on {} of {} codebooks",
            sampling.penalty_codebooks,
            s.codebooks
        );
        if self.sampling == Some(sampling) && self.free.is_some() {
            return Ok(());
        }
        self.free = None;
        self.forced = None;
        self.io = Some(self.new_io(&sampling)?);
        self.sampling = Some(sampling);
        self.free = Some(self.build(false)?);
        Ok(())
    }

    /// The graph's inputs and outputs, with their constants written.
    fn new_io(&self, sampling: &CodeSampling) -> Result<Io> {
        let s = &self.shape;
        let (b, c) = (self.streams as i64, s.codebooks as i64);
        let p = &sampling.params;
        let penalised = p.penalises() && sampling.penalty_codebooks > 0;
        let w = if penalised { p.repetition_window } else { 0 };
        let mut ib = StagingBuilder::new(10);
        // What changes every step first, so that one contiguous range goes up.
        let hidden = ib.tensor(ggml::F32, &[s.hidden as i64, b], "hidden");
        let uniform = ib.tensor(ggml::F32, &[b, c], "uniform");
        let window = penalised.then(|| {
            ib.tensor(
                ggml::I32,
                &[w as i64, b, sampling.penalty_codebooks as i64],
                "window",
            )
        });
        let forced = ib.tensor(ggml::I32, &[b, c], "forced");
        let penalty = ib.tensor(ggml::F32, &[1], "penalty");
        let empty = ib.tensor(ggml::I32, &[b], "empty");
        let slots = ib.tensor(ggml::I32, &[b, c], "slots");
        let mask = ib.tensor(ggml::F32, &[s.vocab as i64], "mask");
        let mut inputs = ib.build(&self.backend)?;
        inputs.put(penalty, 0, &[p.repetition_penalty]);
        inputs.put(empty, 0, &vec![s.empty; self.streams]);
        let slot: Vec<i32> = (0..s.codebooks)
            .flat_map(|pos| (0..self.streams).map(move |st| (st * s.codebooks + pos) as i32))
            .collect();
        inputs.put(slots, 0, &slot);
        let m: Vec<f32> = (0..s.vocab)
            .map(|id| {
                if id < sampling.codes {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        inputs.put(mask, 0, &m);
        if let Some(window) = window {
            let pad = vec![s.vocab as i32; w * self.streams * sampling.penalty_codebooks];
            inputs.put(window, 0, &pad);
        }
        let mut ob = StagingBuilder::new(2);
        let tokens = ob.tensor(ggml::I32, &[b, c], "tokens");
        let checks = ob.tensor(ggml::F32, &[b, c], "checks");
        let outputs = ob.build(&self.backend)?;
        Ok(Io {
            inputs,
            hidden,
            uniform,
            window,
            forced,
            penalty,
            empty,
            slots,
            mask,
            outputs,
            tokens,
            checks,
            w,
        })
    }

    /// Conversations stepped together.
    pub fn streams(&self) -> usize {
        self.streams
    }

    /// One step: from the backbone's hidden state (after its final norm) of each stream, the
    /// 8 codes of each, drawn with one uniform number each. Slices are stream-major:
    /// `hidden` holds `streams` states (None: those that `read_hidden_from`'s tensor holds), `uniforms` 8 numbers per stream; `windows[s · P + c]`
    /// holds the earlier codes of codebook c of stream s for the penalty, P being the
    /// penalised codebooks (missing or short windows are padded; ids beyond the window's
    /// size are ignored). With `forced` (8 per stream), position c+1 is fed `forced[c]`
    /// instead of the code drawn at c (teacher forcing); the codes drawn are returned either
    /// way, 8 per stream.
    pub fn step(
        &mut self,
        hidden: Option<&[f32]>,
        windows: &[&[i32]],
        uniforms: &[f32],
        forced: Option<&[i32]>,
    ) -> Result<&[i32]> {
        let s = self.shape;
        let (b, cbs) = (self.streams, s.codebooks);
        let (Some(io), Some(sampling)) = (self.io.as_mut(), self.sampling) else {
            bail!("depth transformer: no sampling configured")
        };
        match (hidden, self.hidden_src) {
            (Some(h), _) if h.len() != s.hidden * b => bail!(
                "depth transformer: hidden states of {} values, expected {} for {b} streams",
                h.len(),
                s.hidden * b
            ),
            (Some(h), Some(src)) => src.write(h),
            (Some(h), None) => io.inputs.put(io.hidden, 0, h),
            (None, Some(_)) => {}
            (None, None) => bail!("depth transformer: no hidden states to read"),
        }
        ensure!(
            uniforms.len() == cbs * b,
            "depth transformer: {} uniform numbers for {cbs} codebooks of {b} streams",
            uniforms.len()
        );
        // Codebook-major on the graph's side: [streams] per codebook.
        for (i, &u) in uniforms.iter().enumerate() {
            self.by_codebook_f32[(i % cbs) * b + i / cbs] = u;
        }
        io.inputs.put(io.uniform, 0, &self.by_codebook_f32);
        if let Some(window) = io.window {
            let pc = sampling.penalty_codebooks;
            for st in 0..b {
                for c in 0..pc {
                    let ids = windows.get(st * pc + c).copied().unwrap_or(&[]);
                    let n = ids.len().min(io.w);
                    let at = (c * b + st) * io.w;
                    io.inputs.put(window, at, &ids[..n]);
                    // Unused slots hold the padding id (the vocabulary size).
                    for k in n..io.w {
                        io.inputs.put(window, at + k, &[s.vocab as i32]);
                    }
                }
            }
        }
        if let Some(f) = forced {
            ensure!(
                f.len() == cbs * b && f.iter().all(|&t| t >= 0 && (t as usize) < s.vocab),
                "depth transformer: forced tokens {f:?} outside the audio vocabulary"
            );
            for (i, &t) in f.iter().enumerate() {
                self.by_codebook_i32[(i % cbs) * b + i / cbs] = t;
            }
            io.inputs.put(io.forced, 0, &self.by_codebook_i32);
            if self.forced.is_none() {
                self.forced = Some(self.build(true)?);
            }
        }
        let io = self.io.as_mut().unwrap();
        let graph = if forced.is_some() {
            self.forced.as_mut()
        } else {
            self.free.as_mut()
        }
        .unwrap();
        io.inputs.upload(&self.backend);
        graph.graph.compute_async(&self.backend)?;
        io.outputs.download(&self.backend);
        self.backend.synchronize();
        io.outputs.get(io.tokens, 0, &mut self.by_codebook_i32);
        io.outputs.get(io.checks, 0, &mut self.checks);
        for (i, (&t, &k)) in self.by_codebook_i32.iter().zip(&self.checks).enumerate() {
            let (c, st) = (i / b, i % b);
            let valid = k.is_finite() && (sampling.params.is_greedy() || k > 0.0);
            ensure!(
                valid && t >= 0 && (t as usize) < sampling.codes,
                "depth transformer: codebook {c} of stream {st} has no code to draw (its logits are all -inf or NaN)"
            );
            self.codes_out[st * cbs + c] = t;
        }
        Ok(&self.codes_out)
    }

    /// The logits of position `p` at the last step, [vocab] per stream (for tests and tools:
    /// a blocking read).
    pub fn logits(&self, p: usize, forced: bool) -> Result<Vec<f32>> {
        let graph = if forced { &self.forced } else { &self.free };
        let Some(graph) = graph else {
            bail!("depth transformer: no step graph yet")
        };
        let t = graph.logits[p];
        let mut out = vec![0f32; t.n_elements()];
        t.read(&mut out);
        Ok(out)
    }

    /// The op type of every node of the step graph.
    pub fn op_names(&self) -> Vec<String> {
        self.free
            .as_ref()
            .map(|g| g.graph.op_names())
            .unwrap_or_default()
    }

    /// Per-node timings of the step graph (a developer tool).
    pub fn profile(&mut self, reps: usize) -> Result<Vec<(String, [i64; 4], f64)>> {
        let Some(g) = self.free.as_mut() else {
            bail!("depth transformer: no step graph yet")
        };
        g.graph.profile(&self.backend, reps)
    }

    /// The step graph: all positions, each drawing its code and feeding the next.
    fn build(&self, forced: bool) -> Result<StepGraph> {
        let s = &self.shape;
        let io = self.io.as_ref().unwrap();
        let sampling = self.sampling.unwrap();
        let mut graph = Graph::new(MAX_NODES);
        let g = &graph.ctx;
        let w = |n: &str| self.weights.get(n);
        let (e, d, h, v) = (s.embd, s.head_dim(), s.heads, s.vocab);
        let (ei, di, hi) = (e as i64, d as i64, h as i64);
        let (b, bi) = (self.streams, self.streams as i64);
        let cbs = s.codebooks;
        // Inputs by codebook: [streams] each.
        let by_codebook = |t: T, c: usize| g.view(t, &[bi], &[], c * b * 4);
        let uniform = |c: usize| g.view(io.uniform, &[1, bi], &[4], c * b * 4);
        let (penalty, mask, empty, slots) = (io.penalty, io.mask, io.empty, io.slots);
        let mut k_rows: Vec<T> = self.cache.k.clone();
        let mut v_rows: Vec<T> = self.cache.v.clone();
        let mut prev = empty;
        let mut outs = vec![];
        let mut all_logits = vec![];
        for p in 0..cbs {
            let n = p as i64 + 1;
            // This position's weight of a per-position matrix.
            let wp = |name: &str| w(&per(name, p));
            let wte = {
                let t = w(DEP_WTE);
                g.view(t, &[ei, v as i64], &[t.nb()[1]], p * t.nb()[2])
            };
            let wpe = w(DEP_WPE);
            let wpe_p = g.view(wpe, &[ei, 1], &[wpe.nb()[1]], p * wpe.nb()[1]);
            let mut x = g.add(
                g.add(g.get_rows(wte, prev), wpe_p),
                g.mul_mat(wp(DEP_IN), self.hidden_src.unwrap_or(io.hidden)),
            );
            let slot = by_codebook(slots, p);
            for l in 0..s.layers {
                let y = g.mul(g.rms_norm(x, s.norm_eps), w(&blk(l, "attn_norm.weight")));
                let qkv = g.mul_mat(w(&blk(l, "attn_qkv.weight")), y);
                let part = |i: usize| g.view(qkv, &[ei, bi], &[qkv.nb()[1]], i * e * 4);
                let kc = g.set_rows(k_rows[l], part(1), slot);
                let vc = g.set_rows(v_rows[l], part(2), slot);
                k_rows[l] = kc;
                v_rows[l] = vc;
                // Rows of the cache are stream · 8 + position: [d, h, n, streams] over
                // positions 0..=p, then heads outermost but streams.
                let cached = |t: T| g.view(t, &[di, hi, n, bi], &[d * 4, e * 4, cbs * e * 4], 0);
                let kk = g.permute(cached(kc), [0, 2, 1, 3]);
                let q = g.permute(g.reshape(g.cont(part(0)), &[di, hi, 1, bi]), [0, 2, 1, 3]);
                let kq = g.soft_max_ext(g.mul_mat(kk, q), None, 1.0 / (d as f32).sqrt());
                // [n, d, h, streams]: values transposed so that the weights multiply them.
                let vv = g.cont(g.permute(cached(vc), [1, 2, 0, 3]));
                let o = g.mul_mat(vv, kq);
                let o = g.reshape(g.cont(g.permute(o, [0, 2, 1, 3])), &[ei, bi]);
                x = g.add(x, g.mul_mat(w(&blk(l, "attn_output.weight")), o));
                let y = g.mul(g.rms_norm(x, s.norm_eps), w(&blk(l, "ffn_norm.weight")));
                let gate = g.mul_mat(wp(&blk(l, "ffn_gate")), y);
                let up = g.mul_mat(wp(&blk(l, "ffn_up")), y);
                x = g.add(
                    x,
                    g.mul_mat(wp(&blk(l, "ffn_down")), g.mul(g.silu(gate), up)),
                );
            }
            let x = g.mul(g.rms_norm(x, s.norm_eps), w(DEP_OUT_NORM));
            let logits = g.mul_mat(wp(DEP_OUT), x).set_output();
            all_logits.push(logits);
            let window = io
                .window
                .filter(|_| p < sampling.penalty_codebooks)
                .map(|t| g.view(t, &[io.w as i64, bi], &[io.w * 4], p * io.w * b * 4));
            let draw = sample_graph::build(
                g,
                logits,
                &sampling.params,
                &DrawInputs {
                    window,
                    uniform: uniform(p),
                    penalty: Some(penalty),
                    mask: Some(mask),
                },
            );
            outs.push(g.cpy(draw.token, by_codebook(io.tokens, p)));
            outs.push(g.cpy(draw.check, by_codebook(io.checks, p)));
            prev = if forced {
                by_codebook(io.forced, p)
            } else {
                g.reshape(draw.token, &[bi])
            };
        }
        for o in outs {
            graph.expand(o);
        }
        graph.allocate(&self.backend)?;
        graph.check_supported(&self.backend, "depth transformer's step graph")?;
        Ok(StepGraph {
            graph,
            logits: all_logits,
        })
    }
}

/// Name of position `p`'s part of a per-position matrix.
fn per(name: &str, p: usize) -> String {
    format!("{name}.{p}")
}

fn new_cache(s: &DepformerShape, streams: usize, backend: &Backend) -> Result<Cache> {
    let ctx = Ctx::new(2 * s.layers, 0);
    let rows = (s.codebooks * streams) as i64;
    let k = (0..s.layers)
        .map(|_| ctx.new_tensor(ggml::F32, &[s.embd as i64, rows]))
        .collect();
    let v = (0..s.layers)
        .map(|_| ctx.new_tensor(ggml::F32, &[s.embd as i64, rows]))
        .collect();
    let buffer = Buffer::alloc(&ctx, backend)?;
    Ok(Cache {
        k,
        v,
        _buffer: buffer,
        _ctx: ctx,
    })
}
