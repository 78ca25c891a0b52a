//! The backbone file through llama.cpp's own decode: one step feeds the summed input embedding
//! of one 80 ms frame and returns the text logits and the hidden state after the final norm.
//! The runtime steps its own graph (`flm_kernels::backbone`); llama.cpp is the reference it is
//! tested against (the converted file is llama.cpp's `qwen2`, and stock llama.cpp must load
//! it) and the peer `bench step` times beside it.
//!
//! The safe `llama-cpp-2` wrapper cannot feed embeddings (its batch is token-only), so this
//! module wraps the raw C API. It is the only place in the runtime that calls llama.cpp.

use std::ffi::CString;
use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result, bail, ensure};
use flm_kernels::device::Device;
use flm_kernels::log;
use llama_cpp_sys_2 as sys;

use crate::placement::Placement;

pub struct BackboneParams {
    /// KV cache positions (steps).
    pub n_ctx: u32,
    pub n_threads: i32,
    /// Where the layers, the output head and the KV cache go: the CPU, or every layer on
    /// one GPU device.
    pub device: Device,
    /// Keep the KV cache in f32 instead of f16 (twice the memory; f16 values alone move
    /// f32-weight outputs by about 1e-3).
    pub kv_f32: bool,
    pub flash_attn: bool,
}

impl Default for BackboneParams {
    fn default() -> Self {
        BackboneParams {
            n_ctx: 512,
            n_threads: crate::default_threads() as i32,
            device: Device::Cpu,
            kv_f32: false,
            flash_attn: false,
        }
    }
}

pub struct LlamaBackbone {
    model: *mut sys::llama_model,
    ctx: *mut sys::llama_context,
    batch: sys::llama_batch,
    token_batch: sys::llama_batch,
    n_embd: usize,
    n_vocab: usize,
    placement: Placement,
}

// SAFETY: the llama.cpp model and context are used from one thread at a time (&mut self for
// every call that touches the context); llama.cpp keeps no thread-local state for them.
unsafe impl Send for LlamaBackbone {}

static INIT: Once = Once::new();

fn init_backend() {
    INIT.call_once(|| {
        // SAFETY: called once per process, before any model is loaded; the callback is a
        // plain function that lives forever (it also becomes ggml's).
        unsafe {
            sys::llama_log_set(log::callback_for_llama(), std::ptr::null_mut());
            sys::llama_backend_init();
        }
    });
}

impl LlamaBackbone {
    pub fn load(path: &Path, params: &BackboneParams) -> Result<LlamaBackbone> {
        init_backend();
        let label = path.display().to_string();
        ensure!(path.is_file(), "{label}: no such file");
        let cpath =
            CString::new(path.as_os_str().as_encoded_bytes()).context("path contains NUL")?;
        let device = params.device.resolve()?;
        // The devices llama.cpp may use, NULL-terminated: the one chosen, or none for the
        // CPU (by default it would take every GPU it finds, and skip integrated ones when a
        // discrete one is there).
        let mut devices = [std::ptr::null_mut(); 2];
        if !device.is_cpu() {
            devices[0] = device.raw();
        }
        let ((model, ctx), messages) = log::capture(|| {
            // SAFETY: default params are plain data; the path and the device list are valid
            // for the call (llama.cpp copies the list).
            let model = unsafe {
                let mut mp = sys::llama_model_default_params();
                mp.devices = devices.as_mut_ptr();
                // Every layer and the output head on the device (llama.cpp caps the count).
                mp.n_gpu_layers = if device.is_cpu() { 0 } else { 999 };
                mp.split_mode = sys::LLAMA_SPLIT_MODE_NONE;
                mp.main_gpu = 0;
                sys::llama_model_load_from_file(cpath.as_ptr(), mp)
            };
            if model.is_null() {
                return (model, std::ptr::null_mut());
            }
            (model, Self::new_context(model, params))
        });
        // On failure llama.cpp's own last error is the reason, in the one line.
        let why = log::last_error(&messages)
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        if model.is_null() {
            bail!("{label}: llama.cpp could not load this backbone{why}");
        }
        if ctx.is_null() {
            // SAFETY: model is valid and owned here.
            unsafe { sys::llama_model_free(model) };
            bail!(
                "{label}: llama.cpp could not create a context on {}{why}",
                device.info().name
            );
        }
        log::pass_on(&messages);
        // SAFETY: model is valid; these are getters.
        let (n_embd, n_vocab) = unsafe {
            (
                sys::llama_model_n_embd(model) as usize,
                sys::llama_vocab_n_tokens(sys::llama_model_get_vocab(model)) as usize,
            )
        };
        // SAFETY: ctx is valid. Clearing the KV cache's data writes all of it, so its memory
        // is resident from the start instead of growing step by step.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(ctx), true) };
        // SAFETY: allocates room for one embedding row of n_embd floats and one sequence id.
        let batch = unsafe { sys::llama_batch_init(1, n_embd as i32, 1) };
        // SAFETY: a plain token batch of one, for `decode_token` (benchmarks).
        let token_batch = unsafe { sys::llama_batch_init(1, 0, 1) };
        Ok(LlamaBackbone {
            model,
            ctx,
            batch,
            token_batch,
            n_embd,
            n_vocab,
            placement: Placement::from_log(&messages),
        })
    }

