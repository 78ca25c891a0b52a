//! Remote clients: FLM-Audio's websocket protocol (`/api/chat`, `/api/settings`), spoken by
//! its official clients, Kyutai's web client and the Full-Duplex-Bench harnesses, and the
//! status routes (`/metrics`, `/healthz`), on one HTTP stack that runs on a thread of its own,
//! away from the audio and step threads.
//!
//! The hub asks the model's owner (`crate::serve::conversations`) for a network
//! conversation with the sampling the client set; one at a time, a second client is turned
//! away at once with a reason. It also carries the event stream to the web page. The serve
//! side knows nothing of this module: it is handed the hub as a `Feed` of page events.

pub mod access;
pub mod chat;
pub mod events;
pub mod http;
pub mod ogg_opus;
pub mod page;
pub mod settings;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use crate::config::Config;
use crate::serve::conversations::{Conversations, Feed};
use crate::serve::link::SocketEnd;
use crate::serve::metrics::Metrics;
use settings::Settings;

/// What the HTTP stack shares: the model's owner, the settings clients posted, the page's
/// event streams.
pub struct Hub {
    pub metrics: Arc<Metrics>,
    pub conversations: Arc<Conversations>,
    /// Sampling set through `/api/settings`, for the next conversation.
    settings: Mutex<Settings>,
    /// The event stream's lines (JSON), for the page's `/api/events`.
    feed: tokio::sync::broadcast::Sender<Arc<str>>,
}

impl Hub {
    pub fn new(conversations: Arc<Conversations>) -> Hub {
        Hub {
            metrics: conversations.metrics.clone(),
            conversations,
            settings: Mutex::new(Settings::default()),
            feed: tokio::sync::broadcast::channel(events::FEED_LINES).0,
        }
    }

    /// Asks for the model for a conversation with `peer`, at the settings posted so far: the
    /// socket's end of its link, or why not.
    pub fn begin(&self, peer: String) -> Result<SocketEnd, &'static str> {
        let Some(base) = self.conversations.base() else {
            return Err(crate::serve::conversations::LOADING);
        };
        self.conversations.begin(peer, self.settings().apply(base))
    }

    pub fn busy(&self) -> bool {
        self.conversations.busy()
    }

    pub fn settings(&self) -> Settings {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a settings body (a JSON object) for the next conversation. Refused, in the
    /// official server's order, for a body that is no JSON object (Err(Some(why))), while a
    /// conversation runs (Err(None)), then for a bad value (Err(Some(why))). Unknown keys
    /// are ignored, named in one warning on stderr.
    pub fn set_settings(&self, body: &[u8]) -> Result<(), Option<String>> {
        if !matches!(
            serde_json::from_slice::<serde_json::Value>(body),
            Ok(serde_json::Value::Object(_))
        ) {
            return Err(Some("Invalid JSON".into()));
        }
        if self.conversations.any() {
            return Err(None);
        }
        let mut s = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let (new, unknown) = s.with_unknown(body).map_err(|e| Some(e.to_string()))?;
        if !unknown.is_empty() {
            const SHOWN: usize = 8;
            let mut names: Vec<String> = unknown
                .iter()
                .take(SHOWN)
                .map(|k| format!("{k:?}"))
                .collect();
            if unknown.len() > SHOWN {
                names.push(format!("and {} more", unknown.len() - SHOWN));
            }
            eprintln!(
                "flm-edge: warning: /api/settings: unknown keys ignored: {}",
                names.join(", ")
            );
        }
        *s = new;
        Ok(())
    }

    /// The settings in force for the next conversation, every key (for `GET /api/settings`);
    /// None before the model is loaded.
    pub fn effective_settings(&self) -> Option<serde_json::Value> {
        let base = self.conversations.base()?;
        Some(self.settings().effective(base))
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.feed.subscribe()
    }
}

impl Feed for Hub {
    /// Hands an event line to the page's event streams; never waits (a stream that falls
    /// behind loses lines, and is told).
    fn publish(&self, line: &str) {
        if self.feed.receiver_count() > 0 {
            let _ = self.feed.send(Arc::from(line));
        }
    }
}

/// The HTTP stack: the status routes on `[status] metrics`, everything on `[server] listen`
/// (one address serving both when they are the same). Returns the hub, whose page events the
/// serve side feeds.
pub fn start(cfg: &Config, conversations: Arc<Conversations>) -> Result<Arc<Hub>> {
    use http::{Listen, Scope};
    let v = &cfg.server;
    let mut listen = vec![];
    if !v.listen.is_empty() {
        let tls = (!v.tls_cert.is_empty())
            .then(|| (PathBuf::from(&v.tls_cert), PathBuf::from(&v.tls_key)));
        listen.push(Listen {
            addr: v.listen.clone(),
            scope: Scope::All,
            key: "server.listen",
            tls,
        });
    }
    if !cfg.status.metrics.is_empty() && cfg.status.metrics != v.listen {
        listen.push(Listen {
            addr: cfg.status.metrics.clone(),
            scope: Scope::Status,
            key: "status.metrics",
            tls: None,
        });
    }
    let hub = Arc::new(Hub::new(conversations));
    if listen.is_empty() {
        return Ok(hub);
    }
    let bound = http::start(
        http::Options {
            listen,
            max_connections: v.max_connections as usize,
            idle: Duration::from_secs(v.idle_timeout_s as u64),
            page_dir: (!v.page_dir.is_empty()).then(|| PathBuf::from(&v.page_dir)),
            access: access::Access::new(&v.token, &v.allowed_origins),
            max_conversation: (v.max_conversation_s > 0)
                .then(|| Duration::from_secs(v.max_conversation_s as u64)),
        },
        hub.clone(),
    )?;
    if !v.listen.is_empty() {
        let scheme = if v.tls_cert.is_empty() { "ws" } else { "wss" };
        let page = if scheme == "ws" { "http" } else { "https" };
        eprintln!(
            "flm-edge: remote clients at {scheme}://{0}/api/chat, the page at {page}://{0}/",
            bound[0]
        );
        if !bound[0].ip().is_loopback() {
            eprintln!(
                "flm-edge: warning: `server.listen` {} is not a loopback address: anyone who can reach it can talk to the model{}",
                bound[0],
                if v.tls_cert.is_empty() {
                    ", unencrypted"
                } else {
                    ""
                }
            );
        }
    }
    Ok(hub)
}
