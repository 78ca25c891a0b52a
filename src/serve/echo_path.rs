//! Echo cancellation on the daemon's capture path (`audio.echo_cancel = "aec3"`): the
//! playback thread hands every sample it writes to the device, with the time the device will
//! play it (its own delay report), through wait-free rings to the capture thread; there, each
//! 10 ms block of the microphone is cancelled (`crate::echo`) against the far end that was
//! playing when it was captured. What the device reports does not include the air and the
//! converters, nor buffers it does not know of: AEC3's delay estimator finds the rest.
//!
//! Neither thread waits on the other: a far end that is not there (playback stopped, a ring
//! full) is silence to the canceller.
//!
//! Two clocks. A loudspeaker on another card than the microphone plays at its own crystal's
//! rate (commonly 20-200 ppm off): taken sample for sample, its far end would slide against
//! the echo by that much (at 400 ppm, 19 samples a second at 48 kHz), and AEC3's linear
//! filters, which model a fixed echo path, never converge: its ERLE estimate stays where it
//! starts (0.18 dB) and the suppressor alone stands between the model and its echo (issue
//! 24, reproduced in tests/echo_clocks.rs). So the far end is resampled continuously to the
//! microphone's clock (rubato's sinc resampler, its ratio steered by a slow PI loop on the
//! offset between where the far end is taken and where it plays: the ratio it learns is
//! the ratio between the two devices' sample rates), and it jumps only at a real
//! discontinuity (an xrun, a reopened device), counted.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Result;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Adjustable, Async, FixedAsync, Resampler, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

use super::far_clock::{FarClock, MAX_CORRECTION};
use super::metrics::Metrics;
use crate::echo::EchoCanceller;

/// When a run of the far end's samples (one write to the device) plays.
#[derive(Clone, Copy)]
struct Stamp {
    /// Index of the run's first sample among the samples passed through the ring.
    index: u64,
    at: Instant,
    /// Placed by guess, not following the runs before (a device that reports no queue,
    /// (re)starting): its time is no measurement of the playback clock.
    guessed: bool,
}

/// How much of the far end the ring holds (the playback device's queue and then some).
const RING: Duration = Duration::from_secs(1);
/// Runs (written periods) the stamp ring holds.
const STAMPS: usize = 256;
/// The far end is taken this much ahead of the capture time, so that the echo always comes
/// after its reference (AEC3 finds positive delays only) despite jitter in the times and an
/// offset up to SLACK. No more: the far end must be in the ring when the capture thread
/// takes it, and the playback thread keeps only some 40-60 ms queued ahead of what plays (at
/// 40 ms, a playback thread a few ms late left the far end short whenever the two cards'
/// periods met at the wrong phase, every few seconds on two clocks).
const LEAD: Duration = Duration::from_millis(20);
/// A device that reports no queue has its far end placed this far ahead when it (re)starts,
/// and then back to back until a run comes more than LATE_WRITE after the last has played
/// (a step late with its frame). When it really plays is unknown, and the echo must still
/// come after its reference: these keep the offset between the far end and its echo where
/// it was with the capture side 40 ms ahead and a restart 40 ms ahead (tests/echo_loop.rs'
/// pipes: the echo 47 dB down while the user talks; placed 20 ms later than that, 20 dB).
const PLACE_AHEAD: Duration = Duration::from_millis(20);
const LATE_WRITE: Duration = Duration::from_millis(20);
/// The far end is re-aligned only when it has drifted this far from the capture time:
/// within it, it runs on unbroken. A jump in the reference costs the canceller seconds while
/// the user talks (offline, in the closed loop's setting, one 10 ms jump left the echo 15 dB
/// under the user's voice instead of 43); AEC3's own delay estimator follows a drift. (At
/// 8 ms, thread jitter on devices without a delay report made one jump in some runs of
/// tests/echo_loop.rs.) The far end's clock (`far_clock`) holds the offset within a few ms
/// of where it settled.
const SLACK: Duration = Duration::from_millis(20);
/// How often the canceller's estimates go to the metrics (blocks of 10 ms).
const REPORT_BLOCKS: u32 = 100;
/// The far-end resampler's filter: its cutoff at the band's edge (rubato's automatic one for
/// 64 taps is at 0.79 of it, and the echo above, which a far end without it no longer
/// explains, went through the canceller: tests/echo_loop.rs' full-band voice 20 dB down
/// instead of 47). A ratio within 0.2 % of 1 folds next to nothing back; 128 taps keep the
/// filter's roll-off to the band's top few percent.
const SINC_LEN: usize = 128;
const SINC_CUTOFF: f32 = 1.0;

