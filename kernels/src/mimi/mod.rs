//! The Mimi codec on ggml, streaming: 24 kHz mono audio ⇄ 8 codebooks at 12.5 Hz, one or
//! more 80 ms frames (1920 samples) per call.
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

use crate::ggml::{Backend, Device, Graph};
use crate::weights::{Weights, WeightsBuilder};
use resample::STEPS_PER_FRAME;
use state::State;
use streaming::Step;
pub use streaming::{FRAME, MAX_FRAMES_PER_CALL};
use transformer::{DECODER, ENCODER, REBASE, Ring};

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

impl Mimi {
    /// Loads `mimi.gguf` onto `device` (with `threads` threads on the CPU).
    pub fn load(path: &Path, device: Device, threads: usize) -> Result<Mimi> {
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
        let state = State::new(&backend, &streaming::state_layout())?;
        let shifts = [
            transformer::build_shift(&state, &backend, ENCODER)?,
            transformer::build_shift(&state, &backend, DECODER)?,
        ];
        let mut mimi = Mimi {
            backend,
            weights,
            state,
            encoders: HashMap::new(),
            decoders: HashMap::new(),
            enc_ring: Ring::new(),
            dec_ring: Ring::new(),
            enc_first: true,
            shifts,
        };
        // The one-frame graphs, built and checked against the backend now: an op the device
        // lacks is an error of the load, not an abort in the middle of a stream.
        mimi.prepare(1)?;
        Ok(mimi)
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

    /// Bytes of one stream's persistent state (convs' contexts, held-back spans, both
    /// transformers' ring KV caches), f32: what each further stream adds besides weights.
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
        self.rebase(true, frames * STEPS_PER_FRAME)?;
        let step = self.encoders.get_mut(&frames).unwrap();
        step.encode(
            &self.backend,
            &mut self.enc_ring,
            pcm,
            self.enc_first,
            codes,
        )?;
        self.enc_first = false;
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
        self.rebase(false, frames * STEPS_PER_FRAME)?;
        // Codebook-major on the graph side: one contiguous row of frames per codebook.
        let mut by_q = [0i32; N_CODEBOOKS * MAX_FRAMES_PER_CALL];
        for f in 0..frames {
            for q in 0..N_CODEBOOKS {
                by_q[q * frames + f] = codes[f * N_CODEBOOKS + q];
            }
        }
        let step = self.decoders.get_mut(&frames).unwrap();
        step.decode(
            &self.backend,
            &mut self.dec_ring,
            &by_q[..frames * N_CODEBOOKS],
            pcm,
        )
    }

    /// Builds the graphs for `frames` frames per call ahead of time (warm-up).
    pub fn prepare(&mut self, frames: usize) -> Result<()> {
        self.prepare_encoder(frames)?;
        self.prepare_decoder(frames)
    }

    fn prepare_encoder(&mut self, frames: usize) -> Result<()> {
        check_chunk(frames)?;
        if !self.encoders.contains_key(&frames) {
            let step = streaming::build_encoder(&self.backend, &self.weights, &self.state, frames)?;
            self.encoders.insert(frames, step);
        }
        Ok(())
    }

    fn prepare_decoder(&mut self, frames: usize) -> Result<()> {
        check_chunk(frames)?;
        if !self.decoders.contains_key(&frames) {
            let step = streaming::build_decoder(&self.backend, &self.weights, &self.state, frames)?;
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
}
