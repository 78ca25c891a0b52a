//! Several conversations stepped together (`server.max_conversations` > 1): one engine step
//! (`Engine::step_some`) per step boundary for every conversation that has a frame, and one
//! Mimi encode and one decode for all of them (`Mimi::encode_streams`), each with its own
//! slot: the engine's conversation, the Mimi stream of the same index, a detokenizer. The
//! conversations
//! are network clients and, with `server.local_conversation` and ALSA devices, the local
//! microphone's (`super::local`), which keeps slot 0 for as long as the step runs and steps
//! whenever its captured frame is there.
//!
//! Admission happens at step boundaries. A conversation admitted by `Conversations::begin`
//! is taken by the desk thread (log, event lines, handshake), then by the step thread,
//! which gives it a free slot started anew (engine conversation reset, its Mimi and
//! detokenizer reset, its draws seeded afresh); one whose client has gone leaves its slot
//! at the next boundary, free at once.
//!
//! The step thread never waits on a client, locks, allocates or does I/O: it reads and
//! writes each conversation's wait-free rings (`super::link`) directly, and a conversation
//! steps only when its client's next frame is there and its answer and text have room, so
//! that a slow client holds back only its own conversation (which continues, when its
//! frame comes, exactly as it would alone). Everything that locks, logs or frees is the
//! desk thread's (and, for the local conversation, its audio and event threads').
//!
//! The Mimi streams are used in three places only: `start_afresh` (a slot's reset), the
//! encode of the frames that step, the decode of their answers.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flm_kernels::mimi::Mimi;

use super::conversations::Conversations;
use super::device::{FRAME, Pcm};
use super::link::{self, PipelineEnd, Text};
pub use super::local::Local;
use super::local::LocalStep;
use super::metrics::Stage;
use super::pipeline::{self, Flags, Model, PIECE, Queues};
use super::status::EventStream;
use crate::detok::Detokenizer;
use crate::engine::{Engine, MAX_CONVERSATIONS, Sampling};
use crate::token_ring::CODEBOOKS;

/// Text messages a step may send one conversation (its piece in chunks of `PIECE` bytes,
/// and the end of a segment): a conversation steps only when its text ring has this room.
const TEXT_ROOM: usize = 8;
/// How long the step thread sleeps when no conversation has a frame (it is also woken as
/// audio arrives).
const POLL: Duration = Duration::from_millis(5);
const FRAME_TIME: Duration = Duration::from_millis(80);
/// The local conversation's slot.
const LOCAL: usize = 0;

/// One conversation's place in the step (its Mimi stream is its index).
struct Slot<'a> {
    detok: &'a mut Detokenizer,
    link: Option<PipelineEnd>,
    /// Text tokens since the model last waited.
    in_text: bool,
}

/// The step's codec work: the frames of the conversations that step, side by side, for one
/// Mimi call each way (sized for all at start).
struct Frames {
    /// The conversations (Mimi streams) that step, in order, and how many.
    streams: [usize; MAX_CONVERSATIONS],
    n: usize,
    /// Their heard frames, and the codes Mimi found in them.
    heard: Vec<f32>,
    codes: Vec<i32>,
    /// Those that answer: their streams, their codes, and the samples decoded.
    answering: [usize; MAX_CONVERSATIONS],
    answers: usize,
    answer_codes: Vec<i32>,
    said: Vec<f32>,
}

impl Frames {
    fn new(n: usize) -> Frames {
        Frames {
            streams: [0; MAX_CONVERSATIONS],
            n: 0,
            heard: vec![0.0; n * FRAME],
            codes: vec![0; n * CODEBOOKS],
            answering: [0; MAX_CONVERSATIONS],
            answers: 0,
            answer_codes: vec![0; n * CODEBOOKS],
            said: vec![0.0; n * FRAME],
        }
    }

    /// The next stepping conversation's heard frame.
    fn next_heard(&mut self) -> &mut Pcm {
        let i = self.n;
        <&mut Pcm>::try_from(&mut self.heard[i * FRAME..(i + 1) * FRAME]).expect("one frame")
    }

    /// The answer decoded for the conversation `c`, if it answered.
    fn said_by(&self, c: usize) -> Option<&Pcm> {
        let a = self.answering[..self.answers]
            .iter()
            .position(|&s| s == c)?;
        Some(<&Pcm>::try_from(&self.said[a * FRAME..(a + 1) * FRAME]).expect("one frame"))
    }

