//! `flm-edge serve`: the real-time pipeline through WAV replay (same scheduler as with ALSA),
//! a step that stalls past its deadline, the configuration, and the systemd unit.
//!
//! Timed tests run one at a time (a lock) so that their steps keep to real time.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::*;
use flm_edge::config::Config;
use flm_edge::serve::device::{CaptureDevice, Captured, FRAME, Pcm, PlaybackDevice};
use flm_edge::serve::file_io::{WavCapture, WavPlayback};
use flm_edge::serve::metrics::Metrics;
use flm_edge::serve::pipeline::{self, Schedule};

static TIMED: Mutex<()> = Mutex::new(());

/// The seed-3 tiny model at f32 (the LM golden one), converted once.
fn model() -> &'static Path {
    converted(3, "f32")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The first `frames` frames of the golden speech clip as a 24 kHz WAV in `dir`.
fn clip(dir: &Path, frames: usize) -> PathBuf {
    let path = dir.join("user.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 24_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for &x in &speech()[..frames * FRAME] {
        w.write_sample((x * 32767.0) as i16).unwrap();
    }
    w.finalize().unwrap();
    path
}

fn config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "threads = 2\n[schedule]\nlatency_frames = 6\nmax_backlog_frames = 15\n[status]\nmetrics = \"\"\nevents = \"\"\n{extra}"
        ),
    )
    .unwrap();
    path
}

