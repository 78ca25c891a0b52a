//! The split residual vector quantizer: codebook 0 quantizes a semantic projection of the
//! latent, codebooks 1..7 the successive residuals of an acoustic projection of the same
//! latent; decoding sums each group's codebook vectors through its output projection.

use anyhow::Result;
use flm_conversion::plan::mimi_arch::*;

use super::state::Builder;
use crate::ggml::{self, T};
use crate::weights::WeightsBuilder;

/// Declares the projections, the codebooks, and the codebook vectors' squared norms
/// (computed here, for nearest-neighbour search by dot products).
pub(super) fn declare_weights(wb: &mut WeightsBuilder) -> Result<()> {
    let i = |v: usize| v as i64;
    for g in ["first", "rest"] {
        wb.tensor(
            &format!("rvq.{g}.in_proj.weight"),
            &[1, i(LATENT), i(CODEBOOK_DIM)],
        )?;
        wb.tensor(
            &format!("rvq.{g}.out_proj.weight"),
            &[1, i(CODEBOOK_DIM), i(LATENT)],
        )?;
    }
    wb.tensor(
        "rvq.codebook",
        &[i(CODEBOOK_DIM), i(CODEBOOK_SIZE), i(N_CODEBOOKS)],
    )?;
    let book = wb.f32s("rvq.codebook")?;
    let norms: Vec<u8> = book
        .chunks_exact(CODEBOOK_DIM)
        .flat_map(|c| c.iter().map(|x| x * x).sum::<f32>().to_le_bytes())
        .collect();
    wb.host(
        "rvq.codebook_norm",
        ggml::F32,
        &[i(CODEBOOK_SIZE), i(N_CODEBOOKS)],
        norms,
    );
    Ok(())
}

impl Builder<'_> {
    fn codebook(&self, q: usize) -> (T, T) {
        let g = self.g;
        let book = self.w.get("rvq.codebook");
        let norms = self.w.get("rvq.codebook_norm");
        let b = g.view(
            book,
            &[CODEBOOK_DIM as i64, CODEBOOK_SIZE as i64],
            &[CODEBOOK_DIM * 4],
            q * CODEBOOK_DIM * CODEBOOK_SIZE * 4,
        );
        let nrm = g.view(
            norms,
            &[CODEBOOK_SIZE as i64, 1],
            &[CODEBOOK_SIZE * 4],
            q * CODEBOOK_SIZE * 4,
        );
        (b, nrm)
    }

    fn project(&self, name: &str, x: T, ic: usize, oc: usize) -> T {
        let w = self.g.reshape(self.w.get(name), &[ic as i64, oc as i64]);
        self.g.mul_mat(w, x)
    }

    /// Split RVQ: codebook 0 quantizes the semantic projection, codebooks 1..7 the residuals
    /// of the acoustic projection of the same latent. Nearest neighbour by L2 distance, as
    /// argmax of 2·x·c − |c|². `latent`: [512, F, k]; one I32 [F·k] output per codebook
    /// (stream-major). Every product keeps the streams apart ([·, F, k]): each stream's takes
    /// the CPU kernel it takes alone (a product of one column takes another than of several).
    pub(super) fn rvq_encode(&mut self, latent: T) -> Vec<T> {
        let g = self.g;
        let ne = latent.ne();
        let mut outs = vec![];
        let nearest = |r: T, q: usize| {
            let (b, nrm) = self.codebook(q);
            let score = g.sub(g.scale(g.mul_mat(b, r), 2.0), nrm);
            let code = g.argmax(g.reshape(score, &[CODEBOOK_SIZE as i64, ne[1] * ne[2]]));
            (code, b)
        };
        let z = self.project("rvq.first.in_proj.weight", latent, LATENT, CODEBOOK_DIM);
        let (code, _) = nearest(z, 0);
        outs.push(code.set_output());
        let mut r = self.project("rvq.rest.in_proj.weight", latent, LATENT, CODEBOOK_DIM);
        for q in 1..N_CODEBOOKS {
            let (code, b) = nearest(r, q);
            outs.push(code.set_output());
            if q + 1 < N_CODEBOOKS {
                let chosen = g.reshape(g.get_rows(b, code), &[CODEBOOK_DIM as i64, ne[1], ne[2]]);
                r = g.sub(r, chosen);
            }
        }
        outs
    }

    /// Sum of the selected codebook vectors of each group through its output projection.
    /// `codes`: codebook-major, `frames` of each of the batch's streams per codebook; the
    /// latent [512, frames, k].
    pub(super) fn rvq_decode(&mut self, codes: T, frames: usize) -> T {
        let g = self.g;
        let k = self.batch();
        let all = frames as i64 * k;
        let code = |q: usize| g.view(codes, &[all], &[], q * all as usize * 4);
        let by_stream = |t: T| g.reshape(t, &[CODEBOOK_DIM as i64, frames as i64, k]);
        let (b0, _) = self.codebook(0);
        let first = self.project(
            "rvq.first.out_proj.weight",
            by_stream(g.get_rows(b0, code(0))),
            CODEBOOK_DIM,
            LATENT,
        );
        let mut sum = None;
        for q in 1..N_CODEBOOKS {
            let (b, _) = self.codebook(q);
            let e = g.get_rows(b, code(q));
            sum = Some(match sum {
                None => e,
                Some(s) => g.add(s, e),
            });
        }
        let rest = self.project(
            "rvq.rest.out_proj.weight",
            by_stream(sum.unwrap()),
            CODEBOOK_DIM,
            LATENT,
        );
        g.add(first, rest)
    }
}