    fn encode(&mut self, mimi: &mut Mimi) -> Result<()> {
        let n = self.n;
        mimi.encode_streams(
            &self.streams[..n],
            &self.heard[..n * FRAME],
            &mut self.codes[..n * CODEBOOKS],
        )
    }

    fn decode(&mut self, mimi: &mut Mimi) -> Result<()> {
        let n = self.answers;
        if n == 0 {
            return Ok(());
        }
        mimi.decode_streams(
            &self.answering[..n],
            &self.answer_codes[..n * CODEBOOKS],
            &mut self.said[..n * FRAME],
        )
    }
}

/// What the step thread tells the desk thread.
enum Notice {
    /// The conversation has left its slot (its client has gone, or the service stops).
    Left(PipelineEnd),
}

/// Runs the network conversations admitted through `owner`, and the `local` one when given,
/// together, until `stop`. `latency_frames`: the time a step has (its deadline, counted
/// from the step's start, or from the capture of the local conversation's frame when it
/// steps); `show_peers`: whether the event lines carry the client's address.
pub fn run(
    model: &mut Model,
    owner: &Conversations,
    stop: &AtomicBool,
    latency_frames: u32,
    show_peers: bool,
    events: &EventStream,
    local: Option<Local<'_>>,
) -> Result<()> {
    let Some(mut admitted) = owner.take_admitted() else {
        anyhow::bail!("several conversations: no admission ring");
    };
    let n = model.engine.conversations();
    // Built before the first step: the rings between the threads, the slots.
    let (mut intake_tx, mut intake_rx) = rtrb::RingBuffer::<PipelineEnd>::new(MAX_CONVERSATIONS);
    let (mut notice_tx, mut notice_rx) = rtrb::RingBuffer::<Notice>::new(4 * MAX_CONVERSATIONS);
    let desk_done = AtomicBool::new(false);
    let metrics = &*owner.metrics;
    let step_thread = std::thread::current();
    // The local conversation's queues and flags, shared with its audio threads.
    let mut queues = Queues::new();
    let flags = Flags::new();
    let result = std::thread::scope(|s| {
        let (admitted, intake, notices) = (&mut admitted, &mut intake_tx, &mut notice_rx);
        let (done, step_thread) = (&desk_done, &step_thread);
        let desk = s.spawn(move || {
            desk(
                owner,
                admitted,
                intake,
                notices,
                done,
                step_thread,
                show_peers,
                events,
            )
        });
        let Model {
            engine,
            mimi,
            detok,
            detoks,
            control,
            heard: heard_tap,
        } = model;
        // The local conversation's devices, served by their own threads (which wake this
        // one as frames come).
        let mut local = local.map(|l| {
            let side = pipeline::spawn_audio(
                s,
                &mut queues,
                l.capture,
                l.playback,
                Some(l.on_event),
                &flags,
                l.schedule.latency_frames,
                metrics,
                stop,
            );
            LocalStep::new(side, l.schedule)
        });
        // The network conversations' first slot.
        let first = local.is_some() as usize;
        owner.set_local(local.is_some());
        metrics.local_in_step.store(local.is_some(), Relaxed);
        let mut slots: Vec<Slot> = std::iter::once(detok)
            .chain(detoks.iter_mut())
            .take(n)
            .map(|detok| Slot {
                detok,
                link: None,
                in_text: false,
            })
            .collect();
        let mut frames = Frames::new(n);
        let result = (|| -> Result<()> {
            anyhow::ensure!(
                slots.len() == n && mimi.streams() == n,
                "several conversations: {} detokenizers and {} Mimi streams for {n} conversations",
                slots.len(),
                mimi.streams()
            );
            let wait = engine.text_wait();
            let mut users: [Option<[i32; CODEBOOKS]>; MAX_CONVERSATIONS] =
                [None; MAX_CONVERSATIONS];
            let mut step = 0u64;
            let us = |d: Duration| d.as_micros() as u64;
            while !stop.load(Relaxed) {
                // The boundary: who leaves, who joins.
                let mut active = 0;
                for slot in &mut slots {
                    if slot
                        .link
                        .as_ref()
                        .is_some_and(|l| l.state.client_gone.load(Relaxed))
                    {
                        let l = slot.link.take().unwrap();
                        let _ = notice_tx.push(Notice::Left(l));
                        desk_wake(&desk);
                    }
                }
                while let Some(c) = (first..n).find(|&c| slots[c].link.is_none()) {
                    let Ok(end) = intake_rx.pop() else { break };
                    let alone = local.is_none() && slots.iter().all(|s| s.link.is_none());
                    if alone && differs(engine.sampling(), end.sampling) {
                        // The conversations stepped together share one sampling: the first
                        // to join an empty step sets it (the settings can change only
                        // while none runs; the local conversation keeps the
                        // configuration's).
                        engine
                            .set_sampling(end.sampling)
                            .context("a conversation's sampling")?;
                    }
                    let slot = &mut slots[c];
                    start_afresh(engine, mimi, c, slot);
                    let _ = end.state.capture.set(std::thread::current());
                    slot.link = Some(end);
                }
                for slot in &slots {
                    active += slot.link.is_some() as u64;
                }
                metrics.remote.in_step.store(active, Relaxed);
                metrics.remote.active.store(active > 0, Relaxed);
                // Who steps: a network conversation whose next frame is there, with room for
                // its answer and its text; the local one when its captured frame is there.
                let t0 = Instant::now();
                // The control socket's mute is the local microphone's when it is in the
                // step; else it mutes the network conversations.
                let muted = local.is_none() && control.muted();
                frames.n = 0;
                for (c, slot) in slots.iter_mut().enumerate() {
                    users[c] = None;
                    if let Some(l) = slot.link.as_mut() {
                        let heard = frames.next_heard();
                        if l.audio_out.slots() < FRAME
                            || l.text.slots() < TEXT_ROOM
                            || !link::pop_samples(&mut l.audio_in, heard)
                        {
                            continue;
                        }
                        if muted {
                            heard.fill(0.0);
                        }
                    } else if c == LOCAL
                        && let Some(local) = local.as_mut()
                    {
                        let heard = frames.next_heard();
                        let Some(afresh) = local.take(control, heard, heard_tap.as_mut(), metrics)
                        else {
                            continue;
                        };
                        if afresh {
                            // A new kiosk conversation (command or idle time): its slot
                            // alone starts over.
                            start_afresh(engine, mimi, c, slot);
                        }
                    } else {
                        continue;
                    }
                    frames.streams[frames.n] = c;
                    frames.n += 1;
                }
                let any = frames.n > 0;
                // Waiting for audio: nothing is owed meanwhile (but with the local
                // conversation, whose microphone owes a frame every 80 ms).
                metrics.idle.store(!any && local.is_none(), Relaxed);
                if !any {
                    std::thread::park_timeout(POLL);
                    continue;
                }
                frames
                    .encode(mimi)
                    .with_context(|| format!("step {step}: Mimi encode"))?;
                for i in 0..frames.n {
                    let mut codes = [0i32; CODEBOOKS];
                    codes.copy_from_slice(&frames.codes[i * CODEBOOKS..(i + 1) * CODEBOOKS]);
                    users[frames.streams[i]] = Some(codes);
                }
                let t1 = Instant::now();
                let outs = engine
                    .step_some(&users[..n])
                    .with_context(|| format!("step {step}: model step"))?;
                let t2 = Instant::now();
                // The local frame's capture, which its deadline counts from.
                let captured = local.as_ref().and_then(|l| l.captured_at());
                // One answer per frame but the first, as the official server: all decoded in
                // one call.
                frames.answers = 0;
                for i in 0..frames.n {
                    let c = frames.streams[i];
                    if let Some(f) = outs[c].frame {
                        let a = frames.answers;
                        frames.answer_codes[a * CODEBOOKS..(a + 1) * CODEBOOKS]
                            .copy_from_slice(&f[1..]);
                        frames.answering[a] = c;
                        frames.answers += 1;
                    }
                }
                frames
                    .decode(mimi)
                    .with_context(|| format!("step {step}: Mimi decode"))?;
                for i in 0..frames.n {
                    let c = frames.streams[i];
                    let out = outs[c];
                    let slot = &mut slots[c];
                    let answer = frames.said_by(c);
                    let piece = slot.detok.push(out.text);
                    let text_end = slot.in_text && out.text == wait;
                    slot.in_text = out.text != wait;
                    let Some(l) = slot.link.as_mut() else {
                        let local = local
                            .as_mut()
                            .expect("a stepped slot without a link is the local one");
                        local.answered(control, answer, piece, text_end, out.text != wait, metrics);
                        continue;
                    };
                    if let Some(pcm) = answer {
                        link::push_samples(&mut l.audio_out, pcm);
                    }
                    let mut rest = piece;
                    while !rest.is_empty() {
                        let mut cut = rest.len().min(PIECE);
                        while !rest.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        let (now, later) = rest.split_at(cut);
                        let mut p = heapless::String::new();
                        let _ = p.push_str(now);
                        let _ = l.text.push(Text::Piece(p));
                        rest = later;
                    }
                    if text_end {
                        let _ = l.text.push(Text::End);
                    }
                }
                let t3 = Instant::now();
                let st = outs[frames.streams[0]].times;
                metrics.stage(Stage::Encode, us(t1 - t0));
                metrics.stage(Stage::Embed, (st.embed * 1e3) as u64);
                metrics.stage(Stage::Backbone, (st.backbone * 1e3) as u64);
                metrics.stage(Stage::Depth, (st.depth * 1e3) as u64);
                metrics.stage(Stage::Sample, (st.sample * 1e3) as u64);
                metrics.stage(Stage::Decode, us(t3 - t2));
                let took = t3 - captured.map_or(t0, |at| at.min(t0));
                metrics.step(us(took), took > FRAME_TIME * latency_frames);
                step += 1;
            }
            Ok(())
        })();
        // The local conversation's threads stop with the steps (at once after an error).
        flags.steps_done.store(true, Relaxed);
        if let Some(local) = &local {
            local.stopped(control);
            if result.is_err() {
                flags.halted.store(true, Relaxed);
                local.wake_player();
            }
        }
        owner.set_local(false);
        metrics.local_in_step.store(false, Relaxed);
        // Every conversation still in a slot leaves; the desk finishes them and stops.
        for slot in &mut slots {
            if let Some(l) = slot.link.take() {
                let _ = notice_tx.push(Notice::Left(l));
            }
        }
        metrics.remote.in_step.store(0, Relaxed);
        metrics.remote.active.store(false, Relaxed);
        desk_done.store(true, Relaxed);
        desk_wake(&desk);
        let _ = desk.join();
        result
    });
    // Conversations admitted but never taken end too.
    while let Ok(end) = intake_rx.pop() {
        finish(owner, end, show_peers, events, false);
    }
    while let Ok(end) = admitted.pop() {
        finish(owner, end, show_peers, events, false);
    }
    owner.give_back_admitted(admitted);
    result
}

