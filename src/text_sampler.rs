//! The text token drawn inside llama.cpp's graph, on the backbone's device, so that only the
//! token comes back instead of the logit row (151,666 floats): the official `sample_token`
//! (`flm_kernels::sample_graph`) plugged into llama.cpp's backend-sampler interface
//! (`llama_sampler_i::backend_apply`, in the pinned llama.cpp).
//!
//! The draw's per-step inputs (the penalty window, the uniform number and the penalty) are
//! one tensor of llama.cpp's graph, so that its scheduler copies one input to the device. The
//! check value of the draw (see `sample_graph::Draw`) comes back in the slot llama.cpp keeps
//! for a sampler's probabilities: one float beside the token, in the same copy.
//!
//! This module wraps the C interface: the callbacks, the sampler chain llama.cpp requires,
//! and the state they share with the step thread.

use std::ffi::{CStr, c_char};
use std::ptr::NonNull;

use flm_kernels::ggml::{self, Ctx, Graph, T};
use flm_kernels::sample_graph::{self, DrawInputs};
use flm_kernels::sampling::SamplingParams;
use llama_cpp_sys_2 as sys;

/// What the callbacks and the step thread share, owned by the llama.cpp sampler.
struct State {
    params: SamplingParams,
    /// Ids of the penalty window (0 when the penalty is off).
    window: usize,
    /// The text vocabulary: the padding id of the window's unused slots.
    vocab: usize,
    /// The input tensor's host values: the window's ids (as floats), u, the penalty.
    values: Vec<f32>,
    /// The input tensor of the graph llama.cpp built last (its data set before each compute).
    input: *mut sys::ggml_tensor,
    /// Also hand llama.cpp the logit row (inspection: tests and tools).
    keep_logits: bool,
    /// The first node the device could not run, if any, found when llama.cpp set the sampler
    /// up.
    unsupported: Option<String>,
}

/// A sampler chain holding the text draw, for `llama_context_params.samplers`.
pub struct TextSampler {
    chain: NonNull<sys::llama_sampler>,
    state: NonNull<State>,
}

// SAFETY: the chain and its state are used by the thread that owns the backbone, between
// decodes, through &mut self.
unsafe impl Send for TextSampler {}

impl TextSampler {
    /// A chain drawing with `params` over `vocab` ids; with `keep_logits`, llama.cpp also
    /// copies the logit row back.
    pub fn new(params: SamplingParams, vocab: usize, keep_logits: bool) -> TextSampler {
        let window = if params.penalises() {
            params.repetition_window
        } else {
            0
        };
        let mut values = vec![vocab as f32; window + 2];
        values[window] = 0.5;
        values[window + 1] = params.repetition_penalty;
        let state = Box::new(State {
            params,
            window,
            vocab,
            values,
            input: std::ptr::null_mut(),
            keep_logits,
            unsupported: None,
        });
        let state = NonNull::from(Box::leak(state));
        // SAFETY: IFACE is a static that lives forever and is never written; the sampler
        // owns `state` from here on and frees it in `free`. The chain takes ownership of the
        // sampler (freed with the chain in Drop).
        let chain = unsafe {
            let sampler = sys::llama_sampler_init(
                (&IFACE as *const sys::llama_sampler_i).cast_mut(),
                state.as_ptr().cast(),
            );
            let chain = sys::llama_sampler_chain_init(sys::llama_sampler_chain_default_params());
            sys::llama_sampler_chain_add(chain, sampler);
            chain
        };
        TextSampler {
            chain: NonNull::new(chain).expect("llama_sampler_chain_init"),
            state,
        }
    }

    /// The chain, for llama.cpp (which must not outlive `self`).
    pub fn chain(&self) -> *mut sys::llama_sampler {
        self.chain.as_ptr()
    }

    fn state(&mut self) -> &mut State {
        // SAFETY: the state lives as long as the chain (owned by self); llama.cpp touches it
        // only inside llama_decode and context set-up, never while the step thread holds
        // this borrow (both run on the thread that owns the backbone).
        unsafe { self.state.as_mut() }
    }

    /// The inputs of the next draw: the earlier text tokens of the window (the last ones
    /// beyond its size are ignored) and the uniform number.
    pub fn set_inputs(&mut self, window: &[i32], u: f32) {
        let s = self.state();
        let n = window.len().min(s.window);
        for (v, &id) in s.values[..n].iter_mut().zip(window) {
            *v = id as f32;
        }
        let pad = s.vocab as f32;
        s.values[n..s.window].fill(pad);
        s.values[s.window] = u;
    }

    /// The first op the device could not run, when llama.cpp set the sampler up.
    pub fn unsupported(&mut self) -> Option<String> {
        self.state().unsupported.clone()
    }

    pub fn params(&mut self) -> SamplingParams {
        self.state().params
    }

    pub fn keeps_logits(&mut self) -> bool {
        self.state().keep_logits
    }
}

impl Drop for TextSampler {
    fn drop(&mut self) {
        // SAFETY: the chain was made in new() and is freed once; it frees our sampler, whose
        // `free` callback frees the state. The owner drops the llama.cpp context first.
        unsafe { sys::llama_sampler_free(self.chain.as_ptr()) }
    }
}

