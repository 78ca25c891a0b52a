//! WebRTC's AEC3 driven frame by frame: `sonora-aec3`'s block processor (the delay
//! estimator, the adaptive filters and the suppressor) given 10 ms frames of the far end and
//! the microphone, with the configuration this runtime chooses. `sonora`'s audio processing
//! front end builds the same processor with WebRTC's default configuration only; this module
//! does that front end's part for the one case used here, one microphone and one loudspeaker,
//! so that the suppressor can be tuned (`super::config`). With the default configuration its
//! output equals the front end's sample for sample (the test below).
//!
//! As in WebRTC, 16 kHz is one band; 32 kHz is split into two 16 kHz bands (`super::qmf`),
//! AEC3 cancelling the lower with its filters and applying its suppression gain to the upper;
//! 48 kHz is processed at 32 kHz, through WebRTC's sinc resamplers (its three-band filter bank
//! takes a near voice's correlation with itself from 0.99 to 0.97, measured on speech).
//! Samples are in WebRTC's "float S16" scale inside (AEC3's thresholds assume it). Nothing
//! here allocates after construction: the block queues are reserved up front.

use sonora_aec3::block::Block;
use sonora_aec3::block_processor::{BlockProcessor, BlockProcessorMetricsOutput};
use sonora_aec3::config::EchoCanceller3Config;
use sonora_common_audio::push_sinc_resampler::PushSincResampler;

use super::qmf::{self, TwoBands};

/// Samples per band in a 10 ms frame (16 kHz bands).
const BAND_FRAME: usize = qmf::BAND;
/// Samples per band in one AEC3 block (4 ms).
const BLOCK: usize = 64;
/// A capture sample at least this loud (float S16) counts as a saturated microphone.
const SATURATION: f32 = 32_700.0;

/// Band samples on their way into or out of blocks, one queue per band.
struct BandQueues {
    bands: Vec<Vec<f32>>,
}

impl BandQueues {
    /// Queues that start `delay` samples deep, each reserved for the most it holds (a frame
    /// on top of a part block, or a frame's blocks on top of the delay): filling them never
    /// allocates.
    fn new(bands: usize, delay: usize) -> BandQueues {
        let queue = || {
            let mut q = Vec::with_capacity(BAND_FRAME + 2 * BLOCK);
            q.resize(delay, 0.0);
            q
        };
        BandQueues {
            bands: (0..bands).map(|_| queue()).collect(),
        }
    }

    fn push(&mut self, frame: &[[f32; BAND_FRAME]]) {
        for (queue, band) in self.bands.iter_mut().zip(frame) {
            queue.extend_from_slice(band);
        }
    }

    fn len(&self) -> usize {
        self.bands[0].len()
    }

    fn pop_block(&mut self, block: &mut Block) {
        for (b, queue) in self.bands.iter_mut().enumerate() {
            block.view_mut(b, 0).copy_from_slice(&queue[..BLOCK]);
            queue.drain(..BLOCK);
        }
    }

    fn push_block(&mut self, block: &Block) {
        for (b, queue) in self.bands.iter_mut().enumerate() {
            queue.extend_from_slice(block.view(b, 0));
        }
    }

    fn pop_frame(&mut self, frame: &mut [[f32; BAND_FRAME]]) {
        for (queue, band) in self.bands.iter_mut().zip(frame) {
            band.copy_from_slice(&queue[..BAND_FRAME]);
            queue.drain(..BAND_FRAME);
        }
    }
}

/// Splits full-band 10 ms frames at the processing rate into 16 kHz bands and joins them.
enum Bands {
    /// 16 kHz: the frame is the one band.
    One,
    /// 32 kHz: two bands.
    Two(TwoBands),
}

impl Bands {
    fn new(processing_rate: u32) -> Bands {
        match processing_rate {
            32_000 => Bands::Two(TwoBands::default()),
            _ => Bands::One,
        }
    }

    fn count(&self) -> usize {
        match self {
            Bands::One => 1,
            Bands::Two(_) => 2,
        }
    }

    fn split(&mut self, full: &[f32], bands: &mut [[f32; BAND_FRAME]; 2]) {
        match self {
            Bands::One => bands[0].copy_from_slice(full),
            Bands::Two(bank) => {
                let [low, high] = bands;
                bank.analysis(full.try_into().expect("a 32 kHz frame"), low, high);
            }
        }
    }

