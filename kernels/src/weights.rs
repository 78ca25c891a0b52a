//! Weights of a GGUF file in a backend buffer, looked up by name with their shapes checked.
//!
//! The file is memory-mapped and each selected tensor is copied once into the buffer. Tensors
//! that are derived from the file at load time (re-laid-out copies, precomputed norms) are
//! added from host memory.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use flm_conversion::{GgmlType, Gguf};
use memmap2::Mmap;

use crate::ggml::{Backend, Buffer, Ctx, ExtraBufferType, T, Type};

enum Source {
    File { offset: usize, len: usize },
    Host(Vec<u8>),
}

struct Decl {
    name: String,
    ty: Type,
    ne: Vec<i64>,
    src: Source,
    /// Only ever the weight of matrix-vector products: may live in a re-laid-out buffer.
    matrix: bool,
}

/// Tensors to load, declared before the buffer is allocated.
pub struct WeightsBuilder {
    path: PathBuf,
    gguf: Gguf,
    map: Mmap,
    decl: Vec<Decl>,
}

impl WeightsBuilder {
    pub fn open(path: &Path) -> Result<WeightsBuilder> {
        let gguf = Gguf::open(path)?;
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: read-only map of a file whose header (offsets, sizes) was validated against
        // its length; the file must not be truncated while loading, as for any mmap loader.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("{}: cannot map", path.display()))?;
        Ok(WeightsBuilder {
            path: path.to_path_buf(),
            gguf,
            map,
            decl: vec![],
        })
    }

    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Declares file tensor `name`, which must have ggml shape `ne`.
    pub fn tensor(&mut self, name: &str, ne: &[i64]) -> Result<GgmlType> {
        self.part(name, name, ne, None, false)
    }

    /// Declares `name` as part `i` of file tensor `of` (shape `ne`), split into `parts`
    /// equal parts along its slowest axis, used only as a matrix-vector weight.
    pub fn matrix_part(
        &mut self,
        name: &str,
        of: &str,
        ne: &[i64],
        i: usize,
        parts: usize,
    ) -> Result<()> {
        self.part(name, of, ne, Some((i, parts)), true).map(|_| ())
    }

    fn part(
        &mut self,
        name: &str,
        of: &str,
        ne: &[i64],
        part: Option<(usize, usize)>,
        matrix: bool,
    ) -> Result<GgmlType> {
        let t = self
            .gguf
            .tensor(of)
            .with_context(|| format!("{}: tensor `{of}` is missing", self.path.display()))?;
        let have: Vec<i64> = t.ne.iter().map(|&d| d as i64).collect();
        let (i, parts) = part.unwrap_or((0, 1));
        let mut whole = ne.to_vec();
        if parts > 1 {
            // A part of the slowest axis: [ne0, ne1] out of [ne0, ne1 · parts] or
            // [ne0, ne1, parts].
            if have.len() == ne.len() + 1 {
                whole.push(parts as i64);
            } else {
                *whole.last_mut().unwrap() *= parts as i64;
            }
        }
        ensure!(
            have == whole,
            "{}: tensor `{of}` has shape {have:?}, expected {whole:?}",
            self.path.display()
        );
        let len = t.n_bytes() as usize / parts;
        let offset = (self.gguf.data_offset + t.offset) as usize + i * len;
        self.decl.push(Decl {
            name: name.to_string(),
            ty: t.ty.id(),
            ne: ne.to_vec(),
            src: Source::File { offset, len },
            matrix,
        });
        Ok(t.ty)
    }

    /// Declares `name` as rows `first .. first + n` of file matrix `of` (rows of `ne0`
    /// values), used only as a matrix-vector weight.
    pub fn matrix_rows(
        &mut self,
        name: &str,
        of: &str,
        ne0: i64,
        first: usize,
        n: usize,
    ) -> Result<()> {
        let t = self
            .gguf
            .tensor(of)
            .with_context(|| format!("{}: tensor `{of}` is missing", self.path.display()))?;
        ensure!(
            t.ne.len() == 2 && t.ne[0] as i64 == ne0 && first + n <= t.ne[1] as usize,
            "{}: tensor `{of}` has shape {:?}, expected [{ne0}, at least {}]",
            self.path.display(),
            t.ne,
            first + n
        );
        let row = t.ty.row_bytes(t.ne[0]) as usize;
        self.decl.push(Decl {
            name: name.to_string(),
            ty: t.ty.id(),
            ne: vec![ne0, n as i64],
            src: Source::File {
                offset: (self.gguf.data_offset + t.offset) as usize + first * row,
                len: n * row,
            },
            matrix: true,
        });
        Ok(())
    }

