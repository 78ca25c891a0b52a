//! Reporting, off the real-time path: the Prometheus text endpoint on loopback, the JSON-lines
//! event stream on a Unix socket, the periodic log line, and systemd's READY / STATUS /
//! WATCHDOG messages.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sd_notify::NotifyState;

use super::metrics::Metrics;
use super::pipeline::Event;

/// Connections the status endpoint serves at once; beyond, a connection is answered 503 at
/// once and closed.
pub const MAX_HTTP_CONNECTIONS: usize = 64;
/// The longest request head read, and the time a client has to send it.
pub const MAX_REQUEST_HEAD: usize = 8192;
pub const REQUEST_TIME: Duration = Duration::from_secs(1);
/// How long a new connection waits for a place when all are taken.
const FULL_GRACE: Duration = Duration::from_millis(200);

/// Serves `GET /metrics` (Prometheus text) and `GET /healthz` (200 while steps complete, 503
/// otherwise) on `addr`, a loopback address. Each connection has a thread of its own, at most
/// `MAX_HTTP_CONNECTIONS`, a second to send its request line and 8 KiB for its head: slow,
/// huge or many clients cannot keep `/healthz` from answering.
pub fn serve_metrics(addr: &str, metrics: Arc<Metrics>) -> Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr)
        .with_context(|| format!("status endpoint {addr}: cannot listen"))?;
    let bound = listener.local_addr()?;
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let health = Arc::new(Health::default());
    std::thread::Builder::new()
        .name("flm-status-http".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                // A burst of connections that close at once frees its places within
                // milliseconds: wait a little for one before turning a client away.
                let full_since = Instant::now();
                while active.load(Relaxed) >= MAX_HTTP_CONNECTIONS
                    && full_since.elapsed() < FULL_GRACE
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
                if active.fetch_add(1, Relaxed) >= MAX_HTTP_CONNECTIONS {
                    active.fetch_sub(1, Relaxed);
                    let _ = conn.set_nonblocking(true);
                    let _ = respond(&mut conn, "503 Service Unavailable", "busy\n");
                    continue;
                }
                let (m, h, a) = (metrics.clone(), health.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("flm-status-conn".into())
                    .spawn(move || {
                        answer(conn, &m, &h);
                        a.fetch_sub(1, Relaxed);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Relaxed);
                }
            }
        })?;
    Ok(bound)
}

/// When the step count last moved (for `/healthz`).
#[derive(Default)]
struct Health {
    last: Mutex<Option<(u64, Instant)>>,
}

impl Health {
    fn healthy(&self, steps: u64) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        let now = Instant::now();
        match *last {
            Some((n, _)) if n == steps => {}
            _ => *last = Some((steps, now)),
        }
        let (_, since) = last.unwrap_or((steps, now));
        steps > 0 && since.elapsed() < Duration::from_secs(2)
    }
}

