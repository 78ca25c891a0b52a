//! Echo cancellation (`flm-edge aec`, the canceller of `src/echo/`) on simulated rooms
//! made by `tests/aec/rooms.py` (pyroomacoustics, in the environment `.ci/install-deps`
//! makes): a loudspeaker 8 cm from the microphone, reverberation 0.2-0.6 s, extra delays
//! 10-150 ms, noise at -60 dBFS, the speech clip as the far end.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
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
    simulated_rooms(&dir);
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
    // 3 dB while both talk (achieved: -0.8, -0.8 and -0.4 dB), and it comes out as itself:
    // the output's correlation with the clean near voice, the output time-aligned with the
    // microphone, is at least 0.9 in each room, as the issue asks (achieved: 0.923, 0.931
    // and 0.936; 0.82-0.86 with WebRTC's default suppressor settings, `src/echo/mod.rs`).
    // The echo stays down meanwhile: a least-squares fit of the output on the near voice and
    // the echo puts the echo's part 49, 43 and 40 dB under the echo.
    let (_, near) = read_wav(&dir.join("near.wav"));
    let talk = 8 * 24_000 + 2400..15 * 24_000;
    let e = |x: &[f32]| -> f64 { x[talk.clone()].iter().map(|&v| (v as f64).powi(2)).sum() };
    for i in 0..3 {
        let (_, out) = cancel_files(&dir, &format!("dt-{i}.wav"));
        let db = 10.0 * (e(&out) / e(&near)).log10();
        let r = correlation(&out[talk.clone()], &near[talk.clone()]);
        eprintln!("room {i}: double talk, output / near voice {db:+.1} dB, correlation {r:.3}");
        assert!(db.abs() <= 3.0, "room {i}: {db:+.1} dB");
        assert!(r >= 0.9, "room {i}: correlation {r:.3}");
        let echo = read_wav(&dir.join(format!("mic-{i}.wav"))).1;
        let removed = echo_removed_db(&out[talk.clone()], &near[talk.clone()], &echo[talk.clone()]);
        eprintln!(
            "room {i}: double talk, the echo's part of the output {removed:.1} dB under the echo"
        );
        assert!(
            removed >= 35.0,
            "room {i}: the echo only {removed:.1} dB down in double talk"
        );
    }
}

/// How far under `echo` its part of `out` is, by a least-squares fit of `out` on `near` and
/// `echo` (dB).
fn echo_removed_db(out: &[f32], near: &[f32], echo: &[f32]) -> f64 {
    let (_, b) = fit_two(out, near, echo);
    -20.0 * b.abs().log10()
}

fn correlation(a: &[f32], b: &[f32]) -> f64 {
    dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
}

/// The loudspeaker moved 0.5 m at 11 s (room 1; the impulse response changes at once): the
/// canceller re-converges within 2 s and never diverges meanwhile.
#[test]
fn a_moved_loudspeaker_is_cancelled_again_within_two_seconds() {
    let dir = scratch("aec-moved");
    std::fs::create_dir_all(&*dir).unwrap();
    simulated_rooms(&dir);
    let (mic, out) = cancel_files(&dir, "moved.wav");
    let r = 24_000;
    let window = |from: f64, to: f64| {
        let w = (from * r as f64) as usize..(to * r as f64) as usize;
        10.0 * (energy_of(&mic[w.clone()]) / energy_of(&out[w])).log10()
    };
    let before = window(2.0, 11.0);
    let seconds: Vec<f64> = (11..22).map(|t| window(t as f64, t as f64 + 1.0)).collect();
    let after = window(13.0, 22.0);
    // A canceller started afresh at the move, on the same audio from there: the most that
    // can be removed once converged on the new path.
    let cut = |name: &str| {
        let x = read_wav(&dir.join(name)).1;
        let p = dir.join(format!("from-move-{name}"));
        flm_edge::wav::write_mono_24k(&p, &x[11 * r..]).unwrap();
        p
    };
    let (far2, mic2, out2) = (cut("far.wav"), cut("moved.wav"), dir.join("fresh.wav"));
    let run = flm_edge(&[
        "aec",
        "--far",
        s(&far2),
        "--mic",
        s(&mic2),
        "--output",
        s(&out2),
    ]);
    assert!(run.status.success());
    let (m2, o2) = (read_wav(&mic2).1, read_wav(&out2).1);
    let fresh = 10.0 * (energy_of(&m2[2 * r..]) / energy_of(&o2[2 * r..])).log10();
    eprintln!(
        "moved loudspeaker: ERLE {before:.1} dB before, {after:.1} dB from 2 s after (a fresh canceller: {fresh:.1} dB); each second after the move: {seconds:.1?} dB"
    );
    // Achieved: 36.3 dB before; 22.6 dB from 2 s after, as a fresh canceller (22.2 dB): the
    // moved loudspeaker's echo is weaker and the -60 dBFS noise bounds what can be removed.
    assert!(before >= 30.0, "{before:.1} dB before the move");
    assert!(after >= 20.0, "{after:.1} dB from 2 s after the move");
    assert!(
        after >= fresh - 1.0,
        "{after:.1} dB, a fresh canceller {fresh:.1} dB"
    );
    assert!(
        seconds.iter().all(|&e| e >= 15.0),
        "diverged after the move: {seconds:.1?} dB"
    );
}

fn energy_of(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64).powi(2)).sum()
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
    simulated_rooms(&dir);
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

/// The double-talk tuning never buys its figures with echo let through: with nobody near the
/// microphone, the tuned canceller removes at least as much echo as one with WebRTC's default
/// configuration in every room, within 1 dB (the bound; the tuning changes only the
/// suppressor while the near end dominates, which a changed echo path can mimic for a moment:
/// achieved 0.0, 0.0 and -0.5 dB).
#[test]
fn the_tuning_removes_as_much_echo_alone_as_webrtcs_defaults() {
    use flm_edge::echo::{cancel_with, tuned_config};
    use flm_edge::wav::resample;
    use sonora_aec3::config::EchoCanceller3Config;
    let dir = scratch("aec-defaults");
    std::fs::create_dir_all(&*dir).unwrap();
    simulated_rooms(&dir);
    // As `flm-edge aec` runs it: at 48 kHz.
    let up = |x: &[f32]| resample(x, 24_000, 48_000).unwrap();
    let far = up(&read_wav(&dir.join("far.wav")).1);
    for i in 0..3 {
        let mic = read_wav(&dir.join(format!("mic-{i}.wav"))).1;
        let erle = |c: &EchoCanceller3Config| {
            let out = cancel_with(&far, &up(&mic), 48_000, c).unwrap();
            let out = resample(&out, 48_000, 24_000).unwrap();
            erle_db(&mic, &out[..mic.len()])
        };
        let (tuned, default) = (
            erle(&tuned_config()),
            erle(&EchoCanceller3Config::default()),
        );
        eprintln!(
            "room {i}: echo alone, ERLE as tuned {tuned:.2} dB, WebRTC's defaults {default:.2} dB"
        );
        assert!(
            tuned >= default - 1.0,
            "room {i}: as tuned {tuned:.2} dB, WebRTC's defaults {default:.2} dB"
        );
    }
}
