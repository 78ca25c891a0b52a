//! The Qwen2 backbone on ggml: from the summed input embedding of one 80 ms step to the
//! hidden state after the final norm (which the depth transformer reads on the device) and
//! the text token, KV-cached over the conversation.
//!
//! A step is one graph: 28 layers of attention (grouped-query, RoPE in NeoX layout, biases on
//! q, k and v) and SwiGLU, the final norm, the text head, and on a device the text token's
//! draw (`sample_graph`), so that only the token comes back. Its inputs (the embedding, the
//! position, the cache slots, the attention mask's new cell, the uniform number, the penalty
//! window) go up in one copy; nothing waits: the caller synchronises once for the whole step,
//! after the depth transformer, which reads the hidden state where this graph left it.
//!
//! The KV cache holds `positions` cells per conversation: keys by row (cell-major), values
//! transposed (position-major, as the attention multiplies them), f16 or f32. Cell i holds
//! position i; a context shift moves cells down and re-rotates their keys (`discard`). A step
//! attends to the first n cells, n the smallest of a few sizes (256 · 2^k, and the whole
//! cache) that holds every cell in use, with a mask on the rest: one graph per size, all built
//! when the sampling is set, so that a step allocates nothing.
//!
//! Every tensor carries the number of conversations stepped together (`streams`) as its
//! outermost dimension.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use flm_conversion::Gguf;

use crate::ggml::{self, Backend, Buffer, Ctx, Graph, T, Type};
use crate::sample_graph::{self, DrawInputs};
use crate::sampling::SamplingParams;
use crate::staging::{Staging, StagingBuilder};
use crate::weights::{Weights, WeightsBuilder};

/// The smallest attention span of a step graph; spans double up to the whole cache.
const MIN_SPAN: usize = 256;

/// Hyper-parameters, read from the backbone file (llama.cpp's `qwen2` keys).
#[derive(Clone, Copy, Debug)]
pub struct BackboneShape {
    pub embd: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// Positions the model was trained on.
    pub context: usize,
    pub norm_eps: f32,
    pub rope_base: f32,
}

impl BackboneShape {
    pub fn read(g: &Gguf, label: &str) -> Result<BackboneShape> {
        let arch = g
            .get_str("general.architecture")
            .with_context(|| label.to_string())?;
        ensure!(
            arch == "qwen2",
            "{label}: architecture `{arch}`, expected `qwen2`"
        );
        let u = |k: &str| -> Result<usize> {
            let k = format!("qwen2.{k}");
            let v = g.get_u64(&k).with_context(|| label.to_string())?;
            ensure!(v > 0 && v < 1 << 24, "{label}: `{k}` = {v} is out of range");
            Ok(v as usize)
        };
        let f = |k: &str| -> Result<f32> {
            let k = format!("qwen2.{k}");
            let v = g.get_f64(&k).with_context(|| label.to_string())? as f32;
            ensure!(
                v.is_finite() && v > 0.0,
                "{label}: `{k}` = {v} is not a positive number"
            );
            Ok(v)
        };
        let head = g
            .tensor("output.weight")
            .with_context(|| format!("{label}: tensor `output.weight` is missing"))?;
        ensure!(
            head.ne.len() == 2,
            "{label}: tensor `output.weight` is not a matrix"
        );
        let s = BackboneShape {
            embd: u("embedding_length")?,
            layers: u("block_count")?,
            heads: u("attention.head_count")?,
            kv_heads: u("attention.head_count_kv")?,
            ffn: u("feed_forward_length")?,
            vocab: head.ne[1] as usize,
            context: u("context_length")?,
            norm_eps: f("attention.layer_norm_rms_epsilon")?,
            rope_base: f("rope.freq_base")?,
        };
        ensure!(
            s.embd.is_multiple_of(s.heads) && s.heads.is_multiple_of(s.kv_heads),
            "{label}: width {} with {} heads and {} key-value heads",
            s.embd,
            s.heads,
            s.kv_heads
        );
        ensure!(
            s.head_dim().is_multiple_of(2),
            "{label}: head width {} is odd (RoPE rotates pairs)",
            s.head_dim()
        );
        Ok(s)
    }

    pub fn head_dim(&self) -> usize {
        self.embd / self.heads
    }

