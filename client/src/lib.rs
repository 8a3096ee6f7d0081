//! `shardlog-client`: talking to a shardlog broker.
//!
//! Today: [`protocol`] (requests as plain values, encoded to frames;
//! responses decoded and verified into plain values) and [`blocking`] (one
//! connection over `std::net`). The async SDK (producer, consumer, admin)
//! and the `shardlog` CLI build on these.
//!
//! The crate depends on `shardlog-wire` only: no glommio, no engine.
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
//!     Response::Topics(results) => assert!(results[0].error.is_none()),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), shardlog_client::Error>(())
//! ```
#![deny(missing_docs)]

pub mod blocking;
mod error;
pub mod protocol;

pub use error::{BrokerError, Error};
pub use shardlog_wire::protocol::fb::ErrorCode;
