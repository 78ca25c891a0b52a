//! The SEANet encoder and decoder: causal convs, residual blocks, ELU, streaming transposed
//! convs, and the re-layout of their weights at load.
//!
//! A stride-s conv with K = n·s taps is n matmuls over the channel-fastest signal viewed as
//! blocks of s samples; a transposed conv (K = 2s) is two matmuls, the second delayed by one
//! span. Weights are re-laid-out once at load for this and are always the matmul's first
//! operand. (ggml_conv_1d would round f32 data through f16, and ggml's conv_transpose_1d
//! re-arranges its whole kernel on every call.)

use anyhow::{Result, ensure};
use flm_conversion::mimi_layout::{Conv, HALVES, TAPS, gather};
use flm_conversion::plan::mimi_arch::*;

use super::state::Builder;
use crate::ggml::{self, T};
use crate::weights::WeightsBuilder;

/// The SEANet encoder's convs, in order.
pub(super) fn enc_convs() -> Vec<(String, Conv)> {
    let mut v = vec![(
        FIRST_CONV.to_string(),
        Conv {
            k: KERNEL,
            s: 1,
            ic: CHANNELS,
            oc: N_FILTERS,
        },
    )];
    let mut dim = N_FILTERS;
    for (i, &r) in RATIOS.iter().rev().enumerate() {
        let n = ENC_RES[i];
        v.push((
            format!("enc.{n}.b1"),
            Conv {
                k: RESIDUAL_KERNEL,
                s: 1,
                ic: dim,
                oc: dim / COMPRESS,
            },
        ));
        v.push((
            format!("enc.{n}.b3"),
            Conv {
                k: 1,
                s: 1,
                ic: dim / COMPRESS,
                oc: dim,
            },
        ));
        v.push((
            format!("enc.{}", n + 2),
            Conv {
                k: 2 * r,
                s: r,
                ic: dim,
                oc: 2 * dim,
            },
        ));
        dim *= 2;
    }
    v.push((
        "enc.14".into(),
        Conv {
            k: LAST_KERNEL,
            s: 1,
            ic: dim,
            oc: LATENT,
        },
    ));
    v
}

/// The SEANet decoder's convs, in order; transposed ones are those at `DEC_RES - 1`.
pub(super) fn dec_convs() -> Vec<(String, Conv, bool)> {
    let mut dim = N_FILTERS << RATIOS.len();
    let mut v = vec![(
        "dec.0".to_string(),
        Conv {
            k: KERNEL,
            s: 1,
            ic: LATENT,
            oc: dim,
        },
        false,
    )];
    for (i, &r) in RATIOS.iter().enumerate() {
        let n = DEC_RES[i] - 1;
        v.push((
            format!("dec.{n}"),
            Conv {
                k: 2 * r,
                s: r,
                ic: dim,
                oc: dim / 2,
            },
            true,
        ));
        dim /= 2;
        v.push((
            format!("dec.{}.b1", n + 1),
            Conv {
                k: RESIDUAL_KERNEL,
                s: 1,
                ic: dim,
                oc: dim / COMPRESS,
            },
            false,
        ));
        v.push((
            format!("dec.{}.b3", n + 1),
            Conv {
                k: 1,
                s: 1,
                ic: dim / COMPRESS,
                oc: dim,
            },
            false,
        ));
    }
    v.push((
        "dec.14".into(),
        Conv {
            k: LAST_KERNEL,
            s: 1,
            ic: dim,
            oc: CHANNELS,
        },
        false,
    ));
    v
}

/// The first conv: one input channel, always f32 or f16 in the file.
const FIRST_CONV: &str = "enc.0";
/// The first conv has one input channel: it is unfolded by `im2col` instead of split into
/// taps, with a zero tap in front so that the unfolded rows (8) suit the SIMD matmul.
const FIRST_CONV_TAPS: usize = KERNEL + 1;

/// Left context (samples) a causal conv keeps between calls.
pub(super) fn conv_context(name: &str, c: Conv) -> usize {
    if name == FIRST_CONV {
        FIRST_CONV_TAPS - c.s
    } else {
        c.k - c.s
    }
}

