//! The codec's persistent streaming state, and the graph builder that reads and updates it.
//!
//! Every stateful layer (a causal conv's left context, a transposed conv's held-back span,
//! a transformer's ring KV cache) has one persistent tensor. A graph reads the old state and
//! queues the write of the new one (`Builder::writes`), which is expanded after the outputs,
//! so that every read of the old state comes first, in the same compute.

use std::collections::HashMap;

use anyhow::Result;

use crate::ggml::{self, Backend, Buffer, Ctx, T};
use crate::weights::Weights;

/// Persistent streaming state, one tensor per stateful layer.
pub(super) struct State {
    tensors: HashMap<String, T>,
    pub(super) buffer: Buffer,
    _ctx: Ctx,
}

impl State {
    /// Allocates one zeroed f32 tensor per (name, shape) on `backend`.
    pub(super) fn new(backend: &Backend, decl: &[(String, Vec<i64>)]) -> Result<State> {
        let ctx = Ctx::new(decl.len(), 0);
        let tensors: HashMap<String, T> = decl
            .iter()
            .map(|(n, ne)| (n.clone(), ctx.new_tensor(ggml::F32, ne)))
            .collect();
        let buffer = Buffer::alloc(&ctx, backend)?;
        Ok(State {
            tensors,
            buffer,
            _ctx: ctx,
        })
    }

    pub(super) fn get(&self, name: &str) -> T {
        self.tensors[name]
    }
}

/// Builds Mimi graph pieces into one graph context. Signals are channel-fastest [C, T].
pub(super) struct Builder<'a> {
    pub(super) g: &'a Ctx,
    pub(super) w: &'a Weights,
    pub(super) s: &'a State,
    /// State updates, expanded after the outputs.
    pub(super) writes: Vec<T>,
}

impl Builder<'_> {
    /// Prepends the left context `left` ([IC, ctx]) to `x` ([IC, L]) and queues the write of
    /// the last `ctx` samples into the state tensor `st`.
    pub(super) fn with_context(&mut self, x: T, left: T, st: T) -> T {
        let g = self.g;
        let (ic, l, ctx) = (x.ne()[0], x.ne()[1], left.ne()[1]);
        let cat = g.concat(left, x, 1);
        let tail = g.view(cat, &[ic, ctx], &[cat.nb()[1]], (l * ic * 4) as usize);
        self.writes.push(g.cpy(tail, st));
        cat
    }

    /// a + (b delayed by one span of `s` samples), with the held-back span as the first.
    pub(super) fn overlap(&mut self, a: T, b: T, state: &str, s: usize) -> T {
        let g = self.g;
        let st = self.s.get(state);
        let (ch, len) = (b.ne()[0], b.ne()[1]);
        let span = s as i64;
        let shifted = if len == span {
            st
        } else {
            g.concat(st, g.view(b, &[ch, len - span], &[b.nb()[1]], 0), 1)
        };
        let tail = g.view(
            b,
            &[ch, span],
            &[b.nb()[1]],
            ((len - span) as usize) * b.nb()[1],
        );
        self.writes.push(g.cpy(tail, st));
        g.add(a, shifted)
    }
}
