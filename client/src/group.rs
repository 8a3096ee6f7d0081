//! The group consumer: partitions assigned by the broker, offsets committed.
//!
//! ```text
//!  poll ─► commit what the last poll returned (auto-commit, when due)
//!       ─► heartbeat when due ─► revoked? commit them, on_revoked, drop them
//!                             ─► granted? fetch their committed offsets, seek, on_assigned
//!       ─► fetch from the assigned partitions
//! ```
//!
//! At least once: a record handed to the application is committed only at
//! the next poll (or an explicit commit, a revocation, or close), so a crash
//! redelivers, and nothing is skipped. Heartbeats ride on `poll`: call it at
//! least once per session timeout.
//!
//! A granted partition with no committed offset starts where the
//! consumer's `auto_offset_reset` says (earliest or latest); under `none`
//! it stays without a position, and every poll fails with
//! [`Error::NoCommittedOffset`] (still heartbeating first) until the
//! application seeks it, as Kafka's `NoOffsetForPartitionException`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::consumer::{Consumer, ConsumerConfig, ConsumerRecord, Offset};
use crate::protocol::{Request, Response};
use crate::{Error, ErrorCode};

/// Group consumer settings.
#[derive(Debug, Clone)]
pub struct GroupConsumerConfig {
    /// Fetch settings and the broker address.
    pub consumer: ConsumerConfig,
    /// The group.
    pub group_id: String,
    /// Commit positions this often from `poll`; `None` for manual commits only [default 5 s].
    pub auto_commit_interval: Option<Duration>,
    /// The broker drops the member after this long without a heartbeat [default 10 s].
    pub session_timeout: Duration,
    /// "sticky" [default] or "range"; decided by the group's first member.
    pub assignor: String,
}

impl GroupConsumerConfig {
    /// Defaults for `group_id`.
    pub fn new(consumer: ConsumerConfig, group_id: impl Into<String>) -> GroupConsumerConfig {
        GroupConsumerConfig {
            consumer,
            group_id: group_id.into(),
            auto_commit_interval: Some(Duration::from_secs(5)),
            session_timeout: Duration::from_secs(10),
            assignor: "sticky".into(),
        }
    }
}

type Partitions = Vec<(String, u32)>;
type Callback = Box<dyn FnMut(&[(String, u32)]) + Send>;

/// A member of a consumer group.
///
/// ```no_run
/// # async fn demo() -> Result<(), shardlog_client::Error> {
/// use shardlog_client::{ConsumerConfig, GroupConsumer, GroupConsumerConfig};
/// let mut consumer = GroupConsumer::new(GroupConsumerConfig::new(ConsumerConfig::default(), "billing"));
/// consumer.subscribe(&["orders"]);
/// loop {
///     for record in consumer.poll().await? {
///         println!("{}/{}", record.partition, record.offset);
///     }
/// #   break;
/// }
/// consumer.close().await?; // commits and leaves
/// # Ok(()) }
/// ```
pub struct GroupConsumer {
    consumer: Consumer,
    cluster: Arc<Cluster>,
    config: GroupConsumerConfig,
    topics: Vec<String>,
    member_id: String,
    member_epoch: i32,
    assigned: BTreeSet<(String, u32)>,
    /// Assigned partitions with no committed offset, under `auto_offset_reset = none`.
    unpositioned: BTreeSet<(String, u32)>,
    heartbeat_interval: Duration,
    next_heartbeat: Instant,
    next_commit: Option<Instant>,
    on_assigned: Option<Callback>,
    on_revoked: Option<Callback>,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.config.group_id)
            .field("member_id", &self.member_id)
            .field("assigned", &self.assigned)
            .finish_non_exhaustive()
    }
}

impl GroupConsumer {
    /// A member-to-be of `config.group_id`; it joins at its first poll.
    pub fn new(config: GroupConsumerConfig) -> GroupConsumer {
        let consumer = Consumer::new(config.consumer.clone());
        let cluster = consumer.cluster();
        GroupConsumer {
            consumer,
            cluster,
            next_commit: config.auto_commit_interval.map(|i| Instant::now() + i),
            config,
            topics: Vec::new(),
            member_id: String::new(),
            member_epoch: 0,
            assigned: BTreeSet::new(),
            unpositioned: BTreeSet::new(),
            heartbeat_interval: Duration::from_millis(500),
            next_heartbeat: Instant::now(),
            on_assigned: None,
            on_revoked: None,
        }
    }

