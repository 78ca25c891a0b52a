//! Token sampling as the official `sample_token`: repetition penalty over a window of earlier
//! tokens, then argmax (temperature 0 or greedy) or softmax(logits / T) followed by top-p
//! (when p > 0), else top-k (when k > 0), else the whole distribution, drawn with the
//! exponential race (argmax of p / Exp(1)).
//!
//! Every buffer is sized for the vocabulary at construction: sampling allocates nothing.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    pub repetition_penalty: f32,
    /// Earlier tokens the penalty looks at.
    pub repetition_window: usize,
}

impl SamplingParams {
    /// Argmax of the penalised logits, as `use_sampling=False` in the official code.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// A seeded random source shared by the samplers of one stream.
pub struct SampleRng(ChaCha8Rng);

impl SampleRng {
    pub fn new(seed: u64) -> SampleRng {
        SampleRng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// One draw of Exp(1).
    fn exp1(&mut self) -> f32 {
        // 53 random bits, centred in their interval: u is in (0, 1), never 0.
        let u = ((self.0.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -(u.ln()) as f32
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    probs: Vec<f32>,
    order: Vec<u32>,
}

impl Sampler {
    pub fn new(vocab: usize, params: SamplingParams) -> Sampler {
        Sampler {
            params,
            probs: vec![0.0; vocab],
            order: vec![0; vocab],
        }
    }

    /// Divides positive logits by the penalty and multiplies negative ones, once for each
    /// distinct id of `window` (ids outside the vocabulary are ignored).
    pub fn penalize(&self, logits: &mut [f32], window: &[i32]) {
        let p = self.params.repetition_penalty;
        if p == 1.0 {
            return;
        }
        for (i, &id) in window.iter().enumerate() {
            if id < 0 || id as usize >= logits.len() || window[..i].contains(&id) {
                continue;
            }
            let l = &mut logits[id as usize];
            *l = if *l < 0.0 { *l * p } else { *l / p };
        }
    }

    /// Picks the next token from `logits` (changed in place by the penalty). Ties go to the
    /// lowest id, as `torch.argmax` does.
    pub fn sample(&mut self, logits: &mut [f32], window: &[i32], rng: &mut SampleRng) -> i32 {
        self.penalize(logits, window);
        if self.params.is_greedy() {
            return argmax(logits) as i32;
        }
        let n = self.distribution_after_penalty(logits);
        // Exponential race over the candidates: argmax of p / Exp(1) draws index i with
        // probability p_i / sum(p), the same law as torch.multinomial.
        let mut best = (f32::NEG_INFINITY, 0u32);
        for &i in &self.order[..n] {
            let q = self.probs[i as usize] / rng.exp1();
            if q > best.0 {
                best = (q, i);
            }
        }
        best.1 as i32
    }

    /// The distribution `sample` draws from, over the whole vocabulary (zeros outside the
    /// candidates; top-k weights are not renormalised, as in the official code). For tests
    /// and tools; applies the penalty to `logits`.
    pub fn distribution(&mut self, logits: &mut [f32], window: &[i32]) -> &[f32] {
        self.penalize(logits, window);
        let n = self.distribution_after_penalty(logits);
        let mut keep = vec![false; logits.len()];
        for &i in &self.order[..n] {
            keep[i as usize] = true;
        }
        for (p, k) in self.probs.iter_mut().zip(keep) {
            if !k {
                *p = 0.0;
            }
        }
        &self.probs
    }

    /// Fills `probs` with softmax(logits / T) and `order[..n]` with the candidate ids (for
    /// top-p, their probabilities renormalised); returns n.
    fn distribution_after_penalty(&mut self, logits: &[f32]) -> usize {
        let t = self.params.temperature;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) / t;
        let mut sum = 0f32;
        for (p, &l) in self.probs.iter_mut().zip(logits) {
            *p = (l / t - max).exp();
            sum += *p;
        }
        for p in self.probs.iter_mut() {
            *p /= sum;
        }
        if self.params.top_p > 0.0 {
            self.nucleus(self.params.top_p)
        } else if self.params.top_k > 0 {
            self.top_k(self.params.top_k as usize)
        } else {
            for (i, o) in self.order.iter_mut().enumerate() {
                *o = i as u32;
            }
            self.order.len()
        }
    }

    /// Keeps the most probable ids while the mass before each is at most p (the official
    /// mask `cumsum - p_i > top_p`), and renormalises them.
    fn nucleus(&mut self, top_p: f32) -> usize {
        // Only ids at or above a threshold can be in the nucleus once the mass above the
        // threshold exceeds p: lower the threshold until it does, then sort just those.
        let max = self.probs.iter().fold(0f32, |m, &p| m.max(p));
        let mut threshold = max * 1e-2;
        let n = loop {
            let mut n = 0;
            let mut mass = 0f32;
            for (i, &p) in self.probs.iter().enumerate() {
                if p >= threshold {
                    self.order[n] = i as u32;
                    n += 1;
                    mass += p;
                }
            }
            if mass > top_p || threshold == 0.0 {
                break n;
            }
            threshold = if threshold < 1e-30 {
                0.0
            } else {
                threshold * 1e-3
            };
        };
        let probs = &self.probs;
        // Descending probability; equal probabilities keep id order.
        self.order[..n].sort_unstable_by(|&a, &b| {
            probs[b as usize]
                .total_cmp(&probs[a as usize])
                .then(a.cmp(&b))
        });
        // As torch on the CPU: the cumulative sum accumulates in f64 and is rounded to f32
        // at each element; the mask subtracts in f32.
        let mut acc = 0f64;
        let mut kept = 0;
        for &i in &self.order[..n] {
            let p = self.probs[i as usize];
            acc += p as f64;
            if acc as f32 - p > top_p {
                break;
            }
            kept += 1;
        }
        let sum: f32 = self.order[..kept]
            .iter()
            .map(|&i| self.probs[i as usize])
            .sum();
        for &i in &self.order[..kept] {
            self.probs[i as usize] /= sum;
        }
        kept
    }

    fn top_k(&mut self, k: usize) -> usize {
        let k = k.min(self.order.len());
        for (i, o) in self.order.iter_mut().enumerate() {
            *o = i as u32;
        }
        let probs = &self.probs;
        let by_prob = |a: &u32, b: &u32| {
            probs[*b as usize]
                .total_cmp(&probs[*a as usize])
                .then(a.cmp(b))
        };
        if k < self.order.len() {
            self.order.select_nth_unstable_by(k, by_prob);
        }
        k
    }
}

/// Index of the largest value; the first one on ties.
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
