//! Boards in a fleet behind an existing load balancer: three `serve` daemons on loopback
//! ports behind HAProxy (Debian's package), configured as README's "Many boards" section
//! shows (`boards/fleet/haproxy.cfg`, its ports filled in): clients are routed to a free
//! board, a busy one is skipped, a board that is killed is taken out and its client sent
//! elsewhere when it reconnects, and a draining board takes no new conversation until it is
//! told to take them again. Also `/readyz` itself: ready, busy, draining.

mod common;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// Three of the balancer's checks (one every 100 ms): a board's change is seen by then.
const CHECKS: Duration = Duration::from_millis(300);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `GET path`, its whole answer.
fn get(addr: SocketAddr, path: &str) -> String {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
}

/// A `serve` daemon with the network as its only audio source and a control socket.
struct Board {
    child: Reaped,
    addr: SocketAddr,
    control: PathBuf,
    _dir: Scratch,
}

impl Board {
    fn start(name: &str) -> Board {
        let dir = scratch(name);
        std::fs::create_dir_all(&*dir).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let control = dir.join("events.sock");
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "threads = 1\n[status]\nmetrics = \"\"\nevents = \"{}\"\n[server]\nlisten = \"{addr}\"\n",
                control.display()
            ),
        )
        .unwrap();
        let model = converted(3, "f32");
        let child = Reaped(
            Command::new(env!("CARGO_BIN_EXE_flm-edge"))
                .args(["serve", "--config"])
                .arg(&cfg)
                .arg("--model")
                .arg(model)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        Board {
            child,
            addr,
            control,
            _dir: dir,
        }
    }

    fn ready(&self) -> String {
        get(self.addr, "/readyz")
    }

    fn wait_ready(&self) {
        let t0 = Instant::now();
        loop {
            if std::net::TcpStream::connect(self.addr).is_ok() && self.ready().contains(" 200 ") {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{} not ready",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn metric(&self, name: &str) -> u64 {
        let m = get(self.addr, "/metrics");
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("flm_edge_{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {m}"))
            .parse()
            .unwrap()
    }

    /// One control command, its answer.
    fn command(&self, cmd: &str) -> serde_json::Value {
        let mut c = UnixStream::connect(&self.control).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        writeln!(c, "{{\"command\": \"{cmd}\"}}").unwrap();
        let mut r = std::io::BufReader::new(c);
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            // Event lines may come first.
            if v.get("ok").is_some() || v.get("error").is_some() {
                return v;
            }
        }
    }
}

/// HAProxy on `port` in front of `boards`, with the configuration README shows.
fn haproxy(dir: &Path, port: u16, boards: &[&Board]) -> Reaped {
    let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("haproxy is missing: .ci/install-deps installs Debian's package");
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("boards/fleet/haproxy.cfg"),
    )
    .unwrap();
    // The example's address and its three boards (127.0.0.1:8990, 8991-8993) become the
    // test's.
    let mut cfg = template.replace("127.0.0.1:8990", &format!("127.0.0.1:{port}"));
    for (i, b) in boards.iter().enumerate() {
        cfg = cfg.replace(&format!("127.0.0.1:899{}", i + 1), &b.addr.to_string());
    }
    assert!(!cfg.contains(":899"), "{cfg}");
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, cfg).unwrap();
    let check = Command::new(bin)
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    Reaped(
        Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// A conversation through the balancer: the socket once the handshake (0x00) came, or the
/// HTTP status it was refused with.
async fn talk(lb: u16) -> Result<Ws, u16> {
    let url = format!("ws://127.0.0.1:{lb}/api/chat");
    let mut ws = match tokio_tungstenite::connect_async(&url).await {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => return Err(r.status().as_u16()),
        Err(e) => panic!("{url}: {e}"),
    };
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) if b[..] == [0u8] => Ok(ws),
        other => panic!("no handshake through the balancer: {other:?}"),
    }
}

/// `talk`, as a client that retries on 503 does, for up to 2 s: where a board is free, the
/// balancer's checks (every 100 ms) find it within that even on a busy machine.
async fn talk_soon(lb: u16) -> Result<Ws, u16> {
    let t0 = tokio::time::Instant::now();
    loop {
        match talk(lb).await {
            Err(503) if t0.elapsed() < Duration::from_secs(2) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => return other,
        }
    }
}

/// Which board holds a conversation now.
fn holders(boards: &[&Board]) -> Vec<usize> {
    (0..boards.len())
        .filter(|&i| boards[i].metric("conversation_active") == 1)
        .collect()
}

