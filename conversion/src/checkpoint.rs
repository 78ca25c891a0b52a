//! Safetensors checkpoints (one file or an indexed set of shards), memory-mapped.
//!
//! Tensors are read a few rows at a time as f32, and the pages already read are handed back
//! to the kernel, so converting a 16 GB checkpoint keeps a small resident set.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors};

use crate::pages;

/// One tensor of a checkpoint.
#[derive(Clone, Debug)]
pub struct TensorRef {
    pub name: String,
    pub shard: usize,
    pub dtype: Dtype,
    /// PyTorch order (slowest axis first).
    pub shape: Vec<usize>,
    /// Absolute byte range in the shard file.
    pub start: usize,
    pub end: usize,
}

impl TensorRef {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of the fastest axis (1 for a scalar).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
}

struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// A memory-mapped checkpoint.
pub struct Checkpoint {
    shards: Vec<Shard>,
    tensors: BTreeMap<String, TensorRef>,
    /// What names this checkpoint in errors (the file, or the index of a sharded one).
    pub label: String,
}

impl Checkpoint {
    /// Opens a single safetensors file.
    pub fn open_file(path: &Path) -> Result<Checkpoint> {
        let mut ck = Checkpoint {
            shards: vec![],
            tensors: BTreeMap::new(),
            label: path.display().to_string(),
        };
        ck.add_shard(path)?;
        Ok(ck)
    }

    /// Opens a Hugging Face model folder: `model.safetensors`, or the shards listed by
    /// `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Checkpoint> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        if index.exists() {
            let text = std::fs::read_to_string(&index)
                .with_context(|| format!("{}: cannot read", index.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", index.display()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .with_context(|| format!("{}: no `weight_map` object", index.display()))?;
            let mut files = BTreeSet::new();
            for (name, file) in map {
                let file = file.as_str().with_context(|| {
                    format!("{}: `{name}` maps to a non-string", index.display())
                })?;
                ensure!(
                    !file.contains('/') && !file.contains('\\'),
                    "{}: shard name `{file}` is not a plain file name",
                    index.display()
                );
                files.insert(file.to_string());
            }
            let mut ck = Checkpoint {
                shards: vec![],
                tensors: BTreeMap::new(),
                label: index.display().to_string(),
            };
            for f in &files {
                let p = dir.join(f);
                ensure!(p.exists(), "{}: shard `{f}` is missing", index.display());
                ck.add_shard(&p)?;
            }
            for (name, file) in map {
                let t = ck.tensors.get(name);
                let in_file = t.map(|t| {
                    ck.shards[t.shard].path.file_name() == Some(file.as_str().unwrap().as_ref())
                });
                ensure!(
                    in_file == Some(true),
                    "{}: tensor `{name}` is not in shard `{}`",
                    index.display(),
                    file.as_str().unwrap()
                );
            }
            Ok(ck)
        } else if single.exists() {
            Checkpoint::open_file(&single)
        } else {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )
        }
    }

    fn add_shard(&mut self, path: &Path) -> Result<()> {
        let label = path.display().to_string();
        let file = File::open(path).with_context(|| format!("{label}: cannot open"))?;
        // SAFETY: the map is read-only; the file must not be truncated while we convert, as with
        // every mmap-based loader. A shorter file than the header says is rejected below.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{label}: cannot map"))?;
        let (header_len, meta) =
            SafeTensors::read_metadata(&map).map_err(|e| describe(&label, &map, e))?;
        let data_start = 8 + header_len;
        let shard = self.shards.len();
        for (name, info) in meta.tensors() {
            if self.tensors.contains_key(&name) {
                bail!("{label}: tensor `{name}` is also in another shard");
            }
            let (s, e) = info.data_offsets;
            let t = TensorRef {
                name: name.clone(),
                shard,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: data_start + s,
                end: data_start + e,
            };
            self.tensors.insert(name, t);
        }
        self.shards.push(Shard {
            path: path.to_path_buf(),
            map,
        });
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&TensorRef> {
        self.tensors.get(name)
    }

    pub fn tensors(&self) -> impl Iterator<Item = &TensorRef> {
        self.tensors.values()
    }

    /// The file that holds `t`, for error messages.
    pub fn file_of(&self, t: &TensorRef) -> &Path {
        &self.shards[t.shard].path
    }

    /// The raw header bytes of each shard (for the model id).
    pub fn headers(&self) -> impl Iterator<Item = &[u8]> {
        self.shards.iter().map(|s| {
            let n = u64::from_le_bytes(s.map[..8].try_into().unwrap()) as usize;
            &s.map[..8 + n]
        })
    }

    /// Raw bytes of a tensor.
    pub fn bytes(&self, t: &TensorRef) -> &[u8] {
        &self.shards[t.shard].map[t.start..t.end]
    }

    /// Converts elements `[first, first + out.len())` of `t` to f32, checking that each is finite.
    /// The pages read are released afterwards.
    pub fn read_f32(&self, t: &TensorRef, first: usize, out: &mut [f32]) -> Result<()> {
        let size = dtype_size(t.dtype).with_context(|| {
            format!(
                "{}: tensor `{}` has unsupported dtype {:?} (need BF16, F16 or F32)",
                self.file_of(t).display(),
                t.name,
                t.dtype
            )
        })?;
        let lo = t.start + first * size;
        let hi = lo + out.len() * size;
        assert!(hi <= t.end, "read past tensor end");
        let map = &self.shards[t.shard].map;
        let src = &map[lo..hi];
        match t.dtype {
            Dtype::BF16 => {
                for (d, s) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *d = half::bf16::from_le_bytes([s[0], s[1]]).to_f32();
                }
            }
            Dtype::F16 => {
                for (d, s) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *d = half::f16::from_le_bytes([s[0], s[1]]).to_f32();
                }
            }
            Dtype::F32 => {
                for (d, s) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                }
            }
            _ => unreachable!("checked by dtype_size"),
        }
        if let Some(i) = out.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: tensor `{}` holds {} at element {}",
                self.file_of(t).display(),
                t.name,
                out[i],
                first + i
            );
        }
        pages::release(map, lo, hi);
        Ok(())
    }
}

