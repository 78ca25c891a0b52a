//! Echo cancellation (`flm-edge aec`, the canceller of `src/echo/`) on simulated rooms
//! made by `tests/aec/rooms.py` (pyroomacoustics, in the environment `.ci/install-deps`
//! makes): a loudspeaker 8 cm from the microphone, reverberation 0.2-0.6 s, extra delays
//! 10-150 ms, noise at -60 dBFS, the speech clip as the far end; and harder rooms: a small
//! loudspeaker that distorts, fan noise at -45 dBFS, the volume turned up 10 dB mid-clip,
//! speech with pauses (espeak-ng) and the random model's noise as the far end.

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
    cancel_against(dir, "far.wav", mic)
}

/// `flm-edge aec` on the microphone file `mic` against the far end `far`, both in `dir`.
fn cancel_against(dir: &Path, far: &str, mic: &str) -> (Vec<f32>, Vec<f32>) {
    let out: PathBuf = dir.join(format!("out-{mic}"));
    let run = flm_edge(&[
        "aec",
        "--far",
        s(&dir.join(far)),
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
    // 3 dB while both talk (achieved: -0.9, -0.8 and -0.5 dB), and it comes out as itself:
    // the output's correlation with the clean near voice, the output time-aligned with the
    // microphone, is at least 0.9 in each room, as the issue asks (achieved: 0.915, 0.932
    // and 0.935; 0.82-0.86 with WebRTC's default suppressor settings, `src/echo/mod.rs`).
    // The echo stays down meanwhile: a least-squares fit of the output on the near voice and
    // the echo puts the echo's part 50, 44 and 41 dB under the echo.
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

/// What one room's canceller did: echo alone, and around and during the double talk.
#[derive(Clone, Copy, Debug)]
struct RoomFigures {
    /// ERLE with nobody near the microphone, from 2 s on (dB).
    alone: f64,
    /// ERLE in the double-talk run before the near voice (2-8 s) and after it (16 s on).
    before: f64,
    after: f64,
    /// While both talk (8.1-15 s): the output's energy against the near voice's (dB), its
    /// correlation with the clean near voice, and how far under the echo its part of the
    /// output is (least squares on the near voice and the echo alone; dB).
    near_db: f64,
    correlation: f64,
    echo_part_db: f64,
    /// The echo's part from 11 s to 15 s only (the volume room's change is at 11 s).
    echo_part_late_db: f64,
}

/// `flm-edge aec`'s processing (24 kHz files through the canceller at 48 kHz, the output
/// time-aligned with the microphone) with `config`.
fn cancel_24k(
    far: &[f32],
    mic: &[f32],
    config: &sonora_aec3::config::EchoCanceller3Config,
) -> Vec<f32> {
    use flm_edge::wav::resample;
    let up = |x: &[f32]| resample(x, 24_000, 48_000).unwrap();
    let out = flm_edge::echo::cancel_with(&up(far), &up(mic), 48_000, config).unwrap();
    let mut out = resample(&out, 48_000, 24_000).unwrap();
    out.resize(mic.len(), 0.0);
    out
}

fn room_figures(
    dir: &Path,
    far: &str,
    name: &str,
    echo: &[f32],
    config: &sonora_aec3::config::EchoCanceller3Config,
) -> RoomFigures {
    let r = 24_000;
    let window = |mic: &[f32], out: &[f32], from: f64, to: f64| {
        let w = (from * r as f64) as usize..((to * r as f64) as usize).min(mic.len());
        10.0 * (energy_of(&mic[w.clone()]) / energy_of(&out[w])).log10()
    };
    let far = read_wav(&dir.join(far)).1;
    let mic = read_wav(&dir.join(format!("mic-{name}.wav"))).1;
    let out = cancel_24k(&far, &mic, config);
    let alone = window(&mic, &out, 2.0, f64::INFINITY);
    let dt = read_wav(&dir.join(format!("dt-{name}.wav"))).1;
    let out = cancel_24k(&far, &dt, config);
    let (before, after) = (
        window(&dt, &out, 2.0, 8.0),
        window(&dt, &out, 16.0, f64::INFINITY),
    );
    let near = read_wav(&dir.join("near.wav")).1;
    let talk = 8 * r + 2400..15 * r;
    let near_db = 10.0 * (energy_of(&out[talk.clone()]) / energy_of(&near[talk.clone()])).log10();
    let correlation = correlation(&out[talk.clone()], &near[talk.clone()]);
    let echo_part_db = echo_removed_db(&out[talk.clone()], &near[talk.clone()], &echo[talk]);
    let late = 11 * r..15 * r;
    let echo_part_late_db = echo_removed_db(&out[late.clone()], &near[late.clone()], &echo[late]);
    RoomFigures {
        alone,
        before,
        after,
        near_db,
        correlation,
        echo_part_db,
        echo_part_late_db,
    }
}

/// The harder rooms of `tests/aec/rooms.py` (room 1's geometry: 0.4 s, 60 ms): a small
/// loudspeaker that distorts, fan noise at -45 dBFS, the volume turned up 10 dB at 11 s
/// (while both talk), speech with pauses (espeak-ng) as the far end, and the random small
/// model's noise as the far end (its answer to the speech clip, as the closed loop of
/// tests/echo_loop.rs plays it). Each: ERLE alone, before and after the double talk, and
/// while both talk the near voice's level and correlation and the echo's part; as tuned and
/// with WebRTC's default settings (printed beside; README's rooms table).
///
/// The rooms and the canceller are deterministic (seeded; espeak-ng's output is the same
/// for a version): the bounds sit 2-5 dB (0.02-0.03 of correlation) under what is achieved,
/// the margin for other versions of pyroomacoustics, scipy and espeak-ng.
#[test]
fn harder_rooms_distortion_noise_a_louder_volume_and_other_far_ends() {
    use flm_edge::echo::tuned_config;
    use sonora_aec3::config::EchoCanceller3Config;
    let dir = scratch("aec-more");
    std::fs::create_dir_all(&*dir).unwrap();
    let reply = dir.join("reply.wav");
    let run = flm_edge(&[
        "run",
        "--model",
        s(converted(3, "f32")),
        "--threads",
        "2",
        "--input",
        s(&Path::new(GOLDEN_MIMI).join("speech.wav")),
        "--output",
        s(&reply),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    simulated_rooms_with(&dir, Some(&reply));
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("rooms.json")).unwrap()).unwrap();
    // Rooms 0-2 as they were, for comparison (their echo files hold -60 dBFS of noise too:
    // nothing to the fit).
    let mut rooms: Vec<(&str, String, String)> = ["0", "1", "2"]
        .map(|n| (n, "far.wav".to_string(), format!("mic-{n}.wav")))
        .into();
    for m in info["more"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        rooms.push((
            name,
            m["far"].as_str().unwrap().into(),
            format!("echo-{name}.wav"),
        ));
    }
    let names: Vec<&str> = rooms.iter().map(|r| r.0).collect();
    assert_eq!(
        names,
        ["0", "1", "2", "small", "fan", "louder", "tts", "model"]
    );
    let (tuned, default) = (tuned_config(), EchoCanceller3Config::default());
    let mut got = std::collections::HashMap::new();
    for (name, far, echo) in &rooms {
        let echo = read_wav(&dir.join(echo)).1;
        let f = room_figures(&dir, far, name, &echo, &tuned);
        let d = room_figures(&dir, far, name, &echo, &default);
        eprintln!(
            "room {name}: ERLE alone {:.1} dB ({:.1}), before the double talk {:.1} ({:.1}), after \
             {:.1} ({:.1}); while both talk: near voice {:+.1} dB ({:+.1}), correlation {:.3} \
             ({:.3}), the echo's part {:.1} dB under the echo ({:.1}), from 11 s {:.1} ({:.1}) \
             [as tuned (WebRTC's defaults)]",
            f.alone,
            d.alone,
            f.before,
            d.before,
            f.after,
            d.after,
            f.near_db,
            d.near_db,
            f.correlation,
            d.correlation,
            f.echo_part_db,
            d.echo_part_db,
            f.echo_part_late_db,
            d.echo_part_late_db,
        );
        got.insert(*name, (f, d));
    }
    // Bounds, as tuned: ERLE alone, before and after the double talk (dB), the near voice's
    // correlation, the echo's part while both talk (dB under the echo). Achieved:
    //   0, 1, 2 36.9, 35.7, 37.1; 0.915; 50.3 / 37.0, 35.7, 37.3; 0.932; 44.0 / 36.4, 35.2,
    //           36.5; 0.935; 41.3 (the rooms as they were).
    //   small   34.6, 34.8, 36.0; 0.841; 40.0. A distorting loudspeaker leaves an echo no
    //           linear filter of the far end explains (-17 dB of its output): the suppressor
    //           takes it when nobody talks, and in double talk reshapes the near voice
    //           (0.841; WebRTC's defaults 0.760) while the echo stays 40 dB down.
    //   fan     23.4, 23.6, 23.1; 0.895; 42.8. The fan passes the canceller (it is not the
    //           echo): what the microphone gets over what comes out is bounded by the echo's
    //           level over the fan (19.0 dB at the microphone, a little more where the
    //           suppressor takes the fan with the echo); the echo itself is 43 dB down.
    //   louder  35.0, 27.0, 37.2; 0.905; 11.5. See below.
    //   tts     34.5, 35.2, 32.8; 0.950; 39.5. Pauses cost nothing: the near voice comes
    //           through best of all (the far end is silent 56 % of the time).
    //   model   25.6, 27.9, 24.2; 0.801; 34.4. Loud unbroken noise with no pause, the closed
    //           loop's far end: the hardest to converge on and to talk over.
    let bounds = [
        ("0", 33.0, 32.0, 34.0, 0.89, 44.0),
        ("1", 33.0, 32.0, 34.0, 0.9, 39.0),
        ("2", 32.0, 31.0, 33.0, 0.9, 36.0),
        ("small", 31.0, 31.0, 32.0, 0.78, 38.0),
        ("fan", 20.0, 20.0, 20.0, 0.87, 40.0),
        ("louder", 32.0, 24.0, 34.0, 0.88, 9.0),
        ("tts", 31.0, 31.0, 29.0, 0.93, 36.0),
        ("model", 22.0, 24.0, 18.0, 0.77, 28.0),
    ];
    for (name, alone, before, after, correlation, part) in bounds {
        let (f, d) = got[name];
        assert!(f.alone >= alone, "{name}: ERLE alone {:.1} dB", f.alone);
        assert!(f.before >= before, "{name}: before {:.1} dB", f.before);
        assert!(f.after >= after, "{name}: after {:.1} dB", f.after);
        // The near voice's level within 3 dB while both talk, as in every room (achieved:
        // -1.1 to +1.2 dB).
        assert!(
            f.near_db.abs() <= 3.0,
            "{name}: near voice {:+.1} dB",
            f.near_db
        );
        assert!(
            f.correlation >= correlation,
            "{name}: correlation {:.3}",
            f.correlation
        );
        assert!(
            f.echo_part_db >= part,
            "{name}: the echo's part {:.1} dB down",
            f.echo_part_db
        );
        // The tuning removes as much echo alone as WebRTC's defaults, within 1 dB, in every
        // room.
        assert!(
            f.alone >= d.alone - 1.0,
            "{name}: ERLE alone {:.1} dB as tuned, {:.1} dB with WebRTC's defaults",
            f.alone,
            d.alone
        );
    }
    // The volume turned up: ERLE of the echo alone each second around the change.
    let far = read_wav(&dir.join("far.wav")).1;
    let mic = read_wav(&dir.join("mic-louder.wav")).1;
    let each_second = |out: &[f32]| -> Vec<f64> {
        (9..22)
            .map(|t| {
                let w = t * 24_000..(t + 1) * 24_000;
                10.0 * (energy_of(&mic[w.clone()]) / energy_of(&out[w])).log10()
            })
            .collect()
    };
    let seconds = each_second(&cancel_24k(&far, &mic, &tuned));
    let seconds_default = each_second(&cancel_24k(&far, &mic, &default));
    eprintln!(
        "louder: ERLE of the echo alone, each second from 9 s: {seconds:.1?} dB as tuned, \
         {seconds_default:.1?} dB with WebRTC's defaults"
    );
    // And while both talk: the echo's part, each second from 11 s.
    let dt = read_wav(&dir.join("dt-louder.wav")).1;
    let near = read_wav(&dir.join("near.wav")).1;
    let echo = read_wav(&dir.join("echo-louder.wav")).1;
    let part = |c: &EchoCanceller3Config| -> Vec<f64> {
        let out = cancel_24k(&far, &dt, c);
        (11..15)
            .map(|t| {
                let w = t * 24_000..(t + 1) * 24_000;
                echo_removed_db(&out[w.clone()], &near[w.clone()], &echo[w])
            })
            .collect()
    };
    let (part_tuned, part_default) = (part(&tuned), part(&default));
    eprintln!(
        "louder: the echo's part while both talk, each second from 11 s: {part_tuned:.1?} dB as \
         tuned, {part_default:.1?} dB with WebRTC's defaults"
    );
    // The volume turned up 10 dB. Echo alone, the second of the change keeps 34.2 dB
    // (WebRTC's defaults: 37.0; with the detector triggered after 30 blocks rather than 60,
    // 19.0: the echo suddenly 10 dB over what the filters predict passed for a near voice
    // until they followed it); from 1 s after, the two are equal (34.7-40.6 dB). While both
    // talk it is still worse than the defaults: the echo's part 7.7, 11.6, 11.5 and 20.1 dB
    // down in the four seconds after the change (WebRTC's defaults: 11.2, 24.7, 22.6,
    // 28.6): the filters adapt slowly under the near voice, and the tuned suppressor passes
    // what they miss. Asserted as achieved, a known weakness of the tuning rather than a
    // goal.
    assert!(
        seconds[2] >= 31.0,
        "the change's second: {:.1} dB",
        seconds[2]
    );
    assert!(
        seconds[3..].iter().all(|&e| e >= 32.0),
        "from 1 s after the change: {:.1?} dB",
        &seconds[3..]
    );
    assert!(
        part_tuned.iter().all(|&p| p >= 6.0) && part_tuned[3] >= 17.0,
        "the echo's part after the change: {part_tuned:.1?} dB"
    );
}
