//! The worker's side of the control socket: requests to the monitor with
//! ids, and the task that routes the monitor's replies back to them.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use russh::server::Handle;
use russh::Disconnect;
use tokio::sync::oneshot;

use super::WorkerError;
use crate::ipc::{self, ToMonitor, ToWorker};

/// A reply from the monitor, with the fd that came with it.
type Reply = (ToWorker, Option<OwnedFd>);

/// The worker's side of the control socket: requests with ids, replies routed back.
pub(super) struct Control {
    chan: ipc::Channel,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    handle: OnceLock<Handle>,
    /// Held by every relay task; when all are gone, every forward has reported its end.
    relays: Mutex<Option<tokio::sync::mpsc::Sender<()>>>,
}

impl Control {
    /// Over `chan`; `relays` is the sender every relay token is a clone of.
    pub(super) fn new(chan: ipc::Channel, relays: tokio::sync::mpsc::Sender<()>) -> Control {
        Control {
            chan,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            handle: OnceLock::new(),
            relays: Mutex::new(Some(relays)),
        }
    }

    /// The running session, for disconnects the monitor asks for.
    pub(super) fn set_handle(&self, handle: Handle) {
        let _ = self.handle.set(handle);
    }

    /// Drops our own relay sender: once every relay task has dropped its
    /// token, the receiver learns that all forwards have reported.
    pub(super) fn no_more_relays(&self) {
        if let Ok(mut r) = self.relays.lock() {
            r.take();
        }
    }

    /// A token that keeps the worker alive until this relay has reported.
    pub(super) fn relay_token(&self) -> Option<tokio::sync::mpsc::Sender<()>> {
        self.relays.lock().ok().and_then(|r| r.clone())
    }

    /// A fresh request id.
    pub(super) fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a request and waits for the reply with the same id.
    pub(super) async fn ask(
        &self,
        id: u64,
        msg: ToMonitor,
    ) -> Result<(ToWorker, Option<OwnedFd>), WorkerError> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| ipc::IpcError::Closed)?
            .insert(id, tx);
        self.chan.send(&msg, None).await?;
        rx.await
            .map_err(|_| WorkerError::Ipc(ipc::IpcError::Closed))
    }

    /// Tells the monitor something that needs no answer.
    pub(super) async fn tell(&self, msg: ToMonitor) {
        if let Err(e) = self.chan.send(&msg, None).await {
            tracing::warn!(error = %e, "could not report to the monitor");
        }
    }

    /// Ends the SSH session with `message` (from a task: never blocks).
    pub(super) fn disconnect(&self, message: String) {
        if let Some(handle) = self.handle.get().cloned() {
            tokio::spawn(async move {
                let _ = handle
                    .disconnect(Disconnect::ByApplication, message, "en".into())
                    .await;
            });
        }
    }

    /// Routes the monitor's messages until it closes the socket.
    pub(super) async fn dispatch(self: Arc<Self>) {
        loop {
            match self.chan.recv::<ToWorker>().await {
                Ok((ToWorker::Shutdown { message }, _)) => self.disconnect(message),
                Ok((msg, fd)) => {
                    let id = match &msg {
                        ToWorker::AuthReply { id, .. } | ToWorker::ForwardReply { id, .. } => *id,
                        other => {
                            tracing::warn!(message = ?other, "unexpected control message");
                            continue;
                        }
                    };
                    let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
                    if let Some(tx) = waiter {
                        let _ = tx.send((msg, fd));
                    }
                }
                Err(e) => {
                    // Without the monitor nothing can be authorised: end the session.
                    tracing::debug!(error = %e, "control socket closed");
                    self.disconnect("bastion: internal error, please reconnect".into());
                    return;
                }
            }
        }
    }
}
