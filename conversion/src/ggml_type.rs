//! ggml tensor types, and ggml's own quantize / dequantize routines.
//!
//! This is the only module of the crate that calls C. ggml's type table and row
//! (de)quantizers are pure functions of their arguments; the checks below keep every call
//! inside what ggml.h documents.

use std::ffi::CStr;
use std::fmt;

use anyhow::{Result, ensure};
use llama_cpp_sys_2 as sys;

/// A ggml tensor type that this build of ggml knows (non-zero block size).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlType(u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(sys::GGML_TYPE_F32);
    pub const F16: GgmlType = GgmlType(sys::GGML_TYPE_F16);
    pub const BF16: GgmlType = GgmlType(sys::GGML_TYPE_BF16);
    pub const Q4_0: GgmlType = GgmlType(sys::GGML_TYPE_Q4_0);
    pub const Q5_0: GgmlType = GgmlType(sys::GGML_TYPE_Q5_0);
    pub const Q5_1: GgmlType = GgmlType(sys::GGML_TYPE_Q5_1);
    pub const Q8_0: GgmlType = GgmlType(sys::GGML_TYPE_Q8_0);
    pub const Q3_K: GgmlType = GgmlType(sys::GGML_TYPE_Q3_K);
    pub const Q4_K: GgmlType = GgmlType(sys::GGML_TYPE_Q4_K);
    pub const Q5_K: GgmlType = GgmlType(sys::GGML_TYPE_Q5_K);
    pub const Q6_K: GgmlType = GgmlType(sys::GGML_TYPE_Q6_K);

    pub fn from_id(id: u32) -> Option<GgmlType> {
        if id >= sys::GGML_TYPE_COUNT {
            return None;
        }
        // SAFETY: id < GGML_TYPE_COUNT indexes ggml's static type table; removed types have block size 0.
        let blck = unsafe { sys::ggml_blck_size(id) };
        (blck > 0).then_some(GgmlType(id))
    }

    pub fn id(self) -> u32 {
        self.0
    }

    pub fn name(self) -> &'static str {
        // SAFETY: self.0 is a valid type id (constructor invariant); ggml returns a static C string.
        unsafe { CStr::from_ptr(sys::ggml_type_name(self.0)) }
            .to_str()
            .unwrap_or("?")
    }

    /// Elements per block (1 for plain float types).
    pub fn block_size(self) -> u64 {
        // SAFETY: valid type id (constructor invariant).
        unsafe { sys::ggml_blck_size(self.0) as u64 }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        // SAFETY: valid type id (constructor invariant).
        unsafe { sys::ggml_type_size(self.0) as u64 }
    }

    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes taken by a tensor of shape `ne` (ggml order); `ne[0]` must be a whole number of blocks.
    pub fn bytes_for(self, ne: &[u64]) -> u64 {
        let n: u64 = ne.iter().product();
        n / self.block_size() * self.block_bytes()
    }

    pub fn row_bytes(self, row_len: u64) -> u64 {
        row_len / self.block_size() * self.block_bytes()
    }

    /// Parses a type name as ggml spells it (`q4_K`, `f16`, ...), ignoring case.
    pub fn parse(name: &str) -> Option<GgmlType> {
        (0..sys::GGML_TYPE_COUNT)
            .filter_map(GgmlType::from_id)
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Quantizes whole rows of `src` (row length `row_len`) into `dst`, which it resizes.
    pub fn quantize_rows(self, src: &[f32], row_len: usize, dst: &mut Vec<u8>) -> Result<()> {
        ensure!(
            row_len > 0 && src.len().is_multiple_of(row_len),
            "quantize: {} values are not whole rows of {row_len}",
            src.len()
        );
        dst.clear();
        dst.resize(
            self.row_bytes(row_len as u64) as usize * (src.len() / row_len),
            0,
        );
        self.quantize_rows_into(src, row_len, dst)
    }

    /// Quantizes whole rows of `src` into `dst`, which must hold exactly their bytes.
    pub fn quantize_rows_into(self, src: &[f32], row_len: usize, dst: &mut [u8]) -> Result<()> {
        ensure!(
            row_len > 0 && src.len().is_multiple_of(row_len),
            "quantize: {} values are not whole rows of {row_len}",
            src.len()
        );
        ensure!(
            (row_len as u64).is_multiple_of(self.block_size()),
            "quantize: row {row_len} not a multiple of {} block",
            self.name()
        );
        let n_rows = src.len() / row_len;
        let bytes = self.row_bytes(row_len as u64) as usize * n_rows;
        ensure!(
            dst.len() == bytes,
            "quantize: destination holds {} bytes, rows need {bytes}",
            dst.len()
        );
        if self == GgmlType::F32 {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
            return Ok(());
        }
        if self == GgmlType::F16 {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&half::f16::from_f32(*s).to_le_bytes());
            }
            return Ok(());
        }
        // SAFETY: src holds n_rows * row_len floats and dst holds exactly the bytes ggml writes for
        // n_rows rows of this type (ggml_row_size * n_rows); no importance matrix is passed, which
        // every type we quantize to accepts (see ggml_quantize_requires_imatrix). ggml_quantize_init
        // only fills lookup tables of the IQ types, under ggml's own lock.
        let written = unsafe {
            sys::ggml_quantize_init(self.0);
            sys::ggml_quantize_chunk(
                self.0,
                src.as_ptr(),
                dst.as_mut_ptr().cast(),
                0,
                n_rows as i64,
                row_len as i64,
                std::ptr::null(),
            )
        };
        ensure!(
            written == bytes,
            "ggml_quantize_chunk wrote {written} bytes, expected {bytes}"
        );
        Ok(())
    }

    /// `quantize_rows` spread over `threads` threads (rows are independent).
    pub fn quantize_rows_parallel(
        self,
        src: &[f32],
        row_len: usize,
        dst: &mut Vec<u8>,
        threads: usize,
    ) -> Result<()> {
        let n_rows = src.len() / row_len.max(1);
        if threads <= 1 || n_rows < 2 * threads {
            return self.quantize_rows(src, row_len, dst);
        }
        let row_bytes = self.row_bytes(row_len as u64) as usize;
        dst.clear();
        dst.resize(row_bytes * n_rows, 0);
        let per = n_rows.div_ceil(threads);
        std::thread::scope(|scope| {
            let parts: Vec<_> = src
                .chunks(per * row_len)
                .zip(dst.chunks_mut(per * row_bytes))
                .map(|(s, d)| scope.spawn(move || self.quantize_rows_into(s, row_len, d)))
                .collect();
            parts
                .into_iter()
                .try_for_each(|p| p.join().expect("quantize thread panicked"))
        })
    }

    /// Dequantizes `n` values (whole blocks) from `src` into `dst`.
    pub fn dequantize(self, src: &[u8], dst: &mut [f32]) -> Result<()> {
        let n = dst.len() as u64;
        ensure!(
            n.is_multiple_of(self.block_size()),
            "dequantize: {n} values are not whole {} blocks",
            self.name()
        );
        ensure!(
            src.len() as u64 >= self.row_bytes(n),
            "dequantize: source too short"
        );
        if self == GgmlType::F32 {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
            return Ok(());
        }
        // SAFETY: valid type id; ggml returns a pointer to its static traits table.
        let traits = unsafe { &*sys::ggml_get_type_traits(self.0) };
        let Some(to_float) = traits.to_float else {
            anyhow::bail!("ggml cannot dequantize {}", self.name());
        };
        // SAFETY: src holds at least the bytes of n values of this type and dst holds n floats.
        unsafe { to_float(src.as_ptr().cast(), dst.as_mut_ptr(), n as i64) };
        Ok(())
    }
}

impl fmt::Debug for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
