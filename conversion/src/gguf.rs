//! GGUF (version 3) files: a streaming writer and a validating reader.
//!
//! The writer knows every tensor's type and shape before any data is written, so the header
//! is written first and tensor data is streamed one tensor at a time: the converter never
//! holds more than one chunk of one tensor in memory. The reader parses the header of any
//! GGUF file (ours or llama.cpp's), checks every offset against the file size, and leaves the
//! data in place for the caller to map.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use crate::ggml_type::GgmlType;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const VERSION: u32 = 3;
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_NAME (64, including the terminating NUL).
pub const MAX_TENSOR_NAME: usize = 63;

/// A metadata value. Arrays hold values of one type.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
    /// Nested arrays are legal GGUF but unused by llama.cpp; kept opaque.
    Nested(usize),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::Str(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Nested(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn type_name(&self) -> &'static str {
        match self {
            Array::U8(_) => "u8",
            Array::I8(_) => "i8",
            Array::U16(_) => "u16",
            Array::I16(_) => "i16",
            Array::U32(_) => "u32",
            Array::I32(_) => "i32",
            Array::F32(_) => "f32",
            Array::Bool(_) => "bool",
            Array::Str(_) => "string",
            Array::U64(_) => "u64",
            Array::I64(_) => "i64",
            Array::F64(_) => "f64",
            Array::Nested(_) => "array",
        }
    }

    /// Elements as strings, for display.
    fn items(&self, n: usize) -> Vec<String> {
        fn f<T: std::fmt::Debug>(v: &[T], n: usize) -> Vec<String> {
            v.iter().take(n).map(|x| format!("{x:?}")).collect()
        }
        match self {
            Array::U8(v) => f(v, n),
            Array::I8(v) => f(v, n),
            Array::U16(v) => f(v, n),
            Array::I16(v) => f(v, n),
            Array::U32(v) => f(v, n),
            Array::I32(v) => f(v, n),
            Array::F32(v) => f(v, n),
            Array::Bool(v) => f(v, n),
            Array::Str(v) => f(v, n),
            Array::U64(v) => f(v, n),
            Array::I64(v) => f(v, n),
            Array::F64(v) => f(v, n),
            Array::Nested(_) => vec![],
        }
    }
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// Integer value of any integer type, for lookups that should not care about width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// One-line rendering for `inspect`: long strings and arrays are cut.
    pub fn display(&self) -> String {
        match self {
            Value::Str(s) => {
                let one_line: String = s.chars().take(80).collect::<String>().replace('\n', "\\n");
                if s.chars().count() > 80 {
                    format!("{one_line:?}… ({} bytes)", s.len())
                } else {
                    format!("{one_line:?}")
                }
            }
            Value::Array(a) => {
                let items = a.items(6);
                let more = if a.len() > items.len() { ", …" } else { "" };
                format!(
                    "[{} × {}] [{}{}]",
                    a.type_name(),
                    a.len(),
                    items.join(", "),
                    more
                )
            }
            Value::F32(v) => format!("{v}"),
            Value::F64(v) => format!("{v}"),
            Value::Bool(v) => format!("{v}"),
            other => other
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| format!("{other:?}")),
        }
    }
}

/// A tensor as the header describes it. `ne` is in ggml order (fastest axis first).
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub ne: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }

    pub fn n_bytes(&self) -> u64 {
        self.ty.bytes_for(&self.ne)
    }
}

// ---------------------------------------------------------------------------------------
// Writer

/// The tensors and metadata of one GGUF file, declared before any data is written.
#[derive(Default)]
pub struct GgufBuilder {
    kv: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
}

