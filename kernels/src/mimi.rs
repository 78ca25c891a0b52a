//! The Mimi codec on ggml, streaming: 24 kHz mono audio ⇄ 8 codebooks at 12.5 Hz, one or
//! more 80 ms frames (1920 samples) per call.
//!
//! Every streaming state lives in persistent tensors (left context of each causal conv, the
//! overlap tail of each transposed conv, the transformers' ring KV caches); each graph reads
//! the old state and writes the new one in the same compute. A graph is built once per chunk
//! size (frames per call) and reused with its allocator, so the per-frame path allocates
//! nothing after warm-up.
//!
//! Layout: every signal is channel-fastest `[C, T]`. A stride-s convolution with K = n·s taps
//! is n matmuls over the signal viewed as blocks of s samples; a transposed convolution
//! (K = 2s) is two matmuls, the second delayed by one span. Weights are re-laid-out once at
//! load for this and are always the matmul's first operand. (ggml_conv_1d would round f32
//! data through f16, and ggml's conv_transpose_1d re-arranges its whole kernel on every call.)

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Result, ensure};
use flm_conversion::model_files::{MIMI_ARCH, mimi_keys};
use flm_conversion::plan::mimi_arch::*;

use crate::ggml::{self, Backend, Buffer, Ctx, Device, Graph, T};
use crate::weights::{Weights, WeightsBuilder};

/// Samples per code frame (80 ms at 24 kHz).
pub const FRAME: usize = FRAME_SIZE as usize;
/// Transformer steps per code frame (the SEANet latent runs at 25 Hz).
const STEPS_PER_FRAME: usize = 2;
const HEAD_DIM: usize = LATENT / HEADS;
const MAX_NODES: usize = 4096;
/// Most frames per call: every step of a call must fit in the ring KV cache.
pub const MAX_FRAMES_PER_CALL: usize = CONTEXT / STEPS_PER_FRAME;
/// Slots of the KV cache tensors: the ring of CONTEXT (250) rounded up to a multiple of 16, so
/// that attention scores run on ggml's tiled matmul; the extra slots are never written and
/// always masked out (zero weight on zero values).
const SLOTS: usize = CONTEXT.div_ceil(16) * 16;
/// RoPE positions are re-based by this many steps (164 s of audio) whenever the newest
/// passes twice that: the positions the graphs see stay below about 8 500, where f32 keeps
/// the rotation angles to 1e-3 rad, however long the stream runs (a day's steps would leave
/// them with no precision at all, and 2^24 steps would not even be exact in f32).
const REBASE: i64 = 1 << 12;

/// A causal conv of the SEANet: weight name prefix, kernel, stride, in and out channels.
#[derive(Clone, Copy)]
struct ConvSpec {
    k: usize,
    s: usize,
    ic: usize,
    oc: usize,
}

/// Persistent streaming state, one tensor per stateful layer.
struct State {
    tensors: HashMap<String, T>,
    buffer: Buffer,
    _ctx: Ctx,
}

impl State {
    fn get(&self, name: &str) -> T {
        self.tensors[name]
    }
}

/// Host-side bookkeeping of one transformer's ring KV cache (as Kyutai's `RingKVCache`).
struct Ring {
    /// Position held by each slot, -1 when empty.
    slot_pos: Vec<i64>,
    /// Positions written so far.
    end: i64,
    /// Subtracted from every position the graphs see (RoPE); a multiple of REBASE. The keys
    /// in the cache were rotated for positions relative to it.
    base: i64,
    // Per-call input values, sized for the largest call seen.
    slots: Vec<i32>,
    pairs: Vec<i32>,
    pos: Vec<i32>,
    mask: Vec<f32>,
}

impl Ring {
    fn new() -> Ring {
        Ring {
            slot_pos: vec![-1; CONTEXT],
            end: 0,
            base: 0,
            slots: vec![],
            pairs: vec![],
            pos: vec![],
            mask: vec![],
        }
    }

    /// A ring whose first position is `end` (a stream that has run that long), its base
    /// as low as the re-basing would have left it.
    fn starting_at(end: i64) -> Ring {
        Ring {
            end,
            base: (end / REBASE - 1).max(0) * REBASE,
            ..Ring::new()
        }
    }

    /// Whether the next `n` positions would take the graphs' positions past 2·REBASE: then
    /// the cached keys are rotated back by REBASE (`Mimi::shift`) and the base moves up.
    fn needs_rebase(&self, n: usize) -> bool {
        self.end + n as i64 - self.base > 2 * REBASE
    }

