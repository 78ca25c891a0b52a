//! The depth transformer ("DepthGPT") on ggml: from the backbone's hidden state of one step,
//! the 8 speaking codebooks one after another, KV-cached over its 8 positions.
//!
//! Position c sums three inputs: the token chosen at position c-1 embedded with table c (the
//! empty id 2049 at position 0), the learned position embedding c, and chunk c of
//! `linear_in(h)`. Attention is shared by the positions; the MLP and the output head are
//! per position. One graph per position is built at load and reused: the hidden state, the
//! input tokens and the KV cache are persistent tensors, so a step allocates nothing.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use flm_conversion::Gguf;
use flm_conversion::model_files::{AUDIO_ARCH, audio_keys};
use flm_conversion::plan::audio_names::*;

use crate::ggml::{self, Backend, Buffer, Ctx, Device, Graph, T};
use crate::weights::{Weights, WeightsBuilder};

const MAX_NODES: usize = 1024;

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

/// Persistent tensors: the step's hidden state, the token fed at each position, the
/// position indices (for KV writes) and the KV cache of every layer.
struct State {
    hidden: T,
    tokens: T,
    slots: T,
    k: Vec<T>,
    v: Vec<T>,
    _buffer: Buffer,
    _ctx: Ctx,
}

struct Position {
    graph: Graph,
    logits: T,
}

pub struct Depformer {
    shape: DepformerShape,
    state: State,
    positions: Vec<Position>,
    // Dropped after the graphs and state that use them.
    weights: Weights,
    backend: Backend,
}

impl Depformer {
    /// Loads the depth transformer of `audio.gguf` onto `device` (with `threads` threads on
    /// the CPU).
    /// ggml's name of the device the graphs run on ("CPU", "CUDA0", …).
    pub fn backend_name(&self) -> String {
        self.backend.name()
    }

    pub fn load(path: &Path, device: Device, threads: usize) -> Result<Depformer> {
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
        let state = new_state(&s, &backend)?;
        let mut d = Depformer {
            shape: s,
            state,
            positions: vec![],
            weights,
            backend,
        };
        for p in 0..s.codebooks {
            let pos = d.build(p)?;
            d.positions.push(pos);
        }
        Ok(d)
    }

    pub fn shape(&self) -> &DepformerShape {
        &self.shape
    }

    /// Bytes of weights on the backend (all of them are read by the 8 positions of a step).
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    /// Starts a step from the backbone's hidden state (after its final norm).
    pub fn begin(&mut self, hidden: &[f32]) -> Result<()> {
        ensure!(
            hidden.len() == self.shape.hidden,
            "depth transformer: hidden state of {} values, expected {}",
            hidden.len(),
            self.shape.hidden
        );
        self.state.hidden.write(hidden);
        Ok(())
    }

    /// Runs position `p` (0-based, after positions 0..p of this step) fed with `prev`, the
    /// token chosen at position p-1 (the empty id at position 0), and writes the logits of
    /// codebook p (`vocab` values).
    pub fn position(&mut self, p: usize, prev: i32, logits: &mut [f32]) -> Result<()> {
        ensure!(
            p < self.shape.codebooks,
            "depth transformer: position {p} of {}",
            self.shape.codebooks
        );
        ensure!(
            prev >= 0 && (prev as usize) < self.shape.vocab,
            "depth transformer: token {prev} is outside the audio vocabulary"
        );
        self.state.tokens.write_bytes(p * 4, &prev.to_ne_bytes());
        let pos = &mut self.positions[p];
        pos.graph.compute(&self.backend)?;
        pos.logits.read(logits);
        Ok(())
    }

    /// The op type of every node of the graphs of all positions.
    pub fn op_names(&self) -> Vec<String> {
        self.positions
            .iter()
            .flat_map(|p| p.graph.op_names())
            .collect()
    }

    /// Per-node timings of the graph of position `p` (a developer tool).
    pub fn profile(&mut self, p: usize, reps: usize) -> Result<Vec<(String, [i64; 4], f64)>> {
        self.positions[p].graph.profile(&self.backend, reps)
    }