#[test]
fn replay_at_real_time_matches_the_offline_run() {
    let _t = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("replay");
    std::fs::create_dir_all(&*dir).unwrap();
    let input = clip(&dir, 30);
    let cfg = config(&dir, "");
    let (served, ran) = (dir.join("served.wav"), dir.join("ran.wav"));
    let out = flm_edge(&[
        "serve",
        "--config",
        s(&cfg),
        "--model",
        s(model()),
        "--input-wav",
        s(&input),
        "--output-wav",
        s(&served),
        "--realtime",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("replayed 30 steps"), "{stderr}");
    assert!(stderr.contains("deadline misses 0"), "{stderr}");
    let out = flm_edge(&[
        "run",
        "--model",
        s(model()),
        "--threads",
        "2",
        "--input",
        s(&input),
        "--output",
        s(&ran),
    ]);
    assert!(out.status.success());
    // Same seed, same steps, no miss: the real-time pipeline answers exactly as the
    // offline run, sample for sample, in the same place of the timeline.
    assert_eq!(read_wav(&served).1, read_wav(&ran).1);
}

#[test]
fn a_stalled_step_leaves_silence_and_the_timeline_goes_on() {
    let _t = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let frames = 40;
    let pcm = speech()[..frames * FRAME].to_vec();
    let metrics = Metrics::new();
    let stop = AtomicBool::new(false);
    let run = |schedule: Schedule, paced: bool| {
        let mut model = pipeline_model();
        let origin = paced.then(Instant::now);
        let mut cap = WavCapture::new(pcm.clone(), origin);
        let mut play = WavPlayback::new(frames, origin);
        pipeline::run(
            &mut model, &mut cap, &mut play, schedule, &metrics, &stop, None,
        )
        .unwrap();
        play.into_pcm()
    };
    // Reference: unpaced, every frame answered.
    let reference = run(Schedule::default(), false);
    assert_eq!(metrics.deadline_misses.load(Relaxed), 0);
    let before = metrics.steps.load(Relaxed);
    let stalled = run(
        Schedule {
            latency_frames: 2,
            max_backlog_frames: 15,
            stall: Some((10, Duration::from_millis(400))),
            fail: None,
        },
        true,
    );
    assert_eq!(metrics.steps.load(Relaxed) - before, frames as u64);
    let misses = metrics.deadline_misses.load(Relaxed);
    let silent = metrics.playback_silent.load(Relaxed);
    assert!(misses >= 1, "the stalled step must count as a miss");
    assert!(silent >= 1, "its output slot must play silence");
    assert_eq!(metrics.capture_dropped.load(Relaxed), 0);
    assert_eq!(stalled.len(), reference.len());
    // Every slot is either the answer of its own step or silence: nothing shifted.
    let slot = |v: &[f32], n: usize| v[n * FRAME..(n + 1) * FRAME].to_vec();
    let mut silent_slots = vec![];
    for n in 0..frames {
        let got = slot(&stalled, n);
        if got.iter().all(|&x| x == 0.0) && slot(&reference, n).iter().any(|&x| x != 0.0) {
            silent_slots.push(n);
        } else {
            assert_eq!(got, slot(&reference, n), "slot {n}");
        }
    }
    assert!(silent_slots.contains(&10), "silent slots {silent_slots:?}");
    assert_eq!(
        silent_slots.len() as u64,
        silent,
        "silent slots {silent_slots:?}"
    );
    // The model catches up: the last slots are answered on time again.
    assert!(
        silent_slots.iter().all(|&n| n < frames - 5),
        "{silent_slots:?}"
    );
}

#[test]
fn the_event_socket_replaces_only_its_own_stale_socket_and_bounds_its_clients() {
    use flm_edge::serve::status::{EventStream, MAX_EVENT_CLIENTS};
    use std::os::unix::net::{UnixListener, UnixStream};
    let dir = scratch("events");
    std::fs::create_dir_all(&*dir).unwrap();
    // A file that is not a socket is never removed.
    let file = dir.join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let e = EventStream::listen(&file, Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("status.events") && e.contains("not a socket"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    // A socket another process serves is not taken over.
    let live = dir.join("live.sock");
    let _other = UnixListener::bind(&live).unwrap();
    let e = EventStream::listen(&live, Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("another process"), "{e}");
    // A stale socket (nobody listening) is replaced.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let events = EventStream::listen(&stale, Default::default()).unwrap();
    let conns: Vec<UnixStream> = (0..3 * MAX_EVENT_CLIENTS)
        .map(|_| UnixStream::connect(&stale).unwrap())
        .collect();
    let t0 = Instant::now();
    while events.clients() < MAX_EVENT_CLIENTS && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(events.clients(), MAX_EVENT_CLIENTS);
    drop(conns);
}

/// Asks `status` as `echo '{"command": "status"}' | socat - UNIX-CONNECT:…` does (the line,
/// then the end of what it sends) and returns the reply line, passing over event lines
/// (empty if closed without a reply).
fn ask_once(path: &Path) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut c = std::os::unix::net::UnixStream::connect(path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"{\"command\": \"status\"}\n").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut r = BufReader::new(c);
    loop {
        let mut a = String::new();
        if r.read_line(&mut a).unwrap_or(0) == 0 || a.contains("\"ok\"") || a.contains("\"error\"")
        {
            return a;
        }
    }
}

#[test]
fn the_control_socket_answers_one_short_lived_client_after_another() {
    use flm_edge::serve::conversation::Control;
    use flm_edge::serve::status::{EventStream, MAX_EVENT_CLIENTS};
    use std::sync::Arc;
    let dir = scratch("control-many");
    std::fs::create_dir_all(&*dir).unwrap();
    let path = dir.join("events.sock");
    // No events are sent: the model is quiet, so no failed write ever drops a client. A
    // client that has gone frees its place at once (its read ends), so none of the 100 finds
    // the socket full (before, the 9th and every later one was closed without a word).
    let events = EventStream::listen(&path, Arc::new(Control::default())).unwrap();
    for i in 0..100 {
        let a = ask_once(&path);
        assert!(a.contains("\"ok\":\"status\""), "client {i}: `{a}`");
    }
    // Their places are free again (each thread ends as its client's read does).
    let t0 = Instant::now();
    while events.clients() > 0 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(events.clients(), 0);
    const { assert!(MAX_EVENT_CLIENTS < 100) };
}

#[test]
fn the_control_socket_answers_the_client_past_its_limit_with_an_error_line() {
    use flm_edge::serve::conversation::Control;
    use flm_edge::serve::status::{EventStream, MAX_EVENT_CLIENTS};
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    let dir = scratch("control-full");
    std::fs::create_dir_all(&*dir).unwrap();
    let path = dir.join("events.sock");
    let events = EventStream::listen(&path, Arc::new(Control::default())).unwrap();
    let held: Vec<UnixStream> = (0..MAX_EVENT_CLIENTS)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    let t0 = Instant::now();
    while events.clients() < MAX_EVENT_CLIENTS && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(events.clients(), MAX_EVENT_CLIENTS);
    // One more: one JSON error line saying why, then the end.
    let extra = UnixStream::connect(&path).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut r = BufReader::new(extra);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let e: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: `{line}`"));
    let e = e["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("busy") && e.contains(&MAX_EVENT_CLIENTS.to_string()),
        "{line}"
    );
    let mut rest = String::new();
    assert_eq!(r.read_line(&mut rest).unwrap(), 0, "{rest}");
    assert_eq!(events.clients(), MAX_EVENT_CLIENTS);
    // Clients that leave free their places at once, for the next ones.
    let mut held = held;
    drop(held.split_off(1));
    let t0 = Instant::now();
    while events.clients() > 1 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(events.clients(), 1);
    let a = ask_once(&path);
    assert!(a.contains("\"ok\":\"status\""), "`{a}`");
    drop(held);
}

#[test]
fn a_silent_control_client_is_closed_after_the_idle_time_and_frees_its_place() {
    use flm_edge::serve::conversation::Control;
    use flm_edge::serve::status::{EventStream, MAX_EVENT_CLIENTS};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    let dir = scratch("control-idle");
    std::fs::create_dir_all(&*dir).unwrap();
    let path = dir.join("events.sock");
    // A short idle time stands in for the daemon's 60 s (long enough that the talker below,
    // asking every idle / 4, is never late on a loaded machine).
    let idle = Duration::from_millis(1500);
    let events = EventStream::listen_idle(&path, Arc::new(Control::default()), idle).unwrap();
    // Every place is taken: one client that keeps sending commands, the others silent.
    let mut talker = UnixStream::connect(&path).unwrap();
    talker
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut talker_r = BufReader::new(talker.try_clone().unwrap());
    let silent: Vec<UnixStream> = (1..MAX_EVENT_CLIENTS)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    let t0 = Instant::now();
    while events.clients() < MAX_EVENT_CLIENTS && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(events.clients(), MAX_EVENT_CLIENTS);
    assert!(ask_once(&path).contains("busy"));
    // For twice the idle time the talker asks every idle / 4 and stays; the silent ones go.
    let t0 = Instant::now();
    while t0.elapsed() < 2 * idle {
        talker.write_all(b"{\"command\": \"status\"}\n").unwrap();
        let mut a = String::new();
        talker_r.read_line(&mut a).unwrap();
        assert!(
            a.contains("\"ok\":\"status\""),
            "the talker was closed: `{a}`"
        );
        std::thread::sleep(idle / 4);
    }
    // Each silent client was told why, then closed (its read ends).
    for s in silent {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("no command in 1.5 s"), "`{line}`");
        line.clear();
        assert_eq!(r.read_line(&mut line).unwrap(), 0, "{line}");
    }
    assert_eq!(events.clients(), 1);
    // Their places serve new clients.
    assert!(ask_once(&path).contains("\"ok\":\"status\""));
}

#[test]
fn the_event_socket_takes_commands_and_answers_bad_ones_with_errors() {
    use flm_edge::serve::conversation::Control;
    use flm_edge::serve::status::EventStream;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    let dir = scratch("control");
    std::fs::create_dir_all(&*dir).unwrap();
    let path = dir.join("events.sock");
    let control = Arc::new(Control::default());
    let _events = EventStream::listen(&path, control.clone()).unwrap();
    // The service's user and group only.
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let mut c = UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answers = BufReader::new(c.try_clone().unwrap());
    let mut ask = |line: &str| -> serde_json::Value {
        c.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut a = String::new();
        answers.read_line(&mut a).unwrap();
        serde_json::from_str(&a).unwrap()
    };
    let a = ask(r#"{"command": "mute"}"#);
    assert_eq!(
        (a["ok"].as_str(), a["state"].as_str()),
        (Some("mute"), Some("muted"))
    );
    assert!(control.muted());
    let a = ask(r#"{"command": "status"}"#);
    assert_eq!(a["state"], "muted");
    let a = ask(r#"{"command": "unmute"}"#);
    assert_eq!(a["state"], "listening");
    assert!(!control.muted());
    assert_eq!(ask(r#"{"command": "reset"}"#)["ok"], "reset");
    for (bad, says) in [
        ("reset", "not JSON"),
        (r#"{"cmd": "reset"}"#, "no \"command\""),
        (r#"{"command": "reboot"}"#, "unknown command `reboot`"),
        ("", "empty line"),
    ] {
        let e = ask(bad)["error"].as_str().unwrap_or_default().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
    // A line past the limit: an error, then the client is closed; the socket serves on.
    let e = ask(&"x".repeat(5000))["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(e.contains("at most 1024 bytes"), "{e}");
    let mut rest = String::new();
    assert_eq!(answers.read_line(&mut rest).unwrap_or(0), 0, "{rest}");
    let mut c = UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.write_all(b"{\"command\": \"status\"}\n").unwrap();
    let mut a = String::new();
    BufReader::new(c).read_line(&mut a).unwrap();
    assert!(a.contains("\"ok\":\"status\""), "{a}");
}

/// Runs the pipeline over `pcm` as fast as the model goes (slot n answers frame n), every
/// event to `on_event`; the answers.
fn replay_unpaced(
    model: &mut pipeline::Model,
    pcm: Vec<f32>,
    metrics: &Metrics,
    on_event: &mut (dyn FnMut(&pipeline::Event) + Send),
) -> Vec<f32> {
    let frames = pcm.len() / FRAME;
    let mut cap = WavCapture::new(pcm, None);
    let mut play = WavPlayback::new(frames, None);
    let stop = AtomicBool::new(false);
    pipeline::run(
        model,
        &mut cap,
        &mut play,
        Schedule::default(),
        metrics,
        &stop,
        Some(on_event),
    )
    .unwrap();
    play.into_pcm()
}

#[test]
fn events_the_event_thread_could_not_take_are_counted() {
    let _t = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let frames = 40;
    let pcm = speech()[..frames * FRAME].to_vec();
    let mut model = pipeline_model();
    // Every event taken: the run's events, none dropped.
    let metrics = Metrics::new();
    let mut all = 0u64;
    replay_unpaced(&mut model, pcm.clone(), &metrics, &mut |_| all += 1);
    assert_eq!(metrics.events_dropped.load(Relaxed), 0);
    assert!(all >= frames as u64, "{all} events");
    // The same run (a replay is the same each time) with an event thread that stops at the
    // first event until every step is done: the queue fills and the rest are dropped, each
    // counted.
    let mut model = pipeline_model();
    let metrics = Metrics::new();
    let mut taken = 0u64;
    let m = &metrics;
    replay_unpaced(&mut model, pcm, m, &mut |_| {
        taken += 1;
        let t0 = Instant::now();
        while taken == 1
            && m.steps.load(Relaxed) < frames as u64
            && t0.elapsed() < Duration::from_secs(120)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    assert_eq!(metrics.steps.load(Relaxed), frames as u64);
    let dropped = metrics.events_dropped.load(Relaxed);
    eprintln!("{all} events; with the event thread held: {taken} taken, {dropped} dropped");
    assert!(
        dropped > 0 && taken + dropped == all,
        "{taken} taken, {dropped} dropped of {all}"
    );
    assert!(
        metrics
            .render()
            .lines()
            .any(|l| l == format!("flm_edge_events_dropped_total {dropped}")),
        "{}",
        metrics.render()
    );
}

#[test]
fn a_reset_starts_a_new_conversation_and_mute_makes_the_model_hear_silence() {
    use flm_edge::serve::conversation::NewConversation;
    let _t = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let frames = 30;
    let pcm = speech()[..frames * FRAME].to_vec();
    let metrics = Metrics::new();
    // Unpaced replays: slot n is the answer to frame n.
    let replay = |pcm: Vec<f32>, at: Option<(u64, bool)>| {
        let mut model = pipeline_model();
        let control = model.control.clone();
        let mut news = vec![];
        let mut muted = vec![];
        let mut on_event = |e: &pipeline::Event| {
            if let Some(why) = e.new_conversation {
                news.push((e.step, why));
            }
            muted.push(e.muted);
            // Asked for from the event thread, as the control socket would: it takes effect
            // at a later step, whichever.
            if let Some((step, mute)) = at
                && e.step == step
            {
                if mute {
                    control.set_muted(true);
                } else {
                    control.request_reset();
                }
            }
        };
        let answers = replay_unpaced(&mut model, pcm, &metrics, &mut on_event);
        (answers, news, muted)
    };
    let (whole, news, _) = replay(pcm.clone(), Some((8, false)));
    assert_eq!(news[0], (0, NewConversation::Start));
    assert_eq!(news.len(), 2, "{news:?}");
    let (r, why) = news[1];
    assert_eq!(why, NewConversation::Command);
    assert!((9..frames as u64).contains(&r), "reset at {r}");
    // From the reset on, the answers are those of a fresh conversation on the same audio.
    let r = r as usize;
    let (fresh, _, _) = replay(pcm[r * FRAME..].to_vec(), None);
    assert_eq!(&whole[r * FRAME..], &fresh[..]);
    assert_ne!(
        &whole[r * FRAME..(r + 1) * FRAME],
        &replay(pcm.clone(), None).0[r * FRAME..(r + 1) * FRAME]
    );
    // Muted from some step on: the model hears silence there, and says so.
    let (muted_run, _, muted) = replay(pcm.clone(), Some((8, true)));
    let m = muted.iter().position(|&x| x).unwrap();
    assert!(m > 8 && muted[m..].iter().all(|&x| x), "{muted:?}");
    let mut silent = pcm.clone();
    silent[m * FRAME..].fill(0.0);
    assert_eq!(muted_run, replay(silent, None).0);
}

/// `--record-heard`: the file holds exactly the frames the step thread hands the model, in
/// order: the clip, silence while muted, the clip again after unmuting; and the model, given
/// the recording, answers exactly as it did.
#[test]
fn the_recorded_file_holds_exactly_the_frames_the_model_was_given() {
    use flm_edge::serve::heard::Recorder;
    use std::sync::Arc;
    let _t = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("heard-frames");
    std::fs::create_dir_all(&*dir).unwrap();
    let frames = 30;
    let pcm = speech()[..frames * FRAME].to_vec();
    let path = dir.join("heard.wav");
    let metrics = Arc::new(Metrics::new());
    let (recorder, tap) = Recorder::start(&path, metrics.clone()).unwrap();
    let mut model = pipeline_model();
    model.heard = Some(tap);
    let control = model.control.clone();
    let mut muted = vec![None; frames];
    let answers = replay_unpaced(&mut model, pcm.clone(), &metrics, &mut |e| {
        muted[e.step as usize] = Some(e.muted);
        // As the control socket would, from the event thread: effective at a later step.
        match e.step {
            8 => control.set_muted(true),
            16 => control.set_muted(false),
            _ => {}
        }
    });
    drop(model);
    drop(recorder);
    assert_eq!(metrics.events_dropped.load(Relaxed), 0);
    let muted: Vec<bool> = muted.into_iter().map(Option::unwrap).collect();
    let from = muted.iter().position(|&m| m).unwrap();
    let to = from + muted[from..].iter().position(|&m| !m).unwrap();
    assert!(from > 8 && to > 16 && to < frames, "{muted:?}");
    let mut expected = pcm.clone();
    expected[from * FRAME..to * FRAME].fill(0.0);
    let (spec, heard) = read_wav(&path);
    assert_eq!((spec.sample_rate, spec.channels), (24_000, 1));
    assert_eq!(spec.sample_format, hound::SampleFormat::Float);
    assert!(
        heard == expected,
        "the recording differs from the frames given"
    );
    let text = metrics.render();
    for line in [
        format!("flm_edge_heard_frames_total {frames}"),
        "flm_edge_heard_dropped_frames_total 0".into(),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    let mut fresh = pipeline_model();
    let again = replay_unpaced(&mut fresh, heard, &Metrics::new(), &mut |_| {});
    assert!(
        again == answers,
        "the recording is not what the model heard"
    );
}

/// The header's sizes of a WAV written by the recorder agree with the file's length.
fn assert_heard_wav_is_whole(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let len = bytes.len() as u32;
    let at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    assert!(len >= 58, "{len} bytes");
    assert_eq!(at(4), len - 8, "RIFF size");
    assert_eq!(&bytes[50..54], b"data");
    assert_eq!(at(54), len - 58, "data size");
    assert_eq!(at(46), (len - 58) / 4, "fact: samples");
    let (spec, pcm) = read_wav(path);
    assert_eq!((spec.sample_rate, spec.channels), (24_000, 1));
    assert_eq!(pcm.len() % FRAME, 0, "whole frames");
    pcm
}

/// SIGTERM while the daemon records what the model hears: a clean stop, and a whole WAV
/// holding the frames heard until then: the replayed clip's, in order (on a loaded machine
/// the oldest frames of a backlog are dropped unheard, so not always all of them).
#[test]
fn the_heard_recording_is_a_whole_wav_after_sigterm() {
    use std::io::{Read, Write};
    let _t = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("heard-sigterm");
    std::fs::create_dir_all(&*dir).unwrap();
    let input = clip(&dir, 100);
    let port = free_port();
    let cfg = dir.join("heard.toml");
    std::fs::write(
        &cfg,
        format!(
            "threads = 2\n[schedule]\nlatency_frames = 6\n[status]\nmetrics = \"127.0.0.1:{port}\"\nevents = \"\"\n"
        ),
    )
    .unwrap();
    let heard = dir.join("heard.wav");
    let (mut child, mut notes) = daemon(
        &dir,
        &[
            "serve",
            "--config",
            s(&cfg),
            "--model",
            s(model()),
            "--input-wav",
            s(&input),
            "--output-wav",
            s(&dir.join("out.wav")),
            "--realtime",
            "--record-heard",
            s(&heard),
        ],
    );
    notes.expect("READY=1", Duration::from_secs(60));
    // Stopped once at least 20 frames are on file, long before the clip's end.
    let written = || -> Option<u64> {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(c, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut reply = String::new();
        c.read_to_string(&mut reply).ok()?;
        reply
            .lines()
            .find_map(|l| l.strip_prefix("flm_edge_heard_frames_total "))?
            .parse()
            .ok()
    };
    let t0 = Instant::now();
    let mut before = 0;
    while before < 20 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
        before = written().unwrap_or(0);
    }
    signal(&child, SIGTERM);
    let (status, err) = exit_of(&mut child);
    assert!(status.success(), "{err}");
    assert!(err.contains("recording what the model hears into"), "{err}");
    let pcm = assert_heard_wav_is_whole(&heard);
    let frames = pcm.len() / FRAME;
    assert!(
        frames as u64 >= before.max(20) && frames < 100,
        "{frames} frames ({before} before SIGTERM): {err}"
    );
    // Each frame one of the clip's, in order.
    let clip = read_wav(&input).1;
    let mut from = 0;
    for (k, f) in pcm.chunks_exact(FRAME).enumerate() {
        let at = (from..100).find(|&n| clip[n * FRAME..(n + 1) * FRAME] == *f);
        from = at.unwrap_or_else(|| panic!("heard frame {k} is not the clip's next")) + 1;
    }
}

#[test]
fn a_running_daemon_serves_metrics_healthz_and_events() {
    use std::io::{BufRead, BufReader, Read, Write};
    let _t = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("status-live");
    std::fs::create_dir_all(&*dir).unwrap();
    let input = clip(&dir, 100);
    let port = free_port();
    let events = dir.join("events.sock");
    let cfg = dir.join("live.toml");
    std::fs::write(
        &cfg,
        format!(
            "threads = 2\n[schedule]\nlatency_frames = 6\n[status]\nmetrics = \"127.0.0.1:{port}\"\nevents = \"{}\"\n",
            s(&events)
        ),
    )
    .unwrap();
    let mut child = Reaped(
        std::process::Command::new(env!("CARGO_BIN_EXE_flm-edge"))
            .args(["serve", "--config", s(&cfg), "--model", s(model())])
            .args([
                "--input-wav",
                s(&input),
                "--output-wav",
                s(&dir.join("out.wav")),
            ])
            .arg("--realtime")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let get = |path: &str| -> Option<String> {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(c, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut reply = String::new();
        c.read_to_string(&mut reply).ok()?;
        Some(reply)
    };
    // The endpoints come up once the model is loaded; steps then complete every 80 ms.
    let t0 = Instant::now();
    let mut healthy = None;
    while t0.elapsed() < Duration::from_secs(60) && healthy.is_none() {
        if let Some(r) = get("/healthz").filter(|r| r.starts_with("HTTP/1.0 200")) {
            healthy = Some(r);
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(healthy.is_some(), "/healthz never said ok");
    let metrics = get("/metrics").unwrap();
    let steps: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("flm_edge_steps_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(steps > 0, "{metrics}");
    // An event client gets JSON lines with the step and the state.
    let sock = std::os::unix::net::UnixStream::connect(&events).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(sock);
    // A step's line (the first step's may come after the line announcing the conversation,
    // which can reach a client that connected before the event thread sent it).
    let (line, e) = loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let e: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}"));
        if e.get("conversation").is_none() {
            break (line, e);
        }
    };
    assert!(e["step"].is_u64() && e["text"].is_string(), "{line}");
    assert!(
        matches!(e["state"].as_str(), Some("listening" | "speaking")),
        "{line}"
    );
    // The daemon answers one short-lived control client after another, far more than its
    // limit of clients at once, while this event client stays.
    for i in 0..100 {
        let a = ask_once(&events);
        assert!(a.contains("\"ok\":\"status\""), "client {i}: `{a}`");
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
}

#[test]
fn a_failing_step_stops_every_thread_and_returns_its_reason() {
    let _t = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    // 60 s of paced capture: without the stop, the audio threads would run it to the end.
    let frames = 750;
    let speech = speech();
    let pcm: Vec<f32> = (0..frames * FRAME)
        .map(|i| speech[i % speech.len()])
        .collect();
    let metrics = Metrics::new();
    let stop = AtomicBool::new(false);
    let mut model = pipeline_model();
    let origin = Instant::now();
    let mut cap = WavCapture::new(pcm, Some(origin));
    let mut play = WavPlayback::new(frames, Some(origin));
    let schedule = Schedule {
        latency_frames: 2,
        max_backlog_frames: 15,
        stall: None,
        fail: Some(2),
    };
    let err = pipeline::run(
        &mut model, &mut cap, &mut play, schedule, &metrics, &stop, None,
    )
    .unwrap_err();
    let took = origin.elapsed();
    assert_eq!(
        format!("{err:#}"),
        "frame 2: model step: injected failure (drill)"
    );
    // Two steps and the stop take well under a second on an idle machine; the bound leaves
    // room for a busy one and is far below the capture's 60 s.
    assert!(
        took < Duration::from_secs(15),
        "threads kept running for {took:?}"
    );
    assert_eq!(metrics.steps.load(Relaxed), 2);
}

/// A capture whose frames 10..15 arrive 400 ms late, all at once, as silence paid back for
/// audio an xrun lost (stamped where that audio would have been).
struct XrunCapture {
    inner: WavCapture,
    origin: Instant,
    n: u32,
}

impl CaptureDevice for XrunCapture {
    fn next_frame(&mut self, out: &mut Pcm, m: &Metrics) -> Captured {
        let n = self.n;
        self.n += 1;
        let kind = self.inner.next_frame(out, m);
        if (10..15).contains(&n) {
            if n == 10 {
                std::thread::sleep(Duration::from_millis(400));
            }
            out.fill(0.0);
            return Captured::Lost(self.origin + Duration::from_millis(80) * (n + 1));
        }
        kind
    }
}

/// A loudspeaker that notes when each frame reaches it.
struct Clocked {
    played: Vec<Instant>,
    skipped: usize,
    slots: usize,
}

impl PlaybackDevice for Clocked {
    fn play_frame(&mut self, fill: &mut dyn FnMut(&mut Pcm), _m: &Metrics) -> bool {
        if self.played.len() + self.skipped >= self.slots {
            return false;
        }
        let mut frame = [0.0; FRAME];
        fill(&mut frame);
        self.played.push(Instant::now());
        true
    }
    fn skip_frame(&mut self) {
        self.skipped += 1;
    }
}

#[test]
fn audio_lost_to_an_xrun_does_not_lengthen_the_latency() {
    let _t = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let mut model = pipeline_model();
    let frames = 30;
    let origin = Instant::now();
    let mut capture = XrunCapture {
        inner: WavCapture::new(speech()[..frames * FRAME].to_vec(), Some(origin)),
        origin,
        n: 0,
    };
    let mut playback = Clocked {
        played: Vec::with_capacity(frames),
        skipped: 0,
        slots: frames,
    };
    let metrics = Metrics::new();
    let stop = AtomicBool::new(false);
    let schedule = Schedule {
        latency_frames: 2,
        max_backlog_frames: 15,
        stall: None,
        fail: None,
    };
    pipeline::run(
        &mut model,
        &mut capture,
        &mut playback,
        schedule,
        &metrics,
        &stop,
        None,
    )
    .unwrap();
    // The slots of the lost frames whose time had gone by when they arrived are passed
    // over; the rest go out one frame time apart, as before the xrun: no burst, so the
    // loudspeaker's queue (and the latency) is what it was.
    assert!(
        (2..=3).contains(&playback.skipped),
        "{} slots skipped",
        playback.skipped
    );
    assert_eq!(playback.played.len() + playback.skipped, frames);
    for w in playback.played.windows(2) {
        let gap = (w[1] - w[0]).as_secs_f64();
        assert!(gap > 0.05, "two frames {:.1} ms apart", gap * 1e3);
    }
}

/// The kiosk's idle reset in the pipeline the daemon runs, with a model that waits and says
/// nothing whatever it hears: a new conversation starts `conversation.idle_reset_s` after the
/// user last spoke, once; never while the user talks (pauses included), nor in the quiet
/// before the first word (nothing to forget yet).
#[test]
fn a_new_conversation_starts_after_the_quiet_time_and_never_during_talk() {
    use flm_edge::serve::conversation::NewConversation;
    let _t = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let mut model = silent_model();
    let (idle_s, quiet_dbfs) = (2, -45.0);
    model.control.configure(idle_s, quiet_dbfs);
    let limit = idle_s as usize * 25 / 2;
    // 2 s of quiet, the speech clip with a pause of 1.6 s in its middle (just under the
    // limit), 4 s of quiet.
    let clip = speech();
    let half = clip.len() / 2 / FRAME * FRAME;
    let mut pcm = vec![0.0; 25 * FRAME];
    pcm.extend(&clip[..half]);
    pcm.extend(vec![0.0; 20 * FRAME]);
    pcm.extend(&clip[half..]);
    pcm.resize(pcm.len().next_multiple_of(FRAME) + 50 * FRAME, 0.0);
    let frames = pcm.len() / FRAME;
    // The frames in which the user speaks, by the level the daemon uses.
    let level = 10f32.powf(quiet_dbfs / 20.0);
    let loud: Vec<usize> = (0..frames)
        .filter(|&f| {
            let x = &pcm[f * FRAME..(f + 1) * FRAME];
            (x.iter().map(|v| v * v).sum::<f32>() / FRAME as f32).sqrt() >= level
        })
        .collect();
    let (first, last) = (loud[0], *loud.last().unwrap());
    let longest_pause = loud.windows(2).map(|w| w[1] - w[0] - 1).max().unwrap();
    assert!(
        (20..limit).contains(&longest_pause),
        "the longest pause ({longest_pause} frames) must be the one put in, under the limit"
    );

    let mut events = vec![];
    let mut on_event = |e: &pipeline::Event| {
        events.push((e.step, e.new_conversation, e.speaking, e.piece.to_string()));
    };
    replay_unpaced(&mut model, pcm, &Metrics::new(), &mut on_event);
    assert_eq!(events.len(), frames);
    // The model said nothing: the talk was the user's alone.
    assert!(
        events
            .iter()
            .all(|(_, _, speaking, piece)| !speaking && piece.is_empty()),
        "the silent model spoke"
    );
    let new: Vec<(u64, NewConversation)> = events
        .iter()
        .filter_map(|&(step, why, ..)| why.map(|w| (step, w)))
        .collect();
    eprintln!(
        "user speaks in frames {first}..={last} (longest pause {longest_pause}); new conversations: {new:?}"
    );
    // At start-up, and once after the user's last word plus the quiet time: the frame after
    // `limit` quiet ones.
    assert_eq!(
        new,
        [
            (0, NewConversation::Start),
            ((last + limit + 1) as u64, NewConversation::Idle)
        ]
    );
    // As the control socket's `status` reports it: two conversations, the second as long as
    // the quiet that followed the reset.
    let (state, steps, conversations) = model.control.status();
    assert_eq!(
        (state, steps, conversations),
        ("listening", (frames - last - limit - 1) as u64, 2)
    );
}

#[test]
fn metrics_are_prometheus_text() {
    let m = Metrics::new();
    m.step(50_000, false);
    m.step(120_000, true);
    Metrics::add(&m.capture_xruns);
    let text = m.render();
    for line in [
        "flm_edge_steps_total 2",
        "flm_edge_deadline_misses_total 1",
        "flm_edge_xruns_total{dir=\"capture\"} 1",
        "flm_edge_step_seconds_bucket{le=\"0.08\"} 1",
        "flm_edge_step_seconds_bucket{le=\"+Inf\"} 2",
        "flm_edge_step_seconds_count 2",
        "flm_edge_playback_clock_correction_ppm 0",
        "flm_edge_playback_slipped_samples_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    let s = m.summary();
    assert_eq!((s.steps, s.max), (2, 120.0));
    // The recorder's lines appear while it records.
    assert!(!text.contains("flm_edge_heard_"), "{text}");
    m.heard_active.store(true, Relaxed);
    Metrics::add(&m.heard_frames);
    Metrics::add(&m.heard_dropped);
    let text = m.render();
    for line in [
        "flm_edge_heard_frames_total 1",
        "flm_edge_heard_dropped_frames_total 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    // The echo canceller's lines appear while it runs, each estimate once it has one.
    assert!(!text.contains("flm_edge_echo_"), "{text}");
    m.echo_active.store(true, Relaxed);
    Metrics::add(&m.echo_realignments);
    let text = m.render();
    assert!(
        text.lines()
            .any(|l| l == "flm_edge_echo_realignments_total 1")
    );
    assert!(!text.contains("flm_edge_echo_erle_db"), "{text}");
    m.echo_erle_millibel.store(2150, Relaxed);
    m.echo_delay_ms.store(64, Relaxed);
    let text = m.render();
    for line in [
        "flm_edge_echo_erle_db 21.5",
        "flm_edge_echo_delay_seconds 0.064",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
}

#[test]
fn a_bad_configuration_gets_one_line_naming_the_key() {
    let dir = scratch("config");
    std::fs::create_dir_all(&*dir).unwrap();
    let cases = [
        ("[audio]\nrate = \"fast\"\n", "audio.rate"),
        ("[audio]\nrate = 3\n", "audio.rate"),
        ("[audio]\nformat = \"s24\"\n", "audio.format"),
        ("[audio]\necho_cancel = \"on\"\n", "audio.echo_cancel"),
        // AEC3 runs at 16, 32 or 48 kHz.
        (
            "[audio]\necho_cancel = \"aec3\"\nrate = 44100\n",
            "audio.echo_cancel",
        ),
        (
            "[server]\npage_dir = \"/nonexistent/page\"\n",
            "server.page_dir",
        ),
        ("[schedule]\nlatency = 2\n", "latency"),
        // Beyond what the output queue holds, answers would be dropped silently.
        (
            "[schedule]\nlatency_frames = 13\n",
            "schedule.latency_frames",
        ),
        (
            "[schedule]\nmax_backlog_frames = 16\n",
            "schedule.max_backlog_frames",
        ),
        ("backend = \"tpu\"\n", "key `backend`"),
        ("memory_mib = -1\n", "memory_mib"),
        (
            "[server]\nmax_conversations = 17\n",
            "server.max_conversations",
        ),
        ("[server]\ntoken = \"short\"\n", "server.token"),
        (
            "[server]\ntoken = \"a token with spaces in it\"\n",
            "server.token",
        ),
        (
            "[server]\nallowed_origins = [\"https://kiosk.example/\"]\n",
            "server.allowed_origins",
        ),
        (
            "[server]\nallowed_origins = \"https://kiosk.example\"\n",
            "server.allowed_origins",
        ),
        (
            "[server]\nmax_conversation_s = 100000\n",
            "server.max_conversation_s",
        ),
        (
            "[server]\nreceive_buffer_s = 1\n",
            "server.receive_buffer_s",
        ),
        (
            "[server]\nreceive_buffer_s = 3600\n",
            "server.receive_buffer_s",
        ),
        ("[status]\nshow_peers = \"yes\"\n", "status.show_peers"),
        ("[status]\nmetrics = \"0.0.0.0:9464\"\n", "status.metrics"),
        // A file that cannot be made: one line naming it, before the model is read.
        (
            "[status]\nrecord_heard = \"/nonexistent/heard.wav\"\n",
            "/nonexistent/heard.wav",
        ),
        ("threads = -1\n", "threads"),
        ("[audio\n", "config.toml"),
    ];
    for (text, key) in cases {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        let out = flm_edge(&["serve", "--config", s(&path), "--model", s(&dir)]);
        assert_one_line_error(&out, &[key]);
    }
    let out = flm_edge(&[
        "serve",
        "--model",
        s(&dir),
        "--record-heard",
        s(&dir.join("no/such/dir/heard.wav")),
    ]);
    assert_one_line_error(
        &out,
        &["recording what the model hears", "no/such/dir/heard.wav"],
    );
    let out = flm_edge(&["serve", "--board", "raspberry", "--model", s(&dir)]);
    assert_one_line_error(&out, &["raspberry", "jetson-orin-nano"]);
    // The Jetson profiles ask for the GPU: a build without it says so in one line.
    if !cfg!(feature = "cuda") {
        let path = config(&dir, "");
        let out = flm_edge(&[
            "serve",
            "--board",
            "jetson-orin-nano",
            "--config",
            s(&path),
            "--model",
            s(model()),
        ]);
        assert_one_line_error(&out, &["backend cuda", "--features cuda"]);
    }
}

#[test]
fn every_board_profile_and_the_documented_file_load() {
    for (name, _) in flm_edge::config::BOARDS {
        let cfg = Config::load(Some(name), None).unwrap();
        assert!(cfg.model.is_some(), "{name}");
    }
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("boards/flm-edge.toml");
    let cfg = Config::load(Some("jetson-orin-nx"), Some(&doc)).unwrap();
    // The file wins over the profile, key by key.
    assert_eq!(cfg.threads, 0);
    assert_eq!(cfg.backend, "cpu");
    let nano = Config::load(Some("jetson-orin-nano"), None).unwrap();
    assert_eq!(nano.context.positions, 4096);
    assert_eq!(
        nano.audio.channels, 1,
        "keys the profile leaves out keep defaults"
    );
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        // CI installs it (.ci/install-deps): there, a skip would hide an unverified unit.
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is not installed: .ci/install-deps installs it"
        );
        eprintln!("systemd-analyze is not installed: unit not verified (skipped)");
        return;
    };
    assert!(out.status.success());
    let dir = scratch("unit");
    std::fs::create_dir_all(&*dir).unwrap();
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("boards/systemd/flm-edge.service"),
    )
    .unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = unit.replace("/usr/bin/flm-edge", env!("CARGO_BIN_EXE_flm-edge"));
    let path = dir.join("flm-edge.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", s(&path)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}

/// Messages a service manager would receive, through a datagram socket named by
/// NOTIFY_SOCKET, as systemd does.
struct Notifications {
    socket: std::os::unix::net::UnixDatagram,
    seen: Vec<String>,
}

impl Notifications {
    fn bind(path: &Path) -> Notifications {
        let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Notifications {
            socket,
            seen: vec![],
        }
    }

    /// Reads messages until one has a line starting with `prefix`; fails after `timeout`.
    fn expect(&mut self, prefix: &str, timeout: Duration) {
        assert!(
            self.wait_for(prefix, timeout),
            "no {prefix}: {:?}",
            self.seen
        );
    }

    fn wait_for(&mut self, prefix: &str, timeout: Duration) -> bool {
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        while t0.elapsed() < timeout {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(|l| l.starts_with(prefix));
                self.seen.push(msg);
                if hit {
                    return true;
                }
            }
        }
        false
    }
}

/// `flm-edge ARGS` as systemd would run it: notifications to a socket in `dir`, a 2 s
/// watchdog, stderr kept.
fn daemon(dir: &Path, args: &[&str]) -> (Reaped, Notifications) {
    let notes = Notifications::bind(&dir.join("notify.sock"));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_flm-edge"))
        .args(args)
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        .env("WATCHDOG_USEC", "2000000")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (Reaped(child), notes)
}

#[test]
fn reload_applies_what_changed_and_a_model_that_fails_leaves_the_old_one_serving() {
    let _t = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("reload");
    std::fs::create_dir_all(&*dir).unwrap();
    let devices = "[audio]\ncapture = \"null\"\nplayback = \"null\"\nrate = 48000\n";
    let with = |top: &str, more: &str| {
        let path = dir.join("config.toml");
        std::fs::write(
            &path,
            format!(
                "{top}threads = 2\n[schedule]\nlatency_frames = 6\nmax_backlog_frames = 15\n{devices}{more}"
            ),
        )
        .unwrap();
        path
    };
    let model_line = format!("model = \"{}\"\n", s(model()));
    let cfg = with(&model_line, "[status]\nmetrics = \"\"\nevents = \"\"\n");
    let (mut child, mut notes) = daemon(&dir, &["serve", "--config", s(&cfg)]);
    let signal = |sig| signal(&child, sig);
    notes.expect("READY=1", Duration::from_secs(60));
    // 1. A model folder that does not load: the old model keeps serving.
    with(
        "model = \"/nonexistent/model\"\n",
        "[status]\nmetrics = \"\"\nevents = \"\"\n",
    );
    signal(SIGHUP);
    notes.expect("RELOADING=1", Duration::from_secs(10));
    notes.expect("EXTEND_TIMEOUT_USEC=", Duration::from_secs(10));
    notes.expect("READY=1", Duration::from_secs(30));
    notes.seen.clear();
    notes.expect("WATCHDOG=1", Duration::from_secs(5));
    // 2. Sampling changed (the model is loaded again) and a status key (a restart's).
    with(
        &model_line,
        "[sampling]\ngreedy = true\n[status]\nmetrics = \"\"\nevents = \"\"\nlog_interval_s = 7\n",
    );
    signal(SIGHUP);
    notes.expect("RELOADING=1", Duration::from_secs(10));
    notes.expect("EXTEND_TIMEOUT_USEC=", Duration::from_secs(10));
    notes.expect("READY=1", Duration::from_secs(30));
    notes.seen.clear();
    notes.expect("WATCHDOG=1", Duration::from_secs(5));
    signal(SIGTERM);
    let (status, err) = exit_of(&mut child);
    assert!(status.success(), "{err}");
    assert!(
        err.contains("configuration not reloaded: the model did not load")
            && err.contains("/nonexistent/model")
            && err.contains("the previous one keeps serving"),
        "{err}"
    );
    assert!(
        err.contains("configuration reloaded; status.log_interval_s take effect at the next start"),
        "{err}"
    );
}

#[test]
fn systemd_sees_ready_watchdog_status_reload_and_stop() {
    let _t = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("notify");
    std::fs::create_dir_all(&*dir).unwrap();
    // alsa-lib's `null` PCMs: devices that are always there (unpaced, so the backlog policy
    // drops most frames; what matters here is the daemon's life cycle).
    let cfg = config(
        &dir,
        "[audio]\ncapture = \"null\"\nplayback = \"null\"\nrate = 48000\n",
    );
    // What the model hears recorded through the ALSA path, a reload and the stop.
    let heard = dir.join("heard.wav");
    let (mut child, mut notes) = daemon(
        &dir,
        &[
            "serve",
            "--config",
            s(&cfg),
            "--model",
            s(model()),
            "--record-heard",
            s(&heard),
        ],
    );
    let signal = |sig| signal(&child, sig);
    notes.expect("READY=1", Duration::from_secs(60));
    notes.expect("WATCHDOG=1", Duration::from_secs(5));
    notes.expect("STATUS=local audio; steps", Duration::from_secs(5));
    signal(SIGHUP);
    notes.expect("RELOADING=1", Duration::from_secs(10));
    notes.expect("READY=1", Duration::from_secs(30));
    signal(SIGTERM);
    notes.expect("STOPPING=1", Duration::from_secs(10));
    let (status, err) = exit_of(&mut child);
    assert!(status.success(), "{err}");
    assert!(err.contains("configuration reloaded"), "{err}");
    let frames = assert_heard_wav_is_whole(&heard).len() / FRAME;
    assert!(frames > 0, "{err}");
}
