//! Events to WebSocket clients. The server runs every task on one internal channel of its
//! task manager and reads that channel here ([`forward`]), in order: each event updates the
//! task table (progress, the outcome) and then goes out, as JSON text, to the clients
//! subscribed to one of the task's channels (or to all channels). A terminal event goes out
//! only once the table has the outcome, so a client that reads the task right after its
//! `completed` finds it completed.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use procpool::TaskEvent;
use procpool::records::ErrorReport;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot, watch};
use uuid::Uuid;

use crate::clients::{Audience, Next, Outgoing, Subscription};
use crate::shared::Shared;

/// The task manager channel every task of the server runs on.
pub(crate) const INTERNAL_CHANNEL: &str = "procpool-serve";
/// Events buffered between the task manager and the forwarder.
pub(crate) const MANAGER_BUFFER: usize = 1 << 16;

/// An event as a client reads it.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum WireEvent<'a> {
    /// The task was accepted for this channel (first submission, or a later one that
    /// joined it with the same cache key).
    Started {
        task_id: Uuid,
        task: &'a str,
    },
    /// A task of the run reported progress: the task itself, or a nested one (`input_id`).
    Progress {
        task_id: Uuid,
        input_id: Uuid,
        progress: f32,
        message: &'a str,
    },
    /// A task of the run sent a message: as `text` when it is UTF-8, else as `bytes`.
    Message {
        task_id: Uuid,
        input_id: Uuid,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes: Option<&'a [u8]>,
    },
    Completed {
        task_id: Uuid,
        result: &'a Value,
    },
    Failed {
        task_id: Uuid,
        error: &'a ErrorReport,
    },
    Cancelled {
        task_id: Uuid,
        error: &'a ErrorReport,
    },
    /// This client fell behind and missed `missed` events.
    Lagged {
        missed: u64,
    },
}

impl WireEvent<'_> {
    pub(crate) fn to_text(&self) -> Utf8Bytes {
        serde_json::to_string(self)
            .expect("an event is plain data")
            .into()
    }
}

/// Sends `event` to the clients of `channels` (and to those following every channel).
pub(crate) fn emit(shared: &Shared, channels: &[String], event: &WireEvent<'_>) {
    shared.clients.send(Outgoing {
        to: Audience::Channels(channels.into()),
        text: event.to_text(),
    });
}

/// Reads the task manager's events until `drain` is answered: then it forwards what is
/// already buffered, confirms, and stops.
pub(crate) async fn forward(
    shared: Arc<Shared>,
    mut events: broadcast::Receiver<TaskEvent>,
    mut drain: oneshot::Receiver<oneshot::Sender<()>>,
) {
    loop {
        tokio::select! {
            biased;
            got = events.recv() => match got {
                Ok(event) => handle(&shared, event).await,
                Err(broadcast::error::RecvError::Lagged(n)) => lagged(&shared, n),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            done = &mut drain => {
                loop {
                    match events.try_recv() {
                        Ok(event) => handle(&shared, event).await,
                        Err(broadcast::error::TryRecvError::Lagged(n)) => lagged(&shared, n),
                        Err(_) => break,
                    }
                }
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
        }
    }
}

fn lagged(shared: &Shared, n: u64) {
    // The table is still right (each task's outcome is also awaited on its own); only
    // these events are lost to the clients.
    tracing::warn!(
        missed = n,
        "the event forwarder fell behind; events were dropped"
    );
    shared.clients.send(Outgoing {
        to: Audience::Everyone,
        text: WireEvent::Lagged { missed: n }.to_text(),
    });
}

async fn handle(shared: &Shared, event: TaskEvent) {
    let id = event.task_id();
    match event {
        // Announced by the submission itself, per channel (see `routes::submit`).
        TaskEvent::Started { .. } => {}
        TaskEvent::Progress {
            input_id,
            fraction,
            message,
            ..
        } => {
            let mut table = shared.table();
            let Some(entry) = table.entry(id) else {
                return;
            };
            entry.started = true;
            entry.progress = Some((fraction, message.clone()));
            let event = WireEvent::Progress {
                task_id: id,
                input_id,
                progress: fraction,
                message: &message,
            };
            emit(shared, &entry.channels, &event);
        }
        TaskEvent::Message {
            input_id, bytes, ..
        } => {
            let mut table = shared.table();
            let Some(entry) = table.entry(id) else {
                return;
            };
            let text = std::str::from_utf8(&bytes).ok();
            let event = WireEvent::Message {
                task_id: id,
                input_id,
                text,
                bytes: text.is_none().then_some(bytes.as_slice()),
            };
            emit(shared, &entry.channels, &event);
        }
        // Completed, failed, cancelled: record the outcome first, then tell the clients.
        event if event.is_terminal() => {
            let pending = match shared.table().entry(id) {
                Some(entry) => entry.pending.clone(),
                None => return,
            };
            // The manager answers its consumers right after publishing the end. (No
            // `pending`: the task's watcher recorded it already.)
            if let Some(pending) = pending {
                let outcome = pending.value().await;
                shared.finish(id, &outcome, Instant::now());
            }
            let mut table = shared.table();
            let Some(entry) = table.entry(id) else {
                return;
            };
            let Some(end) = &entry.end else { return };
            let event = match (&end.result, &end.error) {
                (Some(result), _) => WireEvent::Completed {
                    task_id: id,
                    result,
                },
                (None, Some(error)) if error.kind == "cancelled" => {
                    WireEvent::Cancelled { task_id: id, error }
                }
                (None, Some(error)) => WireEvent::Failed { task_id: id, error },
                (None, None) => return,
            };
            emit(shared, &entry.channels, &event);
        }
        // Kinds of events added later are not part of this stream yet.
        _ => {}
    }
}

/// Streams the events of one client's subscription until it goes away or the server
/// shuts down (after the last events were sent).
pub(crate) async fn stream(
    mut socket: WebSocket,
    events: Subscription,
    mut closing: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            next = events.recv() => {
                if socket.send(Message::Text(text(next))).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                // Pings are answered by the socket itself; anything else from the client
                // is ignored, except its going away.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            () = closed(&mut closing) => {
                // What was published before the shutdown still goes out.
                while let Some(next) = events.try_recv() {
                    if socket.send(Message::Text(text(next))).await.is_err() {
                        return;
                    }
                }
                break;
            }
        }
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code::AWAY,
            reason: "the server is shutting down".into(),
        })))
        .await;
}

fn text(next: Next) -> Utf8Bytes {
    match next {
        Next::Event(text) => text,
        Next::Lagged(missed) => WireEvent::Lagged { missed }.to_text(),
    }
}

/// Resolves once the server closes the streams (or is gone).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}