/// Bytes per element of the dtypes we convert from.
pub fn dtype_size(d: Dtype) -> Option<usize> {
    match d {
        Dtype::BF16 | Dtype::F16 => Some(2),
        Dtype::F32 => Some(4),
        _ => None,
    }
}

/// Turns a safetensors parse error into one line that says what is wrong with the file.
fn describe(label: &str, buf: &[u8], e: SafeTensorError) -> anyhow::Error {
    let header_len = buf
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    let what = match e {
        SafeTensorError::HeaderTooSmall => {
            "not a safetensors file (shorter than 8 bytes)".to_string()
        }
        SafeTensorError::HeaderTooLarge | SafeTensorError::InvalidHeaderLength => format!(
            "not a safetensors file or truncated (header length {} but file has {} bytes)",
            header_len.unwrap_or(0),
            buf.len()
        ),
        SafeTensorError::InvalidHeader(_) => "header is not UTF-8".to_string(),
        SafeTensorError::InvalidHeaderDeserialization(err) => format!("bad JSON header: {err}"),
        SafeTensorError::MetadataIncompleteBuffer
        | SafeTensorError::InvalidOffset(_)
        | SafeTensorError::TensorInvalidInfo
        | SafeTensorError::ValidationOverflow => {
            diagnose_offsets(buf).unwrap_or_else(|| e.to_string())
        }
        other => other.to_string(),
    };
    anyhow::anyhow!("{label}: {what}")
}

/// Finds the first tensor whose data offsets disagree with its shape, with the other tensors
/// or with the file length, and says which.
fn diagnose_offsets(buf: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(buf.get(8..8 + n)?).ok()?;
    let have = (buf.len() - 8 - n) as u64;
    let mut spans = vec![];
    for (name, v) in header
        .as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
    {
        let (s, e) = (
            v["data_offsets"][0].as_u64()?,
            v["data_offsets"][1].as_u64()?,
        );
        let dtype: Dtype = serde_json::from_value(v["dtype"].clone()).ok()?;
        let elems = v["shape"]
            .as_array()?
            .iter()
            .try_fold(1u64, |a, d| a.checked_mul(d.as_u64()?));
        let Some(need) = elems
            .and_then(|n| n.checked_mul(dtype.bitsize() as u64))
            .map(|b| b / 8)
        else {
            return Some(format!("tensor `{name}`: shape overflows"));
        };
        if e < s || e - s != need {
            return Some(format!(
                "tensor `{name}`: data offsets [{s}, {e}] do not hold the {need} bytes its shape and dtype need"
            ));
        }
        if e > have {
            return Some(format!(
                "truncated: tensor `{name}` needs data bytes {s}..{e}, the file holds {have}"
            ));
        }
        spans.push((s, e, name.clone()));
    }
    spans.sort();
    let mut end = 0;
    for (i, (s, e, name)) in spans.iter().enumerate() {
        if *s < end {
            return Some(format!(
                "tensor `{name}` has data offsets overlapping tensor `{}`",
                spans[i - 1].2
            ));
        }
        if *s > end {
            return Some(format!("gap in the data before tensor `{name}`"));
        }
        end = *e;
    }
    (end != have).then(|| {
        format!(
            "truncated or padded: header declares {end} bytes of tensor data, file holds {have}"
        )
    })
}