    /// Claims slots for `n` new positions and writes the graph inputs: slot indices, slot
    /// pairs, positions, and the attention mask ([SLOTS, n]: 0 where key slot j is visible
    /// to query i, else -inf).
    fn advance(&mut self, n: usize, inputs: &RingInputs) {
        if self.slots.len() < n {
            self.slots.resize(n, 0);
            self.pairs.resize(n / 2, 0);
            self.pos.resize(n, 0);
            self.mask.resize(n * SLOTS, f32::NEG_INFINITY);
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
        inputs.slots.write(&self.slots[..n]);
        inputs.pairs.write(&self.pairs[..n / 2]);
        inputs.pos.write(&self.pos[..n]);
        inputs.mask.write(&self.mask[..n * SLOTS]);
    }
}

/// Graph inputs and outputs of one direction for one chunk size.
struct Step {
    graph: Graph,
    input: T,
    outputs: Vec<T>,
    ring: RingInputs,
    first: Option<T>,
}

/// Per-call inputs of a transformer graph: the ring slots written (keys by slot, values by
/// slot pair), the positions (RoPE), and the attention mask.
#[derive(Clone, Copy)]
struct RingInputs {
    slots: T,
    pairs: T,
    pos: T,
    mask: T,
}

impl RingInputs {
    fn new(g: &Ctx, n: usize) -> RingInputs {
        let n = n as i64;
        RingInputs {
            slots: g.new_tensor(ggml::I32, &[n]).set_input().name("slots"),
            pairs: g.new_tensor(ggml::I32, &[n / 2]).set_input().name("pairs"),
            pos: g.new_tensor(ggml::I32, &[n]).set_input().name("pos"),
            mask: g
                .new_tensor(ggml::F32, &[SLOTS as i64, n])
                .set_input()
                .name("mask"),
        }
    }
}

pub struct Mimi {
    backend: Backend,
    weights: Weights,
    state: State,
    encoders: HashMap<usize, Step>,
    decoders: HashMap<usize, Step>,
    enc_ring: Ring,
    dec_ring: Ring,
    enc_first: bool,
    /// Per transformer (encoder, decoder): rotates every cached key back by REBASE steps.
    shifts: [Graph; 2],
}

fn enc_convs() -> Vec<(String, ConvSpec)> {
    let mut v = vec![(
        "enc.0".to_string(),
        ConvSpec {
            k: KERNEL,
            s: 1,
            ic: CHANNELS,
            oc: N_FILTERS,
        },
    )];
    let mut dim = N_FILTERS;
    for (i, &r) in RATIOS.iter().rev().enumerate() {
        let n = ENC_RES[i];
        v.push((
            format!("enc.{n}.b1"),
            ConvSpec {
                k: RESIDUAL_KERNEL,
                s: 1,
                ic: dim,
                oc: dim / COMPRESS,
            },
        ));
        v.push((
            format!("enc.{n}.b3"),
            ConvSpec {
                k: 1,
                s: 1,
                ic: dim / COMPRESS,
                oc: dim,
            },
        ));
        v.push((
            format!("enc.{}", n + 2),
            ConvSpec {
                k: 2 * r,
                s: r,
                ic: dim,
                oc: 2 * dim,
            },
        ));
        dim *= 2;
    }
    v.push((
        "enc.14".into(),
        ConvSpec {
            k: LAST_KERNEL,
            s: 1,
            ic: dim,
            oc: LATENT,
        },
    ));
    v.push((
        "downsample".into(),
        ConvSpec {
            k: 4,
            s: 2,
            ic: LATENT,
            oc: LATENT,
        },
    ));
    v
}

/// Decoder convs; transposed ones are those at `DEC_RES - 1`.
fn dec_convs() -> Vec<(String, ConvSpec, bool)> {
    let mut dim = N_FILTERS << RATIOS.len();
    let mut v = vec![(
        "dec.0".to_string(),
        ConvSpec {
            k: KERNEL,
            s: 1,
            ic: LATENT,
            oc: dim,
        },
        false,
    )];
    for (i, &r) in RATIOS.iter().enumerate() {
        let n = DEC_RES[i] - 1;
        v.push((
            format!("dec.{n}"),
            ConvSpec {
                k: 2 * r,
                s: r,
                ic: dim,
                oc: dim / 2,
            },
            true,
        ));
        dim /= 2;
        v.push((
            format!("dec.{}.b1", n + 1),
            ConvSpec {
                k: RESIDUAL_KERNEL,
                s: 1,
                ic: dim,
                oc: dim / COMPRESS,
            },
            false,
        ));
        v.push((
            format!("dec.{}.b3", n + 1),
            ConvSpec {
                k: 1,
                s: 1,
                ic: dim / COMPRESS,
                oc: dim,
            },
            false,
        ));
    }
    v.push((
        "dec.14".into(),
        ConvSpec {
            k: LAST_KERNEL,
            s: 1,
            ic: dim,
            oc: CHANNELS,
        },
        false,
    ));
    v
}

fn check_chunk(frames: usize) -> Result<()> {
    ensure!(
        (1..=MAX_FRAMES_PER_CALL).contains(&frames),
        "Mimi: {frames} frames per call (1..={MAX_FRAMES_PER_CALL})"
    );
    Ok(())
}

/// The first conv has one input channel: it is unfolded by `im2col` instead of split into
/// taps, with a zero tap in front so that the unfolded rows (8) suit the SIMD matmul.
const FIRST_CONV_TAPS: usize = KERNEL + 1;

/// Left context (samples) a causal conv keeps between calls.
fn conv_context(name: &str, c: ConvSpec) -> usize {
    if name == "enc.0" {
        FIRST_CONV_TAPS - c.s
    } else {
        c.k - c.s
    }
}

/// Re-lays a conv weight (ggml [K, IC, OC]) out as K/s matrices of [IC·s, OC]: matrix j
/// holds taps j·s .. j·s+s−1, tap-major, so that a stride-s conv over a channel-fastest
/// signal viewed as [IC·s, T/s] is a sum of K/s matmuls on shifted contiguous views.
fn conv_taps(bytes: &[u8], es: usize, c: ConvSpec) -> Vec<u8> {
    let g = c.s;
    let mut out = vec![0u8; bytes.len()];
    for k in 0..c.k {
        let (j, p) = (k / g, k % g);
        for ic in 0..c.ic {
            for oc in 0..c.oc {
                let src = (oc * c.ic * c.k + ic * c.k + k) * es;
                let dst = (j * c.ic * g * c.oc + oc * c.ic * g + p * c.ic + ic) * es;
                out[dst..dst + es].copy_from_slice(&bytes[src..src + es]);
            }
        }
    }
    out
}

/// Re-lays a transposed-conv weight (ggml [K, OC, IC], K = 2s) out as two matrices of
/// [IC, s·OC]: the first gives output samples t·s + j of input t, the second those of the
/// next input's span (t+1)·s + j.
fn conv_transpose_halves(bytes: &[u8], es: usize, c: ConvSpec) -> Vec<u8> {
    let s = c.s;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..2 {
        for j in 0..s {
            for oc in 0..c.oc {
                for ic in 0..c.ic {
                    let src = (ic * c.oc * c.k + oc * c.k + h * s + j) * es;
                    let dst = (h * c.ic * s * c.oc + (j * c.oc + oc) * c.ic + ic) * es;
                    out[dst..dst + es].copy_from_slice(&bytes[src..src + es]);
                }
            }
        }
    }
    out
}

impl Mimi {
    /// Loads `mimi.gguf` onto `device` (with `threads` threads on the CPU).
    pub fn load(path: &Path, device: Device, threads: usize) -> Result<Mimi> {
        let backend = Backend::new(device, threads)?;
        let mut wb = WeightsBuilder::open(path)?;
        let label = path.display().to_string();
        let g = wb.gguf();
        let arch = g
            .get_str("general.architecture")
            .map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
        ensure!(
            arch == MIMI_ARCH,
            "{label}: architecture `{arch}`, expected `{MIMI_ARCH}`"
        );
        for (key, want) in [
            (mimi_keys::SAMPLE_RATE, SAMPLE_RATE as u64),
            (mimi_keys::FRAME_SIZE, FRAME_SIZE as u64),
            (mimi_keys::N_CODEBOOKS, N_CODEBOOKS as u64),
            (mimi_keys::CODEBOOK_SIZE, CODEBOOK_SIZE as u64),
            (mimi_keys::LATENT_DIM, LATENT as u64),
            (mimi_keys::CONTEXT, CONTEXT as u64),
        ] {
            let have = g
                .get_u64(key)
                .map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
            ensure!(
                have == want,
                "{label}: `{key}` is {have}, this build supports {want}"
            );
        }
        let i = |v: usize| v as i64;
        let decl_conv =
            |wb: &mut WeightsBuilder, name: &str, c: ConvSpec, transposed: bool| -> Result<()> {
                let wname = format!("{name}.weight");
                let t = wb
                    .gguf()
                    .tensor(&wname)
                    .ok_or_else(|| anyhow::anyhow!("{label}: tensor `{wname}` is missing"))?;
                let have: Vec<i64> = t.ne.iter().map(|&d| d as i64).collect();
                let want = if transposed {
                    [i(c.k), i(c.oc), i(c.ic)]
                } else {
                    [i(c.k), i(c.ic), i(c.oc)]
                };
                ensure!(
                    have == want,
                    "{label}: tensor `{wname}` has shape {have:?}, expected {want:?}"
                );
                let (bytes, ty) = wb.bytes(&wname)?;
                ensure!(
                    !ty.is_quantized(),
                    "{label}: `{wname}` is {ty}, expected f32 or f16"
                );
                let es = ty.block_bytes() as usize;
                if transposed {
                    let out = conv_transpose_halves(bytes, es, c);
                    wb.host(
                        &format!("{name}.halves"),
                        ty.id(),
                        &[i(c.ic), i(c.s * c.oc), 2],
                        out,
                    );
                } else if name == "enc.0" {
                    // One input channel: a zero tap in front, unfolded by im2col.
                    let mut out = vec![0u8; es * FIRST_CONV_TAPS * c.oc];
                    for oc in 0..c.oc {
                        let dst = (oc * FIRST_CONV_TAPS + 1) * es;
                        out[dst..dst + c.k * es]
                            .copy_from_slice(&bytes[oc * c.k * es..(oc + 1) * c.k * es]);
                    }
                    wb.host(
                        &format!("{name}.taps"),
                        ty.id(),
                        &[i(FIRST_CONV_TAPS), 1, i(c.oc)],
                        out,
                    );
                } else {
                    let out = conv_taps(bytes, es, c);
                    wb.host(
                        &format!("{name}.taps"),
                        ty.id(),
                        &[i(c.ic * c.s), i(c.oc), i(c.k / c.s)],
                        out,
                    );
                }
                if name != "downsample" {
                    wb.tensor(&format!("{name}.bias"), &[i(c.oc)])?;
                }
                Ok(())
            };
        for (name, c) in enc_convs() {
            decl_conv(&mut wb, &name, c, false)?;
        }
        for (name, c, transposed) in dec_convs() {
            decl_conv(&mut wb, &name, c, transposed)?;
        }
        // Depthwise up-sample [4, 1, C] → [C, 2, 2]: taps 0,1 then taps 2,3, channel-fastest.
        let up = wb.f32s("upsample.weight")?;
        ensure!(
            up.len() == 4 * LATENT,
            "{label}: tensor `upsample.weight` has {} values",
            up.len()
        );
        let mut halves = vec![0f32; 4 * LATENT];
        for c in 0..LATENT {
            for k in 0..4 {
                halves[k * LATENT + c] = up[c * 4 + k];
            }
        }
        let halves: Vec<u8> = halves.iter().flat_map(|x| x.to_le_bytes()).collect();
        wb.host("upsample.halves", ggml::F32, &[i(LATENT), 2, 2], halves);
        for side in ["enc_tr", "dec_tr"] {
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
        for g in ["first", "rest"] {
            wb.tensor(
                &format!("rvq.{g}.in_proj.weight"),
                &[1, i(LATENT), i(CODEBOOK_DIM)],
            )?;
            wb.tensor(
                &format!("rvq.{g}.out_proj.weight"),
                &[1, i(CODEBOOK_DIM), i(LATENT)],
            )?;
        }
        wb.tensor(
            "rvq.codebook",
            &[i(CODEBOOK_DIM), i(CODEBOOK_SIZE), i(N_CODEBOOKS)],
        )?;
        // Squared norms of the codebook vectors, for nearest-neighbour search by dot products.
        let book = wb.f32s("rvq.codebook")?;
        let norms: Vec<u8> = book
            .chunks_exact(CODEBOOK_DIM)
            .flat_map(|c| c.iter().map(|x| x * x).sum::<f32>().to_le_bytes())
            .collect();
        wb.host(
            "rvq.codebook_norm",
            ggml::F32,
            &[i(CODEBOOK_SIZE), i(N_CODEBOOKS)],
            norms,
        );
        let weights = wb.build(&backend, false)?;
        let state = Self::new_state(&backend)?;
        let shifts = [
            Self::build_shift(&state, &backend, "enc_tr")?,
            Self::build_shift(&state, &backend, "dec_tr")?,
        ];
        Ok(Mimi {
            backend,
            weights,
            state,
            encoders: HashMap::new(),
            decoders: HashMap::new(),
            enc_ring: Ring::new(),
            dec_ring: Ring::new(),
            enc_first: true,
            shifts,
        })
    }

    /// The graph that rotates one transformer's cached keys by -REBASE positions (RoPE
    /// rotations compose: a key rotated for position p, rotated by -REBASE, is the key for
    /// p - REBASE), as llama.cpp shifts its KV cache.
    fn build_shift(state: &State, backend: &Backend, side: &str) -> Result<Graph> {
        let mut graph = Graph::new(8 * LAYERS + 8);
        let g = &graph.ctx;
        let pos = g
            .new_tensor(ggml::I32, &[SLOTS as i64])
            .set_input()
            .name("shift");
        let mut writes = vec![];
        for l in 0..LAYERS {
            let k = state.get(&format!("{side}.{l}.k"));
            let k3 = g.reshape(k, &[HEAD_DIM as i64, HEADS as i64, SLOTS as i64]);
            let r = g.rope(k3, pos, HEAD_DIM as i32, ggml::ROPE_NORMAL, ROPE_MAX_PERIOD);
            writes.push(g.cpy(r, k3));
        }
        for w in writes {
            graph.expand(w);
        }
        graph.allocate(backend)?;
        pos.write(&[-(REBASE as i32); SLOTS]);
        Ok(graph)
    }

    /// Moves a transformer's positions down by REBASE when its ring needs it.
    fn rebase(&mut self, encoder: bool, n: usize) -> Result<()> {
        let (ring, shift) = if encoder {
            (&mut self.enc_ring, &mut self.shifts[0])
        } else {
            (&mut self.dec_ring, &mut self.shifts[1])
        };
        while ring.needs_rebase(n) {
            shift.compute(&self.backend)?;
            ring.base += REBASE;
        }
        Ok(())
    }

    /// Continues as a stream that has already run `frames` frames (a test hook for streams
    /// that run for days): both rings start there, empty.
    pub fn start_at(&mut self, frames: u64) {
        self.reset();
        let steps = (frames as i64).saturating_mul(STEPS_PER_FRAME as i64);
        self.enc_ring = Ring::starting_at(steps);
        self.dec_ring = Ring::starting_at(steps);
    }

    fn new_state(backend: &Backend) -> Result<State> {
        let mut decl: Vec<(String, Vec<i64>)> = vec![];
        for (name, c) in enc_convs() {
            let ctx_len = conv_context(&name, c);
            if ctx_len > 0 {
                decl.push((name, vec![c.ic as i64, ctx_len as i64]));
            }
        }
        for (name, c, transposed) in dec_convs() {
            if transposed {
                decl.push((name, vec![c.oc as i64, (c.k - c.s) as i64]));
            } else if c.k > c.s {
                decl.push((
                    name.clone(),
                    vec![c.ic as i64, conv_context(&name, c) as i64],
                ));
            }
        }
        decl.push(("upsample".into(), vec![LATENT as i64, 2]));
        for side in ["enc_tr", "dec_tr"] {
            for l in 0..LAYERS {
                // Keys by slot ([512, CAP]); values transposed ([CAP, 512]) so that attention
                // weights multiply them without a copy.
                decl.push((format!("{side}.{l}.k"), vec![LATENT as i64, SLOTS as i64]));
                decl.push((format!("{side}.{l}.v"), vec![SLOTS as i64, LATENT as i64]));
            }
        }
        let ctx = Ctx::new(decl.len(), 0);
        let tensors: HashMap<String, T> = decl
            .iter()
            .map(|(n, ne)| (n.clone(), ctx.new_tensor(ggml::F32, ne)))
            .collect();
        let buffer = Buffer::alloc(&ctx, backend)?;
        Ok(State {
            tensors,
            buffer,
            _ctx: ctx,
        })
    }

    /// Starts a new stream: clears every state (both directions).
    pub fn reset(&mut self) {
        self.state.buffer.clear();
        self.enc_ring = Ring::new();
        self.dec_ring = Ring::new();
        self.enc_first = true;
    }

    /// ggml's name of the backend the graphs run on.
    pub fn backend_name(&self) -> String {
        self.backend.name()
    }

    /// Bytes of weights on the backend.
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    /// Encodes `pcm` (a whole number of 1920-sample frames) into `codes`, frame-major
    /// (`codes[f * 8 + q]`).
    pub fn encode(&mut self, pcm: &[f32], codes: &mut [i32]) -> Result<()> {
        ensure!(
            !pcm.is_empty() && pcm.len().is_multiple_of(FRAME),
            "Mimi encode: {} samples is not a whole number of frames",
            pcm.len()
        );
        let frames = pcm.len() / FRAME;
        ensure!(
            codes.len() == frames * N_CODEBOOKS,
            "Mimi encode: codes buffer of {} for {frames} frames",
            codes.len()
        );
        self.prepare_encoder(frames)?;
        let n = frames * STEPS_PER_FRAME;
        self.rebase(true, n)?;
        let step = self.encoders.get_mut(&frames).unwrap();
        self.enc_ring.advance(n, &step.ring);
        step.input.write(pcm);
        step.first
            .unwrap()
            .write(&[if self.enc_first { 1.0f32 } else { 0.0 }]);
        step.graph.compute(&self.backend)?;
        self.enc_first = false;
        let mut q_codes = [0i32; MAX_FRAMES_PER_CALL];
        for (q, out) in step.outputs.iter().enumerate() {
            out.read(&mut q_codes[..frames]);
            for f in 0..frames {
                codes[f * N_CODEBOOKS + q] = q_codes[f];
            }
        }
        Ok(())
    }

    /// Decodes `codes` (frame-major, 8 per frame, each < 2048) into `pcm` (1920 per frame).
    pub fn decode(&mut self, codes: &[i32], pcm: &mut [f32]) -> Result<()> {
        ensure!(
            !codes.is_empty() && codes.len().is_multiple_of(N_CODEBOOKS),
            "Mimi decode: {} codes is not a whole number of frames",
            codes.len()
        );
        let frames = codes.len() / N_CODEBOOKS;
        ensure!(
            pcm.len() == frames * FRAME,
            "Mimi decode: pcm buffer of {} for {frames} frames",
            pcm.len()
        );

        if let Some(c) = codes
            .iter()
            .find(|&&c| c < 0 || c as usize >= CODEBOOK_SIZE)
        {
            anyhow::bail!("Mimi decode: code {c} is outside 0..{CODEBOOK_SIZE}");
        }
        self.prepare_decoder(frames)?;
        let n = frames * STEPS_PER_FRAME;
        self.rebase(false, n)?;
        let step = self.decoders.get_mut(&frames).unwrap();
        self.dec_ring.advance(n, &step.ring);
        // Codebook-major on the graph side: one contiguous row of frames per codebook.
        let mut by_q = [0i32; N_CODEBOOKS * MAX_FRAMES_PER_CALL];
        for f in 0..frames {
            for q in 0..N_CODEBOOKS {
                by_q[q * frames + f] = codes[f * N_CODEBOOKS + q];
            }
        }
        step.input.write(&by_q[..frames * N_CODEBOOKS]);
        step.graph.compute(&self.backend)?;
        step.outputs[0].read(pcm);
        Ok(())
    }

    /// Builds the graphs for `frames` frames per call ahead of time (warm-up).
    pub fn prepare(&mut self, frames: usize) -> Result<()> {
        self.prepare_encoder(frames)?;
        self.prepare_decoder(frames)
    }

    fn prepare_encoder(&mut self, frames: usize) -> Result<()> {
        check_chunk(frames)?;
        if !self.encoders.contains_key(&frames) {
            let step = self.build_encoder(frames)?;
            self.encoders.insert(frames, step);
        }
        Ok(())
    }

    fn prepare_decoder(&mut self, frames: usize) -> Result<()> {
        check_chunk(frames)?;
        if !self.decoders.contains_key(&frames) {
            let step = self.build_decoder(frames)?;
            self.decoders.insert(frames, step);
        }
        Ok(())
    }

    /// Per-node timings of the one-frame encoder and decoder graphs (state is not advanced
    /// consistently while profiling: reset before real use).
    pub fn profile(&mut self, reps: usize) -> Result<Vec<(String, [i64; 4], f64)>> {
        // One real call of each sets every graph input.
        let mut codes = [0i32; N_CODEBOOKS];
        self.encode(&[0.0; FRAME], &mut codes)?;
        self.decode(&codes, &mut [0.0; FRAME])?;
        let mut out = self
            .encoders
            .get_mut(&1)
            .unwrap()
            .graph
            .profile(&self.backend, reps)?;
        out.extend(
            self.decoders
                .get_mut(&1)
                .unwrap()
                .graph
                .profile(&self.backend, reps)?,
        );
        Ok(out)
    }

    /// The op type of every node of the one-frame encoder and decoder graphs.
    pub fn op_names(&mut self) -> Result<Vec<String>> {
        self.prepare_encoder(1)?;
        self.prepare_decoder(1)?;
        let mut out = self.encoders[&1].graph.op_names();
        out.extend(self.decoders[&1].graph.op_names());
        Ok(out)
    }

    fn build_encoder(&self, frames: usize) -> Result<Step> {
        let mut graph = Graph::new(MAX_NODES);
        let n = frames * STEPS_PER_FRAME;
        let mut b = Builder {
            g: &graph.ctx,
            w: &self.weights,
            s: &self.state,
            writes: vec![],
        };
        let input =
            b.g.new_tensor(ggml::F32, &[1, (frames * FRAME) as i64])
                .set_input()
                .name("pcm");
        let ring = RingInputs::new(b.g, n);
        let first = b.g.new_tensor(ggml::F32, &[1, 1]).set_input().name("first");
        let convs = enc_convs();
        let mut h = b.first_conv(input, "enc.0", convs[0].1);
        let mut dim = N_FILTERS;
        for (i, &r) in RATIOS.iter().rev().enumerate() {
            let n_ = ENC_RES[i];
            h = b.resblock(h, &format!("enc.{n_}"), dim);
            h = b.elu(h);
            h = b.conv(
                h,
                &format!("enc.{}", n_ + 2),
                ConvSpec {
                    k: 2 * r,
                    s: r,
                    ic: dim,
                    oc: 2 * dim,
                },
            );
            dim *= 2;
        }
        h = b.elu(h);
        h = b.conv(
            h,
            "enc.14",
            ConvSpec {
                k: LAST_KERNEL,
                s: 1,
                ic: dim,
                oc: LATENT,
            },
        );
        h = b.transformer(h, "enc_tr", &ring);
        let latent = b.downsample(h, first);
        let outputs = b.rvq_encode(latent);
        let writes = std::mem::take(&mut b.writes);
        self.finish(&mut graph, &outputs, writes)?;
        Ok(Step {
            graph,
            input,
            outputs,
            ring,
            first: Some(first),
        })
    }

    fn build_decoder(&self, frames: usize) -> Result<Step> {
        let mut graph = Graph::new(MAX_NODES);
        let n = frames * STEPS_PER_FRAME;
        let mut b = Builder {
            g: &graph.ctx,
            w: &self.weights,
            s: &self.state,
            writes: vec![],
        };
        let input =
            b.g.new_tensor(ggml::I32, &[(frames * N_CODEBOOKS) as i64])
                .set_input()
                .name("codes");
        let ring = RingInputs::new(b.g, n);
        let latent = b.rvq_decode(input, frames);
        let mut h = b.upsample(latent, frames);
        h = b.transformer(h, "dec_tr", &ring);
        let convs = dec_convs();
        h = b.conv(h, "dec.0", convs[0].1);
        let mut dim = N_FILTERS << RATIOS.len();
        for (i, &r) in RATIOS.iter().enumerate() {
            let n_ = DEC_RES[i] - 1;
            h = b.elu(h);
            h = b.conv_transpose(
                h,
                &format!("dec.{n_}"),
                ConvSpec {
                    k: 2 * r,
                    s: r,
                    ic: dim,
                    oc: dim / 2,
                },
            );
            dim /= 2;
            h = b.resblock(h, &format!("dec.{}", n_ + 1), dim);
        }
        h = b.elu(h);
        h = b.conv(
            h,
            "dec.14",
            ConvSpec {
                k: LAST_KERNEL,
                s: 1,
                ic: dim,
                oc: CHANNELS,
            },
        );
        let outputs = vec![h.set_output().name("pcm_out")];
        let writes = std::mem::take(&mut b.writes);
        self.finish(&mut graph, &outputs, writes)?;
        Ok(Step {
            graph,
            input,
            outputs,
            ring,
            first: None,
        })
    }

    /// Adds the outputs, then the state writes (after every read of the old state), and
    /// allocates the graph.
    fn finish(&self, graph: &mut Graph, outputs: &[T], writes: Vec<T>) -> Result<()> {
        for &o in outputs {
            graph.expand(o);
        }
        for w in writes {
            graph.expand(w);
        }
        graph.allocate(&self.backend)
    }
}

/// Builds Mimi graph pieces into one graph context. Signals are channel-fastest [C, T].
struct Builder<'a> {
    g: &'a Ctx,
    w: &'a Weights,
    s: &'a State,
    /// State updates, expanded after the outputs.
    writes: Vec<T>,
}

impl Builder<'_> {
    /// Prepends the left context `left` ([IC, ctx]) to `x` ([IC, L]) and queues the write of
    /// the last `ctx` samples into the state tensor `st`.
    fn with_context(&mut self, x: T, left: T, st: T) -> T {
        let g = self.g;
        let (ic, l, ctx) = (x.ne()[0], x.ne()[1], left.ne()[1]);
        let cat = g.concat(left, x, 1);
        let tail = g.view(cat, &[ic, ctx], &[cat.nb()[1]], (l * ic * 4) as usize);
        self.writes.push(g.cpy(tail, st));
        cat
    }