    /// Width of a key or value row (all key-value heads).
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct BackboneOptions {
    /// KV cache cells per conversation: the most positions a conversation holds.
    pub positions: usize,
    /// Keep the KV cache in f32 instead of f16 (twice the memory; f16 values alone move
    /// f32-weight outputs by about 1e-3).
    pub kv_f32: bool,
    /// Conversations stepped together.
    pub streams: usize,
}

/// The KV cache: per layer, keys [kv width, positions, streams] and values transposed
/// [positions, kv width, streams].
struct Cache {
    k: Vec<T>,
    v: Vec<T>,
    ty: Type,
    buffer: Buffer,
    _ctx: Ctx,
}

/// The step's inputs and outputs on both sides, one copy each way.
struct Io {
    inputs: Staging,
    /// The summed input embedding, [embd, streams].
    embd: T,
    /// The step's position (RoPE), [streams].
    pos: T,
    /// The cache row of the new key, [streams]; the cells of the new value, [kv width, streams].
    k_slot: T,
    v_slot: T,
    /// One uniform number per stream, [1, streams].
    uniform: T,
    /// The text penalty window, [W, streams]; absent when the penalty is off or the host draws.
    window: Option<T>,
    /// 0 for cells in use, -inf for the others, [streams, positions]: cell-major, so that the
    /// cells of one position in every stream lie side by side and a step's new cells go up
    /// in a short range.
    mask: T,
    penalty: T,
    outputs: Staging,
    /// The drawn text token and its check value, [streams].
    token: T,
    check: T,
    /// Window slots per stream.
    w: usize,
    /// Host copy of the whole mask.
    row: Vec<f32>,
}

/// Where the step leaves the hidden state: the depth transformer's input on the device.
struct State {
    hidden: T,
    _buffer: Buffer,
    _ctx: Ctx,
}

/// A step graph attending to the first `span` cells.
struct StepGraph {
    span: usize,
    graph: Graph,
    logits: T,
}

/// A built context shift: cells `keep + n ..` of one stream move to `keep ..`.
struct Shift {
    key: (usize, usize, usize, usize),
    graph: Graph,
    _delta: (Buffer, Ctx),
}

pub struct Backbone {
    shape: BackboneShape,
    opts: BackboneOptions,
    /// Row blocks of the text head (see `load`).
    head_parts: usize,
    /// The text draw in the graph (None: the host draws from `read_logits`).
    text: Option<SamplingParams>,
    io: Option<Io>,
    graphs: Vec<StepGraph>,
    /// The graph of the last step (its logits are the last step's).
    last: Option<usize>,
    /// The shifts of a full cache, one per stream, built at load (`prepare_shifts`), and the
    /// last shift of another size (benchmarks shift at any moment).
    shifts: Vec<Shift>,
    other_shift: Option<Shift>,
    /// Cells in use per stream.
    used: Vec<usize>,
    /// Host scratch for the per-step slots.
    v_slots: Vec<i32>,
    state: State,
    cache: Cache,
    weights: Weights,
}

impl Backbone {
    /// Loads the backbone of `path` (every layer and the text head; the input embedding
    /// table stays in the file, read by the host) onto `backend`.
    pub fn load(path: &Path, backend: &Backend, opts: BackboneOptions) -> Result<Backbone> {
        let label = path.display().to_string();
        ensure!(
            (1..=64).contains(&opts.streams),
            "backbone: {} streams (1..=64)",
            opts.streams
        );
        let mut wb = WeightsBuilder::open(path)?;
        let s = BackboneShape::read(wb.gguf(), &label)?;
        ensure!(
            opts.positions >= 1 && opts.positions <= s.context,
            "{label}: a KV cache of {} positions; the model holds 1 to {}",
            opts.positions,
            s.context
        );
        let i = |v: usize| v as i64;
        let (e, kv, f) = (i(s.embd), i(s.kv_width()), i(s.ffn));
        let matrix =
            |wb: &mut WeightsBuilder, n: &str, ne: [i64; 2]| wb.matrix_part(n, n, &ne, 0, 1);
        for b in 0..s.layers {
            let n = |t: &str| format!("blk.{b}.{t}");
            wb.tensor(&n("attn_norm.weight"), &[e])?;
            matrix(&mut wb, &n("attn_q.weight"), [e, e])?;
            matrix(&mut wb, &n("attn_k.weight"), [e, kv])?;
            matrix(&mut wb, &n("attn_v.weight"), [e, kv])?;
            wb.tensor(&n("attn_q.bias"), &[e])?;
            wb.tensor(&n("attn_k.bias"), &[kv])?;
            wb.tensor(&n("attn_v.bias"), &[kv])?;
            matrix(&mut wb, &n("attn_output.weight"), [e, e])?;
            wb.tensor(&n("ffn_norm.weight"), &[e])?;
            matrix(&mut wb, &n("ffn_gate.weight"), [e, f])?;
            matrix(&mut wb, &n("ffn_up.weight"), [e, f])?;
            matrix(&mut wb, &n("ffn_down.weight"), [f, e])?;
        }
        wb.tensor("output_norm.weight", &[e])?;
        // The text head in as few row blocks as the device's kernels can address each
        // (one but on small devices: Mesa's software Vulkan binds at most 128 MiB).
        let head_ty = wb
            .gguf()
            .tensor("output.weight")
            .map(|t| t.ty.id())
            .with_context(|| format!("{label}: tensor `output.weight` is missing"))?;
        let mut head_parts = 1;
        while !backend.supports_matmul(head_ty, e, s.vocab.div_ceil(head_parts) as i64) {
            ensure!(
                head_parts < s.vocab,
                "{label}: {} cannot multiply the text head's rows of type {}",
                backend.name(),
                ggml::type_name(head_ty)
            );
            head_parts *= 2;
        }
        let rows = s.vocab.div_ceil(head_parts);
        for p in 0..head_parts {
            let first = p * rows;
            wb.matrix_rows(
                &head_part(p),
                "output.weight",
                e,
                first,
                rows.min(s.vocab - first),
            )?;
        }
        let weights = wb.build(backend, backend.is_cpu())?;
        let ty = if opts.kv_f32 { ggml::F32 } else { ggml::F16 };
        let cache = new_cache(&s, &opts, ty, backend)?;
        let ctx = Ctx::new(1, 0);
        let hidden = ctx
            .new_tensor(ggml::F32, &[e, opts.streams as i64])
            .name("hidden");
        let state = State {
            hidden,
            _buffer: Buffer::alloc(&ctx, backend)?,
            _ctx: ctx,
        };
        Ok(Backbone {
            shape: s,
            opts,
            head_parts,
            text: None,
            io: None,
            graphs: vec![],
            last: None,
            shifts: vec![],
            other_shift: None,
            used: vec![0; opts.streams],
            v_slots: vec![0; s.kv_width() * opts.streams],
            state,
            cache,
            weights,
        })
    }

