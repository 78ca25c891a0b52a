//! The Mimi codec on ggml, streaming: 24 kHz mono audio ⇄ 8 codebooks at 12.5 Hz, one or
//! more 80 ms frames (1920 samples) per call.
//!
//! One codec holds one stream, or several (`load_streams`: the conversations of one step),
//! each with its own state and positions, all on one copy of the weights; a call runs any
//! of them together in one encode or decode graph (`encode_streams`, `decode_streams`),
//! and each stream's codes and samples are those it would get alone. The graphs are built
//! at load for batches of 1, 2, 4, … streams and of all of them; a call of k streams runs
//! the smallest batch that holds them, its other places pads (a stream of their own, whose
//! results nobody reads): the graphs' work buffers grow with twice the streams, not with
//! their square.
//!
//! Every streaming state lives in persistent tensors (left context of each causal conv, the
//! overlap tail of each transposed conv, the transformers' ring KV caches); each graph reads
//! the old state and writes the new one in the same compute. A graph is built once per chunk
//! size (frames per call) and reused with its allocator, so the per-frame path allocates
//! nothing after warm-up.
//!
//! Host and device meet once per call and direction: the call's inputs (samples or codes,
//! the ring's slots, positions and mask, the first-call flag when it changes) are put into
//! one staging block that goes up in one queued copy, the graph is queued, its outputs (the
//! 8 codes of a frame, or its 1920 samples) are copied inside the graph into a second block
//! that comes down in one queued copy (into pinned memory where the device has it), and the
//! host waits once. The graphs' nodes are checked against the backend when they are built
//! (the one-frame graphs at load).
//!
//! Layout: every signal is channel-fastest `[C, T]`. One file per part, as Kyutai's
//! moshi-core lays the codec out; dependencies point one way (this file → `streaming` → the
//! parts → `state`; this file also asks the parts to declare their weights):
//! - `seanet`: the SEANet encoder and decoder (convs, residual blocks, ELU, transposed
//!   convs) and the re-layout of their weights;
//! - `transformer`: the two streaming transformers, their ring KV caches and RoPE re-basing;
//! - `resample`: the ×2 down- and up-sample between the 25 Hz latent and the 12.5 Hz codes;
//! - `quantization`: the split RVQ, encode and decode;
//! - `state`: the persistent state tensors and the graph builder that reads and updates them;
//! - `streaming`: the encode and decode graphs of one chunk size, composed from the parts.

mod quantization;
mod resample;
mod seanet;
mod state;
mod streaming;
mod transformer;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Result, ensure};
use flm_conversion::model_files::{MIMI_ARCH, mimi_keys};
use flm_conversion::plan::mimi_arch::*;

use crate::ggml::{Backend, Device};
use crate::weights::{Weights, WeightsBuilder};
use resample::STEPS_PER_FRAME;
use state::State;
use streaming::Step;
pub use streaming::{FRAME, MAX_FRAMES_PER_CALL, MAX_STREAMS};
use transformer::{DECODER, ENCODER, REBASE, Ring, Shift};

pub struct Mimi {
    backend: Backend,
    weights: Weights,
    state: State,
    /// The graphs by (frames per call, streams per call).
    encoders: HashMap<(usize, usize), Step>,
    decoders: HashMap<(usize, usize), Step>,
    /// Per stream, and with several streams one more for the pads of a batch.
    enc_rings: Vec<Ring>,
    dec_rings: Vec<Ring>,
    /// Per stream.
    enc_first: Vec<bool>,
    /// The batch sizes of the graphs, ascending.
    batches: Vec<usize>,
    /// Per transformer (encoder, decoder): rotates a stream's cached keys back by REBASE
    /// steps.
    shifts: [Shift; 2],
}

fn check_chunk(frames: usize) -> Result<()> {
    ensure!(
        (1..=MAX_FRAMES_PER_CALL).contains(&frames),
        "Mimi: {frames} frames per call (1..={MAX_FRAMES_PER_CALL})"
    );
    Ok(())
}

/// The file is a Mimi file with the hyper-parameters this build supports.
fn check_header(wb: &WeightsBuilder, label: &str) -> Result<()> {
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
    Ok(())
}

/// The batch sizes of the graphs of a codec of `streams` streams: 1, 2, 4, … below it, and
/// all of them.
fn batches(streams: usize) -> Vec<usize> {
    (0..)
        .map(|i| 1 << i)
        .take_while(|&b| b < streams)
        .chain([streams])
        .collect()
}