impl GgufBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&mut self, key: &str, value: Value) {
        if let Some(slot) = self.kv.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
        } else {
            self.kv.push((key.to_string(), value));
        }
    }

    pub fn add_tensor(&mut self, name: &str, ne: &[u64], ty: GgmlType) -> Result<()> {
        ensure!(
            name.len() <= MAX_TENSOR_NAME,
            "tensor name `{name}` is longer than {MAX_TENSOR_NAME} bytes"
        );
        ensure!(
            !self.tensors.iter().any(|t| t.name == name),
            "tensor `{name}` declared twice"
        );
        ensure!(
            (1..=4).contains(&ne.len()),
            "tensor `{name}` has {} dimensions",
            ne.len()
        );
        ensure!(
            ne[0].is_multiple_of(ty.block_size()),
            "tensor `{name}`: row of {} is not a multiple of the {} block size {}",
            ne[0],
            ty.name(),
            ty.block_size()
        );
        let offset = match self.tensors.last() {
            Some(t) => align(t.offset + t.n_bytes(), DEFAULT_ALIGNMENT),
            None => 0,
        };
        self.tensors.push(TensorInfo {
            name: name.to_string(),
            ne: ne.to_vec(),
            ty,
            offset,
        });
        Ok(())
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Writes the header, then calls `fill(i, sink)` for each tensor in declaration order.
    /// `fill` must write exactly the tensor's byte size.
    pub fn write<W: Write>(
        &self,
        out: W,
        mut fill: impl FnMut(usize, &mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let mut w = CountingWriter {
            inner: BufWriter::with_capacity(1 << 20, out),
            written: 0,
        };
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.kv.len() as u64).to_le_bytes())?;
        for (k, v) in &self.kv {
            write_str(&mut w, k)?;
            w.write_all(&v.type_id().to_le_bytes())?;
            write_value(&mut w, v)?;
        }
        for t in &self.tensors {
            write_str(&mut w, &t.name)?;
            w.write_all(&(t.ne.len() as u32).to_le_bytes())?;
            for d in &t.ne {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&t.ty.id().to_le_bytes())?;
            w.write_all(&t.offset.to_le_bytes())?;
        }
        pad_to(&mut w, DEFAULT_ALIGNMENT)?;
        let data_start = w.written;
        for (i, t) in self.tensors.iter().enumerate() {
            pad_to(&mut w, DEFAULT_ALIGNMENT)?;
            debug_assert_eq!(w.written - data_start, t.offset);
            let before = w.written;
            fill(i, &mut w)?;
            let n = w.written - before;
            ensure!(
                n == t.n_bytes(),
                "tensor `{}`: wrote {n} bytes, expected {}",
                t.name,
                t.n_bytes()
            );
        }
        w.inner.flush()?;
        Ok(())
    }
}

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

struct CountingWriter<W: Write> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn pad_to<W: Write>(w: &mut CountingWriter<W>, a: u64) -> io::Result<()> {
    let n = align(w.written, a) - w.written;
    w.write_all(&vec![0u8; n as usize])
}

fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes()),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::Str(s) => write_str(w, s),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Array(a) => write_array(w, a),
    }
}

