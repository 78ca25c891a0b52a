//! The far end's clock, as the microphone's clock sees it: how many far-end samples play
//! per microphone sample, for the echo path's resampler (`echo_path`).
//!
//! A loudspeaker on another card than the microphone plays at its own crystal's rate. Every
//! 10 ms block, the echo path knows which far-end sample plays when the block was captured
//! (from the playback device's delay reports and the capture device's times): a position
//! that advances by the two clocks' ratio per microphone sample, under the jitter of the
//! times (thread wake-ups, reports that move by periods: milliseconds). The ratio is the
//! slope of that position against the microphone's sample count, fitted by least squares
//! with exponential forgetting: a measurement, not a loop, so it does not overshoot while it
//! learns, and the canceller's linear filters, which model a fixed echo path, see the far end
//! slide by only the fit's error (a few ppm once it has seen some seconds).
//!
//! Slopes alone let the offset between where the far end is taken and where it plays wander
//! by their error: a weak proportional term holds it where it settled once the ratio was
//! learned (a fixed offset is a delay, which AEC3 finds; a moving one is what it cannot
//! follow). It corrects by the offset's error over PHASE_S, so a 1 ms error moves the ratio
//! by 17 ppm at most.

/// Forgetting of the fit (s): crystals drift with temperature over minutes; a longer memory
/// passes on less of the times' jitter (with 1 ms of jitter, the slope's error is under 1
/// ppm at this window).
const FORGET_S: f64 = 120.0;
/// The fitted slope is used once its standard error (from the fit's residuals) is under
/// this, and at least LEARN_S of positions were seen; before, the ratio stays as it was (1
/// at start). With 1 ms of white jitter that takes some 6 s; with 0.1 ms, LEARN_S.
const LEARN_ERROR: f64 = 10e-6;
const LEARN_S: f64 = 1.0;
/// The offset is averaged over this long after the ratio is learned, and after each
/// re-placement, to find where it settled.
const SETTLE_S: f64 = 2.0;
/// Smoothing of the measured offset (s).
const SMOOTH_S: f64 = 2.0;
/// The proportional term's time constant (s).
const PHASE_S: f64 = 60.0;
/// The largest difference between the clocks: far beyond real crystals (README: 20-200 ppm).
pub const MAX_CORRECTION: f64 = 0.002;

pub struct FarClock {
    /// Seconds of one block at the nominal rate.
    dt: f64,
    /// Forgetting per block.
    keep: f64,
    /// The fit: x is the microphone's time (s of samples), y the far end's position (s of
    /// samples) minus x; weights, means and
    /// co-moments, updated incrementally (no sums of large squares).
    x: f64,
    w: f64,
    mx: f64,
    my: f64,
    cxx: f64,
    cxy: f64,
    cyy: f64,
    /// The slope is in use.
    learned: bool,
    /// Seconds of positions fitted.
    seen: f64,
    /// Added to positions after a re-placement, so that they continue the fitted line: the
    /// mean of their distances from it over SETTLE_S (one position's jitter would shift the
    /// whole line), during which they are not fitted.
    y_shift: f64,
    rebase_left: f64,
    rebase_sum: f64,
    rebase_n: u32,
    /// Smoothed offset (s), where it settled (None while settling), and the settling sum.
    offset: f64,
    reference: Option<f64>,
    settle_sum: f64,
    settle_left: f64,
    ratio: f64,
}

impl FarClock {
    /// For blocks of `dt` seconds.
    pub fn new(dt: f64) -> FarClock {
        FarClock {
            dt,
            keep: (-dt / FORGET_S).exp(),
            x: 0.0,
            w: 0.0,
            mx: 0.0,
            my: 0.0,
            cxx: 0.0,
            cxy: 0.0,
            cyy: 0.0,
            learned: false,
            seen: 0.0,
            y_shift: 0.0,
            rebase_left: 0.0,
            rebase_sum: 0.0,
            rebase_n: 0,
            offset: 0.0,
            reference: None,
            settle_sum: 0.0,
            settle_left: SETTLE_S,
            ratio: 1.0,
        }
    }

