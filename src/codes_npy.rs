//! Mimi codes as NumPy `.npy` files: int32, shape [8, T], C order (`numpy.load` reads them).

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use npyz::WriterBuilder;

pub const N_CODEBOOKS: usize = 8;
pub const CODEBOOK_SIZE: i64 = 2048;

/// Reads codes into frame-major order (`codes[f * 8 + q]`). Accepts int32 or int64 files.
pub fn read(path: &Path) -> Result<Vec<i32>> {
    read_inner(path).with_context(|| path.display().to_string())
}

fn read_inner(path: &Path) -> Result<Vec<i32>> {
    let bytes = std::fs::read(path).context("cannot read")?;
    let npy =
        npyz::NpyFile::new(&bytes[..]).map_err(|e| anyhow::anyhow!("not a .npy file: {e}"))?;
    ensure!(npy.order() == npyz::Order::C, "codes must be in C order");
    let shape = npy.shape().to_vec();
    ensure!(
        shape.len() == 2 && shape[0] == N_CODEBOOKS as u64,
        "codes have shape {shape:?}, expected [8, T]"
    );
    // Each value takes at least 4 bytes: a shape the file cannot hold is refused before
    // anything is sized from it.
    let t = usize::try_from(shape[1])
        .ok()
        .filter(|t| {
            t.checked_mul(N_CODEBOOKS * 4)
                .is_some_and(|n| n <= bytes.len())
        })
        .with_context(|| {
            format!(
                "shape [8, {}] needs more data than the file's {} bytes",
                shape[1],
                bytes.len()
            )
        })?;
    ensure!(t > 0, "no frames (shape [8, 0])");
    let values: Vec<i64> = match npy.dtype() {
        npyz::DType::Plain(ts) if ts.type_char() == npyz::TypeChar::Int && ts.size_field() == 4 => {
            npy.into_vec::<i32>()
                .context("truncated or corrupt data")?
                .into_iter()
                .map(i64::from)
                .collect()
        }
        npyz::DType::Plain(ts) if ts.type_char() == npyz::TypeChar::Int && ts.size_field() == 8 => {
            npy.into_vec::<i64>().context("truncated or corrupt data")?
        }
        other => bail!(
            "codes have dtype {}, expected int32 or int64",
            other.descr()
        ),
    };
    ensure!(
        values.len() == N_CODEBOOKS * t,
        "truncated: {} values for shape [8, {t}]",
        values.len()
    );
    if let Some((i, v)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| !(0..CODEBOOK_SIZE).contains(*v))
    {
        bail!(
            "code {v} at codebook {}, frame {} is outside 0..{CODEBOOK_SIZE}",
            i / t,
            i % t
        );
    }
    let mut codes = vec![0i32; values.len()];
    for q in 0..N_CODEBOOKS {
        for f in 0..t {
            codes[f * N_CODEBOOKS + q] = values[q * t + f] as i32;
        }
    }
    Ok(codes)
}

/// Writes frame-major codes as int32 [8, T].
pub fn write(path: &Path, codes: &[i32]) -> Result<()> {
    let t = codes.len() / N_CODEBOOKS;
    crate::files::write_atomic(path, |tmp| {
        let file = std::io::BufWriter::new(std::fs::File::create(tmp)?);
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[N_CODEBOOKS as u64, t as u64])
            .writer(file)
            .begin_nd()?;
        for q in 0..N_CODEBOOKS {
            for f in 0..t {
                w.push(&codes[f * N_CODEBOOKS + q])?;
            }
        }
        w.finish()?;
        Ok(())
    })
}
