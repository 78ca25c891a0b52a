//! The official `sample_token` as ggml nodes, so that a token is chosen where its logits are
//! computed and only the token comes back: the depth transformer's 8 codes inside its step
//! graph, the text token inside llama.cpp's graph (through its backend-sampler interface).
//!
//! The semantics and the draw are those of `sampling` (the host's sampler): repetition
//! penalty (positive logits divided by p, negative multiplied, once per distinct id of the
//! window), then argmax (greedy), or softmax(l / T) and one uniform number u per token, walked
//! through the cumulative weights of the candidates: most probable first under top-p and
//! top-k, by id otherwise. Only ops that every backend we ship implements for these types are
//! used (argsort, cumsum, step, relu, div, sum_rows, get_rows, set_rows, pad, cast), and the
//! graphs that hold them are checked against their device at load.
//!
//! Every tensor carries the number of streams sampled together as its last dimension: the
//! logits of B conversations are [V, B] and B tokens come out.

use crate::ggml::{self, Ctx, T};
use crate::sampling::{Mode, SamplingParams};

/// The per-call inputs of one draw. Shapes for B streams sampled together.
#[derive(Clone, Copy)]
pub struct DrawInputs {
    /// Ids of the penalty window, I32 [W, B]; unused slots hold the vocabulary size V (a
    /// padding id that penalises nothing). None when the penalty is off.
    pub window: Option<T>,
    /// The uniform number of each stream, F32 [1, B].
    pub uniform: T,
    /// The repetition penalty, F32 [1] (a divisor must be a tensor for an exact division).
    pub penalty: Option<T>,
    /// Added to the logits before choosing: 0, or -inf for ids that must never come out
    /// (audio pad and empty), F32 [V].
    pub mask: Option<T>,
}

/// What one draw gives, for B streams.
#[derive(Clone, Copy)]
pub struct Draw {
    /// The chosen id of each stream, I32 [1, 1, B].
    pub token: T,
    /// For the host to check, F32 [1, 1, B]: the chosen logit when greedy, else the total
    /// weight of the candidates. Not finite, or not positive when sampling: the logits had no
    /// candidate (all -inf or NaN), and `token` means nothing.
    pub check: T,
}

/// Builds the draw of `params` from `logits` (F32 [V, B], contiguous) into `g`.
pub fn build(g: &Ctx, logits: T, params: &SamplingParams, inputs: &DrawInputs) -> Draw {
    let [v, b, ..] = logits.ne();
    let mut l = logits;
    if let (Some(window), Some(penalty)) = (inputs.window, inputs.penalty)
        && params.penalises()
    {
        l = penalise(g, l, window, penalty, params.repetition_penalty);
    }
    if let Some(mask) = inputs.mask {
        l = g.add(l, mask);
    }
    let rows = |t: T, n: i64| g.reshape(t, &[1, n, b]);
    if params.mode() == Mode::Greedy {
        let token = g.reshape(g.argmax(l), &[1, b]);
        let check = g.get_rows(rows(l, v), token);
        return Draw {
            token: g.reshape(token, &[1, 1, b]),
            check,
        };
    }
    let probs = softmax(g, l, 1.0 / params.temperature);
    // The candidates in walking order, their cumulative weights, and the position of the
    // last that counts (its cumulative weight is the total the draw scales).
    let (order, cum, last): (Option<T>, T, Option<T>) = match params.mode() {
        Mode::TopP => {
            let order = g.argsort_desc(probs);
            let sorted = g.reshape(g.get_rows(rows(probs, v), order), &[v, b]);
            let cum = g.cumsum(sorted);
            // The official mask: an id is dropped when the mass before it exceeds p
            // (a - p > 0 exactly when a > p in floating point). The kept ones are a prefix,
            // never empty (nothing is before the first): the last kept is at V - 1 - dropped.
            let before = g.sub(cum, sorted);
            let dropped = g.step(g.scale_bias(before, 1.0, -params.top_p));
            let last = g.scale_bias(g.sum_rows(dropped), -1.0, (v - 1) as f32);
            (Some(order), cum, Some(last))
        }
        Mode::TopK => {
            let k = (params.top_k as i64).min(v);
            let order = g.cont(g.argsort_top_k(probs, k as usize));
            let sorted = g.reshape(g.get_rows(rows(probs, v), order), &[k, b]);
            (Some(order), g.cumsum(sorted), None)
        }
        Mode::Plain | Mode::Greedy => (None, g.cumsum(probs), None),
    };
    let len = cum.ne()[0];
    // The total is taken from the same sums the walk compares with, so that u·total never
    // passes them and the walk stops on a candidate of non-zero weight.
    let total = match last {
        Some(last) => {
            let last = g.reshape(g.cast(last, ggml::I32), &[1, b]);
            g.reshape(g.get_rows(rows(cum, len), last), &[1, b])
        }
        None => g.view(cum, &[1, b], &[cum.nb()[1]], (len as usize - 1) * 4),
    };
    let target = g.mul(total, inputs.uniform);
    // The walk stops at the first candidate whose cumulative weight reaches the target: its
    // index is the number of those below it (candidates past the last that counts are not:
    // their cumulative weights are at least the total).
    let below = g.step(g.scale(g.sub(cum, target), -1.0));
    let index = g.cast(g.sum_rows(below), ggml::I32);
    let index = g.reshape(index, &[1, b]);
    let token = match order {
        Some(order) => g.get_rows(rows(order, len), index),
        None => g.reshape(index, &[1, 1, b]),
    };
    Draw {
        token,
        check: g.reshape(g.cont(total), &[1, 1, b]),
    }
}

