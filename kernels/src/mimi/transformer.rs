//! The encoder's and decoder's streaming transformers (8 pre-norm layers, LayerScale, RoPE,
//! a causal context of 250 steps), their ring KV caches, and the re-basing of RoPE positions
//! that lets a stream run for days.

use anyhow::Result;
use flm_conversion::plan::mimi_arch::*;

use super::resample::STEPS_PER_FRAME;
use super::state::{Builder, State};
use crate::ggml::{self, Backend, Graph, T};
use crate::staging::{Staging, StagingBuilder};
use crate::weights::WeightsBuilder;

const HEAD_DIM: usize = LATENT / HEADS;
/// Slots of the KV cache tensors: the ring of CONTEXT (250) rounded up to a multiple of 16, so
/// that attention scores run on ggml's tiled matmul; the extra slots are never written and
/// always masked out (zero weight on zero values).
pub(super) const SLOTS: usize = CONTEXT.div_ceil(16) * 16;
/// RoPE positions are re-based by this many steps (164 s of audio) whenever the newest
/// passes twice that: the positions the graphs see stay below about 8 500, where f32 keeps
/// the rotation angles to 1e-3 rad, however long the stream runs (a day's steps would leave
/// them with no precision at all, and 2^24 steps would not even be exact in f32).
pub(super) const REBASE: i64 = 1 << 12;

/// The two transformers' weight and state name prefixes.
pub(super) const ENCODER: &str = "enc_tr";
pub(super) const DECODER: &str = "dec_tr";

/// Host-side bookkeeping of one transformer's ring KV cache (as Kyutai's `RingKVCache`).
pub(super) struct Ring {
    /// Position held by each slot, -1 when empty.
    slot_pos: Vec<i64>,
    /// Positions written so far.
    end: i64,
    /// Subtracted from every position the graphs see (RoPE); a multiple of REBASE. The keys
    /// in the cache were rotated for positions relative to it.
    pub(super) base: i64,
    // Per-call input values, sized for the largest call seen.
    slots: Vec<i32>,
    pairs: Vec<i32>,
    pos: Vec<i32>,
    mask: Vec<f32>,
    key_rows: Vec<i32>,
    value_rows: Vec<i32>,
}

impl Ring {
    /// An empty ring, its input buffers sized for a call of one frame.
    pub(super) fn new() -> Ring {
        let n = STEPS_PER_FRAME;
        Ring {
            slot_pos: vec![-1; CONTEXT],
            end: 0,
            base: 0,
            slots: vec![0; n],
            pairs: vec![0; n / 2],
            pos: vec![0; n],
            mask: vec![f32::NEG_INFINITY; n * SLOTS],
            key_rows: vec![0; n],
            value_rows: vec![0; n / 2 * LATENT],
        }
    }

    /// Empties the ring for a new stream, in place (no allocation).
    pub(super) fn restart(&mut self) {
        self.slot_pos.fill(-1);
        self.end = 0;
        self.base = 0;
    }

    /// A ring whose first position is `end` (a stream that has run that long), its base
    /// as low as the re-basing would have left it.
    pub(super) fn starting_at(end: i64) -> Ring {
        Ring {
            end,
            base: (end / REBASE - 1).max(0) * REBASE,
            ..Ring::new()
        }
    }

    /// Whether the next `n` positions would take the graphs' positions past 2·REBASE: then
    /// the cached keys are rotated back by REBASE (the shift graph) and the base moves up.
    pub(super) fn needs_rebase(&self, n: usize) -> bool {
        self.end + n as i64 - self.base > 2 * REBASE
    }

