//! WebRTC's two-band filter bank for 32 kHz audio: a quadrature mirror filter bank of two
//! all-pass polyphase branches, each three first-order all-pass sections (the coefficients
//! of WebRTC's signal processing library). Analysis turns a 10 ms frame of 320 samples into
//! a 0-8 kHz and an 8-16 kHz band of 160 samples each; synthesis joins them again, with the
//! magnitude kept whole (power complementary) and a small fixed delay. Samples are in the
//! "float S16" scale; synthesis clamps to it, as WebRTC does.

/// Samples per band in a 10 ms frame.
pub const BAND: usize = 160;
/// Samples in a full-band 10 ms frame at 32 kHz.
pub const FRAME: usize = 2 * BAND;

const BRANCH_1: [f32; 3] = [0.097_930_91, 0.564_300_54, 0.873_733_5];
const BRANCH_2: [f32; 3] = [0.325_515_75, 0.748_626_7, 0.961_456_3];

/// Three first-order all-pass sections in cascade: y[n] = x[n-1] + a (x[n] - y[n-1]).
#[derive(Clone, Copy, Default)]
struct AllPass {
    /// The previous input and output of each section.
    last: [(f32, f32); 3],
}

impl AllPass {
    fn run(&mut self, coefficients: &[f32; 3], x: &[f32; BAND], y: &mut [f32; BAND]) {
        for (&input, out) in x.iter().zip(y.iter_mut()) {
            let mut v = input;
            for (a, (x1, y1)) in coefficients.iter().zip(self.last.iter_mut()) {
                let w = *x1 + a * (v - *y1);
                *x1 = v;
                *y1 = w;
                v = w;
            }
            *out = v;
        }
    }
}

/// One direction's state: analysis or synthesis.
#[derive(Clone, Copy, Default)]
struct Branches {
    one: AllPass,
    two: AllPass,
}

/// The two-band filter bank, with the state of both directions.
#[derive(Default)]
pub struct TwoBands {
    analysis: Branches,
    synthesis: Branches,
}

impl TwoBands {
    /// Splits a 32 kHz frame into its low and high band.
    pub fn analysis(
        &mut self,
        frame: &[f32; FRAME],
        low: &mut [f32; BAND],
        high: &mut [f32; BAND],
    ) {
        let (mut even, mut odd) = ([0.0; BAND], [0.0; BAND]);
        for (i, pair) in frame.chunks_exact(2).enumerate() {
            even[i] = pair[0];
            odd[i] = pair[1];
        }
        let (mut one, mut two) = ([0.0; BAND], [0.0; BAND]);
        self.analysis.one.run(&BRANCH_1, &odd, &mut one);
        self.analysis.two.run(&BRANCH_2, &even, &mut two);
        for i in 0..BAND {
            low[i] = (one[i] + two[i]) * 0.5;
            high[i] = (one[i] - two[i]) * 0.5;
        }
    }

    /// Joins a low and a high band into a 32 kHz frame.
    pub fn synthesis(&mut self, low: &[f32; BAND], high: &[f32; BAND], frame: &mut [f32; FRAME]) {
        let (mut sum, mut difference) = ([0.0; BAND], [0.0; BAND]);
        for i in 0..BAND {
            sum[i] = low[i] + high[i];
            difference[i] = low[i] - high[i];
        }
        let (mut one, mut two) = ([0.0; BAND], [0.0; BAND]);
        self.synthesis.one.run(&BRANCH_2, &sum, &mut one);
        self.synthesis.two.run(&BRANCH_1, &difference, &mut two);
        for (i, pair) in frame.chunks_exact_mut(2).enumerate() {
            pair[0] = two[i].clamp(-32_768.0, 32_767.0);
            pair[1] = one[i].clamp(-32_768.0, 32_767.0);
        }
    }
}