    pub fn shape(&self) -> &BackboneShape {
        &self.shape
    }

    pub fn streams(&self) -> usize {
        self.opts.streams
    }

    /// KV cache cells per conversation.
    pub fn positions(&self) -> usize {
        self.opts.positions
    }

    /// Bytes of weights on the backend (all read at every step).
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    /// Whether the KV cache holds f32 (else f16).
    pub fn kv_f32(&self) -> bool {
        self.opts.kv_f32
    }

    /// Bytes of the KV cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache.buffer.bytes()
    }

    /// Whether the text token is drawn in the graph (`drawn_text` reads it).
    pub fn draws_text(&self) -> bool {
        self.text.is_some()
    }

    /// Builds the step graphs (checked against the device: an op it cannot run is one error
    /// line) drawing the text token with `text` in the graph, or leaving it to the host (None).
    pub fn configure(&mut self, backend: &Backend, text: Option<SamplingParams>) -> Result<()> {
        if self.io.is_some() && self.text == text {
            return Ok(());
        }
        self.graphs.clear();
        self.last = None;
        self.io = Some(self.new_io(backend, text.as_ref())?);
        self.text = text;
        let mut span = MIN_SPAN.min(self.opts.positions);
        loop {
            let g = self.build(backend, span)?;
            self.graphs.push(g);
            if span == self.opts.positions {
                break;
            }
            span = (span * 2).min(self.opts.positions);
        }
        Ok(())
    }

