//! Who has the model. One owner at a time: the local microphone and loudspeaker, a network
//! client, or a replayed file. A network client asks through `begin` (from the HTTP stack's
//! thread); the serve loop, which alone holds the model, takes the offer, runs the
//! conversation through `hold` and gives the model back. `hold` is the one place a pipeline
//! of one conversation is built: every owner starts from a fresh model state (engine, Mimi,
//! detokenizer) with its own sampling. (Several conversations in one step are run by
//! `super::together`, the local devices there served by the pipeline's audio threads.)
//!
//! The network side never polls: it waits on `handed` (the conversation started or ended)
//! and `released` (the model is free again), notified as those happen.
//!
//! With `server.max_conversations` > 1 (`several`), up to that many conversations are
//! stepped together (`super::together`): the local microphone's, when it is one of them
//! (`server.local_conversation` with ALSA devices), and network conversations, admitted
//! up to the places left and handed through a wait-free ring to the step; the next client
//! is refused as busy, as with one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;

use anyhow::Result;

use super::conversation::Control;
use super::device::{CaptureDevice, PlaybackDevice};
use super::link::{self, LinkState, PipelineEnd, SocketEnd};
use super::metrics::Metrics;
use super::pipeline::{self, Event, Model, Schedule};
use crate::engine::Sampling;

/// Why a network conversation is refused.
pub const BUSY: &str = "busy: another conversation is in progress; try again later";
pub const DRAINING: &str = "draining: this board takes no new conversations";
pub const LOADING: &str = "loading: the model is not ready yet";
pub const BAD_SETTINGS: &str = "refused: the sampling settings are not accepted";

/// Network conversations admitted and not yet taken by the step, at most.
const ADMITTED: usize = 2 * crate::engine::MAX_CONVERSATIONS;

/// The admission of several conversations at once.
struct Several {
    /// Network conversations served at once.
    slots: usize,
    /// Admitted and not yet released.
    active: AtomicUsize,
    /// Admitted conversations, for the step (whose end `take_admitted` gives once).
    admit: Mutex<rtrb::Producer<PipelineEnd>>,
    admitted: Mutex<Option<rtrb::Consumer<PipelineEnd>>>,
    /// The links of the admitted conversations (`ending`).
    links: Mutex<Vec<Arc<LinkState>>>,
}

/// Where the page's events go (the HTTP stack's event streams).
pub trait Feed: Send + Sync {
    fn publish(&self, line: &str);
}

/// The model's owner and the network conversation waiting for it.
pub struct Conversations {
    pub metrics: Arc<Metrics>,
    /// The model's resets, mute, drain and state.
    pub control: Arc<Control>,
    /// A network conversation holds (or is about to hold) the model.
    busy: AtomicBool,
    /// A conversation waiting for the serve loop to take it.
    offered: Mutex<Option<PipelineEnd>>,
    /// The link of the network conversation that holds the model.
    current: Mutex<Option<Arc<LinkState>>>,
    /// Ends whatever pipeline runs, so that the serve loop takes the offer.
    interrupt: Arc<AtomicBool>,
    serve_thread: Thread,
    /// The sampling of the model and the configuration (what network settings apply to).
    base: Mutex<Option<Sampling>>,
    /// Samples of a client's audio held ahead of the model (`server.receive_buffer_s`).
    receive_samples: usize,
    /// The model is free again.
    pub released: tokio::sync::Notify,
    /// Set when several conversations are stepped together.
    several: Option<Several>,
    /// The local microphone's conversation is in the step (with its sampling, the
    /// configuration's).
    local: AtomicBool,
}

impl Conversations {
    /// The owner of the model stepped on `serve_thread`; an offer interrupts the pipeline
    /// through `interrupt`; a network conversation's link holds `receive_samples` of its audio.
    pub fn new(
        metrics: Arc<Metrics>,
        control: Arc<Control>,
        interrupt: Arc<AtomicBool>,
        serve_thread: Thread,
        receive_samples: usize,
    ) -> Conversations {
        Conversations {
            metrics,
            control,
            busy: AtomicBool::new(false),
            offered: Mutex::new(None),
            current: Mutex::new(None),
            interrupt,
            serve_thread,
            base: Mutex::new(None),
            receive_samples,
            released: tokio::sync::Notify::new(),
            several: None,
            local: AtomicBool::new(false),
        }
    }

    /// Admits up to `slots` network conversations at once, handed to the step that runs
    /// them together (with the local one, when it is in the step) through `take_admitted`.
    pub fn several(mut self, slots: usize) -> Conversations {
        let (admit, admitted) = rtrb::RingBuffer::new(ADMITTED);
        self.several = Some(Several {
            slots,
            active: AtomicUsize::new(0),
            admit: Mutex::new(admit),
            admitted: Mutex::new(Some(admitted)),
            links: Mutex::new(Vec::with_capacity(slots)),
        });
        self
    }

    /// The network conversations served at once.
    pub fn slots(&self) -> usize {
        self.several.as_ref().map_or(1, |s| s.slots)
    }

    /// The admitted conversations' ring, for the step that runs them (once).
    pub fn take_admitted(&self) -> Option<rtrb::Consumer<PipelineEnd>> {
        let s = self.several.as_ref()?;
        lock(&s.admitted).take()
    }

    /// Gives the admitted conversations' ring back when the step that ran them stops.
    pub fn give_back_admitted(&self, ring: rtrb::Consumer<PipelineEnd>) {
        if let Some(s) = &self.several {
            *lock(&s.admitted) = Some(ring);
        }
    }

