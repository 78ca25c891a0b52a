//! The two ends of the pipeline, whatever the hardware: a capture device hands out 80 ms
//! frames of 24 kHz mono audio at its own pace, a playback device takes them at its own
//! pace. ALSA devices and WAV files (for replay) implement them.

use std::time::Instant;

use super::metrics::Metrics;

/// The pipeline's sample rate: 24 kHz mono.
pub const RATE: u32 = 24_000;
/// Samples per 80 ms frame at 24 kHz.
pub const FRAME: usize = 1920;
pub type Pcm = [f32; FRAME];

pub enum Captured {
    /// `out` holds the next frame of the user's audio.
    Audio,
    /// `out` holds silence standing in for a frame the device could not deliver (device
    /// missing): the timeline goes on.
    Silence,
    /// `out` holds silence for audio an xrun lost, paid back after the fact: the frame would
    /// have been complete at the given (past) time, and its answer is due from then.
    Lost(Instant),
    /// The source has ended (a replayed file).
    End,
}

pub trait CaptureDevice: Send {
    /// Blocks until the next frame is complete and writes it into `out`.
    fn next_frame(&mut self, out: &mut Pcm, m: &Metrics) -> Captured;
}

pub trait PlaybackDevice: Send {
    /// Lets `fill` write the next frame and plays it. The pipeline calls a paced device when
    /// that frame is due, so the device keeps only a small headroom queued ahead of it.
    /// Returns false when the device will take no more (a replay sink that is full).
    fn play_frame(&mut self, fill: &mut dyn FnMut(&mut Pcm), m: &Metrics) -> bool;
    /// Passes over a slot whose time has gone by (more than a frame overdue): a loudspeaker
    /// plays nothing for it, so that the queue ahead of it does not grow; a recording keeps
    /// the slot, silent.
    fn skip_frame(&mut self) {}
    /// How the device takes its frames.
    fn pacing(&self) -> Pacing {
        Pacing::Slots
    }
}

/// How a playback device takes the answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// A loudspeaker: output slot n is played when its answer is due, and an answer late
    /// for its slot is silence; a model too far behind drops the oldest captured frames to
    /// catch up with the present.
    Slots,
    /// A network client: every answer in order, as soon as it is ready (none replaced by
    /// silence for lateness), every captured frame heard (the capture waits for room);
    /// deadlines are still counted from each frame's arrival. A step that has no audio yet
    /// (the first) sends none.
    Stream,
    /// A replay as fast as possible: every answer in order, one per frame, no deadlines.
    Unpaced,
}

/// Sleeps until `t` (no-op when it is past).
pub fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}