    /// Causal conv of `x` ([IC, L]) → [OC, L/s], with left context from the state or given.
    /// A stride-s conv with K = n·s taps is n matmuls over the signal viewed as [IC·s, ·]
    /// (each column a block of s samples), shifted by one block each.
    fn conv_left(&mut self, x: T, name: &str, c: ConvSpec, left: Option<(T, T)>) -> T {
        let g = self.g;
        let l = x.ne()[1] as usize;
        let xc = match left {
            Some((left, st)) => self.with_context(x, left, st),
            None => x,
        };
        let blocks = xc.ne()[1] as usize / c.s;
        let xr = g.reshape(xc, &[(c.ic * c.s) as i64, blocks as i64]);
        let taps = self.w.get(&format!("{name}.taps"));
        let row = c.ic * c.s;
        let mut y: Option<T> = None;
        for j in 0..c.k / c.s {
            let wj = g.view(
                taps,
                &[row as i64, c.oc as i64],
                &[taps.nb()[1]],
                j * taps.nb()[2],
            );
            let xj = g.view(
                xr,
                &[row as i64, (l / c.s) as i64],
                &[xr.nb()[1]],
                j * xr.nb()[1],
            );
            let p = g.mul_mat(wj, xj);
            y = Some(match y {
                None => p,
                Some(acc) => g.add(acc, p),
            });
        }
        y.expect("at least one tap")
    }

