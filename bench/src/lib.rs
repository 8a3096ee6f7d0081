//! `shardlog-bench`: the benchmark harness, in the manner of the
//! OpenMessaging Benchmark. Workloads: `produce`, `consume` (catch-up from
//! the beginning), `consume-tail` and `e2e` (producers and consumers
//! together). Results: a table, `--json`, `--plot` (SVG).
//!
//! Criterion micro-benchmarks of the engine live in `engine/benches/`.

pub mod config;
pub mod embedded;
pub mod report;
pub mod run;
