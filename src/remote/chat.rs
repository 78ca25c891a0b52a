//! `GET /api/chat`: one conversation over a websocket, in FLM-Audio's protocol. Every
//! message is binary, a kind byte then its payload: the server sends 0x00 once the model is
//! ready for this conversation, then 0x01 Ogg-Opus audio and 0x02 text; the client sends 0x01
//! audio. Other kinds are ignored, as the protocol says.
//!
//! Nothing the client sends is lost: its audio goes on to the model as the link has room
//! for it (`server.receive_buffer_s`), and while it has none the socket is not read, so
//! that TCP holds the rest at the client. Every answer is sent, in order.
//!
//! Limits: messages of at most 256 KiB; a client that sends nothing for the idle time (not
//! counting time in which it waits for the model), or does not take what is sent within
//! 2 s, is closed; so is a conversation that reaches `server.max_conversation_s` (code
//! 1008, policy). Audio that does not decode closes the connection with the reason (1007;
//! a packet longer than any Opus packet 1009); the service goes on.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};

use super::http::{AppState, Peer};
use super::ogg_opus::{
    MAX_PACKET_SAMPLES, OggOpusReader, OggOpusWriter, PACKET_SAMPLES, PacketTooLong,
};
use crate::serve::link::{self, SocketEnd, Text};
use crate::serve::metrics::Metrics;

/// The largest message (and frame) taken from a client.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// How long the model may take to be handed over (the running step ends, the state resets).
const START_TIME: Duration = Duration::from_secs(10);
/// How long a send may wait for a client that does not read.
const SEND_TIME: Duration = Duration::from_secs(2);
/// How often what the pipeline produced is sent.
const TICK: Duration = Duration::from_millis(10);

/// Close codes (RFC 6455): going away, unsupported data, policy, try again later, internal
/// error.
const GOING_AWAY: u16 = 1001;
const POLICY: u16 = 1008;
const BAD_DATA: u16 = 1007;
const TOO_BIG: u16 = 1009;
const TRY_LATER: u16 = 1013;
const INTERNAL: u16 = 1011;

pub(crate) async fn chat(
    ws: WebSocketUpgrade,
    State(app): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
) -> Response {
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let hub = app.hub().clone();
            // The last conversation's client has gone: its answers still due play out first.
            let conversations = &hub.conversations;
            let _ = tokio::time::timeout(START_TIME, async {
                loop {
                    let released = conversations.released.notified();
                    if !conversations.ending() {
                        break;
                    }
                    released.await;
                }
            })
            .await;
            match hub.begin(peer.to_string()) {
                Ok(end) => {
                    let limits = (app.idle_timeout(), app.max_conversation());
                    converse(socket, end, &hub.metrics, limits).await
                }
                Err(why) => refuse(socket, why).await,
            }
        })
}

/// Another conversation holds the model, or the board is draining: an error message (kind
/// 0x05 of Kyutai's protocol) and a close frame, both with the reason, at once.
async fn refuse(mut socket: WebSocket, why: &str) {
    let mut msg = vec![0x05];
    msg.extend_from_slice(why.as_bytes());
    let _ = tokio::time::timeout(SEND_TIME, async {
        let _ = socket.send(Message::Binary(msg.into())).await;
        let _ = socket.send(close(TRY_LATER, why)).await;
    })
    .await;
}

fn close(code: u16, reason: &str) -> Message {
    // A close frame's reason holds at most 123 bytes.
    let mut r = reason.to_string();
    while r.len() > 123 {
        r.pop();
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(r),
    }))
}

/// Why a conversation ended, when the server ends it.
struct Ending(u16, String);

/// `limits`: the idle time, and the longest conversation (`server.max_conversation_s`).
async fn converse(
    socket: WebSocket,
    mut end: SocketEnd,
    m: &Metrics,
    limits: (Duration, Option<Duration>),
) {
    let (mut tx, mut rx) = socket.split();
    let ending = run(&mut tx, &mut rx, &mut end, m, limits).await;
    end.state.client_gone.store(true, Relaxed);
    end.state.wake_capture();
    if let Err(Ending(code, why)) = ending {
        let _ = tokio::time::timeout(SEND_TIME, tx.send(close(code, &why))).await;
    }
    let _ = tokio::time::timeout(SEND_TIME, tx.close()).await;
}

type Tx = futures_util::stream::SplitSink<WebSocket, Message>;
type Rx = futures_util::stream::SplitStream<WebSocket>;

