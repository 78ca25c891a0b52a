//! Matching the playback device's clock to the timeline's.
//!
//! The timeline runs on the capture device's clock: frames are due when captured frames
//! complete. A playback device on another card runs on its own crystal, commonly 20–200 ppm
//! apart, so at a fixed rate its buffer drains towards an underrun or fills until frames go
//! out late: a glitch every few minutes. A slow PI loop keeps the device's fill, measured
//! when each frame is due, where it settled after the device started, and steers rubato's
//! `Slip`, which now and then inserts or drops one sample under a short crossfade (inaudible;
//! at ratio 1 it copies). With capture and playback on one card the ratio stays near 1.

use anyhow::Result;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Adjustable, FixedAsync, Resampler, Resizable, Slip};

/// Fill measurements averaged into the reference after the device (re)starts.
const SETTLE_FRAMES: u32 = 16;
/// Smoothing of the measured fill (exponential, per frame): device pointers move in periods.
const SMOOTHING: f64 = 1.0 / 32.0;
/// Loop gains, per frame and relative to the samples of one frame: a critically damped loop
/// with a time constant of 667 frames (53 s), far slower than the smoothing. Crystals drift
/// slowly; a slow loop does not chase the bursts of the FFT resampler or the period steps of
/// the device's pointer.
const PROPORTIONAL: f64 = 0.003;
const INTEGRAL: f64 = PROPORTIONAL * PROPORTIONAL / 4.0;
/// Largest correction: far beyond real crystals, within what `Slip` can do.
const MAX_CORRECTION: f64 = 0.002;

pub struct ClockMatch {
    slip: Slip<f32>,
    /// Device samples per 80 ms frame: the loop's scale.
    frame: usize,
    /// The longest run `process` slips (longer ones pass as they are).
    max_run: usize,
    out: Vec<f32>,
    settling: u32,
    sum: f64,
    reference: f64,
    smoothed: f64,
    /// Sum of the smoothed error (samples × frames): the learned rate, kept across restarts.
    integral: f64,
}

impl ClockMatch {
    /// For `frame` device samples per 80 ms frame, passed to `process` in runs of at most
    /// `max_run` samples.
    pub fn new(frame: usize, max_run: usize) -> Result<ClockMatch> {
        let slip = Slip::<f32>::new(max_run, 1, FixedAsync::Input)?;
        let out = vec![0.0; slip.output_frames_max()];
        Ok(ClockMatch {
            slip,
            frame,
            max_run,
            out,
            settling: SETTLE_FRAMES,
            sum: 0.0,
            reference: 0.0,
            smoothed: 0.0,
            integral: 0.0,
        })
    }

    /// The device (re)started with its headroom: the fill it settles at is measured anew. The
    /// learned rate is kept, as the clocks are the same.
    pub fn restart(&mut self) {
        self.settling = SETTLE_FRAMES;
        self.sum = 0.0;
        self.smoothed = 0.0;
    }

    /// The device's fill when a frame is due: `delay`, the samples the device still has to
    /// play (ALSA's delay), and `waiting`, those not yet written to it.
    pub fn observe(&mut self, delay: i64, waiting: usize) {
        // A device that reports no delay (alsa-lib's `null` and `file` plugins) shows nothing
        // of what it holds, and a running one that was given its headroom holds something:
        // nothing to steer by. What waits alone would mislead, as it wraps at each period.
        if delay <= 0 {
            return;
        }
        let fill = (delay as u64).saturating_add(waiting as u64) as f64;
        // No device buffer holds a second of audio: a reading like that is a glitch.
        if fill > 12.5 * self.frame as f64 {
            return;
        }
        if self.settling > 0 {
            self.sum += fill;
            self.settling -= 1;
            if self.settling == 0 {
                self.reference = self.sum / SETTLE_FRAMES as f64;
            }
            return;
        }
        let error = fill - self.reference;
        self.smoothed += SMOOTHING * (error - self.smoothed);
        let n = self.frame as f64;
        let limit = MAX_CORRECTION * n / INTEGRAL;
        self.integral = (self.integral + self.smoothed).clamp(-limit, limit);
        // A filling device plays slower than the timeline: give it fewer samples.
        let correction = (PROPORTIONAL * self.smoothed + INTEGRAL * self.integral) / n;
        let ratio = 1.0 - correction.clamp(-MAX_CORRECTION, MAX_CORRECTION);
        // Out of range only when clamped, and then it runs at its limit.
        let _ = self.slip.set_resample_ratio(ratio, false);
    }

    /// Output samples per input sample now (1 when the clocks agree).
    pub fn ratio(&self) -> f64 {
        self.slip.resample_ratio()
    }

    /// Appends `x` to `out`, slipping a sample when the ratio calls for it; returns the
    /// samples inserted (> 0) or dropped (< 0). Runs of 4 to `max_run` samples are slipped;
    /// others pass as they are.
    pub fn process(&mut self, x: &[f32], out: &mut Vec<f32>) -> i64 {
        if x.len() < 4 || x.len() > self.max_run {
            out.extend_from_slice(x);
            return 0;
        }
        match self.slip_run(x) {
            Some(n) => {
                out.extend_from_slice(&self.out[..n]);
                n as i64 - x.len() as i64
            }
            None => {
                out.extend_from_slice(x);
                0
            }
        }
    }

