//! Fault injection for the engine's segment I/O (tests and the
//! `fault-injection` feature only).
//!
//! Why beside the code: a full or failing disk is hard to produce on
//! demand, and the engine's handling of it (retriable `StorageFull`,
//! poisoning, [`crate::PartitionLog::recover`]) is exactly the code that
//! ordinary tests never run. As in TigerBeetle, the hooks sit where the
//! io_uring result is examined, so an injected error takes the same path
//! as a real one:
//!
//! ```text
//!  writer round ──► write_rc_at ──► result ──► faults::check(Write, segment path) ──► engine's match
//!  syncer / interval / roll / close / recover ──► fdatasync ──► faults::check(Sync, path) ──► match
//! ```
//!
//! A write fault replaces the result of a write that did run (so the
//! bytes may be on disk, as after a real EIO or a partial ENOSPC write);
//! a sync fault replaces the result of an fdatasync that did run.
//!
//! Faults are process-global (a `Mutex`, test-only): tests that run in
//! parallel in one binary keep apart by giving each fault a path filter
//! that only their own temporary directory matches.
//!
//! # Spec grammar
//!
//! [`arm_from_spec`] takes a comma-separated list of faults, for example
//! `sync:eio:path=mytopic-:after=2:count=1,write:enospc:path=x:count=*`:
//!
//! ```text
//!  spec   := fault ( "," fault )*
//!  fault  := op ":" errno ( ":" option )*
//!  op     := "write"              a segment write round (O_DIRECT, io_uring)
//!          | "sync"               an fdatasync of a segment file
//!  errno  := "eio" | "enospc"
//!  option := "path=" text         the segment file's path must contain text
//!                                 (default: every path; text has no ',' or ':')
//!          | "after=" u32         let this many matching operations succeed first (default 0)
//!          | "count=" u32 | "*"   then fail this many (default 1; "*" = until disarmed)
//! ```
//!
//! Whitespace around faults is ignored; an empty spec arms nothing. A spec
//! with an error arms nothing and names the bad part.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The I/O operation a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// A write round to a segment file.
    Write,
    /// An fdatasync of a segment file.
    Sync,
}

/// One armed fault: the next `fail_count` matching operations, after
/// `after_count` matching ones succeeded, fail with `errno`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The operation that fails.
    pub op: FaultOp,
    /// The OS error it fails with (`libc::EIO`, `libc::ENOSPC`).
    pub errno: i32,
    /// Only segment files whose path contains this match (empty: all).
    pub path_contains: String,
    /// Matching operations that succeed before the first failure.
    pub after_count: u32,
    /// Matching operations that fail; `u32::MAX` fails until disarmed.
    pub fail_count: u32,
}

impl Fault {
    /// A fault failing the next matching operation once with `errno`.
    pub fn new(op: FaultOp, errno: i32, path_contains: impl Into<String>) -> Fault {
        Fault {
            op,
            errno,
            path_contains: path_contains.into(),
            after_count: 0,
            fail_count: 1,
        }
    }

    /// Lets `after_count` matching operations succeed first.
    pub fn after(mut self, after_count: u32) -> Fault {
        self.after_count = after_count;
        self
    }

    /// Fails `fail_count` operations (`u32::MAX`: until disarmed).
    pub fn count(mut self, fail_count: u32) -> Fault {
        self.fail_count = fail_count;
        self
    }
}

#[derive(Debug)]
struct Armed {
    fault: Fault,
    skipped_count: u32,
    failed_count: u32,
}

static ARMED: Mutex<Vec<Armed>> = Mutex::new(Vec::new());
/// Faults armed and not spent; lets `check` skip the lock when nothing is armed.
static ARMED_COUNT: AtomicUsize = AtomicUsize::new(0);

fn armed() -> MutexGuard<'static, Vec<Armed>> {
    // A test that panicked while holding the lock leaves nothing half-changed.
    ARMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Arms one fault.
pub fn arm(fault: Fault) {
    let mut armed = armed();
    if fault.fail_count > 0 {
        armed.push(Armed {
            fault,
            skipped_count: 0,
            failed_count: 0,
        });
    }
    ARMED_COUNT.store(armed.len(), Ordering::SeqCst);
}

/// Parses `spec` (see the module doc for the grammar) and arms every fault in it.
///
/// # Errors
/// A message naming the first part that does not parse; nothing is armed then.
pub fn arm_from_spec(spec: &str) -> Result<(), String> {
    for fault in parse_spec(spec)? {
        arm(fault);
    }
    Ok(())
}

/// Parses `spec` without arming anything.
///
/// # Errors
/// A message naming the first part that does not parse.
pub fn parse_spec(spec: &str) -> Result<Vec<Fault>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(parse_fault)
        .collect()
}