/// Reads one request line within REQUEST_TIME and MAX_REQUEST_HEAD bytes, and answers it.
fn answer(mut conn: std::net::TcpStream, metrics: &Metrics, health: &Health) {
    use std::io::Read;
    let deadline = Instant::now() + REQUEST_TIME;
    let _ = conn.set_write_timeout(Some(REQUEST_TIME));
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let line = loop {
        if let Some(end) = head.iter().position(|&b| b == b'\n') {
            break Some(String::from_utf8_lossy(&head[..end]).into_owned());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || head.len() >= MAX_REQUEST_HEAD {
            break None;
        }
        let _ = conn.set_read_timeout(Some(left));
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    let Some(line) = line else {
        let _ = respond(
            &mut conn,
            "408 Request Timeout",
            "request line too slow or too long\n",
        );
        return;
    };
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (code, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", metrics.render()),
        ("GET", "/healthz") if health.healthy(metrics.steps.load(Relaxed)) => {
            ("200 OK", "ok\n".to_string())
        }
        ("GET", "/healthz") => (
            "503 Service Unavailable",
            "steps are not completing\n".to_string(),
        ),
        ("GET", _) => ("404 Not Found", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "GET only\n".to_string()),
    };
    let _ = respond(&mut conn, code, &body);
}

fn respond(conn: &mut std::net::TcpStream, code: &str, body: &str) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.0 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Clients of the event socket.
pub struct EventStream {
    clients: Arc<Mutex<Vec<UnixStream>>>,
}

/// The most event clients served at once (a kiosk screen or two, a logger); more are
/// closed as they connect.
pub const MAX_EVENT_CLIENTS: usize = 8;

impl EventStream {
    /// Listens on the Unix socket `path`. A socket left there by an earlier run is replaced;
    /// anything else at that path (a file, a folder, a socket another process serves) is
    /// an error naming it, and is left alone.
    pub fn listen(path: &Path) -> Result<EventStream> {
        use std::os::unix::fs::FileTypeExt;
        let label = || format!("key `status.events`: {}", path.display());
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                anyhow::bail!("{}: exists and is not a socket", label());
            }
            if UnixStream::connect(path).is_ok() {
                anyhow::bail!("{}: another process is serving it", label());
            }
            std::fs::remove_file(path).with_context(|| format!("{}: stale socket", label()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("{}: cannot listen", label()))?;
        let clients: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let c = clients.clone();
        std::thread::Builder::new()
            .name("flm-events".into())
            .spawn(move || {
                for s in listener.incoming().flatten() {
                    let _ = s.set_write_timeout(Some(Duration::from_millis(50)));
                    if let Ok(mut v) = c.lock()
                        && v.len() < MAX_EVENT_CLIENTS
                    {
                        v.push(s);
                    }
                    // else: dropped here, which closes it.
                }
            })?;
        Ok(EventStream { clients })
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.lock().map_or(0, |v| v.len())
    }

    /// Sends one JSON line to every client; a client that cannot keep up is dropped.
    pub fn send(&self, e: &Event, state_changed: bool) {
        if e.piece.is_empty() && !state_changed {
            return;
        }
        let line = serde_json::json!({
            "step": e.step,
            "text": e.piece.as_str(),
            "state": if e.speaking { "speaking" } else { "listening" },
        })
        .to_string()
            + "\n";
        if let Ok(mut v) = self.clients.lock() {
            v.retain_mut(|s| s.write_all(line.as_bytes()).is_ok());
        }
    }
}

/// systemd notifications (no-ops when not run by systemd).
pub fn notify(states: &[NotifyState]) {
    let _ = sd_notify::notify(states);
}

/// The watchdog period systemd asked for, if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pings the watchdog only while steps complete, updates STATUS, and logs a summary every
/// `log_every` plus device changes and fault counts (each kind at most once per summary).
pub fn supervise(metrics: Arc<Metrics>, stop: Arc<AtomicBool>, log_every: Duration) {
    std::thread::Builder::new()
        .name("flm-supervisor".into())
        .spawn(move || {
            let tick = watchdog_period()
                .map_or(Duration::from_secs(1), |w| (w / 2).min(Duration::from_secs(1)));
            let mut last_steps = 0;
            let mut last_log = Instant::now();
            // A model load that takes longer than this is taken as hung: the watchdog then
            // goes unfed, and systemd restarts the service.
            const LONGEST_LOAD: Duration = Duration::from_secs(600);
            let mut loading_since: Option<Instant> = None;
            // Devices open after the supervisor starts: a change is news only once a device
            // has been seen.
            let mut present = (false, false);
            let mut seen = (false, false);
            let mut reported = [0u64; 4];
            while !stop.load(Relaxed) {
                std::thread::sleep(tick);
                let steps = metrics.steps.load(Relaxed);
                let s = metrics.summary();
                let status = format!(
                    "steps {steps}; step median {:.1} ms, p99 {:.1} ms; misses {}; xruns {}/{}; playback clock {:+.0} ppm; devices {}",
                    s.median,
                    s.p99,
                    metrics.deadline_misses.load(Relaxed),
                    metrics.capture_xruns.load(Relaxed),
                    metrics.playback_xruns.load(Relaxed),
                    metrics.playback_clock_ppb.load(Relaxed) as f64 / 1e3,
                    match (
                        metrics.capture_present.load(Relaxed),
                        metrics.playback_present.load(Relaxed)
                    ) {
                        (true, true) => "ok",
                        (false, true) => "capture missing",
                        (true, false) => "playback missing",
                        (false, false) => "both missing",
                    }
                );
                let mut states = vec![NotifyState::Status(&status)];
                loading_since = match (metrics.loading.load(Relaxed), loading_since) {
                    (true, None) => Some(Instant::now()),
                    (true, since) => since,
                    (false, _) => None,
                };
                let loading = loading_since.is_some_and(|t| t.elapsed() < LONGEST_LOAD);
                if steps != last_steps || loading {
                    states.push(NotifyState::Watchdog);
                }
                notify(&states);
                last_steps = steps;
                let now_present = (
                    metrics.capture_present.load(Relaxed),
                    metrics.playback_present.load(Relaxed),
                );
                for (was, is, seen, dir, errno) in [
                    (present.0, now_present.0, &mut seen.0, "capture", &metrics.capture_errno),
                    (present.1, now_present.1, &mut seen.1, "playback", &metrics.playback_errno),
                ] {
                    if was != is && is {
                        if *seen {
                            eprintln!("flm-edge: {dir} device is back");
                        }
                        *seen = true;
                    } else if was != is {
                        let why = std::io::Error::from_raw_os_error(errno.load(Relaxed));
                        eprintln!(
                            "flm-edge: {dir} device is gone ({why}); reopening by name with back-off"
                        );
                    }
                }
                present = now_present;
                if last_log.elapsed() >= log_every {
                    last_log = Instant::now();
                    let counts = [
                        metrics.capture_xruns.load(Relaxed),
                        metrics.playback_xruns.load(Relaxed),
                        metrics.deadline_misses.load(Relaxed),
                        metrics.capture_dropped.load(Relaxed),
                    ];
                    let new: Vec<u64> = counts.iter().zip(&reported).map(|(a, b)| a - b).collect();
                    reported = counts;
                    eprintln!(
                        "flm-edge: {status}; since last report: xruns +{}/+{}, misses +{}, dropped +{}",
                        new[0], new[1], new[2], new[3]
                    );
                }
            }
        })
        .expect("spawn supervisor");
}
