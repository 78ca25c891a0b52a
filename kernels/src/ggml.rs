//! A thin, safe layer over ggml's graph and backend API.
//!
//! Every graph in flm-edge is built in a metadata-only context (`Ctx`), allocated with a
//! graph allocator or a backend buffer, and run with `ggml_backend_graph_compute`, so the
//! same graphs run on the CPU backend and on CUDA. This module is the only one in the crate
//! that calls ggml; the invariants it keeps are stated where it calls.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail, ensure};
use llama_cpp_sys_2 as sys;

pub use sys::ggml_type as Type;
pub const F32: Type = sys::GGML_TYPE_F32;
pub const F16: Type = sys::GGML_TYPE_F16;
pub const I32: Type = sys::GGML_TYPE_I32;
pub const I8: Type = sys::GGML_TYPE_I8;

/// GGML_ROPE_TYPE_NORMAL: rotate interleaved pairs (GPT-J layout), as Mimi does.
pub const ROPE_NORMAL: i32 = 0;
/// GGML_ROPE_TYPE_NEOX: rotate halves, as Qwen2 does.
pub const ROPE_NEOX: i32 = 2;

/// What our graphs cost in host-device traffic, counted process-wide since start: graph
/// computes, uploads and downloads with their bytes, and host synchronisations: the points
/// where the host waits for the device. A blocking compute, tensor set or tensor get waits
/// (ggml's compute is compute_async + synchronize; a set or get on a device buffer ends in a
/// stream synchronize), and so does each explicit synchronize; queued (`_async`) copies and
/// computes do not. Each graph compute is a launch (or, with CUDA graphs, one replay). On the
/// CPU backend the same operations are counted, as what a device backend would pay for them.
/// Relaxed atomics: no locks on the step path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub graphs: u64,
    pub uploads: u64,
    pub upload_bytes: u64,
    pub downloads: u64,
    pub download_bytes: u64,
    pub syncs: u64,
}

static GRAPHS: AtomicU64 = AtomicU64::new(0);
static UPLOADS: AtomicU64 = AtomicU64::new(0);
static UPLOAD_BYTES: AtomicU64 = AtomicU64::new(0);
static DOWNLOADS: AtomicU64 = AtomicU64::new(0);
static DOWNLOAD_BYTES: AtomicU64 = AtomicU64::new(0);
static SYNCS: AtomicU64 = AtomicU64::new(0);

impl Traffic {
    /// The counts so far.
    pub fn now() -> Traffic {
        Traffic {
            graphs: GRAPHS.load(Ordering::Relaxed),
            uploads: UPLOADS.load(Ordering::Relaxed),
            upload_bytes: UPLOAD_BYTES.load(Ordering::Relaxed),
            downloads: DOWNLOADS.load(Ordering::Relaxed),
            download_bytes: DOWNLOAD_BYTES.load(Ordering::Relaxed),
            syncs: SYNCS.load(Ordering::Relaxed),
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            graphs: self.graphs - earlier.graphs,
            uploads: self.uploads - earlier.uploads,
            upload_bytes: self.upload_bytes - earlier.upload_bytes,
            downloads: self.downloads - earlier.downloads,
            download_bytes: self.download_bytes - earlier.download_bytes,
            syncs: self.syncs - earlier.syncs,
        }
    }

    /// Host synchronisations these operations make on a device backend.
    pub fn synchronisations(&self) -> u64 {
        self.syncs
    }
}

