//! The one HTTP stack of the service (hyper and axum on a tokio runtime of one thread of its
//! own): the status routes and, on the server's address, the remote-client routes.
//!
//! Limits, so that slow, huge or many clients cannot keep `/healthz` from answering: per
//! listener (the status address has its own), at most `max_connections` connections served
//! (a connection beyond waits 200 ms for a place, then gets 503; as many may wait or be
//! refused at once, and any beyond those are closed as they come), 1 s for each request head
//! (a kept-alive connection that sends none is closed after it), 16 KiB for it, 5 s for a TLS
//! handshake, 16 KiB and 2 s for a request body; websocket limits in `chat`, event-stream
//! limits in `events`. Who may use the remote-client routes: `access`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::access::Access;
use super::{Hub, page};
use crate::serve::metrics::Metrics;

/// A new connection waits this long for a place when all are taken, then gets 503.
const FULL_GRACE: Duration = Duration::from_millis(200);
/// The time a client has to send its request head, and the most bytes it may take.
pub const HEAD_TIME: Duration = Duration::from_secs(1);
pub const MAX_HEAD: usize = 16 * 1024;
const TLS_TIME: Duration = Duration::from_secs(5);
/// The most bytes of a request body (the settings' JSON), and the time to send it.
const MAX_BODY: usize = 16 * 1024;
const BODY_TIME: Duration = Duration::from_secs(2);

/// Which routes an address serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `/metrics` and `/healthz` (the `[status] metrics` address).
    Status,
    /// Those and the remote-client routes (the `[server] listen` address).
    All,
}

/// One address to listen on.
pub struct Listen {
    pub addr: String,
    pub scope: Scope,
    /// The configuration key that names it, for errors.
    pub key: &'static str,
    /// Certificate chain and private key (PEM) for https/wss.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// What the server is given.
pub struct Options {
    pub listen: Vec<Listen>,
    pub max_connections: usize,
    /// A websocket that receives nothing for this long is closed.
    pub idle: Duration,
    /// `server.page_dir`: files that replace the built-in page's.
    pub page_dir: Option<PathBuf>,
    /// `server.token` and `server.allowed_origins`.
    pub access: Access,
    /// `server.max_conversation_s`: a conversation is closed after this long.
    pub max_conversation: Option<Duration>,
}

#[derive(Clone)]
pub(crate) struct App {
    hub: Arc<Hub>,
    health: Arc<Health>,
    idle: Duration,
    page_dir: Option<Arc<Path>>,
    event_streams: Arc<Semaphore>,
    access: Arc<Access>,
    max_conversation: Option<Duration>,
    /// Whether this listener serves https (the scheme of its own origin).
    tls: bool,
}

/// Closes the connection it was handed with (a handler's way to drop a client that does not
/// read a streamed response).
#[derive(Clone, Default)]
pub struct Abort(Arc<tokio::sync::Notify>);

impl Abort {
    pub fn now(&self) {
        self.0.notify_one();
    }

    /// Returns once the connection is to be closed.
    pub async fn closed(&self) {
        self.0.notified().await
    }
}

/// Binds every address (an error names the key and the address), then serves them on a
/// thread of its own. Returns the bound addresses, in order.
pub fn start(opts: Options, hub: Arc<Hub>) -> Result<Vec<SocketAddr>> {
    let mut bound = vec![];
    let mut listeners = vec![];
    for l in &opts.listen {
        let label = || format!("key `{}`: {}", l.key, l.addr);
        let tls = match &l.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key).with_context(label)?),
            None => None,
        };
        let std = std::net::TcpListener::bind(&l.addr)
            .with_context(|| format!("{}: cannot listen", label()))?;
        std.set_nonblocking(true)?;
        bound.push(std.local_addr()?);
        listeners.push((std, l.scope, tls));
    }
    let app = App {
        hub,
        health: Arc::new(Health::default()),
        idle: opts.idle,
        page_dir: opts.page_dir.map(Arc::from),
        event_streams: Arc::new(Semaphore::new(super::events::MAX_STREAMS)),
        access: Arc::new(opts.access),
        max_conversation: opts.max_conversation,
        tls: false,
    };
    let budget = opts.max_connections.max(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("HTTP server: runtime")?;
    std::thread::Builder::new()
        .name("flm-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut tasks = vec![];
                for (std, scope, tls) in listeners {
                    let app = App {
                        tls: tls.is_some(),
                        ..app.clone()
                    };
                    let router = routes(scope, app);
                    tasks.push(tokio::spawn(accept_loop(std, router, tls, budget)));
                }
                for t in tasks {
                    let _ = t.await;
                }
            })
        })
        .context("HTTP server: thread")?;
    Ok(bound)
}