    /// Slips one run into `self.out`; the samples it produced, or None if rubato refused it.
    fn slip_run(&mut self, x: &[f32]) -> Option<usize> {
        // Sets the run's length: no allocation, within the size it was made for.
        self.slip.set_chunk_size(x.len()).ok()?;
        let input = InterleavedSlice::new(x, 1, x.len()).ok()?;
        let frames = self.out.len();
        let mut output = InterleavedSlice::new_mut(&mut self.out[..], 1, frames).ok()?;
        let (_, produced) = self
            .slip
            .process_into_buffer(&input, &mut output, None)
            .ok()?;
        Some(produced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Run {
        /// Lowest and highest fill after the first two minutes.
        lo: f64,
        hi: f64,
        /// Mean ratio over the same time, and the largest departure from it.
        mean: f64,
        swing: f64,
        dry: bool,
    }

    /// A playback device on its own clock: it plays `rate × (1 + ppm)` samples a second, and
    /// reports its fill as ALSA does at worst, rounded up to whole periods (its pointer moves
    /// by periods).
    fn run(ppm: f64, control: bool, minutes: usize) -> Run {
        let (chunk, period) = (3840usize, 960.0f64);
        let mut clock = ClockMatch::new(chunk, 4384).unwrap();
        // Runs as the FFT resampler hands them out at 24 → 48 kHz: 3836 samples, and every
        // 137th frame 4384 (3840 a frame on average).
        let (short, long) = (vec![0.25f32; 3836], vec![0.25f32; 4384]);
        let mut out = Vec::with_capacity(2 * chunk);
        // Queued samples when frame n is due, just before it is written: the headroom.
        let mut fill = 2.0 * period;
        let mut r = Run {
            lo: f64::MAX,
            hi: f64::MIN,
            mean: 0.0,
            swing: 0.0,
            dry: false,
        };
        let (frames, settled) = (minutes * 750, 2 * 750);
        let mut ratios = Vec::with_capacity(frames);
        for n in 0..frames {
            if control {
                clock.observe(((fill / period).ceil() * period) as i64, 0);
            }
            out.clear();
            clock.process(if n % 137 == 136 { &long } else { &short }, &mut out);
            fill += out.len() as f64 - chunk as f64 * (1.0 + ppm * 1e-6);
            r.dry |= fill < 0.0;
            if n >= settled {
                r.lo = r.lo.min(fill);
                r.hi = r.hi.max(fill);
                ratios.push(clock.ratio());
            }
        }
        r.mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        r.swing = ratios
            .iter()
            .map(|x| (x - r.mean).abs())
            .fold(0.0, f64::max);
        r
    }

    #[test]
    fn a_device_on_another_clock_keeps_its_fill() {
        for ppm in [-500.0, -120.0, 0.0, 80.0, 300.0, 500.0] {
            let r = run(ppm, true, 30);
            assert!(!r.dry, "{ppm} ppm: ran dry");
            // Within a period and a quarter of the 2-period headroom it started with (the
            // measure is only good to a period).
            assert!(
                r.lo > 720.0 && r.hi < 3120.0,
                "{ppm} ppm: fill {}..{}",
                r.lo,
                r.hi
            );
            assert!(
                (r.mean - (1.0 + ppm * 1e-6)).abs() < 20e-6,
                "{ppm} ppm: mean ratio {}",
                r.mean
            );
            // The period-rounded measure makes it hunt a little, never far.
            assert!(r.swing < 500e-6, "{ppm} ppm: ratio swings {}", r.swing);
        }
    }

    #[test]
    fn without_the_loop_the_same_device_runs_dry() {
        // What the loop is for: 300 ppm eats two 20 ms periods of headroom in under 3 minutes.
        let r = run(300.0, false, 5);
        assert!(r.dry);
        assert_eq!(r.mean, 1.0);
    }

    #[test]
    fn a_device_that_reports_no_delay_is_left_alone() {
        // What waits for a whole period rises and wraps; with no delay reported, that is all
        // there would be to see, and it must not move the ratio.
        let mut clock = ClockMatch::new(3840, 4384).unwrap();
        let frame = vec![0.25f32; 3836];
        let mut out = vec![];
        let mut waiting = 0usize;
        for _ in 0..20_000 {
            clock.observe(0, waiting);
            out.clear();
            assert_eq!(clock.process(&frame, &mut out), 0);
            waiting = (waiting + out.len()) % 960;
        }
        assert_eq!(clock.ratio(), 1.0);
    }

    #[test]
    fn absurd_readings_are_ignored() {
        // A steady device, with a reading now and then that no buffer could hold.
        let mut clock = ClockMatch::new(3840, 4384).unwrap();
        for n in 0..2_000 {
            match n % 7 {
                3 => clock.observe(i64::MAX, usize::MAX),
                5 => clock.observe(48_001, 0),
                _ => clock.observe(1920, 0),
            }
        }
        assert_eq!(clock.ratio(), 1.0);
    }

    #[test]
    fn at_ratio_one_frames_pass_unchanged() {
        let mut clock = ClockMatch::new(3840, 4384).unwrap();
        let frame: Vec<f32> = (0..3836).map(|i| (i as f32 * 0.01).sin()).collect();
        let mut out = vec![];
        for _ in 0..40 {
            clock.observe(1920, 0);
            out.clear();
            assert_eq!(clock.process(&frame, &mut out), 0);
            assert_eq!(out, frame);
        }
    }
}