pub(crate) fn count_upload(bytes: usize) {
    UPLOADS.fetch_add(1, Ordering::Relaxed);
    UPLOAD_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

pub(crate) fn count_download(bytes: usize) {
    DOWNLOADS.fetch_add(1, Ordering::Relaxed);
    DOWNLOAD_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

pub(crate) fn count_sync() {
    SYNCS.fetch_add(1, Ordering::Relaxed);
}

/// A tensor of a context: a handle, valid while the context that made it lives. Components
/// keep their contexts and the handles into them in the same struct, so handles never
/// outlive their context.
#[derive(Clone, Copy)]
pub struct T {
    raw: NonNull<sys::ggml_tensor>,
}

impl T {
    fn new(raw: *mut sys::ggml_tensor) -> T {
        T {
            raw: NonNull::new(raw).expect("ggml returned a null tensor (context too small?)"),
        }
    }

    pub fn raw(self) -> *mut sys::ggml_tensor {
        self.raw.as_ptr()
    }

    fn get(&self) -> &sys::ggml_tensor {
        // SAFETY: the tensor lives as long as its context (type invariant).
        unsafe { self.raw.as_ref() }
    }

    pub fn ne(&self) -> [i64; 4] {
        self.get().ne
    }

    pub fn nb(&self) -> [usize; 4] {
        self.get().nb
    }

    pub fn ty(&self) -> Type {
        self.get().type_
    }

    pub fn n_elements(&self) -> usize {
        self.ne().iter().product::<i64>() as usize
    }

    pub fn n_bytes(&self) -> usize {
        // SAFETY: valid tensor (see get).
        unsafe { sys::ggml_nbytes(self.raw()) }
    }

    /// Marks an input of a graph: allocated first, and (flagged as an output too) never
    /// reused for other nodes, so it still holds its values after a compute.
    pub fn set_input(self) -> Self {
        // SAFETY: valid tensor; only sets flags.
        unsafe {
            sys::ggml_set_input(self.raw());
            sys::ggml_set_output(self.raw());
        }
        self
    }

    /// Marks an output of a graph (kept after compute).
    pub fn set_output(self) -> Self {
        // SAFETY: valid tensor; only sets a flag.
        unsafe { sys::ggml_set_output(self.raw()) };
        self
    }

    pub fn name(self, name: &str) -> Self {
        let c = std::ffi::CString::new(name).unwrap_or_default();
        // SAFETY: valid tensor; ggml copies at most GGML_MAX_NAME bytes.
        unsafe { sys::ggml_set_name(self.raw(), c.as_ptr()) };
        self
    }

    /// Writes host data into an allocated tensor.
    pub fn write<E: Copy>(&self, data: &[E]) {
        let bytes = std::mem::size_of_val(data);
        assert_eq!(bytes, self.n_bytes(), "tensor write size");
        assert!(
            !self.get().data.is_null() || !self.get().buffer.is_null(),
            "tensor not allocated"
        );
        count_upload(bytes);
        count_sync();
        // SAFETY: the tensor is allocated in a backend buffer and `data` has exactly its size.
        unsafe { sys::ggml_backend_tensor_set(self.raw(), data.as_ptr().cast(), 0, bytes) };
    }

    /// Writes raw bytes at a byte offset of an allocated tensor.
    pub fn write_bytes(&self, offset: usize, data: &[u8]) {
        assert!(
            offset + data.len() <= self.n_bytes(),
            "tensor write out of range"
        );
        count_upload(data.len());
        count_sync();
        // SAFETY: in range of an allocated tensor.
        unsafe {
            sys::ggml_backend_tensor_set(self.raw(), data.as_ptr().cast(), offset, data.len())
        };
    }

    /// Zeroes `len` bytes from byte `offset` of an allocated tensor.
    pub fn zero_range(&self, offset: usize, len: usize) {
        assert!(
            offset + len <= self.n_bytes(),
            "tensor zeroing out of range"
        );
        assert!(!self.get().buffer.is_null(), "tensor not allocated");
        count_sync();
        // SAFETY: in range of a tensor allocated in a backend buffer.
        unsafe { sys::ggml_backend_tensor_memset(self.raw(), 0, offset, len) };
    }

    /// Reads an allocated tensor into host memory.
    pub fn read<E: Copy>(&self, out: &mut [E]) {
        let bytes = std::mem::size_of_val(out);
        assert_eq!(bytes, self.n_bytes(), "tensor read size");
        count_download(bytes);
        count_sync();
        // SAFETY: the tensor is allocated and `out` has exactly its size.
        unsafe { sys::ggml_backend_tensor_get(self.raw(), out.as_mut_ptr().cast(), 0, bytes) };
    }
}

/// Bytes of one element of `t` (of one block, for quantized types).
pub fn type_size(t: Type) -> usize {
    // SAFETY: ggml answers for every type id.
    unsafe { sys::ggml_type_size(t) }
}

/// A metadata-only ggml context: tensors and graphs are described here, their data lives in
/// backend buffers.
pub struct Ctx {
    raw: NonNull<sys::ggml_context>,
    /// Freed on drop; false for a context that llama.cpp owns (the text sampler builds into
    /// llama.cpp's graph context).
    owned: bool,
}

// SAFETY: a context is only used through &self / &mut self by one thread at a time.
unsafe impl Send for Ctx {}

macro_rules! unary {
    ($($name:ident => $f:ident),* $(,)?) => {$(
        pub fn $name(&self, a: T) -> T {
            // SAFETY: a belongs to this context (lifetime); ggml checks shapes and aborts on misuse.
            T::new(unsafe { sys::$f(self.raw(), a.raw()) })
        }
    )*};
}

macro_rules! binary {
    ($($name:ident => $f:ident),* $(,)?) => {$(
        pub fn $name(&self, a: T, b: T) -> T {
            // SAFETY: a and b belong to this context (lifetime); ggml checks shapes.
            T::new(unsafe { sys::$f(self.raw(), a.raw(), b.raw()) })
        }
    )*};
}

impl Ctx {
    /// A context for `n_tensors` tensor descriptions and one graph of `graph_nodes` nodes.
    pub fn new(n_tensors: usize, graph_nodes: usize) -> Ctx {
        // SAFETY: pure size computations.
        let size = unsafe {
            n_tensors * sys::ggml_tensor_overhead()
                + sys::ggml_graph_overhead_custom(graph_nodes.max(1), false)
        } + 1024;
        let params = sys::ggml_init_params {
            mem_size: size,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        };
        // SAFETY: ggml allocates and owns the metadata buffer; freed in Drop.
        let raw = unsafe { sys::ggml_init(params) };
        Ctx {
            raw: NonNull::new(raw).expect("ggml_init failed"),
            owned: true,
        }
    }

    /// A context that another library owns and frees, to build nodes into.
    ///
    /// # Safety
    /// `raw` must be a valid context that outlives the returned value.
    pub unsafe fn borrowed(raw: *mut sys::ggml_context) -> Ctx {
        Ctx {
            raw: NonNull::new(raw).expect("null ggml context"),
            owned: false,
        }
    }

    fn raw(&self) -> *mut sys::ggml_context {
        self.raw.as_ptr()
    }

    /// Bytes of data of every tensor of the context (before alignment).
    pub fn data_bytes(&self) -> usize {
        let mut total = 0;
        // SAFETY: walks this context's own tensor list; each is a valid tensor.
        unsafe {
            let mut t = sys::ggml_get_first_tensor(self.raw());
            while !t.is_null() {
                total += sys::ggml_nbytes(t);
                t = sys::ggml_get_next_tensor(self.raw(), t);
            }
        }
        total
    }

    pub fn new_tensor(&self, ty: Type, ne: &[i64]) -> T {
        assert!((1..=4).contains(&ne.len()));
        // SAFETY: ne has 1..=4 entries; no_alloc context, so no data is allocated here.
        T::new(unsafe { sys::ggml_new_tensor(self.raw(), ty, ne.len() as i32, ne.as_ptr()) })
    }

    unary! {
        cont => ggml_cont, transpose => ggml_transpose, gelu_erf => ggml_gelu_erf,
        silu => ggml_silu, argmax => ggml_argmax, neg => ggml_neg, sqr => ggml_sqr, sum_rows => ggml_sum_rows,
        exp => ggml_exp, cumsum => ggml_cumsum, step => ggml_step, relu => ggml_relu,
    }

    binary! {
        add => ggml_add, sub => ggml_sub, mul => ggml_mul, div => ggml_div, mul_mat => ggml_mul_mat,
        get_rows => ggml_get_rows, repeat => ggml_repeat, cpy => ggml_cpy,
    }

    /// Indices that sort each row in descending order (I32).
    pub fn argsort_desc(&self, a: T) -> T {
        // SAFETY: as for unary ops.
        T::new(unsafe { sys::ggml_argsort(self.raw(), a.raw(), sys::GGML_SORT_ORDER_DESC) })
    }

    /// Indices of the `k` largest values of each row, largest first (argsort and a view).
    pub fn argsort_top_k(&self, a: T, k: usize) -> T {
        // SAFETY: as for unary ops; ggml asserts k <= the row length.
        T::new(unsafe { sys::ggml_argsort_top_k(self.raw(), a.raw(), k as i32) })
    }

    /// `a` padded at the end of each dimension with `p` zeros.
    pub fn pad(&self, a: T, p: [i32; 4]) -> T {
        // SAFETY: as for unary ops.
        T::new(unsafe { sys::ggml_pad(self.raw(), a.raw(), p[0], p[1], p[2], p[3]) })
    }

    pub fn scale(&self, a: T, s: f32) -> T {
        // SAFETY: as for unary ops.
        T::new(unsafe { sys::ggml_scale(self.raw(), a.raw(), s) })
    }

    /// a·s + b.
    pub fn scale_bias(&self, a: T, s: f32, b: f32) -> T {
        // SAFETY: as for unary ops.
        T::new(unsafe { sys::ggml_scale_bias(self.raw(), a.raw(), s, b) })
    }

    pub fn clamp(&self, a: T, min: f32, max: f32) -> T {
        // SAFETY: as for unary ops.
        T::new(unsafe { sys::ggml_clamp(self.raw(), a.raw(), min, max) })
    }

    pub fn norm(&self, a: T, eps: f32) -> T {
        // SAFETY: as for unary ops.
        T::new(unsafe { sys::ggml_norm(self.raw(), a.raw(), eps) })
    }

    pub fn rms_norm(&self, a: T, eps: f32) -> T {
        // SAFETY: as for unary ops.
        T::new(unsafe { sys::ggml_rms_norm(self.raw(), a.raw(), eps) })
    }

    pub fn cast(&self, a: T, ty: Type) -> T {
        // SAFETY: as for unary ops.
        T::new(unsafe { sys::ggml_cast(self.raw(), a.raw(), ty) })
    }

    pub fn concat(&self, a: T, b: T, dim: i32) -> T {
        // SAFETY: as for binary ops.
        T::new(unsafe { sys::ggml_concat(self.raw(), a.raw(), b.raw(), dim) })
    }

    pub fn reshape(&self, a: T, ne: &[i64]) -> T {
        // SAFETY: ggml asserts that a is contiguous and the element counts match.
        T::new(unsafe {
            match *ne {
                [a0] => sys::ggml_reshape_1d(self.raw(), a.raw(), a0),
                [a0, a1] => sys::ggml_reshape_2d(self.raw(), a.raw(), a0, a1),
                [a0, a1, a2] => sys::ggml_reshape_3d(self.raw(), a.raw(), a0, a1, a2),
                [a0, a1, a2, a3] => sys::ggml_reshape_4d(self.raw(), a.raw(), a0, a1, a2, a3),
                _ => panic!("reshape to {} dims", ne.len()),
            }
        })
    }

    /// A view of `a` with shape `ne`, row strides `nb` (bytes, for dims 1..), at byte `offset`.
    pub fn view(&self, a: T, ne: &[i64], nb: &[usize], offset: usize) -> T {
        assert_eq!(nb.len() + 1, ne.len());
        // SAFETY: ggml checks that the view stays inside a's data.
        T::new(unsafe {
            match (ne, nb) {
                ([a0], []) => sys::ggml_view_1d(self.raw(), a.raw(), *a0, offset),
                ([a0, a1], [b1]) => sys::ggml_view_2d(self.raw(), a.raw(), *a0, *a1, *b1, offset),
                ([a0, a1, a2], [b1, b2]) => {
                    sys::ggml_view_3d(self.raw(), a.raw(), *a0, *a1, *a2, *b1, *b2, offset)
                }
                ([a0, a1, a2, a3], [b1, b2, b3]) => sys::ggml_view_4d(
                    self.raw(),
                    a.raw(),
                    *a0,
                    *a1,
                    *a2,
                    *a3,
                    *b1,
                    *b2,
                    *b3,
                    offset,
                ),
                _ => panic!("view of {} dims", ne.len()),
            }
        })
    }

    pub fn permute(&self, a: T, axes: [i32; 4]) -> T {
        // SAFETY: ggml checks the axes.
        T::new(unsafe {
            sys::ggml_permute(self.raw(), a.raw(), axes[0], axes[1], axes[2], axes[3])
        })
    }

    /// Unfolds a [L, IC] signal for a 1-D convolution with kernel `k` ([K, IC, OC]).
    pub fn im2col_1d(&self, k: T, x: T, stride: i32, ty: Type) -> T {
        // SAFETY: as for binary ops; no padding, no dilation.
        T::new(unsafe {
            sys::ggml_im2col(
                self.raw(),
                k.raw(),
                x.raw(),
                stride,
                0,
                0,
                0,
                1,
                0,
                false,
                ty,
            )
        })
    }

    pub fn repeat_4d(&self, a: T, ne: [i64; 4]) -> T {
        // SAFETY: as for unary ops; ggml checks that a's shape divides ne.
        T::new(unsafe { sys::ggml_repeat_4d(self.raw(), a.raw(), ne[0], ne[1], ne[2], ne[3]) })
    }

    /// Writes rows of `src` into rows `idx` of `dst`; returns `dst` as modified.
    pub fn set_rows(&self, dst: T, src: T, idx: T) -> T {
        // SAFETY: as for binary ops.
        T::new(unsafe { sys::ggml_set_rows(self.raw(), dst.raw(), src.raw(), idx.raw()) })
    }

    /// Rotary embedding of `a` ([head_dim, heads, T]) at positions `pos` (I32 [T]).
    pub fn rope(&self, a: T, pos: T, n_dims: i32, mode: i32, base: f32) -> T {
        // SAFETY: as for binary ops; no frequency factors, no context extension.
        T::new(unsafe {
            sys::ggml_rope_ext(
                self.raw(),
                a.raw(),
                pos.raw(),
                std::ptr::null_mut(),
                n_dims,
                mode,
                0,
                base,
                1.0,
                0.0,
                1.0,
                0.0,
                0.0,
            )
        })
    }

    /// softmax(a * scale + mask) over rows.
    pub fn soft_max_ext(&self, a: T, mask: Option<T>, scale: f32) -> T {
        let m = mask.map_or(std::ptr::null_mut(), |m| m.raw());
        // SAFETY: as for binary ops; the mask may be null.
        T::new(unsafe { sys::ggml_soft_max_ext(self.raw(), a.raw(), m, scale, 0.0) })
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: created by ggml_init in new(), freed once.
            unsafe { sys::ggml_free(self.raw()) }
        }
    }
}

/// A compute graph in its own context, with its allocator: built once, run many times.
pub struct Graph {
    // Field order matters for Drop: the allocator's buffers go before the context.
    galloc: NonNull<sys::ggml_gallocr>,
    graph: NonNull<sys::ggml_cgraph>,
    pub ctx: Ctx,
}

// SAFETY: used from one thread at a time through &mut self.
unsafe impl Send for Graph {}

impl Graph {
    /// A graph context sized for `max_nodes` nodes.
    pub fn new(max_nodes: usize) -> Graph {
        let ctx = Ctx::new(max_nodes, max_nodes);
        // SAFETY: the context has room for one graph of max_nodes nodes.
        let graph = unsafe { sys::ggml_new_graph_custom(ctx.raw(), max_nodes, false) };
        Graph {
            galloc: NonNull::dangling(),
            graph: NonNull::new(graph).expect("graph"),
            ctx,
        }
    }

    /// Adds `t` and everything it depends on, in dependency order.
    pub fn expand(&self, t: T) {
        // SAFETY: t belongs to self.ctx (callers build through self.ctx); the graph is sized.
        unsafe { sys::ggml_build_forward_expand(self.graph.as_ptr(), t.raw()) }
    }

    /// Allocates every intermediate tensor on `backend`.
    pub fn allocate(&mut self, backend: &Backend) -> Result<()> {
        // SAFETY: the backend is valid; the allocator is freed in Drop.
        unsafe {
            let galloc =
                sys::ggml_gallocr_new(sys::ggml_backend_get_default_buffer_type(backend.raw()));
            let Some(galloc) = NonNull::new(galloc) else {
                bail!("ggml_gallocr_new failed")
            };
            self.galloc = galloc;
            ensure!(
                sys::ggml_gallocr_alloc_graph(galloc.as_ptr(), self.graph.as_ptr()),
                "graph allocation failed"
            );
        }
        Ok(())
    }

    /// Bytes of the allocator's buffer.
    pub fn buffer_bytes(&self) -> usize {
        // SAFETY: allocated in allocate().
        unsafe { sys::ggml_gallocr_get_buffer_size(self.galloc.as_ptr(), 0) }
    }

    pub fn n_nodes(&self) -> i32 {
        // SAFETY: valid graph.
        unsafe { sys::ggml_graph_n_nodes(self.graph.as_ptr()) }
    }

    /// Runs the graph and waits for it.
    pub fn compute(&mut self, backend: &Backend) -> Result<()> {
        GRAPHS.fetch_add(1, Ordering::Relaxed);
        count_sync();
        // SAFETY: the graph was allocated on this backend's buffer type.
        let status = unsafe { sys::ggml_backend_graph_compute(backend.raw(), self.graph.as_ptr()) };
        ensure!(
            status == sys::GGML_STATUS_SUCCESS,
            "ggml graph compute failed (status {status})"
        );
        Ok(())
    }

    /// Queues the graph on the backend's stream without waiting (the CPU backend runs it
    /// before returning); `Backend::synchronize` waits for it.
    pub fn compute_async(&mut self, backend: &Backend) -> Result<()> {
        GRAPHS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the graph was allocated on this backend's buffer type.
        let status =
            unsafe { sys::ggml_backend_graph_compute_async(backend.raw(), self.graph.as_ptr()) };
        ensure!(
            status == sys::GGML_STATUS_SUCCESS,
            "ggml graph compute failed (status {status})"
        );
        Ok(())
    }

    /// Asks the backend whether it runs every node of the graph (op, types and shapes): one
    /// line naming the first it does not, instead of ggml's abort in the middle of a compute.
    pub fn check_supported(&self, backend: &Backend, what: &str) -> Result<()> {
        check_nodes(self.graph.as_ptr(), backend, what)
    }
}

/// `check_supported` over the nodes of a graph.
fn check_nodes(graph: *mut sys::ggml_cgraph, backend: &Backend, what: &str) -> Result<()> {
    // SAFETY: a valid backend and node; a query only.
    let supports =
        |node: *mut sys::ggml_tensor| unsafe { sys::ggml_backend_supports_op(backend.raw(), node) };
    if let Some(node) = first_unsupported(graph, supports) {
        bail!(
            "{}: the device cannot run {node} of the {what} (ggml's backend for it lacks that op for these types)",
            backend.name()
        );
    }
    Ok(())
}

/// The first node of `graph` that `supports` refuses, described (op, types, shape).
fn first_unsupported(
    graph: *mut sys::ggml_cgraph,
    supports: impl Fn(*mut sys::ggml_tensor) -> bool,
) -> Option<String> {
    // SAFETY: graph is a live graph whose nodes are valid tensors.
    let n = unsafe { sys::ggml_graph_n_nodes(graph) };
    for i in 0..n {
        // SAFETY: i < n_nodes.
        let node = unsafe { sys::ggml_graph_node(graph, i) };
        if !supports(node) {
            // SAFETY: a valid node; its sources are valid or null.
            let (ne, ty, srcs) = unsafe {
                let t = &*node;
                let srcs: Vec<String> = t
                    .src
                    .iter()
                    .filter(|s| !s.is_null())
                    .map(|&s| type_name((*s).type_))
                    .collect();
                (t.ne, type_name(t.type_), srcs)
            };
            return Some(format!(
                "{} ({ty} from {}, shape {:?})",
                op_desc(node),
                srcs.join(" and "),
                ne
            ));
        }
    }
    None
}

/// ggml's name of a type ("f32", "q8_0", …).
pub fn type_name(t: Type) -> String {
    // SAFETY: ggml returns a static string for every type id.
    unsafe { std::ffi::CStr::from_ptr(sys::ggml_type_name(t)) }
        .to_string_lossy()
        .into_owned()
}

/// The op types (as `ggml_op_desc` names them) of our graphs that the CUDA backend of the
/// pinned ggml implements (`ggml_backend_cuda_device_supports_op` in ggml-cuda.cu), so that
/// the graphs built for the CPU run on a Jetson GPU as they are. A graph that needs another op
/// fails the tests that check against this list.
pub const CUDA_OPS: &[&str] = &[
    "NONE",
    "VIEW",
    "RESHAPE",
    "PERMUTE",
    "TRANSPOSE",
    "CPY",
    "CONT",
    "GET_ROWS",
    "SET_ROWS",
    "MUL_MAT",
    "ADD",
    "SUB",
    "MUL",
    "SCALE",
    "CLAMP",
    "CONCAT",
    "REPEAT",
    "NORM",
    "RMS_NORM",
    "ROPE",
    "SOFT_MAX",
    "IM2COL",
    "ARGMAX",
    "EXP",
    "GELU_ERF",
    "SILU",
    // Sampling in the graphs: ARGSORT of the text vocabulary needs CUB (CUDA 11.7 or later,
    // as every JetPack since 5), CUMSUM, SUM_ROWS and PAD on f32, GET_ROWS and CPY of I32.
    "ARGSORT",
    "CUMSUM",
    "SUM_ROWS",
    "STEP",
    "RELU",
    "DIV",
    "PAD",
];

impl Graph {
    /// The op type of every node, in order (`ggml_op_desc`: unary and GLU ops by their own
    /// name).
    pub fn op_names(&self) -> Vec<String> {
        (0..self.n_nodes())
            .map(|i| {
                // SAFETY: i < n_nodes.
                op_desc(unsafe { sys::ggml_graph_node(self.graph.as_ptr(), i) })
            })
            .collect()
    }

    /// Times every node on its own (a developer tool: `bench mimi --ops`): op description,
    /// output shape, and microseconds averaged over `reps` runs.
    pub fn profile(
        &mut self,
        backend: &Backend,
        reps: usize,
    ) -> Result<Vec<(String, [i64; 4], f64)>> {
        let graph = self.graph.as_ptr();
        let nodes: Vec<*mut sys::ggml_tensor> = (0..self.n_nodes())
            // SAFETY: i < n_nodes.
            .map(|i| unsafe { sys::ggml_graph_node(graph, i) })
            .collect();
        // Every node kept (no memory shared between nodes) in an allocation of its own, so
        // that each node, run alone after one full compute, reads what its sources really
        // held (indices above all: a gather fed with another node's leftovers would abort).
        // SAFETY: valid nodes; only their output flag changes, restored below.
        let flags: Vec<i32> = nodes.iter().map(|&n| unsafe { (*n).flags }).collect();
        for &n in &nodes {
            // SAFETY: as above.
            unsafe { sys::ggml_set_output(n) };
        }
        // SAFETY: the backend is valid; this allocator is freed below, after the graph goes
        // back to its own allocator's layout.
        let galloc = unsafe {
            sys::ggml_gallocr_new(sys::ggml_backend_get_default_buffer_type(backend.raw()))
        };
        ensure!(!galloc.is_null(), "ggml_gallocr_new failed");
        // ggml's allocator places only tensors without an address: the nodes (views too)
        // lose theirs before each re-allocation; leaves (weights, state, inputs) keep theirs.
        let unplace = || {
            for &n in &nodes {
                // SAFETY: valid nodes; their next allocation sets both fields again.
                unsafe {
                    (*n).data = std::ptr::null_mut();
                    (*n).buffer = std::ptr::null_mut();
                }
            }
        };
        unplace();
        let timed = (|| -> Result<Vec<(String, [i64; 4], f64)>> {
            // SAFETY: the graph's nodes get addresses in the profile allocator's buffer.
            ensure!(
                unsafe { sys::ggml_gallocr_alloc_graph(galloc, graph) },
                "profile: graph allocation failed"
            );
            // SAFETY: an allocated graph on its backend.
            let status = unsafe { sys::ggml_backend_graph_compute(backend.raw(), graph) };
            ensure!(status == sys::GGML_STATUS_SUCCESS, "profile compute failed");
            let scratch = Ctx::new(0, 1);
            // SAFETY: the scratch context has room for one graph of one node.
            let one = unsafe { sys::ggml_new_graph_custom(scratch.raw(), 1, false) };
            let mut out = vec![];
            for &node in &nodes {
                // SAFETY: the one-node graph reuses the node's allocated tensors, so computing
                // it reads and writes only them.
                unsafe { sys::ggml_graph_add_node(one, node) };
                let t0 = std::time::Instant::now();
                for _ in 0..reps.max(1) {
                    // SAFETY: as above.
                    let status = unsafe { sys::ggml_backend_graph_compute(backend.raw(), one) };
                    ensure!(status == sys::GGML_STATUS_SUCCESS, "profile compute failed");
                }
                let us = t0.elapsed().as_secs_f64() * 1e6 / reps.max(1) as f64;
                // SAFETY: valid node.
                let ne = unsafe { (*node).ne };
                out.push((op_desc(node), ne, us));
                // SAFETY: empties the scratch graph for the next node.
                unsafe { sys::ggml_graph_clear(one) };
            }
            Ok(out)
        })();
        // SAFETY: the flags as they were, then the graph's own allocator lays it out again as
        // before (same graph, same flags: the same addresses), and the profile's is freed.
        unsafe {
            for (&n, &f) in nodes.iter().zip(&flags) {
                (*n).flags = f;
            }
            unplace();
            let restored = sys::ggml_gallocr_alloc_graph(self.galloc.as_ptr(), graph);
            sys::ggml_gallocr_free(galloc);
            ensure!(
                restored,
                "profile: the graph's allocation could not be restored"
            );
        }
        timed
    }
}

/// ggml's name of a node's op (unary and GLU ops by their own name). `node` must be a node
/// of a live graph.
fn op_desc(node: *mut sys::ggml_tensor) -> String {
    // SAFETY: a valid node (the callers take it from their graph); ggml_op_desc returns a
    // static string.
    unsafe { std::ffi::CStr::from_ptr(sys::ggml_op_desc(node)) }
        .to_string_lossy()
        .into_owned()
}

impl Drop for Graph {
    fn drop(&mut self) {
        if self.galloc != NonNull::dangling() {
            // SAFETY: created in allocate(), freed once; the graph's context is freed after.
            unsafe { sys::ggml_gallocr_free(self.galloc.as_ptr()) }
        }
    }
}

/// A backend: the CPU, or a device of a GPU backend compiled in.
pub struct Backend {
    raw: NonNull<sys::ggml_backend>,
}

// SAFETY: a backend is used by one thread at a time through its owner.
unsafe impl Send for Backend {}

pub use crate::device::Device;

impl Backend {
    /// The backend of `device` (resolved through ggml's device registry); `threads` for
    /// the CPU.
    pub fn new(device: Device, threads: usize) -> Result<Backend> {
        let dev = device.resolve()?;
        if dev.is_cpu() {
            return Backend::cpu(threads);
        }
        // One start at a time in the process: a GPU backend sets its device up on its first
        // start (ggml-vulkan: `ggml_vk_get_device` fills a global table unguarded), and two
        // first starts at once would each make a device, the buffers of one then refused by
        // the other's backend.
        static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: a registered device; default parameters; freed in Drop.
        let raw = unsafe { sys::ggml_backend_dev_init(dev.raw(), std::ptr::null()) };
        let Some(raw) = NonNull::new(raw) else {
            bail!("backend {device}: {} failed to start", dev.info().name)
        };
        Ok(Backend { raw })
    }

    /// Whether this is the CPU backend (whose extra buffer types re-lay weights out).
    pub fn is_cpu(&self) -> bool {
        // SAFETY: valid backend.
        unsafe { sys::ggml_backend_is_cpu(self.raw()) }
    }

    /// ggml's name of the backend ("CPU", "CUDA0", …).
    pub fn name(&self) -> String {
        // SAFETY: valid backend; ggml returns a C string it owns.
        unsafe { std::ffi::CStr::from_ptr(sys::ggml_backend_name(self.raw())) }
            .to_string_lossy()
            .into_owned()
    }

    /// The CPU backend with `threads` threads.
    pub fn cpu(threads: usize) -> Result<Backend> {
        // SAFETY: plain constructor; freed in Drop.
        let raw = unsafe { sys::ggml_backend_cpu_init() };
        let Some(raw) = NonNull::new(raw) else {
            bail!("ggml CPU backend failed to start")
        };
        // SAFETY: raw is a CPU backend.
        unsafe { sys::ggml_backend_cpu_set_n_threads(raw.as_ptr(), threads.max(1) as i32) };
        Ok(Backend { raw })
    }

    pub(crate) fn raw(&self) -> *mut sys::ggml_backend {
        self.raw.as_ptr()
    }

    /// Whether the backend multiplies a weight of type `ty` and shape [ne0, rows] with a
    /// vector (a device may refuse a weight larger than the buffers its kernels can address).
    pub fn supports_matmul(&self, ty: Type, ne0: i64, rows: i64) -> bool {
        let scratch = Ctx::new(4, 0);
        let w = scratch.new_tensor(ty, &[ne0, rows]);
        let x = scratch.new_tensor(F32, &[ne0, 1]);
        let y = scratch.mul_mat(w, x);
        // SAFETY: a valid backend and an unallocated op; a query of its types and shapes only.
        unsafe { sys::ggml_backend_supports_op(self.raw(), y.raw()) }
    }

    /// Waits until everything queued on the backend has run.
    pub fn synchronize(&self) {
        count_sync();
        // SAFETY: valid backend.
        unsafe { sys::ggml_backend_synchronize(self.raw()) }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: created in cpu() or new(), freed once after every buffer and graph using it.
        unsafe { sys::ggml_backend_free(self.raw()) }
    }
}

/// A buffer type of the CPU device beyond plain memory: ggml's "extra" types keep matrix
/// weights re-laid-out (interleaved rows) for faster matrix-vector kernels, as llama.cpp
/// does for its own weights. Data written into such a buffer is re-laid-out on the way in.
#[derive(Clone, Copy)]
pub struct ExtraBufferType {
    raw: sys::ggml_backend_buffer_type_t,
    dev: sys::ggml_backend_dev_t,
}

// SAFETY: buffer types and devices are process-wide static objects of ggml.
unsafe impl Send for ExtraBufferType {}

impl ExtraBufferType {
    /// The CPU device's extra buffer types (none on builds or CPUs without them).
    pub fn cpu() -> Vec<ExtraBufferType> {
        let mut out = vec![];
        // SAFETY: device and registry lookups return static objects or null; the proc
        // address, when present, has the documented `ggml_backend_dev_get_extra_bufts_t`
        // signature and returns a null-terminated array of static buffer types.
        unsafe {
            let dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
            if dev.is_null() {
                return out;
            }
            let reg = sys::ggml_backend_dev_backend_reg(dev);
            let name = c"ggml_backend_dev_get_extra_bufts";
            let f = sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr());
            if f.is_null() {
                return out;
            }
            let f: sys::ggml_backend_dev_get_extra_bufts_t = std::mem::transmute(f);
            let Some(f) = f else { return out };
            let mut p = f(dev);
            while !p.is_null() && !(*p).is_null() {
                out.push(ExtraBufferType { raw: *p, dev });
                p = p.add(1);
            }
        }
        out
    }

    pub fn name(&self) -> String {
        // SAFETY: a static buffer type; ggml returns a static C string.
        unsafe { std::ffi::CStr::from_ptr(sys::ggml_backend_buft_name(self.raw)) }
            .to_string_lossy()
            .into_owned()
    }

    /// Whether `w ×` vector would run on this buffer type's kernels if `w` lived in it.
    /// `w` must not be allocated yet.
    pub fn supports_matmul_weight(&self, w: T) -> bool {
        let scratch = Ctx::new(4, 0);
        let x = scratch.new_tensor(F32, &[w.ne()[0], 1]);
        let y = scratch.mul_mat(w, x);
        // SAFETY: as llama.cpp does: a zero-size buffer of this type is attached to the
        // unallocated weight only for the duration of the query, then detached and freed.
        unsafe {
            let dummy = sys::ggml_backend_buft_alloc_buffer(self.raw, 0);
            if dummy.is_null() {
                return false;
            }
            (*w.raw()).buffer = dummy;
            let ok = sys::ggml_backend_dev_supports_op(self.dev, y.raw());
            (*w.raw()).buffer = std::ptr::null_mut();
            sys::ggml_backend_buffer_free(dummy);
            ok
        }
    }
}

