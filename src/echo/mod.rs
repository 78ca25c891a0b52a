//! Acoustic echo cancellation: WebRTC's AEC3 (`sonora-aec3`, a pure-Rust port of it), in
//! 10 ms blocks, with its suppressor tuned for double talk (`tuned_config`). The far end (render)
//! is what the loudspeaker played; the near end (capture) is the microphone, whose echo of
//! the far end is removed. AEC3 estimates the delay between the two itself. The high-pass
//! filter WebRTC puts before it is left off: Mimi takes the whole band, and in double talk
//! the filter took a further 0.8 dB of the near voice, for 0.3 dB more echo removed.

mod aec3;
mod qmf;

use anyhow::{Result, bail};
use sonora_aec3::config::EchoCanceller3Config;

use aec3::Aec3;

/// The rates AEC3 runs at.
pub const RATES: [u32; 3] = [16_000, 32_000, 48_000];

pub struct EchoCanceller {
    aec: Aec3,
}

impl EchoCanceller {
    /// A canceller for mono audio at `rate` (16, 32 or 48 kHz).
    pub fn new(rate: u32) -> Result<EchoCanceller> {
        EchoCanceller::with_config(rate, &tuned_config())
    }

    /// A canceller with another configuration (WebRTC's default, to compare).
    pub fn with_config(rate: u32, config: &EchoCanceller3Config) -> Result<EchoCanceller> {
        if !RATES.contains(&rate) {
            bail!("echo cancellation runs at 16, 32 or 48 kHz, not {rate} Hz");
        }
        Ok(EchoCanceller {
            aec: Aec3::new(rate, config),
        })
    }

    /// Samples of one 10 ms block.
    pub fn block(&self) -> usize {
        self.aec.frame_len()
    }

    /// One block of what the loudspeaker played.
    pub fn render(&mut self, far: &[f32]) {
        self.aec.render(far)
    }

    /// One block of the microphone, with the echo removed, into `out`.
    pub fn capture(&mut self, mic: &[f32], out: &mut [f32]) {
        self.aec.capture(mic, out)
    }

    /// AEC3's own estimates: echo return loss enhancement (dB) and the delay (ms).
    pub fn estimates(&self) -> (f64, i32) {
        let m = self.aec.metrics();
        (m.echo_return_loss_enhancement, m.delay_ms)
    }
}

/// WebRTC's AEC3 configuration, with the changes this runtime makes so that a voice comes
/// through whole while the loudspeaker plays (double talk: the user interrupting the model,
/// which a full-duplex model exists for):
/// - the near end is taken as dominant when the echo left after the linear filters is
///   weaker than 2 times it (WebRTC waits for 0.25) ...
/// - ... for 60 blocks running (240 ms; WebRTC 12): a changed echo path looks like a near
///   voice until the filters follow it, and must not pass as one (at 30 blocks, the
///   volume turned up 10 dB passed as a near voice for most of a second: the echo alone
///   28.6 dB down where WebRTC's defaults take 35.2; at 60, 35.0);
/// - it stops being dominant after 200 ms without it (as in WebRTC), or at once when the echo
///   is 20 times it (WebRTC 10: a breath in the user's voice while the echo plays cut it);
/// - while the near end dominates, the suppressor lets the signal through: its gain stays 1
///   until the echo is 50 times the near end in a band and falls to nothing at 100 times
///   (WebRTC: 1.09 and 1.1 below 2 kHz, 0.1 and 0.3 above); what remains of the echo then is
///   what the linear filters leave, 40-49 dB under the echo in the test rooms.
///
/// Every value is inside the range `EchoCanceller3Config::validate` (sonora's, as WebRTC's)
/// accepts, so validating changes nothing (tested below). `enr_exit_threshold` is one that
/// sonora does not range-check; 20 is finite and within the bound it puts on its sibling
/// `enr_threshold` (0 to 10^6), and above `enr_threshold`, as an exit threshold must be.
/// (An earlier tuning had the band thresholds at 100 and 200, past the 100 that `validate`
/// clamps to: the same figures within 0.1 dB and 0.002 of correlation, and the echo's part
/// in double talk 1.0 and 1.6 dB less far under the echo in two rooms.)
///
/// Measured on the simulated rooms (tests/aec.rs), against WebRTC's defaults: the near
/// voice's correlation with itself in double talk 0.82-0.86 -> 0.92-0.94, its level
/// -2.3..-1.9 -> -0.9..-0.5 dB; the echo alone as much (tested: never more than 1 dB short
/// of the defaults in any room, the volume turned up 10 dB included: 35.0 against 35.2); a
/// moved loudspeaker 21.5 -> 21.8 dB down in the second after the move, the same from then
/// on.
pub fn tuned_config() -> EchoCanceller3Config {
    let mut c = EchoCanceller3Config::default();
    let s = &mut c.suppressor;
    s.dominant_nearend_detection.enr_threshold = 2.0;
    s.dominant_nearend_detection.trigger_threshold = 60;
    s.dominant_nearend_detection.enr_exit_threshold = 20.0;
    for mask in [&mut s.nearend_tuning.mask_lf, &mut s.nearend_tuning.mask_hf] {
        mask.enr_transparent = 50.0;
        mask.enr_suppress = 100.0;
    }
    c
}

