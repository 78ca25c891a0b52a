//! The codec's two graphs (encode, decode) for one chunk size, and the layout of the state
//! they share: the whole codec composed from its parts.

use anyhow::Result;
use flm_conversion::plan::mimi_arch::*;

use super::resample::{self, STEPS_PER_FRAME};
use super::seanet;
use super::state::{Builder, State};
use super::transformer::{self, DECODER, ENCODER, Ring, RingInputs};
use crate::ggml::{self, Backend, Graph, T};
use crate::staging::{Staging, StagingBuilder};
use crate::weights::Weights;

/// Samples per code frame (80 ms at 24 kHz).
pub const FRAME: usize = FRAME_SIZE as usize;
/// Most frames per call: every step of a call must fit in the ring KV cache.
pub const MAX_FRAMES_PER_CALL: usize = CONTEXT / STEPS_PER_FRAME;
const MAX_NODES: usize = 4096;

/// Most streams of one codec.
pub const MAX_STREAMS: usize = 16;

/// The graph of one direction for one chunk size and batch, with its per-call inputs and
/// outputs in two staging blocks: a call puts its inputs into the first, which goes up in
/// one copy, queues the graph, and brings the second down in one copy; the host waits once.
pub(super) struct Step {
    pub(super) graph: Graph,
    inputs: Staging,
    outputs: Staging,
    /// Samples (encoder) or codes (decoder), in `inputs`.
    input: T,
    /// Codes (encoder) or samples (decoder), in `outputs`.
    output: T,
    ring: RingInputs,
    /// The batch's stream indices, in `inputs`, for a codec of several streams.
    streams: Option<T>,
    /// The encoder's first-call flags (the down-sample's replicate padding), one per stream
    /// of the batch, in `inputs`, and the values they hold there: they go up only when they
    /// change.
    first: Option<(T, [f32; MAX_STREAMS])>,
}

impl Step {
    /// The batch's stream indices and their rings' inputs.
    fn advance(&mut self, rings: &mut [Ring], streams: &[usize], n: usize) {
        for (at, &s) in streams.iter().enumerate() {
            rings[s].advance(n, &mut self.inputs, &self.ring, at, s);
        }
        if let Some(t) = self.streams {
            let mut idx = [0i32; MAX_STREAMS];
            for (i, &s) in streams.iter().enumerate() {
                idx[i] = s as i32;
            }
            self.inputs.put(t, 0, &idx[..streams.len()]);
        }
    }

    /// One encoder call of `frames` frames for the streams `streams` (the graph's batch; the
    /// first k are those `pcm` and `codes` hold, the others pads): their `pcm` ([1920 · F]
    /// each, one after another) in, their `codes` (frame-major, [8, F] each) out. `first`:
    /// whether it is each stream's first call.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn encode(
        &mut self,
        backend: &Backend,
        rings: &mut [Ring],
        streams: &[usize],
        frames: usize,
        pcm: &[f32],
        first: &[bool],
        codes: &mut [i32],
    ) -> Result<()> {
        self.advance(rings, streams, frames * STEPS_PER_FRAME);
        self.inputs.put(self.input, 0, pcm);
        if let Some((flag, sent)) = &mut self.first {
            let mut want = [0f32; MAX_STREAMS];
            for (w, &f) in want.iter_mut().zip(first) {
                *w = if f { 1.0 } else { 0.0 };
            }
            let k = streams.len();
            if sent[..k] != want[..k] {
                self.inputs.put(*flag, 0, &want[..k]);
                sent[..k].copy_from_slice(&want[..k]);
            }
        }
        self.run(backend)?;
        self.outputs.get(self.output, 0, codes);
        Ok(())
    }

    /// One decoder call of `frames` frames for the streams `streams` (the graph's batch; the
    /// first k are those `pcm` holds, the others pads): codes (codebook-major, [F · K, 8],
    /// the pads' too) in, `pcm` ([1920 · F] per stream, one after another) out.
    pub(super) fn decode(
        &mut self,
        backend: &Backend,
        rings: &mut [Ring],
        streams: &[usize],
        frames: usize,
        codes_by_q: &[i32],
        pcm: &mut [f32],
    ) -> Result<()> {
        self.advance(rings, streams, frames * STEPS_PER_FRAME);
        self.inputs.put(self.input, 0, codes_by_q);
        self.run(backend)?;
        self.outputs.get(self.output, 0, pcm);
        Ok(())
    }

    /// Inputs up, the graph, outputs down, all queued; then one wait. The host mirrors are
    /// not touched again before the wait, also when the compute fails.
    fn run(&mut self, backend: &Backend) -> Result<()> {
        self.inputs.upload(backend);
        let computed = self.graph.compute_async(backend);
        if computed.is_ok() {
            self.outputs.download(backend);
        }
        backend.synchronize();
        computed
    }
}