/// The playback thread's end.
pub struct FarEnd {
    samples: rtrb::Producer<f32>,
    stamps: rtrb::Producer<Stamp>,
    /// Samples passed through the ring so far.
    written: u64,
    rate: f64,
    /// When the last run ends playing, as placed.
    end: Option<Instant>,
}

impl FarEnd {
    /// `samples` (mono, device rate) were handed to the device, the first to play at `at`;
    /// they are taken as the device got them (clamped to full scale).
    /// Never waits: a run that does not fit is dropped whole (the capture side has stopped
    /// taking them; its next run's stamp places it in time again).
    pub fn played(&mut self, samples: &[f32], at: Instant) {
        self.played_at(samples, at, Instant::now());
    }

    /// As `played`, written at `now` (a simulated device's time).
    pub fn played_at(&mut self, samples: &[f32], at: Instant, now: Instant) {
        if self.samples.slots() < samples.len() || self.stamps.slots() == 0 {
            return;
        }
        // A run said to play sooner than the capture side takes the far end (LEAD ahead)
        // would be passed over as late there. That is a device that reports no queue
        // (alsa-lib's `null` and `file` plugins: every run "plays now", however many are
        // written in one go) or one about to run dry: its runs are placed back to back,
        // from PLACE_AHEAD when it (re)starts. (AEC3 finds the delay that remains.)
        let mut guessed = false;
        let at = match self.end {
            _ if at >= now + LEAD => at,
            // Back to back, exactly, while the device has not run dry: pushing runs later
            // whenever a write came late would ratchet the far end ahead of what plays, and
            // the capture side's clock loop would follow it away (seen on tests/echo_clocks.rs'
            // pipes, whose writes wait for the card).
            Some(end) if end + LATE_WRITE >= now => end,
            _ => {
                guessed = true;
                now + PLACE_AHEAD
            }
        };
        self.end = Some(at + Duration::from_secs_f64(samples.len() as f64 / self.rate));
        let _ = self.stamps.push(Stamp {
            index: self.written,
            at,
            guessed,
        });
        if let Ok(mut chunk) = self.samples.write_chunk_uninit(samples.len()) {
            let (a, b) = chunk.as_mut_slices();
            for (dst, &v) in a.iter_mut().chain(b.iter_mut()).zip(samples) {
                dst.write(v.clamp(-1.0, 1.0));
            }
            // SAFETY: every slot of the chunk was written just above.
            unsafe { chunk.commit_all() };
        }
        self.written += samples.len() as u64;
    }
}