    fn new_io(&self, backend: &Backend, text: Option<&SamplingParams>) -> Result<Io> {
        let s = &self.shape;
        let b = self.opts.streams as i64;
        let w = text
            .filter(|p| p.penalises())
            .map_or(0, |p| p.repetition_window);
        let mut ib = StagingBuilder::new(9);
        // What changes every step first, so that one short range goes up.
        let embd = ib.tensor(ggml::F32, &[s.embd as i64, b], "embd");
        let pos = ib.tensor(ggml::I32, &[b], "pos");
        let k_slot = ib.tensor(ggml::I32, &[b], "k_slot");
        let v_slot = ib.tensor(ggml::I32, &[(s.kv_width()) as i64 * b], "v_slot");
        let uniform = ib.tensor(ggml::F32, &[1, b], "uniform");
        let window = (w > 0).then(|| ib.tensor(ggml::I32, &[w as i64, b], "window"));
        let penalty = ib.tensor(ggml::F32, &[1], "penalty");
        let mask = ib.tensor(ggml::F32, &[b, self.opts.positions as i64], "mask");
        let mut inputs = ib.build(backend)?;
        inputs.put(penalty, 0, &[text.map_or(1.0, |p| p.repetition_penalty)]);
        if let Some(window) = window {
            inputs.put(window, 0, &vec![s.vocab as i32; w * self.opts.streams]);
        }
        let mut ob = StagingBuilder::new(2);
        let token = ob.tensor(ggml::I32, &[b], "token");
        let check = ob.tensor(ggml::F32, &[b], "check");
        let outputs = ob.build(backend)?;
        let mut io = Io {
            inputs,
            embd,
            pos,
            k_slot,
            v_slot,
            uniform,
            window,
            mask,
            penalty,
            outputs,
            token,
            check,
            w,
            row: vec![f32::NEG_INFINITY; self.opts.positions * self.opts.streams],
        };
        for st in 0..self.opts.streams {
            write_mask(&mut io, self.opts.positions, st, self.used[st]);
        }
        Ok(io)
    }

    /// Forgets every cached position of `stream`.
    pub fn clear(&mut self, stream: usize) {
        self.used[stream] = 0;
        if let Some(io) = self.io.as_mut() {
            write_mask(io, self.opts.positions, stream, 0);
        }
    }

    /// Forgets the cells of `stream` from `pos` on (a step computed for a stream that was not
    /// continued). Call once the step's graph has completed.
    pub fn forget_from(&mut self, stream: usize, pos: usize) {
        if pos < self.used[stream] {
            self.used[stream] = pos;
            if let Some(io) = self.io.as_mut() {
                write_mask(io, self.opts.positions, stream, pos);
            }
        }
    }

    /// Cells in use by `stream` (its next position).
    pub fn used(&self, stream: usize) -> usize {
        self.used[stream]
    }

    /// Queues one step: `embd` (embd floats per stream) at position `pos` of each stream,
    /// appended to its cache (a position below the cells in use overwrites that cell and
    /// forgets the later ones). `windows[s]` holds stream s's earlier text tokens for the
    /// penalty, `uniforms[s]` its uniform number (both unused when the host draws). Nothing
    /// waits: synchronise the backend before `drawn_text`.
    pub fn submit(
        &mut self,
        backend: &Backend,
        embd: &[f32],
        pos: &[usize],
        windows: &[&[i32]],
        uniforms: &[f32],
    ) -> Result<()> {
        let (s, n, b) = (self.shape, self.opts.positions, self.opts.streams);
        let Some(io) = self.io.as_mut() else {
            bail!("backbone: no step graph configured")
        };
        ensure!(
            embd.len() == s.embd * b && pos.len() == b && uniforms.len() == b,
            "backbone step: {} values, {} positions and {} uniforms for {b} streams of width {}",
            embd.len(),
            pos.len(),
            uniforms.len(),
            s.embd
        );
        for (st, &p) in pos.iter().enumerate() {
            ensure!(
                p < n && p <= self.used[st],
                "backbone step: position {p} of stream {st} past the {} cells in use (cache of {n})",
                self.used[st]
            );
        }
        io.inputs.put(io.embd, 0, embd);
        let pos_i: [i32; 64] = std::array::from_fn(|i| pos.get(i).map_or(0, |&p| p as i32));
        io.inputs.put(io.pos, 0, &pos_i[..b]);
        let k_slot: [i32; 64] = std::array::from_fn(|i| (i * n) as i32 + pos_i[i]);
        io.inputs.put(io.k_slot, 0, &k_slot[..b]);
        let kvw = s.kv_width();
        for (i, slot) in self.v_slots.iter_mut().enumerate() {
            *slot = (i * n) as i32 + pos_i[i / kvw];
        }
        io.inputs.put(io.v_slot, 0, &self.v_slots);
        io.inputs.put(io.uniform, 0, uniforms);
        if let Some(window) = io.window {
            for st in 0..b {
                let ids = windows.get(st).copied().unwrap_or(&[]);
                let k = ids.len().min(io.w);
                io.inputs.put(window, st * io.w, &ids[..k]);
                for j in k..io.w {
                    io.inputs.put(window, st * io.w + j, &[s.vocab as i32]);
                }
            }
        }
        for (st, &p) in pos.iter().enumerate() {
            if p < self.used[st] {
                write_mask(io, n, st, p);
            }
            io.row[p * b + st] = 0.0;
            io.inputs.put(io.mask, p * b + st, &[0f32]);
            self.used[st] = p + 1;
        }
        let need = self.used.iter().copied().max().unwrap_or(1);
        let g = self
            .graphs
            .iter()
            .position(|g| g.span >= need)
            .expect("the last graph spans the whole cache");
        io.inputs.upload(backend);
        self.graphs[g].graph.compute_async(backend)?;
        if self.text.is_some() {
            io.outputs.download(backend);
        }
        self.last = Some(g);
        Ok(())
    }