    fn build(&self, p: usize) -> Result<Position> {
        let s = &self.shape;
        let mut graph = Graph::new(MAX_NODES);
        let g = &graph.ctx;
        let w = |n: &str| self.weights.get(n);
        let (e, d, h, v) = (s.embd, s.head_dim(), s.heads, s.vocab);
        let (ei, di, hi, n) = (e as i64, d as i64, h as i64, p as i64 + 1);
        // This position's weight of a per-position matrix.
        let wp = |name: &str| w(&per(name, p));
        let token = g.view(self.state.tokens, &[1], &[], p * 4);
        let slot = g.view(self.state.slots, &[1], &[], p * 4);
        let wte = {
            let t = w(DEP_WTE);
            g.view(t, &[ei, v as i64], &[t.nb()[1]], p * t.nb()[2])
        };
        let wpe = w(DEP_WPE);
        let wpe_p = g.view(wpe, &[ei, 1], &[wpe.nb()[1]], p * wpe.nb()[1]);
        let mut x = g.add(
            g.add(g.get_rows(wte, token), wpe_p),
            g.mul_mat(wp(DEP_IN), self.state.hidden),
        );
        for b in 0..s.layers {
            let y = g.mul(g.rms_norm(x, s.norm_eps), w(&blk(b, "attn_norm.weight")));
            let qkv = g.mul_mat(w(&blk(b, "attn_qkv.weight")), y);
            let part = |i: usize| g.view(qkv, &[ei, 1], &[qkv.nb()[1]], i * e * 4);
            let kc = g.set_rows(self.state.k[b], part(1), slot);
            let vc = g.set_rows(self.state.v[b], part(2), slot);
            // [d, n, h]: the keys of positions 0..=p, heads outermost.
            let kk = g.permute(g.view(kc, &[di, hi, n], &[d * 4, e * 4], 0), [0, 2, 1, 3]);
            let q = g.permute(g.reshape(g.cont(part(0)), &[di, hi, 1]), [0, 2, 1, 3]);
            let kq = g.soft_max_ext(g.mul_mat(kk, q), None, 1.0 / (d as f32).sqrt());
            // [n, d, h]: values transposed so that the weights multiply them.
            let vv = g.cont(g.permute(g.view(vc, &[di, hi, n], &[d * 4, e * 4], 0), [1, 2, 0, 3]));
            let o = g.mul_mat(vv, kq);
            let o = g.reshape(g.cont(g.permute(o, [0, 2, 1, 3])), &[ei, 1]);
            x = g.add(x, g.mul_mat(w(&blk(b, "attn_output.weight")), o));
            let y = g.mul(g.rms_norm(x, s.norm_eps), w(&blk(b, "ffn_norm.weight")));
            let gate = g.mul_mat(wp(&blk(b, "ffn_gate")), y);
            let up = g.mul_mat(wp(&blk(b, "ffn_up")), y);
            x = g.add(
                x,
                g.mul_mat(wp(&blk(b, "ffn_down")), g.mul(g.silu(gate), up)),
            );
        }
        let x = g.mul(g.rms_norm(x, s.norm_eps), w(DEP_OUT_NORM));
        let logits = g.mul_mat(wp(DEP_OUT), x).set_output().name("logits");
        graph.expand(logits);
        graph.allocate(&self.backend)?;
        Ok(Position { graph, logits })
    }
}

/// Name of position `p`'s part of a per-position matrix.
fn per(name: &str, p: usize) -> String {
    format!("{name}.{p}")
}

fn new_state(s: &DepformerShape, backend: &Backend) -> Result<State> {
    let ctx = Ctx::new(3 + 2 * s.layers, 0);
    let (e, c) = (s.embd as i64, s.codebooks as i64);
    let hidden = ctx.new_tensor(ggml::F32, &[s.hidden as i64, 1]);
    let tokens = ctx.new_tensor(ggml::I32, &[c]);
    let slots = ctx.new_tensor(ggml::I32, &[c]);
    let k = (0..s.layers)
        .map(|_| ctx.new_tensor(ggml::F32, &[e, c]))
        .collect();
    let v = (0..s.layers)
        .map(|_| ctx.new_tensor(ggml::F32, &[e, c]))
        .collect();
    let buffer = Buffer::alloc(&ctx, backend)?;
    let positions: Vec<i32> = (0..s.codebooks as i32).collect();
    slots.write(&positions);
    Ok(State {
        hidden,
        tokens,
        slots,
        k,
        v,
        _buffer: buffer,
        _ctx: ctx,
    })
}
