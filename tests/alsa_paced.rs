//! The real-time pipeline through real alsa-lib at a real pace, without sound hardware: the
//! capture and playback PCMs are `file` plugins whose files are named pipes, and the other
//! ends of the pipes are fed and drained by threads at 48 kHz by the clock, in 20 ms
//! periods, as a sound card would. The model has its deadline (latency 6 frames) with room
//! to spare, so every output slot must hold the model's answer: none silent, none late.
//! This is what a device's own buffering must not change (slots are taken when due).
//!
//! alsa-lib reads its configuration once per process: this file holds one test.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::*;
use flm_edge::serve::alsa_io::{AlsaCapture, AlsaPlayback};
use flm_edge::serve::device::{FRAME, sleep_until};
use flm_edge::serve::metrics::Metrics;

const RATE: u32 = 48_000;
/// One 20 ms period at 48 kHz mono s16, in bytes.
const PERIOD_BYTES: usize = 960 * 2;
const PERIOD: Duration = Duration::from_millis(20);

/// The microphone's clock: writes `pcm` (then silence) one period every 20 ms until `stop`.
/// A reader that goes away (alsa-lib's probe) is waited for again.
fn feed(path: PathBuf, pcm: Vec<u8>, stop: Arc<AtomicBool>) {
    let open = || std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut pipe = open();
    let t0 = Instant::now();
    let silence = [0u8; PERIOD_BYTES];
    for k in 0.. {
        if stop.load(Relaxed) {
            return;
        }
        sleep_until(t0 + PERIOD * k as u32);
        let chunk = pcm
            .get(k * PERIOD_BYTES..(k + 1) * PERIOD_BYTES)
            .unwrap_or(&silence);
        if pipe.write_all(chunk).is_err() {
            if stop.load(Relaxed) {
                return;
            }
            pipe = open();
        }
    }
}

/// The loudspeaker's clock: reads one period every 20 ms until the writer closes.
fn drain(path: PathBuf) -> Vec<i16> {
    let mut pipe = std::fs::File::open(&path).unwrap();
    let t0 = Instant::now();
    let mut out = vec![];
    let mut buf = [0u8; PERIOD_BYTES];
    for k in 0.. {
        sleep_until(t0 + PERIOD * k as u32);
        if pipe.read_exact(&mut buf).is_err() {
            break;
        }
        out.extend(
            buf.chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        );
    }
    out
}

#[test]
fn paced_alsa_devices_play_every_answer_in_its_slot() {
    let dir = scratch("alsa_paced");
    let (cap, play) = pipe_pcms(&dir, "paced");
    watchdog(Duration::from_secs(60), "the paced run");

    // 4 s of speech, at 48 kHz by repeating each 24 kHz sample.
    let seconds = 4.0;
    let pcm: Vec<u8> = speech()[..(24_000.0 * seconds) as usize]
        .iter()
        .flat_map(|&x| {
            let b = ((x * 32767.0) as i16).to_le_bytes();
            [b, b].concat()
        })
        .collect();
    let stop_feed = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (cap, stop) = (cap.clone(), stop_feed.clone());
        std::thread::spawn(move || feed(cap, pcm, stop))
    };
    let drainer = std::thread::spawn(move || drain(play));

    let mut model = pipeline_model();
    let metrics = Metrics::new();
    let mut capture = AlsaCapture::open(pipe_spec("paced_capture", RATE), &metrics).unwrap();
    let mut playback = AlsaPlayback::open(pipe_spec("paced_playback", RATE), &metrics).unwrap();
    let started = Instant::now();
    run_pipeline_for(&mut model, &mut capture, &mut playback, &metrics, seconds);
    let ran = started.elapsed().as_secs_f64();
    // Closing the devices ends the pipes: the drainer sees the end, the feeder its reader go.
    drop((capture, playback));
    stop_feed.store(true, Relaxed);
    let played = drainer.join().unwrap();
    feeder.join().unwrap();

    let steps = metrics.steps.load(Relaxed);
    let frames = seconds / 0.08;
    // Real time: as many steps as frames captured in the run, give or take the edges.
    assert!(
        (steps as f64 - frames).abs() <= 3.0,
        "{steps} steps in {ran:.2} s"
    );
    assert_eq!(metrics.deadline_misses.load(Relaxed), 0);
    assert_eq!(metrics.capture_dropped.load(Relaxed), 0);
    assert_eq!(metrics.capture_xruns.load(Relaxed), 0);
    // Every slot taken was the model's answer, on time. (With slots taken whenever the
    // device had room, the file plugin's own buffer made every one of them silent.)
    assert_eq!(metrics.playback_silent.load(Relaxed), 0);
    // These devices report no delay: clock matching leaves their stream as it is.
    assert_eq!(metrics.playback_slipped.load(Relaxed), 0);
    // The loudspeaker played at the device's pace, for about as long as the run, and
    // what it played after the first due slot is the model's voice, not silence.
    let secs = played.len() as f64 / RATE as f64;
    assert!((secs - ran).abs() < 0.5, "{secs:.2} s played in {ran:.2} s");
    let due = (RATE as usize / 24_000) * FRAME * 7;
    assert!(
        played[due..].iter().any(|&x| x != 0),
        "nothing but silence played"
    );
}
