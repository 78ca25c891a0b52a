//! Reporting, off the real-time path: the JSON-lines event stream on a Unix socket, the
//! periodic log line, and systemd's READY / STATUS / WATCHDOG messages. (`/metrics` and
//! `/healthz` are served by the HTTP stack of the network front.)

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sd_notify::NotifyState;

use super::conversation::Control;
use super::conversations::Feed;
use super::metrics::Metrics;
use super::pipeline::Event;

/// Clients of the event socket, and the web page's event streams.
pub struct EventStream {
    clients: Arc<Mutex<Vec<Client>>>,
    page: Option<Arc<dyn Feed>>,
}

/// A connected client of the event socket: its number, and its socket for the events.
struct Client {
    id: u64,
    stream: UnixStream,
}

/// The most event clients served at once (a kiosk screen or two, a logger); one more is
/// answered with an error line and closed.
pub const MAX_EVENT_CLIENTS: usize = 8;
/// The longest command line; a longer one is answered with an error and the client closed.
pub const MAX_COMMAND: usize = 1024;
/// A client that sends no command line for this long is told so and closed, which frees its
/// place: a client that hangs cannot hold one for ever. A screen that only listens sends a
/// command (`status`) at least this often.
pub const CLIENT_IDLE: Duration = Duration::from_secs(60);
/// How long a line (event or answer) may wait for a client that does not read.
const SEND_TIME: Duration = Duration::from_millis(50);

impl EventStream {
    /// No event socket (`status.events = ""`): the events reach only the page, if fed.
    pub fn without_socket() -> EventStream {
        EventStream {
            clients: Arc::default(),
            page: None,
        }
    }

    /// The same events also go to the page's `/api/events` through `feed`.
    pub fn feeding(self, feed: Arc<dyn Feed>) -> EventStream {
        EventStream {
            page: Some(feed),
            ..self
        }
    }

    /// Listens on the Unix socket `path` (mode 0660: the service's user and group). A socket
    /// left there by an earlier run is replaced; anything else at that path (a file, a
    /// folder, a socket another process serves) is an error naming it, and is left alone.
    /// Clients read the events and may send commands (`control`), one JSON line each; at
    /// most `MAX_EVENT_CLIENTS` at once, each closed after `CLIENT_IDLE` without a command.
    pub fn listen(path: &Path, control: Arc<Control>) -> Result<EventStream> {
        EventStream::listen_idle(path, control, CLIENT_IDLE)
    }

    /// `listen`, with clients closed after `idle` without a command line.
    pub fn listen_idle(path: &Path, control: Arc<Control>, idle: Duration) -> Result<EventStream> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
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
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("{}: permissions", label()))?;
        let clients: Arc<Mutex<Vec<Client>>> = Arc::default();
        let c = clients.clone();
        std::thread::Builder::new()
            .name("flm-events".into())
            .spawn(move || {
                let mut next_id = 0;
                for s in listener.incoming() {
                    let s = match s {
                        Ok(s) => s,
                        Err(_) => {
                            // Out of descriptors, say: not a loop that spins.
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    let _ = s.set_write_timeout(Some(SEND_TIME));
                    let Ok(mut v) = c.lock() else { continue };
                    if v.len() >= MAX_EVENT_CLIENTS {
                        drop(v);
                        refuse(s);
                        continue;
                    }
                    let Ok(reader) = s.try_clone() else { continue };
                    next_id += 1;
                    let id = next_id;
                    v.push(Client { id, stream: s });
                    drop(v);
                    let (mine, control) = (c.clone(), control.clone());
                    let spawned = std::thread::Builder::new()
                        .name("flm-control".into())
                        .spawn(move || {
                            serve_commands(reader, &mine, &control, idle);
                            leave(&mine, id);
                        });
                    if spawned.is_err() {
                        leave(&c, id);
                    }
                }
            })?;
        Ok(EventStream {
            clients,
            page: None,
        })
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.lock().map_or(0, |v| v.len())
    }

    /// Sends the event's lines to every client: a new conversation, and the text and state
    /// when there is text or the state changed. A client that cannot keep up is dropped.
    pub fn send(&self, e: &Event, state_changed: bool) {
        if let Some(why) = e.new_conversation {
            self.send_line(&serde_json::json!({
                "conversation": "new",
                "reason": why.as_str(),
                "step": e.step,
            }));
        }
        if e.piece.is_empty() && !state_changed {
            return;
        }
        self.send_line(&serde_json::json!({
            "step": e.step,
            "text": e.piece.as_str(),
            "state": e.state(),
        }));
    }

    /// Sends one JSON value as a line to every client; a client that cannot keep up is
    /// dropped (and its socket shut, which ends its command thread).
    pub fn send_line(&self, v: &serde_json::Value) {
        let line = v.to_string() + "\n";
        if let Some(feed) = &self.page {
            feed.publish(line.trim_end());
        }
        if let Ok(mut v) = self.clients.lock() {
            v.retain_mut(|c| {
                let sent = c.stream.write_all(line.as_bytes()).is_ok();
                if !sent {
                    let _ = c.stream.shutdown(std::net::Shutdown::Both);
                }
                sent
            });
        }
    }
}