/// Rows longer than this go through ggml's soft_max only up to it (see `softmax`).
const SOFT_MAX_ROW: i64 = 16_384;

/// softmax(l · scale) over each row of `l` ([V, B]). Up to 16,384 ids (the depth transformer's
/// codes) this is ggml's soft_max. Longer rows (the text vocabulary) are written out: the
/// row's maximum (argmax, gathered) subtracted, scaled, exp, divided by the sum. The pinned
/// ggml's Vulkan shaders for rows over 16,384 reduce the row's maximum across workgroups
/// with a slip (`max(max_val, vals[tid + s])` where `vals[tid]` is meant, in
/// `soft_max_large2` and `_large3`), so they may subtract less than the maximum; at the
/// official text temperature (0.01) the exp then overflows and the draw finds no token.
fn softmax(g: &Ctx, l: T, scale: f32) -> T {
    let [v, b, ..] = l.ne();
    if v <= SOFT_MAX_ROW {
        return g.soft_max_ext(l, None, scale);
    }
    let top = g.reshape(g.argmax(l), &[1, b]);
    let max = g.reshape(g.get_rows(g.reshape(l, &[1, v, b]), top), &[1, b]);
    let e = g.exp(g.scale(g.sub(l, max), scale));
    g.div(e, g.sum_rows(e))
}

/// The repetition penalty of `window` applied to `logits`: each id's logit l becomes l / p
/// when positive and l · p otherwise, once however often the id repeats (every repeat writes
/// the same value, computed from the logit before the penalty). Exact to the bit against the
/// host's `l / p` and `l * p`: step(l) selects between relu(l) / p and relu(-l) · (-p),
/// products by 0 and 1 and sums with 0 are exact, and no 0 · inf can occur.
fn penalise(g: &Ctx, logits: T, window: T, penalty: T, p: f32) -> T {
    let [v, b, ..] = logits.ne();
    // One padding slot at id V for the window's unused places.
    let padded = g.pad(logits, [1, 0, 0, 0]);
    let rows = g.reshape(padded, &[1, v + 1, b]);
    let old = g.get_rows(rows, window);
    let positive = g.step(old);
    let up = g.div(g.relu(old), penalty);
    let down = g.scale(g.relu(g.scale(old, -1.0)), -p);
    let new = g.add(
        g.mul(positive, up),
        g.mul(g.scale_bias(positive, -1.0, 1.0), down),
    );
    let written = g.set_rows(rows, new, window);
    let padded = g.reshape(written, &[v + 1, b]);
    g.cont(g.view(padded, &[v, b], &[padded.nb()[1]], 0))
}