/// Work-buffer bytes of the one-frame graphs (encoder and decoder) per stream place of a
/// batch, f32 activations: 6 to 6.7 MiB measured on the CPU (`tests/mimi.rs` holds the
/// estimate to the graphs' buffers).
const WORK_PER_PLACE: usize = 7 << 20;

impl Mimi {
    /// An estimate, from above, of the bytes of the graphs' work buffers of a codec of
    /// `streams` streams (those built at load).
    pub fn work_bytes(streams: usize) -> usize {
        batches(streams).iter().sum::<usize>() * WORK_PER_PLACE
    }

    /// Bytes of the persistent state of a codec of `streams` streams (with several, one
    /// slice more, the pads').
    pub fn states_bytes(streams: usize) -> usize {
        let slices = if streams > 1 { streams + 1 } else { 1 };
        slices * Mimi::state_bytes()
    }

    /// Loads `mimi.gguf` onto `device` (with `threads` threads on the CPU): one stream.
    pub fn load(path: &Path, device: Device, threads: usize) -> Result<Mimi> {
        Mimi::load_streams(path, device, threads, 1)
    }

    /// Loads `mimi.gguf` onto `device` for `streams` streams (1..=16) on one copy of the
    /// weights. With several, the one-frame graphs of every batch size are built now: a call
    /// of one frame per stream allocates nothing, however many streams it runs.
    pub fn load_streams(
        path: &Path,
        device: Device,
        threads: usize,
        streams: usize,
    ) -> Result<Mimi> {
        ensure!(
            (1..=MAX_STREAMS).contains(&streams),
            "Mimi: {streams} streams (1..={MAX_STREAMS})"
        );
        let backend = Backend::new(device, threads)?;
        let mut wb = WeightsBuilder::open(path)?;
        let label = path.display().to_string();
        check_header(&wb, &label)?;
        seanet::declare_encoder(&mut wb, &label)?;
        resample::declare_downsample(&mut wb, &label)?;
        seanet::declare_decoder(&mut wb, &label)?;
        resample::declare_upsample(&mut wb, &label)?;
        transformer::declare_weights(&mut wb)?;
        quantization::declare_weights(&mut wb)?;
        let weights = wb.build(&backend, false)?;
        // With several streams, one slice more: the pads'.
        let slices = if streams > 1 { streams + 1 } else { 1 };
        let state = State::new(&backend, &streaming::state_layout(), slices)?;
        let batches = batches(streams);
        let shifts = [
            Shift::new(&state, &backend, ENCODER)?,
            Shift::new(&state, &backend, DECODER)?,
        ];
        let mut mimi = Mimi {
            backend,
            weights,
            state,
            encoders: HashMap::new(),
            decoders: HashMap::new(),
            enc_rings: (0..slices).map(|_| Ring::new()).collect(),
            dec_rings: (0..slices).map(|_| Ring::new()).collect(),
            enc_first: vec![true; streams],
            batches,
            shifts,
        };
        // The one-frame graphs, built and checked against the backend now: an op the device
        // lacks is an error of the load, not an abort in the middle of a stream.
        for b in mimi.batches.clone() {
            mimi.prepare_batch(1, b)?;
        }
        Ok(mimi)
    }

    /// Streams of this codec.
    pub fn streams(&self) -> usize {
        self.enc_first.len()
    }

    /// The batch that runs `streams` (k of them): the smallest graph batch that holds
    /// them, the streams first, then the pads (`junk`).
    fn batch(&mut self, streams: &[usize], n: usize) -> ([usize; MAX_STREAMS], usize) {
        let k = streams.len();
        let b = *self
            .batches
            .iter()
            .find(|&&b| b >= k)
            .expect("k <= streams");
        let mut ids = [0usize; MAX_STREAMS];
        ids[..k].copy_from_slice(streams);
        if b > k {
            let junk = self.streams();
            ids[k..b].fill(junk);
            // The pads' positions never re-base: their ring starts again instead.
            for ring in [&mut self.enc_rings[junk], &mut self.dec_rings[junk]] {
                if ring.needs_rebase(n * (b - k)) {
                    ring.restart();
                }
            }
        }
        (ids, b)
    }

    /// Moves a stream's transformer positions down by REBASE when its ring needs it.
    fn rebase(&mut self, encoder: bool, stream: usize, n: usize) -> Result<()> {
        let (ring, shift) = if encoder {
            (&mut self.enc_rings[stream], &mut self.shifts[0])
        } else {
            (&mut self.dec_rings[stream], &mut self.shifts[1])
        };
        while ring.needs_rebase(n) {
            shift.rotate(&self.backend, stream)?;
            ring.base += REBASE;
        }
        Ok(())
    }

