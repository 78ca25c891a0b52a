//! The real-time pipeline: a capture thread, the step thread (Mimi encode, one model step,
//! Mimi decode) and a playback thread, joined by fixed-size lock-free queues of whole 80 ms
//! frames. The audio threads never wait on the model.
//!
//! Timeline, for a loudspeaker (`Pacing::Slots`). Input frame n is stamped when its
//! capture completes; the answer to it is due `latency_frames` frames later, in output slot
//! n. The playback thread takes slot n at that due time (the stamps reach it through a
//! lock-free ring), so that what the deadline monitor counts and what the loudspeaker plays
//! agree whatever the device buffers: a step that finishes after its due time counts as a
//! deadline miss and slot n plays silence; nothing shifts. When the model falls further
//! behind than `max_backlog_frames`, the oldest captured frames are dropped (counted) so
//! that it catches up with the present; while it is behind by less, it works through the
//! backlog at full speed.
//!
//! A network client (`Pacing::Stream`) has no loudspeaker's present: its timeline follows
//! the audio it sends. Every frame is heard, in order (the capture waits for room, and the
//! network waits for the capture), and every answer is sent as soon as it is made, so that a
//! client ahead of the model gets its answers as fast as the model goes; deadlines are
//! counted all the same. A replay (`Pacing::Unpaced`) is the same without deadlines.

use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flm_kernels::mimi::Mimi;
use heapless::spsc::Queue;

use super::conversation::{Control, Lifecycle, NewConversation};
use super::device::{CaptureDevice, Captured, FRAME, Pacing, Pcm, PlaybackDevice, sleep_until};
use super::metrics::{Metrics, Stage};
use crate::detok::Detokenizer;
use crate::engine::{Engine, Sampling};

/// Queue slots (one is kept free by the queue): about 1.2 s of audio each way.
const QUEUE: usize = 16;
/// The longest latency whose answers the output queue can hold while they wait for their
/// slot (the answers of `latency_frames` frames, the one playing, and room for a late one).
pub const MAX_LATENCY_FRAMES: u32 = QUEUE as u32 - 4;
/// The most captured frames that can wait for the model: what the input queue holds.
pub const MAX_BACKLOG_FRAMES: u32 = QUEUE as u32 - 1;
const FRAME_TIME: Duration = Duration::from_millis(80);
/// Output RMS above which the model counts as speaking (about -50 dBFS).
pub(super) const SPEAKING_RMS: f32 = 0.003;

/// The most bytes of text one event carries (a longer piece takes several events).
pub const PIECE: usize = 64;

/// Capture stamps kept for the playback thread: far more than the frames in flight.
const STAMPS: usize = 64;

/// When each of the latest input frames completed, written by the capture thread and read
/// by the playback thread without locks.
struct Stamps {
    base: Instant,
    /// Nanoseconds after `base`, by sequence number modulo STAMPS.
    at: [AtomicU64; STAMPS],
    /// Frames stamped so far.
    captured: AtomicU64,
}

impl Stamps {
    fn new() -> Stamps {
        Stamps {
            base: Instant::now(),
            at: std::array::from_fn(|_| AtomicU64::new(0)),
            captured: AtomicU64::new(0),
        }
    }

    fn record(&self, seq: u64, at: Instant) {
        let ns = at.saturating_duration_since(self.base).as_nanos() as u64;
        self.at[seq as usize % STAMPS].store(ns, Relaxed);
        self.captured.store(seq + 1, Release);
    }

    /// When output slot `seq` is due, once its input frame is stamped. A slot so far behind
    /// that its stamp was overwritten is long past (and so passed over, like any overdue one).
    fn due(&self, seq: u64, latency: Duration) -> Option<Instant> {
        let captured = self.captured.load(Acquire);
        if captured <= seq {
            return None;
        }
        if captured - seq > STAMPS as u64 / 2 {
            return Some(self.base);
        }
        let ns = self.at[seq as usize % STAMPS].load(Relaxed);
        Some(self.base + Duration::from_nanos(ns) + latency)
    }
}

