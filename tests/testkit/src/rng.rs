//! Per-tensor random values.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A generator for one tensor: the run seed mixed with a hash of the tensor name (FNV-1a).
pub fn for_tensor(seed: u64, name: &str) -> ChaCha8Rng {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    ChaCha8Rng::seed_from_u64(seed ^ h)
}

/// How a tensor's values are drawn: uniform with this mean and standard deviation.
#[derive(Clone, Copy, Debug)]
pub struct Init {
    pub mean: f32,
    pub std: f32,
}

impl Init {
    /// All zeros.
    pub const ZERO: Init = Init {
        mean: 0.0,
        std: 0.0,
    };

    pub fn fill(self, rng: &mut ChaCha8Rng, out: &mut [f32]) {
        // Uniform on [-a, a] has standard deviation a / sqrt(3).
        let a = self.std * 3f32.sqrt();
        let scale = a / (i32::MAX as f32);
        for x in out.iter_mut() {
            *x = self.mean + (rng.next_u32() as i32 as f32) * scale;
        }
    }
}