    /// Claims slots for `n` new positions of stream `stream`, the `at`-th of its call's
    /// batch, and puts the graph inputs into `block`: slot indices, slot pairs, positions,
    /// the attention mask ([SLOTS, n]: 0 where key slot j is visible to query i, else
    /// -inf), and for a codec of several streams the rows of the stream's slice of the
    /// persistent caches that the new keys and values go to.
    pub(super) fn advance(
        &mut self,
        n: usize,
        block: &mut Staging,
        inputs: &RingInputs,
        at: usize,
        stream: usize,
    ) {
        if self.slots.len() < n {
            self.slots.resize(n, 0);
            self.pairs.resize(n / 2, 0);
            self.pos.resize(n, 0);
            self.mask.resize(n * SLOTS, f32::NEG_INFINITY);
            self.key_rows.resize(n, 0);
            self.value_rows.resize(n / 2 * LATENT, 0);
        }
        for i in 0..n {
            let p = self.end + i as i64;
            let slot = (p as usize) % CONTEXT;
            self.slot_pos[slot] = p;
            self.slots[i] = slot as i32;
            self.pos[i] = (p - self.base) as i32;
        }
        for i in 0..n / 2 {
            // `end` and n are even and CONTEXT is even: pairs never straddle the wrap.
            self.pairs[i] = self.slots[2 * i] / 2;
        }
        for i in 0..n {
            let q = self.end + i as i64;
            for (j, &k) in self.slot_pos.iter().enumerate() {
                let d = q - k;
                let visible = k >= 0 && d >= 0 && d < CONTEXT as i64;
                self.mask[i * SLOTS + j] = if visible { 0.0 } else { f32::NEG_INFINITY };
            }
        }
        self.end += n as i64;
        block.put(inputs.slots, at * n, &self.slots[..n]);
        block.put(inputs.pairs, at * n / 2, &self.pairs[..n / 2]);
        block.put(inputs.pos, at * n, &self.pos[..n]);
        block.put(inputs.mask, at * n * SLOTS, &self.mask[..n * SLOTS]);
        if let Some((keys, values)) = inputs.rows {
            // Keys: row slot of the stream's [512, SLOTS] slice. Values: the stream's
            // [SLOTS, 512] slice seen as rows of 2 (a slot pair of one channel), in the
            // order of the graph's [2, n/2, 512] values.
            for i in 0..n {
                self.key_rows[i] = (stream * SLOTS) as i32 + self.slots[i];
            }
            for ch in 0..LATENT {
                for i in 0..n / 2 {
                    self.value_rows[ch * (n / 2) + i] =
                        ((stream * LATENT + ch) * (SLOTS / 2)) as i32 + self.pairs[i];
                }
            }
            block.put(keys, at * n, &self.key_rows[..n]);
            block.put(
                values,
                at * n / 2 * LATENT,
                &self.value_rows[..n / 2 * LATENT],
            );
        }
    }
}

/// Per-call inputs of a transformer graph for a batch of k streams: the ring slots written
/// (keys by slot, values by slot pair), the positions (RoPE), the attention mask, and for a
/// codec of several streams the rows of the persistent caches the new keys and values go to.
#[derive(Clone, Copy)]
pub(super) struct RingInputs {
    slots: T,
    pairs: T,
    pos: T,
    mask: T,
    rows: Option<(T, T)>,
}

impl RingInputs {
    /// Tensors of an input block for `n` positions of each of `k` streams, laid out one
    /// after another (the rows only when the codec has several streams).
    pub(super) fn new(block: &mut StagingBuilder, n: usize, k: usize, several: bool) -> RingInputs {
        let (n, k) = (n as i64, k as i64);
        RingInputs {
            slots: block.tensor(ggml::I32, &[n, k], "slots"),
            pairs: block.tensor(ggml::I32, &[n / 2, 1, k], "pairs"),
            pos: block.tensor(ggml::I32, &[n * k], "pos"),
            mask: block.tensor(ggml::F32, &[SLOTS as i64, n, 1, k], "mask"),
            rows: several.then(|| {
                (
                    block.tensor(ggml::I32, &[n * k], "key_rows"),
                    block.tensor(ggml::I32, &[n / 2 * LATENT as i64 * k], "value_rows"),
                )
            }),
        }
    }
}

