//! `flm-edge serve --listen`: FLM-Audio's websocket protocol over a real socket, with the small
//! model: whole conversations (Ogg-Opus both ways, text), what real clients send (packets of
//! 20 ms, several per page, headers with audio, empty messages), malformed input, the busy
//! refusal, `/api/settings`, TLS, the idle timeout, and `/healthz` under slow, huge and many
//! clients. The official client's own libraries (sphn 0.1.4, websockets) drive one more
//! conversation from Python (`tests/remote/official_client.py`).
//!
//! The daemons run one at a time (a lock) so that their steps keep to real time.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::network_daemon::*;
use common::*;
use flm_edge::remote::ogg_opus::{OggOpusReader, OggOpusWriter, PACKET_SAMPLES};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn post_settings(addr: SocketAddr, body: &str) -> String {
    http(
        addr,
        &format!(
            "POST /api/settings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// The next binary message (5 s at most); None when the server closed.
async fn next(ws: &mut Ws) -> Option<Vec<u8>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Err(_) => panic!("nothing from the server for 5 s"),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(Message::Binary(b)))) => return Some(b.to_vec()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// The close frame's code and reason (the messages before it are passed over).
async fn closed_with(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Err(_) => panic!("the server did not close within 5 s"),
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return (f.code.into(), f.reason.to_string());
            }
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(None)))) => {
                return (0, String::new());
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// What came back from a conversation.
#[derive(Default)]
struct Reply {
    pcm: Vec<f32>,
    text: Vec<String>,
}

/// Seconds without a message after which the server has sent all it had.
const QUIET: Duration = Duration::from_secs(3);

/// Receives everything the server sends until it has been quiet for `QUIET` (or closed):
/// what it sent, not a count this client stops at.
async fn receive(ws: &mut Ws, reply: &mut Reply, reader: &mut OggOpusReader) {
    loop {
        match tokio::time::timeout(QUIET, ws.next()).await {
            Err(_) | Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return,
            Ok(Some(Ok(Message::Binary(b)))) => reply.take(&b, reader),
            Ok(Some(Ok(_))) => {}
        }
    }
}

impl Reply {
    /// One message from the server: audio is decoded, text kept, other kinds passed over.
    fn take(&mut self, m: &[u8], reader: &mut OggOpusReader) {
        match m.first() {
            Some(1) => reader
                .push(&m[1..], &mut |x: &[f32]| self.pcm.extend_from_slice(x))
                .unwrap(),
            Some(2) => self.text.push(String::from_utf8(m[1..].to_vec()).unwrap()),
            _ => {}
        }
    }
}

/// `frames` frames of the speech clip, as the pages the FLM command-line client sends (one
/// 80 ms packet per page, headers as messages of their own), sent at real-time pace while
/// the answers are received.
async fn converse(ws: &mut Ws, clip: &[f32]) -> (Reply, Vec<u8>) {
    assert_eq!(next(ws).await.unwrap(), [0u8], "the handshake comes first");
    let mut w = OggOpusWriter::new().unwrap();
    let mut sent = vec![];
    for h in w.headers().unwrap() {
        send(ws, 1, &h).await;
        sent.extend_from_slice(&h);
    }
    let mut reply = Reply::default();
    let mut reader = OggOpusReader::new().unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(80));
    for f in clip.chunks_exact(PACKET_SAMPLES) {
        tick.tick().await;
        let page = w.frame(f).unwrap();
        send(ws, 1, &page).await;
        sent.extend_from_slice(&page);
        // Take what has come back meanwhile, without waiting.
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::ZERO, ws.next()).await {
            if let Message::Binary(b) = m {
                reply.take(&b, &mut reader);
            }
        }
    }
    receive(ws, &mut reply, &mut reader).await;
    (reply, sent)
}

/// The frames of the speech clip the tests send.
const FRAMES: usize = 40;

fn clip() -> Vec<f32> {
    speech()[..FRAMES * PACKET_SAMPLES].to_vec()
}

/// `flm-edge run` on `pcm` (24 kHz, f32 WAV): its text, and the text token of every step.
fn offline_text(dir: &Path, pcm: &[f32]) -> (String, Vec<i64>) {
    let wav = dir.join("decoded-input.wav");
    flm_edge::wav::write_mono_24k(&wav, pcm).unwrap();
    let transcript = dir.join("steps.jsonl");
    let out = flm_edge(&[
        "run",
        "--model",
        s(model()),
        "--threads",
        "2",
        "--input",
        s(&wav),
        "--output",
        s(&dir.join("ran.wav")),
        "--transcript",
        s(&transcript),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let tokens = std::fs::read_to_string(&transcript)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_i64()
                .unwrap()
        })
        .collect();
    (text.strip_suffix('\n').unwrap_or(&text).to_string(), tokens)
}