    fn conv(&mut self, x: T, name: &str, c: ConvSpec) -> T {
        let left = (c.k > c.s).then(|| (self.s.get(name), self.s.get(name)));
        let y = self.conv_left(x, name, c, left);
        self.bias(y, name, c.oc)
    }

    fn bias(&self, y: T, name: &str, oc: usize) -> T {
        let b = self.w.get(&format!("{name}.bias"));
        self.g.add(y, self.g.reshape(b, &[oc as i64, 1]))
    }

    /// The one-channel input conv: unfolded by im2col (8 taps, the first zero).
    fn first_conv(&mut self, x: T, name: &str, c: ConvSpec) -> T {
        let g = self.g;
        let st = self.s.get(name);
        let xc = self.with_context(x, st, st);
        let taps = self.w.get(&format!("{name}.taps"));
        let signal = g.reshape(xc, &[xc.ne()[1], 1]);
        let cols = g.im2col_1d(taps, signal, 1, ggml::F32);
        let y = g.mul_mat(
            g.reshape(taps, &[FIRST_CONV_TAPS as i64, c.oc as i64]),
            cols,
        );
        self.bias(y, name, c.oc)
    }

    /// ELU as x − m + exp(m) − 1 with m = min(x, 0). ggml's CPU ELU calls `expm1f` per element,
    /// which costs more than these five passes with `expf` (the f32 codes stay equal to the
    /// reference's; near 0 the result differs from expm1 by an f32 step of 1).
    fn elu(&self, x: T) -> T {
        let g = self.g;
        let m = g.clamp(x, f32::NEG_INFINITY, 0.0);
        g.scale_bias(g.add(g.sub(x, m), g.exp(m)), 1.0, -1.0)
    }

