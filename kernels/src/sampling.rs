//! Token sampling as the official `sample_token`: repetition penalty over a window of earlier
//! tokens, then argmax (temperature 0 or greedy) or softmax(logits / T) followed by top-p
//! (when p > 0), else top-k (when k > 0), else the whole distribution.
//!
//! The draw is by the inverse of the cumulative distribution with one uniform number per
//! token: the candidates are walked in a fixed order (most probable first for top-p and
//! top-k, by id otherwise) until their cumulative weight reaches u times their total. That is
//! the law of the official `multinomial` (the exponential race draws index i with probability
//! p_i / sum(p), as this does) with one random number per draw instead of one per candidate,
//! so the graphs that sample on a device take one uploaded number per token (`sample_graph`
//! draws the same way, in the same orders).
//!
//! This is the host's sampler: the text token when the backbone runs on the CPU, and the
//! reference the graph sampler is tested against. Logits that would underflow exp (more than
//! 103 below the largest after the temperature) are never exponentiated: at the official
//! text temperature of 0.01 that is nearly the whole vocabulary. Every buffer is sized for
//! the vocabulary at construction: sampling allocates nothing.

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

    /// Whether the penalty changes anything.
    pub fn penalises(&self) -> bool {
        self.repetition_penalty != 1.0 && self.repetition_window > 0
    }

    /// Which candidates a draw walks.
    pub fn mode(&self) -> Mode {
        if self.is_greedy() {
            Mode::Greedy
        } else if self.top_p > 0.0 {
            Mode::TopP
        } else if self.top_k > 0 {
            Mode::TopK
        } else {
            Mode::Plain
        }
    }
}

/// How a token is chosen from the penalised logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Argmax.
    Greedy,
    /// The smallest most-probable set whose mass before each member is at most p.
    TopP,
    /// The k most probable.
    TopK,
    /// Every id.
    Plain,
}

/// exp(x) is 0 in f32 for x below this (its smallest subnormal is e^-103.3).
const EXP_UNDERFLOW: f32 = -104.0;

/// A seeded random source shared by the samplers of one stream.
pub struct SampleRng(ChaCha8Rng);

