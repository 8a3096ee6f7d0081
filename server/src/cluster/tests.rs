//! Node tests (WIP).
