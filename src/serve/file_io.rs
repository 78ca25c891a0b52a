//! WAV replay through the real-time pipeline (`serve --input-wav --output-wav`): the input
//! file stands for the microphone, the output buffer for the loudspeaker, both on one clock.
//! Output slot n holds the answer to input frame n (or silence if it came too late), so the
//! output has the input's length and is time-aligned with it.

use std::time::{Duration, Instant};

use super::device::{CaptureDevice, Captured, FRAME, Pacing, Pcm, PlaybackDevice, sleep_until};
use super::metrics::Metrics;

pub const FRAME_TIME: Duration = Duration::from_millis(80);

pub struct WavCapture {
    pcm: Vec<f32>,
    frame: usize,
    /// Start of the replay when paced at real time.
    origin: Option<Instant>,
}

impl WavCapture {
    pub fn new(pcm: Vec<f32>, origin: Option<Instant>) -> WavCapture {
        WavCapture {
            pcm,
            frame: 0,
            origin,
        }
    }

    pub fn frames(&self) -> usize {
        self.pcm.len().div_ceil(FRAME)
    }
}

impl CaptureDevice for WavCapture {
    fn next_frame(&mut self, out: &mut Pcm, _m: &Metrics) -> Captured {
        let start = self.frame * FRAME;
        if start >= self.pcm.len() {
            return Captured::End;
        }
        // Frame n is complete at the end of its 80 ms.
        if let Some(o) = self.origin {
            sleep_until(o + FRAME_TIME * (self.frame as u32 + 1));
        }
        let end = (start + FRAME).min(self.pcm.len());
        out[..end - start].copy_from_slice(&self.pcm[start..end]);
        out[end - start..].fill(0.0);
        self.frame += 1;
        Captured::Audio
    }
}

pub struct WavPlayback {
    out: Vec<f32>,
    slot: usize,
    slots: usize,
    paced: bool,
}

impl WavPlayback {
    /// A sink for `frames` frames; paced (slots taken when due) when `origin` is given.
    pub fn new(frames: usize, origin: Option<Instant>) -> WavPlayback {
        // Written (not calloc'ed) so that every page is resident from the start: memory use is
        // set when the replay starts, not grown while it runs.
        let mut out = Vec::with_capacity(frames * FRAME);
        out.resize(frames * FRAME, 0.0);
        WavPlayback {
            out,
            slot: 0,
            slots: frames,
            paced: origin.is_some(),
        }
    }

    pub fn into_pcm(self) -> Vec<f32> {
        self.out
    }
}

impl PlaybackDevice for WavPlayback {
    fn play_frame(&mut self, fill: &mut dyn FnMut(&mut Pcm), _m: &Metrics) -> bool {
        if self.slot >= self.slots {
            return false;
        }
        let dst: &mut Pcm = (&mut self.out[self.slot * FRAME..(self.slot + 1) * FRAME])
            .try_into()
            .expect("frame-sized slot");
        fill(dst);
        self.slot += 1;
        true
    }

    fn skip_frame(&mut self) {
        self.slot = (self.slot + 1).min(self.slots);
    }

    fn pacing(&self) -> Pacing {
        if self.paced {
            Pacing::Slots
        } else {
            Pacing::Unpaced
        }
    }
}
