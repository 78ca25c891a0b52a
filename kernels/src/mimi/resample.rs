//! The learned ×2 resampling between the SEANet's 25 Hz latent and the 12.5 Hz codes: a
//! strided conv down (encoder), a depthwise transposed conv up (decoder).

use anyhow::{Result, ensure};
use flm_conversion::plan::mimi_arch::*;

use super::seanet;
use super::state::Builder;
use crate::ggml::{self, T};
use crate::weights::WeightsBuilder;
use flm_conversion::mimi_layout::Conv;

/// Transformer steps per code frame: the SEANet latent and both transformers run at 25 Hz,
/// the codes at 12.5 Hz.
pub(super) const STEPS_PER_FRAME: usize = 2;

/// The down-sample conv (k4 s2, no bias); its state tensor has the same name.
const DOWNSAMPLE: &str = "downsample";
const DOWNSAMPLE_CONV: Conv = Conv {
    k: 2 * STEPS_PER_FRAME,
    s: STEPS_PER_FRAME,
    ic: LATENT,
    oc: LATENT,
};
/// The up-sample's state: the span held back for the next call.
const UPSAMPLE: &str = "upsample";

/// Declares the down-sample conv's weight (re-laid-out as the SEANet's convs).
pub(super) fn declare_downsample(wb: &mut WeightsBuilder, label: &str) -> Result<()> {
    seanet::declare_conv(wb, label, DOWNSAMPLE, DOWNSAMPLE_CONV, false, false)
}

/// Declares the up-sample's weight: depthwise [4, 1, C] → [C, 2, 2] (taps 0,1 then taps
/// 2,3, channel-fastest).
pub(super) fn declare_upsample(wb: &mut WeightsBuilder, label: &str) -> Result<()> {
    let i = |v: usize| v as i64;
    let up = wb.f32s("upsample.weight")?;
    ensure!(
        up.len() == 4 * LATENT,
        "{label}: tensor `upsample.weight` has {} values",
        up.len()
    );
    let mut halves = vec![0f32; 4 * LATENT];
    for c in 0..LATENT {
        for k in 0..4 {
            halves[k * LATENT + c] = up[c * 4 + k];
        }
    }
    let halves: Vec<u8> = halves.iter().flat_map(|x| x.to_le_bytes()).collect();
    wb.host("upsample.halves", ggml::F32, &[i(LATENT), 2, 2], halves);
    Ok(())
}

/// The down-sample's state: its left context ([512, 2]).
pub(super) fn downsample_state(decl: &mut Vec<(String, Vec<i64>)>) {
    let c = DOWNSAMPLE_CONV;
    decl.push((
        DOWNSAMPLE.into(),
        vec![c.ic as i64, seanet::conv_context(DOWNSAMPLE, c) as i64],
    ));
}

/// The up-sample's state: the held-back span ([512, 2]).
pub(super) fn upsample_state(decl: &mut Vec<(String, Vec<i64>)>) {
    decl.push((UPSAMPLE.into(), vec![LATENT as i64, 2]));
}

impl Builder<'_> {
    /// Learned ×2 down-sample (k4 s2, no bias) of [512, 2F, k] → [512, F, k]: at a stream's
    /// first call (`first`, [1, 1, k]: 1 or 0 per stream) its left context is the first
    /// sample repeated (Kyutai's `pad_mode="replicate"`).
    pub(super) fn downsample(&mut self, x: T, first: T) -> T {
        let g = self.g;
        let k = self.batch();
        let st = self.read(DOWNSAMPLE);
        let x0 = g.view(x, &[LATENT as i64, 1, k], &[x.nb()[1], x.nb()[2]], 0);
        let init = g.repeat_4d(x0, [LATENT as i64, 2, k, 1]);
        let left = g.add(st, g.mul(g.sub(init, st), first));
        self.conv_left(x, DOWNSAMPLE, DOWNSAMPLE_CONV, Some(left))
    }

    /// Learned depthwise ×2 up-sample (transposed, k4 s2, one filter per channel) of
    /// [512, F, k] → [512, 2F, k].
    pub(super) fn upsample(&mut self, x: T, frames: usize) -> T {
        let g = self.g;
        let k = self.batch();
        let (c, f) = (LATENT as i64, frames as i64 * k);
        let halves = self.w.get("upsample.halves");
        let rep = g.repeat_4d(g.reshape(x, &[c, 1, f]), [c, 2, f, 1]);
        let half = |h: usize| {
            let w = g.view(halves, &[c, 2], &[halves.nb()[1]], h * halves.nb()[2]);
            g.reshape(
                g.mul(rep, g.reshape(w, &[c, 2, 1])),
                &[c, 2 * frames as i64, k],
            )
        };
        let (a, b) = (half(0), half(1));
        self.overlap(a, b, UPSAMPLE, 2)
    }
}