    /// The text token of each stream drawn at the last step (after the backend synchronised);
    /// an error when its logits had no candidate (all -inf or NaN).
    pub fn drawn_text(&self, out: &mut [i32]) -> Result<()> {
        let (Some(io), Some(params)) = (self.io.as_ref(), self.text) else {
            bail!("backbone: the text token is not drawn on the device")
        };
        let b = self.opts.streams;
        let mut checks = [0f32; 64];
        io.outputs.get(io.token, 0, &mut out[..b]);
        io.outputs.get(io.check, 0, &mut checks[..b]);
        for (st, (&t, &k)) in out.iter().zip(&checks[..b]).enumerate() {
            let valid = k.is_finite() && (params.is_greedy() || k > 0.0);
            ensure!(
                valid && t >= 0 && (t as usize) < self.shape.vocab,
                "backbone: the text logits of stream {st} have no token to draw (all -inf or NaN)"
            );
        }
        Ok(())
    }

    /// The text logits of the last step, [vocab] per stream (a blocking read: the host's
    /// draw on the CPU, tests and tools).
    pub fn read_logits(&self, out: &mut [f32]) -> Result<()> {
        let Some(g) = self.last else {
            bail!("backbone: no step has run: there are no logits")
        };
        self.graphs[g].logits.read(out);
        Ok(())
    }

    /// The hidden state after the final norm, [embd] per stream, where the depth transformer
    /// reads it: on the backend, written by each step.
    pub fn hidden_tensor(&self) -> T {
        self.state.hidden
    }

    /// The last step's hidden state (a blocking read, for tests and tools).
    pub fn read_hidden(&self, out: &mut [f32]) -> Result<()> {
        ensure!(
            self.last.is_some(),
            "backbone: no step has run: there is no hidden state"
        );
        self.state.hidden.read(out);
        Ok(())
    }

    /// The op type of every node of the largest step graph.
    pub fn op_names(&self) -> Vec<String> {
        self.graphs
            .last()
            .map(|g| g.graph.op_names())
            .unwrap_or_default()
    }

