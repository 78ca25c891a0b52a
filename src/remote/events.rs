//! `GET /api/events`: the event socket's lines as server-sent events, for the page's
//! captions: text pieces with the model's state, new conversations, network conversations
//! beginning and ending; and a health line (`Metrics::health`) on connect and every second.
//!
//! Limits: at most `MAX_STREAMS` streams at once (more get 503); a client that does not take
//! a line within 2 s has its connection closed; a stream that falls behind the feed loses
//! lines and is told how many (`{"lost": n}`).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::RecvError;

use super::http::{Abort, AppState};

/// Lines the feed holds for a stream that is behind.
pub const FEED_LINES: usize = 256;
/// Event streams served at once (kiosk screens, installers' laptops).
pub const MAX_STREAMS: usize = 8;
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// How long a line may wait for a client that does not read.
const SEND_TIME: Duration = Duration::from_secs(2);

pub(crate) async fn events(
    State(app): State<AppState>,
    Extension(abort): Extension<Abort>,
) -> Response {
    let Ok(place) = app.event_streams().clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("busy: {MAX_STREAMS} event streams are open\n"),
        )
            .into_response();
    };
    let hub = app.hub().clone();
    let mut feed = hub.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(4);
    tokio::spawn(async move {
        let _place = place;
        let state = serde_json::json!({ "step": null, "text": "", "state": hub.control.state() });
        let mut first = Some(state.to_string());
        let mut tick = tokio::time::interval(HEALTH_EVERY);
        loop {
            let line = match first.take() {
                Some(l) => l,
                None => tokio::select! {
                    _ = tick.tick() => hub.metrics.health().to_string(),
                    r = feed.recv() => match r {
                        Ok(l) => l.to_string(),
                        Err(RecvError::Lagged(n)) => serde_json::json!({ "lost": n }).to_string(),
                        Err(RecvError::Closed) => break,
                    },
                },
            };
            let chunk = Bytes::from(format!("data: {line}\n\n"));
            match tokio::time::timeout(SEND_TIME, tx.send(Ok(chunk))).await {
                Ok(Ok(())) => {}
                // Gone, or not reading: the connection is closed, its place freed.
                _ => break,
            }
        }
        abort.now();
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