async fn send(tx: &mut Tx, kind: u8, payload: &[u8]) -> Result<(), Ending> {
    let mut msg = Vec::with_capacity(1 + payload.len());
    msg.push(kind);
    msg.extend_from_slice(payload);
    match tokio::time::timeout(SEND_TIME, tx.send(Message::Binary(msg.into()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ending(GOING_AWAY, "the connection broke".into())),
        Err(_) => Err(Ending(GOING_AWAY, "the client does not read".into())),
    }
}

async fn run(
    tx: &mut Tx,
    rx: &mut Rx,
    end: &mut SocketEnd,
    m: &Metrics,
    (idle, longest): (Duration, Option<Duration>),
) -> Result<(), Ending> {
    // The model is handed over when the running step ends and the state is reset.
    let state = end.state.clone();
    let handed = tokio::time::timeout(START_TIME, async {
        loop {
            let news = state.handed.notified();
            if state.started.load(Relaxed) || state.finished.load(Relaxed) {
                break;
            }
            news.await;
        }
    })
    .await;
    if handed.is_err() || !state.started.load(Relaxed) {
        return Err(Ending(INTERNAL, "the model was not handed over".into()));
    }
    let internal = |e: anyhow::Error| Ending(INTERNAL, e.to_string());
    let mut reader = OggOpusReader::new().map_err(internal)?;
    let mut writer = OggOpusWriter::new().map_err(internal)?;
    send(tx, 0x00, &[]).await?;
    for page in writer.headers().map_err(internal)? {
        send(tx, 0x01, &page).await?;
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut frame = [0f32; PACKET_SAMPLES];
    let mut heard = tokio::time::Instant::now();
    let mut carry = 0usize;
    let began = tokio::time::Instant::now();
    loop {
        hand_on(&mut reader, end, m, &mut carry)?;
        // Audio still waiting for room: the client waits for the model, not the reverse.
        let reading = reader.queued() == 0;
        if !reading {
            heard = tokio::time::Instant::now();
        }
        tokio::select! {
            msg = rx.next(), if reading => {
                heard = tokio::time::Instant::now();
                match msg {
                    None | Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Err(e)) => {
                        return Err(Ending(BAD_DATA, format!("bad websocket message: {e}")));
                    }
                    Some(Ok(Message::Binary(b))) => receive(&b, &mut reader, m)?,
                    // Text, ping and pong carry no audio (pings are answered by the stack).
                    Some(Ok(_)) => {}
                }
            }
            _ = tick.tick() => {
                if heard.elapsed() > idle {
                    return Err(Ending(GOING_AWAY, format!("nothing received for {} s", idle.as_secs())));
                }
                if let Some(longest) = longest.filter(|l| began.elapsed() > *l) {
                    return Err(Ending(POLICY, format!("time is up: a conversation lasts at most {} s", longest.as_secs())));
                }
                while link::pop_samples(&mut end.audio_out, &mut frame) {
                    let page = writer.frame(&frame).map_err(internal)?;
                    send(tx, 0x01, &page).await?;
                    Metrics::add(&m.remote.frames_out);
                }
                while let Ok(t) = end.text.pop() {
                    match t {
                        Text::Piece(p) => send(tx, 0x02, p.as_bytes()).await?,
                        Text::End => send(tx, 0x02, b"\n").await?,
                    }
                }
                if end.state.finished.load(Relaxed) {
                    return Err(Ending(GOING_AWAY, "the conversation has ended".into()));
                }
            }
        }
    }
}

/// Audio that does not read or decode: the connection closes with the reason.
fn bad_audio(e: anyhow::Error, m: &Metrics) -> Ending {
    Metrics::add(&m.remote.decode_errors);
    let code = if e.downcast_ref::<PacketTooLong>().is_some() {
        TOO_BIG
    } else {
        BAD_DATA
    };
    Ending(code, format!("bad audio: {e}"))
}

/// Decodes received packets into the link while it has room for a whole packet's samples.
fn hand_on(
    reader: &mut OggOpusReader,
    end: &mut SocketEnd,
    m: &Metrics,
    carry: &mut usize,
) -> Result<(), Ending> {
    let mut got = 0;
    while reader.queued() > 0 && end.audio_in.slots() >= MAX_PACKET_SAMPLES {
        let pushed = reader.decode_next(&mut |pcm: &[f32]| {
            let left = link::push_samples(&mut end.audio_in, pcm);
            debug_assert_eq!(left, 0, "a packet's samples fit");
            got += pcm.len();
        });
        if let Err(e) = pushed {
            return Err(bad_audio(e, m));
        }
    }
    if got > 0 {
        // Whole frames received, counted as the samples add up.
        *carry += got;
        m.remote
            .frames_in
            .fetch_add((*carry / PACKET_SAMPLES) as u64, Relaxed);
        *carry %= PACKET_SAMPLES;
        end.state.wake_capture();
    }
    Ok(())
}

/// One message from the client: audio is read into packets (decoded as the link has room),
/// other kinds are ignored.
fn receive(msg: &[u8], reader: &mut OggOpusReader, m: &Metrics) -> Result<(), Ending> {
    let Some((&kind, payload)) = msg.split_first() else {
        return Ok(());
    };
    if kind != 0x01 {
        return Ok(());
    }
    reader.read(payload).map_err(|e| bad_audio(e, m))
}
