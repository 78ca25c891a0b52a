//! Tensors that cross between the host and a device together: laid side by side in one
//! backend buffer, mirrored in one host buffer (pinned memory where the device offers it), and
//! moved in one queued copy each way. A graph's per-call inputs of every type (samples, codes,
//! slot indices, masks, noise) go up in one upload; its outputs (codes, tokens, audio) come
//! down in one download. Nothing here waits: the caller synchronises once per stage.
//!
//! The device buffer is addressed as one raw byte tensor (`span`) that aliases every tensor of
//! the block, so that a single `ggml_backend_tensor_set_async` or `_get_async` covers them all.
//! Only the host mirror is ever read or written by the host.

use std::ptr::NonNull;

use anyhow::{Result, bail, ensure};
use llama_cpp_sys_2 as sys;

use crate::ggml::{self, Backend, Buffer, Ctx, T, Type};

/// Host memory for a block's mirror: a pinned buffer of the device's host buffer type (CUDA:
/// page-locked, so a queued copy does not stage through a bounce buffer), or plain memory.
enum HostMem {
    Pinned {
        buffer: NonNull<sys::ggml_backend_buffer>,
        base: NonNull<u8>,
        len: usize,
    },
    Plain(Vec<u64>),
}

// SAFETY: the memory is owned by this value and used by one thread at a time.
unsafe impl Send for HostMem {}

impl HostMem {
    /// `len` bytes, pinned when the backend's device has a host buffer type of its own.
    fn new(backend: &Backend, len: usize) -> HostMem {
        // SAFETY: device and buffer-type lookups return static objects or null; a buffer of
        // the host type is host memory whose base stays valid until the buffer is freed
        // (in Drop), and is zeroed here before use.
        unsafe {
            let dev = sys::ggml_backend_get_device(backend.raw());
            if !dev.is_null() && !backend.is_cpu() {
                let buft = sys::ggml_backend_dev_host_buffer_type(dev);
                if !buft.is_null() {
                    let buffer = sys::ggml_backend_buft_alloc_buffer(buft, len.max(1));
                    if let Some(buffer) = NonNull::new(buffer) {
                        let base = sys::ggml_backend_buffer_get_base(buffer.as_ptr()) as *mut u8;
                        if let Some(base) = NonNull::new(base)
                            && sys::ggml_backend_buffer_is_host(buffer.as_ptr())
                        {
                            std::ptr::write_bytes(base.as_ptr(), 0, len);
                            return HostMem::Pinned { buffer, base, len };
                        }
                        sys::ggml_backend_buffer_free(buffer.as_ptr());
                    }
                }
            }
        }
        HostMem::Plain(vec![0u64; len.div_ceil(8)])
    }

    fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: base points at len bytes owned by the buffer (see new).
            HostMem::Pinned { base, len, .. } => unsafe {
                std::slice::from_raw_parts(base.as_ptr(), *len)
            },
            // SAFETY: a Vec<u64> viewed as its bytes.
            HostMem::Plain(v) => unsafe {
                std::slice::from_raw_parts(v.as_ptr().cast(), v.len() * 8)
            },
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            // SAFETY: as in bytes(), borrowed mutably through &mut self.
            HostMem::Pinned { base, len, .. } => unsafe {
                std::slice::from_raw_parts_mut(base.as_ptr(), *len)
            },
            // SAFETY: as in bytes().
            HostMem::Plain(v) => unsafe {
                std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len() * 8)
            },
        }
    }

    fn is_pinned(&self) -> bool {
        matches!(self, HostMem::Pinned { .. })
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        if let HostMem::Pinned { buffer, .. } = self {
            // SAFETY: allocated in new(), freed once.
            unsafe { sys::ggml_backend_buffer_free(buffer.as_ptr()) }
        }
    }
}

/// Declares the tensors of a block before it is allocated.
pub struct StagingBuilder {
    ctx: Ctx,
    tensors: Vec<T>,
}

impl StagingBuilder {
    /// A block of at most `n` tensors.
    pub fn new(n: usize) -> StagingBuilder {
        StagingBuilder {
            ctx: Ctx::new(n, 0),
            tensors: vec![],
        }
    }