/// Starts slot `c`'s conversation afresh: its engine conversation reset (its draws seeded
/// afresh), its Mimi stream and detokenizer reset.
fn start_afresh(engine: &mut Engine, mimi: &mut Mimi, c: usize, slot: &mut Slot<'_>) {
    engine.reset_conversation(c);
    mimi.reset_stream(c);
    slot.detok.reset();
    slot.in_text = false;
}

fn desk_wake(desk: &std::thread::ScopedJoinHandle<'_, ()>) {
    desk.thread().unpark();
}

/// Whether two samplings differ.
fn differs(a: Sampling, b: Sampling) -> bool {
    (a.text, a.audio, a.audio_penalty_codebooks) != (b.text, b.audio, b.audio_penalty_codebooks)
}

/// The desk: takes admitted conversations (log, begin line, handshake) on to the step, and
/// finishes those that left (end line, the socket closed, the slot released).
#[allow(clippy::too_many_arguments)]
fn desk(
    owner: &Conversations,
    admitted: &mut rtrb::Consumer<PipelineEnd>,
    intake: &mut rtrb::Producer<PipelineEnd>,
    notices: &mut rtrb::Consumer<Notice>,
    done: &AtomicBool,
    step_thread: &std::thread::Thread,
    show_peers: bool,
    events: &EventStream,
) {
    loop {
        let stopping = done.load(Relaxed);
        while let Ok(Notice::Left(end)) = notices.pop() {
            finish(owner, end, show_peers, events, true);
        }
        if stopping {
            return;
        }
        while intake.slots() > 0 {
            let Ok(end) = admitted.pop() else { break };
            owner.metrics.remote.conversations.fetch_add(1, Relaxed);
            eprintln!("flm-edge: conversation with {} begins", end.peer);
            events.send_line(&line("begin", &end.peer, show_peers));
            end.state.start();
            let _ = intake.push(end);
            step_thread.unpark();
        }
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

/// A conversation has ended: its socket closes, its slot is free.
fn finish(
    owner: &Conversations,
    end: PipelineEnd,
    show_peers: bool,
    events: &EventStream,
    begun: bool,
) {
    end.state.finish();
    if begun {
        eprintln!("flm-edge: conversation with {} ends", end.peer);
        events.send_line(&line("end", &end.peer, show_peers));
    }
    owner.release_one(&end.state);
}

/// An event line of a conversation's begin or end (with the client's address only when
/// asked for).
fn line(what: &str, peer: &str, show_peers: bool) -> serde_json::Value {
    let mut l = serde_json::json!({ "conversation": what });
    if show_peers {
        l["peer"] = peer.into();
    }
    l
}