/// Samples by which the canceller's output lags its input at `rate`: 8 ms, two AEC3 blocks
/// (the framing of 10 ms frames into 4 ms blocks, and the block the processor holds); at
/// 32 kHz the two-band filter bank's delay on top, and at 48 kHz (processed at 32) the
/// resamplers' too; as measured by the test below.
pub fn latency(rate: u32) -> usize {
    match rate {
        48_000 => 430,
        32_000 => 260,
        _ => 128,
    }
}

/// Cancels the echo of `far` in `mic`, two recordings on one clock at `rate`, block by block
/// as the daemon would; the output is `mic`'s length and time-aligned with it (the
/// canceller's latency taken out).
pub fn cancel(far: &[f32], mic: &[f32], rate: u32) -> Result<Vec<f32>> {
    cancel_with(far, mic, rate, &tuned_config())
}

/// `cancel` with another configuration.
pub fn cancel_with(
    far: &[f32],
    mic: &[f32],
    rate: u32,
    config: &EchoCanceller3Config,
) -> Result<Vec<f32>> {
    let mut aec = EchoCanceller::with_config(rate, config)?;
    let b = aec.block();
    let lag = latency(rate);
    let blocks = (mic.len() + lag).div_ceil(b);
    let mut out = vec![0.0; blocks * b];
    let silence = vec![0.0; b];
    let mut mic_block = vec![0.0; b];
    for (i, chunk) in out.chunks_exact_mut(b).enumerate() {
        let far_block = far.get(i * b..(i + 1) * b).unwrap_or(&silence);
        aec.render(far_block);
        mic_block.fill(0.0);
        let have = mic.get(i * b..).map_or(&[][..], |m| &m[..m.len().min(b)]);
        mic_block[..have.len()].copy_from_slice(have);
        aec.capture(&mic_block, chunk);
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
            let at = |lag: i64| -> f64 {
                (0..n)
                    .map(|i| out[n + i] as f64 * mic[((n + i) as i64 - lag) as usize] as f64)
                    .sum()
            };
            let best = (-200..1200)
                .max_by(|&a, &b| at(a).total_cmp(&at(b)))
                .unwrap();
            assert_eq!(best, 0, "{rate} Hz: the output lags {best} samples");
        }
    }

    #[test]
    fn the_tuning_is_inside_the_ranges_aec3_validates() {
        let tuned = tuned_config();
        let mut validated = tuned.clone();
        // validate() clamps what is out of range and says whether anything was.
        assert!(validated.validate(), "validate() changed the tuning");
        assert_eq!(format!("{validated:?}"), format!("{tuned:?}"));
        // The value validate() does not check (see tuned_config).
        let d = &tuned.suppressor.dominant_nearend_detection;
        assert!(
            d.enr_exit_threshold.is_finite()
                && (0.0..=1e6).contains(&d.enr_exit_threshold)
                && d.enr_exit_threshold > d.enr_threshold,
            "{d:?}"
        );
        // The check can fail: the earlier band threshold of 200 is clamped.
        let mut past = tuned.clone();
        past.suppressor.nearend_tuning.mask_lf.enr_suppress = 200.0;
        assert!(!past.validate());
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
            aec.render(f);
            aec.capture(m, &mut block);
        }
        let (erle, delay) = aec.estimates();
        assert!(erle > 3.0, "ERLE estimate {erle}");
        assert!((26..=34).contains(&delay), "delay {delay}");
    }
}