/// A captured frame: its sequence number, when it completed, whether it stands in for audio
/// the device could not deliver.
pub(super) struct InFrame {
    pub seq: u64,
    pub at: Instant,
    pub silent: bool,
    pub pcm: Pcm,
}

/// The answer for output slot `seq`.
pub(super) struct OutFrame {
    pub seq: u64,
    pub pcm: Pcm,
}

/// What a local screen is told after each step.
#[derive(Clone, Debug)]
pub struct Event {
    pub step: u64,
    /// Text that became whole at this step ("" for none).
    pub piece: heapless::String<PIECE>,
    /// The model returned to waiting after text: a text segment ended at this step.
    pub text_end: bool,
    pub speaking: bool,
    /// The microphone is muted (the model hears silence).
    pub muted: bool,
    /// A new conversation started with this step, and why.
    pub new_conversation: Option<NewConversation>,
}

impl Event {
    /// The state for screens and LEDs.
    pub fn state(&self) -> &'static str {
        super::conversation::state(self.muted, self.speaking)
    }
}

pub struct Model {
    pub engine: Engine,
    pub mimi: Mimi,
    pub detok: Detokenizer,
    /// Resets and mute, from the control socket.
    pub control: std::sync::Arc<Control>,
    /// Where each frame the model is given is copied (`--record-heard`), wait-free.
    pub heard: Option<super::heard::Tap>,
    /// The detokenizers of conversations 1.. when several are stepped together (their
    /// codec is a stream of `mimi`).
    pub detoks: Vec<Detokenizer>,
}

impl Model {
    /// A new conversation: the model forgets everything said.
    pub fn start_over(&mut self) {
        self.engine.reset();
        self.mimi.reset();
        self.detok.reset();
        for d in &mut self.detoks {
            d.reset();
        }
    }