fn write_array(w: &mut impl Write, a: &Array) -> io::Result<()> {
    macro_rules! num {
        ($id:expr, $v:expr) => {{
            w.write_all(&($id as u32).to_le_bytes())?;
            w.write_all(&($v.len() as u64).to_le_bytes())?;
            for x in $v {
                w.write_all(&x.to_le_bytes())?;
            }
            Ok(())
        }};
    }
    match a {
        Array::U8(v) => num!(0, v),
        Array::I8(v) => num!(1, v),
        Array::U16(v) => num!(2, v),
        Array::I16(v) => num!(3, v),
        Array::U32(v) => num!(4, v),
        Array::I32(v) => num!(5, v),
        Array::F32(v) => num!(6, v),
        Array::Bool(v) => {
            w.write_all(&7u32.to_le_bytes())?;
            w.write_all(&(v.len() as u64).to_le_bytes())?;
            w.write_all(&v.iter().map(|&b| b as u8).collect::<Vec<_>>())
        }
        Array::Str(v) => {
            w.write_all(&8u32.to_le_bytes())?;
            w.write_all(&(v.len() as u64).to_le_bytes())?;
            v.iter().try_for_each(|s| write_str(w, s))
        }
        Array::U64(v) => num!(10, v),
        Array::I64(v) => num!(11, v),
        Array::F64(v) => num!(12, v),
        Array::Nested(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "nested arrays are not written",
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Reader

/// Most elements of one metadata array (a vocabulary has about 150 000).
const MAX_ARRAY_LEN: u64 = 1 << 24;

/// The parsed header of a GGUF file.
#[derive(Debug)]
pub struct Gguf {
    pub version: u32,
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    pub alignment: u64,
    pub file_len: u64,
}

impl Gguf {
    /// Reads and validates the header of `path`. Errors name the file and the problem.
    pub fn open(path: &Path) -> Result<Gguf> {
        Self::read_header(path).with_context(|| path.display().to_string())
    }

    fn read_header(path: &Path) -> Result<Gguf> {
        let file = File::open(path).context("cannot open")?;
        let file_len = file.metadata()?.len();
        let mut r = Reader {
            inner: BufReader::new(file),
            file_len,
            pos: 0,
        };
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic)
            .context("not a GGUF file (too short)")?;
        ensure!(
            &magic == MAGIC,
            "not a GGUF file (magic {:?})",
            String::from_utf8_lossy(&magic)
        );
        let version = r.u32()?;
        ensure!(
            version == 2 || version == 3,
            "unsupported GGUF version {version}"
        );
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        // Each entry takes at least 8 bytes: counts beyond the file size are corrupt.
        ensure!(
            n_tensors <= file_len / 8 && n_kv <= file_len / 8,
            "corrupt header: {n_tensors} tensors, {n_kv} keys"
        );
        // Reserve no more than a sane header's worth up front: a corrupt count in a large file
        // must end in an error when the entries run out, not in a huge allocation.
        let mut kv = Vec::with_capacity(n_kv.min(1 << 12) as usize);
        for i in 0..n_kv {
            let key = r.string().with_context(|| format!("metadata key {i}"))?;
            let ty = r.u32()?;
            let value = r
                .value(ty, 0)
                .with_context(|| format!("metadata `{key}`"))?;
            kv.push((key, value));
        }
        let alignment = match kv.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, v)) => v
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .context("bad general.alignment")?,
            None => DEFAULT_ALIGNMENT,
        };
        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 12) as usize);
        for i in 0..n_tensors {
            let name = r.string().with_context(|| format!("tensor {i} name"))?;
            let n_dims = r.u32()?;
            ensure!(
                (1..=4).contains(&n_dims),
                "tensor `{name}`: {n_dims} dimensions"
            );
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(r.u64()?);
            }
            let ty_id = r.u32()?;
            let ty = GgmlType::from_id(ty_id)
                .with_context(|| format!("tensor `{name}`: unknown type {ty_id}"))?;
            let offset = r.u64()?;
            ensure!(
                offset % alignment == 0,
                "tensor `{name}`: offset {offset} not aligned to {alignment}"
            );
            tensors.push(TensorInfo {
                name,
                ne,
                ty,
                offset,
            });
        }
        let data_offset = align(r.pos, alignment);
        let data_len = file_len.saturating_sub(data_offset);
        let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
        for t in &tensors {
            let elems = t.ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let elems = elems
                .with_context(|| format!("tensor `{}`: shape {:?} overflows", t.name, t.ne))?;
            ensure!(
                t.ne[0] % t.ty.block_size() == 0,
                "tensor `{}`: row of {} is not a multiple of the {} block size",
                t.name,
                t.ne[0],
                t.ty.name()
            );
            let end = (elems / t.ty.block_size())
                .checked_mul(t.ty.block_bytes())
                .and_then(|bytes| t.offset.checked_add(bytes))
                .with_context(|| format!("tensor `{}`: size overflows", t.name))?;
            ensure!(
                end <= data_len,
                "truncated: tensor `{}` needs bytes {}..{} of the data section, which holds {data_len}",
                t.name,
                t.offset,
                end
            );
            spans.push((t.offset, end, &t.name));
        }
        spans.sort();
        for w in spans.windows(2) {
            ensure!(
                w[0].1 <= w[1].0,
                "tensors `{}` and `{}` overlap",
                w[0].2,
                w[1].2
            );
        }
        Ok(Gguf {
            version,
            kv,
            tensors,
            data_offset,
            alignment,
            file_len,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(Value::as_str)
            .with_context(|| format!("missing string `{key}`"))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(Value::as_u64)
            .with_context(|| format!("missing integer `{key}`"))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .and_then(Value::as_f64)
            .with_context(|| format!("missing number `{key}`"))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

struct Reader<R: Read> {
    inner: R,
    file_len: u64,
    pos: u64,
}

impl<R: Read + Seek> Reader<R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                anyhow::anyhow!("truncated header")
            } else {
                e.into()
            }
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn remaining(&self) -> u64 {
        self.file_len.saturating_sub(self.pos)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        ensure!(
            n <= self.remaining(),
            "truncated header: string of {n} bytes runs past the end of the file"
        );
        let mut b = vec![0u8; n as usize];
        self.read_exact(&mut b)?;
        String::from_utf8(b).context("string is not UTF-8")
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        let mut b8 = [0u8; 8];
        Ok(match ty {
            0 | 1 | 7 => {
                self.read_exact(&mut b8[..1])?;
                match ty {
                    0 => Value::U8(b8[0]),
                    1 => Value::I8(b8[0] as i8),
                    _ => Value::Bool(b8[0] != 0),
                }
            }
            2 | 3 => {
                self.read_exact(&mut b8[..2])?;
                let v = u16::from_le_bytes([b8[0], b8[1]]);
                if ty == 2 {
                    Value::U16(v)
                } else {
                    Value::I16(v as i16)
                }
            }
            4..=6 => {
                let v = self.u32()?;
                match ty {
                    4 => Value::U32(v),
                    5 => Value::I32(v as i32),
                    _ => Value::F32(f32::from_bits(v)),
                }
            }
            10..=12 => {
                let v = self.u64()?;
                match ty {
                    10 => Value::U64(v),
                    11 => Value::I64(v as i64),
                    _ => Value::F64(f64::from_bits(v)),
                }
            }
            8 => Value::Str(self.string()?),
            9 => {
                ensure!(depth < 2, "arrays nested too deep");
                let ety = self.u32()?;
                let n = self.u64()?;
                // Every element takes at least one byte.
                ensure!(
                    n <= self.remaining(),
                    "truncated header: array of {n} elements runs past the end of the file"
                );
                // Elements are held as values while read: bound what a corrupt count can cost.
                ensure!(
                    n <= MAX_ARRAY_LEN,
                    "array of {n} elements (more than {MAX_ARRAY_LEN})"
                );
                let mut items = Vec::with_capacity(n.min(1 << 20) as usize);
                for _ in 0..n {
                    items.push(self.value(ety, depth + 1)?);
                }
                Value::Array(collect_array(ety, items)?)
            }
            other => bail!("unknown value type {other}"),
        })
    }
}

