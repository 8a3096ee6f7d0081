//! The engine's side of fault injection and event recording. Without the
//! `fault-injection` feature (and outside tests) every hook compiles to
//! nothing: no branch, no allocation, no global state.

use std::path::Path;

/// The error to inject into a write round of segment `base_offset` in `dir`, if any.
#[inline(always)]
pub(crate) fn write_fault(dir: &Path, base_offset: u64) -> Option<std::io::Error> {
    #[cfg(any(test, feature = "fault-injection"))]
    {
        let path = crate::segment::log_path(dir, base_offset);
        crate::faults::check(crate::faults::FaultOp::Write, &path)
    }
    #[cfg(not(any(test, feature = "fault-injection")))]
    {
        let _ = (dir, base_offset);
        None
    }
}

/// The error to inject into an fdatasync of segment `base_offset` in `dir`, if any.
#[inline(always)]
pub(crate) fn sync_fault(dir: &Path, base_offset: u64) -> Option<std::io::Error> {
    #[cfg(any(test, feature = "fault-injection"))]
    {
        let path = crate::segment::log_path(dir, base_offset);
        crate::faults::check(crate::faults::FaultOp::Sync, &path)
    }
    #[cfg(not(any(test, feature = "fault-injection")))]
    {
        let _ = (dir, base_offset);
        None
    }
}

/// Records a [`crate::events::Event`] of the log in `$dir`; nothing at all
/// is evaluated without the feature.
macro_rules! record_event {
    ($dir:expr, $event:expr) => {{
        #[cfg(any(test, feature = "fault-injection"))]
        $crate::events::record($dir, $event);
    }};
}
pub(crate) use record_event;