/// A backend buffer holding every tensor of a context (weights, streaming state).
pub struct Buffer {
    raw: NonNull<sys::ggml_backend_buffer>,
}

// SAFETY: owned by one component, used by one thread at a time.
unsafe impl Send for Buffer {}

impl Buffer {
    /// Allocates all tensors of `ctx` on `backend` and zeroes them. A device without room
    /// is one line saying how much was asked for and how much the device has.
    pub fn alloc(ctx: &Ctx, backend: &Backend) -> Result<Buffer> {
        // SAFETY: ctx is a no_alloc context whose tensors get their data in this buffer.
        let (raw, messages) = crate::log::capture(|| unsafe {
            sys::ggml_backend_alloc_ctx_tensors(ctx.raw(), backend.raw())
        });
        let Some(raw) = NonNull::new(raw) else {
            let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: the backend's device (a static registry object) and two out-params.
            unsafe {
                let dev = sys::ggml_backend_get_device(backend.raw());
                if !dev.is_null() {
                    sys::ggml_backend_dev_memory(dev, &mut free, &mut total);
                }
            }
            let why = crate::log::last_error(&messages)
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            bail!(
                "{}: cannot allocate {:.0} MiB ({:.0} MiB free of {:.0}){why}",
                backend.name(),
                mib(ctx.data_bytes()),
                mib(free),
                mib(total)
            )
        };
        let b = Buffer { raw };
        b.advise_huge_pages();
        b.clear();
        Ok(b)
    }

