//! A shard-local shutdown flag that tasks can wait on.

use std::cell::{Cell, RefCell};

use futures_channel::oneshot;

/// Started once; every waiter wakes.
#[derive(Debug, Default)]
pub struct Shutdown {
    started: Cell<bool>,
    /// Set when a clustered broker begins its controlled shutdown (it stops heartbeating).
    leaving: Cell<bool>,
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

impl Shutdown {
    /// Starts the shutdown and wakes every waiter.
    pub fn start(&self) {
        self.started.set(true);
        for waiter in self.waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Marks the start of a controlled shutdown: the broker still serves,
    /// but no longer heartbeats, so the controller keeps it fenced.
    pub fn begin_leaving(&self) {
        self.leaving.set(true);
    }

    /// True once a controlled shutdown began (or the shutdown itself).
    pub fn is_leaving(&self) -> bool {
        self.leaving.get() || self.started.get()
    }

    /// True once the shutdown started.
    pub fn is_started(&self) -> bool {
        self.started.get()
    }

    /// Resolves when the shutdown starts.
    pub async fn wait(&self) {
        if self.started.get() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push(tx);
        let _ = rx.await;
    }
}
