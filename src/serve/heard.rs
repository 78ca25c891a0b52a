//! What the model hears, on file (`serve --record-heard FILE`, `status.record_heard`): every
//! 80 ms frame the step thread hands Mimi's encoder (after echo cancellation, mute and
//! resampling), in order, as a 24 kHz mono 32-bit float WAV. Installers use it to set the
//! microphone's gain and to check the canceller on a real kiosk; tests measure from it what
//! is left of the echo, from outside the process.
//!
//! Off the real-time path: the step thread copies each frame into a wait-free ring (`rtrb`,
//! sized at start; no allocation, lock or I/O) and a writer thread takes them from there to
//! the file. A frame the ring has no room for (the writer held up by the disk for seconds)
//! or that the file does not take (a write error: one log line) is not written, and counted
//! (`flm_edge_heard_dropped_frames_total`); the file then holds the frames it took, in order.
//!
//! The header's sizes are written when the recorder closes (SIGTERM, SIGINT, the end of a
//! replay, an error that ends the service, a panic unwinding through it) and once a second
//! meanwhile, after the audio they count is flushed: a process killed outright (SIGKILL, a
//! ggml abort, a power cut) leaves a valid WAV whose header counts at least the audio
//! written until about a second before; what follows it in the file is audio written after
//! the last update (a reader that wants it recomputes the data size from the file's length:
//! `(length - 58) / 4` samples).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool,
    Ordering::{Acquire, Relaxed, Release},
};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::device::{FRAME, Pcm, RATE};
use super::metrics::Metrics;

/// Frames the ring holds: 5.1 s of audio for the writer to be held up by the disk.
pub const RING_FRAMES: usize = 64;
/// How often the writer takes the frames waiting in the ring.
const POLL: Duration = Duration::from_millis(40);
/// How often the header's sizes follow the audio written.
const HEADER_EVERY: Duration = Duration::from_secs(1);
/// The header's length: RIFF, `fmt ` (18 bytes: IEEE float, mono, 24 kHz, 32 bits), `fact`
/// (the sample count) and the `data` chunk's header.
pub const HEADER: u64 = 58;
const BYTES_PER_SAMPLE: u64 = 4;

/// The step thread's end: takes each frame the model is given.
pub struct Tap {
    ring: rtrb::Producer<Pcm>,
    metrics: Arc<Metrics>,
}

impl Tap {
    /// Wait-free: copies `pcm` into the ring, or counts it dropped when the ring is full.
    pub fn push(&mut self, pcm: &Pcm) {
        if self.ring.push(*pcm).is_err() {
            Metrics::add(&self.metrics.heard_dropped);
        }
    }
}

