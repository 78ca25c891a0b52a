//! The local microphone and loudspeaker as one of the conversations stepped together
//! (`server.max_conversations` > 1 with `server.local_conversation`). Its devices are
//! served by the single conversation's audio threads (`pipeline::spawn_audio`): the capture
//! thread (with the echo canceller on the capture path, fed with what the player plays),
//! the player (each answer played in its slot, when due) and the event thread (the
//! captions and states, as alone). The step thread takes its captured frame when it is
//! there (the microphone paces it), and gives back the answer and the events, never waiting:
//! a queue that is full loses the item, counted, as a loudspeaker's does alone.
//!
//! The kiosk's lifecycle is its own: the control socket's `reset` and the idle reset start
//! a new conversation in its slot only, `mute` makes it hear silence.

use std::time::Instant;

use super::conversation::{Control, Lifecycle, NewConversation};
use super::device::{CaptureDevice, Pcm, PlaybackDevice};
use super::heard::Tap;
use super::metrics::Metrics;
use super::pipeline::{
    self, Event, OutFrame, SPEAKING_RMS, Said, Schedule, StepSide, enqueue_waiting, rms,
};

/// What `serve` gives the step for the local conversation: the devices (opened, joined
/// through the echo canceller when it is on), the schedule and what takes the events.
pub struct Local<'a> {
    pub capture: &'a mut dyn CaptureDevice,
    pub playback: &'a mut dyn PlaybackDevice,
    pub schedule: Schedule,
    pub on_event: &'a mut (dyn FnMut(&Event) + Send),
}

/// The frame taken for this step, and what its events and lifecycle need of it.
struct Taken {
    seq: u64,
    at: Instant,
    user_rms: f32,
    muted: bool,
    new_conversation: Option<NewConversation>,
}

/// The step thread's side of the local conversation.
pub struct LocalStep<'a> {
    side: StepSide<'a>,
    /// The most captured frames that wait for the model; older ones are dropped.
    max_backlog: usize,
    life: Lifecycle,
    taken: Option<Taken>,
    out: OutFrame,
}

impl<'a> LocalStep<'a> {
    pub fn new(side: StepSide<'a>, schedule: Schedule) -> LocalStep<'a> {
        LocalStep {
            side,
            max_backlog: schedule.max_backlog_frames as usize,
            life: Lifecycle::default(),
            taken: None,
            out: OutFrame {
                seq: 0,
                pcm: [0.0; super::device::FRAME],
            },
        }
    }

    /// At a step boundary: the next captured frame into `pcm`, or None when none is there
    /// yet. When the model is further behind than `max_backlog_frames`, the oldest frames
    /// are dropped (counted) to catch up with the present. Muted, the frame is silence; it
    /// goes to `heard` as the encoder takes it. Some(true): a new conversation starts with
    /// this frame (a command or the idle time): the caller starts the slot afresh.
    pub fn take(
        &mut self,
        control: &Control,
        pcm: &mut Pcm,
        heard: Option<&mut Tap>,
        metrics: &Metrics,
    ) -> Option<bool> {
        let input = &mut self.side.input;
        while input.len() > self.max_backlog {
            input.dequeue();
            Metrics::add(&metrics.capture_dropped);
        }
        let frame = input.dequeue()?;
        if frame.silent {
            Metrics::add(&metrics.capture_silence_frames);
        }
        let new_conversation = self.life.before_step(control);
        let user_rms = rms(&frame.pcm);
        let muted = control.muted();
        if muted {
            pcm.fill(0.0);
        } else {
            pcm.copy_from_slice(&frame.pcm);
        }
        if let Some(heard) = heard {
            heard.push(pcm);
        }
        self.taken = Some(Taken {
            seq: frame.seq,
            at: frame.at,
            user_rms,
            muted,
            new_conversation,
        });
        Some(new_conversation.is_some_and(|w| w != NewConversation::Start))
    }

    /// When the frame taken for this step was captured (its deadline counts from there).
    pub fn captured_at(&self) -> Option<Instant> {
        self.taken.as_ref().map(|t| t.at)
    }

    /// After the step: its answer for the loudspeaker (None: no audio yet, silence), the
    /// text that became whole, whether a text segment ended, and whether the model said
    /// anything (text other than waiting).
    pub fn answered(
        &mut self,
        control: &Control,
        answer: Option<&Pcm>,
        piece: &str,
        text_end: bool,
        model_spoke: bool,
        metrics: &Metrics,
    ) {
        let Some(t) = self.taken.take() else {
            return;
        };
        match answer {
            Some(p) => self.out.pcm.copy_from_slice(p),
            None => self.out.pcm.fill(0.0),
        }
        self.out.seq = t.seq;
        // A loudspeaker's answer is never waited for: late, its slot plays silence.
        if !enqueue_waiting(&mut self.side.output, OutFrame { ..self.out }, || false) {
            Metrics::add(&metrics.playback_silent);
        }
        let speaking = rms(&self.out.pcm) > SPEAKING_RMS;
        self.life
            .after_step(control, t.user_rms, speaking || model_spoke, speaking);
        let said = Said {
            step: t.seq,
            piece,
            text_end,
            speaking,
            muted: t.muted,
            new_conversation: t.new_conversation,
        };
        pipeline::send_events(
            &mut self.side.events,
            said,
            || false,
            self.side.listened,
            metrics,
        );
    }

    /// The steps have stopped: nothing is playing.
    pub fn stopped(&self, control: &Control) {
        self.life.stopped(control);
    }

    /// Wakes the player (the steps have halted).
    pub fn wake_player(&self) {
        self.side.player.unpark();
    }
}