    /// Builds, for every stream, the shift that drops cells `keep .. keep + n` of a full
    /// cache (the context policy's), so that a step that shifts allocates nothing.
    pub fn prepare_shifts(&mut self, backend: &Backend, keep: usize, n: usize) -> Result<()> {
        let npos = self.opts.positions;
        ensure!(
            n > 0 && keep + n < npos,
            "backbone: a shift of {n} cells after {keep} in a cache of {npos}"
        );
        self.shifts = (0..self.opts.streams)
            .map(|st| self.build_shift(backend, (st, keep, n, npos - keep - n)))
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// Drops cells `keep .. keep + n` of `stream` and moves the later ones `n` cells down,
    /// re-rotating their keys to their new positions, so that the conversation goes on from
    /// a lower position. A shift that `prepare_shifts` did not build is built here and kept
    /// for the next one of its size.
    pub fn discard(
        &mut self,
        backend: &Backend,
        stream: usize,
        keep: usize,
        n: usize,
    ) -> Result<()> {
        let used = self.used[stream];
        ensure!(
            n > 0 && keep + n <= used,
            "backbone: cannot drop cells {keep}..{} of the {used} in use",
            keep + n
        );
        let m = used - keep - n;
        let key = (stream, keep, n, m);
        if m > 0 {
            let prepared = self.shifts.iter().position(|s| s.key == key);
            if prepared.is_none() && self.other_shift.as_ref().is_none_or(|s| s.key != key) {
                self.other_shift = Some(self.build_shift(backend, key)?);
            }
            let shift = match prepared {
                Some(i) => &mut self.shifts[i],
                None => self.other_shift.as_mut().expect("built above"),
            };
            shift.graph.compute(backend)?;
        }
        self.used[stream] = keep + m;
        if let Some(io) = self.io.as_mut() {
            write_mask(io, self.opts.positions, stream, keep + m);
        }
        Ok(())
    }

    /// Builds the graph of a shift (see `discard`) ready to run.
    fn build_shift(&self, backend: &Backend, key: (usize, usize, usize, usize)) -> Result<Shift> {
        let (st, keep, n, m) = key;
        let s = &self.shape;
        let npos = self.opts.positions;
        let (d, kvw) = (s.head_dim(), s.kv_width());
        let es = ggml::type_size(self.cache.ty);
        let dctx = Ctx::new(1, 0);
        let delta = dctx.new_tensor(ggml::I32, &[m as i64]);
        let dbuf = Buffer::alloc(&dctx, backend)?;
        delta.write(&vec![-(n as i32); m]);
        let mut graph = Graph::new(16 * s.layers + 16);
        let g = &graph.ctx;
        let stream_k = st * npos * kvw * es;
        let stream_v = st * kvw * npos * es;
        for l in 0..s.layers {
            let k = self.cache.k[l];
            let rows = |at: usize| {
                g.view(
                    k,
                    &[d as i64, s.kv_heads as i64, m as i64],
                    &[d * es, kvw * es],
                    stream_k + at * kvw * es,
                )
            };
            let moved = g.rope(
                rows(keep + n),
                delta,
                d as i32,
                ggml::ROPE_NEOX,
                s.rope_base,
            );
            graph.expand(g.cpy(moved, rows(keep)));
            let v = self.cache.v[l];
            let cols =
                |at: usize| g.view(v, &[m as i64, kvw as i64], &[npos * es], stream_v + at * es);
            graph.expand(g.cpy(g.cont(cols(keep + n)), cols(keep)));
        }
        graph.allocate(backend)?;
        graph.check_supported(backend, "backbone's context shift")?;
        Ok(Shift {
            key,
            graph,
            _delta: (dbuf, dctx),
        })
    }

    /// The step graph attending to the first `span` cells.
    fn build(&self, backend: &Backend, span: usize) -> Result<StepGraph> {
        let s = &self.shape;
        let io = self.io.as_ref().unwrap();
        let mut graph = Graph::new(64 * s.layers + 256);
        let g = &graph.ctx;
        let w = |n: &str| self.weights.get(n);
        let npos = self.opts.positions;
        let (b, bi) = (self.opts.streams, self.opts.streams as i64);
        let (e, d, kvw) = (s.embd as i64, s.head_dim(), s.kv_width());
        let (di, hi, hkv) = (d as i64, s.heads as i64, s.kv_heads as i64);
        let es = ggml::type_size(self.cache.ty);
        let span_i = span as i64;
        // The mask of the cells attended to: [span, 1, 1, streams].
        let mask = g.view(io.mask, &[bi, span_i], &[b * 4], 0);
        let mask = g.reshape(g.cont(g.transpose(mask)), &[span_i, 1, 1, bi]);
        let mut x = io.embd;
        let mut writes = vec![];
        // RoPE at each stream's position of a [heads · d, streams] projection.
        let rope = |t: T, heads: i64| {
            let t = g.reshape(t, &[di, heads, bi]);
            g.rope(t, io.pos, d as i32, ggml::ROPE_NEOX, s.rope_base)
        };
        for l in 0..s.layers {
            let n = |t: &str| w(&format!("blk.{l}.{t}"));
            let y = g.mul(g.rms_norm(x, s.norm_eps), n("attn_norm.weight"));
            let q = g.add(g.mul_mat(n("attn_q.weight"), y), n("attn_q.bias"));
            let k = g.add(g.mul_mat(n("attn_k.weight"), y), n("attn_k.bias"));
            let v = g.add(g.mul_mat(n("attn_v.weight"), y), n("attn_v.bias"));
            let q = rope(q, hi);
            let k = rope(k, hkv);
            // The new key and value into their cells.
            let kc = self.cache.k[l];
            let k_rows = g.view(kc, &[kvw as i64, (npos * b) as i64], &[kvw * es], 0);
            let kc = g.set_rows(k_rows, g.reshape(k, &[kvw as i64, bi]), io.k_slot);
            let vc = self.cache.v[l];
            let v_cells = g.view(vc, &[1, (npos * kvw * b) as i64], &[es], 0);
            let vc = g.set_rows(v_cells, g.reshape(v, &[1, kvw as i64 * bi]), io.v_slot);
            writes.push(kc);
            writes.push(vc);
            // Keys [d, span, kv heads, streams]; values [span, d, kv heads, streams].
            let keys = g.view(
                kc,
                &[di, span_i, hkv, bi],
                &[kvw * es, d * es, npos * kvw * es],
                0,
            );
            let values = g.view(
                vc,
                &[span_i, di, hkv, bi],
                &[npos * es, d * npos * es, kvw * npos * es],
                0,
            );
            let q = g.permute(g.reshape(q, &[di, hi, 1, bi]), [0, 2, 1, 3]);
            let kq = g.mul_mat(keys, q);
            let kq = g.soft_max_ext(kq, Some(mask), 1.0 / (d as f32).sqrt());
            let o = g.mul_mat(values, kq);
            let o = g.reshape(g.cont(g.permute(o, [0, 2, 1, 3])), &[e, bi]);
            x = g.add(x, g.mul_mat(n("attn_output.weight"), o));
            let y = g.mul(g.rms_norm(x, s.norm_eps), n("ffn_norm.weight"));
            let gate = g.mul_mat(n("ffn_gate.weight"), y);
            let up = g.mul_mat(n("ffn_up.weight"), y);
            x = g.add(x, g.mul_mat(n("ffn_down.weight"), g.mul(g.silu(gate), up)));
        }
        let h = g.mul(g.rms_norm(x, s.norm_eps), w("output_norm.weight"));
        let hidden = g.cpy(h, self.state.hidden);
        let mut logits = g.mul_mat(w(&head_part(0)), h);
        for p in 1..self.head_parts {
            logits = g.concat(logits, g.mul_mat(w(&head_part(p)), h), 0);
        }
        let logits = logits.set_output();
        for t in writes {
            graph.expand(t);
        }
        graph.expand(hidden);
        graph.expand(logits);
        if let Some(params) = &self.text {
            let draw = sample_graph::build(
                g,
                logits,
                params,
                &DrawInputs {
                    window: io.window,
                    uniform: io.uniform,
                    penalty: Some(io.penalty),
                    mask: None,
                },
            );
            graph.expand(g.cpy(g.reshape(draw.token, &[bi]), io.token));
            graph.expand(g.cpy(g.reshape(draw.check, &[bi]), io.check));
        }
        graph.allocate(backend)?;
        graph.check_supported(backend, "backbone's step graph")?;
        Ok(StepGraph {
            span,
            graph,
            logits,
        })
    }
}

/// Name of row block `p` of the text head.
fn head_part(p: usize) -> String {
    format!("output.weight.{p}")
}

/// Marks cells `0 .. used` of `stream` in use, the others not.
fn write_mask(io: &mut Io, positions: usize, stream: usize, used: usize) {
    let streams = io.row.len() / positions;
    for c in 0..positions {
        io.row[c * streams + stream] = if c < used { 0.0 } else { f32::NEG_INFINITY };
    }
    io.inputs.put(io.mask, 0, &io.row);
}

fn new_cache(s: &BackboneShape, o: &BackboneOptions, ty: Type, backend: &Backend) -> Result<Cache> {
    let ctx = Ctx::new(2 * s.layers, 0);
    let (kvw, n, b) = (s.kv_width() as i64, o.positions as i64, o.streams as i64);
    let k = (0..s.layers)
        .map(|l| {
            ctx.new_tensor(ty, &[kvw, n, b])
                .name(&format!("cache_k.{l}"))
        })
        .collect();
    let v = (0..s.layers)
        .map(|l| {
            ctx.new_tensor(ty, &[n, kvw, b])
                .name(&format!("cache_v.{l}"))
        })
        .collect();
    // Zeroed: cells not in use are masked, and must hold finite values (0 · NaN is NaN).
    let buffer = Buffer::alloc(&ctx, backend)?;
    Ok(Cache {
        k,
        v,
        ty,
        buffer,
        _ctx: ctx,
    })
}