    /// Starts over sampling with `sampling` (a network conversation's settings); refused
    /// settings leave the sampling as it was, and the conversation starts over all the same.
    pub fn start_over_with(&mut self, sampling: Sampling) -> Result<()> {
        let set = self.engine.set_sampling(sampling);
        self.start_over();
        set
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Schedule {
    pub latency_frames: u32,
    pub max_backlog_frames: u32,
    /// Drill: step n sleeps this long before it runs (a stall past its deadline).
    pub stall: Option<(u64, Duration)>,
    /// Drill: step n fails (as a GPU or llama.cpp error would).
    pub fail: Option<u64>,
}

/// What the audio threads and the step share, made before them.
pub struct Flags {
    /// The capture source has ended.
    capture_done: AtomicBool,
    /// The steps have ended: the event thread and an unpaced player finish what is queued.
    pub steps_done: AtomicBool,
    /// Set when the step loop ends for good (an error): the audio threads stop too, instead
    /// of playing silence forever.
    pub halted: AtomicBool,
    /// Set when the player has ended (its device takes no more: a network client gone): a
    /// network conversation's steps stop there, and nothing waits for it.
    player_gone: AtomicBool,
    stamps: Stamps,
}

impl Flags {
    pub fn new() -> Flags {
        Flags {
            capture_done: AtomicBool::new(false),
            steps_done: AtomicBool::new(false),
            halted: AtomicBool::new(false),
            player_gone: AtomicBool::new(false),
            stamps: Stamps::new(),
        }
    }
}

impl Default for Flags {
    fn default() -> Self {
        Flags::new()
    }
}

/// The queues between the audio threads and the step, made before them.
pub struct Queues {
    input: Queue<InFrame, QUEUE>,
    output: Queue<OutFrame, QUEUE>,
    events: Queue<Event, QUEUE>,
}

impl Queues {
    pub fn new() -> Queues {
        Queues {
            input: Queue::new(),
            output: Queue::new(),
            events: Queue::new(),
        }
    }
}

impl Default for Queues {
    fn default() -> Self {
        Queues::new()
    }
}

/// The step's side of the audio threads: captured frames in, answers and events out.
pub struct StepSide<'a> {
    pub(super) input: heapless::spsc::Consumer<'a, InFrame>,
    pub(super) output: heapless::spsc::Producer<'a, OutFrame>,
    pub(super) events: heapless::spsc::Producer<'a, Event>,
    /// Whether something takes the events.
    pub(super) listened: bool,
    /// The player's thread (woken when the steps halt).
    pub player: std::thread::Thread,
}

/// Runs until `stop` is set or the capture source ends (and its frames are played). A step
/// that fails stops every thread and returns its error, naming the stage and the frame.
pub fn run(
    model: &mut Model,
    capture: &mut dyn CaptureDevice,
    playback: &mut dyn PlaybackDevice,
    schedule: Schedule,
    metrics: &Metrics,
    stop: &AtomicBool,
    on_event: Option<&mut (dyn FnMut(&Event) + Send)>,
) -> Result<()> {
    let mut queues = Queues::new();
    let flags = Flags::new();
    let pacing = playback.pacing();
    std::thread::scope(|s| -> Result<()> {
        let mut side = spawn_audio(
            s,
            &mut queues,
            capture,
            playback,
            on_event,
            &flags,
            schedule.latency_frames,
            metrics,
            stop,
        );
        let result = step_loop(model, &mut side, schedule, pacing, metrics, stop, &flags);
        flags.steps_done.store(true, Relaxed);
        if result.is_err() {
            flags.halted.store(true, Relaxed);
            side.player.unpark();
        }
        result
    })
}

/// Spawns in `s` the capture thread, the player and (when something takes the events,
/// `on_event`) the event thread of one conversation's devices, which wake the calling
/// thread (the step's) as frames come; returns the step's side. The audio threads never
/// wait on the model.
#[allow(clippy::too_many_arguments)]
pub fn spawn_audio<'scope, 'env, 'c: 'env, 'p: 'env, 'e: 'env>(
    s: &'scope std::thread::Scope<'scope, 'env>,
    queues: &'env mut Queues,
    capture: &'env mut (dyn CaptureDevice + 'c),
    playback: &'env mut (dyn PlaybackDevice + 'p),
    on_event: Option<&'env mut (dyn FnMut(&Event) + Send + 'e)>,
    flags: &'env Flags,
    latency_frames: u32,
    metrics: &'env Metrics,
    stop: &'env AtomicBool,
) -> StepSide<'env> {
    let (mut in_tx, in_rx) = queues.input.split();
    let (out_tx, mut out_rx) = queues.output.split();
    let (ev_tx, mut ev_rx) = queues.events.split();
    let listened = on_event.is_some();
    // A network client or a replay loses nothing: the capture side waits for room instead.
    let pacing = playback.pacing();
    let lossless = pacing != Pacing::Slots;
    let due = FRAME_TIME * latency_frames;
    let step_thread = std::thread::current();
    let Flags {
        capture_done,
        steps_done,
        halted,
        player_gone,
        stamps,
    } = flags;
    let quit = move || stop.load(Relaxed) || halted.load(Relaxed);
    let player = s.spawn(move || {
        let _gone = SetOnDrop(player_gone);
        if pacing == Pacing::Stream {
            return stream_answers(playback, &mut out_rx, metrics, &quit, steps_done);
        }
        let mut next = 0u64;
        let paced = pacing == Pacing::Slots;
        'slots: loop {
            if quit() {
                break;
            }
            if !paced && steps_done.load(Relaxed) && out_rx.peek().is_none() {
                break;
            }
            // A paced device takes slot `next` when its answer is due, not when the
            // device has room: device buffers differ, deadlines do not.
            let mut overdue = false;
            if paced {
                loop {
                    if quit() {
                        break 'slots;
                    }
                    match stamps.due(next, due) {
                        Some(t) => {
                            overdue = Instant::now() > t + FRAME_TIME;
                            sleep_until(t);
                            break;
                        }
                        None if capture_done.load(Relaxed) => break 'slots,
                        None => std::thread::park_timeout(FRAME_TIME),
                    }
                }
            }
            if overdue {
                // Its time has gone by (audio an xrun lost, paid back late, or this
                // thread held up): nothing is played for it, so that the loudspeaker's
                // queue, and with it the latency, does not grow.
                while out_rx.peek().is_some_and(|f| f.seq <= next) {
                    out_rx.dequeue();
                }
                Metrics::add(&metrics.playback_silent);
                playback.skip_frame();
                next += 1;
                continue;
            }
            let t0 = Instant::now();
            let mut fill = |dst: &mut Pcm| {
                // Late frames (for slots already played) are dropped.
                while out_rx.peek().is_some_and(|f| f.seq < next) {
                    out_rx.dequeue();
                }
                if !paced {
                    while out_rx.peek().is_none() && !steps_done.load(Relaxed) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                match out_rx.peek() {
                    Some(f) if f.seq == next => {
                        let f = out_rx.dequeue().unwrap();
                        dst.copy_from_slice(&f.pcm);
                    }
                    _ => {
                        dst.fill(0.0);
                        Metrics::add(&metrics.playback_silent);
                    }
                }
                next += 1;
            };
            let more = playback.play_frame(&mut fill, metrics);
            metrics.stage(Stage::Playback, t0.elapsed().as_micros() as u64);
            if !more {
                break;
            }
        }
    });
    let player = player.thread().clone();
    let player_wake = player.clone();

    s.spawn(move || {
        let mut frame = InFrame {
            seq: 0,
            at: Instant::now(),
            silent: false,
            pcm: [0.0; FRAME],
        };
        while !quit() {
            let t0 = Instant::now();
            let kind = capture.next_frame(&mut frame.pcm, metrics);
            metrics.stage(Stage::CaptureWait, t0.elapsed().as_micros() as u64);
            (frame.silent, frame.at) = match kind {
                Captured::End => break,
                Captured::Audio => (false, Instant::now()),
                Captured::Silence => (true, Instant::now()),
                Captured::Lost(at) => (true, at),
            };
            stamps.record(frame.seq, frame.at);
            player.unpark();
            let wait = || lossless && !quit() && !steps_done.load(Relaxed);
            if !enqueue_waiting(&mut in_tx, InFrame { ..frame }, wait) {
                Metrics::add(&metrics.capture_dropped);
            }
            step_thread.unpark();
            frame.seq += 1;
        }
        capture_done.store(true, Relaxed);
        step_thread.unpark();
        player.unpark();
    });

    if let Some(f) = on_event {
        s.spawn(move || {
            loop {
                match ev_rx.dequeue() {
                    Some(e) => f(&e),
                    None if steps_done.load(Relaxed) => break,
                    None => std::thread::park_timeout(Duration::from_millis(20)),
                }
            }
        });
    }
    StepSide {
        input: in_rx,
        output: out_tx,
        events: ev_tx,
        listened,
        player: player_wake,
    }
}