/// Declares both transformers' weights.
pub(super) fn declare_weights(wb: &mut WeightsBuilder) -> Result<()> {
    let i = |v: usize| v as i64;
    for side in [ENCODER, DECODER] {
        for l in 0..LAYERS {
            let p = |s: &str| format!("{side}.{l}.{s}");
            wb.tensor(&p("attn_qkv.weight"), &[i(LATENT), i(3 * LATENT)])?;
            wb.tensor(&p("attn_out.weight"), &[i(LATENT), i(LATENT)])?;
            for n in [
                "norm1.weight",
                "norm1.bias",
                "norm2.weight",
                "norm2.bias",
                "scale1",
                "scale2",
            ] {
                wb.tensor(&p(n), &[i(LATENT)])?;
            }
            wb.tensor(&p("ffn_up.weight"), &[i(LATENT), i(FFN)])?;
            wb.tensor(&p("ffn_down.weight"), &[i(FFN), i(LATENT)])?;
        }
    }
    Ok(())
}

/// Both transformers' KV caches: keys by slot ([512, SLOTS]); values transposed
/// ([SLOTS, 512]) so that attention weights multiply them without a copy.
pub(super) fn state_layout(decl: &mut Vec<(String, Vec<i64>)>) {
    for side in [ENCODER, DECODER] {
        for l in 0..LAYERS {
            decl.push((format!("{side}.{l}.k"), vec![LATENT as i64, SLOTS as i64]));
            decl.push((format!("{side}.{l}.v"), vec![SLOTS as i64, LATENT as i64]));
        }
    }
}

/// The graph that rotates one transformer's cached keys by -REBASE positions (RoPE
/// rotations compose: a key rotated for position p, rotated by -REBASE, is the key for
/// p - REBASE), as llama.cpp shifts its KV cache: the keys of one stream, those of the others
/// rotated by 0 (exactly themselves: cos 0 = 1, sin 0 = 0).
pub(super) struct Shift {
    graph: Graph,
    pos: T,
    values: Vec<i32>,
    /// The stream whose keys the positions rotate now.
    rotates: Option<usize>,
}

impl Shift {
    pub(super) fn new(state: &State, backend: &Backend, side: &str) -> Result<Shift> {
        let streams = state.slices;
        let mut graph = Graph::new(8 * LAYERS + 8);
        let g = &graph.ctx;
        let cells = (SLOTS * streams) as i64;
        let pos = g.new_tensor(ggml::I32, &[cells]).set_input().name("shift");
        let mut writes = vec![];
        for l in 0..LAYERS {
            let k = state.get(&format!("{side}.{l}.k"));
            let k3 = g.reshape(k, &[HEAD_DIM as i64, HEADS as i64, cells]);
            let r = g.rope(k3, pos, HEAD_DIM as i32, ggml::ROPE_NORMAL, ROPE_MAX_PERIOD);
            writes.push(g.cpy(r, k3));
        }
        for w in writes {
            graph.expand(w);
        }
        graph.allocate(backend)?;
        graph.check_supported(backend, "Mimi key rotation graph")?;
        Ok(Shift {
            graph,
            pos,
            values: vec![0; SLOTS * streams],
            rotates: None,
        })
    }

    /// Rotates stream `stream`'s cached keys by -REBASE positions.
    pub(super) fn rotate(&mut self, backend: &Backend, stream: usize) -> Result<()> {
        if self.rotates != Some(stream) {
            self.values.fill(0);
            self.values[stream * SLOTS..(stream + 1) * SLOTS].fill(-(REBASE as i32));
            self.pos.write(&self.values);
            self.rotates = Some(stream);
        }
        self.graph.compute(backend)
    }
}