    /// Several conversations: admits one while a slot is free (counted, and refused as busy
    /// when none is).
    fn admit(
        &self,
        s: &Several,
        peer: String,
        sampling: Sampling,
    ) -> Result<SocketEnd, &'static str> {
        if sampling.check().is_err() {
            return Err(BAD_SETTINGS);
        }
        let mut links = lock(&s.links);
        if s.active.load(Relaxed) >= s.slots {
            Metrics::add(&self.metrics.remote.refused);
            return Err(BUSY);
        }
        let (socket, pipeline) = link::link(peer, sampling, self.receive_samples);
        if lock(&s.admit).push(pipeline).is_err() {
            Metrics::add(&self.metrics.remote.refused);
            return Err(BUSY);
        }
        s.active.fetch_add(1, Relaxed);
        links.push(socket.state.clone());
        self.serve_thread.unpark();
        Ok(socket)
    }

    /// Several conversations: the step has ended the conversation of `state`; its slot is
    /// free for the next client.
    pub fn release_one(&self, state: &Arc<LinkState>) {
        if let Some(s) = &self.several {
            let mut links = lock(&s.links);
            if let Some(i) = links.iter().position(|l| Arc::ptr_eq(l, state)) {
                links.swap_remove(i);
                s.active.fetch_sub(1, Relaxed);
            }
        }
        self.released.notify_waiters();
    }

    /// Whether any network conversation is admitted, or the local one is in the step
    /// (settings wait for none: the conversations stepped together share one sampling, and
    /// the local one's is the configuration's).
    pub fn any(&self) -> bool {
        match &self.several {
            Some(s) => s.active.load(Relaxed) > 0 || self.local.load(Relaxed),
            None => self.busy(),
        }
    }

    /// The step runs the local microphone's conversation (or no longer does).
    pub fn set_local(&self, in_step: bool) {
        self.local.store(in_step, Relaxed);
    }

    /// Asks for the model for a conversation with `peer` at `sampling`: the socket's end of
    /// its link, or why not (another conversation holds the model, or the board is
    /// draining; counted).
    pub fn begin(&self, peer: String, sampling: Sampling) -> Result<SocketEnd, &'static str> {
        if self.control.draining() {
            Metrics::add(&self.metrics.remote.refused);
            return Err(DRAINING);
        }
        if let Some(s) = &self.several {
            return self.admit(s, peer, sampling);
        }
        if self.busy.swap(true, Relaxed) {
            Metrics::add(&self.metrics.remote.refused);
            return Err(BUSY);
        }
        let (socket, pipeline) = link::link(peer, sampling, self.receive_samples);
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(socket.state.clone());
        *self.offered.lock().unwrap_or_else(|e| e.into_inner()) = Some(pipeline);
        self.interrupt.store(true, Relaxed);
        self.serve_thread.unpark();
        Ok(socket)
    }

    /// The conversation waiting to be served, if any (for the serve loop).
    pub fn take_offer(&self) -> Option<PipelineEnd> {
        self.offered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The serve loop has finished the network conversation: the next client may have the
    /// model.
    pub fn release(&self) {
        self.busy.store(false, Relaxed);
        self.released.notify_waiters();
    }

    /// No network conversation can be admitted now.
    pub fn busy(&self) -> bool {
        match &self.several {
            Some(s) => s.active.load(Relaxed) >= s.slots,
            None => self.busy.load(Relaxed),
        }
    }

    /// The conversation that holds the model is ending: its client has gone, and the
    /// pipeline plays out the answers still due (a client that reconnects at once waits for
    /// that rather than being turned away).
    pub fn ending(&self) -> bool {
        if let Some(s) = &self.several {
            // Every slot taken, one of them by a client that has gone: its slot is freed at
            // the next step.
            return self.busy() && lock(&s.links).iter().any(|l| l.client_gone.load(Relaxed));
        }
        self.busy()
            && self
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|s| s.client_gone.load(Relaxed))
    }

    /// Whether a conversation can start now (`/readyz`), or why not: the board is draining,
    /// the model is loading, or a conversation holds it.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.control.draining() {
            return Err(DRAINING);
        }
        if self.base().is_none() || self.metrics.loading.load(Relaxed) {
            return Err(LOADING);
        }
        if self.busy() {
            return Err(BUSY);
        }
        Ok(())
    }

    /// The sampling network settings apply to, set by the serve loop at each load.
    pub fn set_base(&self, base: Sampling) {
        *self.base.lock().unwrap_or_else(|e| e.into_inner()) = Some(base);
    }

    /// None before the model is loaded.
    pub fn base(&self) -> Option<Sampling> {
        *self.base.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one owner's conversation on `model`: a fresh state with `sampling`, `begun` told,
/// then the pipeline between `capture` and `playback` until `stop` or the source's end.
/// Sampling the engine refuses is an error, and the pipeline does not start.
#[allow(clippy::too_many_arguments)]
pub fn hold(
    model: &mut Model,
    sampling: Sampling,
    begun: impl FnOnce(),
    capture: &mut dyn CaptureDevice,
    playback: &mut dyn PlaybackDevice,
    schedule: Schedule,
    metrics: &Metrics,
    stop: &AtomicBool,
    on_event: Option<&mut (dyn FnMut(&Event) + Send)>,
) -> Result<()> {
    model.start_over_with(sampling)?;
    begun();
    pipeline::run(model, capture, playback, schedule, metrics, stop, on_event)
}