    /// Continues as a stream that has already run `frames` frames (a test hook for streams
    /// that run for days): every stream's rings start there, empty.
    pub fn start_at(&mut self, frames: u64) {
        self.reset();
        let steps = (frames as i64).saturating_mul(STEPS_PER_FRAME as i64);
        for ring in self.enc_rings.iter_mut().chain(&mut self.dec_rings) {
            *ring = Ring::starting_at(steps);
        }
    }

    /// Starts every stream anew: clears every state (both directions).
    pub fn reset(&mut self) {
        self.state.buffer.clear();
        for ring in self.enc_rings.iter_mut().chain(&mut self.dec_rings) {
            ring.restart();
        }
        self.enc_first.fill(true);
    }

    /// Starts stream `stream` anew (both directions); the others keep theirs.
    pub fn reset_stream(&mut self, stream: usize) {
        self.state.clear_stream(stream);
        self.forget(stream);
    }

    fn forget(&mut self, stream: usize) {
        self.enc_rings[stream].restart();
        self.dec_rings[stream].restart();
        self.enc_first[stream] = true;
    }

    /// ggml's name of the backend the graphs run on.
    pub fn backend_name(&self) -> String {
        self.backend.name()
    }

    /// Bytes of one stream's persistent state (convs' contexts, held-back spans, both
    /// transformers' ring KV caches), f32: what each further stream adds besides its share
    /// of the graphs' work buffers.
    pub fn state_bytes() -> usize {
        streaming::state_layout()
            .iter()
            .map(|(_, ne)| ne.iter().product::<i64>() as usize * 4)
            .sum()
    }

    /// Bytes of weights on the backend.
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    /// Bytes of the graphs' work buffers (those built so far).
    pub fn graph_bytes(&self) -> usize {
        self.encoders
            .values()
            .chain(self.decoders.values())
            .map(|s| s.graph.buffer_bytes())
            .sum()
    }

    /// Encodes `pcm` (a whole number of 1920-sample frames) into `codes`, frame-major
    /// (`codes[f * 8 + q]`): stream 0.
    pub fn encode(&mut self, pcm: &[f32], codes: &mut [i32]) -> Result<()> {
        self.encode_streams(&[0], pcm, codes)
    }

    /// Decodes `codes` (frame-major, 8 per frame, each < 2048) into `pcm` (1920 per frame):
    /// stream 0.
    pub fn decode(&mut self, codes: &[i32], pcm: &mut [f32]) -> Result<()> {
        self.decode_streams(&[0], codes, pcm)
    }

    /// Checks a call's streams: distinct, each below `streams()`.
    fn check_streams(&self, streams: &[usize], what: &str) -> Result<()> {
        ensure!(
            !streams.is_empty() && streams.len() <= self.streams(),
            "Mimi {what}: {} streams in one call (1..={})",
            streams.len(),
            self.streams()
        );
        for (i, &s) in streams.iter().enumerate() {
            ensure!(
                s < self.streams() && !streams[..i].contains(&s),
                "Mimi {what}: stream {s} is not one of 0..{} or comes twice",
                self.streams()
            );
        }
        Ok(())
    }

    /// Encodes the same number of frames of each stream of `streams` (distinct) in one
    /// graph: `pcm` holds each stream's samples one after another, `codes` receives each
    /// stream's codes one after another (frame-major).
    pub fn encode_streams(
        &mut self,
        streams: &[usize],
        pcm: &[f32],
        codes: &mut [i32],
    ) -> Result<()> {
        self.check_streams(streams, "encode")?;
        let k = streams.len();
        ensure!(
            !pcm.is_empty() && pcm.len().is_multiple_of(FRAME * k),
            "Mimi encode: {} samples is not a whole number of frames for each of {k} streams",
            pcm.len()
        );
        let frames = pcm.len() / FRAME / k;
        ensure!(
            codes.len() == frames * k * N_CODEBOOKS,
            "Mimi encode: codes buffer of {} for {frames} frames of {k} streams",
            codes.len()
        );
        let n = frames * STEPS_PER_FRAME;
        let (ids, b) = self.batch(streams, n);
        self.prepare_encoder(frames, b)?;
        let mut first = [false; MAX_STREAMS];
        for (i, &s) in streams.iter().enumerate() {
            self.rebase(true, s, n)?;
            first[i] = self.enc_first[s];
        }
        let step = self.encoders.get_mut(&(frames, b)).unwrap();
        step.encode(
            &self.backend,
            &mut self.enc_rings,
            &ids[..b],
            frames,
            pcm,
            &first[..b],
            codes,
        )?;
        for &s in streams {
            self.enc_first[s] = false;
        }
        Ok(())
    }