impl Builder<'_> {
    /// 8 pre-norm layers with LayerScale over `x` ([512, n, k], channel-fastest: n steps of
    /// each of the batch's k streams), each stream attending to its own ring KV cache.
    pub(super) fn transformer(&mut self, x: T, side: &str, ring: &RingInputs) -> T {
        let RingInputs {
            slots,
            pairs,
            pos,
            mask,
            rows,
        } = *ring;
        let g = self.g;
        let (n, k) = (x.ne()[1], self.batch());
        let nt = n * k;
        let lat = LATENT as i64;
        let (d, h, c) = (HEAD_DIM as i64, HEADS as i64, SLOTS as i64);
        let streams = self.s.slices as i64;
        let mut x = g.reshape(x, &[lat, nt]);
        for l in 0..LAYERS {
            let w = |s: &str| self.w.get(&format!("{side}.{l}.{s}"));
            let y = g.add(
                g.mul(g.norm(x, NORM_EPS), w("norm1.weight")),
                w("norm1.bias"),
            );
            let qkv = g.mul_mat(w("attn_qkv.weight"), y);
            let part = |i: usize| {
                let v = g.view(
                    qkv,
                    &[d, h, nt],
                    &[(HEAD_DIM * 4), qkv.nb()[1]],
                    i * LATENT * 4,
                );
                g.cont(v)
            };
            let q = g.rope(
                part(0),
                pos,
                HEAD_DIM as i32,
                ggml::ROPE_NORMAL,
                ROPE_MAX_PERIOD,
            );
            let kr = g.rope(
                part(1),
                pos,
                HEAD_DIM as i32,
                ggml::ROPE_NORMAL,
                ROPE_MAX_PERIOD,
            );
            let v = part(2);
            let (kname, vname) = (format!("{side}.{l}.k"), format!("{side}.{l}.v"));
            // Values go in by slot pairs: a frame writes 2 steps, at an even slot.
            let vt = g.reshape(
                g.cont(g.transpose(g.reshape(v, &[lat, n, k]))),
                &[2, n / 2, lat, k],
            );
            // The caches attended to: the state itself (one stream), or the batch's slices
            // gathered, the new keys and values also written to the state's own rows.
            let (kold, vold) = (self.read(&kname), self.read(&vname));
            let kc = g.set_rows(kold, g.reshape(kr, &[lat, n, k]), slots);
            let vc = g.set_rows(g.reshape(vold, &[2, c / 2, lat, k]), vt, pairs);
            if let Some((key_rows, value_rows)) = rows {
                let (ks, vs) = (self.s.get(&kname), self.s.get(&vname));
                self.writes.push(g.set_rows(
                    g.reshape(ks, &[lat, c * streams]),
                    g.reshape(kr, &[lat, nt]),
                    key_rows,
                ));
                self.writes.push(g.set_rows(
                    g.reshape(vs, &[2, c / 2 * lat * streams]),
                    g.reshape(vt, &[2, n / 2 * lat * k]),
                    value_rows,
                ));
            }
            let kk = g.permute(
                g.view(
                    kc,
                    &[d, h, c, k],
                    &[HEAD_DIM * 4, LATENT * 4, kc.nb()[2]],
                    0,
                ),
                [0, 2, 1, 3],
            );
            // Contiguous queries let the scores take ggml's tiled matmul.
            let qq = g.cont(g.permute(g.reshape(q, &[d, h, n, k]), [0, 2, 1, 3]));
            let kq = g.soft_max_ext(
                g.mul_mat(kk, qq),
                Some(mask),
                1.0 / (HEAD_DIM as f32).sqrt(),
            );
            let kqv = g.mul_mat(g.reshape(vc, &[c, d, h, k]), kq);
            let o = g.reshape(g.cont(g.permute(kqv, [0, 2, 1, 3])), &[lat, nt]);
            let attn = g.mul_mat(w("attn_out.weight"), o);
            x = g.add(x, g.mul(attn, w("scale1")));
            let y = g.add(
                g.mul(g.norm(x, NORM_EPS), w("norm2.weight")),
                w("norm2.bias"),
            );
            let f = g.mul_mat(
                w("ffn_down.weight"),
                g.gelu_erf(g.mul_mat(w("ffn_up.weight"), y)),
            );
            x = g.add(x, g.mul(f, w("scale2")));
        }
        g.reshape(x, &[lat, n, k])
    }
}
