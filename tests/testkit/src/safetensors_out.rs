//! A streaming safetensors writer: the header first, then each tensor's data as it is made,
//! so that a full-size checkpoint is written with bounded memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, ensure};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            _ => 2,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
        }
    }
    pub fn encode(self, src: &[f32], out: &mut Vec<u8>) {
        out.clear();
        match self {
            Dtype::F32 => src
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Dtype::F16 => src
                .iter()
                .for_each(|x| out.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes())),
            Dtype::BF16 => src
                .iter()
                .for_each(|x| out.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes())),
        }
    }
}

pub struct Entry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl Entry {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Writes `entries` to `path`; `fill(i, out)` supplies tensor i's values as f32, in chunks
/// through `out` (called repeatedly with the next chunk's length until the tensor is done).
pub fn write(
    path: &Path,
    entries: &[Entry],
    metadata: Option<&serde_json::Value>,
    mut fill: impl FnMut(usize, &mut [f32]),
) -> Result<()> {
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), m.clone());
    }
    let mut offset = 0usize;
    for e in entries {
        let n = e.n_elements() * e.dtype.size();
        header.insert(
            e.name.clone(),
            serde_json::json!({"dtype": e.dtype.name(), "shape": e.shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut text = serde_json::to_string(&serde_json::Value::Object(header))?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let file = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 22, file);
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(text.as_bytes())?;
    const CHUNK: usize = 1 << 20;
    let mut vals = vec![0f32; CHUNK];
    let mut bytes = Vec::with_capacity(CHUNK * 4);
    for (i, e) in entries.iter().enumerate() {
        let mut left = e.n_elements();
        while left > 0 {
            let n = left.min(CHUNK);
            fill(i, &mut vals[..n]);
            e.dtype.encode(&vals[..n], &mut bytes);
            w.write_all(&bytes)?;
            left -= n;
        }
    }
    w.flush()?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    ensure!(
        f.metadata()?.len() == (8 + text.len() + offset) as u64,
        "{}: short write",
        path.display()
    );
    Ok(())
}