/// The capture thread's end: the canceller, fed block by block.
pub struct EchoStage {
    aec: EchoCanceller,
    rate: f64,
    samples: rtrb::Consumer<f32>,
    stamps: rtrb::Consumer<Stamp>,
    /// The run the ring's front sample belongs to.
    run: Option<Stamp>,
    /// Far-end index of the ring's front sample.
    front: u64,
    /// Samples of silence still owed before the front sample (a far end re-aligned to play
    /// later).
    gap: usize,
    /// Far-end samples handed out as silence because they had not come yet, to pass over.
    owed: usize,
    /// The far end is being re-aligned (counted once, when it starts).
    realigning: bool,
    /// The far end has been placed once: its first placement is no re-alignment.
    placed: bool,
    block: usize,
    /// The far end at the microphone's clock: `far_in` (far-end samples, as many as the
    /// resampler asks for) into `far` (one block).
    resampler: Async<f32>,
    far_in: Vec<f32>,
    /// The resampler's delay, in far-end samples: the sample it hands out first is this far
    /// behind the next one it takes.
    resampler_delay: f64,
    /// The far end's samples per microphone sample.
    clock: FarClock,
    /// The microphone's samples cancelled, for the clock: its count is exact, where the
    /// capture times jitter. (Samples a capture xrun lost are not counted: the far end
    /// then jumps against the microphone, and is re-aligned if it must be.)
    mic_samples: u64,
    /// Microphone samples waiting for a whole block, and their capture time.
    mic: Vec<f32>,
    mic_at: Option<Instant>,
    far: Vec<f32>,
    /// Cancelled samples not yet handed on (one block of latency).
    out: Vec<f32>,
    out_len: usize,
    blocks: u32,
    metrics: Arc<Metrics>,
}

/// Where a fresh far-end resampler hands out its first input sample, at ratio 1: an impulse
/// through a copy of it. (rubato's `output_delay` says 32 for 64 taps; its sinc starts a
/// sample sooner.)
fn resampler_delay(params: &SincInterpolationParameters, block: usize) -> Result<f64> {
    let mut probe = Async::<f32>::new_sinc(1.0, 1.0, params, block, 1, FixedAsync::Output)?;
    let mut input = vec![0.0; probe.input_frames_max()];
    input[0] = 1.0;
    let n = probe.input_frames_next();
    let mut out = vec![0.0; block];
    let src = InterleavedSlice::new(&input[..n], 1, n)?;
    let mut dst = InterleavedSlice::new_mut(&mut out[..], 1, block)?;
    probe.process_into_buffer(&src, &mut dst, None)?;
    let peak = (0..block)
        .max_by(|&a, &b| out[a].total_cmp(&out[b]))
        .unwrap_or(0);
    Ok(peak as f64)
}

/// `a - b` in seconds, either sign.
fn seconds_between(a: Instant, b: Instant) -> f64 {
    if a >= b {
        (a - b).as_secs_f64()
    } else {
        -(b - a).as_secs_f64()
    }
}

/// The far end's two ends, for devices at `rate` (16, 32 or 48 kHz).
pub fn link(rate: u32, metrics: Arc<Metrics>) -> Result<(FarEnd, EchoStage)> {
    let aec = EchoCanceller::new(rate)?;
    let block = aec.block();
    let params = SincInterpolationParameters::new(SINC_LEN, WindowFunction::BlackmanHarris2)
        .f_cutoff(SINC_CUTOFF)
        .oversampling_factor(256)
        .interpolation(SincInterpolationType::Cubic);
    let resampler = Async::<f32>::new_sinc(
        1.0,
        1.0 + 2.0 * MAX_CORRECTION,
        &params,
        block,
        1,
        FixedAsync::Output,
    )?;
    let far_in = vec![0.0; resampler.input_frames_max()];
    let resampler_delay = resampler_delay(&params, block)?;
    let (sp, sc) = rtrb::RingBuffer::new((rate as f64 * RING.as_secs_f64()) as usize);
    let (tp, tc) = rtrb::RingBuffer::new(STAMPS);
    metrics.echo_erle_millibel.store(i64::MIN, Relaxed);
    metrics.echo_delay_ms.store(-1, Relaxed);
    metrics.echo_active.store(true, Relaxed);
    Ok((
        FarEnd {
            samples: sp,
            stamps: tp,
            written: 0,
            rate: rate as f64,
            end: None,
        },
        EchoStage {
            aec,
            rate: rate as f64,
            samples: sc,
            stamps: tc,
            run: None,
            front: 0,
            gap: 0,
            owed: 0,
            realigning: false,
            placed: false,
            block,
            resampler,
            far_in,
            resampler_delay,
            clock: FarClock::new(block as f64 / rate as f64),
            mic_samples: 0,
            mic: Vec::with_capacity(block),
            mic_at: None,
            far: vec![0.0; block],
            // One block of silence ahead: every call can hand on as many samples as it took.
            out: vec![0.0; 2 * block + 8192],
            out_len: block,
            blocks: 0,
            metrics,
        },
    ))
}

