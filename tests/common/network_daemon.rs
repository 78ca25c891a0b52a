//! A `serve` daemon listening for FLM-Audio's websocket protocol, with the small model and the
//! network as its only audio source, and the client's first steps: what tests/remote.rs and
//! tests/serve_conversations.rs share.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use super::{Reaped, SIGTERM, Scratch, converted, exit_of, free_port, http, scratch, signal};

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
        let dir = scratch(name);
        std::fs::create_dir_all(&*dir).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "threads = 2\n[status]\n{}events = \"{}\"\n{status}[server]\nlisten = \"{addr}\"\n{server}",
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
