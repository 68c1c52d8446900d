//! Shutdown plumbing, after mini-redis: one signal that every task can wait on.
//!
//! `main` turns SIGTERM/SIGINT into [`ShutdownTrigger::trigger`]; the receive loop and
//! anything else that must stop early hold a [`Shutdown`] and `select!` on
//! [`Shutdown::wait`]. A `watch` channel is used rather than a broadcast so that a task that
//! subscribes late still sees a shutdown that already happened.

use tokio::sync::watch;

/// The sending side: fires the shutdown once.
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

/// The listening side. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// A connected trigger and listener.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger { sender }, Shutdown { receiver })
}

impl ShutdownTrigger {
    /// Asks every listener to stop. Idempotent.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// A new listener for this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            receiver: self.sender.subscribe(),
        }
    }
}

impl Shutdown {
    /// Whether shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Completes once shutdown has been requested (at once if it already was). If the trigger
    /// is dropped without firing, this never completes: dropping is not a request to stop.
    pub async fn wait(&mut self) {
        if self.receiver.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Completes on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => Ok("SIGTERM"),
        _ = interrupt.recv() => Ok("SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn late_listeners_see_an_earlier_shutdown() {
        let (trigger, mut early) = channel();
        assert!(!early.is_requested());
        trigger.trigger();
        let mut late = trigger.subscribe();
        tokio::time::timeout(Duration::from_secs(1), early.wait())
            .await
            .expect("early listener woke");
        tokio::time::timeout(Duration::from_secs(1), late.wait())
            .await
            .expect("late listener woke");
        assert!(late.is_requested());
    }
}