    /// A tensor of the block (its data lives in the block's device buffer).
    pub fn tensor(&mut self, ty: Type, ne: &[i64], name: &str) -> T {
        let t = self.ctx.new_tensor(ty, ne).name(name);
        self.tensors.push(t);
        t
    }

    /// Allocates the block on `backend`, zeroed on both sides.
    pub fn build(self, backend: &Backend) -> Result<Staging> {
        ensure!(!self.tensors.is_empty(), "an empty staging block");
        let buffer = Buffer::alloc(&self.ctx, backend)?;
        let base = buffer.base();
        let size = buffer.bytes();
        let offsets = self
            .tensors
            .iter()
            .map(|t| {
                // SAFETY: every tensor of the context was just allocated in `buffer`, so its
                // data address lies in [base, base + size); only the difference is used.
                let data = unsafe { (*t.raw()).data } as usize;
                let off = data - base;
                assert!(off + t.n_bytes() <= size, "tensor outside its block");
                (t.raw(), off, t.n_bytes())
            })
            .collect();
        let span_ctx = Ctx::new(1, 0);
        let span = span_ctx.new_tensor(ggml::I8, &[size as i64]).name("span");
        // SAFETY: the span covers exactly the buffer's own range, starting at its base; it is
        // only ever the source or target of whole-range copies.
        let status =
            unsafe { sys::ggml_backend_tensor_alloc(buffer.raw(), span.raw(), base as *mut _) };
        if status != sys::GGML_STATUS_SUCCESS {
            bail!(
                "{}: cannot address a staging block (status {status})",
                backend.name()
            );
        }
        let host = HostMem::new(backend, size);
        Ok(Staging {
            span,
            host,
            offsets,
            dirty: None,
            _span_ctx: span_ctx,
            buffer,
            _ctx: self.ctx,
        })
    }
}

/// A block of tensors moved between host and device in one copy.
pub struct Staging {
    span: T,
    host: HostMem,
    /// Each tensor, its byte offset in the block and its size.
    offsets: Vec<(*mut sys::ggml_tensor, usize, usize)>,
    /// Bytes of the host mirror written since the last upload.
    dirty: Option<(usize, usize)>,
    // Dropped after the span and tensors that point into it.
    _span_ctx: Ctx,
    buffer: Buffer,
    _ctx: Ctx,
}

// SAFETY: the raw tensor pointers are only compared, never dereferenced here; the block is
// owned by one component and used by one thread at a time.
unsafe impl Send for Staging {}

/// Plain values that may be copied to and from bytes.
pub trait Pod: Copy + Default {}
impl Pod for f32 {}
impl Pod for i32 {}

impl Staging {
    fn place(&self, t: T) -> (usize, usize) {
        let (_, off, len) = *self
            .offsets
            .iter()
            .find(|(p, _, _)| *p == t.raw())
            .expect("tensor of another staging block");
        (off, len)
    }

    /// Writes `data` into the host mirror of `t`, from element `at` on; the next upload
    /// carries it.
    pub fn put<E: Pod>(&mut self, t: T, at: usize, data: &[E]) {
        let (off, len) = self.place(t);
        let es = std::mem::size_of::<E>();
        let (start, n) = (off + at * es, std::mem::size_of_val(data));
        assert!(at * es + n <= len, "staging write out of range");
        let dst = &mut self.host.bytes_mut()[start..start + n];
        // SAFETY: plain values (Pod) copied to bytes of exactly their size.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().cast::<u8>(), dst.as_mut_ptr(), n) };
        self.dirty = Some(match self.dirty {
            None => (start, start + n),
            Some((a, b)) => (a.min(start), b.max(start + n)),
        });
    }

    /// Reads `t` from the host mirror (after a download), from element `at` on.
    pub fn get<E: Pod>(&self, t: T, at: usize, out: &mut [E]) {
        let (off, len) = self.place(t);
        let es = std::mem::size_of::<E>();
        let (start, n) = (off + at * es, std::mem::size_of_val(out));
        assert!(at * es + n <= len, "staging read out of range");
        let src = &self.host.bytes()[start..start + n];
        // SAFETY: bytes of exactly the size of `out`, copied into plain values (Pod).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), out.as_mut_ptr().cast::<u8>(), n) };
    }