    fn join(&mut self, bands: &[[f32; BAND_FRAME]; 2], full: &mut [f32]) {
        match self {
            Bands::One => full.copy_from_slice(&bands[0]),
            Bands::Two(bank) => {
                let frame = full.try_into().expect("a 32 kHz frame");
                bank.synthesis(&bands[0], &bands[1], frame);
            }
        }
    }
}

/// 48 kHz frames to the 32 kHz of processing and back (WebRTC's push sinc resamplers).
struct Resampling {
    render: PushSincResampler,
    capture: PushSincResampler,
    output: PushSincResampler,
    /// Samples in a 48 kHz frame.
    frame_len: usize,
}

/// AEC3 for one microphone and one loudspeaker at 16, 32 or 48 kHz, in 10 ms frames.
pub struct Aec3 {
    processor: BlockProcessor,
    render_bands: Bands,
    capture_bands: Bands,
    render: BandQueues,
    capture_in: BandQueues,
    /// Processed capture blocks; starts one block deep, AEC3's framing latency.
    capture_out: BandQueues,
    block: Block,
    /// A frame at the processing rate.
    frame: Vec<f32>,
    split: [[f32; BAND_FRAME]; 2],
    /// Present at 48 kHz.
    resampling: Option<Resampling>,
}

impl Aec3 {
    /// `rate` must be 16, 32 or 48 kHz (checked by the caller).
    pub fn new(rate: u32, config: &EchoCanceller3Config) -> Aec3 {
        debug_assert!([16_000, 32_000, 48_000].contains(&rate));
        let processing_rate = rate.min(32_000);
        let (n, m) = (rate as usize / 100, processing_rate as usize / 100);
        let resampling = (n != m).then(|| Resampling {
            render: PushSincResampler::new(n, m),
            capture: PushSincResampler::new(n, m),
            output: PushSincResampler::new(m, n),
            frame_len: n,
        });
        let render_bands = Bands::new(processing_rate);
        let bands = render_bands.count();
        Aec3 {
            processor: BlockProcessor::new(config, processing_rate as usize, 1, 1),
            render_bands,
            capture_bands: Bands::new(processing_rate),
            render: BandQueues::new(bands, 0),
            capture_in: BandQueues::new(bands, 0),
            capture_out: BandQueues::new(bands, BLOCK),
            block: Block::new(bands, 1),
            frame: vec![0.0; m],
            split: [[0.0; BAND_FRAME]; 2],
            resampling,
        }
    }

    /// Samples of one 10 ms frame at the stream's rate.
    pub fn frame_len(&self) -> usize {
        self.resampling
            .as_ref()
            .map_or(self.frame.len(), |r| r.frame_len)
    }

    /// One frame of what the loudspeaker played (-1..1).
    pub fn render(&mut self, far: &[f32]) {
        let resampler = self.resampling.as_mut().map(|r| &mut r.render);
        resample_or_copy(resampler, far, &mut self.frame);
        to_s16(&mut self.frame);
        self.render_bands.split(&self.frame, &mut self.split);
        let n = self.render_bands.count();
        self.render.push(&self.split[..n]);
        while self.render.len() >= BLOCK {
            self.render.pop_block(&mut self.block);
            self.processor.buffer_render(&self.block);
        }
    }

    /// One frame of the microphone (-1..1), the echo removed, into `out`.
    pub fn capture(&mut self, mic: &[f32], out: &mut [f32]) {
        let resampler = self.resampling.as_mut().map(|r| &mut r.capture);
        resample_or_copy(resampler, mic, &mut self.frame);
        to_s16(&mut self.frame);
        let saturated = self.frame.iter().any(|v| v.abs() >= SATURATION);
        self.capture_bands.split(&self.frame, &mut self.split);
        let n = self.capture_bands.count();
        self.capture_in.push(&self.split[..n]);
        while self.capture_in.len() >= BLOCK {
            self.capture_in.pop_block(&mut self.block);
            self.processor
                .process_capture(false, saturated, None, &mut self.block);
            self.capture_out.push_block(&self.block);
        }
        self.capture_out.pop_frame(&mut self.split[..n]);
        self.capture_bands.join(&self.split, &mut self.frame);
        for v in self.frame.iter_mut() {
            *v = v.clamp(-32_768.0, 32_768.0) / 32_768.0;
        }
        let resampler = self.resampling.as_mut().map(|r| &mut r.output);
        resample_or_copy(resampler, &self.frame, out);
    }

