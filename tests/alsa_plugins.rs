//! The ALSA devices of `serve` through real alsa-lib, without sound hardware: PCMs of the
//! `file` plugin (capture reads a raw file, playback writes one) defined in a test asoundrc.
//! Faults are injected at the device's read/write (the drill) so that the real recovery code
//! runs: an xrun is recovered and counted; a device that vanishes is reopened by name, with
//! back-off, once it is back, and silence keeps the timeline meanwhile.
//!
//! alsa-lib reads its configuration once per process, from `$XDG_CONFIG_HOME/alsa/asoundrc`
//! among others: the whole check is one test, which sets that variable first.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::*;
use flm_edge::serve::alsa_io::{AlsaCapture, AlsaPlayback, DeviceSpec};
use flm_edge::serve::device::{CaptureDevice, Captured, FRAME, PlaybackDevice};
use flm_edge::serve::metrics::Metrics;

const EPIPE: i32 = 32;
const ENODEV: i32 = 19;
const EAGAIN: i32 = 11;

fn spec(name: &str, rate: u32, channels: u32, format: &str) -> DeviceSpec {
    DeviceSpec {
        name: name.into(),
        rate,
        channels,
        format: format.into(),
        period_ms: 20,
        periods: 4,
    }
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
}

/// A 440 Hz tone of amplitude 0.5, `secs` long at `rate`.
fn tone(rate: u32, secs: f32) -> Vec<f32> {
    (0..(rate as f32 * secs) as usize)
        .map(|i| 0.5 * (std::f32::consts::TAU * 440.0 * i as f32 / rate as f32).sin())
        .collect()
}

fn asoundrc(dir: &Path) {
    let conf = dir.join("alsa");
    std::fs::create_dir_all(&conf).unwrap();
    let d = dir.display();
    let mut text = String::new();
    for name in ["cap48", "cap24", "cap16"] {
        text += &format!(
            "pcm.{name} {{ type file slave.pcm \"null\" file \"/dev/null\" infile \"{d}/{name}.raw\" format \"raw\" }}\n"
        );
    }
    text += &format!(
        "pcm.play44 {{ type file slave.pcm \"null\" file \"{d}/play44.raw\" format \"raw\" }}\n"
    );
    std::fs::write(conf.join("asoundrc"), text).unwrap();
}

