//! The link between a network conversation's socket (the server's runtime thread) and the
//! pipeline's network devices (the audio threads): wait-free rings of samples and text, and a
//! few flags. Neither side blocks the other: a side that finds a ring full or empty comes
//! back to it (the socket's side reads no more from its client meanwhile, so that TCP holds
//! the client's audio, and nothing is lost).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::Thread;

/// Received samples waiting for the capture side, by default: 2 s at 24 kHz
/// (`server.receive_buffer_s`).
pub const RECEIVE_SAMPLES: usize = 48_000;
/// Answer samples waiting to be sent: 1 s.
pub const OUTBOUND_SAMPLES: usize = 24_000;
/// Text messages waiting to be sent.
const TEXT_ITEMS: usize = 256;

/// A message of text for the client.
#[derive(Clone, Debug, PartialEq)]
pub enum Text {
    /// Text of the model's tokens that became whole (a longer piece comes in several).
    Piece(heapless::String<{ super::pipeline::PIECE }>),
    /// The model returned to waiting after text: the segment ends (sent as "\n").
    End,
}

/// What both ends see.
#[derive(Default)]
pub struct LinkState {
    /// The client has gone (socket closed, timed out or broken): the capture side ends.
    pub client_gone: AtomicBool,
    /// The pipeline has taken the conversation (model reset): the handshake may go out.
    pub started: AtomicBool,
    /// The pipeline has ended the conversation: the socket closes.
    pub finished: AtomicBool,
    /// Notified when `started` or `finished` is set (the socket's side waits on it).
    pub handed: tokio::sync::Notify,
    /// The capture thread, woken when audio arrives.
    pub capture: OnceLock<Thread>,
}

impl LinkState {
    /// The pipeline has taken the conversation.
    pub fn start(&self) {
        self.started.store(true, Relaxed);
        self.handed.notify_waiters();
    }

    /// The pipeline has ended the conversation.
    pub fn finish(&self) {
        self.finished.store(true, Relaxed);
        self.handed.notify_waiters();
    }

    pub fn wake_capture(&self) {
        if let Some(t) = self.capture.get() {
            t.unpark();
        }
    }
}

/// The socket's end.
pub struct SocketEnd {
    pub audio_in: rtrb::Producer<f32>,
    pub audio_out: rtrb::Consumer<f32>,
    pub text: rtrb::Consumer<Text>,
    pub state: std::sync::Arc<LinkState>,
}

/// The pipeline's end.
pub struct PipelineEnd {
    pub audio_in: rtrb::Consumer<f32>,
    pub audio_out: rtrb::Producer<f32>,
    pub text: rtrb::Producer<Text>,
    pub state: std::sync::Arc<LinkState>,
    /// The client's address, for the log and the event stream.
    pub peer: String,
    /// The conversation's sampling (the network settings over the model's).
    pub sampling: crate::engine::Sampling,
}

impl Drop for SocketEnd {
    fn drop(&mut self) {
        self.state.client_gone.store(true, Relaxed);
        self.state.wake_capture();
    }
}

/// A new link for a conversation with `peer` at `sampling` that holds up to `received`
/// samples of its audio (allocates: at the conversation's start).
pub fn link(
    peer: String,
    sampling: crate::engine::Sampling,
    received: usize,
) -> (SocketEnd, PipelineEnd) {
    let state = std::sync::Arc::new(LinkState::default());
    let (in_tx, in_rx) = rtrb::RingBuffer::new(received);
    let (out_tx, out_rx) = rtrb::RingBuffer::new(OUTBOUND_SAMPLES);
    let (text_tx, text_rx) = rtrb::RingBuffer::new(TEXT_ITEMS);
    (
        SocketEnd {
            audio_in: in_tx,
            audio_out: out_rx,
            text: text_rx,
            state: state.clone(),
        },
        PipelineEnd {
            audio_in: in_rx,
            audio_out: out_tx,
            text: text_tx,
            state,
            peer,
            sampling,
        },
    )
}

/// Pushes as many of `samples` as fit; returns how many did not (the caller keeps them).
pub fn push_samples(ring: &mut rtrb::Producer<f32>, samples: &[f32]) -> usize {
    let n = samples.len().min(ring.slots());
    if let Ok(chunk) = ring.write_chunk_uninit(n) {
        chunk.fill_from_iter(samples[..n].iter().copied());
    }
    samples.len() - n
}

/// Pops exactly `out.len()` samples when that many wait; false (nothing taken) otherwise.
pub fn pop_samples(ring: &mut rtrb::Consumer<f32>, out: &mut [f32]) -> bool {
    let Ok(chunk) = ring.read_chunk(out.len()) else {
        return false;
    };
    let (a, b) = chunk.as_slices();
    out[..a.len()].copy_from_slice(a);
    out[a.len()..].copy_from_slice(b);
    chunk.commit_all();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_carry_samples_and_take_what_fits() {
        const JITTER_SAMPLES: usize = 24_000;
        let greedy = flm_kernels::sampling::SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            repetition_window: 0,
        };
        let sampling = crate::engine::Sampling {
            text: greedy,
            audio: greedy,
            audio_penalty_codebooks: 4,
        };
        let (mut socket, mut pipe) = link("test".into(), sampling, JITTER_SAMPLES);
        let x: Vec<f32> = (0..30_000).map(|i| i as f32).collect();
        assert_eq!(
            push_samples(&mut socket.audio_in, &x),
            30_000 - JITTER_SAMPLES
        );
        let mut frame = [0f32; 1920];
        assert!(pop_samples(&mut pipe.audio_in, &mut frame));
        assert_eq!(frame[0], 0.0);
        assert_eq!(frame[1919], 1919.0);
        // Wrapping around the ring end keeps the order.
        assert_eq!(push_samples(&mut socket.audio_in, &x[..1920]), 0);
        let mut n = 1;
        while pop_samples(&mut pipe.audio_in, &mut frame) {
            n += 1;
        }
        // 22080 + 1920 samples: 12 whole frames, the last ending with the new samples' 959.
        assert_eq!(n, 13);
        assert_eq!(frame[1919], 959.0);
        assert!(!pipe.state.client_gone.load(Relaxed));
        drop(socket);
        assert!(pipe.state.client_gone.load(Relaxed));
    }
}