/// The writer thread and the file. Dropped (however the service ends), it takes the frames
/// still in the ring, writes the header's sizes and closes the file.
pub struct Recorder {
    stop: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl Recorder {
    /// Creates (or truncates) `path` with a header of no samples and starts the writer. A
    /// path that cannot be written is one error line naming it.
    pub fn start(path: &Path, metrics: Arc<Metrics>) -> Result<(Recorder, Tap)> {
        let file = create(path)
            .with_context(|| format!("recording what the model hears: {}", path.display()))?;
        let (producer, consumer) = rtrb::RingBuffer::new(RING_FRAMES);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (stop, metrics, label) =
                (stop.clone(), metrics.clone(), path.display().to_string());
            std::thread::Builder::new()
                .name("record-heard".into())
                .spawn(move || write_loop(file, consumer, &stop, &metrics, &label))
                .context("starting the thread that records what the model hears")?
        };
        metrics.heard_active.store(true, Relaxed);
        Ok((
            Recorder {
                stop,
                writer: Some(writer),
                path: path.to_path_buf(),
            },
            Tap {
                ring: producer,
                metrics,
            },
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // Release: the frames pushed before (the step thread joined before this) are seen by
        // the writer once it sees the flag.
        self.stop.store(true, Release);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn create(path: &Path) -> std::io::Result<File> {
    let mut file = File::create(path)?;
    file.write_all(&header(0))?;
    Ok(file)
}

/// The header of a WAV holding `samples` samples.
pub fn header(samples: u64) -> [u8; HEADER as usize] {
    let samples = samples.min(MAX_SAMPLES) as u32;
    let data = samples * BYTES_PER_SAMPLE as u32;
    let mut h = [0u8; HEADER as usize];
    let mut at = 0;
    let mut put = |b: &[u8]| {
        h[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    };
    put(b"RIFF");
    put(&(HEADER as u32 - 8 + data).to_le_bytes());
    put(b"WAVE");
    put(b"fmt ");
    put(&18u32.to_le_bytes());
    put(&3u16.to_le_bytes()); // WAVE_FORMAT_IEEE_FLOAT
    put(&1u16.to_le_bytes()); // mono
    put(&RATE.to_le_bytes());
    put(&(RATE * BYTES_PER_SAMPLE as u32).to_le_bytes());
    put(&(BYTES_PER_SAMPLE as u16).to_le_bytes());
    put(&32u16.to_le_bytes());
    put(&0u16.to_le_bytes()); // no extension
    put(b"fact");
    put(&4u32.to_le_bytes());
    put(&samples.to_le_bytes());
    put(b"data");
    put(&data.to_le_bytes());
    debug_assert_eq!(at, HEADER as usize);
    h
}

/// The most samples a WAV's 32-bit sizes can count: about 12.4 hours at 24 kHz.
pub const MAX_SAMPLES: u64 = (u32::MAX as u64 - HEADER) / BYTES_PER_SAMPLE;

/// The writer: takes the ring's frames every `POLL`, the header's sizes once a second and
/// at the end. A write error, or the file reaching WAV's limit, is one log line; the frames
/// from then on are counted dropped.
fn write_loop(
    file: File,
    mut ring: rtrb::Consumer<Pcm>,
    stop: &AtomicBool,
    metrics: &Metrics,
    label: &str,
) {
    let mut out = BufWriter::with_capacity(FRAME * BYTES_PER_SAMPLE as usize * 4, file);
    let mut bytes = vec![0u8; FRAME * BYTES_PER_SAMPLE as usize];
    // Samples written to the file (flushed or in `out`), and those the header counts.
    let mut written = 0u64;
    let mut counted = 0u64;
    let failed = std::cell::Cell::new(false);
    let fail = |why: &dyn std::fmt::Display| {
        if !failed.replace(true) {
            eprintln!(
                "flm-edge: error: recording what the model hears: {label}: {why}; the frames from here on are not written (counted in flm_edge_heard_dropped_frames_total)"
            );
        }
    };
    let mut last_header = Instant::now();
    loop {
        let closing = stop.load(Acquire);
        while let Ok(frame) = ring.pop() {
            if written + FRAME as u64 > MAX_SAMPLES {
                fail(&"the file holds as much as a WAV can (4 GiB, 12.4 hours)");
            }
            if failed.get() {
                Metrics::add(&metrics.heard_dropped);
                continue;
            }
            for (b, x) in bytes.chunks_exact_mut(4).zip(frame.iter()) {
                b.copy_from_slice(&x.to_le_bytes());
            }
            match out.write_all(&bytes) {
                Ok(()) => {
                    written += FRAME as u64;
                    Metrics::add(&metrics.heard_frames);
                }
                Err(e) => {
                    Metrics::add(&metrics.heard_dropped);
                    fail(&e);
                }
            }
        }
        if written != counted && (closing || last_header.elapsed() >= HEADER_EVERY) {
            last_header = Instant::now();
            // The audio first, then the header that counts it.
            let sizes = out.flush().and_then(|()| {
                let h = header(written);
                let f = out.get_ref();
                f.write_all_at(&h[4..8], 4)?;
                f.write_all_at(&h[46..50], 46)?;
                f.write_all_at(&h[54..58], 54)
            });
            match sizes {
                Ok(()) => counted = written,
                Err(e) => fail(&e),
            }
        }
        if closing {
            break;
        }
        std::thread::sleep(POLL);
    }
    if let Err(e) = out.get_ref().sync_data() {
        fail(&e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flm-heard-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn frames_are_written_in_order_and_the_header_counts_them() {
        let dir = scratch("order");
        let path = dir.join("heard.wav");
        let metrics = Arc::new(Metrics::new());
        let (rec, mut tap) = Recorder::start(&path, metrics.clone()).unwrap();
        let mut frames = vec![];
        for k in 0..10 {
            let f: Pcm = std::array::from_fn(|i| ((k * FRAME + i) as f32 * 1e-3).sin());
            tap.push(&f);
            frames.extend_from_slice(&f);
            if k == 4 {
                // The writer takes what is waiting while frames keep coming.
                std::thread::sleep(POLL * 2);
            }
        }
        drop(rec);
        let r = hound::WavReader::open(&path).unwrap();
        let spec = r.spec();
        assert_eq!((spec.channels, spec.sample_rate), (1, 24_000));
        assert_eq!(spec.sample_format, hound::SampleFormat::Float);
        let got: Vec<f32> = r.into_samples::<f32>().map(|s| s.unwrap()).collect();
        assert_eq!(got, frames);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            HEADER + 4 * frames.len() as u64
        );
        assert_eq!(metrics.heard_frames.load(Relaxed), 10);
        assert_eq!(metrics.heard_dropped.load(Relaxed), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_full_ring_counts_the_frames_it_could_not_take() {
        let dir = scratch("full");
        let path = dir.join("heard.wav");
        let metrics = Arc::new(Metrics::new());
        let (rec, mut tap) = Recorder::start(&path, metrics.clone()).unwrap();
        // Faster than the writer polls: the ring fills, and the rest is counted.
        let n = RING_FRAMES as u64 * 3;
        for k in 0..n {
            tap.push(&[k as f32; FRAME]);
        }
        drop(rec);
        let (written, dropped) = (
            metrics.heard_frames.load(Relaxed),
            metrics.heard_dropped.load(Relaxed),
        );
        assert_eq!(written + dropped, n);
        assert!(dropped > 0 && written >= RING_FRAMES as u64);
        let got: Vec<f32> = hound::WavReader::open(&path)
            .unwrap()
            .into_samples::<f32>()
            .map(|s| s.unwrap())
            .collect();
        assert_eq!(got.len() as u64, written * FRAME as u64);
        // The frames taken, in order: each frame's value rises.
        let firsts: Vec<f32> = got.chunks_exact(FRAME).map(|f| f[0]).collect();
        assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A killed process: the header counts the audio up to its last update (once a second),
    /// and is valid as it stands.
    #[test]
    fn the_header_follows_the_audio_while_recording() {
        let dir = scratch("live");
        let path = dir.join("heard.wav");
        let metrics = Arc::new(Metrics::new());
        let (rec, mut tap) = Recorder::start(&path, metrics.clone()).unwrap();
        // Before any audio: a valid WAV of no samples.
        assert_eq!(std::fs::read(&path).unwrap(), header(0));
        for _ in 0..5 {
            tap.push(&[0.25; FRAME]);
        }
        std::thread::sleep(HEADER_EVERY + POLL * 3);
        // Read while the recorder still runs, as after a SIGKILL.
        let r = hound::WavReader::open(&path).unwrap();
        assert_eq!(r.len() as usize, 5 * FRAME);
        drop(rec);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_path_that_cannot_be_written_is_one_line_naming_it() {
        let metrics = Arc::new(Metrics::new());
        let e = Recorder::start(Path::new("/nonexistent-dir/heard.wav"), metrics.clone())
            .err()
            .unwrap();
        let line = format!("{e:#}");
        assert!(line.contains("/nonexistent-dir/heard.wav"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        assert!(!metrics.heard_active.load(Relaxed));
    }
}
