//! WAV files in and out: any PCM WAV (8–48 kHz, 8/16/24/32-bit integer or 32-bit float, mono
//! or stereo) is read as mono f32 and resampled to Mimi's 24 kHz; output is 24 kHz mono
//! 32-bit float.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

pub const SAMPLE_RATE: u32 = 24_000;

/// Reads `path` as mono f32 at 24 kHz. Errors name the file and what is wrong with it.
pub fn read_mono_24k(path: &Path) -> Result<Vec<f32>> {
    let label = path.display().to_string();
    let (mono, rate) = read_mono(path).with_context(|| label.clone())?;
    if rate == SAMPLE_RATE {
        return Ok(mono);
    }
    resample(&mono, rate, SAMPLE_RATE)
        .with_context(|| format!("{label}: resampling {rate} Hz to {SAMPLE_RATE} Hz"))
}

fn read_mono(path: &Path) -> Result<(Vec<f32>, u32)> {
    std::fs::File::open(path).context("cannot open")?;
    let reader = hound::WavReader::open(path).map_err(|e| match e {
        // The file opened: a read error here is a header that ends early.
        hound::Error::IoError(io) => anyhow::anyhow!("not a WAV file (header: {io})"),
        hound::Error::FormatError(msg) => anyhow::anyhow!("not a WAV file ({msg})"),
        hound::Error::Unsupported => anyhow::anyhow!("not a PCM WAV file (unsupported encoding)"),
        other => anyhow::anyhow!("bad WAV file: {other}"),
    })?;
    let spec = reader.spec();
    ensure!(
        (8_000..=48_000).contains(&spec.sample_rate),
        "sample rate {} Hz is outside 8000..48000",
        spec.sample_rate
    );
    ensure!(
        (1..=2).contains(&spec.channels),
        "{} channels (mono or stereo supported)",
        spec.channels
    );
    let n = reader.len() as usize;
    ensure!(n > 0, "no audio samples");
    let channels = spec.channels as usize;
    ensure!(
        n.is_multiple_of(channels),
        "{n} samples do not fill whole frames of {channels} channels"
    );
    let samples: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => collect(reader.into_samples::<f32>(), |x| x)?,
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            collect(reader.into_samples::<i32>(), |x| x as f32 * scale)?
        }
        (fmt, bits) => bail!("unsupported sample format: {bits}-bit {fmt:?}"),
    };
    let mono = samples
        .chunks_exact(channels)
        .map(|f| f.iter().sum::<f32>() / channels as f32)
        .collect();
    Ok((mono, spec.sample_rate))
}

/// The largest sample magnitude accepted from a float WAV.
const MAX_SAMPLE: f32 = 1000.0;

fn collect<S, I: Iterator<Item = hound::Result<S>>>(
    it: I,
    f: impl Fn(S) -> f32,
) -> Result<Vec<f32>> {
    let mut out = vec![];
    for s in it {
        match s {
            Ok(x) => out.push(f(x)),
            Err(hound::Error::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                bail!(
                    "truncated: the header announces more samples than the file holds ({} read)",
                    out.len()
                )
            }
            Err(e) => bail!("bad sample data: {e}"),
        }
    }
    if let Some(x) = out.iter().find(|x| !x.is_finite()) {
        bail!("sample value {x} is not finite");
    }
    // Float PCM is nominally within ±1; values far beyond are not audio, and would overflow
    // the resampler's FFT.
    if let Some(x) = out.iter().find(|x| x.abs() > MAX_SAMPLE) {
        bail!("sample value {x} is outside ±{MAX_SAMPLE} (float PCM is nominally within ±1)");
    }
    Ok(out)
}

/// Band-limited resampling of a whole clip (rubato's FFT resampler), delay compensated.
pub fn resample(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    let mut r = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input)?;
    let adapter = InterleavedSlice::new(input, 1, input.len())?;
    let out = r.process_all(&adapter, input.len(), None)?;
    Ok(out.take_data())
}

/// Writes 24 kHz mono 32-bit float PCM to `path`, through a temporary name so that a failed
/// write leaves no file behind.
pub fn write_mono_24k(path: &Path, pcm: &[f32]) -> Result<()> {
    crate::files::write_atomic(path, |tmp| {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(tmp, spec)?;
        for &s in pcm {
            w.write_sample(s)?;
        }
        w.finalize()?;
        Ok(())
    })
}