    /// A context of `params` on `model` (null when llama.cpp refuses).
    fn new_context(
        model: *mut sys::llama_model,
        params: &BackboneParams,
    ) -> *mut sys::llama_context {
        // SAFETY: model is a valid, non-null model; context params are plain data.
        unsafe {
            let mut cp = sys::llama_context_default_params();
            cp.n_ctx = params.n_ctx;
            cp.n_batch = 32;
            cp.n_ubatch = 32;
            cp.n_seq_max = 1;
            cp.n_threads = params.n_threads;
            cp.n_threads_batch = params.n_threads;
            cp.embeddings = true;
            cp.pooling_type = sys::LLAMA_POOLING_TYPE_NONE;
            cp.no_perf = true;
            // The CPU flash-attention kernel rounds queries through f16 (errors of 1e-3 on
            // f32 weights); the plain path keeps f32 end to end.
            cp.flash_attn_type = if params.flash_attn {
                sys::LLAMA_FLASH_ATTN_TYPE_ENABLED
            } else {
                sys::LLAMA_FLASH_ATTN_TYPE_DISABLED
            };
            if params.kv_f32 {
                cp.type_k = sys::GGML_TYPE_F32;
                cp.type_v = sys::GGML_TYPE_F32;
            }
            sys::llama_init_from_model(model, cp)
        }
    }