/// Every persistent state tensor (one stream's shape), in the order of the codec's layers.
pub(super) fn state_layout() -> Vec<(String, Vec<i64>)> {
    let mut decl = vec![];
    seanet::encoder_state(&mut decl);
    resample::downsample_state(&mut decl);
    seanet::decoder_state(&mut decl);
    resample::upsample_state(&mut decl);
    transformer::state_layout(&mut decl);
    decl
}

/// The batch's stream indices, an input of a codec of several streams.
fn stream_indices(ib: &mut StagingBuilder, state: &State, k: usize) -> Option<T> {
    (state.slices > 1).then(|| ib.tensor(ggml::I32, &[k as i64], "streams"))
}

/// The encoder for `frames` frames of each of `k` streams per call: samples → SEANet →
/// transformer → ×2 down → split RVQ → 8 codes per frame.
pub(super) fn build_encoder(
    backend: &Backend,
    weights: &Weights,
    state: &State,
    frames: usize,
    k: usize,
) -> Result<Step> {
    let n = frames * STEPS_PER_FRAME;
    let kk = k as i64;
    // The flags first: they rarely change, the rest changes at every call, so what a call
    // writes is one contiguous range.
    let mut ib = StagingBuilder::new(9);
    let first = ib.tensor(ggml::F32, &[1, 1, kk], "first");
    let streams = stream_indices(&mut ib, state, k);
    let input = ib.tensor(ggml::F32, &[1, (frames * FRAME) as i64, kk], "pcm");
    let ring = RingInputs::new(&mut ib, n, k, state.slices > 1);
    let inputs = ib.build(backend)?;
    let mut ob = StagingBuilder::new(1);
    let output = ob.tensor(
        ggml::I32,
        &[N_CODEBOOKS as i64, (frames * k) as i64],
        "codes",
    );
    let outputs = ob.build(backend)?;

    let mut graph = Graph::new(MAX_NODES);
    let mut b = Builder {
        g: &graph.ctx,
        w: weights,
        s: state,
        streams,
        writes: vec![],
    };
    let mut h = b.seanet_encoder(input);
    h = b.transformer(h, ENCODER, &ring);
    let latent = b.downsample(h, first);
    let g = b.g;
    // Codebook q's codes ([F · k]) into column q of the frame-major [8, F · k] output.
    let copies: Vec<T> = b
        .rvq_encode(latent)
        .into_iter()
        .enumerate()
        .map(|(q, code)| {
            let cols = (frames * k) as i64;
            let column = g.view(output, &[1, cols], &[output.nb()[1]], q * 4);
            g.cpy(g.reshape(code, &[1, cols]), column)
        })
        .collect();
    let writes = std::mem::take(&mut b.writes);
    finish(backend, &mut graph, &copies, writes, "Mimi encoder graph")?;
    Ok(Step {
        graph,
        inputs,
        outputs,
        input,
        output,
        ring,
        streams,
        first: Some((first, [0.0; MAX_STREAMS])),
    })
}

/// The decoder for `frames` frames of each of `k` streams per call: 8 codes per frame →
/// RVQ sum → ×2 up → transformer → SEANet → samples.
pub(super) fn build_decoder(
    backend: &Backend,
    weights: &Weights,
    state: &State,
    frames: usize,
    k: usize,
) -> Result<Step> {
    let n = frames * STEPS_PER_FRAME;
    let mut ib = StagingBuilder::new(8);
    let streams = stream_indices(&mut ib, state, k);
    let input = ib.tensor(ggml::I32, &[(frames * k * N_CODEBOOKS) as i64], "codes");
    let ring = RingInputs::new(&mut ib, n, k, state.slices > 1);
    let inputs = ib.build(backend)?;
    let mut ob = StagingBuilder::new(1);
    let output = ob.tensor(ggml::F32, &[1, (frames * FRAME) as i64, k as i64], "pcm");
    let outputs = ob.build(backend)?;

    let mut graph = Graph::new(MAX_NODES);
    let mut b = Builder {
        g: &graph.ctx,
        w: weights,
        s: state,
        streams,
        writes: vec![],
    };
    let latent = b.rvq_decode(input, frames);
    let mut h = b.upsample(latent, frames);
    h = b.transformer(h, DECODER, &ring);
    h = b.seanet_decoder(h);
    let copy = b.g.cpy(h, output);
    let writes = std::mem::take(&mut b.writes);
    finish(backend, &mut graph, &[copy], writes, "Mimi decoder graph")?;
    Ok(Step {
        graph,
        inputs,
        outputs,
        input,
        output,
        ring,
        streams,
        first: None,
    })
}

/// Adds the outputs, then the state writes (after every read of the old state), allocates
/// the graph and checks that the backend runs every node of it.
fn finish(
    backend: &Backend,
    graph: &mut Graph,
    outputs: &[T],
    writes: Vec<T>,
    what: &str,
) -> Result<()> {
    for &o in outputs {
        graph.expand(o);
    }
    for w in writes {
        graph.expand(w);
    }
    graph.allocate(backend)?;
    graph.check_supported(backend, what)
}