#[test]
fn alsa_devices_through_plugins() {
    let dir = scratch("alsa");
    std::fs::create_dir_all(&*dir).unwrap();
    asoundrc(&dir);
    // SAFETY: the only test of this binary, before any thread or ALSA call reads the
    // environment.
    unsafe { std::env::set_var("XDG_CONFIG_HOME", &*dir) };
    let m = Metrics::new();

    // 48 kHz stereo s16 in, resampled and mixed down to 24 kHz mono frames.
    let src = tone(48_000, 2.0);
    let raw: Vec<u8> = src
        .iter()
        .flat_map(|&x| {
            let v = ((x * 32767.0) as i16).to_le_bytes();
            [v, v].concat()
        })
        .collect();
    std::fs::write(dir.join("cap48.raw"), raw).unwrap();
    let mut cap = AlsaCapture::open(spec("cap48", 48_000, 2, "s16"), &m).unwrap();
    assert!(m.capture_present.load(Relaxed));
    let mut frame = [0f32; FRAME];
    for i in 0..8 {
        assert!(matches!(cap.next_frame(&mut frame, &m), Captured::Audio));
        if i >= 2 {
            // The tone's RMS (0.354) after resampling: 2 % covers the filter's ripple.
            let r = rms(&frame);
            assert!((r - 0.3536).abs() < 0.007, "frame {i}: rms {r}");
        }
    }
    drop(cap);

    // 16 kHz mono s16, resampled up.
    let src = tone(16_000, 2.0);
    let raw: Vec<u8> = src
        .iter()
        .flat_map(|&x| ((x * 32767.0) as i16).to_le_bytes())
        .collect();
    std::fs::write(dir.join("cap16.raw"), raw).unwrap();
    let mut cap = AlsaCapture::open(spec("cap16", 16_000, 1, "s16"), &m).unwrap();
    for i in 0..8 {
        assert!(matches!(cap.next_frame(&mut frame, &m), Captured::Audio));
        if i >= 2 {
            let r = rms(&frame);
            assert!((r - 0.3536).abs() < 0.007, "16 kHz frame {i}: rms {r}");
        }
    }
    drop(cap);

    // 24 kHz mono f32: no conversion at all, so the frames are the file's samples.
    let src = tone(24_000, 2.0);
    let raw: Vec<u8> = src.iter().flat_map(|x| x.to_le_bytes()).collect();
    let infile = dir.join("cap24.raw");
    std::fs::write(&infile, raw).unwrap();
    let mut cap = AlsaCapture::open(spec("cap24", 24_000, 1, "f32"), &m).unwrap();
    for i in 0..3 {
        assert!(matches!(cap.next_frame(&mut frame, &m), Captured::Audio));
        assert_eq!(&frame[..], &src[i * FRAME..(i + 1) * FRAME], "frame {i}");
    }

    // An xrun 250 ms after the last read: recovered in place and counted; the lost time
    // comes back as about 3 frames of silence (6000 samples at 24 kHz), then audio goes on.
    std::thread::sleep(Duration::from_millis(250));
    cap.drill.inject(EPIPE);
    let mut owed = 0;
    let mut when = vec![];
    while let Captured::Lost(at) = cap.next_frame(&mut frame, &m) {
        assert!(frame.iter().all(|&x| x == 0.0));
        when.push(at);
        owed += 1;
    }
    // Each stands where its audio would have been: in the past, 80 ms apart.
    assert!(when.iter().all(|&t| t <= Instant::now()));
    for w in when.windows(2) {
        let gap = (w[1] - w[0]).as_secs_f64();
        assert!((gap - 0.080).abs() < 1e-6, "{gap} s between lost frames");
    }
    assert!(
        (3..=4).contains(&owed),
        "{owed} frames of silence for 250 ms"
    );
    assert_eq!(m.capture_xruns.load(Relaxed), 1);
    assert_eq!(m.recoveries.load(Relaxed), 1);
    assert!(matches!(cap.next_frame(&mut frame, &m), Captured::Audio));

    // The device is opened non-blocking (a blocking open or read can wait forever, deaf to
    // SIGTERM): "no data yet" (EAGAIN) is waited for through the device, not a lost device.
    let before = (m.capture_xruns.load(Relaxed), m.reopens.load(Relaxed));
    cap.drill.inject(EAGAIN);
    assert!(matches!(cap.next_frame(&mut frame, &m), Captured::Audio));
    assert!(m.capture_present.load(Relaxed));
    assert_eq!(
        (m.capture_xruns.load(Relaxed), m.reopens.load(Relaxed)),
        before
    );

    // The device vanishes (and its file with it): silence at the real-time pace, reopening
    // fails with back-off until the file is back.
    let away = dir.join("cap24.away");
    std::fs::rename(&infile, &away).unwrap();
    cap.drill.inject(ENODEV);
    let t0 = Instant::now();
    let mut silent = 0;
    while t0.elapsed() < Duration::from_millis(1500) {
        assert!(matches!(cap.next_frame(&mut frame, &m), Captured::Silence));
        assert!(frame.iter().all(|&x| x == 0.0));
        silent += 1;
    }
    assert!(!m.capture_present.load(Relaxed));
    assert_eq!(m.reopens.load(Relaxed), 0);
    // Paced at 80 ms a frame: 1.5 s is about 19 frames, not thousands.
    assert!(
        (15..=21).contains(&silent),
        "{silent} silent frames in 1.5 s"
    );
    std::fs::rename(&away, &infile).unwrap();
    let t1 = Instant::now();
    loop {
        if matches!(cap.next_frame(&mut frame, &m), Captured::Audio) {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(6),
            "the device did not come back"
        );
    }
    assert_eq!(m.reopens.load(Relaxed), 1);
    assert!(m.capture_present.load(Relaxed));
    drop(cap);

    // Playback: 24 kHz frames out at 44.1 kHz s32 mono.
    let mut play = AlsaPlayback::open(spec("play44", 44_100, 1, "s32"), &m).unwrap();
    let src = tone(24_000, 1.0);
    for i in 0..10 {
        let mut fill = |dst: &mut [f32; FRAME]| {
            dst.copy_from_slice(&src[i * FRAME..(i + 1) * FRAME]);
        };
        assert!(play.play_frame(&mut fill, &m));
        if i == 5 {
            play.drill.inject(EPIPE);
        }
    }
    assert_eq!(m.playback_xruns.load(Relaxed), 1);
    // No room yet (EAGAIN) is waited for, like a blocking write would: nothing is lost.
    play.drill.inject(EAGAIN);
    let mut fill = |dst: &mut [f32; FRAME]| dst.copy_from_slice(&src[..FRAME]);
    assert!(play.play_frame(&mut fill, &m));
    assert!(m.playback_present.load(Relaxed));
    drop(play);
    let bytes = std::fs::read(dir.join("play44.raw")).unwrap();
    let out: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f32 / 2147483648.0)
        .collect();
    // 11 frames of 80 ms at 44.1 kHz (3528 samples), each start of the device (the first
    // write, and the restart after the injected underrun) preceded by its headroom of two
    // 20 ms periods of silence; nothing lost.
    let (frame, headroom) = (3528, 2 * 882);
    assert_eq!(out.len(), 11 * frame + 2 * headroom);
    assert!(rms(&out[..headroom]) == 0.0);
    // Frames 0-5, then the headroom again, then frames 6-9 and frame 0 again.
    let restart = headroom + 6 * frame;
    assert!(rms(&out[restart..restart + headroom]) == 0.0);
    for part in [&out[headroom + 2000..restart], &out[restart + headroom..]] {
        let r = rms(&part[..part.len() - 2000]);
        assert!((r - 0.3536).abs() < 0.01, "played rms {r}");
    }

    // A wrong name is an error naming the device.
    let err = AlsaCapture::open(spec("nosuchpcm", 48_000, 1, "s16"), &m)
        .err()
        .expect("must fail");
    assert!(format!("{err:#}").contains("nosuchpcm"), "{err:#}");
    // So is a name alsa-lib cannot even be given (it panicked inside the alsa crate).
    let err = AlsaCapture::open(spec("bad\0name", 48_000, 1, "s16"), &m)
        .err()
        .expect("must fail");
    assert!(format!("{err:#}").contains("NUL"), "{err:#}");
}