    /// Allocates all tensors of `ctx` in a buffer of an extra CPU type (not zeroed: every
    /// tensor is written whole afterwards).
    pub fn alloc_extra(ctx: &Ctx, buft: &ExtraBufferType) -> Result<Buffer> {
        // SAFETY: ctx is a no_alloc context whose tensors get their data in this buffer.
        let raw = unsafe { sys::ggml_backend_alloc_ctx_tensors_from_buft(ctx.raw(), buft.raw) };
        let Some(raw) = NonNull::new(raw) else {
            bail!("cannot allocate a ggml buffer of type {}", buft.name())
        };
        let b = Buffer { raw };
        b.advise_huge_pages();
        Ok(b)
    }

    /// Asks the kernel for transparent huge pages under a host buffer before its pages are
    /// first touched. A codec frame streams every weight once; with 4 KiB pages the TLB
    /// misses hold a core to about half of its streaming bandwidth. Advice only: a kernel
    /// that says no (THP off, not Linux) leaves the buffer as it was.
    fn advise_huge_pages(&self) {
        #[cfg(target_os = "linux")]
        {
            const HUGE_PAGE: usize = 2 << 20;
            const MADV_HUGEPAGE: std::ffi::c_int = 14;
            unsafe extern "C" {
                fn madvise(
                    addr: *mut std::ffi::c_void,
                    len: usize,
                    advice: std::ffi::c_int,
                ) -> std::ffi::c_int;
            }
            // SAFETY: valid buffer; base and size describe its own allocation.
            let (host, base, size) = unsafe {
                (
                    sys::ggml_backend_buffer_is_host(self.raw.as_ptr()),
                    sys::ggml_backend_buffer_get_base(self.raw.as_ptr()) as usize,
                    sys::ggml_backend_buffer_get_size(self.raw.as_ptr()),
                )
            };
            let start = base.next_multiple_of(HUGE_PAGE);
            let end = (base + size) / HUGE_PAGE * HUGE_PAGE;
            if host && end > start {
                // SAFETY: [start, end) lies inside the buffer's own mapping; MADV_HUGEPAGE
                // changes how it is backed, never its contents.
                unsafe { madvise(start as *mut _, end - start, MADV_HUGEPAGE) };
            }
        }
    }