    /// Decodes the same number of frames of each stream of `streams` (distinct) in one
    /// graph: `codes` holds each stream's codes one after another (frame-major, each
    /// < 2048), `pcm` receives each stream's samples one after another.
    pub fn decode_streams(
        &mut self,
        streams: &[usize],
        codes: &[i32],
        pcm: &mut [f32],
    ) -> Result<()> {
        self.check_streams(streams, "decode")?;
        let k = streams.len();
        ensure!(
            !codes.is_empty() && codes.len().is_multiple_of(N_CODEBOOKS * k),
            "Mimi decode: {} codes is not a whole number of frames for each of {k} streams",
            codes.len()
        );
        let frames = codes.len() / N_CODEBOOKS / k;
        ensure!(
            pcm.len() == frames * k * FRAME,
            "Mimi decode: pcm buffer of {} for {frames} frames of {k} streams",
            pcm.len()
        );
        if let Some(c) = codes
            .iter()
            .find(|&&c| c < 0 || c as usize >= CODEBOOK_SIZE)
        {
            anyhow::bail!("Mimi decode: code {c} is outside 0..{CODEBOOK_SIZE}");
        }
        let n = frames * STEPS_PER_FRAME;
        let (ids, b) = self.batch(streams, n);
        self.prepare_decoder(frames, b)?;
        for &s in streams {
            self.rebase(false, s, n)?;
        }
        // Codebook-major on the graph side: one contiguous row of every stream's frames
        // per codebook (the pads' codes 0).
        let mut by_q = [0i32; N_CODEBOOKS * MAX_FRAMES_PER_CALL * MAX_STREAMS];
        let all = frames * b;
        for f in 0..frames * k {
            for q in 0..N_CODEBOOKS {
                by_q[q * all + f] = codes[f * N_CODEBOOKS + q];
            }
        }
        let step = self.decoders.get_mut(&(frames, b)).unwrap();
        step.decode(
            &self.backend,
            &mut self.dec_rings,
            &ids[..b],
            frames,
            &by_q[..all * N_CODEBOOKS],
            pcm,
        )
    }

    /// Builds the graphs for `frames` frames per call ahead of time (warm-up), for one
    /// stream per call.
    pub fn prepare(&mut self, frames: usize) -> Result<()> {
        self.prepare_batch(frames, 1)
    }

    fn prepare_batch(&mut self, frames: usize, k: usize) -> Result<()> {
        self.prepare_encoder(frames, k)?;
        self.prepare_decoder(frames, k)
    }

    fn prepare_encoder(&mut self, frames: usize, k: usize) -> Result<()> {
        check_chunk(frames)?;
        if !self.encoders.contains_key(&(frames, k)) {
            let step =
                streaming::build_encoder(&self.backend, &self.weights, &self.state, frames, k)?;
            self.encoders.insert((frames, k), step);
        }
        Ok(())
    }

    fn prepare_decoder(&mut self, frames: usize, k: usize) -> Result<()> {
        check_chunk(frames)?;
        if !self.decoders.contains_key(&(frames, k)) {
            let step =
                streaming::build_decoder(&self.backend, &self.weights, &self.state, frames, k)?;
            self.decoders.insert((frames, k), step);
        }
        Ok(())
    }

    /// Per-node timings of the one-frame encoder and decoder graphs of all streams (state is
    /// not advanced consistently while profiling: reset before real use).
    pub fn profile(&mut self, reps: usize) -> Result<Vec<(String, [i64; 4], f64)>> {
        // One real call of each sets every graph input.
        let b = self.streams();
        let all: Vec<usize> = (0..b).collect();
        let mut codes = vec![0i32; N_CODEBOOKS * b];
        self.encode_streams(&all, &vec![0.0; FRAME * b], &mut codes)?;
        self.decode_streams(&all, &codes, &mut vec![0.0; FRAME * b])?;
        let mut out = self
            .encoders
            .get_mut(&(1, b))
            .unwrap()
            .graph
            .profile(&self.backend, reps)?;
        out.extend(
            self.decoders
                .get_mut(&(1, b))
                .unwrap()
                .graph
                .profile(&self.backend, reps)?,
        );
        Ok(out)
    }

    /// The op type of every node of the one-frame encoder and decoder graphs.
    pub fn op_names(&mut self) -> Result<Vec<String>> {
        self.prepare_batch(1, 1)?;
        let mut out = self.encoders[&(1, 1)].graph.op_names();
        out.extend(self.decoders[&(1, 1)].graph.op_names());
        Ok(out)
    }
}