    /// Sets the topics to consume (sent with the next heartbeat).
    pub fn subscribe(&mut self, topics: &[&str]) {
        self.topics = topics.iter().map(|t| t.to_string()).collect();
        self.next_heartbeat = Instant::now();
    }

    /// Called with the partitions granted to this member.
    pub fn on_assigned(&mut self, callback: impl FnMut(&[(String, u32)]) + Send + 'static) {
        self.on_assigned = Some(Box::new(callback));
    }

    /// Called with the partitions taken from this member, after their positions were committed.
    pub fn on_revoked(&mut self, callback: impl FnMut(&[(String, u32)]) + Send + 'static) {
        self.on_revoked = Some(Box::new(callback));
    }

    /// The partitions this member consumes now.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.assigned.iter().cloned().collect()
    }

    /// The member id the coordinator gave this member (empty before the first heartbeat).
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// Commits what earlier polls returned, heartbeats, and returns the next records.
    ///
    /// # Errors
    /// [`Error::NoCommittedOffset`] and [`Error::OffsetOutOfRange`] under
    /// `auto_offset_reset = none`; broker and I/O errors; a member the group
    /// dropped rejoins by itself.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>, Error> {
        if self.next_commit.is_some_and(|at| Instant::now() >= at) {
            self.commit().await?;
            self.next_commit = self.config.auto_commit_interval.map(|i| Instant::now() + i);
        }
        if Instant::now() >= self.next_heartbeat {
            self.heartbeat().await?;
        }
        if let Some((topic, partition)) = self.unpositioned.first() {
            return Err(Error::NoCommittedOffset {
                group: self.config.group_id.clone(),
                topic: topic.clone(),
                partition: *partition,
            });
        }
        if self.assigned.is_empty() {
            tokio::time::sleep(self.heartbeat_interval.min(self.config.consumer.max_wait)).await;
            return Ok(Vec::new());
        }
        self.consumer.poll().await
    }

    async fn heartbeat(&mut self) -> Result<(), Error> {
        let request = Request::GroupHeartbeat {
            group_id: self.config.group_id.clone(),
            member_id: self.member_id.clone(),
            member_epoch: self.member_epoch,
            subscribed_topics: Some(self.topics.clone()),
            owned: self.assignment(),
            session_timeout_ms: self.config.session_timeout.as_millis() as u32,
            assignor: self.config.assignor.clone(),
        };
        let response = match self
            .cluster
            .call_coordinator(&self.config.group_id, request)
            .await
        {
            Err(Error::Broker(error)) if error.code == ErrorCode::UnknownMemberId => {
                // Dropped by the group (session expired): give everything up and rejoin.
                let lost = self.assignment();
                self.release(&lost);
                self.member_epoch = 0;
                self.next_heartbeat = Instant::now();
                return Ok(());
            }
            other => other?,
        };
        let Response::GroupHeartbeat {
            member_id,
            member_epoch,
            heartbeat_interval_ms,
            assignment,
        } = response
        else {
            return Err(Error::Protocol(
                "heartbeat answered with another response".into(),
            ));
        };
        self.member_id = member_id;
        self.member_epoch = member_epoch;
        self.heartbeat_interval = Duration::from_millis(u64::from(heartbeat_interval_ms.max(50)));
        self.next_heartbeat = Instant::now() + self.heartbeat_interval;
        self.reconcile(assignment.into_iter().collect()).await
    }

    async fn reconcile(&mut self, target: BTreeSet<(String, u32)>) -> Result<(), Error> {
        let revoked: Partitions = self.assigned.difference(&target).cloned().collect();
        if !revoked.is_empty() {
            self.commit_partitions(&revoked).await?;
            if let Some(callback) = self.on_revoked.as_mut() {
                callback(&revoked);
            }
            self.release(&revoked);
            // Tell the coordinator at once, so the new owners get them.
            self.next_heartbeat = Instant::now();
        }
        let granted: Partitions = target.difference(&self.assigned).cloned().collect();
        if !granted.is_empty() {
            let request = Request::OffsetFetch {
                group_id: self.config.group_id.clone(),
                partitions: Some(granted.clone()),
            };
            let Response::Offsets(committed) = self
                .cluster
                .call_coordinator(&self.config.group_id, request)
                .await?
            else {
                return Err(Error::Protocol(
                    "offset fetch answered with another response".into(),
                ));
            };
            let reset = self.config.consumer.auto_offset_reset.to_offset();
            for (topic, partition) in &granted {
                let offset = committed
                    .iter()
                    .find(|c| &c.topic == topic && c.partition == *partition)
                    .map_or(-1, |c| c.offset);
                let from = u64::try_from(offset).ok().map(Offset::At).or(reset);
                match from {
                    Some(from) => self.consumer.seek(topic, *partition, from),
                    None => {
                        self.unpositioned.insert((topic.clone(), *partition));
                    }
                }
                self.assigned.insert((topic.clone(), *partition));
            }
            if let Some(callback) = self.on_assigned.as_mut() {
                callback(&granted);
            }
        }
        Ok(())
    }

    fn release(&mut self, partitions: &[(String, u32)]) {
        for (topic, partition) in partitions {
            self.consumer.unassign(topic, *partition);
            let key = (topic.clone(), *partition);
            self.unpositioned.remove(&key);
            self.assigned.remove(&key);
        }
    }

    /// Moves a partition's position (for example, to just after the last
    /// record processed, or to give a partition with no committed offset a
    /// start under `auto_offset_reset = none`); the next commit stores it.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) {
        self.unpositioned.remove(&(topic.to_string(), partition));
        self.consumer.seek(topic, partition, Offset::At(offset));
    }

    /// Commits the positions of every assigned partition and waits for it.
    ///
    /// # Errors
    /// Broker and I/O errors.
    pub async fn commit(&mut self) -> Result<(), Error> {
        let assigned = self.assignment();
        self.commit_partitions(&assigned).await
    }

    /// Commits the positions of every assigned partition without waiting;
    /// the returned task resolves to the outcome.
    pub fn commit_async(&self) -> tokio::task::JoinHandle<Result<(), Error>> {
        let request = self.commit_request(&self.assignment());
        let cluster = self.cluster.clone();
        let group_id = self.config.group_id.clone();
        tokio::spawn(async move {
            match request {
                Some(request) => cluster
                    .call_coordinator(&group_id, request)
                    .await
                    .map(|_| ()),
                None => Ok(()),
            }
        })
    }

    fn commit_request(&self, partitions: &[(String, u32)]) -> Option<Request> {
        let wanted: BTreeSet<&(String, u32)> = partitions.iter().collect();
        let offsets: Vec<((String, u32), i64)> = self
            .consumer
            .positions()
            .into_iter()
            .filter(|(tp, _)| wanted.contains(tp))
            .map(|(tp, offset)| (tp, offset as i64))
            .collect();
        (!offsets.is_empty()).then(|| Request::OffsetCommit {
            group_id: self.config.group_id.clone(),
            member_id: self.member_id.clone(),
            offsets,
        })
    }

    async fn commit_partitions(&mut self, partitions: &[(String, u32)]) -> Result<(), Error> {
        let Some(request) = self.commit_request(partitions) else {
            return Ok(());
        };
        let group_id = self.config.group_id.clone();
        match self.cluster.call_coordinator(&group_id, request).await {
            Err(Error::Broker(error))
                if error.code == ErrorCode::UnknownMemberId && self.member_epoch > 0 =>
            {
                // The coordinator does not know this member: it moved to
                // another broker (membership lives in its memory), or the
                // session expired. Join again, keeping what is still
                // assigned, and commit that.
                self.member_epoch = 0;
                Box::pin(self.heartbeat()).await?;
                let still_ours: Vec<(String, u32)> = partitions
                    .iter()
                    .filter(|p| self.assigned.contains(*p))
                    .cloned()
                    .collect();
                match self.commit_request(&still_ours) {
                    Some(request) => self
                        .cluster
                        .call_coordinator(&group_id, request)
                        .await
                        .map(|_| ()),
                    None => Ok(()),
                }
            }
            other => other.map(|_| ()),
        }
    }

    /// Commits, leaves the group (its partitions go to the others at once), and stops.
    ///
    /// # Errors
    /// Broker and I/O errors.
    pub async fn close(mut self) -> Result<(), Error> {
        self.commit().await?;
        if !self.member_id.is_empty() {
            let request = Request::GroupHeartbeat {
                group_id: self.config.group_id.clone(),
                member_id: self.member_id.clone(),
                member_epoch: -1,
                subscribed_topics: None,
                owned: Vec::new(),
                session_timeout_ms: self.config.session_timeout.as_millis() as u32,
                assignor: String::new(),
            };
            self.cluster
                .call_coordinator(&self.config.group_id, request)
                .await?;
        }
        Ok(())
    }
}
