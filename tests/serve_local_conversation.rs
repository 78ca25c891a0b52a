//! `serve` with `server.max_conversations = 2` and ALSA devices: the local microphone's
//! conversation (`server.local_conversation`, the default) and a websocket client stepped
//! together. The devices are alsa-lib `file` PCMs over named pipes (as in
//! tests/alsa_paced.rs) whose other ends this test feeds and drains: the microphone's card
//! delivers a 20 ms period of 48 kHz audio every 80 ms by the clock (a card at a quarter of
//! its speed, which paces the local conversation's steps), and the model computes on one
//! thread, so that both conversations keep to their deadlines on a small machine shared with
//! other work (README, "Sharing the CPU"): what is checked here is what each conversation
//! gets, not speed. The echo canceller is on (`audio.echo_cancel = "aec3"`, on the capture
//! path as alone).
//!
//! The daemon records what the local conversation's model hears (`status.record_heard`) and
//! publishes its captions on the event socket. While the client talks, the control socket's
//! `reset` starts a new local conversation, and its `mute` silences the microphone for 0.8
//! s. Each conversation is what it is alone: the local captions before the reset are
//! `flm-edge run`'s on the frames heard before it, those after it on the frames heard after
//! it (a fresh state in its slot alone), and the client's text is `flm-edge run`'s on what it
//! sent, neither reset nor muted. A second client meanwhile is refused as busy: the local
//! conversation is one of the two.
//!
//! alsa-lib reads its configuration once per process (here, the daemon's, from this
//! process's environment): this file holds one test.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::network_daemon::*;
use common::*;
use flm_edge::remote::ogg_opus::PACKET_SAMPLES;
use flm_edge::serve::device::{FRAME, sleep_until};

const RATE: u32 = 48_000;
/// One 20 ms period at 48 kHz mono s16, in bytes.
const PERIOD_BYTES: usize = 960 * 2;
/// How often the microphone's card delivers a period (of 20 ms): a quarter of its speed.
const PERIOD: Duration = Duration::from_millis(80);

