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
    /// nothing plays.
    fn far_block(&mut self, at: Instant) {
        let b = self.block;
        self.far.fill(0.0);
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
        let slack = SLACK.as_secs_f64();
        let mut start = 0;
        if ahead < -slack {
            // Played before this block's time: passed over.
            let late = (-ahead * self.rate).round() as usize;
            self.drop_front(late.min(avail));
            Metrics::add(&self.metrics.echo_realignments);
        } else if ahead > slack {
            // Plays later: silence until then (counted once, in the block where it starts).
            start = ((ahead * self.rate).round() as usize).min(b);
            if start < b {
                Metrics::add(&self.metrics.echo_realignments);
            }
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