impl EchoStage {
    /// Cancels the echo in `mic` (mono, device rate; its first sample captured at `at`) and
    /// hands on exactly as many samples, one block (10 ms) late. A canceller error passes
    /// the microphone through.
    pub fn process(&mut self, mic: &[f32], at: Instant, emit: &mut dyn FnMut(&[f32])) {
        let mut rest = mic;
        let mut t = at;
        while !rest.is_empty() {
            if self.mic.is_empty() {
                self.mic_at = Some(t);
            }
            let take = (self.block - self.mic.len()).min(rest.len());
            self.mic.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            t += Duration::from_secs_f64(take as f64 / self.rate);
            if self.mic.len() == self.block {
                self.cancel_block();
            }
        }
        // Whole periods of up to 8192 samples fit; a longer one is handed on in parts.
        let n = mic.len().min(self.out_len);
        emit(&self.out[..n]);
        self.out.copy_within(n..self.out_len, 0);
        self.out_len -= n;
    }

    fn cancel_block(&mut self) {
        let at = self.mic_at.unwrap_or_else(Instant::now) + LEAD;
        self.mic_samples += self.block as u64;
        self.far_block(at);
        let b = self.block;
        let dst = self.out_len..self.out_len + b;
        if dst.end > self.out.len() {
            // Cannot happen with periods within the bound; the block is lost rather than
            // growing a buffer on the audio thread.
            self.mic.clear();
            return;
        }
        self.aec.render(&self.far);
        self.aec.capture(&self.mic, &mut self.out[dst]);
        self.out_len += b;
        self.mic.clear();
        self.blocks += 1;
        if self.blocks > 0 && self.blocks.is_multiple_of(REPORT_BLOCKS) {
            let (erle, delay) = self.aec.estimates();
            let m = &self.metrics;
            m.echo_erle_millibel
                .store((erle * 100.0).round() as i64, Relaxed);
            m.echo_delay_ms.store(delay, Relaxed);
        }
    }

