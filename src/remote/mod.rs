//! Remote clients: FLM-Audio's websocket protocol (`/api/chat`, `/api/settings`), spoken by
//! its official clients, Kyutai's web client and the Full-Duplex-Bench harnesses, and the
//! status routes (`/metrics`, `/healthz`), on one HTTP stack that runs on a thread of its own,
//! away from the audio and step threads.
//!
//! The hub hands a network conversation to the serve loop: one at a time; a second client is
//! turned away at once with a reason. It also carries the event stream to the web page.

pub mod access;
pub mod chat;
pub mod events;
pub mod http;
pub mod link;
pub mod ogg_opus;
pub mod page;
pub mod settings;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::Thread;

use crate::engine::Sampling;
use crate::serve::conversation::Control;
use crate::serve::metrics::Metrics;
use link::{LinkState, PipelineEnd, SocketEnd};
use settings::Settings;

/// What the server and the serve loop share.
pub struct Hub {
    pub metrics: Arc<Metrics>,
    /// A network conversation holds (or is about to hold) the model.
    busy: AtomicBool,
    /// A conversation waiting for the serve loop to take it.
    offered: Mutex<Option<PipelineEnd>>,
    /// The link of the conversation that holds the model.
    current: Mutex<Option<Arc<LinkState>>>,
    /// Ends whatever pipeline runs, so that the serve loop takes the offer.
    interrupt: Arc<AtomicBool>,
    serve_thread: Thread,
    /// Sampling set through `/api/settings`, for the next conversation.
    settings: Mutex<Settings>,
    /// The sampling the settings apply to (the model's and the configuration's).
    base: Mutex<Option<Sampling>>,
    /// The event stream's lines (JSON), for the page's `/api/events`.
    feed: tokio::sync::broadcast::Sender<Arc<str>>,
    /// The model's resets, mute and state (listening, speaking, muted).
    pub control: Arc<Control>,
}

impl Hub {
    /// A hub whose offers interrupt the pipeline through `interrupt` and wake `serve_thread`;
    /// `control` is the model's.
    pub fn new(
        metrics: Arc<Metrics>,
        control: Arc<Control>,
        interrupt: Arc<AtomicBool>,
        serve_thread: Thread,
    ) -> Hub {
        Hub {
            metrics,
            busy: AtomicBool::new(false),
            offered: Mutex::new(None),
            current: Mutex::new(None),
            interrupt,
            serve_thread,
            settings: Mutex::new(Settings::default()),
            base: Mutex::new(None),
            feed: tokio::sync::broadcast::channel(events::FEED_LINES).0,
            control,
        }
    }

    /// Takes the model for a conversation with `peer`: the socket's end of its link, or None
    /// while another conversation holds it (counted).
    pub fn begin(&self, peer: String) -> Option<SocketEnd> {
        if self.busy.swap(true, Relaxed) {
            Metrics::add(&self.metrics.remote.refused);
            return None;
        }
        let (socket, pipeline) = link::link(peer);
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(socket.state.clone());
        *self.offered.lock().unwrap_or_else(|e| e.into_inner()) = Some(pipeline);
        self.interrupt.store(true, Relaxed);
        self.serve_thread.unpark();
        Some(socket)
    }

    /// The conversation waiting to be served, if any (for the serve loop).
    pub fn take_offer(&self) -> Option<PipelineEnd> {
        self.offered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The serve loop has finished the conversation: the next client may have the model.
    pub fn release(&self) {
        self.busy.store(false, Relaxed);
    }

    pub fn busy(&self) -> bool {
        self.busy.load(Relaxed)
    }

    /// The conversation that holds the model is ending: its client has gone, and the
    /// pipeline plays out the answers still due (a client that reconnects at once waits for
    /// that rather than being turned away).
    pub fn ending(&self) -> bool {
        self.busy()
            && self
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|s| s.client_gone.load(Relaxed))
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
        if self.busy() {
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

    /// The sampling that settings apply to, set by the serve loop.
    pub fn set_base(&self, base: Sampling) {
        *self.base.lock().unwrap_or_else(|e| e.into_inner()) = Some(base);
    }

    /// The settings in force for the next conversation, every key (for `GET /api/settings`);
    /// None before the model is loaded.
    pub fn effective_settings(&self) -> Option<serde_json::Value> {
        let base = (*self.base.lock().unwrap_or_else(|e| e.into_inner()))?;
        Some(self.settings().effective(base))
    }

    /// Hands an event line to the page's event streams; never waits (a stream that falls
    /// behind loses lines, and is told).
    pub fn publish(&self, line: &str) {
        if self.feed.receiver_count() > 0 {
            let _ = self.feed.send(Arc::from(line));
        }
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.feed.subscribe()
    }
}