    pub fn clear(&self) {
        // SAFETY: valid buffer.
        unsafe { sys::ggml_backend_buffer_clear(self.raw.as_ptr(), 0) }
    }

    pub fn bytes(&self) -> usize {
        // SAFETY: valid buffer.
        unsafe { sys::ggml_backend_buffer_get_size(self.raw.as_ptr()) }
    }

    /// The buffer's base address in its device's address space, as a number (for offsets of
    /// the tensors in it; never dereferenced).
    pub(crate) fn base(&self) -> usize {
        // SAFETY: valid buffer; a getter.
        unsafe { sys::ggml_backend_buffer_get_base(self.raw.as_ptr()) as usize }
    }

    pub(crate) fn raw(&self) -> *mut sys::ggml_backend_buffer {
        self.raw.as_ptr()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: allocated in alloc(), freed once.
        unsafe { sys::ggml_backend_buffer_free(self.raw.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node the backend cannot run is one line naming the device, the op with its types
    /// and shape, and the graph, found before any compute (ggml would abort in it).
    #[test]
    fn a_node_the_backend_cannot_run_is_one_line() {
        let cpu = Backend::cpu(1).unwrap();
        let graph = Graph::new(8);
        let g = &graph.ctx;
        // The CPU backend multiplies f32 weights only by f32 activations, never by I32.
        let w = g.new_tensor(F32, &[4, 3]);
        let x = g.new_tensor(I32, &[4, 1]);
        let y = g.mul_mat(w, x);
        graph.expand(y);
        let e = graph
            .check_supported(&cpu, "test graph")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "CPU: the device cannot run MUL_MAT (f32 from f32 and i32, shape [3, 1, 1, 1]) of the test graph (ggml's backend for it lacks that op for these types)"
        );
    }

    /// A model the device has no room for: one line with the device, the size asked for and
    /// what the device has, not an abort.
    #[test]
    fn a_buffer_the_device_cannot_hold_is_one_line() {
        let ctx = Ctx::new(2, 0);
        // 16 TiB of f32.
        ctx.new_tensor(F32, &[1 << 40, 4]);
        ctx.new_tensor(F32, &[16]);
        let cpu = Backend::cpu(1).unwrap();
        let e = Buffer::alloc(&ctx, &cpu).err().unwrap().to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.starts_with("CPU: cannot allocate 16777216 MiB ("), "{e}");
        assert!(e.contains("MiB free of"), "{e}");
    }
}