fn routes(scope: Scope, app: App) -> Router {
    let mut r = Router::new();
    if scope == Scope::All {
        // The guard applies to the routes above it alone.
        r = r
            .route("/api/chat", get(super::chat::chat))
            .route("/api/settings", post(settings).get(current_settings))
            .route("/api/events", get(super::events::events))
            .route_layer(axum::middleware::from_fn_with_state(app.clone(), guard));
    }
    r = r
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if scope == Scope::All {
        for asset in &page::ASSETS {
            let dir = app.page_dir.clone();
            r = r.route(
                asset.route,
                get(move || async move { page::serve(asset, dir.as_deref()) }),
            );
        }
    }
    r.with_state(app)
}

/// One listener's sockets: `budget` served at once, as many more waiting for a place or
/// being told 503, and any beyond those closed as they are accepted. Each listener has a
/// budget of its own: clients of the public address never take the status address's places.
async fn accept_loop(
    std: std::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    budget: usize,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(std) else {
        eprintln!("flm-edge: HTTP server: cannot use the listening socket");
        return;
    };
    let places = Arc::new(Semaphore::new(budget));
    // Every socket of this listener that is open: served, waiting or being refused.
    let open = Arc::new(Semaphore::new(2 * budget));
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            // Out of descriptors and the like: pause rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(held) = open.clone().try_acquire_owned() else {
            // Past what this listener holds: closed at once, nothing spawned.
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (router, tls, places) = (router.clone(), tls.clone(), places.clone());
        tokio::spawn(async move {
            let _held = held;
            let place = match tokio::time::timeout(FULL_GRACE, places.acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => return refuse_full(tcp).await,
            };
            match tls {
                Some(tls) => {
                    if let Ok(Ok(stream)) = tokio::time::timeout(TLS_TIME, tls.accept(tcp)).await {
                        serve_connection(stream, peer, router).await;
                    }
                }
                None => serve_connection(tcp, peer, router).await,
            }
            drop(place);
        });
    }
}

/// Every place is taken: 503 at once, whatever the client sent.
async fn refuse_full(mut tcp: tokio::net::TcpStream) {
    let body = "busy: too many connections\n";
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(HEAD_TIME, tcp.write_all(msg.as_bytes())).await;
}

/// The client's address, for the handlers.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

async fn serve_connection<S>(stream: S, peer: SocketAddr, router: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    let abort = Abort::default();
    let handed = abort.clone();
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        req.extensions_mut().insert(handed.clone());
        router.clone().oneshot(req.map(Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIME)
        .max_buf_size(MAX_HEAD)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = abort.closed() => {}
    }
}

/// The certificate chain and key of `[server] tls_cert` / `tls_key`.
fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate (PEM) in it", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow!("{}: {e}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow!("TLS certificate and key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn text(code: StatusCode, body: impl Into<String>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body.into(),
    )
        .into_response()
}

/// Who may use the remote-client routes (`access`): a refusal answers with its status and
/// reason, as JSON `{"error": …}` on `/api/settings` (as its other errors), else as text.
async fn guard(
    State(app): State<App>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let checked = app
        .access
        .check(req.method(), req.uri(), req.headers(), app.tls);
    let Err(refusal) = checked else {
        return next.run(req).await;
    };
    let mut r = if req.uri().path() == "/api/settings" {
        json(refusal.status, serde_json::json!({ "error": refusal.why }))
    } else {
        (
            refusal.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", refusal.why),
        )
            .into_response()
    };
    if refusal.status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// A JSON answer as aiohttp's `web.json_response` writes it (Python's `json.dumps`).
fn json(code: StatusCode, v: serde_json::Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        python_json(&v),
    )
        .into_response()
}

