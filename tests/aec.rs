//! Echo cancellation (`flm-edge aec`, the canceller of `src/echo.rs`) on simulated rooms
//! made by `tests/aec/rooms.py` (pyroomacoustics, in the environment `.ci/install-deps`
//! makes): a loudspeaker 8 cm from the microphone, reverberation 0.2-0.6 s, extra delays
//! 10-150 ms, noise at -60 dBFS, the speech clip as the far end.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The rooms, made once per run into `dir`.
fn rooms(dir: &Path) {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyclient/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run .ci/install-deps (it makes the Python environment with pyroomacoustics)",
        py.display()
    );
    let out = Command::new(py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aec/rooms.py"))
        .arg(Path::new(GOLDEN_MIMI).join("speech.wav"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Energy of `x` from 2 s on (after the canceller's convergence), at 24 kHz.
fn energy(x: &[f32]) -> f64 {
    x[48_000..].iter().map(|&v| (v as f64).powi(2)).sum()
}

fn erle_db(mic: &[f32], out: &[f32]) -> f64 {
    10.0 * (energy(mic) / energy(out)).log10()
}

fn cancel_files(dir: &Path, mic: &str) -> (Vec<f32>, Vec<f32>) {
    let out: PathBuf = dir.join(format!("out-{mic}"));
    let run = flm_edge(&[
        "aec",
        "--far",
        s(&dir.join("far.wav")),
        "--mic",
        s(&dir.join(mic)),
        "--output",
        s(&out),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (spec, cancelled) = read_wav(&out);
    assert_eq!(spec.sample_rate, 24_000);
    let (_, recorded) = read_wav(&dir.join(mic));
    // The microphone's length.
    assert_eq!(cancelled.len(), recorded.len());
    (recorded, cancelled)
}

#[test]
fn echo_is_removed_in_every_room_and_a_near_voice_survives() {
    let dir = scratch("aec-rooms");
    std::fs::create_dir_all(&*dir).unwrap();
    rooms(&dir);
    // Echo only, after 2 s: the issue asks for 25 dB on average and 20 in each room.
    let erle: Vec<f64> = (0..3)
        .map(|i| {
            let (mic, out) = cancel_files(&dir, &format!("mic-{i}.wav"));
            erle_db(&mic, &out)
        })
        .collect();
    eprintln!("ERLE per room: {erle:.1?} dB");
    let mean = erle.iter().sum::<f64>() / 3.0;
    assert!(erle.iter().all(|&e| e >= 20.0) && mean >= 25.0, "{erle:?}");
    // Double talk: the near voice is not suppressed with the echo: its energy stays within
    // 3 dB while both talk (achieved: -2.3, -2.2 and -1.9 dB; AEC3's suppressor takes a
    // little of it when the echo is as loud).
    let (_, near) = read_wav(&dir.join("near.wav"));
    let talk = 8 * 24_000 + 2400..15 * 24_000;
    let e = |x: &[f32]| -> f64 { x[talk.clone()].iter().map(|&v| (v as f64).powi(2)).sum() };
    for i in 0..3 {
        let (_, out) = cancel_files(&dir, &format!("dt-{i}.wav"));
        let db = 10.0 * (e(&out) / e(&near)).log10();
        eprintln!("room {i}: double talk, output / near voice {db:+.1} dB");
        assert!(db.abs() <= 3.0, "room {i}: {db:+.1} dB");
    }
}

/// The other pure-Rust port of AEC3 (the `aec3` crate's linear pipeline) on the same rooms,
/// at the same rate (48 kHz) and block (10 ms): the figures that chose `sonora`.
#[test]
fn the_chosen_canceller_removes_more_echo_than_the_other_port() {
    use aec3::nodes::audio::AudioFormat;
    use aec3::pipelines::linear;
    use flm_edge::wav::resample;
    let dir = scratch("aec-compare");
    std::fs::create_dir_all(&*dir).unwrap();
    rooms(&dir);
    let far = resample(&read_wav(&dir.join("far.wav")).1, 24_000, 48_000).unwrap();
    for i in 0..3 {
        let mic24 = read_wav(&dir.join(format!("mic-{i}.wav"))).1;
        let mic = resample(&mic24, 24_000, 48_000).unwrap();
        let format = AudioFormat::ten_ms(48_000, 1);
        let mut p = linear::builder(format, format).build().unwrap();
        let mut out = vec![0f32; mic.len()];
        let mut block = [0f32; 480];
        for (b, o) in out.chunks_exact_mut(480).enumerate() {
            p.handle_render_frame(&far[b * 480..(b + 1) * 480]).unwrap();
            if p.process_capture_frame(&mic[b * 480..(b + 1) * 480], &mut block)
                .unwrap()
            {
                o.copy_from_slice(&block);
            }
        }
        let other = resample(&out, 48_000, 24_000).unwrap();
        let chosen = flm_edge::echo::cancel(&far, &mic, 48_000).unwrap();
        let chosen = resample(&chosen, 48_000, 24_000).unwrap();
        let n = mic24.len();
        let (a, b) = (erle_db(&mic24, &chosen[..n]), erle_db(&mic24, &other[..n]));
        eprintln!("room {i}: ERLE sonora {a:.1} dB, aec3 {b:.1} dB");
        assert!(a > b + 3.0, "room {i}: sonora {a:.1} dB, aec3 {b:.1} dB");
    }
}

#[test]
fn bad_files_get_one_error_line_and_no_output() {
    let dir = scratch("aec-bad");
    std::fs::create_dir_all(&*dir).unwrap();
    let good = Path::new(GOLDEN_MIMI).join("speech.wav");
    let truncated = dir.join("truncated.wav");
    std::fs::write(&truncated, &std::fs::read(&good).unwrap()[..30]).unwrap();
    let empty = dir.join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let out = dir.join("out.wav");
    for (far, mic, needle) in [
        (dir.join("missing.wav"), good.clone(), "missing.wav"),
        (good.clone(), truncated.clone(), "truncated.wav"),
        (empty.clone(), good.clone(), "empty.wav"),
    ] {
        let run = flm_edge(&[
            "aec",
            "--far",
            s(&far),
            "--mic",
            s(&mic),
            "--output",
            s(&out),
        ]);
        assert_one_line_error(&run, &[needle]);
        assert!(!out.exists(), "a failed run left {}", out.display());
    }
}