/// The callbacks. `apply` (sampling on the host from a candidate list) is never used: the
/// runtime reads only the token drawn on the device.
static IFACE: sys::llama_sampler_i = sys::llama_sampler_i {
    name: Some(name),
    accept: None,
    apply: Some(apply),
    reset: None,
    clone: None,
    free: Some(free),
    backend_init: Some(backend_init),
    backend_accept: None,
    backend_apply: Some(backend_apply),
    backend_set_input: Some(backend_set_input),
    backend_reset: Some(backend_reset),
    copy_state: None,
};

// SAFETY (all callbacks): llama.cpp passes the sampler made in `TextSampler::new`, whose ctx
// is our State, alive until `free`; it calls them from the thread inside llama_decode or the
// context's set-up, which is the thread that owns the backbone.
fn state_of<'a>(smpl: *const sys::llama_sampler) -> &'a mut State {
    // SAFETY: see above.
    unsafe { &mut *((*smpl).ctx as *mut State) }
}

unsafe extern "C" fn name(_: *const sys::llama_sampler) -> *const c_char {
    const NAME: &CStr = c"flm-text";
    NAME.as_ptr()
}

unsafe extern "C" fn apply(_: *mut sys::llama_sampler, _: *mut sys::llama_token_data_array) {}

unsafe extern "C" fn free(smpl: *mut sys::llama_sampler) {
    // SAFETY: the state was leaked from a Box in TextSampler::new and is freed once, here.
    drop(unsafe { Box::from_raw((*smpl).ctx as *mut State) });
}

unsafe extern "C" fn backend_init(
    smpl: *mut sys::llama_sampler,
    buft: sys::ggml_backend_buffer_type_t,
    _: u32,
) -> bool {
    let s = state_of(smpl);
    // SAFETY: a buffer type of ggml's registry; the device may be null (host memory).
    let dev = unsafe { sys::ggml_backend_buft_get_device(buft) };
    // SAFETY: a device of ggml's registry.
    if dev.is_null()
        || unsafe { sys::ggml_backend_dev_type(dev) } == sys::GGML_BACKEND_DEVICE_TYPE_CPU
    {
        return true;
    }
    // A probe of the draw over a row of the text vocabulary, asked of the device node by node.
    let probe = Graph::new(256);
    let logits = probe.ctx.new_tensor(ggml::F32, &[s.vocab as i64]);
    let (token, check) = build(&probe.ctx, logits, s);
    probe.expand(token);
    probe.expand(check);
    // SAFETY: dev is a registered device.
    s.unsupported = unsafe { probe.first_unsupported_on(dev) };
    // The probe's input tensor goes with the probe.
    s.input = std::ptr::null_mut();
    s.unsupported.is_none()
}

/// The draw's nodes over `logits` ([V]) in `g`, with its input tensor: the sampled token
/// (I32 [1]) and the check value (F32 [1]).
fn build(g: &Ctx, logits: T, s: &mut State) -> (T, T) {
    let v = logits.ne()[0];
    let w = s.window as i64;
    let input = g
        .new_tensor(ggml::F32, &[w + 2])
        .set_input()
        .name("flm_text_draw");
    s.input = input.raw();
    let window =
        (w > 0).then(|| g.reshape(g.cast(g.view(input, &[w], &[], 0), ggml::I32), &[w, 1]));
    let draw = sample_graph::build(
        g,
        g.reshape(logits, &[v, 1]),
        &s.params,
        &DrawInputs {
            window,
            uniform: g.view(input, &[1, 1], &[4], w as usize * 4),
            penalty: Some(g.view(input, &[1], &[], (w as usize + 1) * 4)),
            mask: None,
        },
    );
    (
        g.reshape(draw.token, &[1]),
        g.reshape(g.cont(draw.check), &[1]),
    )
}

unsafe extern "C" fn backend_apply(
    smpl: *mut sys::llama_sampler,
    ctx: *mut sys::ggml_context,
    _: *mut sys::ggml_cgraph,
    data: *mut sys::llama_sampler_data,
) {
    let s = state_of(smpl);
    // SAFETY: llama.cpp's graph context and sampler data, valid for this call; the context
    // outlives the nodes built into it (llama.cpp frees it with its graph), and Ctx::borrowed
    // never frees it.
    unsafe {
        let g = Ctx::borrowed(ctx);
        let logits = T::from_raw((*data).logits);
        let (token, check) = build(&g, logits, s);
        (*data).sampled = token.raw();
        (*data).probs = check.raw();
        if !s.keep_logits {
            (*data).logits = std::ptr::null_mut();
        }
    }
}

unsafe extern "C" fn backend_set_input(smpl: *mut sys::llama_sampler) {
    let s = state_of(smpl);
    if let Some(input) = NonNull::new(s.input) {
        let bytes = std::mem::size_of_val(s.values.as_slice());
        // SAFETY: the input tensor of the graph about to run, allocated by llama.cpp's
        // scheduler with exactly these bytes; the values live in our state.
        unsafe { sys::ggml_backend_tensor_set(input.as_ptr(), s.values.as_ptr().cast(), 0, bytes) };
    }
}

unsafe extern "C" fn backend_reset(smpl: *mut sys::llama_sampler) {
    state_of(smpl).input = std::ptr::null_mut();
}