/// The microphone's clock: writes `pcm` (then silence) one period every `PERIOD`. A reader
/// that goes away (alsa-lib's probe) is waited for again, until `stop`: then the first
/// write that fails (the daemon has gone) ends it.
fn feed(path: PathBuf, pcm: Vec<u8>, stop: Arc<AtomicBool>) {
    let open = || std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut pipe = open();
    let t0 = Instant::now();
    let silence = [0u8; PERIOD_BYTES];
    for k in 0.. {
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

/// The loudspeaker's card: takes every period as it comes (the daemon plays each frame in its
/// slot, at the microphone's pace), until the writer closes.
fn drain(path: PathBuf) -> Vec<i16> {
    let mut pipe = std::fs::File::open(&path).unwrap();
    let mut out = vec![];
    let mut buf = [0u8; PERIOD_BYTES];
    loop {
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

/// One command on the control socket, and its answer line.
fn command(path: &Path, cmd: &str) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    writeln!(s, "{{\"command\": \"{cmd}\"}}").unwrap();
    let mut reader = BufReader::new(s);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        // Event lines may come first.
        if line.contains("\"ok\"") || line.contains("\"error\"") || line.is_empty() {
            return line;
        }
    }
}

/// What the model heard (`status.record_heard`): whole frames.
fn heard(path: &Path) -> Vec<f32> {
    let pcm: Vec<f32> = hound::WavReader::open(path)
        .unwrap()
        .into_samples::<f32>()
        .map(|x| x.unwrap())
        .collect();
    assert_eq!(pcm.len() % FRAME, 0, "whole frames");
    pcm
}

#[test]
fn the_local_conversation_and_a_client_in_one_step_are_each_as_alone_and_the_kiosk_reset_and_mute_are_the_local_one_s()
 {
    watchdog(
        Duration::from_secs(400),
        "the local and network conversations",
    );
    let alsa = scratch("alsa");
    let (cap, play) = pipe_pcms(&alsa, "kiosk");
    // The loudspeaker's card waits for the daemon to open it.
    let drainer = std::thread::spawn(move || drain(play));
    let heard_wav = alsa.join("heard.wav");
    let d = Daemon::launch_threads(
        "serve-local-and-client",
        1,
        &format!(
            "record_heard = \"{}\"\nlog_interval_s = 1\n",
            heard_wav.display()
        ),
        &format!(
            "max_conversations = 2\n\
             [audio]\nsource = \"alsa\"\ncapture = \"kiosk_capture\"\nplayback = \"kiosk_playback\"\n\
             rate = {RATE}\nchannels = 1\nformat = \"s16\"\nperiod_ms = 20\nperiods = 4\necho_cancel = \"aec3\"\n\
             [schedule]\nlatency_frames = 6\nmax_backlog_frames = 15\n\
             [conversation]\nidle_reset_s = 0\n"
        ),
        Duration::from_secs(90),
    );
    // The event socket listens once the front does; its client connects before the
    // microphone's card delivers anything, so that it gets every caption.
    let events_sock = d.dir.join("events.sock");
    let t0 = Instant::now();
    let sock = loop {
        match UnixStream::connect(&events_sock) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "no event socket: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let lines = std::thread::spawn(move || {
        let mut lines = vec![];
        for line in BufReader::new(sock).lines() {
            let Ok(line) = line else { break };
            lines.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
        }
        lines
    });
    // The local user: 6.4 s of speech (25.6 s at the card's pace; then silence), at 48 kHz
    // by repeating each sample.
    let speech = speech();
    let user: Vec<u8> = speech[..80 * FRAME]
        .iter()
        .flat_map(|&x| {
            let b = ((x * 32767.0) as i16).to_le_bytes();
            [b, b].concat()
        })
        .collect();
    let stop_feed = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = stop_feed.clone();
        std::thread::spawn(move || feed(cap, user, stop))
    };
    // A client with another voice, from 3 s on (the local conversation's 9th frame); the
    // kiosk's reset 2.5 s into its talk; a second client meanwhile refused: the local
    // conversation has the other place.
    let clip = speech[90 * FRAME..130 * FRAME].to_vec();
    let url = d.url();
    let run = std::panic::catch_unwind(|| {
        runtime().block_on(async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let during = async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let busy = refused(&url).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                let ask = |cmd: &'static str| {
                    let sock = events_sock.clone();
                    tokio::task::spawn_blocking(move || command(&sock, cmd))
                };
                let reset = ask("reset").await.unwrap();
                // Then the kiosk's mute, for 0.8 s: the microphone's alone.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mute = ask("mute").await.unwrap();
                tokio::time::sleep(Duration::from_millis(800)).await;
                ask("unmute").await.unwrap();
                (busy, reset, mute, Instant::now())
            };
            let talk = async {
                let reply = converse(&url, &clip).await;
                (reply, Instant::now())
            };
            tokio::join!(talk, during)
        })
    });
    let ((reply, ended), (busy, reset, mute, unmuted_at)) = match run {
        Ok(r) => r,
        Err(e) => {
            let mut d = d;
            signal(&d.child, SIGTERM);
            eprintln!("serve's log:\n{}", exit_of(&mut d.child).1);
            std::panic::resume_unwind(e)
        }
    };
    // Four more seconds (12 frames) of the local conversation alone.
    std::thread::sleep(Duration::from_secs(4));
    let dropped = d.metric("capture_dropped_frames_total");
    // The echo canceller runs on the local conversation's capture path, as alone (there is
    // no echo here: what the model hears is the user, through the canceller).
    let echo = d.http("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let heard_dropped = d.metric("heard_dropped_frames_total");
    let events_dropped = d.metric("events_dropped_total");
    let conversations = d.metric("conversations_total");
    let refusals = d.metric("conversations_refused_total");
    stop_feed.store(true, Relaxed);
    let err = d.stop();
    let lines = lines.join().unwrap();
    let played = drainer.join().unwrap();
    feeder.join().unwrap();

    assert!(busy.contains("busy"), "{busy}");
    assert!(echo.contains("flm_edge_echo_far_short_total"), "{echo}");
    assert!(reset.contains("\"ok\":\"reset\""), "{reset}");
    assert!(mute.contains("\"state\":\"muted\""), "{mute}");
    assert!(
        unmuted_at < ended,
        "the reset and the mute came after the client had gone"
    );
    assert_eq!((conversations, refusals), (1, 1));
    // Every frame the microphone gave was heard, in order (the heard frame k is captured
    // frame k), and every caption went out.
    assert_eq!((dropped, heard_dropped, events_dropped), (0, 0, 0), "{err}");

    // The client: its text is `flm-edge run`'s on what it sent, alone.
    assert_eq!(reply.pcm.len(), clip.len() - PACKET_SAMPLES);
    assert!(
        reply.pcm.iter().any(|&x| x != 0.0),
        "the client's reply is silent"
    );
    let work = scratch("alone");
    std::fs::create_dir_all(&*work).unwrap();
    assert_eq!(reply.words(), offline_text(&work, "client", &reply.sent));

    // The local conversation: started once at its first frame, once on the command.
    let news: Vec<(&str, u64)> = lines
        .iter()
        .filter(|l| l["conversation"] == "new")
        .map(|l| (l["reason"].as_str().unwrap(), l["step"].as_u64().unwrap()))
        .collect();
    assert_eq!(news.len(), 2, "{news:?}");
    assert_eq!(news[0], ("start", 0));
    let (why, r) = news[1];
    assert_eq!(why, "command");
    let heard = heard(&heard_wav);
    let frames = heard.len() / FRAME;
    assert!(
        r > 10 && frames > r as usize + 10,
        "reset at {r} of {frames}"
    );
    // Muted, it heard silence (and its screens were told); the client's audio was not muted
    // (its text is as alone, above).
    let silent = heard
        .chunks_exact(FRAME)
        .filter(|f| f.iter().all(|&x| x == 0.0))
        .count();
    assert!((1..=5).contains(&silent), "{silent} silent frames heard");
    assert!(lines.iter().any(|l| l["state"] == "muted"));
    // Its captions, before the reset and from it on.
    let mut before = String::new();
    let mut after = String::new();
    for l in lines.iter().filter(|l| l.get("conversation").is_none()) {
        let text = l["text"].as_str().unwrap();
        if l["step"].as_u64().unwrap() < r {
            before.push_str(text);
        } else {
            after.push_str(text);
        }
    }
    let split = r as usize * FRAME;
    assert_eq!(before, text_alone(&work, "local-before", &heard[..split]));
    assert_eq!(after, text_alone(&work, "local-after", &heard[split..]));
    assert!(!before.is_empty() && !after.is_empty());
    // The loudspeaker played the local conversation's voice.
    assert!(
        played.iter().any(|&x| x != 0),
        "the loudspeaker played silence"
    );
    assert_eq!(
        err.matches("conversation with 127.0.0.1").count(),
        2,
        "{err}"
    );
    // The status line says both, and the sound devices are in use.
    assert!(
        err.lines().any(
            |l| l.starts_with("flm-edge: local audio and network conversations; ")
                && l.contains("devices ok")
        ),
        "{err}"
    );
}