    /// AEC3's own estimates: echo return loss and its enhancement (dB), the delay (ms).
    pub fn metrics(&self) -> BlockProcessorMetricsOutput {
        self.processor.get_metrics()
    }
}

/// A frame from one rate to the other, or as it is where the rates are equal.
fn resample_or_copy(resampler: Option<&mut PushSincResampler>, from: &[f32], to: &mut [f32]) {
    match resampler {
        Some(r) => {
            r.resample(from, to);
        }
        None => to.copy_from_slice(from),
    }
}

/// -1..1 to WebRTC's float S16 scale, as its audio buffers convert it.
fn to_s16(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = v.clamp(-1.0, 1.0) * 32_768.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonora::config::EchoCanceller as EchoConfig;
    use sonora::{AudioProcessing, Config, StreamConfig};

    /// `sonora`'s audio processing front end with AEC3 alone, WebRTC's default configuration.
    fn front_end(rate: u32) -> AudioProcessing {
        let config = Config {
            echo_canceller: Some(EchoConfig {
                enforce_high_pass_filtering: false,
                ..Default::default()
            }),
            ..Default::default()
        };
        AudioProcessing::builder()
            .config(config)
            .capture_config(StreamConfig::new(rate, 1))
            .render_config(StreamConfig::new(rate, 1))
            .build()
    }

    #[test]
    fn the_block_queues_never_grow() {
        for rate in [16_000u32, 32_000, 48_000] {
            let n = rate as usize / 100;
            let mut aec = Aec3::new(rate, &EchoCanceller3Config::default());
            let capacities = |a: &Aec3| -> Vec<usize> {
                [&a.render, &a.capture_in, &a.capture_out]
                    .iter()
                    .flat_map(|q| q.bands.iter().map(Vec::capacity))
                    .collect()
            };
            let before = capacities(&aec);
            let (far, mut out) = (vec![0.1; n], vec![0.0; n]);
            for _ in 0..100 {
                aec.render(&far);
                aec.capture(&far, &mut out);
            }
            assert_eq!(capacities(&aec), before, "{rate} Hz");
        }
    }

    #[test]
    fn with_the_default_configuration_it_equals_sonoras_front_end() {
        for rate in [16_000u32, 32_000, 48_000] {
            let n = rate as usize / 100;
            let mut seed = 3u32;
            let mut noise = || {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
            };
            // 4 s: a far end of noise, its echo 20 ms later, and a near voice of noise from
            // 2 s on.
            let far: Vec<f32> = (0..rate as usize * 4).map(|_| noise() * 0.5).collect();
            let d = rate as usize / 50;
            let mic: Vec<f32> = (0..far.len())
                .map(|i| {
                    let echo = if i >= d { 0.4 * far[i - d] } else { 0.0 };
                    let near = if i >= far.len() / 2 {
                        noise() * 0.2
                    } else {
                        0.0
                    };
                    echo + near
                })
                .collect();
            let mut ours = Aec3::new(rate, &EchoCanceller3Config::default());
            let mut theirs = front_end(rate);
            let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
            let mut scratch = vec![0.0; n];
            let mut worst = 0f32;
            for (f, m) in far.chunks_exact(n).zip(mic.chunks_exact(n)) {
                ours.render(f);
                ours.capture(m, &mut a);
                theirs
                    .process_render_f32(&[f], &mut [&mut scratch])
                    .unwrap();
                theirs.process_capture_f32(&[m], &mut [&mut b]).unwrap();
                for (x, y) in a.iter().zip(&b) {
                    worst = worst.max((x - y).abs());
                }
            }
            assert_eq!(worst, 0.0, "{rate} Hz");
            let (m, s) = (ours.metrics(), theirs.statistics());
            assert_eq!(
                Some(m.echo_return_loss_enhancement),
                s.echo_return_loss_enhancement
            );
            assert_eq!(Some(m.delay_ms), s.delay_ms);
        }
    }
}