fn step_loop(
    model: &mut Model,
    side: &mut StepSide<'_>,
    schedule: Schedule,
    pacing: Pacing,
    metrics: &Metrics,
    stop: &AtomicBool,
    flags: &Flags,
) -> Result<()> {
    let StepSide {
        input,
        output,
        events,
        listened,
        ..
    } = side;
    let (capture_done, player_gone) = (&flags.capture_done, &flags.player_gone);
    // Deadlines, counted from each frame's capture (a replay has no present).
    let due = (pacing != Pacing::Unpaced).then(|| FRAME_TIME * schedule.latency_frames);
    let mut out = OutFrame {
        seq: 0,
        pcm: [0.0; FRAME],
    };
    let mut codes = [0i32; 8];
    let us = |d: Duration| d.as_micros() as u64;
    let wait = model.engine.text_wait();
    // Text tokens since the model last waited.
    let mut in_text = false;
    let control = model.control.clone();
    let mut life = Lifecycle::default();
    while !stop.load(Relaxed) {
        // A network client that has gone is answered no more.
        if pacing == Pacing::Stream && player_gone.load(Relaxed) {
            break;
        }
        // Too far behind: drop the oldest frames to catch up with the present (a
        // loudspeaker's only: a network client or a replay loses nothing).
        while pacing == Pacing::Slots && input.len() > schedule.max_backlog_frames as usize {
            input.dequeue();
            Metrics::add(&metrics.capture_dropped);
        }
        let Some(mut frame) = input.dequeue() else {
            if capture_done.load(Relaxed) {
                break;
            }
            std::thread::park_timeout(Duration::from_millis(10));
            continue;
        };
        if frame.silent {
            Metrics::add(&metrics.capture_silence_frames);
        }
        if let Some((n, d)) = schedule.stall
            && n == frame.seq
        {
            std::thread::sleep(d);
        }
        let seq = frame.seq;
        if schedule.fail == Some(seq) {
            anyhow::bail!("frame {seq}: model step: injected failure (drill)");
        }
        let new_conversation = life.before_step(&control);
        if new_conversation.is_some_and(|w| w != NewConversation::Start) {
            model.start_over();
            in_text = false;
        }
        let user_rms = rms(&frame.pcm);
        let muted = control.muted();
        if muted {
            frame.pcm.fill(0.0);
        }
        // What the model hears, exactly: the frame as the encoder takes it.
        if let Some(heard) = model.heard.as_mut() {
            heard.push(&frame.pcm);
        }
        let t0 = Instant::now();
        super::abort::at(Some(seq), super::abort::Stage::MimiEncode);
        model
            .mimi
            .encode(&frame.pcm, &mut codes)
            .with_context(|| format!("frame {seq}: Mimi encode"))?;
        let t1 = Instant::now();
        super::abort::at(Some(seq), super::abort::Stage::ModelStep);
        let step = model
            .engine
            .step(&codes)
            .with_context(|| format!("frame {seq}: model step"))?;
        let t2 = Instant::now();
        let answer = step.frame.is_some() || pacing != Pacing::Stream;
        match step.frame {
            Some(f) => {
                let mut speak = [0i32; 8];
                speak.copy_from_slice(&f[1..]);
                super::abort::at(Some(seq), super::abort::Stage::MimiDecode);
                model
                    .mimi
                    .decode(&speak, &mut out.pcm)
                    .with_context(|| format!("frame {seq}: Mimi decode"))?;
            }
            None => out.pcm.fill(0.0),
        }
        let t3 = Instant::now();
        // Unpaced: no deadline, and a step is timed from when the model took the frame.
        let (missed, start) = match due {
            Some(d) => (t3 > frame.at + d, frame.at),
            None => (false, t0),
        };
        metrics.stage(Stage::Encode, us(t1 - t0));
        let st = step.times;
        metrics.stage(Stage::Embed, (st.embed * 1e3) as u64);
        metrics.stage(Stage::Backbone, (st.backbone * 1e3) as u64);
        metrics.stage(Stage::Depth, (st.depth * 1e3) as u64);
        metrics.stage(Stage::Sample, (st.sample * 1e3) as u64);
        metrics.stage(Stage::Decode, us(t3 - t2));
        metrics.step(us(t3 - start), missed);
        out.seq = frame.seq;
        if answer {
            // Every answer is kept but a loudspeaker's: the step waits for the player.
            let wait =
                || pacing != Pacing::Slots && !stop.load(Relaxed) && !player_gone.load(Relaxed);
            if !enqueue_waiting(output, OutFrame { ..out }, wait) {
                Metrics::add(&metrics.playback_silent);
            }
        }
        let piece = model.detok.push(step.text);
        let text_end = in_text && step.text == wait;
        in_text = step.text != wait;
        let speaking = rms(&out.pcm) > SPEAKING_RMS;
        life.after_step(&control, user_rms, speaking || step.text != wait, speaking);
        // A network client's text is lossless: the step waits for room (the event thread
        // takes an event within 20 ms). A local screen's is best effort.
        let room = || pacing == Pacing::Stream && !stop.load(Relaxed);
        let said = Said {
            step: frame.seq,
            piece,
            text_end,
            speaking,
            muted,
            new_conversation,
        };
        send_events(events, said, room, *listened, metrics);
    }
    life.stopped(&control);
    Ok(())
}