fn parse_fault(text: &str) -> Result<Fault, String> {
    let mut fields = text.split(':');
    let op = match fields.next() {
        Some("write") => FaultOp::Write,
        Some("sync") => FaultOp::Sync,
        other => {
            return Err(format!(
                "fault {text:?}: operation {other:?} is not write or sync"
            ))
        }
    };
    let errno = match fields.next() {
        Some("eio") => libc::EIO,
        Some("enospc") => libc::ENOSPC,
        other => {
            return Err(format!(
                "fault {text:?}: errno {other:?} is not eio or enospc"
            ))
        }
    };
    let mut fault = Fault::new(op, errno, "");
    for option in fields {
        let number = |value: &str| {
            value
                .parse::<u32>()
                .map_err(|_| format!("fault {text:?}: {option:?} needs a number"))
        };
        match option.split_once('=') {
            Some(("path", value)) if !value.is_empty() => fault.path_contains = value.to_owned(),
            Some(("after", value)) => fault.after_count = number(value)?,
            Some(("count", "*")) => fault.fail_count = u32::MAX,
            Some(("count", value)) => fault.fail_count = number(value)?,
            _ => {
                return Err(format!(
                    "fault {text:?}: unknown option {option:?} (path=, after=, count=)"
                ))
            }
        }
    }
    Ok(fault)
}

/// Disarms every fault whose path filter is exactly `path_contains`.
pub fn disarm(path_contains: &str) {
    let mut armed = armed();
    armed.retain(|a| a.fault.path_contains != path_contains);
    ARMED_COUNT.store(armed.len(), Ordering::SeqCst);
}

/// Disarms every fault.
pub fn disarm_all() {
    let mut armed = armed();
    armed.clear();
    ARMED_COUNT.store(0, Ordering::SeqCst);
}

/// Errors injected so far by the armed faults whose path filter is exactly `path_contains`.
pub fn injected_count(path_contains: &str) -> u64 {
    armed()
        .iter()
        .filter(|a| a.fault.path_contains == path_contains)
        .map(|a| u64::from(a.failed_count))
        .sum()
}

/// The error to inject into this operation on `path`, if a fault says so.
/// Called where the engine examines the real result.
pub(crate) fn check(op: FaultOp, path: &Path) -> Option<std::io::Error> {
    if ARMED_COUNT.load(Ordering::SeqCst) == 0 {
        return None;
    }
    let path = path.to_string_lossy();
    let mut armed = armed();
    let matching = armed.iter_mut().find(|a| {
        a.fault.op == op
            && path.contains(a.fault.path_contains.as_str())
            && a.failed_count < a.fault.fail_count
    })?;
    if matching.skipped_count < matching.fault.after_count {
        matching.skipped_count += 1;
        return None;
    }
    matching.failed_count += 1;
    let errno = matching.fault.errno;
    tracing::warn!(?op, path = %path, errno, "injecting an I/O fault");
    Some(std::io::Error::from_raw_os_error(errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_defaults_and_errors_name_the_bad_part() {
        let faults =
            parse_spec("sync:eio:path=mytopic-:after=2:count=1, write:enospc:path=x:count=*")
                .unwrap();
        assert_eq!(
            faults,
            vec![
                Fault::new(FaultOp::Sync, libc::EIO, "mytopic-")
                    .after(2)
                    .count(1),
                Fault::new(FaultOp::Write, libc::ENOSPC, "x").count(u32::MAX),
            ]
        );
        assert_eq!(
            parse_spec("write:eio").unwrap(),
            vec![Fault::new(FaultOp::Write, libc::EIO, "")]
        );
        assert!(parse_spec("").unwrap().is_empty());
        for bad in [
            "read:eio",
            "sync:eperm",
            "sync",
            "sync:eio:count=x",
            "sync:eio:size=3",
            "sync:eio:path=",
        ] {
            let error = parse_spec(bad).unwrap_err();
            assert!(error.contains(bad), "{error:?} names {bad:?}");
        }
    }

    #[test]
    fn a_fault_skips_then_fails_its_count_then_is_spent() {
        let filter = "/faults-unit-test-skip-then-fail/";
        arm(Fault::new(FaultOp::Sync, libc::EIO, filter)
            .after(2)
            .count(2));
        let path = Path::new("/tmp/faults-unit-test-skip-then-fail/00000000000000000000.log");
        let other = Path::new("/tmp/elsewhere/00000000000000000000.log");
        let outcomes: Vec<bool> = (0..6)
            .map(|_| {
                assert!(check(FaultOp::Sync, other).is_none());
                assert!(check(FaultOp::Write, path).is_none());
                check(FaultOp::Sync, path).is_some()
            })
            .collect();
        assert_eq!(outcomes, [false, false, true, true, false, false]);
        assert_eq!(injected_count(filter), 2);
        let error = {
            disarm(filter);
            arm(Fault::new(FaultOp::Write, libc::ENOSPC, filter));
            check(FaultOp::Write, path).unwrap()
        };
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
        disarm(filter);
        assert_eq!(injected_count(filter), 0);
    }
}
