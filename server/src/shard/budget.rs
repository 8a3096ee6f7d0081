//! Memory budgets: what a connection and a shard may hold at once.
//!
//! Every byte a connection holds (request bodies as they arrive, fetched
//! data until it is written) is charged to two semaphores: the
//! connection's own (`connection_memory_bytes_max`) and the shard's
//! (`shard_memory_bytes_max`). A [`MemoryCharge`] gives its bytes back when
//! it is dropped, so no path can leak budget: a cancelled handler, a
//! closed connection and a finished response all end by dropping it.
//!
//! Reading a request waits for budget, which is how a full shard pushes
//! back: it stops reading sockets. Nothing that holds budget waits for
//! budget without a deadline (a fetch takes what is free, see `fetch.rs`),
//! so the waits always end.

use std::rc::Rc;

use glommio::sync::Semaphore;

/// The two budgets a connection's bytes are charged to.
#[derive(Debug)]
pub struct Budget {
    connection: Semaphore,
    shard: Rc<Semaphore>,
}

impl Budget {
    /// A connection's budget of `connection_bytes_max`, inside `shard`'s.
    pub fn new(connection_bytes_max: u64, shard: Rc<Semaphore>) -> Rc<Budget> {
        Rc::new(Budget {
            connection: Semaphore::new(connection_bytes_max),
            shard,
        })
    }

    /// An empty charge against this budget.
    pub fn charge(self: &Rc<Self>) -> MemoryCharge {
        MemoryCharge {
            bytes: 0,
            budget: self.clone(),
        }
    }

    /// Bytes both budgets could give at once now.
    pub fn available_bytes(&self) -> u64 {
        self.connection.available().min(self.shard.available())
    }
}

/// Bytes charged to a [`Budget`], given back on drop.
#[derive(Debug)]
pub struct MemoryCharge {
    bytes: u64,
    budget: Rc<Budget>,
}

impl MemoryCharge {
    /// The bytes charged.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Charges `bytes` more, waiting until both budgets have them.
    ///
    /// # Errors
    /// A budget was closed (never, in practice: budgets live as long as the shard).
    pub async fn grow(&mut self, bytes: u64) -> Result<(), String> {
        if bytes == 0 {
            return Ok(());
        }
        let budget = &self.budget;
        budget
            .connection
            .acquire(bytes)
            .await
            .map_err(|e| e.to_string())?;
        if let Err(error) = budget.shard.acquire(bytes).await {
            budget.connection.signal(bytes);
            return Err(error.to_string());
        }
        self.bytes += bytes;
        Ok(())
    }

    /// Charges up to `bytes` more without waiting; returns how many were charged.
    pub fn grow_up_to(&mut self, bytes: u64) -> u64 {
        let take = bytes.min(self.budget.available_bytes());
        if take == 0 {
            return 0;
        }
        let budget = &self.budget;
        if !matches!(budget.connection.try_acquire(take), Ok(true)) {
            return 0;
        }
        if !matches!(budget.shard.try_acquire(take), Ok(true)) {
            budget.connection.signal(take);
            return 0;
        }
        self.bytes += take;
        take
    }

    /// Gives back everything above `bytes`.
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            let extra = self.bytes - bytes;
            self.budget.connection.signal(extra);
            self.budget.shard.signal(extra);
            self.bytes = bytes;
        }
    }
}

impl Drop for MemoryCharge {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_come_back_on_drop_and_both_budgets_bind() {
        glommio::LocalExecutor::default().run(async {
            let shard = Rc::new(Semaphore::new(100));
            let a = Budget::new(60, shard.clone());
            let b = Budget::new(60, shard.clone());
            let mut first = a.charge();
            first.grow(50).await.unwrap();
            assert_eq!(a.available_bytes(), 10, "the connection's budget binds");
            let mut second = b.charge();
            assert_eq!(second.grow_up_to(60), 50, "the shard's budget binds");
            assert_eq!(shard.available(), 0);
            second.shrink_to(20);
            assert_eq!(shard.available(), 30);
            drop(first);
            drop(second);
            assert_eq!(shard.available(), 100);
            assert_eq!(a.available_bytes(), 60);
        });
    }
}