    /// SEANet residual block: x + conv1(elu(conv3(elu(x)))).
    fn resblock(&mut self, x: T, name: &str, dim: usize) -> T {
        let h = self.elu(x);
        let h = self.conv(
            h,
            &format!("{name}.b1"),
            ConvSpec {
                k: RESIDUAL_KERNEL,
                s: 1,
                ic: dim,
                oc: dim / COMPRESS,
            },
        );
        let h = self.elu(h);
        let h = self.conv(
            h,
            &format!("{name}.b3"),
            ConvSpec {
                k: 1,
                s: 1,
                ic: dim / COMPRESS,
                oc: dim,
            },
        );
        self.g.add(x, h)
    }

    /// Streaming transposed conv (K = 2s) of `x` ([IC, L]) → [OC, L·s]. Input t contributes
    /// `a` to outputs t·s.. and `b` to the next span (t+1)·s..; the `b` of the last input is
    /// held back for the next call.
    fn conv_transpose(&mut self, x: T, name: &str, c: ConvSpec) -> T {
        let g = self.g;
        let l = x.ne()[1];
        let halves = self.w.get(&format!("{name}.halves"));
        let half = |h: usize| {
            let w = g.view(
                halves,
                &[c.ic as i64, (c.s * c.oc) as i64],
                &[halves.nb()[1]],
                h * halves.nb()[2],
            );
            g.reshape(g.mul_mat(w, x), &[c.oc as i64, c.s as i64 * l])
        };
        let (a, b) = (half(0), half(1));
        let y = self.overlap(a, b, name, c.s);
        self.bias(y, name, c.oc)
    }