fn text_wait() -> i64 {
    let dir = flm_edge::model_dir::ModelDir::open(model()).unwrap();
    dir.audio
        .get_u64(flm_conversion::model_files::audio_keys::TEXT_WAIT)
        .unwrap() as i64
}

#[test]
fn a_whole_conversation_over_a_websocket_answers_as_the_offline_run() {
    let _t = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start("remote-conversation", "");
    // Idle, waiting for a client: healthy.
    assert!(
        d.http("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .contains(" 200 ")
    );
    let events = std::os::unix::net::UnixStream::connect(d.dir.join("events.sock")).unwrap();
    events
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let clip = clip();
    let (reply, sent) = runtime().block_on(async {
        let mut ws = connect(&d.url()).await;
        let r = converse(&mut ws, &clip).await;
        ws.close(None).await.unwrap();
        r
    });
    // One answer per frame received but the first (whose step has no audio yet), as the
    // official server.
    assert_eq!(reply.pcm.len(), (FRAMES - 1) * PACKET_SAMPLES);
    assert!(reply.pcm.iter().any(|&x| x != 0.0), "the reply is silent");
    // The text equals the offline run's on the same (Opus-decoded) input, same seed.
    let mut heard = vec![];
    let mut r = OggOpusReader::new().unwrap();
    r.push(&sent, &mut |x: &[f32]| heard.extend_from_slice(x))
        .unwrap();
    assert_eq!(heard.len(), clip.len());
    let (text, tokens) = offline_text(&d.dir, &heard);
    let pieces: Vec<&str> = reply
        .text
        .iter()
        .map(String::as_str)
        .filter(|t| *t != "\n")
        .collect();
    assert_eq!(pieces.concat(), text);
    // "\n" where the model returned to waiting after text.
    let wait = text_wait();
    let ends = tokens
        .windows(2)
        .filter(|w| w[0] != wait && w[1] == wait)
        .count();
    let newlines = reply.text.iter().filter(|t| *t == "\n").count();
    assert_eq!(newlines, ends, "{:?}", reply.text);
    assert_eq!(d.metric("conversation_frames_in"), FRAMES as u64);
    assert_eq!(d.metric("conversation_frames_out"), FRAMES as u64 - 1);
    assert_eq!(d.metric("conversation_decode_errors"), 0);
    assert_eq!(d.metric("conversations_total"), 1);
    // The event stream has the conversation's begin and end around its steps.
    let lines: Vec<serde_json::Value> = std::io::BufRead::lines(std::io::BufReader::new(events))
        .map_while(Result::ok)
        .map(|l| serde_json::from_str(&l).unwrap())
        .take_while(|v: &serde_json::Value| v["conversation"] != "end")
        .collect();
    assert_eq!(lines[0]["conversation"], "begin");
    // The client's address stays in the log unless `status.show_peers` is set.
    assert!(lines[0].get("peer").is_none(), "{}", lines[0]);
    assert!(lines.len() > 1, "{lines:?}");
    let err = d.stop();
    assert!(err.contains("conversation with 127.0.0.1"), "{err}");
    assert!(err.contains(&format!("{FRAMES} frames in")), "{err}");
}

/// The pages of `pcm` as the FLM command-line client sends them: OpusHead, OpusTags, then
/// one 80 ms packet per page.
fn pages_of(pcm: &[f32]) -> Vec<Vec<u8>> {
    let mut w = OggOpusWriter::new().unwrap();
    let mut pages: Vec<Vec<u8>> = w.headers().unwrap().into();
    pages.extend(
        pcm.chunks_exact(PACKET_SAMPLES)
            .map(|f| w.frame(f).unwrap()),
    );
    pages
}

/// A client that sends all its frames at once (a phone waking up, a harness faster than
/// real time), and one that stalls mid-way, at the shipped defaults: every frame is heard,
/// in order, and answered but the first, with the text of the offline run on the same
/// audio. The burst is five times the receive buffer (2 s).
#[test]
fn bursty_and_stalling_clients_lose_nothing() {
    let _t = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start("remote-burst", "");
    let speech = speech();
    let frames = (speech.len() / PACKET_SAMPLES).min(125);
    let clip = &speech[..frames * PACKET_SAMPLES];
    assert!(frames as f64 * 0.08 >= 10.0, "{frames} frames");
    let pages = pages_of(clip);
    let mut heard = vec![];
    OggOpusReader::new()
        .unwrap()
        .push(&pages.concat(), &mut |x: &[f32]| heard.extend_from_slice(x))
        .unwrap();
    let (text, _) = offline_text(&d.dir, &heard);
    // Sent at once; then: 10 frames, 4 s of nothing, the rest at once.
    for stall_after in [None, Some(10)] {
        let reply = runtime().block_on(async {
            let mut ws = connect(&d.url()).await;
            assert_eq!(next(&mut ws).await.unwrap(), [0u8]);
            for (i, p) in pages.iter().enumerate() {
                if stall_after == Some(i.saturating_sub(2)) && i > 2 {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                }
                send(&mut ws, 1, p).await;
            }
            let mut reply = Reply::default();
            receive(&mut ws, &mut reply, &mut OggOpusReader::new().unwrap()).await;
            ws.close(None).await.unwrap();
            reply
        });
        let how = if stall_after.is_some() {
            "stalling"
        } else {
            "bursty"
        };
        assert_eq!(
            reply.pcm.len(),
            (frames - 1) * PACKET_SAMPLES,
            "{how} client: answers"
        );
        let said: String = reply.text.iter().filter(|t| *t != "\n").cloned().collect();
        assert_eq!(said, text, "{how} client: the offline run's text");
        assert_eq!(d.metric("conversation_frames_in"), frames as u64, "{how}");
    }
    d.stop();
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Pages with valid checksums that grow what a reader keeps: 20,000 that each begin a new
/// logical stream (taken: each replaces the last), then 21 MiB of one packet that never
/// ends (every lacing value 255: refused with 1009 once it is longer than any Opus packet).
/// The daemon's memory stays within 4 MiB of what it was.
#[test]
fn never_ending_packets_and_endless_streams_leave_memory_as_it_was() {
    use ogg::writing::{PacketWriteEndInfo, PacketWriter};
    let _t = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start("remote-endless", "");
    let pid = d.child.id();
    runtime().block_on(async {
        let mut ws = connect(&d.url()).await;
        assert_eq!(next(&mut ws).await.unwrap(), [0u8]);
        let before = rss_kib(pid);
        let mut pw = PacketWriter::new(Vec::new());
        for serial in 0..20_000u32 {
            pw.write_packet(
                b"OpusHead\x01\x01".to_vec(),
                serial,
                PacketWriteEndInfo::EndPage,
                0,
            )
            .unwrap();
            if serial % 1000 == 999 {
                send(&mut ws, 1, &std::mem::take(pw.inner_mut())).await;
            }
        }
        let mut pw = PacketWriter::new(Vec::new());
        pw.write_packet(vec![0x55; 21 << 20], 7, PacketWriteEndInfo::EndPage, 0)
            .unwrap();
        let endless = pw.into_inner();
        let mut sent = 0;
        for chunk in endless.chunks(64 << 10) {
            let mut m = vec![1u8];
            m.extend_from_slice(chunk);
            if ws.send(Message::Binary(m.into())).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        let (code, why) = closed_with(&mut ws).await;
        assert_eq!(code, 1009, "{why}");
        assert!(why.contains("no Opus packet is over"), "{why}");
        let after = rss_kib(pid);
        assert!(
            after < before + 4096,
            "RSS {before} KiB before, {after} KiB after {sent} bytes"
        );
    });
    assert_eq!(d.metric("conversation_decode_errors"), 1);
    d.stop();
}

#[test]
fn what_real_clients_send_is_taken_and_malformed_audio_closes_only_that_connection() {
    use ogg::writing::{PacketWriteEndInfo, PacketWriter};
    let _t = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start("remote-clients", "");
    let clip = clip();
    runtime().block_on(async {
        // Kyutai's web client: 20 ms packets, two per page, the header pages and the first
        // audio in one message; a 48 kHz granule; and empty messages, as fastrtc forwards.
        let mut ws = connect(&d.url()).await;
        assert_eq!(next(&mut ws).await.unwrap(), [0u8]);
        let mut enc =
            opus::Encoder::new(24_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let mut pw = PacketWriter::new(Vec::new());
        let mut w = OggOpusWriter::new().unwrap();
        let [head, tags] = w.headers().unwrap();
        let mut first = [head, tags].concat();
        for (i, c) in clip.chunks_exact(480).enumerate() {
            let p = enc.encode_vec_float(c, 4000).unwrap();
            let end = if i % 2 == 1 {
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            pw.write_packet(p, 9, end, (i as u64 + 1) * 960).unwrap();
            if i % 2 == 1 {
                let pages = std::mem::take(pw.inner_mut());
                if i == 1 {
                    first.extend_from_slice(&pages);
                    send(&mut ws, 1, &first).await;
                } else {
                    send(&mut ws, 1, &pages).await;
                }
                if i % 8 == 7 {
                    send(&mut ws, 1, &[]).await;
                    tokio::time::sleep(Duration::from_millis(80)).await;
                }
            }
        }
        let mut reply = Reply::default();
        receive(&mut ws, &mut reply, &mut OggOpusReader::new().unwrap()).await;
        assert_eq!(reply.pcm.len(), (FRAMES - 1) * PACKET_SAMPLES);
        ws.close(None).await.unwrap();
        // Audio that is not Ogg: that connection is closed with the reason.
        let mut ws = connect(&d.url()).await;
        assert_eq!(next(&mut ws).await.unwrap(), [0u8]);
        send(&mut ws, 1, b"RIFF$\0\0\0WAVEfmt ").await;
        let (code, why) = closed_with(&mut ws).await;
        assert_eq!(code, 1007, "{why}");
        assert!(why.contains("not an Ogg stream"), "{why}");
        // Counted, before the next conversation starts its own counts.
        let t0 = Instant::now();
        while d.metric("conversation_active") == 1 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the conversation did not end"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(d.metric("conversation_decode_errors"), 1);
        // The daemon goes on serving.
        let mut ws = connect(&d.url()).await;
        assert_eq!(next(&mut ws).await.unwrap(), [0u8]);
        ws.close(None).await.unwrap();
    });
    assert_eq!(d.metric("conversations_total"), 3);
    d.stop();
}

#[test]
fn a_second_client_is_refused_at_once_and_settings_wait_for_the_next_conversation() {
    let _t = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start("remote-busy", "");
    let addr = d.addr;
    // Settings as the official server answers them.
    let ok = post_settings(addr, r#"{"temp_text": 0.5, "use_sampling": true}"#);
    assert!(
        ok.contains(" 200 ") && ok.ends_with(r#"{"status": "success"}"#),
        "{ok}"
    );
    let bad = post_settings(addr, "{oops");
    assert!(
        bad.contains(" 400 ") && bad.ends_with(r#"{"error": "Invalid JSON"}"#),
        "{bad}"
    );
    // Unknown keys are ignored, as the official server ignores them.
    let unknown = post_settings(addr, r#"{"temperature": 1}"#);
    assert!(
        unknown.contains(" 200 ") && unknown.ends_with(r#"{"status": "success"}"#),
        "{unknown}"
    );
    let range = post_settings(addr, r#"{"top_p_text": 2}"#);
    assert!(
        range.contains(" 400 ") && range.contains("top_p_text"),
        "{range}"
    );
    runtime().block_on(async {
        let mut first = connect(&d.url()).await;
        assert_eq!(next(&mut first).await.unwrap(), [0u8]);
        let t0 = Instant::now();
        let mut second = connect(&d.url()).await;
        let m = next(&mut second).await.unwrap();
        assert_eq!(m[0], 0x05);
        assert!(String::from_utf8_lossy(&m[1..]).contains("busy"));
        let (code, why) = closed_with(&mut second).await;
        assert_eq!(code, 1013, "{why}");
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "refused after {:?}",
            t0.elapsed()
        );
        let busy = post_settings(addr, r#"{"temp_text": 0.7}"#);
        assert!(
            busy.contains(" 503 ")
                && busy.ends_with(r#"{"error": "Server is busy, please try again later."}"#),
            "{busy}"
        );
        first.close(None).await.unwrap();
    });
    assert_eq!(d.metric("conversations_refused_total"), 1);
    // Invalid JSON is answered first, busy or not, as the official server does.
    let bad = post_settings(addr, "{oops");
    assert!(bad.contains(" 400 "), "{bad}");
    // Once the conversation has ended, settings are taken again.
    let t0 = Instant::now();
    loop {
        let r = post_settings(addr, r#"{"temp_text": 0.7}"#);
        if r.contains(" 200 ") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{r}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = d.stop();
    assert!(
        err.contains("unknown keys ignored: \"temperature\""),
        "{err}"
    );
}

#[test]
fn a_network_conversation_takes_the_model_from_alsa_and_gives_it_back() {
    let _t = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // alsa-lib's `null` PCMs: sound devices that are always there.
    let d = Daemon::start(
        "remote-and-alsa",
        "[audio]\ncapture = \"null\"\nplayback = \"null\"\nrate = 48000\n",
    );
    let steps = || d.metric("steps_total");
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !ok() {
            assert!(t0.elapsed() < Duration::from_secs(20), "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("ALSA steps", &|| steps() > 10);
    let clip = clip();
    runtime().block_on(async {
        let mut ws = connect(&d.url()).await;
        let (reply, _) = converse(&mut ws, &clip[..10 * PACKET_SAMPLES]).await;
        assert_eq!(reply.pcm.len(), 9 * PACKET_SAMPLES);
        assert_eq!(d.metric("conversation_active"), 1);
        ws.close(None).await.unwrap();
    });
    // The conversation has ended: ALSA steps again.
    wait_for("the conversation's end", &|| {
        d.metric("conversation_active") == 0
    });
    let after = steps();
    wait_for("ALSA steps after the conversation", &|| {
        steps() > after + 10
    });
    assert_eq!(d.metric("conversation_frames_in"), 10);
    let err = d.stop();
    assert!(err.contains("ends: 10 frames in"), "{err}");
}

#[test]
fn a_silent_client_is_closed_after_the_idle_time() {
    let _t = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start("remote-idle", "idle_timeout_s = 1\n");
    runtime().block_on(async {
        let mut ws = connect(&d.url()).await;
        assert_eq!(next(&mut ws).await.unwrap(), [0u8]);
        let t0 = Instant::now();
        let (code, why) = closed_with(&mut ws).await;
        assert_eq!(code, 1001, "{why}");
        assert!(why.contains("nothing received"), "{why}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    });
    d.stop();
}

#[test]
fn tls_serves_wss() {
    let _t = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = scratch("remote-tls-keys");
    std::fs::create_dir_all(&*dir).unwrap();
    let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let d = Daemon::start(
        "remote-tls",
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            s(&cert_pem),
            s(&key_pem)
        ),
    );
    runtime().block_on(async {
        use tokio_rustls::rustls;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(d.addr).await.unwrap();
        let url = format!("wss://localhost:{}/api/chat", d.addr.port());
        let (mut ws, _) = tokio_tungstenite::client_async_tls_with_config(
            url,
            tcp,
            None,
            Some(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(
                config,
            ))),
        )
        .await
        .unwrap();
        assert_eq!(next(&mut ws).await.unwrap(), [0u8]);
        ws.close(None).await.unwrap();
    });
    // Plain HTTP to the TLS port is no conversation.
    let plain = d.http("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!plain.contains(" 200 "), "{plain}");
    d.stop();
}

#[test]
fn healthz_answers_within_a_second_under_slow_huge_and_many_clients() {
    use std::io::Write;
    use std::net::TcpStream;
    let _t = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let status: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let d = Daemon::start_with(
        "remote-abuse",
        &format!("metrics = \"{status}\"\n"),
        "max_connections = 32\n",
    );
    let addr = d.addr;
    let get_at = |at: SocketAddr, path: &str| -> (Duration, String) {
        let t0 = Instant::now();
        let r = http(at, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        (t0.elapsed(), r)
    };
    let get = |path: &str| get_at(addr, path);
    // A conversation going on, then 30 clients holding half a request line, one sending an
    // 8 MiB line, and bursts of 100 connections opened and dropped. (The conversation comes
    // first: while such a burst churns, a new connection past the listener's budget is
    // closed as it comes, by design.)
    let rt = runtime();
    let mut ws = rt.block_on(connect(&d.url()));
    let slow: Vec<TcpStream> = (0..30)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /metr").unwrap();
            c
        })
        .collect();
    let huge = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        // A server that stops reading without closing fails the test instead of hanging it.
        c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        while sent < 8 << 20 {
            match c.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) => {
                    let stalled = matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                    assert!(
                        !stalled,
                        "the server stopped reading but kept the connection"
                    );
                    break;
                }
            }
        }
        sent
    });
    for _ in 0..100 {
        drop(TcpStream::connect(addr));
    }
    // 100 more that send nothing: past the 32 served and the 32 that may wait or be refused,
    // the listener closes them as they come.
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let closed = idle
        .iter()
        .filter(|c| {
            use std::io::Read;
            c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            matches!((&**c).read(&mut [0u8; 1]), Ok(0))
        })
        .count();
    assert!(closed >= 100 - 64, "{closed} of 100 closed at once");
    for _ in 0..5 {
        // The public address is full: it answers 503 at once, or 200 when a place is free.
        let (took, reply) = get("/healthz");
        assert!(
            reply.contains(" 200 ") || reply.contains(" 503 "),
            "{reply}"
        );
        assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
        // The status address has places of its own: always 200.
        let (took, reply) = get_at(status, "/healthz");
        assert!(reply.contains(" 200 "), "status address: {reply}");
        assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
    }
    drop(idle);
    let (took, reply) = get("/metrics");
    assert!(took < Duration::from_secs(1), "/metrics took {took:?}");
    assert!(
        reply.contains("flm_edge_steps_total") || reply.contains(" 503 "),
        "{reply}"
    );
    // The huge client is cut off at the head limit rather than read to the end.
    assert!(huge.join().unwrap() < 8 << 20, "8 MiB were read");
    drop(slow);
    // Once the slow clients are gone (their 1 s is over), everything answers again.
    std::thread::sleep(Duration::from_millis(1200));
    let (took, reply) = get("/healthz");
    assert!(reply.contains(" 200 "), "{reply}");
    assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
    // A huge websocket message closes that conversation, not the service.
    rt.block_on(async {
        assert_eq!(next(&mut ws).await.unwrap(), [0u8]);
        let _ = ws.send(Message::Binary(vec![1u8; 1 << 20].into())).await;
        let (code, _) = closed_with(&mut ws).await;
        assert_ne!(code, 1000);
    });
    let (_, reply) = get("/healthz");
    assert!(reply.contains(" 200 "), "{reply}");
    // Routes other than these are not served.
    assert!(get("/etc/passwd").1.contains(" 404 "));
    d.stop();
}

#[test]
fn the_official_clients_libraries_hold_a_conversation_in_real_time() {
    let _t = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let py = python_env();
    let d = Daemon::start("remote-python", "");
    let wav = Path::new(GOLDEN_MIMI).join("speech.wav");
    let out = Command::new(py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/remote/official_client.py"))
        .args([
            "--url",
            &d.url(),
            "--input",
            s(&wav),
            "--frames",
            &FRAMES.to_string(),
        ])
        .args(["--settings", &format!("http://{}/api/settings", d.addr)])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The client checks what it got and prints one JSON line.
    let v: serde_json::Value = serde_json::from_str(said.lines().last().unwrap()).unwrap();
    assert_eq!(v["handshake"], true);
    assert_eq!(v["settings"], "success");
    // OpusHead, OpusTags, then one page per answer: one per frame sent but the first, as
    // the official server (its first step has no audio yet).
    assert_eq!(v["pages"], (FRAMES - 1 + 2) as u64, "{v}");
    // sphn's reader decodes every 80 ms page (it does not apply OpusHead's pre-skip).
    let samples = v["reply_samples"].as_u64().unwrap();
    assert_eq!(samples, ((FRAMES - 1) * PACKET_SAMPLES) as u64, "{v}");
    assert!(v["reply_rms"].as_f64().unwrap() > 1e-4, "{v}");
    d.stop();
}

/// The board's page: its files built in (with a policy that keeps it to this server) or from
/// `server.page_dir` (a file missing there stays built in; a bad one is an error naming it);
/// `GET /api/settings`; and `/api/events`: the state and a health line at once, text during a
/// conversation, at most 8 streams at once.
#[test]
fn the_page_and_its_event_stream_are_served_within_their_limits() {
    use std::io::{Read, Write};
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let pages = scratch("remote-page-dir");
    std::fs::create_dir_all(&*pages).unwrap();
    std::fs::write(pages.join("style.css"), "body { color: hotpink }").unwrap();
    std::fs::write(pages.join("app.js"), [0xff, 0xfe, 0x00]).unwrap();
    let d = Daemon::start("remote-page", &format!("page_dir = \"{}\"\n", s(&pages)));

    let index = d.http("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(index.starts_with("HTTP/1.1 200"), "{index}");
    assert!(index.contains("content-type: text/html"), "{index}");
    assert!(
        index.contains("content-security-policy: default-src 'self'"),
        "{index}"
    );
    assert!(
        index.contains(
            flm_edge::remote::page::ASSETS[0]
                .built_in
                .lines()
                .nth(1)
                .unwrap()
        )
    );
    let css = d.http("GET /style.css HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(css.ends_with("body { color: hotpink }"), "{css}");
    let js = d.http("GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        js.starts_with("HTTP/1.1 500") && js.contains("app.js: not UTF-8"),
        "{js}"
    );
    let nothing = d.http("GET /secret.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(nothing.starts_with("HTTP/1.1 404"), "{nothing}");
    let settings = d.http("GET /api/settings HTTP/1.1\r\nHost: x\r\n\r\n");
    let body: serde_json::Value =
        serde_json::from_str(settings.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body.as_object().unwrap().len(), 11, "{settings}");
    assert_eq!(body["use_sampling"], true);

    // Streams: each begins with the state and a health line.
    let open_stream = || {
        let mut c = std::net::TcpStream::connect(d.addr).unwrap();
        c.write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        c
    };
    let read_for = |c: &mut std::net::TcpStream, time: Duration, until: &str| {
        let t0 = Instant::now();
        let mut got = String::new();
        let mut buf = [0u8; 4096];
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while t0.elapsed() < time && !got.contains(until) {
            if let Ok(n) = c.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
        got
    };
    let mut streams: Vec<_> = (0..8).map(|_| open_stream()).collect();
    let first = read_for(&mut streams[0], Duration::from_secs(3), "\"health\"");
    assert!(first.contains("content-type: text/event-stream"), "{first}");
    assert!(first.contains("data: {\"state\":\"listening\""), "{first}");
    assert!(
        first.contains("\"source\":\"waiting for a network client\""),
        "{first}"
    );
    let mut ninth = open_stream();
    let refused = read_for(&mut ninth, Duration::from_secs(3), "busy");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    // Seven leave: their places come back within the second in which their streams next
    // write (a health line).
    streams.truncate(1);
    std::thread::sleep(Duration::from_millis(2500));
    let mut again = open_stream();
    let served = read_for(&mut again, Duration::from_secs(3), "\"health\"");
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    drop(again);

    // During a conversation the stream carries its begin line and the model's text.
    let rt = runtime();
    let clip = clip()[..24_000 * 3].to_vec();
    let (reply, _) = rt.block_on(async {
        let mut ws = connect(&d.url()).await;
        converse(&mut ws, &clip).await
    });
    let during = read_for(&mut streams[0], Duration::from_secs(5), "\"end\"");
    assert!(during.contains("\"conversation\":\"begin\""), "{during}");
    // Client addresses stay off the page unless `status.show_peers` is set.
    assert!(!during.contains("peer"), "{during}");
    assert!(during.contains("\"conversation\":\"end\""), "{during}");
    let texts = during
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_owned))
        .collect::<String>();
    let said = reply.text.concat().replace('\n', "");
    assert!(!said.is_empty());
    assert_eq!(texts, said, "the stream's text is the conversation's");
    assert!(
        during.contains("\"source\":\"network conversation\""),
        "{during}"
    );
    // After it, a page that connects is told the model is listening (it stopped speaking
    // with the conversation).
    let mut after = open_stream();
    let first_after = read_for(&mut after, Duration::from_secs(3), "\"health\"");
    assert!(
        first_after.contains("data: {\"state\":\"listening\""),
        "{first_after}"
    );
    drop(after);
    drop(streams);
    let _ = d.stop();
}

/// The answer's status line, its headers (lower case) and its body.
fn answer(reply: &str) -> (u16, String, String) {
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((reply, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_ascii_lowercase(), body.to_string())
}

/// A websocket handshake with these headers: the server's status when it refused the
/// upgrade, or the open socket.
async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// `server.token`, `server.allowed_origins`, the settings' content type and
/// `server.max_conversation_s`, over real sockets: programs without a token are refused
/// (401) and with it served, by header or query; browsers' pages of other origins are
/// refused (403), the server's own and the allowed ones served; a form post is refused
/// (415); the status routes stay open; every end of the official Gradio client's sliders is
/// taken, answered with aiohttp's bytes; and a conversation is closed at its time limit.
#[test]
fn who_may_talk_to_the_board() {
    let _t = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const TOKEN: &str = "kiosk-0123456789abcdef";
    let d = Daemon::start_with(
        "remote-access",
        "show_peers = true\n",
        &format!(
            "token = \"{TOKEN}\"\nallowed_origins = [\"https://kiosk.example\"]\nmax_conversation_s = 2\n"
        ),
    );
    let addr = d.addr;
    let host = format!("Host: {addr}\r\n");
    let get = |path: &str, extra: &str| {
        answer(&d.http(&format!("GET {path} HTTP/1.1\r\n{host}{extra}\r\n")))
    };
    // The status routes and the page stay open.
    for open in ["/healthz", "/metrics", "/", "/app.js"] {
        assert_eq!(get(open, "").0, 200, "{open}");
    }
    // No token, a wrong one: 401 with the reason; the header or the query: served.
    let (code, head, body) = get("/api/settings", "");
    assert_eq!(code, 401, "{body}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert!(body.contains("token"), "{body}");
    assert_eq!(get("/api/settings?token=kiosk-0123456789abcdeX", "").0, 401);
    assert_eq!(
        get(
            "/api/settings",
            "Authorization: Bearer wrong-token-0123456789\r\n"
        )
        .0,
        401
    );
    assert_eq!(get(&format!("/api/settings?token={TOKEN}"), "").0, 200);
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    assert_eq!(get("/api/settings", &bearer).0, 200);
    let (code, _, body) = get("/api/events", "");
    assert_eq!(code, 401, "{body}");
    assert_eq!(
        get(
            "/api/events",
            &format!("{bearer}Origin: http://evil.example\r\n")
        )
        .0,
        403
    );

    let post = |ty: &str, extra: &str, body: &str| {
        answer(&d.http(&format!(
            "POST /api/settings HTTP/1.1\r\n{host}{extra}Content-Type: {ty}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )))
    };
    // A cross-site form can post only these types: refused before the body is read.
    for ty in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data; boundary=x",
    ] {
        let (code, _, body) = post(ty, &bearer, "temp_text=2");
        assert_eq!(code, 415, "{ty}: {body}");
        assert!(body.contains("application/json"), "{body}");
    }
    let (code, _, _) = post("application/json", "", r#"{"temp_text": 0.5}"#);
    assert_eq!(code, 401);
    let (code, _, body) = post(
        "application/json",
        &format!("{bearer}Origin: http://evil.example\r\n"),
        r#"{"temp_text": 0.5}"#,
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("evil.example"), "{body}");
    // Every end of every slider of the official Gradio client, posted as it posts them
    // (requests' `json=`: `application/json`, no Origin), gets aiohttp's exact answer.
    let sliders: [(&str, &str, &str); 10] = [
        ("temp_audio", "0", "2"),
        ("top_k_audio", "0", "1000"),
        ("top_p_audio", "0", "1"),
        ("repetition_penalty_audio", "0", "2"),
        ("repetition_penalty_window_audio", "-1", "100"),
        ("temp_text", "0", "2"),
        ("top_k_text", "0", "100"),
        ("top_p_text", "0", "1"),
        ("repetition_penalty_text", "0", "2"),
        ("repetition_penalty_window_text", "-1", "100"),
    ];
    for (key, lo, hi) in sliders {
        for end in [lo, hi] {
            let body = format!(
                r#"{{"use_sampling": true, "temp_audio": 0.1, "temp_text": 0.01, "{key}": {end}}}"#
            );
            let (code, head, got) = post("application/json", &bearer, &body);
            assert_eq!(code, 200, "{key} = {end}: {got}");
            assert_eq!(got, r#"{"status": "success"}"#);
            assert!(
                head.contains("content-type: application/json; charset=utf-8"),
                "{head}"
            );
        }
    }
    let (code, _, _) = post(
        "application/json; charset=utf-8",
        &format!("{bearer}Origin: https://kiosk.example\r\n"),
        r#"{"repetition_penalty_window_text": -1}"#,
    );
    assert_eq!(code, 200);
    let (code, _, body) = get(&format!("/api/settings?token={TOKEN}"), "");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["repetition_penalty_window_text"], 0,
        "-1 is no window: {v}"
    );

    // With `status.show_peers`, the page's event stream names the client.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    {
        use std::io::Write;
        write!(
            stream,
            "GET /api/events?token={TOKEN} HTTP/1.1\r\n{host}\r\n"
        )
        .unwrap();
    }
    let url = d.url();
    let with_token = format!("{url}?token={TOKEN}");
    let own = format!("http://{addr}");
    runtime().block_on(async {
        // Programs: no Origin; the token by header or query.
        assert_eq!(connect_with(&url, &[]).await.err(), Some(401));
        let wrong = format!("{url}?token=kiosk-0123456789abcdeX");
        assert_eq!(connect_with(&wrong, &[]).await.err(), Some(401));
        let bearer = format!("Bearer {TOKEN}");
        for (u, h) in [
            (url.as_str(), vec![("Authorization", bearer.as_str())]),
            (with_token.as_str(), vec![]),
            // Browsers: their page's own origin, or an allowed one.
            (with_token.as_str(), vec![("Origin", own.as_str())]),
            (
                with_token.as_str(),
                vec![("Origin", "https://kiosk.example")],
            ),
        ] {
            let mut ws = connect_with(u, &h)
                .await
                .unwrap_or_else(|c| panic!("{h:?}: {c}"));
            assert_eq!(next(&mut ws).await.unwrap(), [0u8], "{h:?}");
            ws.close(None).await.unwrap();
            while next(&mut ws).await.is_some() {}
        }
        // Another site's page, even with the token: 403 before any upgrade.
        for origin in ["http://evil.example", "https://kiosk.example.evil", "null"] {
            assert_eq!(
                connect_with(&with_token, &[("Origin", origin)]).await.err(),
                Some(403),
                "{origin}"
            );
        }
        assert_eq!(
            connect_with(&with_token, &[("Origin", &format!("https://{addr}"))])
                .await
                .err(),
            Some(403),
            "https is not this listener's scheme"
        );
        // A conversation that reaches `max_conversation_s` (2 s) is closed by policy, with
        // the reason.
        let mut ws = connect_with(&with_token, &[]).await.unwrap();
        assert_eq!(next(&mut ws).await.unwrap(), [0u8]);
        let t0 = Instant::now();
        let mut w = OggOpusWriter::new().unwrap();
        for h in w.headers().unwrap() {
            send(&mut ws, 1, &h).await;
        }
        let (code, why) = closed_with(&mut ws).await;
        assert_eq!(code, 1008, "{why}");
        assert!(why.contains("at most 2 s"), "{why}");
        let took = t0.elapsed();
        assert!(
            took > Duration::from_millis(1500) && took < Duration::from_secs(4),
            "{took:?}"
        );
    });
    let mut seen = String::new();
    let t0 = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while t0.elapsed() < Duration::from_secs(5) && !seen.contains("\"end\"") {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        if let Ok(n) = stream.read(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("\"peer\":\"127.0.0.1:"), "{seen}");
    drop(stream);
    let err = d.stop();
    // The log keeps the address.
    assert!(err.contains("conversation with 127.0.0.1:"), "{err}");
}
