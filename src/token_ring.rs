//! The token streams of the step loop and their delays (official `LMGen` cache).
//!
//! 17 streams: text, 8 speaking codebooks (the model's), 8 listening codebooks (the user's).
//! A stream with delay d is written d columns ahead of the step that reads it: the user's
//! acoustic codes of frame t are read at step t+1, next to its semantic code of frame t+1.
//! The model's tokens sampled at step t are read at step t+1 as they are; the acoustic lag
//! of the model's own audio is undone only when output frames are assembled.

use anyhow::{Result, ensure};

/// Streams per column: text + speaking + listening codebooks.
pub const STREAMS: usize = 1 + 2 * CODEBOOKS;
pub const CODEBOOKS: usize = 8;

/// One column: the 17 ids a step reads.
pub type Column = [i32; STREAMS];

/// Ids of the step-0 column, as the original code intended (the official HEAD zeroes it).
#[derive(Clone, Copy, Debug)]
pub struct InitialTokens {
    pub text_wait: i32,
    pub audio_pad: i32,
}

#[derive(Clone)]
pub struct TokenRing {
    delays: [usize; STREAMS],
    max_delay: usize,
    /// Columns t .. t + max_delay + 1, indexed by position modulo their count.
    cols: Vec<Column>,
    /// The current step t.
    step: usize,
}

impl TokenRing {
    pub fn new(delays: &[usize], init: InitialTokens) -> Result<TokenRing> {
        ensure!(
            delays.len() == STREAMS,
            "{} delays, expected {STREAMS}",
            delays.len()
        );
        let max_delay = *delays.iter().max().unwrap();
        ensure!(
            max_delay <= 4,
            "a delay of {max_delay} steps is not supported"
        );
        let mut d = [0; STREAMS];
        d.copy_from_slice(delays);
        let mut ring = TokenRing {
            delays: d,
            max_delay,
            cols: vec![[0; STREAMS]; max_delay + 2],
            step: 0,
        };
        ring.reset(init);
        Ok(ring)
    }

    /// Back to step 0 with the initial column: wait text, pad audio everywhere (the user's
    /// semantic code of frame 0 replaces its pad when it is pushed).
    pub fn reset(&mut self, init: InitialTokens) {
        for c in &mut self.cols {
            c.fill(0);
        }
        let first = &mut self.cols[0];
        first[0] = init.text_wait;
        first[1..].fill(init.audio_pad);
        self.step = 0;
    }

    pub fn step(&self) -> usize {
        self.step
    }

    fn col(&mut self, t: usize) -> &mut Column {
        let n = self.cols.len();
        &mut self.cols[t % n]
    }

    /// Writes the user's codes of the current frame, each at its delay.
    pub fn push_user(&mut self, codes: &[i32; CODEBOOKS]) {
        for (q, &code) in codes.iter().enumerate() {
            let k = 1 + CODEBOOKS + q;
            let t = self.step + self.delays[k];
            self.col(t)[k] = code;
        }
    }

    /// The 17 ids the current step reads.
    pub fn input(&self) -> Column {
        self.cols[self.step % self.cols.len()]
    }

    /// Records the model's tokens of the current step and moves to the next step. Returns
    /// the output frame that became complete (text, then 8 speaking codes with the acoustic
    /// lag undone), if any: none after the first step.
    pub fn push_model(
        &mut self,
        text: i32,
        speak: &[i32; CODEBOOKS],
    ) -> Option<[i32; 1 + CODEBOOKS]> {
        self.step += 1;
        let t = self.step;
        let next = self.col(t);
        next[0] = text;
        next[1..=CODEBOOKS].copy_from_slice(speak);
        if t <= self.max_delay {
            return None;
        }
        let mut out = [0; 1 + CODEBOOKS];
        for (k, o) in out.iter_mut().enumerate() {
            let at = t - self.max_delay + self.delays[k];
            *o = self.cols[at % self.cols.len()][k];
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAYS: [usize; STREAMS] = [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1];
    const INIT: InitialTokens = InitialTokens {
        text_wait: 151665,
        audio_pad: 2048,
    };

    fn user(t: i32) -> [i32; CODEBOOKS] {
        std::array::from_fn(|q| 100 * t + q as i32)
    }

    fn model(t: i32) -> (i32, [i32; CODEBOOKS]) {
        (1000 + t, std::array::from_fn(|q| 10 * t + q as i32))
    }

    #[test]
    fn columns_follow_the_delays() {
        let mut ring = TokenRing::new(&DELAYS, INIT).unwrap();
        let mut outputs = vec![];
        for t in 0..30 {
            ring.push_user(&user(t));
            let col = ring.input();
            if t == 0 {
                // Wait, 8 pads, the real semantic code of frame 0, 7 pads.
                assert_eq!(col[0], 151665);
                assert!(col[1..9].iter().all(|&x| x == 2048));
                assert_eq!(col[9], user(0)[0]);
                assert!(col[10..].iter().all(|&x| x == 2048));
            } else {
                let (text, speak) = model(t - 1);
                assert_eq!(col[0], text);
                assert_eq!(&col[1..9], &speak);
                assert_eq!(col[9], user(t)[0]);
                assert_eq!(&col[10..], &user(t - 1)[1..]);
            }
            let (text, speak) = model(t);
            outputs.push(ring.push_model(text, &speak));
        }
        assert!(outputs[0].is_none());
        for (t, out) in outputs.iter().enumerate().skip(1) {
            let out = out.unwrap();
            // Text and semantic of step t-1, acoustics of step t.
            let (prev_text, prev) = model(t as i32 - 1);
            let (_, cur) = model(t as i32);
            assert_eq!(out[0], prev_text);
            assert_eq!(out[1], prev[0]);
            assert_eq!(&out[2..], &cur[1..]);
        }
    }
}