    /// a + (b delayed by one span of `s` samples), with the held-back span as the first.
    fn overlap(&mut self, a: T, b: T, state: &str, s: usize) -> T {
        let g = self.g;
        let st = self.s.get(state);
        let (ch, len) = (b.ne()[0], b.ne()[1]);
        let span = s as i64;
        let shifted = if len == span {
            st
        } else {
            g.concat(st, g.view(b, &[ch, len - span], &[b.nb()[1]], 0), 1)
        };
        let tail = g.view(
            b,
            &[ch, span],
            &[b.nb()[1]],
            ((len - span) as usize) * b.nb()[1],
        );
        self.writes.push(g.cpy(tail, st));
        g.add(a, shifted)
    }

    /// Learned ×2 down-sample (k4 s2, no bias) of [512, 2F] → [512, F]: at the first call
    /// its left context is the first sample repeated (Kyutai's `pad_mode="replicate"`).
    fn downsample(&mut self, x: T, first: T) -> T {
        let g = self.g;
        let st = self.s.get("downsample");
        let x0 = g.view(x, &[LATENT as i64, 1], &[x.nb()[1]], 0);
        let init = g.repeat_4d(x0, [LATENT as i64, 2, 1, 1]);
        let left = g.add(st, g.mul(g.sub(init, st), first));
        self.conv_left(
            x,
            "downsample",
            ConvSpec {
                k: 4,
                s: 2,
                ic: LATENT,
                oc: LATENT,
            },
            Some((left, st)),
        )
    }