/// `json.dumps(v)` with its defaults: `", "` and `": "` between items, and every character
/// beyond ASCII escaped (`\u2265`, surrogate pairs beyond the BMP).
pub fn python_json(v: &serde_json::Value) -> String {
    use serde::Serialize;
    use std::io::Write;
    struct Python;
    impl serde_json::ser::Formatter for Python {
        fn begin_array_value<W: ?Sized + Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_key<W: ?Sized + Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
            w.write_all(b": ")
        }
        fn write_string_fragment<W: ?Sized + Write>(
            &mut self,
            w: &mut W,
            fragment: &str,
        ) -> std::io::Result<()> {
            for c in fragment.chars() {
                if c.is_ascii() {
                    w.write_all(&[c as u8])?;
                } else {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        write!(w, "\\u{unit:04x}")?;
                    }
                }
            }
            Ok(())
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Python);
    // Writing to memory cannot fail, and what is written is ASCII.
    let _ = v.serialize(&mut ser);
    String::from_utf8(out).unwrap_or_default()
}

async fn metrics(State(app): State<App>) -> Response {
    text(StatusCode::OK, app.hub.metrics.render())
}

async fn healthz(State(app): State<App>) -> Response {
    if app.health.healthy(&app.hub.metrics) {
        text(StatusCode::OK, "ok\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "steps are not completing\n",
        )
    }
}

/// `GET /readyz`: 200 when a conversation can start here, 503 with the reason when the board
/// is busy, loading or draining (a load balancer's health check, a readiness probe).
async fn readyz(State(app): State<App>) -> Response {
    match app.hub.conversations.readiness() {
        Ok(()) => text(StatusCode::OK, "ready\n"),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// `POST /api/settings`, as the official server answers it.
async fn settings(State(app): State<App>, req: Request<Body>) -> Response {
    let body = req.into_body();
    let bytes = match tokio::time::timeout(BODY_TIME, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({ "error": format!("the body is over {MAX_BODY} bytes") }),
            );
        }
        Err(_) => {
            return json(
                StatusCode::REQUEST_TIMEOUT,
                serde_json::json!({ "error": "the body was too slow" }),
            );
        }
    };
    match app.hub.set_settings(&bytes) {
        Ok(()) => json(StatusCode::OK, serde_json::json!({ "status": "success" })),
        Err(None) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "Server is busy, please try again later." }),
        ),
        Err(Some(why)) => json(StatusCode::BAD_REQUEST, serde_json::json!({ "error": why })),
    }
}

/// `GET /api/settings`: every key's value for the next conversation.
async fn current_settings(State(app): State<App>) -> Response {
    match app.hub.effective_settings() {
        Some(v) => json(StatusCode::OK, v),
        None => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "the model is loading" }),
        ),
    }
}

impl App {
    pub fn event_streams(&self) -> &Arc<Semaphore> {
        &self.event_streams
    }
    pub fn idle_timeout(&self) -> Duration {
        self.idle
    }
    pub fn max_conversation(&self) -> Option<Duration> {
        self.max_conversation
    }
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

/// When the step count last moved (for `/healthz`).
#[derive(Default)]
struct Health {
    last: Mutex<Option<(u64, Instant)>>,
}

impl Health {
    /// Steps completed within the last 2 s, or nothing owed: idle (waiting for a network
    /// conversation or its audio) or loading a model.
    fn healthy(&self, m: &Metrics) -> bool {
        let steps = m.steps.load(Relaxed);
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        let now = Instant::now();
        match *last {
            Some((n, _)) if n == steps => {}
            _ => *last = Some((steps, now)),
        }
        if m.idle.load(Relaxed) || m.loading.load(Relaxed) {
            return true;
        }
        let (_, since) = last.unwrap_or((steps, now));
        steps > 0 && since.elapsed() < Duration::from_secs(2)
    }
}

pub(crate) use App as AppState;

#[cfg(test)]
mod tests {
    use super::*;

    /// What `json.dumps` writes (Python 3.12), byte for byte.
    #[test]
    fn json_is_written_as_pythons_json_dumps() {
        let cases = [
            (
                serde_json::json!({ "status": "success" }),
                r#"{"status": "success"}"#,
            ),
            (
                serde_json::json!({ "error": "Server is busy, please try again later." }),
                r#"{"error": "Server is busy, please try again later."}"#,
            ),
            (
                serde_json::json!({ "error": "≥ 0 \"x\"\n\u{1f600}" }),
                r#"{"error": "\u2265 0 \"x\"\n\ud83d\ude00"}"#,
            ),
            (
                serde_json::json!([1, [true, null], {}]),
                "[1, [true, null], {}]",
            ),
        ];
        for (v, python) in cases {
            assert_eq!(python_json(&v), python);
        }
    }
}