    /// Raw bytes of a file tensor (for deriving tensors on the host).
    pub fn bytes(&self, name: &str) -> Result<(&[u8], GgmlType)> {
        let t = self
            .gguf
            .tensor(name)
            .with_context(|| format!("{}: tensor `{name}` is missing", self.path.display()))?;
        let offset = (self.gguf.data_offset + t.offset) as usize;
        Ok((&self.map[offset..offset + t.n_bytes() as usize], t.ty))
    }

    /// A file tensor's values as f32.
    pub fn f32s(&self, name: &str) -> Result<Vec<f32>> {
        let (bytes, ty) = self.bytes(name)?;
        let t = self.gguf.tensor(name).unwrap();
        let mut out = vec![0f32; t.n_elements() as usize];
        ty.dequantize(bytes, &mut out)?;
        Ok(out)
    }

    /// Declares a tensor computed on the host.
    pub fn host(&mut self, name: &str, ty: Type, ne: &[i64], data: Vec<u8>) {
        self.decl.push(Decl {
            name: name.to_string(),
            ty,
            ne: ne.to_vec(),
            src: Source::Host(data),
            matrix: false,
        });
    }

    /// Allocates every declared tensor on `backend` and copies its data in. Matrix weights
    /// that the CPU's re-laid-out buffer type supports go there (`extra`), the rest in plain
    /// memory.
    pub fn build(self, backend: &Backend, extra: bool) -> Result<Weights> {
        let plain = Ctx::new(self.decl.len(), 0);
        let relaid = Ctx::new(self.decl.len(), 0);
        let buft = if extra {
            ExtraBufferType::cpu().into_iter().next()
        } else {
            None
        };
        let mut tensors = HashMap::new();
        let mut n_relaid = 0;
        for d in &self.decl {
            let mut t = plain.new_tensor(d.ty, &d.ne);
            if let Some(b) = &buft
                && d.matrix
            {
                let r = relaid.new_tensor(d.ty, &d.ne);
                if b.supports_matmul_weight(r) {
                    t = r;
                    n_relaid += 1;
                }
            }
            tensors.insert(d.name.clone(), t);
        }
        let mut buffers = vec![Buffer::alloc(&plain, backend)?];
        if let (Some(b), true) = (&buft, n_relaid > 0) {
            buffers.push(Buffer::alloc_extra(&relaid, b)?);
        }
        for d in &self.decl {
            let (name, src) = (&d.name, &d.src);
            let t = tensors[name];
            let bytes: &[u8] = match src {
                Source::File { offset, len } => &self.map[*offset..offset + len],
                Source::Host(v) => v,
            };
            if bytes.len() != t.n_bytes() {
                bail!(
                    "{}: tensor `{name}` holds {} bytes, expected {}",
                    self.path.display(),
                    bytes.len(),
                    t.n_bytes()
                );
            }
            t.write_bytes(0, bytes);
        }
        Ok(Weights {
            path: self.path,
            tensors,
            buffers,
            _ctx: [plain, relaid],
        })
    }
}

/// Loaded weights.
pub struct Weights {
    path: PathBuf,
    tensors: HashMap<String, T>,
    buffers: Vec<Buffer>,
    // Hold the tensor descriptions the handles point into; dropped last.
    _ctx: [Ctx; 2],
}

impl Weights {
    pub fn get(&self, name: &str) -> T {
        *self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: weight `{name}` was not declared", self.path.display()))
    }

    pub fn bytes(&self) -> usize {
        self.buffers.iter().map(Buffer::bytes).sum()
    }
}