    /// The far end that plays from `at` on, one block of it at the microphone's clock, into
    /// `self.far`: zeros where nothing plays. A far end more than SLACK off is re-aligned
    /// to 0 offset: one that played before this block's time is passed over, one that plays
    /// later is preceded by as much silence; either is counted once. Within SLACK, the
    /// clock loop steers the resampler's ratio so that the offset goes to 0 without a jump.
    fn far_block(&mut self, at: Instant) {
        let want = self.resampler.input_frames_next().min(self.far_in.len());
        self.far_in[..want].fill(0.0);
        let mut start = 0;
        // Samples handed out as silence because they were not there yet (the playback
        // thread woke late): their time has passed, so they are passed over when they come,
        // and the far end keeps its place.
        if self.owed > 0 {
            let n = self.owed.min(self.samples.slots());
            self.drop_front(n);
            self.owed -= n;
        }
        if self.gap == 0 {
            let slack = SLACK.as_secs_f64();
            // Passing over late samples can reach a run stamped otherwise: placed again.
            // (Each pass takes samples, so this ends.)
            loop {
                self.update_run();
                let Some(run) = self.run else {
                    break;
                };
                let avail = self.samples.slots();
                if avail == 0 {
                    break;
                }
                // When the far-end sample handed out first plays (the resampler's delay
                // behind the front sample), against when it should.
                let front = (self.front - run.index) as f64 - self.resampler_delay;
                let ahead = seconds_between(run.at, at) + front / self.rate;
                // The first placement lands at 0 offset, to the sample.
                let limit = if self.placed { slack } else { 0.5 / self.rate };
                if ahead < -limit {
                    // Played before this block's time: passed over.
                    let late = (-ahead * self.rate).round() as usize;
                    self.count_realignment();
                    self.drop_front(late.min(avail));
                    self.resettle();
                    continue;
                }
                if ahead > limit {
                    // Plays later: silence until then.
                    self.count_realignment();
                    self.gap = (ahead * self.rate).round() as usize;
                    self.resettle();
                } else {
                    self.realigning = false;
                    if self.placed {
                        // The far end's sample that plays at `at`, by the stamps.
                        let position = run.index as f64 / self.rate + seconds_between(at, run.at);
                        self.steer(position, ahead);
                    }
                }
                self.placed = true;
                break;
            }
        }
        if self.gap > 0 {
            start = self.gap.min(want);
            self.gap -= start;
        }
        let take = (want - start).min(self.samples.slots());
        if self.placed && take < want - start {
            Metrics::add(&self.metrics.echo_far_short);
            // (A far end gone for longer, stopped, is placed again by its stamps.)
            let most = (SLACK.as_secs_f64() * self.rate) as usize;
            self.owed = (self.owed + want - start - take).min(most);
        }
        if let Ok(chunk) = self.samples.read_chunk(take) {
            let (x, y) = chunk.as_slices();
            let n = x.len() + y.len();
            self.far_in[start..start + x.len()].copy_from_slice(x);
            self.far_in[start + x.len()..start + n].copy_from_slice(y);
            chunk.commit_all();
            self.front += n as u64;
        }
        let b = self.block;
        let resampled = InterleavedSlice::new(&self.far_in[..want], 1, want)
            .ok()
            .zip(InterleavedSlice::new_mut(&mut self.far[..b], 1, b).ok())
            .and_then(|(input, mut output)| {
                self.resampler
                    .process_into_buffer(&input, &mut output, None)
                    .ok()
            });
        if resampled.is_none() {
            self.far.fill(0.0);
        }
    }

    /// The far end was placed anew: the clock continues its fit across the jump.
    fn resettle(&mut self) {
        self.owed = 0;
        self.clock.replaced();
    }

    /// The far end's rate at the microphone's clock, for the resampler, given this block's
    /// far-end position (s of samples) and offset (s; > 0: the far end is taken before it
    /// plays).
    fn steer(&mut self, position: f64, offset: f64) {
        let mic = self.mic_samples as f64 / self.rate;
        let far_per_mic = self.clock.observe(mic, position, offset);
        // rubato's ratio is output (microphone) samples per input (far-end) sample.
        let _ = self.resampler.set_resample_ratio(1.0 / far_per_mic, false);
        let ppb = ((far_per_mic - 1.0) * 1e9).round() as i64;
        self.metrics.echo_far_clock_ppb.store(ppb, Relaxed);
    }

    /// A re-alignment begins: counted, unless it is the far end's first placement or goes on
    /// from the block before.
    fn count_realignment(&mut self) {
        if self.placed && !self.realigning {
            Metrics::add(&self.metrics.echo_realignments);
        }
        self.realigning = true;
    }

    /// The run that the ring's front sample belongs to: the last stamp at or before it.
    fn update_run(&mut self) {
        while let Ok(s) = self.stamps.peek() {
            if s.index > self.front {
                break;
            }
            // A far end placed by guess again: its clock's fit continues across the jump.
            if s.guessed && self.placed {
                self.clock.replaced();
            }
            self.run = Some(*s);
            let _ = self.stamps.pop();
        }
    }

    fn drop_front(&mut self, n: usize) {
        if let Ok(chunk) = self.samples.read_chunk(n) {
            chunk.commit_all();
            self.front += n as u64;
        }
        self.update_run();
    }
}