/// The persistent state of every encoder conv that keeps one: its left context
/// ([IC, context]).
pub(super) fn encoder_state(decl: &mut Vec<(String, Vec<i64>)>) {
    for (name, c) in enc_convs() {
        let ctx_len = conv_context(&name, c);
        if ctx_len > 0 {
            decl.push((name, vec![c.ic as i64, ctx_len as i64]));
        }
    }
}

/// The persistent state of every decoder conv that keeps one: a causal conv's left context
/// ([IC, context]), a transposed conv's held-back span ([OC, K − s]).
pub(super) fn decoder_state(decl: &mut Vec<(String, Vec<i64>)>) {
    for (name, c, transposed) in dec_convs() {
        if transposed {
            decl.push((name, vec![c.oc as i64, (c.k - c.s) as i64]));
        } else if c.k > c.s {
            decl.push((
                name.clone(),
                vec![c.ic as i64, conv_context(&name, c) as i64],
            ));
        }
    }
}

/// A conv weight's bytes (elements of `es` bytes) gathered in `order`.
fn gather_bytes(bytes: &[u8], es: usize, order: impl Iterator<Item = usize>) -> Vec<u8> {
    match es {
        2 => gather(bytes.as_chunks::<2>().0, order).into_flattened(),
        4 => gather(bytes.as_chunks::<4>().0, order).into_flattened(),
        _ => unreachable!("f32 or f16 elements"),
    }
}

/// Declares conv `name`'s weight, re-laid-out for the graphs (`{name}.taps` or
/// `{name}.halves`), and its bias if it has one. A file converted at a quantized Mimi type
/// holds the re-laid-out matrices themselves (quantized blocks cannot be re-laid-out); an f32
/// or f16 file holds the checkpoint's `{name}.weight`, re-laid-out here.
pub(super) fn declare_conv(
    wb: &mut WeightsBuilder,
    label: &str,
    name: &str,
    c: Conv,
    transposed: bool,
    bias: bool,
) -> Result<()> {
    let i = |v: usize| v as i64;
    let (relaid, ne) = if transposed {
        (format!("{name}.{HALVES}"), c.halves_ne())
    } else {
        (format!("{name}.{TAPS}"), c.taps_ne())
    };
    if name != FIRST_CONV && wb.gguf().tensor(&relaid).is_some() {
        wb.tensor(&relaid, &ne.map(|d| d as i64))?;
    } else {
        declare_relaid(wb, label, name, c, transposed)?;
    }
    if bias {
        wb.tensor(&format!("{name}.bias"), &[i(c.oc)])?;
    }
    Ok(())
}

/// Declares `{name}.taps` or `{name}.halves` re-laid-out from the file's `{name}.weight`.
fn declare_relaid(
    wb: &mut WeightsBuilder,
    label: &str,
    name: &str,
    c: Conv,
    transposed: bool,
) -> Result<()> {
    let i = |v: usize| v as i64;
    let wname = format!("{name}.weight");
    let t = wb
        .gguf()
        .tensor(&wname)
        .ok_or_else(|| anyhow::anyhow!("{label}: tensor `{wname}` is missing"))?;
    let have: Vec<i64> = t.ne.iter().map(|&d| d as i64).collect();
    let want = if transposed {
        [i(c.k), i(c.oc), i(c.ic)]
    } else {
        [i(c.k), i(c.ic), i(c.oc)]
    };
    ensure!(
        have == want,
        "{label}: tensor `{wname}` has shape {have:?}, expected {want:?}"
    );
    let (bytes, ty) = wb.bytes(&wname)?;
    ensure!(
        !ty.is_quantized(),
        "{label}: `{wname}` is {ty}, expected f32 or f16"
    );
    let es = ty.block_bytes() as usize;
    if transposed {
        let out = gather_bytes(bytes, es, c.halves_order());
        let ne = c.halves_ne().map(|d| d as i64);
        wb.host(&format!("{name}.{HALVES}"), ty.id(), &ne, out);
    } else if name == FIRST_CONV {
        // One input channel: a zero tap in front, unfolded by im2col.
        let mut out = vec![0u8; es * FIRST_CONV_TAPS * c.oc];
        for oc in 0..c.oc {
            let dst = (oc * FIRST_CONV_TAPS + 1) * es;
            out[dst..dst + c.k * es].copy_from_slice(&bytes[oc * c.k * es..(oc + 1) * c.k * es]);
        }
        wb.host(
            &format!("{name}.{TAPS}"),
            ty.id(),
            &[i(FIRST_CONV_TAPS), 1, i(c.oc)],
            out,
        );
    } else {
        let out = gather_bytes(bytes, es, c.taps_order());
        let ne = c.taps_ne().map(|d| d as i64);
        wb.host(&format!("{name}.{TAPS}"), ty.id(), &ne, out);
    }
    Ok(())
}