/// What a step said, for its events.
pub(super) struct Said<'a> {
    pub step: u64,
    pub piece: &'a str,
    pub text_end: bool,
    pub speaking: bool,
    pub muted: bool,
    pub new_conversation: Option<NewConversation>,
}

/// Queues a step's events. A piece longer than an event holds goes in several events of the
/// same step: nothing of the text is lost. While the queue is full and `wait()` holds, waits
/// for room; an event not queued is counted when `listened` (something takes the events:
/// without, none is ever taken).
pub(super) fn send_events(
    events: &mut heapless::spsc::Producer<'_, Event>,
    said: Said<'_>,
    wait: impl Fn() -> bool,
    listened: bool,
    metrics: &Metrics,
) {
    let chunks = chunks(said.piece);
    let last = chunks.clone().count() - 1;
    for (i, now) in chunks.enumerate() {
        let first = i == 0;
        let mut e = Event {
            step: said.step,
            piece: heapless::String::new(),
            text_end: said.text_end && i == last,
            speaking: said.speaking,
            muted: said.muted,
            new_conversation: if first { said.new_conversation } else { None },
        };
        let _ = e.piece.push_str(now);
        if !enqueue_waiting(events, e, &wait) && listened {
            Metrics::add(&metrics.events_dropped);
        }
    }
}

