//! A shard-local shutdown flag that tasks can wait on.

use std::cell::{Cell, RefCell};

use futures_channel::oneshot;

/// Started once; every waiter wakes.
#[derive(Debug, Default)]
pub struct Shutdown {
    started: Cell<bool>,
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
