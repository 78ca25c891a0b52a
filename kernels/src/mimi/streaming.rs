//! The codec's two graphs (encode, decode) for one chunk size, and the layout of the state
//! they share: the whole codec composed from its parts.

use anyhow::Result;
use flm_conversion::plan::mimi_arch::*;

use super::resample::{self, STEPS_PER_FRAME};
use super::seanet;
use super::state::{Builder, State};
use super::transformer::{self, DECODER, ENCODER, RingInputs};
use crate::ggml::{self, Backend, Graph, T};
use crate::weights::Weights;

/// Samples per code frame (80 ms at 24 kHz).
pub const FRAME: usize = FRAME_SIZE as usize;
/// Most frames per call: every step of a call must fit in the ring KV cache.
pub const MAX_FRAMES_PER_CALL: usize = CONTEXT / STEPS_PER_FRAME;
const MAX_NODES: usize = 4096;

/// Graph inputs and outputs of one direction for one chunk size.
pub(super) struct Step {
    pub(super) graph: Graph,
    pub(super) input: T,
    pub(super) outputs: Vec<T>,
    pub(super) ring: RingInputs,
    pub(super) first: Option<T>,
}

/// Every persistent state tensor, in the order of the codec's layers.
pub(super) fn state_layout() -> Vec<(String, Vec<i64>)> {
    let mut decl = vec![];
    seanet::encoder_state(&mut decl);
    resample::downsample_state(&mut decl);
    seanet::decoder_state(&mut decl);
    resample::upsample_state(&mut decl);
    transformer::state_layout(&mut decl);
    decl
}

/// The encoder for `frames` frames per call: samples → SEANet → transformer → ×2 down →
/// split RVQ → 8 codes per frame.
pub(super) fn build_encoder(
    backend: &Backend,
    weights: &Weights,
    state: &State,
    frames: usize,
) -> Result<Step> {
    let mut graph = Graph::new(MAX_NODES);
    let n = frames * STEPS_PER_FRAME;
    let mut b = Builder {
        g: &graph.ctx,
        w: weights,
        s: state,
        writes: vec![],
    };
    let input =
        b.g.new_tensor(ggml::F32, &[1, (frames * FRAME) as i64])
            .set_input()
            .name("pcm");
    let ring = RingInputs::new(b.g, n);
    let first = b.g.new_tensor(ggml::F32, &[1, 1]).set_input().name("first");
    let mut h = b.seanet_encoder(input);
    h = b.transformer(h, ENCODER, &ring);
    let latent = b.downsample(h, first);
    let outputs = b.rvq_encode(latent);
    let writes = std::mem::take(&mut b.writes);
    finish(backend, &mut graph, &outputs, writes)?;
    Ok(Step {
        graph,
        input,
        outputs,
        ring,
        first: Some(first),
    })
}

/// The decoder for `frames` frames per call: 8 codes per frame → RVQ sum → ×2 up →
/// transformer → SEANet → samples.
pub(super) fn build_decoder(
    backend: &Backend,
    weights: &Weights,
    state: &State,
    frames: usize,
) -> Result<Step> {
    let mut graph = Graph::new(MAX_NODES);
    let n = frames * STEPS_PER_FRAME;
    let mut b = Builder {
        g: &graph.ctx,
        w: weights,
        s: state,
        writes: vec![],
    };
    let input =
        b.g.new_tensor(ggml::I32, &[(frames * N_CODEBOOKS) as i64])
            .set_input()
            .name("codes");
    let ring = RingInputs::new(b.g, n);
    let latent = b.rvq_decode(input, frames);
    let mut h = b.upsample(latent, frames);
    h = b.transformer(h, DECODER, &ring);
    h = b.seanet_decoder(h);
    let outputs = vec![h.set_output().name("pcm_out")];
    let writes = std::mem::take(&mut b.writes);
    finish(backend, &mut graph, &outputs, writes)?;
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
fn finish(backend: &Backend, graph: &mut Graph, outputs: &[T], writes: Vec<T>) -> Result<()> {
    for &o in outputs {
        graph.expand(o);
    }
    for w in writes {
        graph.expand(w);
    }
    graph.allocate(backend)
}