impl Drop for EchoStage {
    fn drop(&mut self) {
        self.metrics.echo_active.store(false, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 16_000;
    /// Far-end sample `k` is (k + 1) µ: each sample names its index, and none is silence.
    fn ramp(from: usize, n: usize) -> Vec<f32> {
        (from..from + n).map(|k| (k + 1) as f32 * 1e-6).collect()
    }
    fn index(v: f32) -> Option<usize> {
        // (The resampler's filter rings a little around the start of a run.)
        (v.abs() >= 0.5e-6).then(|| (v as f64 * 1e6).round() as usize - 1)
    }
    fn ms(x: f64) -> Duration {
        Duration::from_secs_f64(x / 1e3)
    }

    /// The far-end blocks a stage handed out, and the far-end samples they should hold
    /// (indices; None: silence).
    #[derive(Default)]
    struct Blocks {
        got: Vec<Option<usize>>,
        want: Vec<Option<usize>>,
    }

    impl Blocks {
        /// The stage's next far-end block for the block that plays at `at`.
        fn next(&mut self, stage: &mut EchoStage, at: Instant, want: Vec<Option<usize>>) {
            stage.far_block(at);
            assert_eq!(want.len(), stage.far.len());
            self.got.extend(stage.far.iter().map(|&v| index(v)));
            self.want.extend(want);
        }

        fn silence(&mut self, stage: &mut EchoStage, at: Instant) {
            self.next(stage, at, vec![None; 160]);
        }

        fn samples(&mut self, stage: &mut EchoStage, at: Instant, from: usize) {
            self.next(stage, at, (from..from + 160).map(Some).collect());
        }

        /// Every sample as it should be, within `tolerance` samples, but for the resampler's
        /// start (its delay, half its taps less one, and its filter's ringing) and around a
        /// discontinuity: band-limited, a step rings over the filter's half-length on either
        /// side, and the samples already inside the filter when the discontinuity is found
        /// (its delay) still go out before it. Returns how many were checked.
        fn check(&self, tolerance: usize) -> usize {
            let cut = |i: usize| match (self.want[i], self.want[i + 1]) {
                (None, None) => false,
                (Some(a), Some(b)) => b != a + 1,
                _ => true,
            };
            let n = self.want.len();
            let cuts: Vec<usize> = (0..n - 1).filter(|&i| cut(i)).collect();
            let mut checked = 0;
            let half = SINC_LEN / 2;
            for i in 2 * half..n - half {
                if cuts.iter().any(|&c| i + half + 1 > c && i < c + 2 * half) {
                    continue;
                }
                let ok = match (self.got[i], self.want[i]) {
                    (Some(a), Some(b)) => a.abs_diff(b) <= tolerance,
                    (a, b) => a == b,
                };
                assert!(
                    ok,
                    "sample {i} (block {}): got {:?}, want {:?}",
                    i / 160,
                    &self.got[i.saturating_sub(8)..(i + 8).min(n)],
                    &self.want[i.saturating_sub(8)..(i + 8).min(n)]
                );
                checked += 1;
            }
            checked
        }
    }

    fn stage() -> (FarEnd, EchoStage, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let (far, stage) = link(RATE, metrics.clone()).unwrap();
        assert_eq!(stage.block, 160);
        (far, stage, metrics)
    }

    #[test]
    fn a_far_end_that_plays_later_is_realigned_to_0_offset_and_counted() {
        let (mut far, mut stage, m) = stage();
        let mut b = Blocks::default();
        let t0 = Instant::now() + Duration::from_secs(1);
        // 100 ms that play from t0, then (a playback xrun) 100 ms that play 45 ms after them.
        far.played(&ramp(0, 1600), t0);
        far.played(&ramp(1600, 1600), t0 + ms(145.0));
        // The first placement, 50 ms later than the first block's time: silence until then,
        // and no re-alignment (nothing was playing before).
        for k in 0..5 {
            b.silence(&mut stage, t0 - ms(50.0 - 10.0 * k as f64));
        }
        for k in 0..10 {
            b.samples(&mut stage, t0 + ms(10.0 * k as f64), 160 * k);
        }
        assert_eq!(m.echo_realignments.load(Relaxed), 0);
        // 45 ms of silence (before, 10 ms, and the far end ran on 25 ms off, uncounted) ...
        for k in 10..14 {
            b.silence(&mut stage, t0 + ms(10.0 * k as f64));
        }
        // ... then the second run from its time on, exactly: at t0 + 145 ms.
        let mut want = vec![None; 80];
        want.extend((1600..1680).map(Some));
        b.next(&mut stage, t0 + ms(140.0), want);
        b.samples(&mut stage, t0 + ms(150.0), 1680);
        // (Within a sample: the resampler's delay is a whole number of samples only
        // approximately.)
        assert!(b.check(1) > 1600);
        assert_eq!(m.echo_realignments.load(Relaxed), 1);
    }

    #[test]
    fn a_far_end_that_played_earlier_is_realigned_to_0_offset_and_counted() {
        let (mut far, mut stage, m) = stage();
        let mut b = Blocks::default();
        let t0 = Instant::now() + Duration::from_secs(1);
        // 100 ms that play from t0, then 100 ms said to play 45 ms before they end (the
        // device's queue shrank).
        far.played(&ramp(0, 1600), t0);
        far.played(&ramp(1600, 1600), t0 + ms(55.0));
        for k in 0..10 {
            b.samples(&mut stage, t0 + ms(10.0 * k as f64), 160 * k);
        }
        assert_eq!(m.echo_realignments.load(Relaxed), 0);
        // At t0 + 100 ms the second run has played 45 ms (720 samples): passed over.
        for k in 10..13 {
            let from = 1600 + 720 + 160 * (k - 10);
            b.samples(&mut stage, t0 + ms(10.0 * k as f64), from);
        }
        // (Within a sample: the resampler's delay is a whole number of samples only
        // approximately.)
        assert!(b.check(1) > 1600);
        assert_eq!(m.echo_realignments.load(Relaxed), 1);
    }

    #[test]
    fn a_far_end_that_comes_late_keeps_its_place() {
        let (mut far, mut stage, m) = stage();
        let mut b = Blocks::default();
        let t0 = Instant::now() + Duration::from_secs(1);
        far.played(&ramp(0, 1600), t0);
        for k in 0..10 {
            b.samples(&mut stage, t0 + ms(10.0 * k as f64), 160 * k);
        }
        // The next 100 ms, to play from t0 + 100 ms, come only after the block that needed
        // them was cancelled (the playback thread woke late): that block's far end is
        // silence, and the far end goes on from where it plays, not from where it stopped.
        b.silence(&mut stage, t0 + ms(100.0));
        far.played(&ramp(1600, 1600), t0 + ms(100.0));
        for k in 11..19 {
            b.samples(&mut stage, t0 + ms(10.0 * k as f64), 160 * k);
        }
        assert!(b.check(1) > 2000);
        assert_eq!(m.echo_realignments.load(Relaxed), 0);
        assert!(m.echo_far_short.load(Relaxed) >= 1);
    }

    #[test]
    fn a_drift_within_the_slack_runs_on_unbroken() {
        let (mut far, mut stage, m) = stage();
        let mut b = Blocks::default();
        let t0 = Instant::now() + Duration::from_secs(1);
        // 15 ms later and then 15 ms earlier than back to back: within SLACK (20 ms), not
        // re-aligned.
        far.played(&ramp(0, 1600), t0);
        far.played(&ramp(1600, 1600), t0 + ms(115.0));
        far.played(&ramp(3200, 1600), t0 + ms(200.0));
        for k in 0..30 {
            b.samples(&mut stage, t0 + ms(10.0 * k as f64), 160 * k);
        }
        // Unbroken: every sample follows the one before (the far end's clock fits no rate
        // in these 300 ms).
        assert!(b.check(2) > 4600);
        assert_eq!(m.echo_realignments.load(Relaxed), 0);
    }
}