/// Enqueues `item`; while the queue is full and `wait()` holds, waits for room (1 ms at a
/// time). False when the item was not enqueued.
pub(super) fn enqueue_waiting<T>(
    queue: &mut heapless::spsc::Producer<'_, T>,
    mut item: T,
    wait: impl Fn() -> bool,
) -> bool {
    loop {
        match queue.enqueue(item) {
            Ok(()) => return true,
            Err(back) if wait() => {
                item = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
}

/// Sets its flag when dropped (a thread's end, however it ends).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

/// `text` in pieces of at most `PIECE` bytes, cut at character boundaries; one empty piece
/// for no text.
fn chunks(text: &str) -> impl Iterator<Item = &str> + Clone {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let r = rest?;
        let mut cut = r.len().min(PIECE);
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        let (now, later) = r.split_at(cut);
        rest = (!later.is_empty()).then_some(later);
        Some(now)
    })
}

/// A network client's player: every answer in order, as soon as the step made it, until
/// the steps have ended and every answer has gone, or the client takes no more.
fn stream_answers(
    playback: &mut dyn PlaybackDevice,
    answers: &mut heapless::spsc::Consumer<'_, OutFrame>,
    metrics: &Metrics,
    quit: &dyn Fn() -> bool,
    steps_done: &AtomicBool,
) {
    loop {
        if quit() {
            return;
        }
        let Some(answer) = answers.dequeue() else {
            if steps_done.load(Relaxed) && answers.peek().is_none() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let t0 = Instant::now();
        let more = playback.play_frame(&mut |dst: &mut Pcm| *dst = answer.pcm, metrics);
        metrics.stage(Stage::Playback, t0.elapsed().as_micros() as u64);
        if !more {
            return;
        }
    }
}

pub(super) fn rms(pcm: &Pcm) -> f32 {
    (pcm.iter().map(|x| x * x).sum::<f32>() / pcm.len() as f32).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_goes_in_pieces_cut_at_characters() {
        assert_eq!(chunks("").collect::<Vec<_>>(), [""]);
        assert_eq!(chunks("hello").collect::<Vec<_>>(), ["hello"]);
        // 70 three-byte characters: 21 to a piece, nothing lost.
        let text = "語".repeat(70);
        let parts: Vec<&str> = chunks(&text).collect();
        assert_eq!(parts.len(), 4);
        assert!(parts.iter().all(|p| p.len() <= PIECE));
        assert_eq!(parts.concat(), text);
        let exact = "a".repeat(2 * PIECE);
        assert_eq!(chunks(&exact).count(), 2);
    }
}