    /// Learned depthwise ×2 up-sample (transposed, k4 s2, one filter per channel) of
    /// [512, F] → [512, 2F].
    fn upsample(&mut self, x: T, frames: usize) -> T {
        let g = self.g;
        let (c, f) = (LATENT as i64, frames as i64);
        let halves = self.w.get("upsample.halves");
        let rep = g.repeat_4d(g.reshape(x, &[c, 1, f]), [c, 2, f, 1]);
        let half = |h: usize| {
            let w = g.view(halves, &[c, 2], &[halves.nb()[1]], h * halves.nb()[2]);
            g.reshape(g.mul(rep, g.reshape(w, &[c, 2, 1])), &[c, 2 * f])
        };
        let (a, b) = (half(0), half(1));
        self.overlap(a, b, "upsample", 2)
    }

    /// 8 pre-norm layers with LayerScale over `x` ([512, N], channel-fastest).
    fn transformer(&mut self, mut x: T, side: &str, ring: &RingInputs) -> T {
        let RingInputs {
            slots,
            pairs,
            pos,
            mask,
        } = *ring;
        let g = self.g;
        let n = x.ne()[1];
        let (d, h, c) = (HEAD_DIM as i64, HEADS as i64, SLOTS as i64);
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
                    &[d, h, n],
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
            let k = g.rope(
                part(1),
                pos,
                HEAD_DIM as i32,
                ggml::ROPE_NORMAL,
                ROPE_MAX_PERIOD,
            );
            let v = part(2);
            let kc = g.set_rows(
                self.s.get(&format!("{side}.{l}.k")),
                g.reshape(k, &[LATENT as i64, n]),
                slots,
            );
            // Values go in by slot pairs: a frame writes 2 steps, at an even slot.
            let vt = g.reshape(
                g.cont(g.transpose(g.reshape(v, &[LATENT as i64, n]))),
                &[2, n / 2, LATENT as i64],
            );
            let vcache = g.reshape(
                self.s.get(&format!("{side}.{l}.v")),
                &[2, c / 2, LATENT as i64],
            );
            let vc = g.set_rows(vcache, vt, pairs);
            let kk = g.permute(
                g.view(kc, &[d, h, c], &[HEAD_DIM * 4, LATENT * 4], 0),
                [0, 2, 1, 3],
            );
            // Contiguous queries let the scores take ggml's tiled matmul.
            let qq = g.cont(g.permute(q, [0, 2, 1, 3]));
            let kq = g.soft_max_ext(
                g.mul_mat(kk, qq),
                Some(mask),
                1.0 / (HEAD_DIM as f32).sqrt(),
            );
            let kqv = g.mul_mat(g.reshape(vc, &[c, d, h]), kq);
            let o = g.reshape(g.cont(g.permute(kqv, [0, 2, 1, 3])), &[LATENT as i64, n]);
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
        x
    }

