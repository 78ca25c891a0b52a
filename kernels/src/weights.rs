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

use crate::ggml::{Backend, Buffer, Ctx, T, Type};

enum Source {
    File { offset: usize, len: usize },
    Host(Vec<u8>),
}

/// Tensors to load, declared before the buffer is allocated.
pub struct WeightsBuilder {
    path: PathBuf,
    gguf: Gguf,
    map: Mmap,
    decl: Vec<(String, Type, Vec<i64>, Source)>,
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
        let t = self
            .gguf
            .tensor(name)
            .with_context(|| format!("{}: tensor `{name}` is missing", self.path.display()))?;
        let have: Vec<i64> = t.ne.iter().map(|&d| d as i64).collect();
        ensure!(
            have == ne,
            "{}: tensor `{name}` has shape {have:?}, expected {ne:?}",
            self.path.display()
        );
        let offset = (self.gguf.data_offset + t.offset) as usize;
        self.decl.push((
            name.to_string(),
            t.ty.id(),
            ne.to_vec(),
            Source::File {
                offset,
                len: t.n_bytes() as usize,
            },
        ));
        Ok(t.ty)
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
        self.decl
            .push((name.to_string(), ty, ne.to_vec(), Source::Host(data)));
    }

    pub fn build(self, backend: &Backend) -> Result<Weights> {
        let ctx = Ctx::new(self.decl.len(), 0);
        let mut tensors = HashMap::new();
        for (name, ty, ne, _) in &self.decl {
            let t = ctx.new_tensor(*ty, ne);
            tensors.insert(name.clone(), t);
        }
        let buffer = Buffer::alloc(&ctx, backend)?;
        for (name, _, _, src) in &self.decl {
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
            buffer,
            _ctx: ctx,
        })
    }
}

/// Loaded weights.
pub struct Weights {
    path: PathBuf,
    tensors: HashMap<String, T>,
    buffer: Buffer,
    // Holds the tensor descriptions the handles point into; dropped last.
    _ctx: Ctx,
}

impl Weights {
    pub fn get(&self, name: &str) -> T {
        *self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: weight `{name}` was not declared", self.path.display()))
    }

    pub fn bytes(&self) -> usize {
        self.buffer.bytes()
    }
}
