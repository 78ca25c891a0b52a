//! Streaming sample-rate conversion between a device rate and Mimi's 24 kHz, with buffers
//! sized once (rubato's FFT resampler, fixed input chunks).

use anyhow::Result;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

pub struct StreamResampler {
    /// None when the rates are equal.
    fft: Option<Fft<f32>>,
    chunk: Vec<f32>,
    /// Input samples per conversion.
    chunk_len_in: usize,
    filled: usize,
    out: Vec<f32>,
}

impl StreamResampler {
    /// From `from` Hz to `to` Hz, converting `chunk` input samples at a time.
    pub fn new(from: u32, to: u32, chunk: usize) -> Result<StreamResampler> {
        let fft = (from != to)
            .then(|| Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Input))
            .transpose()?;
        let out_len = fft.as_ref().map_or(0, |f| f.output_frames_max());
        let chunk_len = fft.as_ref().map_or(0, |f| f.input_frames_next());
        Ok(StreamResampler {
            fft,
            chunk: vec![0.0; chunk_len],
            chunk_len_in: chunk,
            filled: 0,
            out: vec![0.0; out_len],
        })
    }

    /// The most samples one call of `emit` carries.
    pub fn chunk_out(&self) -> usize {
        if self.fft.is_some() {
            self.out.len()
        } else {
            self.chunk_len_in
        }
    }

    /// Feeds `x`; every converted sample goes to `emit`, in order.
    pub fn push(&mut self, mut x: &[f32], emit: &mut dyn FnMut(&[f32])) -> Result<()> {
        let Some(fft) = self.fft.as_mut() else {
            emit(x);
            return Ok(());
        };
        while !x.is_empty() {
            let n = (self.chunk.len() - self.filled).min(x.len());
            // A device or a decoder gone wrong (NaN, Inf, huge values) would overflow the
            // FFT, which then panics: what goes in is audio, clipped to full scale.
            for (d, &v) in self.chunk[self.filled..self.filled + n]
                .iter_mut()
                .zip(&x[..n])
            {
                *d = if v.is_finite() {
                    v.clamp(-1.0, 1.0)
                } else {
                    0.0
                };
            }
            self.filled += n;
            x = &x[n..];
            if self.filled == self.chunk.len() {
                let input = InterleavedSlice::new(&self.chunk[..], 1, self.chunk.len())?;
                let frames = self.out.len();
                let mut output = InterleavedSlice::new_mut(&mut self.out[..], 1, frames)?;
                let (_, produced) = fft.process_into_buffer(&input, &mut output, None)?;
                emit(&self.out[..produced]);
                self.filled = 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FFT resampler hands out uneven runs (24 → 48 kHz: mostly 3836 samples a frame,
    /// now and then 4384), so what matters is the total: exact, to within one run.
    #[test]
    fn samples_that_are_not_audio_do_not_reach_the_fft() {
        let mut r = StreamResampler::new(48_000, 24_000, 960).unwrap();
        let mut bad = vec![0.1f32; 4 * 960];
        bad[5] = f32::NAN;
        bad[900] = f32::INFINITY;
        bad[1500] = 3e38;
        bad[2000] = -3e38;
        let mut out = vec![];
        r.push(&bad, &mut |x| out.extend_from_slice(x)).unwrap();
        assert!(!out.is_empty());
        assert!(out.iter().all(|x| x.is_finite() && x.abs() < 2.0));
    }

    #[test]
    fn the_total_out_follows_the_rates() {
        for (from, to, chunk) in [(24_000u32, 48_000u32, 1920usize), (48_000, 24_000, 960)]
            .into_iter()
            .chain([16_000, 44_100, 22_050, 8_000].map(|r| (24_000, r, 1920)))
        {
            let mut r = StreamResampler::new(from, to, chunk).unwrap();
            let (mut total, mut largest) = (0usize, 0usize);
            let x = vec![0.1f32; chunk];
            let calls = 1000;
            for _ in 0..calls {
                r.push(&x, &mut |y| {
                    total += y.len();
                    largest = largest.max(y.len());
                })
                .unwrap();
            }
            assert!(largest <= r.chunk_out(), "{from} → {to}");
            let exact = calls * chunk * to as usize / from as usize;
            assert!(
                total <= exact && exact - total <= r.chunk_out(),
                "{from} → {to}: {total} out, {exact} exact"
            );
        }
    }
}
