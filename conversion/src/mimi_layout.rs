//! Mimi's conv weights as the runtime multiplies them, in one place for the converter (which
//! stores them so under a quantized `--mimi-dtype`) and the loader (which re-lays f32 and f16
//! files out itself).
//!
//! The runtime keeps signals channel-fastest, so a stride-s conv with K = n·s taps is n
//! matmuls over the signal viewed as blocks of s samples, and a transposed conv (K = 2s) is
//! two matmuls, the second delayed by one span. Each matmul's weight is a contiguous matrix
//! whose rows are what one output value sums over: these are the rows a quantized type
//! blocks, which the checkpoint's layout (rows of K taps: 3 to 16 values) cannot be.

/// A conv's kernel, stride, and input and output channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv {
    pub k: usize,
    pub s: usize,
    pub ic: usize,
    pub oc: usize,
}

/// Name suffix of a conv's taps (`{conv}.taps`) and of a transposed conv's halves.
pub const TAPS: &str = "taps";
pub const HALVES: &str = "halves";

impl Conv {
    /// ggml shape of the taps: K/s matrices of [IC·s, OC].
    pub fn taps_ne(self) -> [u64; 3] {
        [
            (self.ic * self.s) as u64,
            self.oc as u64,
            (self.k / self.s) as u64,
        ]
    }

    /// ggml shape of a transposed conv's (K = 2s) halves: two matrices of [IC, s·OC].
    pub fn halves_ne(self) -> [u64; 3] {
        [self.ic as u64, (self.s * self.oc) as u64, 2]
    }

    /// For each element of the taps in order, its index in the conv's weight (ggml
    /// [K, IC, OC], PyTorch [OC, IC, K]). Matrix j holds taps j·s .. j·s+s−1, tap-major, so
    /// that the conv over a signal viewed as [IC·s, T/s] is a sum of K/s matmuls on shifted
    /// contiguous views.
    pub fn taps_order(self) -> impl Iterator<Item = usize> {
        let Conv { k, s, ic, oc } = self;
        (0..k / s).flat_map(move |j| {
            (0..oc).flat_map(move |o| {
                (0..s).flat_map(move |p| (0..ic).map(move |i| o * ic * k + i * k + j * s + p))
            })
        })
    }

    /// For each element of a transposed conv's halves in order, its index in the weight
    /// (ggml [K, OC, IC], PyTorch [IC, OC, K], K = 2s): the first half gives output samples
    /// t·s + j of input t, the second those of the next input's span (t+1)·s + j.
    pub fn halves_order(self) -> impl Iterator<Item = usize> {
        let Conv { k, s, ic, oc } = self;
        (0..2).flat_map(move |h| {
            (0..s).flat_map(move |j| {
                (0..oc).flat_map(move |o| (0..ic).map(move |i| i * oc * k + o * k + h * s + j))
            })
        })
    }
}

/// `src` gathered in `order`: the re-laid-out weight.
pub fn gather<E: Copy>(src: &[E], order: impl Iterator<Item = usize>) -> Vec<E> {
    order.map(|i| src[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The orders are permutations, and put the values where the runtime's matmuls read
    /// them: a direct conv and a direct transposed conv over a random signal equal the same
    /// convs computed through the taps and halves as the runtime does.
    #[test]
    fn re_laid_weights_compute_the_same_convs() {
        let mut seed = 7u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        // A strided conv: out[o][t] = Σ_i Σ_k w[o][i][k] · x[i][t·s + k].
        let c = Conv {
            k: 6,
            s: 3,
            ic: 4,
            oc: 5,
        };
        let w: Vec<f32> = (0..c.k * c.ic * c.oc).map(|_| rnd()).collect();
        let steps = 4;
        let len = (steps - 1) * c.s + c.k;
        let x: Vec<f32> = (0..len * c.ic).map(|_| rnd()).collect(); // channel-fastest
        let taps = gather(&w, c.taps_order());
        let mut sorted: Vec<usize> = c.taps_order().collect();
        sorted.sort();
        assert!(sorted.iter().enumerate().all(|(a, &b)| a == b));
        let row = c.ic * c.s;
        for t in 0..steps {
            for o in 0..c.oc {
                let direct: f32 = (0..c.ic)
                    .flat_map(|i| (0..c.k).map(move |k| (i, k)))
                    .map(|(i, k)| w[o * c.ic * c.k + i * c.k + k] * x[(t * c.s + k) * c.ic + i])
                    .sum();
                // Matrix j times the block of s samples starting at (t + j)·s.
                let relaid: f32 = (0..c.k / c.s)
                    .flat_map(|j| (0..row).map(move |r| (j, r)))
                    .map(|(j, r)| taps[j * row * c.oc + o * row + r] * x[(t + j) * row + r])
                    .sum();
                assert!((direct - relaid).abs() < 1e-5, "{direct} {relaid}");
            }
        }
        // A transposed conv: out[o][t·s + k] += Σ_i w[i][o][k] · x[i][t].
        let c = Conv {
            k: 4,
            s: 2,
            ic: 3,
            oc: 5,
        };
        let w: Vec<f32> = (0..c.k * c.ic * c.oc).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..steps * c.ic).map(|_| rnd()).collect();
        let halves = gather(&w, c.halves_order());
        let mut sorted: Vec<usize> = c.halves_order().collect();
        sorted.sort();
        assert!(sorted.iter().enumerate().all(|(a, &b)| a == b));
        let mut direct = vec![0f32; ((steps - 1) * c.s + c.k) * c.oc];
        for t in 0..steps {
            for i in 0..c.ic {
                for o in 0..c.oc {
                    for k in 0..c.k {
                        direct[(t * c.s + k) * c.oc + o] +=
                            w[i * c.oc * c.k + o * c.k + k] * x[t * c.ic + i];
                    }
                }
            }
        }
        // Half h of input t: [s·OC] values for output samples (t + h)·s + j, channel-fastest.
        let mut relaid = vec![0f32; direct.len()];
        for t in 0..steps {
            for h in 0..2 {
                for col in 0..c.s * c.oc {
                    let v: f32 = (0..c.ic)
                        .map(|i| halves[h * c.ic * c.s * c.oc + col * c.ic + i] * x[t * c.ic + i])
                        .sum();
                    relaid[(t + h) * c.s * c.oc + col] += v;
                }
            }
        }
        for (a, b) in direct.iter().zip(&relaid) {
            assert!((a - b).abs() < 1e-5, "{a} {b}");
        }
    }
}