fn wait_for(what: &str, ok: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn readyz_says_ready_busy_and_draining() {
    let mut b = Board::start("fleet-readyz");
    b.wait_ready();
    assert!(b.ready().ends_with("ready\n"), "{}", b.ready());
    let rt = runtime();
    let ws = rt.block_on(async {
        let url = format!("ws://{}/api/chat", b.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Binary(m))) if m[..] == [0u8]));
        ws
    });
    let busy = b.ready();
    assert!(
        busy.contains(" 503 ")
            && busy.ends_with("busy: another conversation is in progress; try again later\n"),
        "{busy}"
    );
    drop(ws);
    wait_for("ready after the conversation", || {
        b.ready().contains(" 200 ")
    });
    assert_eq!(b.command("drain")["draining"], true);
    let draining = b.ready();
    assert!(
        draining.contains(" 503 ") && draining.contains("draining"),
        "{draining}"
    );
    // A client that comes anyway is refused with the reason.
    rt.block_on(async {
        let url = format!("ws://{}/api/chat", b.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let m = ws.next().await.unwrap().unwrap().into_data();
        assert_eq!(m[0], 0x05);
        assert!(String::from_utf8_lossy(&m[1..]).starts_with("draining"));
    });
    assert_eq!(b.command("undrain")["draining"], false);
    assert!(b.ready().contains(" 200 "));
    signal(&b.child, SIGTERM);
    let (st, err) = exit_of(&mut b.child);
    assert!(st.success(), "{err}");
}

#[test]
fn haproxy_routes_to_free_boards_skips_busy_ones_and_takes_out_a_killed_one() {
    let dir = scratch("fleet-haproxy");
    std::fs::create_dir_all(&*dir).unwrap();
    let mut boards: Vec<Board> = (0..3)
        .map(|i| Board::start(&format!("fleet-{i}")))
        .collect();
    for b in &boards {
        b.wait_ready();
    }
    let lb = free_port();
    let mut proxy = haproxy(&dir, lb, &boards.iter().collect::<Vec<_>>());
    let lb_addr: SocketAddr = format!("127.0.0.1:{lb}").parse().unwrap();
    wait_for("the balancer answers /readyz", || {
        std::net::TcpStream::connect(lb_addr).is_ok() && get(lb_addr, "/readyz").contains(" 200 ")
    });
    let rt = runtime();
    rt.block_on(async {
        // Three clients: each on a board of its own (a busy board is skipped).
        let mut clients = vec![];
        for _ in 0..3 {
            clients.push(talk_soon(lb).await.expect("a free board"));
        }
        let all: Vec<&Board> = boards.iter().collect();
        assert_eq!(holders(&all), vec![0, 1, 2]);
        // A fourth while all are busy: the balancer says so (its queue times out).
        assert_eq!(talk(lb).await.err(), Some(503));
        // The first client leaves; the second's board is killed under it.
        let first = clients.remove(0);
        drop(first);
        wait_for("the first board free", || {
            boards[0].ready().contains(" 200 ")
        });
        // The balancer sees it at its next check (every 100 ms).
        tokio::time::sleep(CHECKS).await;
        signal(&boards[1].child, 9);
        let _ = boards[1].child.wait();
        let mut second = clients.remove(0);
        // Its connection ends; it comes back through the balancer and lands on the free
        // board, not on the dead one.
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match second.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    _ => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the killed board's client was not cut off");
        let before = boards[0].metric("conversations_total");
        let back = match talk_soon(lb).await {
            Ok(ws) => ws,
            Err(code) => {
                signal(&proxy, SIGTERM);
                let (_, log) = exit_of(&mut proxy);
                panic!("no board for the client of the killed one ({code}); haproxy: {log}");
            }
        };
        assert_eq!(boards[0].metric("conversations_total"), before + 1);
        assert_eq!(boards[0].metric("conversation_active"), 1);
        // Drain the third board once its client leaves: nothing new is sent to it.
        let third = clients.remove(0);
        drop(third);
        wait_for("the third board free", || {
            boards[2].ready().contains(" 200 ")
        });
        assert_eq!(boards[2].command("drain")["draining"], true);
        // Ten of the balancer's checks: it has seen the drain by then, even on a busy machine.
        tokio::time::sleep(10 * CHECKS / 3).await;
        let conversations = boards[2].metric("conversations_total");
        assert_eq!(
            talk(lb).await.err(),
            Some(503),
            "a drained board took a client"
        );
        assert_eq!(boards[2].metric("conversations_total"), conversations);
        assert_eq!(boards[2].command("undrain")["draining"], false);
        wait_for("the undrained board ready", || {
            boards[2].ready().contains(" 200 ")
        });
        tokio::time::sleep(CHECKS).await;
        let again = talk_soon(lb)
            .await
            .expect("the undrained board takes a client");
        assert_eq!(boards[2].metric("conversation_active"), 1);
        drop((back, again));
    });
    signal(&proxy, SIGTERM);
    let _ = proxy.wait();
    // The boards that are still running stop cleanly.
    for (i, b) in boards.iter_mut().enumerate() {
        if i != 1 {
            signal(&b.child, SIGTERM);
            let (st, err) = exit_of(&mut b.child);
            assert!(st.success(), "board {i}: {err}");
        }
    }
}
