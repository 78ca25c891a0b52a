//! Acoustic echo cancellation: WebRTC's AEC3 (through `sonora`, a pure-Rust port of WebRTC's
//! audio processing), in 10 ms blocks. The far end (render) is what the loudspeaker played;
//! the near end (capture) is the microphone, whose echo of the far end is removed. AEC3
//! estimates the delay between the two itself. The high-pass filter WebRTC enforces with it
//! is left off: Mimi takes the whole band, and in double talk the filter took a further
//! 0.8 dB of the near voice (tests/aec.rs: -3.1 dB with it, -2.3 dB without, in the same
//! room), for 0.3 dB more echo removed.

use anyhow::{Result, bail};
use sonora::config::EchoCanceller as EchoConfig;
use sonora::{AudioProcessing, Config, StreamConfig};

/// The rates AEC3 runs at.
pub const RATES: [u32; 3] = [16_000, 32_000, 48_000];

pub struct EchoCanceller {
    apm: AudioProcessing,
    block: usize,
    /// The processed render block (AEC3 may change what it is given; it is not played).
    render_out: Vec<f32>,
}

impl EchoCanceller {
    /// A canceller for mono audio at `rate` (16, 32 or 48 kHz).
    pub fn new(rate: u32) -> Result<EchoCanceller> {
        if !RATES.contains(&rate) {
            bail!("echo cancellation runs at 16, 32 or 48 kHz, not {rate} Hz");
        }
        let config = Config {
            echo_canceller: Some(EchoConfig {
                enforce_high_pass_filtering: false,
                ..Default::default()
            }),
            ..Default::default()
        };
        let apm = AudioProcessing::builder()
            .config(config)
            .capture_config(StreamConfig::new(rate, 1))
            .render_config(StreamConfig::new(rate, 1))
            .build();
        let block = rate as usize / 100;
        Ok(EchoCanceller {
            apm,
            block,
            render_out: vec![0.0; block],
        })
    }

    /// Samples of one 10 ms block.
    pub fn block(&self) -> usize {
        self.block
    }

    /// One block of what the loudspeaker played.
    pub fn render(&mut self, far: &[f32]) -> Result<()> {
        self.apm
            .process_render_f32(&[far], &mut [&mut self.render_out])
            .map_err(|e| anyhow::anyhow!("echo canceller (render): {e:?}"))
    }

    /// One block of the microphone, with the echo removed, into `out`.
    pub fn capture(&mut self, mic: &[f32], out: &mut [f32]) -> Result<()> {
        self.apm
            .process_capture_f32(&[mic], &mut [out])
            .map_err(|e| anyhow::anyhow!("echo canceller (capture): {e:?}"))
    }

    /// AEC3's own estimates: echo return loss enhancement (dB) and the delay (ms).
    pub fn estimates(&self) -> (Option<f64>, Option<i32>) {
        let s = self.apm.statistics();
        (s.echo_return_loss_enhancement, s.delay_ms)
    }
}

/// Samples by which the canceller's output lags its input at `rate` (about 8 ms; 9 ms at
/// 48 kHz with its three-band split), as measured by the test below.
pub fn latency(rate: u32) -> usize {
    match rate {
        48_000 => 432,
        32_000 => 260,
        _ => 128,
    }
}

/// Cancels the echo of `far` in `mic`, two recordings on one clock at `rate`, block by block
/// as the daemon would; the output is `mic`'s length and time-aligned with it (the
/// canceller's latency taken out).
pub fn cancel(far: &[f32], mic: &[f32], rate: u32) -> Result<Vec<f32>> {
    let mut aec = EchoCanceller::new(rate)?;
    let b = aec.block();
    let lag = latency(rate);
    let blocks = (mic.len() + lag).div_ceil(b);
    let mut out = vec![0.0; blocks * b];
    let silence = vec![0.0; b];
    let mut mic_block = vec![0.0; b];
    for (i, chunk) in out.chunks_exact_mut(b).enumerate() {
        let far_block = far.get(i * b..(i + 1) * b).unwrap_or(&silence);
        aec.render(far_block)?;
        mic_block.fill(0.0);
        let have = mic.get(i * b..).map_or(&[][..], |m| &m[..m.len().min(b)]);
        mic_block[..have.len()].copy_from_slice(have);
        aec.capture(&mic_block, chunk)?;
    }
    out.drain(..lag);
    out.truncate(mic.len());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_is_aligned_with_the_microphone_at_every_rate() {
        // No far end: what comes out is the microphone, at the same time.
        for rate in RATES {
            let mut seed = 7u32;
            let mic: Vec<f32> = (0..rate as usize * 2)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    ((seed >> 8) as f32 / (1 << 24) as f32 - 0.5) * 0.2
                })
                .collect();
            let out = cancel(&vec![0.0; mic.len()], &mic, rate).unwrap();
            assert_eq!(out.len(), mic.len());
            let n = rate as usize / 2;
            let at = |lag: usize| -> f64 {
                (0..n)
                    .map(|i| out[n + i] as f64 * mic[n + i - lag] as f64)
                    .sum()
            };
            let best = (0..600).max_by(|&a, &b| at(a).total_cmp(&at(b))).unwrap();
            // Within 2 samples: the suppressor's gains blur the peak (speech through the
            // 24 kHz `aec` command puts it 2 samples to the other side at 48 kHz).
            assert!(best <= 2, "{rate} Hz: the output lags {best} samples");
        }
    }

    #[test]
    fn an_echo_of_noise_is_removed_and_rates_are_checked() {
        assert!(EchoCanceller::new(24_000).is_err());
        // A far end of pseudo-random noise, its echo delayed 30 ms and scaled, 6 s at 16 kHz.
        let mut seed = 1u32;
        let far: Vec<f32> = (0..96_000)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect();
        let mut mic = vec![0.0; far.len()];
        for i in 500..far.len() {
            mic[i] = 0.3 * far[i - 480] + 0.1 * far[i - 500];
        }
        let out = cancel(&far, &mic, 16_000).unwrap();
        let e = |x: &[f32]| x[32_000..].iter().map(|v| v * v).sum::<f32>();
        let erle = 10.0 * (e(&mic) / e(&out)).log10();
        assert!(erle > 20.0, "{erle} dB");
        // The canceller's own figures, as /metrics shows them: the echo came 30 ms late.
        let mut aec = EchoCanceller::new(16_000).unwrap();
        let mut block = [0.0; 160];
        for (f, m) in far.chunks_exact(160).zip(mic.chunks_exact(160)) {
            aec.render(f).unwrap();
            aec.capture(m, &mut block).unwrap();
        }
        let (erle, delay) = aec.estimates();
        assert!(erle.is_some_and(|e| e > 3.0), "ERLE estimate {erle:?}");
        assert!(
            delay.is_some_and(|d| (26..=34).contains(&d)),
            "delay {delay:?}"
        );
    }
}
