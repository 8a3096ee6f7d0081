//! `shardlog-client`: talking to a shardlog broker.
//!
//! - [`Producer`]: batched, idempotent, compressed sends with retries, to
//!   the shard owning each partition.
//! - [`Consumer`]: assigned partitions, seek, long-poll fetch with prefetch;
//!   [`OffsetReset`] (Kafka's `auto.offset.reset`) for positions out of range.
//! - [`GroupConsumer`]: partitions assigned by the broker, committed offsets.
//! - [`Admin`]: topics and groups.
//! - [`protocol`] and [`blocking`]: the wire layer underneath, for tools and tests.
//!
//! The SDK runs on tokio. It depends on `shardlog-wire` only: no glommio, no
//! engine. The `shardlog` command-line tool is built on it.
//!
//! ```no_run
//! use shardlog_client::{Admin, ClientConfig, Consumer, ConsumerConfig, NewTopic, Offset, Producer, ProducerConfig, ProducerRecord};
//!
//! # async fn demo() -> Result<(), shardlog_client::Error> {
//! let client = ClientConfig::new("127.0.0.1:7070");
//! Admin::new(client.clone()).create_topic(NewTopic::new("clicks", 4)).await?;
//!
//! let producer = Producer::new(ProducerConfig { client: client.clone(), ..Default::default() }).await?;
//! producer.send(ProducerRecord::new("clicks", "hello").key("user-1")).await?;
//! producer.close().await?;
//!
//! let mut consumer = Consumer::new(ConsumerConfig { client, ..Default::default() });
//! consumer.assign_all("clicks", Offset::Earliest).await?;
//! let records = consumer.poll().await?;
//! # Ok(()) }
//! ```
//!
//! # The protocol layer
//!
//! # Example
//!
//! ```no_run
//! use shardlog_client::blocking::Connection;
//! use shardlog_client::protocol::{NewTopic, Request, Response};
//!
//! let mut connection = Connection::connect("127.0.0.1:7070")?;
//! let topics = vec![NewTopic::new("clicks", 4)];
//! match connection.call(&Request::CreateTopics(topics))? {
//!     Response::Topics(results) => assert!(results[0].1.is_none()),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), shardlog_client::Error>(())
//! ```
#![deny(missing_docs)]

mod admin;
pub mod blocking;
mod cluster;
pub mod codec;
mod connection;
mod consumer;
mod error;
mod group;
mod producer;
pub mod protocol;

pub use admin::{Admin, GroupListing, PartitionDescription, TopicDescription};
pub use cluster::ClientConfig;
pub use connection::Connection;
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, Offset, OffsetReset};
pub use error::{BrokerError, Error};
pub use group::{GroupConsumer, GroupConsumerConfig};
pub use producer::{
    key_partition, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};
pub use protocol::{Acks, NewTopic};
pub use shardlog_wire::batch::Compression;
pub use shardlog_wire::protocol::fb::ErrorCode;
