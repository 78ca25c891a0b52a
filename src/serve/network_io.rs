//! A network conversation as the pipeline's two devices: capture takes 80 ms frames from the
//! audio the client sends (its timeline follows the arriving audio, as ALSA capture follows
//! the card's clock), playback hands every answer, in order, to the socket
//! (`Pacing::Stream`). The rings between them and the socket are wait-free; when one is
//! full, its side waits for the other to take from it (a client that takes nothing for 2 s
//! is closed by the socket's side, which ends the conversation).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use super::device::{CaptureDevice, Captured, Pacing, Pcm, PlaybackDevice};
use super::link::{self, LinkState};
use super::metrics::Metrics;

/// How often a capture that waits for audio looks again (it is also woken as audio arrives).
const POLL: Duration = Duration::from_millis(5);

pub struct NetworkCapture {
    audio: rtrb::Consumer<f32>,
    state: Arc<LinkState>,
    /// SIGTERM or SIGHUP: the conversation ends.
    stop: Arc<AtomicBool>,
}

pub struct NetworkPlayback {
    audio: rtrb::Producer<f32>,
    state: Arc<LinkState>,
}

/// The two devices of a conversation's pipeline end (its text ring stays with the caller).
pub fn devices(
    audio_in: rtrb::Consumer<f32>,
    audio_out: rtrb::Producer<f32>,
    state: Arc<LinkState>,
    stop: Arc<AtomicBool>,
) -> (NetworkCapture, NetworkPlayback) {
    (
        NetworkCapture {
            audio: audio_in,
            state: state.clone(),
            stop,
        },
        NetworkPlayback {
            audio: audio_out,
            state,
        },
    )
}

impl CaptureDevice for NetworkCapture {
    fn next_frame(&mut self, out: &mut Pcm, m: &Metrics) -> Captured {
        let _ = self.state.capture.set(std::thread::current());
        loop {
            // A client that has gone is heard no more: its answers could not reach it. (Idle
            // stays as it was: nothing new is owed.)
            if self.state.client_gone.load(Relaxed) || self.stop.load(Relaxed) {
                return Captured::End;
            }
            if link::pop_samples(&mut self.audio, out) {
                m.idle.store(false, Relaxed);
                return Captured::Audio;
            }
            // Waiting for the client's audio: nothing is owed meanwhile.
            m.idle.store(true, Relaxed);
            std::thread::park_timeout(POLL);
        }
    }
}

impl PlaybackDevice for NetworkPlayback {
    fn play_frame(&mut self, fill: &mut dyn FnMut(&mut Pcm), _m: &Metrics) -> bool {
        let mut frame = [0f32; super::device::FRAME];
        fill(&mut frame);
        // Every answer goes: while the socket's side has not taken the last ones, wait.
        let mut sent = 0;
        loop {
            sent += frame.len() - sent - link::push_samples(&mut self.audio, &frame[sent..]);
            if self.state.client_gone.load(Relaxed) {
                return false;
            }
            if sent == frame.len() {
                return true;
            }
            std::thread::sleep(POLL);
        }
    }

    fn pacing(&self) -> Pacing {
        Pacing::Stream
    }
}