    fn codebook(&self, q: usize) -> (T, T) {
        let g = self.g;
        let book = self.w.get("rvq.codebook");
        let norms = self.w.get("rvq.codebook_norm");
        let b = g.view(
            book,
            &[CODEBOOK_DIM as i64, CODEBOOK_SIZE as i64],
            &[CODEBOOK_DIM * 4],
            q * CODEBOOK_DIM * CODEBOOK_SIZE * 4,
        );
        let nrm = g.view(
            norms,
            &[CODEBOOK_SIZE as i64, 1],
            &[CODEBOOK_SIZE * 4],
            q * CODEBOOK_SIZE * 4,
        );
        (b, nrm)
    }

    fn project(&self, name: &str, x: T, ic: usize, oc: usize) -> T {
        let w = self.g.reshape(self.w.get(name), &[ic as i64, oc as i64]);
        self.g.mul_mat(w, x)
    }

    /// Split RVQ: codebook 0 quantizes the semantic projection, codebooks 1..7 the residuals
    /// of the acoustic projection of the same latent. Nearest neighbour by L2 distance, as
    /// argmax of 2·x·c − |c|². One I32 [F] output per codebook.
    fn rvq_encode(&mut self, latent: T) -> Vec<T> {
        let g = self.g;
        let mut outs = vec![];
        let nearest = |r: T, q: usize| {
            let (b, nrm) = self.codebook(q);
            let score = g.sub(g.scale(g.mul_mat(b, r), 2.0), nrm);
            let code = g.argmax(score);
            (code, b)
        };
        let z = self.project("rvq.first.in_proj.weight", latent, LATENT, CODEBOOK_DIM);
        let (code, _) = nearest(z, 0);
        outs.push(code.set_output());
        let mut r = self.project("rvq.rest.in_proj.weight", latent, LATENT, CODEBOOK_DIM);
        for q in 1..N_CODEBOOKS {
            let (code, b) = nearest(r, q);
            outs.push(code.set_output());
            if q + 1 < N_CODEBOOKS {
                r = g.sub(r, g.get_rows(b, code));
            }
        }
        outs
    }

    /// Sum of the selected codebook vectors of each group through its output projection.
    fn rvq_decode(&mut self, codes: T, frames: usize) -> T {
        let g = self.g;
        let code = |q: usize| g.view(codes, &[frames as i64], &[], q * frames * 4);
        let (b0, _) = self.codebook(0);
        let first = self.project(
            "rvq.first.out_proj.weight",
            g.get_rows(b0, code(0)),
            CODEBOOK_DIM,
            LATENT,
        );
        let mut sum = None;
        for q in 1..N_CODEBOOKS {
            let (b, _) = self.codebook(q);
            let e = g.get_rows(b, code(q));
            sum = Some(match sum {
                None => e,
                Some(s) => g.add(s, e),
            });
        }
        let rest = self.project(
            "rvq.rest.out_proj.weight",
            sum.unwrap(),
            CODEBOOK_DIM,
            LATENT,
        );
        g.add(first, rest)
    }
}
