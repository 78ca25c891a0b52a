//! The codec's persistent streaming state, and the graph builder that reads and updates it.
//!
//! Every stateful layer (a causal conv's left context, a transposed conv's held-back span,
//! a transformer's ring KV cache) has one persistent tensor, with one slice per stream (the
//! last axis). A graph reads the old state and queues the write of the new one
//! (`Builder::writes`), which is expanded after the outputs, so that every read of the old
//! state comes first, in the same compute.
//!
//! A codec of one stream reads and writes its state in place. A codec of several streams
//! runs any k of them in one graph (a batch): the graph gathers the slices of the streams it
//! runs (`get_rows` by the batch's stream indices, an input of the call), computes the k
//! streams side by side on the last axis, and writes each stream's new state back into its
//! own slice (`set_rows` by the same indices), so that the streams not in the call keep
//! theirs untouched.

use std::collections::HashMap;

use anyhow::Result;

use crate::ggml::{self, Backend, Buffer, Ctx, T};
use crate::weights::Weights;

/// Persistent streaming state, one tensor per stateful layer, one slice per stream.
pub(super) struct State {
    /// Each tensor and its stream axis (after the axes of one stream's state).
    tensors: HashMap<String, (T, usize)>,
    /// In declaration order, for the per-stream reset.
    order: Vec<T>,
    pub(super) buffer: Buffer,
    /// Slices of every tensor: one per stream, and with several streams one more that the
    /// pads of a batch use (`Mimi::encode_streams`).
    pub(super) slices: usize,
    _ctx: Ctx,
}

impl State {
    /// Allocates one zeroed f32 tensor per (name, shape of one stream) on `backend`, with
    /// `slices` slices along a further axis.
    pub(super) fn new(
        backend: &Backend,
        decl: &[(String, Vec<i64>)],
        slices: usize,
    ) -> Result<State> {
        let ctx = Ctx::new(decl.len(), 0);
        let order: Vec<T> = decl
            .iter()
            .map(|(_, ne)| {
                let mut ne = ne.clone();
                ne.push(slices as i64);
                ctx.new_tensor(ggml::F32, &ne)
            })
            .collect();
        let tensors = decl
            .iter()
            .zip(&order)
            .map(|((n, ne), &t)| (n.clone(), (t, ne.len())))
            .collect();
        let buffer = Buffer::alloc(&ctx, backend)?;
        buffer.clear();
        Ok(State {
            tensors,
            order,
            buffer,
            slices,
            _ctx: ctx,
        })
    }

    pub(super) fn get(&self, name: &str) -> T {
        self.tensors[name].0
    }

    /// The stream axis of state `name`.
    fn axis(&self, name: &str) -> usize {
        self.tensors[name].1
    }

    /// Zeroes slice `s` of every state tensor.
    pub(super) fn clear_stream(&self, s: usize) {
        for t in &self.order {
            let slice = t.n_bytes() / self.slices;
            t.zero_range(s * slice, slice);
        }
    }
}

/// Builds Mimi graph pieces into one graph context. Signals are channel-fastest [C, T, k]:
/// the k streams of the batch side by side on the last axis.
pub(super) struct Builder<'a> {
    pub(super) g: &'a Ctx,
    pub(super) w: &'a Weights,
    pub(super) s: &'a State,
    /// The batch's stream indices ([k]) when the codec has several streams; `None` when the
    /// one stream's state is read and written in place.
    pub(super) streams: Option<T>,
    /// State updates, expanded after the outputs.
    pub(super) writes: Vec<T>,
}

impl Builder<'_> {
    /// Streams in the batch.
    pub(super) fn batch(&self) -> i64 {
        self.streams.map_or(1, |s| s.ne()[0])
    }

    /// The old state `name` of the batch's streams ([.., k]).
    pub(super) fn read(&self, name: &str) -> T {
        let st = self.s.get(name);
        let Some(idx) = self.streams else {
            return st;
        };
        let g = self.g;
        let ne = st.ne();
        let one = ne[0] * ne[1] * ne[2] * ne[3] / self.s.slices as i64;
        let rows = g.reshape(st, &[one, self.s.slices as i64]);
        let axis = self.s.axis(name);
        let mut shape = ne;
        shape[axis] = self.batch();
        g.reshape(g.get_rows(rows, idx), &shape[..=axis])
    }

    /// Queues the write of the batch's new state `value` ([.., k], the shape of `read`).
    pub(super) fn write(&mut self, name: &str, value: T) {
        let g = self.g;
        let st = self.s.get(name);
        let w = match self.streams {
            None => g.cpy(value, st),
            Some(idx) => {
                let one = st.n_elements() as i64 / self.s.slices as i64;
                let rows = g.reshape(st, &[one, self.s.slices as i64]);
                g.set_rows(rows, g.reshape(g.cont(value), &[one, self.batch()]), idx)
            }
        };
        self.writes.push(w);
    }

    /// Prepends the left context `left` ([IC, ctx, k]) to `x` ([IC, L, k]) and queues the
    /// write of the last `ctx` samples into the state `name`.
    pub(super) fn with_context(&mut self, x: T, left: T, name: &str) -> T {
        let g = self.g;
        let (ic, l, ctx) = (x.ne()[0], x.ne()[1], left.ne()[1]);
        let cat = g.concat(left, x, 1);
        let tail = g.view(
            cat,
            &[ic, ctx, self.batch()],
            &[cat.nb()[1], cat.nb()[2]],
            (l * ic * 4) as usize,
        );
        self.write(name, tail);
        cat
    }

    /// a + (b delayed by one span of `s` samples), with the held-back span as the first.
    pub(super) fn overlap(&mut self, a: T, b: T, state: &str, s: usize) -> T {
        let g = self.g;
        let st = self.read(state);
        let (ch, len, k) = (b.ne()[0], b.ne()[1], self.batch());
        let span = s as i64;
        let shifted = if len == span {
            st
        } else {
            g.concat(
                st,
                g.view(b, &[ch, len - span, k], &[b.nb()[1], b.nb()[2]], 0),
                1,
            )
        };
        let tail = g.view(
            b,
            &[ch, span, k],
            &[b.nb()[1], b.nb()[2]],
            ((len - span) as usize) * b.nb()[1],
        );
        self.write(state, tail);
        g.add(a, shifted)
    }
}
