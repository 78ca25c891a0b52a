//! A `serve` daemon listening for FLM-Audio's websocket protocol, with the small model and the
//! network as its only audio source, and its clients: what tests/remote.rs,
//! tests/serve_conversations.rs and tests/serve_local_conversation.rs share.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flm_edge::remote::ogg_opus::{OggOpusReader, OggOpusWriter, PACKET_SAMPLES};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::{
    Reaped, SIGTERM, Scratch, converted, exit_of, flm_edge, free_port, http, scratch, signal,
};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The seed-3 small model at f32, as the serve tests use it.
pub fn model() -> &'static Path {
    converted(3, "f32")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A `serve` daemon; killed when dropped.
pub struct Daemon {
    pub child: Reaped,
    pub addr: SocketAddr,
    pub dir: Scratch,
}

impl Daemon {
    /// With keys of `[server]`; listening within 60 s.
    pub fn start(name: &str, server: &str) -> Daemon {
        Daemon::start_with(name, "", server)
    }

    /// With keys of `[status]` too.
    pub fn start_with(name: &str, status: &str, server: &str) -> Daemon {
        Daemon::launch(name, status, server, Duration::from_secs(60))
    }

    /// Listening within `within`.
    pub fn launch(name: &str, status: &str, server: &str, within: Duration) -> Daemon {
        Daemon::launch_threads(name, 2, status, server, within)
    }

    /// With `threads` compute threads.
    pub fn launch_threads(
        name: &str,
        threads: u32,
        status: &str,
        server: &str,
        within: Duration,
    ) -> Daemon {
        let dir = scratch(name);
        std::fs::create_dir_all(&*dir).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "threads = {threads}\n[status]\n{}events = \"{}\"\n{status}[server]\nlisten = \"{addr}\"\n{server}",
                // No status address of its own unless `status` names one.
                if status.contains("metrics") {
                    ""
                } else {
                    "metrics = \"\"\n"
                },
                s(&dir.join("events.sock"))
            ),
        )
        .unwrap();
        let child = Reaped(
            Command::new(env!("CARGO_BIN_EXE_flm-edge"))
                .args(["serve", "--config", s(&cfg), "--model", s(model())])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut d = Daemon { child, addr, dir };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("serve exited ({st}): {}", exit_of(&mut d.child).1);
            }
            assert!(t0.elapsed() < within, "serve did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn url(&self) -> String {
        format!("ws://{}/api/chat", self.addr)
    }

    /// Stops it (SIGTERM) and returns its stderr; it must exit 0 within 10 s.
    pub fn stop(mut self) -> String {
        signal(&self.child, SIGTERM);
        let (st, err) = exit_of(&mut self.child);
        assert!(st.success(), "serve exited {st}: {err}");
        err
    }

    pub fn http(&self, request: &str) -> String {
        http(self.addr, request)
    }

    pub fn metric(&self, name: &str) -> u64 {
        let m = self.http("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("flm_edge_{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {m}"))
            .parse()
            .unwrap()
    }
}

pub async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// One message of the protocol: its kind byte, then the payload.
pub async fn send(ws: &mut Ws, kind: u8, payload: &[u8]) {
    let mut m = vec![kind];
    m.extend_from_slice(payload);
    ws.send(Message::Binary(m.into())).await.unwrap();
}

/// What came back from a conversation, and what was sent (the Ogg-Opus bytes).
#[derive(Default, Debug)]
pub struct Reply {
    pub pcm: Vec<f32>,
    pub text: Vec<String>,
    pub sent: Vec<u8>,
}

impl Reply {
    pub fn take(&mut self, m: &[u8], reader: &mut OggOpusReader) {
        match m.first() {
            Some(1) => reader
                .push(&m[1..], &mut |x: &[f32]| self.pcm.extend_from_slice(x))
                .unwrap(),
            Some(2) => self.text.push(String::from_utf8(m[1..].to_vec()).unwrap()),
            _ => {}
        }
    }

    /// The text without the segments' ends.
    pub fn words(&self) -> String {
        self.text.iter().filter(|t| *t != "\n").cloned().collect()
    }
}

/// A client: the handshake, then `clip` at real-time pace as one page per 80 ms frame, then
/// every answer (one per frame but the first) and whatever comes within 1 s after it; then
/// it leaves.
pub async fn converse(url: &str, clip: &[f32]) -> Reply {
    let mut ws = connect(url).await;
    let first = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("no handshake within 20 s");
    match first {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], [0u8], "the handshake comes first"),
        other => panic!("no handshake: {other:?}"),
    }
    let mut w = OggOpusWriter::new().unwrap();
    let mut reply = Reply::default();
    for h in w.headers().unwrap() {
        send(&mut ws, 1, &h).await;
        reply.sent.extend_from_slice(&h);
    }
    let mut reader = OggOpusReader::new().unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(80));
    for f in clip.chunks_exact(PACKET_SAMPLES) {
        tick.tick().await;
        let page = w.frame(f).unwrap();
        send(&mut ws, 1, &page).await;
        reply.sent.extend_from_slice(&page);
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::ZERO, ws.next()).await {
            if let Message::Binary(b) = m {
                reply.take(&b, &mut reader);
            }
        }
    }
    let want = clip.len() - PACKET_SAMPLES;
    let t0 = Instant::now();
    let mut quiet_from = None;
    loop {
        if reply.pcm.len() >= want && quiet_from.is_none() {
            quiet_from = Some(Instant::now());
        }
        if quiet_from.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{} of {want} samples after 60 s",
            reply.pcm.len()
        );
        match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Binary(b)))) => reply.take(&b, &mut reader),
            Ok(Some(Ok(Message::Close(f)))) => panic!(
                "closed by the server with {} of {want} samples: {f:?}",
                reply.pcm.len()
            ),
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("{} of {want} samples: {other:?}", reply.pcm.len()),
        }
    }
    ws.close(None).await.unwrap();
    reply
}

/// A client refused at once: kind 0x05 with the reason, then close code 1013.
pub async fn refused(url: &str) -> String {
    let mut ws = connect(url).await;
    let mut why = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Err(_) => panic!("not refused within 5 s"),
            Ok(Some(Ok(Message::Binary(b)))) => {
                assert_eq!(b[0], 0x05, "{b:?}");
                why = String::from_utf8_lossy(&b[1..]).to_string();
            }
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                assert_eq!(u16::from(f.code), 1013);
                return why;
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => return why,
        }
    }
}

/// `flm-edge run` (one conversation, alone) on what a client sent, Opus-decoded: its text.
pub fn offline_text(dir: &Path, name: &str, sent: &[u8]) -> String {
    let mut heard = vec![];
    OggOpusReader::new()
        .unwrap()
        .push(sent, &mut |x: &[f32]| heard.extend_from_slice(x))
        .unwrap();
    text_alone(dir, name, &heard)
}

/// `flm-edge run` (one conversation, alone) on `heard`: its text.
pub fn text_alone(dir: &Path, name: &str, heard: &[f32]) -> String {
    let wav = dir.join(format!("{name}.wav"));
    flm_edge::wav::write_mono_24k(&wav, heard).unwrap();
    let out = flm_edge(&[
        "run",
        "--model",
        s(model()),
        "--threads",
        "2",
        "--input",
        s(&wav),
        "--output",
        s(&dir.join(format!("{name}-ran.wav"))),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}
