//! `shardlog-wire`: the formats that cross a boundary in shardlog.
//!
//! It holds the **record batch format** ([`batch`]) and the **request/response
//! protocol** ([`protocol`]: frames, verification, generated flatbuffers types).
//! The record batch format is the unit that a
//! producer builds, the broker validates and appends, the disk stores and a
//! consumer reads back. It is Apache Kafka's RecordBatch v2 (magic 2), byte
//! for byte, so Kafka's tools and client libraries read it as it is. The
//! bytes are identical on disk and on the wire: the broker only stamps the
//! base offset and leader epoch into the header (two fields outside the CRC)
//! and never re-encodes anything.
//!
//! The crate does no I/O and knows nothing of glommio, so the client SDK can
//! use it without pulling in the broker.
//!
//! # Example
//!
//! ```
//! use shardlog_wire::batch::{Batch, BatchBuilder, BatchBuilderOptions, BatchLimits, set_base_offset};
//!
//! let mut builder = BatchBuilder::new(BatchBuilderOptions::default());
//! builder.append(1_700_000_000_000, Some(b"user-1"), Some(b"clicked"), &[]).unwrap();
//! builder.append(1_700_000_000_005, None, Some(b"scrolled"), &[]).unwrap();
//! let mut bytes = builder.finish().unwrap();
//!
//! // The broker assigns offsets by stamping the header; the CRC stays valid.
//! set_base_offset(&mut bytes, 42);
//! let batch = Batch::parse(bytes.freeze(), &BatchLimits::default()).unwrap();
//! assert_eq!(batch.header().base_offset, 42);
//! assert_eq!(batch.header().last_offset(), 43);
//!
//! let values: Vec<_> = batch.records().unwrap().map(|r| r.unwrap().value.unwrap()).collect();
//! assert_eq!(values, vec![&b"clicked"[..], &b"scrolled"[..]]);
//! ```
#![deny(missing_docs)]

pub mod batch;
mod error;
#[rustfmt::skip]
#[path = "generated/shardlog_generated.rs"]
#[allow(clippy::all, clippy::pedantic, missing_docs, unused_imports, dead_code, deprecated, non_camel_case_types, unsafe_op_in_unsafe_fn, mismatched_lifetime_syntaxes)]
mod generated;
pub mod offsets;
pub mod protocol;
pub mod varint;

pub use error::Error;
