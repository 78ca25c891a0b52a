//! Echo cancellation on the daemon's capture path (`audio.echo_cancel = "aec3"`): the
//! playback thread hands every sample it writes to the device, with the time the device will
//! play it (its own delay report), through wait-free rings to the capture thread; there, each
//! 10 ms block of the microphone is cancelled (`crate::echo`) against the far end that was
//! playing when it was captured. What the device reports does not include the air and the
//! converters, nor buffers it does not know of: AEC3's delay estimator finds the rest.
//!
//! Neither thread waits on the other: a far end that is not there (playback stopped, a ring
//! full) is silence to the canceller.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::metrics::Metrics;
use crate::echo::EchoCanceller;

/// When a run of the far end's samples (one write to the device) plays.
#[derive(Clone, Copy)]
struct Stamp {
    /// Index of the run's first sample among the samples passed through the ring.
    index: u64,
    at: Instant,
}

/// How much of the far end the ring holds (the playback device's queue and then some).
const RING: Duration = Duration::from_secs(1);
/// Runs (written periods) the stamp ring holds.
const STAMPS: usize = 256;
/// The far end is taken this much ahead of the capture time, so that the echo always comes
/// after its reference (AEC3 finds positive delays only) despite jitter in the times and a
/// drift up to SLACK.
const LEAD: Duration = Duration::from_millis(40);
/// The far end is re-aligned only when it has drifted this far from the capture time:
/// within it, it runs on unbroken. A jump in the reference costs the canceller seconds while
/// the user talks (offline, in the closed loop's setting, one 10 ms jump left the echo 15 dB
/// under the user's voice instead of 43); AEC3's own delay estimator follows a drift. (At
/// 8 ms, thread jitter on devices without a delay report made one jump in some runs of
/// tests/echo_loop.rs; at 30, none.)
const SLACK: Duration = Duration::from_millis(30);
/// How often the canceller's estimates go to the metrics (blocks of 10 ms).
const REPORT_BLOCKS: u32 = 100;

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
        if self.samples.slots() < samples.len() || self.stamps.slots() == 0 {
            return;
        }
        // A run said to play sooner than the capture side takes the far end (LEAD ahead)
        // would be passed over as late there. That is a device that reports no queue
        // (alsa-lib's `null` and `file` plugins: every run "plays now", however many are
        // written in one go) or one about to run dry: its runs are placed back to back,
        // from LEAD ahead at the soonest. (AEC3 finds the delay that remains.)
        let soon = Instant::now() + LEAD;
        let at = if at >= soon {
            at
        } else {
            self.end.map_or(soon, |end| end.max(soon))
        };
        self.end = Some(at + Duration::from_secs_f64(samples.len() as f64 / self.rate));
        let _ = self.stamps.push(Stamp {
            index: self.written,
            at,
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
    /// The far end is being re-aligned (counted once, when it starts).
    realigning: bool,
    /// The far end has been placed once: its first placement is no re-alignment.
    placed: bool,
    block: usize,
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

/// The far end's two ends, for devices at `rate` (16, 32 or 48 kHz).
pub fn link(rate: u32, metrics: Arc<Metrics>) -> Result<(FarEnd, EchoStage)> {
    let aec = EchoCanceller::new(rate)?;
    let block = aec.block();
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
            realigning: false,
            placed: false,
            block,
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

    /// The far end that plays from `at` on, one block of it, into `self.far`: zeros where
    /// nothing plays. A far end more than SLACK off is re-aligned to 0 offset: one that
    /// played before this block's time is passed over, one that plays later is preceded by
    /// as much silence; either is counted once.
    fn far_block(&mut self, at: Instant) {
        let b = self.block;
        self.far.fill(0.0);
        let mut start = 0;
        if self.gap == 0 {
            let slack = SLACK.as_secs_f64();
            // Passing over late samples can reach a run stamped otherwise: placed again.
            // (Each pass takes samples, so this ends.)
            loop {
                self.update_run();
                let Some(run) = self.run else {
                    return;
                };
                let avail = self.samples.slots();
                if avail == 0 {
                    return;
                }
                // When the front sample plays, against when it should.
                let front_at =
                    run.at + Duration::from_secs_f64((self.front - run.index) as f64 / self.rate);
                let ahead = if front_at >= at {
                    (front_at - at).as_secs_f64()
                } else {
                    -(at - front_at).as_secs_f64()
                };
                if ahead < -slack {
                    // Played before this block's time: passed over.
                    let late = (-ahead * self.rate).round() as usize;
                    self.count_realignment();
                    self.drop_front(late.min(avail));
                    continue;
                }
                if ahead > slack {
                    // Plays later: silence until then.
                    self.count_realignment();
                    self.gap = (ahead * self.rate).round() as usize;
                } else {
                    self.realigning = false;
                }
                self.placed = true;
                break;
            }
        }
        if self.gap > 0 {
            start = self.gap.min(b);
            self.gap -= start;
        }
        let want = b - start;
        if let Ok(chunk) = self.samples.read_chunk(want.min(self.samples.slots())) {
            let (x, y) = chunk.as_slices();
            let n = x.len() + y.len();
            self.far[start..start + x.len()].copy_from_slice(x);
            self.far[start + x.len()..start + n].copy_from_slice(y);
            chunk.commit_all();
            self.front += n as u64;
        }
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
        (v != 0.0).then(|| (v as f64 * 1e6).round() as usize - 1)
    }
    fn ms(x: f64) -> Duration {
        Duration::from_secs_f64(x / 1e3)
    }

    /// The stage's next far-end block for the block that plays at `at`: the index of each
    /// of its samples (None: silence).
    fn block_at(stage: &mut EchoStage, at: Instant) -> Vec<Option<usize>> {
        stage.far_block(at);
        stage.far.iter().map(|&v| index(v)).collect()
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
        let t0 = Instant::now() + Duration::from_secs(1);
        // 100 ms that play from t0, then (a playback xrun) 100 ms that play 45 ms after them.
        far.played(&ramp(0, 1600), t0);
        far.played(&ramp(1600, 1600), t0 + ms(145.0));
        // The first placement, 50 ms later than the first block's time: silence until then,
        // and no re-alignment (nothing was playing before).
        for k in 0..5 {
            let b = block_at(&mut stage, t0 - ms(50.0 - 10.0 * k as f64));
            assert!(b.iter().all(|x| x.is_none()), "block {k}: {b:?}");
        }
        for k in 0..10 {
            let b = block_at(&mut stage, t0 + ms(10.0 * k as f64));
            assert_eq!(b, (160 * k..160 * (k + 1)).map(Some).collect::<Vec<_>>());
        }
        assert_eq!(m.echo_realignments.load(Relaxed), 0);
        // 45 ms of silence (before, 10 ms, and the far end ran on 25 ms off, uncounted) ...
        for k in 10..14 {
            let b = block_at(&mut stage, t0 + ms(10.0 * k as f64));
            assert!(b.iter().all(|x| x.is_none()), "block {k}: {b:?}");
        }
        // ... then the second run from its time on, exactly: at t0 + 145 ms.
        let b = block_at(&mut stage, t0 + ms(140.0));
        assert!(b[..80].iter().all(|x| x.is_none()), "{b:?}");
        assert_eq!(b[80..], (1600..1680).map(Some).collect::<Vec<_>>());
        let b = block_at(&mut stage, t0 + ms(150.0));
        assert_eq!(b, (1680..1840).map(Some).collect::<Vec<_>>());
        assert_eq!(m.echo_realignments.load(Relaxed), 1);
    }

    #[test]
    fn a_far_end_that_played_earlier_is_realigned_to_0_offset_and_counted() {
        let (mut far, mut stage, m) = stage();
        let t0 = Instant::now() + Duration::from_secs(1);
        // 100 ms that play from t0, then 100 ms said to play 45 ms before they end (the
        // device's queue shrank).
        far.played(&ramp(0, 1600), t0);
        far.played(&ramp(1600, 1600), t0 + ms(55.0));
        for k in 0..10 {
            let b = block_at(&mut stage, t0 + ms(10.0 * k as f64));
            assert_eq!(b, (160 * k..160 * (k + 1)).map(Some).collect::<Vec<_>>());
        }
        assert_eq!(m.echo_realignments.load(Relaxed), 0);
        // At t0 + 100 ms the second run has played 45 ms (720 samples): passed over.
        for k in 10..13 {
            let from = 1600 + 720 + 160 * (k - 10);
            let b = block_at(&mut stage, t0 + ms(10.0 * k as f64));
            assert_eq!(
                b,
                (from..from + 160).map(Some).collect::<Vec<_>>(),
                "block {k}"
            );
        }
        assert_eq!(m.echo_realignments.load(Relaxed), 1);
    }

    #[test]
    fn a_drift_within_the_slack_runs_on_unbroken() {
        let (mut far, mut stage, m) = stage();
        let t0 = Instant::now() + Duration::from_secs(1);
        // 20 ms later and then 20 ms earlier than back to back: within 30 ms, not re-aligned.
        far.played(&ramp(0, 1600), t0);
        far.played(&ramp(1600, 1600), t0 + ms(120.0));
        far.played(&ramp(3200, 1600), t0 + ms(200.0));
        for k in 0..30 {
            let b = block_at(&mut stage, t0 + ms(10.0 * k as f64));
            assert_eq!(b, (160 * k..160 * (k + 1)).map(Some).collect::<Vec<_>>());
        }
        assert_eq!(m.echo_realignments.load(Relaxed), 0);
    }
}