/// The client past the limit: one error line, then closed.
fn refuse(mut s: UnixStream) {
    let e = serde_json::json!({
        "error": format!("busy: {MAX_EVENT_CLIENTS} clients are connected, the most at once; try again later")
    });
    let _ = s.write_all((e.to_string() + "\n").as_bytes());
    let _ = s.shutdown(std::net::Shutdown::Both);
}

/// Frees client `id`'s place and shuts its socket.
fn leave(clients: &Mutex<Vec<Client>>, id: u64) {
    if let Ok(mut v) = clients.lock()
        && let Some(i) = v.iter().position(|c| c.id == id)
    {
        let c = v.swap_remove(i);
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Reads a client's command lines and answers each on the same socket (under the clients'
/// lock, so that an answer and an event never interleave). Returns when the client has gone
/// (its read ends: the last line, even without its newline, is answered first), after a line
/// that is too long, and when no line came within `idle` (the client is told).
fn serve_commands(
    mut stream: UnixStream,
    clients: &Mutex<Vec<Client>>,
    control: &Control,
    idle: Duration,
) {
    use std::io::{ErrorKind, Read};
    let Ok(mut answer_to) = stream.try_clone() else {
        return;
    };
    let mut answer = |reply: serde_json::Value| -> bool {
        clients.lock().is_ok_and(|_held| {
            answer_to
                .write_all((reply.to_string() + "\n").as_bytes())
                .is_ok()
        })
    };
    let mut line = Vec::with_capacity(MAX_COMMAND);
    let mut buf = [0u8; 512];
    let mut deadline = Instant::now() + idle;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let read = if left.is_zero() {
            Err(ErrorKind::TimedOut.into())
        } else {
            let _ = stream.set_read_timeout(Some(left));
            stream.read(&mut buf)
        };
        let n = match read {
            Ok(0) => {
                if !line.is_empty() {
                    answer(command(&line, control));
                }
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                answer(serde_json::json!({
                    "error": format!("closed: no command in {} s (send one, e.g. status, at least that often to stay)", idle.as_secs_f64())
                }));
                return;
            }
            Err(_) => return,
        };
        for &b in &buf[..n] {
            if b != b'\n' {
                line.push(b);
                if line.len() <= MAX_COMMAND {
                    continue;
                }
                answer(serde_json::json!({
                    "error": format!("a command is one line of at most {MAX_COMMAND} bytes")
                }));
                return;
            }
            let reply = command(&line, control);
            line.clear();
            deadline = Instant::now() + idle;
            if !answer(reply) {
                return;
            }
        }
    }
}

/// One command (`{"command": "reset" | "mute" | "unmute" | "drain" | "undrain" | "status"}`)
/// and its answer.
pub fn command(line: &[u8], control: &Control) -> serde_json::Value {
    let text = String::from_utf8_lossy(line);
    if text.trim().is_empty() {
        return serde_json::json!({ "error": "an empty line is no command" });
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return serde_json::json!({ "error": "not JSON: send {\"command\": \"reset\"}, \"mute\", \"unmute\", \"drain\", \"undrain\" or \"status\"" });
    };
    let Some(cmd) = v.get("command").and_then(|c| c.as_str()) else {
        return serde_json::json!({ "error": "no \"command\" (reset, mute, unmute, drain, undrain, status)" });
    };
    match cmd {
        "reset" => control.request_reset(),
        "mute" => control.set_muted(true),
        "unmute" => control.set_muted(false),
        "drain" => control.set_draining(true),
        "undrain" => control.set_draining(false),
        "status" => {}
        other => {
            let shown: String = other.chars().take(32).collect();
            return serde_json::json!({
                "error": format!("unknown command `{shown}` (reset, mute, unmute, drain, undrain, status)")
            });
        }
    }
    let (state, steps, conversations) = control.status();
    serde_json::json!({
        "ok": cmd,
        "state": state,
        "conversation_steps": steps,
        "conversations": conversations,
        "draining": control.draining(),
    })
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
                let source = metrics.source();
                let status = format!(
                    "{source}; steps {steps}; step median {:.1} ms, p99 {:.1} ms; misses {}; xruns {}/{}; playback clock {:+.0} ppm; devices {}",
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
                        // Sound devices are closed during a network conversation.
                        _ if !source.starts_with("local audio") => "not in use",
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
                let idle = metrics.idle.load(Relaxed);
                if steps != last_steps || loading || idle {
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