impl SampleRng {
    pub fn new(seed: u64) -> SampleRng {
        SampleRng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// One uniform number in (0, 1): 24 random bits, centred in their interval, so that
    /// neither 0 nor 1 can come out and every value is exact in f32.
    pub fn uniform(&mut self) -> f32 {
        ((self.0.next_u32() >> 8) as f32 + 0.5) / (1u32 << 24) as f32
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    /// Candidates (ids with a non-zero weight) and their weights exp(l/T - max).
    ids: Vec<u32>,
    weights: Vec<f32>,
    /// Dense probabilities, for `distribution`.
    dense: Vec<f32>,
}

impl Sampler {
    pub fn new(vocab: usize, params: SamplingParams) -> Sampler {
        Sampler {
            params,
            ids: Vec::with_capacity(vocab),
            weights: vec![0.0; vocab],
            dense: vec![0.0; vocab],
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

    /// Picks the next token from `logits` (changed in place by the penalty) with the uniform
    /// number `u` in (0, 1) (unused when greedy). Ties of the argmax go to the lowest id, as
    /// `torch.argmax` does.
    pub fn sample(&mut self, logits: &mut [f32], window: &[i32], u: f32) -> i32 {
        self.penalize(logits, window);
        if self.params.is_greedy() {
            return argmax(logits) as i32;
        }
        let n = self.candidates(logits);
        let total: f32 = self.weights[..n].iter().sum();
        let target = u * total;
        let mut acc = 0f32;
        for k in 0..n {
            acc += self.weights[k];
            if acc >= target {
                return self.ids[k] as i32;
            }
        }
        // Rounding left the target past the sum: the last candidate.
        self.ids[n.saturating_sub(1)] as i32
    }

    /// The distribution `sample` draws from, over the whole vocabulary (zeros outside the
    /// candidates; top-k weights are not renormalised, as in the official code). For tests
    /// and tools; applies the penalty to `logits`.
    pub fn distribution(&mut self, logits: &mut [f32], window: &[i32]) -> &[f32] {
        self.penalize(logits, window);
        self.dense.fill(0.0);
        let n = self.candidates(logits);
        for k in 0..n {
            self.dense[self.ids[k] as usize] = self.weights[k];
        }
        &self.dense
    }

    /// Fills `ids[..n]` and `weights[..n]` with the candidates in the order a draw walks
    /// them, weighted as the official code weighs them (probabilities; renormalised for
    /// top-p); returns n.
    fn candidates(&mut self, logits: &[f32]) -> usize {
        let t = self.params.temperature;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) / t;
        // softmax(l / T): weights of the ids that do not underflow, then the sum.
        self.ids.clear();
        let mut n = 0;
        for (i, &l) in logits.iter().enumerate() {
            let x = l / t - max;
            if x >= EXP_UNDERFLOW {
                self.ids.push(i as u32);
                self.weights[n] = x.exp();
                n += 1;
            }
        }
        let sum: f32 = self.weights[..n].iter().sum();
        for w in &mut self.weights[..n] {
            *w /= sum;
        }
        match self.params.mode() {
            Mode::TopP => self.nucleus(n, self.params.top_p),
            Mode::TopK => self.top_k(n, self.params.top_k as usize),
            Mode::Plain | Mode::Greedy => n,
        }
    }

    /// Sorts the candidates most probable first, equal probabilities by id.
    fn sort(&mut self, n: usize) {
        sort_pairs(&mut self.weights[..n], &mut self.ids[..n]);
    }

    /// Keeps the most probable ids while the mass before each is at most p (the official
    /// mask `cumsum - p_i > top_p`), and renormalises them.
    fn nucleus(&mut self, n: usize, top_p: f32) -> usize {
        // Only ids at or above a threshold can be in the nucleus once the mass at or above
        // the threshold exceeds p: move those to the front, lowering the threshold until it
        // does, then sort just those.
        let max = self.weights[..n].iter().fold(0f32, |m, &p| m.max(p));
        let mut threshold = max * 1e-2;
        let m = loop {
            let mut m = 0;
            let mut mass = 0f32;
            for k in 0..n {
                if self.weights[k] >= threshold {
                    self.weights.swap(m, k);
                    self.ids.swap(m, k);
                    mass += self.weights[m];
                    m += 1;
                }
            }
            if mass > top_p || threshold == 0.0 {
                break m;
            }
            threshold = if threshold < 1e-30 {
                0.0
            } else {
                threshold * 1e-3
            };
        };
        self.sort(m);
        // As torch on the CPU: the cumulative sum accumulates in f64 and is rounded to f32
        // at each element; the mask subtracts in f32.
        let mut acc = 0f64;
        let mut kept = 0;
        for k in 0..m {
            let p = self.weights[k];
            acc += p as f64;
            if acc as f32 - p > top_p {
                break;
            }
            kept += 1;
        }
        let sum: f32 = self.weights[..kept].iter().sum();
        for w in &mut self.weights[..kept] {
            *w /= sum;
        }
        kept
    }

    /// The k most probable candidates, most probable first.
    fn top_k(&mut self, n: usize, k: usize) -> usize {
        let k = k.min(n);
        if k < n {
            select_pairs(&mut self.weights[..n], &mut self.ids[..n], k);
        }
        self.sort(k);
        k
    }
}

/// Sorts `w` descending (ties by ascending id) and permutes `ids` alongside.
fn sort_pairs(w: &mut [f32], ids: &mut [u32]) {
    // Insertion sort for the short lists sampling sorts (a nucleus or a top-k is rarely more
    // than a few hundred ids); a heap sort beyond, so that the worst case stays n log n
    // without allocating.
    let n = w.len();
    let before = |a: (f32, u32), b: (f32, u32)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);
    if n <= 64 {
        for i in 1..n {
            let cur = (w[i], ids[i]);
            let mut j = i;
            while j > 0 && before(cur, (w[j - 1], ids[j - 1])) {
                w[j] = w[j - 1];
                ids[j] = ids[j - 1];
                j -= 1;
            }
            w[j] = cur.0;
            ids[j] = cur.1;
        }
        return;
    }
    // Heap sort: a max-heap under `before` (the root is the candidate that comes last),
    // popped to the end, leaves the list in `before` order.
    let sift = |w: &mut [f32], ids: &mut [u32], mut root: usize, end: usize| {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                break;
            }
            if child + 1 < end && before((w[child], ids[child]), (w[child + 1], ids[child + 1])) {
                child += 1;
            }
            if before((w[root], ids[root]), (w[child], ids[child])) {
                w.swap(root, child);
                ids.swap(root, child);
                root = child;
            } else {
                break;
            }
        }
    };
    for start in (0..n / 2).rev() {
        sift(w, ids, start, n);
    }
    for end in (1..n).rev() {
        w.swap(0, end);
        ids.swap(0, end);
        sift(w, ids, 0, end);
    }
}

/// Moves the k largest of `w` (ties by ascending id) to the front, `ids` alongside
/// (quickselect without allocation).
fn select_pairs(w: &mut [f32], ids: &mut [u32], k: usize) {
    let before = |a: (f32, u32), b: (f32, u32)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);
    let (mut lo, mut hi) = (0usize, w.len());
    while hi - lo > 1 {
        // Median of three as the pivot, moved to the end of the range.
        let mid = lo + (hi - lo) / 2;
        let (a, b, c) = (lo, mid, hi - 1);
        let key = |i: usize| (w[i], ids[i]);
        let m = if before(key(a), key(b)) == before(key(b), key(c)) {
            b
        } else if before(key(b), key(a)) == before(key(a), key(c)) {
            a
        } else {
            c
        };
        w.swap(m, hi - 1);
        ids.swap(m, hi - 1);
        let pivot = (w[hi - 1], ids[hi - 1]);
        let mut store = lo;
        for i in lo..hi - 1 {
            if before((w[i], ids[i]), pivot) {
                w.swap(i, store);
                ids.swap(i, store);
                store += 1;
            }
        }
        w.swap(store, hi - 1);
        ids.swap(store, hi - 1);
        match store.cmp(&k) {
            std::cmp::Ordering::Equal => return,
            std::cmp::Ordering::Greater => hi = store,
            std::cmp::Ordering::Less => lo = store + 1,
        }
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