    /// Far-end samples per microphone sample now.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// The far end was placed anew (a re-alignment: its position jumped): the positions
    /// from here on continue the fitted line, and the offset settles again.
    pub fn replaced(&mut self) {
        if self.seen > 0.0 {
            self.rebase_left = SETTLE_S;
            self.rebase_sum = 0.0;
            self.rebase_n = 0;
        }
        self.reference = None;
        self.settle_sum = 0.0;
        self.settle_left = SETTLE_S;
    }

    /// One block: `mic`, the microphone's time when it was captured (s of samples since any
    /// fixed origin), `position`, the far end's sample that plays then (s of samples at the
    /// nominal rate, from any fixed origin), and `offset`, how much later than that the
    /// far-end sample handed out plays (s). Returns the ratio. Blocks without a far end are
    /// passed over.
    pub fn observe(&mut self, mic: f64, position: f64, offset: f64) -> f64 {
        self.x = mic;
        let slope = self.fit(position - self.x);
        let base = match slope {
            Some(s) => 1.0 + s,
            None => self.ratio,
        };
        // The offset's reference is taken once the slope is used: before, it moves.
        let mut correction = 0.0;
        if slope.is_some() {
            match self.reference {
                None => {
                    self.settle_sum += offset * self.dt;
                    self.settle_left -= self.dt;
                    if self.settle_left <= 0.0 {
                        let r = self.settle_sum / SETTLE_S;
                        self.reference = Some(r);
                        self.offset = r;
                    }
                }
                Some(r) => {
                    self.offset += (offset - self.offset) * self.dt / SMOOTH_S;
                    // Taken too early (the far end handed out plays later than it should):
                    // fewer far-end samples per microphone sample.
                    correction = -(self.offset - r) / PHASE_S;
                }
            }
        }
        self.ratio = (base + correction).clamp(1.0 - MAX_CORRECTION, 1.0 + MAX_CORRECTION);
        self.ratio
    }

    /// Adds (x, y) to the fit; the slope once LEARN_S of positions were seen.
    fn fit(&mut self, y: f64) -> Option<f64> {
        let x = self.x;
        if self.rebase_left > 0.0 {
            // Continue the line: the jump is the far end's, not the clocks'.
            let predicted = self.my + self.slope().unwrap_or(0.0) * (x - self.mx);
            self.rebase_sum += predicted - y;
            self.rebase_n += 1;
            self.rebase_left -= self.dt;
            if self.rebase_left <= 0.0 {
                self.y_shift = self.rebase_sum / self.rebase_n as f64;
            }
            return self.learned.then(|| self.slope()).flatten();
        }
        let y = y + self.y_shift;
        // West's incremental weighted update, with forgetting.
        self.w = self.w * self.keep + 1.0;
        self.cxx *= self.keep;
        self.cxy *= self.keep;
        self.cyy *= self.keep;
        let (dx, dy) = (x - self.mx, y - self.my);
        self.mx += dx / self.w;
        self.my += dy / self.w;
        self.cxx += dx * (x - self.mx);
        self.cxy += dx * (y - self.my);
        self.cyy += dy * (y - self.my);
        self.seen += self.dt;
        if !self.learned && self.seen >= LEARN_S {
            self.learned = self.slope_error().is_some_and(|e| e <= LEARN_ERROR);
        }
        if !self.learned {
            return None;
        }
        self.slope()
    }

    /// The slope's standard error, from the residuals' variance.
    fn slope_error(&self) -> Option<f64> {
        (self.cxx > 0.0 && self.w > 2.0).then(|| {
            let residual = (self.cyy - self.cxy * self.cxy / self.cxx).max(0.0) / (self.w - 2.0);
            (residual / self.cxx).sqrt()
        })
    }

