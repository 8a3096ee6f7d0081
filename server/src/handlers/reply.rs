//! What a handler answers with: the response message, its raw payload, and
//! the memory the payload holds until the connection has written it.

use std::rc::Rc;

use bytes::Bytes;
use glommio::io::{BufferedFile, ReadResult};

use crate::shard::budget::{Budget, MemoryCharge};

/// A response ready to be written: the flatbuffer, then the raw payload.
#[derive(Debug)]
pub struct Outgoing {
    pub message: Vec<u8>,
    pub payload: Vec<PayloadPart>,
}

/// A response and the memory its payload holds, given back once it is written.
#[derive(Debug)]
pub struct Answer {
    pub outgoing: Outgoing,
    pub charge: Option<MemoryCharge>,
}

impl From<Outgoing> for Answer {
    fn from(outgoing: Outgoing) -> Answer {
        Answer {
            outgoing,
            charge: None,
        }
    }
}

/// A piece of a response's raw payload.
#[derive(Debug)]
pub enum PayloadPart {
    /// Bytes in memory (tail cache, or copied from another shard).
    Bytes(Bytes),
    /// Bytes read with O_DIRECT.
    Direct(ReadResult),
    /// A range of a sealed segment, sent with sendfile.
    File {
        file: Rc<BufferedFile>,
        position: u64,
        length: u64,
    },
}

impl PayloadPart {
    /// Bytes in this part.
    pub fn len(&self) -> u64 {
        match self {
            PayloadPart::Bytes(bytes) => bytes.len() as u64,
            PayloadPart::Direct(result) => result.len() as u64,
            PayloadPart::File { length, .. } => *length,
        }
    }

    /// True when the part holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a handler may know of the connection its request came on.
#[derive(Debug)]
pub struct ConnectionContext {
    /// The connection's memory budget (inside the shard's).
    pub budget: Rc<Budget>,
}