    /// Queues the copy of what was written since the last upload (one contiguous range) to
    /// the device. The host mirror must not change until the backend is synchronised.
    pub fn upload(&mut self, backend: &Backend) {
        let Some((a, b)) = self.dirty.take() else {
            return;
        };
        ggml::count_upload(b - a);
        let src = &self.host.bytes()[a..b];
        // SAFETY: the span is allocated and [a, b) lies inside it; the host range stays valid
        // and unchanged until the caller synchronises (documented above).
        unsafe {
            sys::ggml_backend_tensor_set_async(
                backend.raw(),
                self.span.raw(),
                src.as_ptr().cast(),
                a,
                b - a,
            )
        };
    }

    /// Queues the copy of the whole block from the device into the host mirror; read it
    /// after the backend is synchronised.
    pub fn download(&mut self, backend: &Backend) {
        let n = self.host.bytes().len().min(self.span.n_bytes());
        ggml::count_download(n);
        let dst = self.host.bytes_mut();
        // SAFETY: the span is allocated with n bytes; the host mirror has at least n.
        unsafe {
            sys::ggml_backend_tensor_get_async(
                backend.raw(),
                self.span.raw(),
                dst.as_mut_ptr().cast(),
                0,
                n,
            )
        };
    }

    /// Whether the host mirror is pinned memory.
    pub fn is_pinned(&self) -> bool {
        self.host.is_pinned()
    }

    /// Bytes of the block.
    pub fn bytes(&self) -> usize {
        self.buffer.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::{F32, Graph, I32, Traffic};

    /// Inputs of two types go up in one copy, a graph turns them into outputs of two types,
    /// and those come down in one copy: values and counts as stated.
    #[test]
    fn a_block_goes_up_and_down_in_one_copy_each() {
        let cpu = Backend::cpu(1).unwrap();
        let mut ib = StagingBuilder::new(2);
        let x = ib.tensor(F32, &[5], "x");
        let ids = ib.tensor(I32, &[3], "ids");
        let mut inputs = ib.build(&cpu).unwrap();
        let mut ob = StagingBuilder::new(2);
        let y = ob.tensor(F32, &[5], "y");
        let picked = ob.tensor(F32, &[3], "picked");
        let mut outputs = ob.build(&cpu).unwrap();

        let mut graph = Graph::new(16);
        let g = &graph.ctx;
        let doubled = g.cpy(g.scale(x, 2.0), y);
        let rows = g.get_rows(g.reshape(x, &[1, 5]), ids);
        let gathered = g.cpy(g.reshape(rows, &[3]), picked);
        graph.expand(doubled);
        graph.expand(gathered);
        graph.allocate(&cpu).unwrap();
        graph.check_supported(&cpu, "test graph").unwrap();

        let before = Traffic::now();
        inputs.put(x, 0, &[1.0f32, 2.0, 3.0, 4.0, 5.0]);
        inputs.put(ids, 1, &[4i32, 0]);
        inputs.put(ids, 0, &[2i32]);
        inputs.upload(&cpu);
        graph.compute_async(&cpu).unwrap();
        outputs.download(&cpu);
        cpu.synchronize();
        let t = Traffic::now().since(&before);
        let mut got = [0f32; 5];
        outputs.get(y, 0, &mut got);
        assert_eq!(got, [2.0, 4.0, 6.0, 8.0, 10.0]);
        let mut got = [0f32; 3];
        outputs.get(picked, 0, &mut got);
        assert_eq!(got, [3.0, 5.0, 1.0]);
        // Other tests of this binary run beside this one and count too: at least ours.
        assert!(t.uploads >= 1 && t.downloads >= 1 && t.graphs >= 1 && t.syncs >= 1);
        // Nothing written since: nothing to upload.
        assert!(inputs.dirty.is_none());
    }
}
