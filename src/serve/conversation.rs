//! The kiosk's conversation lifecycle: one visitor after another. FLM-Audio keeps everything
//! said in its context, so a new conversation (engine, Mimi and detokenizer reset) starts at
//! start-up, on a command (`reset`), and after `conversation.idle_reset_s` seconds in which
//! neither side spoke. `mute` makes the model hear silence (a privacy button).
//!
//! Commands arrive on the event socket's threads and are read by the step thread through
//! atomics: nothing waits.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

/// Why a conversation started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewConversation {
    Start,
    Command,
    Idle,
}

impl NewConversation {
    pub fn as_str(self) -> &'static str {
        match self {
            NewConversation::Start => "start",
            NewConversation::Command => "command",
            NewConversation::Idle => "idle",
        }
    }
}

/// The state for screens and LEDs: muted, speaking or listening.
pub fn state(muted: bool, speaking: bool) -> &'static str {
    if muted {
        "muted"
    } else if speaking {
        "speaking"
    } else {
        "listening"
    }
}

/// What the control socket sets and reads; shared with the step thread.
pub struct Control {
    reset: AtomicBool,
    muted: AtomicBool,
    /// No new network conversation is taken (`drain`): the board is on its way out of a
    /// fleet, and its load balancer's readiness probe says so.
    draining: AtomicBool,
    /// Quiet steps (80 ms) after which a conversation starts over; 0: never.
    idle_steps: AtomicU64,
    /// RMS below which the user counts as quiet (f32 bits).
    quiet_rms: AtomicU32,
    /// For `status`: the model's state now, and the current conversation's steps.
    speaking: AtomicBool,
    steps: AtomicU64,
    conversations: AtomicU64,
}

impl Control {
    /// A conversation starts over after `idle_reset_s` quiet seconds (0: never); the user is
    /// quiet below `quiet_dbfs` (RMS, dB full scale).
    pub fn new(idle_reset_s: u32, quiet_dbfs: f32) -> Control {
        let c = Control {
            reset: AtomicBool::new(false),
            muted: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            idle_steps: AtomicU64::new(0),
            quiet_rms: AtomicU32::new(0),
            speaking: AtomicBool::new(false),
            steps: AtomicU64::new(0),
            conversations: AtomicU64::new(0),
        };
        c.configure(idle_reset_s, quiet_dbfs);
        c
    }

    /// Applies the configuration's keys (at start and on reload).
    pub fn configure(&self, idle_reset_s: u32, quiet_dbfs: f32) {
        // 12.5 steps per second.
        self.idle_steps.store(idle_reset_s as u64 * 25 / 2, Relaxed);
        self.quiet_rms
            .store(10f32.powf(quiet_dbfs / 20.0).to_bits(), Relaxed);
    }

    /// Asks for a new conversation before the next step.
    pub fn request_reset(&self) {
        self.reset.store(true, Relaxed);
    }

    pub fn set_muted(&self, muted: bool) {
        self.muted.store(muted, Relaxed);
    }

    pub fn muted(&self) -> bool {
        self.muted.load(Relaxed)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// The model's state now (listening, speaking, muted).
    pub fn state(&self) -> &'static str {
        state(self.muted(), self.speaking.load(Relaxed))
    }

    /// `status`: the state, the current conversation's steps, conversations so far.
    pub fn status(&self) -> (&'static str, u64, u64) {
        (
            self.state(),
            self.steps.load(Relaxed),
            self.conversations.load(Relaxed),
        )
    }
}

impl Default for Control {
    /// Never starts over on its own; -45 dBFS.
    fn default() -> Self {
        Control::new(0, -45.0)
    }
}

/// The step thread's side: counts quiet steps and decides when a conversation starts over.
#[derive(Default)]
pub struct Lifecycle {
    /// Steps in a row in which neither side spoke.
    quiet: u64,
    /// Nothing said since the conversation started (a quiet stretch then starts nothing).
    fresh: bool,
    started: bool,
}

impl Lifecycle {
    /// Before a step: whether a new conversation starts now.
    pub fn before_step(&mut self, c: &Control) -> Option<NewConversation> {
        let why = if !self.started {
            self.started = true;
            Some(NewConversation::Start)
        } else if c.reset.swap(false, Relaxed) {
            Some(NewConversation::Command)
        } else {
            let limit = c.idle_steps.load(Relaxed);
            (limit > 0 && self.quiet >= limit && !self.fresh).then_some(NewConversation::Idle)
        };
        if why.is_some() {
            self.quiet = 0;
            self.fresh = true;
            c.steps.store(0, Relaxed);
            c.conversations.fetch_add(1, Relaxed);
        }
        why
    }

    /// After the step: `user_rms` of what was captured, whether the model spoke (its voice or
    /// text other than waiting).
    pub fn after_step(&mut self, c: &Control, user_rms: f32, model_spoke: bool, speaking: bool) {
        let user_spoke = !c.muted() && user_rms >= f32::from_bits(c.quiet_rms.load(Relaxed));
        if user_spoke || model_spoke {
            self.quiet = 0;
            self.fresh = false;
        } else {
            self.quiet += 1;
        }
        c.speaking.store(speaking, Relaxed);
        c.steps.fetch_add(1, Relaxed);
    }

    /// The pipeline has stopped: nothing is playing (until the next one steps).
    pub fn stopped(&self, c: &Control) {
        c.speaking.store(false, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_starts_over_after_quiet_and_on_command_never_during_talk() {
        let c = Control::new(2, -45.0); // 25 steps
        let mut l = Lifecycle::default();
        assert_eq!(l.before_step(&c), Some(NewConversation::Start));
        // Quiet from the start: nothing to forget, nothing starts.
        for _ in 0..100 {
            l.after_step(&c, 0.0, false, false);
            assert_eq!(l.before_step(&c), None);
        }
        // Talk, then talk again every 20 steps (under the limit): never a reset.
        for i in 0..200 {
            l.after_step(&c, if i % 20 == 0 { 0.1 } else { 0.0 }, false, false);
            assert_eq!(l.before_step(&c), None, "step {i}");
        }
        // The model speaking counts as talk too.
        for i in 0..100 {
            l.after_step(&c, 0.0, i % 10 == 0, i % 10 == 0);
            assert_eq!(l.before_step(&c), None, "step {i}");
        }
        // Then 25 quiet steps: the next step starts a new conversation, once.
        let mut at = None;
        for i in 0..60 {
            l.after_step(&c, 0.001, false, false);
            if l.before_step(&c).is_some() {
                assert!(at.is_none());
                at = Some(i);
            }
        }
        // The last talk was at step 90 of the previous loop: 9 quiet steps there, 16 here.
        assert_eq!(at, Some(15));
        c.request_reset();
        l.after_step(&c, 0.2, false, false);
        assert_eq!(l.before_step(&c), Some(NewConversation::Command));
        assert_eq!(c.status().2, 3);
        // Muted, the user's sound is not talk.
        c.set_muted(true);
        assert_eq!(c.status().0, "muted");
        for _ in 0..30 {
            l.after_step(&c, 0.5, false, false);
        }
        assert_eq!(l.before_step(&c), None, "fresh: nothing said since");
    }
}