fn collect_array(ety: u32, items: Vec<Value>) -> Result<Array> {
    macro_rules! take {
        ($variant:ident) => {
            Array::$variant(
                items
                    .into_iter()
                    .map(|v| match v {
                        Value::$variant(x) => x,
                        _ => unreachable!("array elements share one type"),
                    })
                    .collect(),
            )
        };
    }
    Ok(match ety {
        0 => take!(U8),
        1 => take!(I8),
        2 => take!(U16),
        3 => take!(I16),
        4 => take!(U32),
        5 => take!(I32),
        6 => take!(F32),
        7 => take!(Bool),
        8 => take!(Str),
        9 => Array::Nested(items.len()),
        10 => take!(U64),
        11 => take!(I64),
        12 => take!(F64),
        other => bail!("unknown array element type {other}"),
    })
}

/// Reads `n` bytes of a tensor's data (for small tensors and tests; big ones are mapped).
pub fn read_tensor_bytes(path: &Path, gguf: &Gguf, t: &TensorInfo) -> Result<Vec<u8>> {
    let mut f = File::open(path).with_context(|| path.display().to_string())?;
    f.seek(SeekFrom::Start(gguf.data_offset + t.offset))?;
    let mut buf = vec![0u8; t.n_bytes() as usize];
    f.read_exact(&mut buf)
        .with_context(|| format!("{}: tensor `{}`", path.display(), t.name))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_type_and_tensor_round_trips() {
        let dir = std::env::temp_dir().join(format!("flm-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.gguf");
        let mut b = GgufBuilder::new();
        let values = vec![
            ("a.u8", Value::U8(7)),
            ("a.i8", Value::I8(-7)),
            ("a.u16", Value::U16(700)),
            ("a.i16", Value::I16(-700)),
            ("a.u32", Value::U32(70_000)),
            ("a.i32", Value::I32(-70_000)),
            ("a.f32", Value::F32(0.25)),
            ("a.bool", Value::Bool(true)),
            ("a.str", Value::Str("wait <|x|> 等待".into())),
            ("a.u64", Value::U64(1 << 40)),
            ("a.i64", Value::I64(-(1 << 40))),
            ("a.f64", Value::F64(-1e-300)),
            ("a.arr_i32", Value::Array(Array::I32(vec![0, 1, -1]))),
            (
                "a.arr_str",
                Value::Array(Array::Str(vec!["x".into(), "".into(), "ü".into()])),
            ),
            ("a.arr_bool", Value::Array(Array::Bool(vec![true, false]))),
            ("a.arr_f32", Value::Array(Array::F32(vec![]))),
        ];
        for (k, v) in &values {
            b.set(k, v.clone());
        }
        b.add_tensor("x", &[3, 2], GgmlType::F32).unwrap();
        b.add_tensor("q", &[64, 2], GgmlType::Q8_0).unwrap();
        let x: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let q: Vec<f32> = (0..128).map(|i| i as f32 / 64.0 - 1.0).collect();
        let mut qbytes = vec![];
        GgmlType::Q8_0.quantize_rows(&q, 64, &mut qbytes).unwrap();
        b.write(File::create(&path).unwrap(), |i, w| {
            if i == 0 {
                x.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))?;
            } else {
                w.write_all(&qbytes)?;
            }
            Ok(())
        })
        .unwrap();
        let g = Gguf::open(&path).unwrap();
        assert_eq!(g.version, 3);
        for (k, v) in &values {
            assert_eq!(g.get(k), Some(v), "{k}");
        }
        let t = g.tensor("q").unwrap();
        assert_eq!((t.ne.clone(), t.ty), (vec![64, 2], GgmlType::Q8_0));
        assert_eq!(t.offset % DEFAULT_ALIGNMENT, 0);
        assert_eq!(read_tensor_bytes(&path, &g, t).unwrap(), qbytes);
        let raw = read_tensor_bytes(&path, &g, g.tensor("x").unwrap()).unwrap();
        let back: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(back, x);
        // Dequantized q8_0 is within half a step of the block absmax / 127.
        let mut deq = vec![0f32; 128];
        GgmlType::Q8_0.dequantize(&qbytes, &mut deq).unwrap();
        assert!(
            deq.iter()
                .zip(&q)
                .all(|(a, b)| (a - b).abs() <= 0.5 / 127.0 + 1e-3)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A small valid file: strings, an array of strings, numbers, two tensors.
    fn sample(path: &Path) -> Vec<u8> {
        let mut b = GgufBuilder::new();
        b.set("general.architecture", Value::Str("flm".into()));
        b.set("a.u32", Value::U32(7));
        b.set(
            "a.tokens",
            Value::Array(Array::Str(vec!["<|x|>".into(), "ab".into(), "".into()])),
        );
        b.set("a.f32s", Value::Array(Array::F32(vec![0.5, -1.0])));
        b.add_tensor("x", &[4, 2], GgmlType::F32).unwrap();
        b.add_tensor("q", &[32], GgmlType::Q8_0).unwrap();
        b.write(File::create(path).unwrap(), |i, w| {
            let n = if i == 0 { 32 } else { 34 };
            w.write_all(&vec![1u8; n])?;
            Ok(())
        })
        .unwrap();
        std::fs::read(path).unwrap()
    }

    /// Every byte of the header changed, and every length cut: `open` answers Ok or an error
    /// naming the file, never a panic.
    #[test]
    fn corrupt_headers_are_errors_not_panics() {
        let dir = std::env::temp_dir().join(format!("flm-gguf-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = sample(&dir.join("good.gguf"));
        let header_len = Gguf::open(&dir.join("good.gguf")).unwrap().data_offset as usize;
        let path = dir.join("bad.gguf");
        let mut cases: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
        for i in 0..header_len {
            for v in [
                0x00,
                0xff,
                0x7f,
                0x80,
                good[i] ^ 0x01,
                good[i].wrapping_add(8),
            ] {
                let mut b = good.clone();
                b[i] = v;
                cases.push(b);
            }
        }
        for bytes in cases {
            std::fs::write(&path, &bytes).unwrap();
            let r = std::panic::catch_unwind(|| Gguf::open(&path));
            let r = r.unwrap_or_else(|_| panic!("panic on {bytes:?}"));
            if let Err(e) = r {
                assert!(format!("{e:#}").contains("bad.gguf"), "{e:#}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A count or size near 2^64 in a file large enough to pass the size checks.
    #[test]
    fn absurd_counts_and_sizes_are_refused() {
        let dir = std::env::temp_dir().join(format!("flm-gguf-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.gguf");
        // A version-3 header claiming `tensors` and `keys`, then `fields` (each a u32, a u64 or
        // raw bytes), padded with 64 MiB of zeros.
        let file = |tensors: u64, keys: u64, fields: &[&[u8]]| {
            let mut b = b"GGUF".to_vec();
            b.extend(3u32.to_le_bytes());
            b.extend(tensors.to_le_bytes());
            b.extend(keys.to_le_bytes());
            fields.iter().for_each(|f| b.extend(*f));
            b.resize(b.len() + (64 << 20), 0);
            b
        };
        let (u32s, u64s) = (|v: u32| v.to_le_bytes(), |v: u64| v.to_le_bytes());
        // A metadata array of 2^25 u8 elements, within a 64 MiB file: key "a", type array,
        // element type u8, length.
        let arr = file(0, 1, &[&u64s(1), b"a", &u32s(9), &u32s(0), &u64s(1 << 25)]);
        std::fs::write(&path, arr).unwrap();
        let e = format!("{:#}", Gguf::open(&path).unwrap_err());
        assert!(e.contains("array of 33554432 elements"), "{e}");
        // A tensor whose byte size overflows u64: name "t", one dimension of 2^63, f32, offset 0.
        let t = file(
            1,
            0,
            &[&u64s(1), b"t", &u32s(1), &u64s(1 << 63), &u32s(0), &u64s(0)],
        );
        std::fs::write(&path, t).unwrap();
        let e = format!("{:#}", Gguf::open(&path).unwrap_err());
        assert!(e.contains("size overflows"), "{e}");
        // 2^23 keys claimed by a 64 MiB file of zeros: an error once the entries run out.
        let k = file(0, 1 << 23, &[]);
        std::fs::write(&path, k).unwrap();
        assert!(Gguf::open(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writer_refuses_bad_declarations() {
        let mut b = GgufBuilder::new();
        assert!(b.add_tensor(&"n".repeat(64), &[4], GgmlType::F32).is_err());
        assert!(b.add_tensor("q", &[48], GgmlType::Q4_K).is_err());
        b.add_tensor("t", &[4], GgmlType::F32).unwrap();
        assert!(b.add_tensor("t", &[4], GgmlType::F32).is_err());
    }
}
