//! The live stream: `GET /api/memory/ws` upgrades to a WebSocket that carries every
//! [`StreamEvent`] of the backend as a JSON text frame. A client too slow for the stream gets
//! `{"type":"lagged","data":{"skipped":n}}` and the stream goes on. Messages from the client are
//! ignored (pings are answered).

use std::time::Duration;

use axum::{
    extract::{
        ws::{close_code, CloseFrame, Message, WebSocket},
        State, WebSocketUpgrade,
    },
    response::Response,
};
use serde_json::json;
use tokio::sync::{broadcast, watch};

use super::{auth::SameOrigin, AppState, StreamEvent};

/// How long a frame may take to go out before the client is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the client's reply to a close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The `Origin` check comes first so that a foreign page is refused before the upgrade.
pub(super) async fn upgrade(
    _origin: SameOrigin,
    State(state): State<AppState>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let events = state.backend.subscribe();
    let shutdown = state.shutdown.subscribe();
    upgrade
        .on_failed_upgrade(|e| log::debug!("WebSocket upgrade failed: {e}"))
        .on_upgrade(move |socket| stream(socket, events, shutdown))
}

async fn stream(
    mut socket: WebSocket,
    mut events: broadcast::Receiver<StreamEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => {
                close(socket, close_code::AWAY, "server shutting down").await;
                return;
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_))) => {
                    // One more read sends tungstenite's reply to the close frame.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.recv()).await;
                    return;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            },
            event = events.recv() => {
                let text = match event {
                    Ok(event) => match serde_json::to_string(&event) {
                        Ok(text) => text,
                        Err(e) => {
                            log::error!("cannot serialize a stream event: {e}");
                            continue;
                        }
                    },
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        json!({ "type": "lagged", "data": { "skipped": skipped } }).to_string()
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        close(socket, close_code::AWAY, "stream ended").await;
                        return;
                    }
                };
                match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::text(text))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        log::debug!("WebSocket client gone: {e}");
                        return;
                    }
                    Err(_) => {
                        log::warn!("dropping a WebSocket client that did not read for {SEND_TIMEOUT:?}");
                        return;
                    }
                }
            }
        }
    }
}

/// Returns when the server shuts down (or is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Sends a close frame and waits (briefly) for the client's reply.
async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(_)) = socket.recv().await {}
        }
    })
    .await;
}