    fn slope(&self) -> Option<f64> {
        (self.cxx > 0.0).then(|| (self.cxy / self.cxx).clamp(-MAX_CORRECTION, MAX_CORRECTION))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator: uniform in [-1, 1).
    struct Jitter(u64);
    impl Jitter {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
    }

    /// The far end `ppm` fast of the microphone, its positions seen through `jitter_ms` of
    /// uniform jitter, steered by the ratio the clock gives; returns (s, ratio - 1 in ppm,
    /// offset in ms) every block.
    fn run(ppm: f64, jitter_ms: f64, seconds: f64, jump_at: Option<f64>) -> Vec<(f64, f64, f64)> {
        let dt = 0.01;
        let mut clock = FarClock::new(dt);
        let mut rng = Jitter(7);
        let truth = 1.0 + ppm * 1e-6;
        // Where the far end handed out is (s of far-end samples), and where it plays.
        let (mut taken, mut playing) = (0.0, 0.0);
        let mut out = vec![];
        let mut t = 0.0;
        while t < seconds {
            t += dt;
            taken += clock.ratio() * dt;
            playing += truth * dt;
            if jump_at.is_some_and(|j| (t - j).abs() < dt / 2.0) {
                // An xrun: the far end plays 50 ms later from here; re-aligned to 0.
                playing -= 0.05;
                taken = playing;
                clock.replaced();
            }
            let noise = jitter_ms * 1e-3 * rng.next();
            let position = playing + noise;
            let offset = taken - position;
            let r = clock.observe(t, position, offset);
            out.push((t, (r - 1.0) * 1e6, offset * 1e3));
        }
        out
    }

    #[test]
    fn the_ratio_is_learned_without_overshoot_and_the_offset_held() {
        for ppm in [-400.0, -150.0, 0.0, 150.0, 400.0] {
            let trace = run(ppm, 1.0, 600.0, None);
            // Never beyond the truth by more than the fit's error when it is first used
            // (3 standard errors).
            let over = trace
                .iter()
                .map(|&(_, r, _)| if ppm >= 0.0 { r - ppm } else { ppm - r })
                .fold(f64::MIN, f64::max);
            assert!(
                over < 3.0 * LEARN_ERROR * 1e6,
                "{ppm} ppm: overshot by {over:.1} ppm"
            );
            // From 10 s, within 15 ppm; from 60 s, within 3.
            for &(t, r, _) in &trace {
                let bound = if t >= 60.0 {
                    3.0
                } else if t >= 10.0 {
                    15.0
                } else {
                    continue;
                };
                assert!((r - ppm).abs() < bound, "{ppm} ppm: {r:.1} at {t:.2} s");
            }
            // The offset (its mean over each second) stays within a few ms in all (400 ppm
            // for the seconds before the slope is used), and from 60 s moves by under 0.3 ms
            // a minute: a drift AEC3 follows.
            let means: Vec<f64> = trace
                .chunks_exact(100)
                .map(|c| c.iter().map(|s| s.2).sum::<f64>() / 100.0)
                .collect();
            let spread = means.iter().cloned().fold(f64::MIN, f64::max)
                - means.iter().cloned().fold(f64::MAX, f64::min);
            assert!(
                spread < 5.0,
                "{ppm} ppm: the offset spread over {spread:.2} ms"
            );
            for w in means[60..].windows(61) {
                let moved = (w[60] - w[0]).abs();
                assert!(
                    moved < 0.3,
                    "{ppm} ppm: the offset moved {moved:.2} ms in a minute"
                );
            }
        }
    }

    #[test]
    fn a_replacement_keeps_the_learned_ratio() {
        let trace = run(150.0, 1.0, 120.0, Some(60.0));
        for &(t, r, _) in trace.iter().filter(|s| s.0 > 60.0) {
            assert!((r - 150.0).abs() < 5.0, "{r:.1} ppm at {t:.2} s");
        }
    }
}