    /// Where llama.cpp put the weights and the KV cache, as its load said.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// A metadata string of the loaded file.
    pub fn meta(&self, key: &str) -> Option<String> {
        let ckey = CString::new(key).ok()?;
        let mut buf = vec![0u8; 256];
        // SAFETY: model is valid; buf has buf.len() writable bytes and llama.cpp NUL-terminates.
        let n = unsafe {
            sys::llama_model_meta_val_str(
                self.model,
                ckey.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return None;
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Some(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    /// Runs one step: `embd` (n_embd floats) at position `pos`, appended to the KV cache.
    pub fn step(&mut self, embd: &[f32], pos: i32) -> Result<()> {
        self.decode_embd(embd, pos, true)
    }

    /// As `step`, but asks for no output: llama.cpp then skips the final norm and the text
    /// head (benchmarks use the difference to time the head).
    pub fn step_without_head(&mut self, embd: &[f32], pos: i32) -> Result<()> {
        self.without_embeddings(|b| b.decode_embd(embd, pos, false))
    }

    /// Runs `f` with llama.cpp's embedding output off (it would force an output row).
    fn without_embeddings(&mut self, f: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        // SAFETY: ctx is valid; the flag only changes what the next decodes output.
        unsafe { sys::llama_set_embeddings(self.ctx, false) };
        let r = f(self);
        // SAFETY: as above.
        unsafe { sys::llama_set_embeddings(self.ctx, true) };
        r
    }

    /// Runs one ordinary text token at `pos`, logits only (benchmarks: llama.cpp's own
    /// decode path).
    pub fn decode_token(&mut self, token: i32, pos: i32) -> Result<()> {
        self.without_embeddings(|b| b.decode_token_inner(token, pos))
    }

    fn decode_token_inner(&mut self, token: i32, pos: i32) -> Result<()> {
        // SAFETY: the token batch was allocated for one token with one sequence id.
        let rc = unsafe {
            *self.token_batch.token = token;
            *self.token_batch.pos = pos;
            *self.token_batch.n_seq_id = 1;
            **self.token_batch.seq_id = 0;
            *self.token_batch.logits = 1;
            self.token_batch.n_tokens = 1;
            sys::llama_decode(self.ctx, self.token_batch)
        };
        ensure!(
            rc == 0,
            "llama_decode failed with code {rc} at position {pos}"
        );
        Ok(())
    }

    /// Drops positions `keep .. keep + n` from the KV cache and moves the later ones `n`
    /// positions down (llama.cpp re-rotates their keys), so that the context goes on from
    /// a lower position.
    pub fn discard(&mut self, keep: i32, n: i32) -> Result<()> {
        // SAFETY: ctx is valid; memory operations on sequence 0 between decodes.
        unsafe {
            let mem = sys::llama_get_memory(self.ctx);
            ensure!(
                sys::llama_memory_can_shift(mem),
                "this backbone's KV cache cannot be shifted"
            );
            ensure!(
                sys::llama_memory_seq_rm(mem, 0, keep, keep + n),
                "llama.cpp could not drop positions {keep}..{}",
                keep + n
            );
            sys::llama_memory_seq_add(mem, 0, keep + n, -1, -n);
        }
        Ok(())
    }

    /// Highest position held by the KV cache (-1 when empty).
    pub fn max_pos(&self) -> i32 {
        // SAFETY: ctx is valid; a getter.
        unsafe { sys::llama_memory_seq_pos_max(sys::llama_get_memory(self.ctx), 0) }
    }

    fn decode_embd(&mut self, embd: &[f32], pos: i32, output: bool) -> Result<()> {
        ensure!(
            embd.len() == self.n_embd,
            "backbone step: {} values, expected {}",
            embd.len(),
            self.n_embd
        );
        // SAFETY: the batch was allocated for one row of n_embd floats with one sequence id;
        // we fill exactly that, then hand it to llama_decode on our own context.
        let rc = unsafe {
            std::ptr::copy_nonoverlapping(embd.as_ptr(), self.batch.embd, self.n_embd);
            *self.batch.pos = pos;
            *self.batch.n_seq_id = 1;
            **self.batch.seq_id = 0;
            *self.batch.logits = output as i8;
            self.batch.n_tokens = 1;
            sys::llama_decode(self.ctx, self.batch)
        };
        ensure!(
            rc == 0,
            "llama_decode failed with code {rc} at position {pos}"
        );
        Ok(())
    }

    /// Text logits of the last step; an error when it had no output row (a step without
    /// its head, or none yet).
    pub fn logits(&self) -> Result<&[f32]> {
        // SAFETY: ctx is valid; llama.cpp returns null (and logs) when row 0 has no output.
        let p = unsafe { sys::llama_get_logits_ith(self.ctx, 0) };
        ensure!(!p.is_null(), "backbone: the last step produced no logits");
        // SAFETY: non-null: n_vocab logits of output row 0, valid until the next decode
        // (which needs &mut self).
        Ok(unsafe { std::slice::from_raw_parts(p, self.n_vocab) })
    }

    /// Hidden state of the last step, after the final RMSNorm; an error as for `logits`.
    pub fn hidden(&self) -> Result<&[f32]> {
        // SAFETY: as for logits; embeddings are on, so row 0 holds n_embd floats.
        let p = unsafe { sys::llama_get_embeddings_ith(self.ctx, 0) };
        ensure!(
            !p.is_null(),
            "backbone: the last step produced no hidden state"
        );
        // SAFETY: non-null: n_embd floats of output row 0, valid until the next decode.
        Ok(unsafe { std::slice::from_raw_parts(p, self.n_embd) })
    }

    /// Forgets every cached position.
    pub fn clear(&mut self) {
        // SAFETY: ctx is valid; clearing the memory is always allowed between decodes.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ctx), true) };
    }
}

impl Drop for LlamaBackbone {
    fn drop(&mut self) {
        // SAFETY: each was created in load() and is freed exactly once, context before model.
        unsafe {
            sys::llama_batch_free(self.batch);
            sys::llama_batch_free(self.token_batch);
            sys::llama_free(self.ctx);
            sys::llama_model_free(self.model);
        }
    }
}