/// Declares the weights of the encoder's convs.
pub(super) fn declare_encoder(wb: &mut WeightsBuilder, label: &str) -> Result<()> {
    for (name, c) in enc_convs() {
        declare_conv(wb, label, &name, c, false, true)?;
    }
    Ok(())
}

/// Declares the weights of the decoder's convs.
pub(super) fn declare_decoder(wb: &mut WeightsBuilder, label: &str) -> Result<()> {
    for (name, c, transposed) in dec_convs() {
        declare_conv(wb, label, &name, c, transposed, true)?;
    }
    Ok(())
}

impl Builder<'_> {
    /// The SEANet encoder: 24 kHz samples ([1, L, k]) → the 25 Hz latent ([512, L/960, k]).
    pub(super) fn seanet_encoder(&mut self, pcm: T) -> T {
        let convs = enc_convs();
        let mut h = self.first_conv(pcm, FIRST_CONV, convs[0].1);
        let mut dim = N_FILTERS;
        for (i, &r) in RATIOS.iter().rev().enumerate() {
            let n_ = ENC_RES[i];
            h = self.resblock(h, &format!("enc.{n_}"), dim);
            h = self.elu(h);
            h = self.conv(
                h,
                &format!("enc.{}", n_ + 2),
                Conv {
                    k: 2 * r,
                    s: r,
                    ic: dim,
                    oc: 2 * dim,
                },
            );
            dim *= 2;
        }
        h = self.elu(h);
        self.conv(
            h,
            "enc.14",
            Conv {
                k: LAST_KERNEL,
                s: 1,
                ic: dim,
                oc: LATENT,
            },
        )
    }

    /// The SEANet decoder: the 25 Hz latent ([512, T, k]) → 24 kHz samples ([1, 960·T, k]).
    pub(super) fn seanet_decoder(&mut self, latent: T) -> T {
        let convs = dec_convs();
        let mut h = self.conv(latent, "dec.0", convs[0].1);
        let mut dim = N_FILTERS << RATIOS.len();
        for (i, &r) in RATIOS.iter().enumerate() {
            let n_ = DEC_RES[i] - 1;
            h = self.elu(h);
            h = self.conv_transpose(
                h,
                &format!("dec.{n_}"),
                Conv {
                    k: 2 * r,
                    s: r,
                    ic: dim,
                    oc: dim / 2,
                },
            );
            dim /= 2;
            h = self.resblock(h, &format!("dec.{}", n_ + 1), dim);
        }
        h = self.elu(h);
        self.conv(
            h,
            "dec.14",
            Conv {
                k: LAST_KERNEL,
                s: 1,
                ic: dim,
                oc: CHANNELS,
            },
        )
    }

    /// Causal conv of `x` ([IC, L, k]) → [OC, L/s, k], with the left context `left` (the
    /// state `name`'s, or given) or none. A stride-s conv with K = n·s taps is n matmuls over
    /// the signal viewed as [IC·s, ·, k] (each column a block of s samples), shifted by one
    /// block each.
    pub(super) fn conv_left(&mut self, x: T, name: &str, c: Conv, left: Option<T>) -> T {
        let g = self.g;
        let (l, k) = (x.ne()[1] as usize, self.batch());
        let xc = match left {
            Some(left) => self.with_context(x, left, name),
            None => x,
        };
        let blocks = xc.ne()[1] as usize / c.s;
        let xr = g.reshape(xc, &[(c.ic * c.s) as i64, blocks as i64, k]);
        let taps = self.w.get(&format!("{name}.{TAPS}"));
        let row = c.ic * c.s;
        let mut y: Option<T> = None;
        for j in 0..c.k / c.s {
            let wj = g.view(
                taps,
                &[row as i64, c.oc as i64],
                &[taps.nb()[1]],
                j * taps.nb()[2],
            );
            let xj = g.view(
                xr,
                &[row as i64, (l / c.s) as i64, k],
                &[xr.nb()[1], xr.nb()[2]],
                j * xr.nb()[1],
            );
            // Each stream's columns are contiguous, the batch's are not: a batch is made
            // contiguous so that every stream's product takes the CPU's tiled matmul, as it
            // does alone (the sums in the same order).
            let xj = if k > 1 { g.cont(xj) } else { xj };
            let p = g.mul_mat(wj, xj);
            y = Some(match y {
                None => p,
                Some(acc) => g.add(acc, p),
            });
        }
        y.expect("at least one tap")
    }

    fn conv(&mut self, x: T, name: &str, c: Conv) -> T {
        let left = (c.k > c.s).then(|| self.read(name));
        let y = self.conv_left(x, name, c, left);
        self.bias(y, name, c.oc)
    }

    fn bias(&self, y: T, name: &str, oc: usize) -> T {
        let b = self.w.get(&format!("{name}.bias"));
        self.g.add(y, self.g.reshape(b, &[oc as i64, 1]))
    }

    /// The one-channel input conv: unfolded by im2col (8 taps, the first zero).
    fn first_conv(&mut self, x: T, name: &str, c: Conv) -> T {
        let g = self.g;
        let left = self.read(name);
        let xc = self.with_context(x, left, name);
        let taps = self.w.get(&format!("{name}.{TAPS}"));
        let signal = g.reshape(xc, &[xc.ne()[1], 1, self.batch()]);
        let cols = g.im2col_1d(taps, signal, 1, ggml::F32);
        let y = g.mul_mat(
            g.reshape(taps, &[FIRST_CONV_TAPS as i64, c.oc as i64]),
            cols,
        );
        self.bias(y, name, c.oc)
    }

    /// ELU as x − m + exp(m) − 1 with m = min(x, 0). ggml's CPU ELU calls `expm1f` per element,
    /// which costs more than these five passes with `expf` (the f32 codes stay equal to the
    /// reference's; near 0 the result differs from expm1 by an f32 step of 1).
    fn elu(&self, x: T) -> T {
        let g = self.g;
        let m = g.clamp(x, f32::NEG_INFINITY, 0.0);
        g.scale_bias(g.add(g.sub(x, m), g.exp(m)), 1.0, -1.0)
    }

    /// SEANet residual block: x + conv1(elu(conv3(elu(x)))).
    fn resblock(&mut self, x: T, name: &str, dim: usize) -> T {
        let h = self.elu(x);
        let h = self.conv(
            h,
            &format!("{name}.b1"),
            Conv {
                k: RESIDUAL_KERNEL,
                s: 1,
                ic: dim,
                oc: dim / COMPRESS,
            },
        );
        let h = self.elu(h);
        let h = self.conv(
            h,
            &format!("{name}.b3"),
            Conv {
                k: 1,
                s: 1,
                ic: dim / COMPRESS,
                oc: dim,
            },
        );
        self.g.add(x, h)
    }

    /// Streaming transposed conv (K = 2s) of `x` ([IC, L, k]) → [OC, L·s, k]. Input t contributes
    /// `a` to outputs t·s.. and `b` to the next span (t+1)·s..; the `b` of the last input is
    /// held back for the next call.
    fn conv_transpose(&mut self, x: T, name: &str, c: Conv) -> T {
        let g = self.g;
        let (l, k) = (x.ne()[1], self.batch());
        let halves = self.w.get(&format!("{name}.{HALVES}"));
        let half = |h: usize| {
            let w = g.view(
                halves,
                &[c.ic as i64, (c.s * c.oc) as i64],
                &[halves.nb()[1]],
                h * halves.nb()[2],
            );
            g.reshape(g.mul_mat(w, x), &[c.oc as i64, c.s as i64 * l, k])
        };
        let (a, b) = (half(0), half(1));
        let y = self.overlap(a, b, name, c.s);
        self.bias(y, name, c.oc)
    }
}
