//! `GET /api/events`: the event socket's lines as server-sent events, for the page's
//! captions: text pieces with the model's state, new conversations, network conversations
//! beginning and ending; and a health line (`Metrics::health`) on connect and every second.
//!
//! Limits: at most `MAX_STREAMS` streams at once (more get 503); a client that does not take
//! a line within 2 s has its connection closed; a stream that falls behind the feed loses
//! lines and is told how many (`{"lost": n}`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::RecvError;

use super::Hub;
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
    let rx = stream_lines(app.hub().clone(), place, abort);
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

/// The stream's lines, made by a task of their own: the state on connect, then the feed and a
/// health line every second, each line waiting at most `SEND_TIME` for the client to take
/// the one before (the channel holds 4); then the connection is closed through `abort`, and
/// `place` freed.
fn stream_lines<P: Send + 'static>(
    hub: Arc<Hub>,
    place: P,
    abort: Abort,
) -> tokio::sync::mpsc::Receiver<Result<Bytes, Infallible>> {
    let mut feed = hub.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(4);
    tokio::spawn(async move {
        let _place = place;
        let state = serde_json::json!({ "step": null, "text": "", "state": hub.conversations.control.state() });
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
    rx
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    use super::*;
    use crate::serve::conversation::Control;
    use crate::serve::metrics::Metrics;

    fn hub() -> Arc<Hub> {
        Arc::new(Hub::new(Arc::new(
            crate::serve::conversations::Conversations::new(
                Arc::new(Metrics::new()),
                Arc::new(Control::default()),
                Arc::new(AtomicBool::new(false)),
                std::thread::current(),
                crate::serve::link::RECEIVE_SAMPLES,
            ),
        )))
    }

    /// A client that stops taking lines (its socket full, so the response body is no longer
    /// polled) has its connection closed once a line has waited 2 s, and its place freed; a
    /// client that reads is never closed.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_is_closed_and_one_that_reads_is_not() {
        let places = Arc::new(tokio::sync::Semaphore::new(1));
        let abort = Abort::default();
        let place = places.clone().try_acquire_owned().unwrap();
        let mut rx = stream_lines(hub(), place, abort.clone());
        // It reads the first line, the state, then nothing.
        let first = rx.recv().await.unwrap().unwrap();
        assert!(first.starts_with(b"data: {"), "{first:?}");
        let t0 = Instant::now();
        let t = tokio::time::Instant::now();
        abort.closed().await;
        // Health lines at 0, 1, 2 and 3 s fill the channel of 4; the line of 4 s waits 2 s.
        assert_eq!(t.elapsed().as_secs(), 6, "closed after {:?}", t.elapsed());
        assert!(t0.elapsed() < Duration::from_secs(1), "the clock is paused");
        assert_eq!(places.available_permits(), 1, "the place is freed");

        // A client that takes every line: a minute of them, never closed.
        let abort = Abort::default();
        let place = places.clone().try_acquire_owned().unwrap();
        let mut rx = stream_lines(hub(), place, abort.clone());
        let t = tokio::time::Instant::now();
        let mut lines = 0;
        while t.elapsed() < Duration::from_secs(60) {
            tokio::select! {
                l = rx.recv() => { l.unwrap().unwrap(); lines += 1; }
                _ = abort.closed() => panic!("a reading client was closed"),
            }
        }
        assert!(lines >= 60, "{lines} lines in a minute");
    }
}
