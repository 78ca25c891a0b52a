//! What the echo tests share: the small room a kiosk's loudspeaker and microphone sit in,
//! and a capture device that keeps what it hands to the model.

use flm_edge::serve::device::{CaptureDevice, Captured, Pcm};
use flm_edge::serve::metrics::Metrics;

/// A small room at `rate`: the direct sound 8 cm away (0.23 ms), a few early reflections and
/// a tail decaying 60 dB in 0.2 s, cut at 50 ms (what a kiosk's enclosure and a near wall
/// give; kept short, as the real-time tests convolve with it beside the model). Peak 1.
pub fn kiosk_room(rate: u32) -> Vec<f32> {
    let scale = rate as f64 / 48_000.0;
    let at = |i: usize| (i as f64 * scale).round() as usize;
    let n = rate as usize / 20;
    let mut h = vec![0.0f32; n];
    let mut seed = 11u32;
    let mut noise = || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
    };
    h[at(11)] = 1.0;
    for (i, g) in [(70, -0.35), (160, 0.25), (290, -0.18), (450, 0.12)] {
        h[at(i)] += g;
    }
    let decay = (-6.9 / (0.2 * rate as f64)) as f32;
    for (i, v) in h.iter_mut().enumerate().skip(at(500)) {
        *v += 0.08 * noise() * (decay * i as f32).exp();
    }
    h
}

/// A capture device that keeps a copy of every frame it hands to the model.
pub struct Recorded<C> {
    pub dev: C,
    pub pcm: Vec<f32>,
}

impl<C: CaptureDevice> CaptureDevice for Recorded<C> {
    fn next_frame(&mut self, out: &mut Pcm, m: &Metrics) -> Captured {
        let kind = self.dev.next_frame(out, m);
        self.pcm.extend_from_slice(out);
        kind
    }
}
