//! `shardlog-bench`: the benchmark harness, in the manner of the
//! OpenMessaging Benchmark. Workloads: `produce`, `consume` (catch-up from
//! the beginning), `consume-tail` and `e2e` (producers and consumers
//! together), `group` (consumer-group members at the tail) and `workload
//! FILE.yaml` (an OMB workload file). Results: a table, `--json`,
//! `--omb-json` (OMB's result format), `--plot` (SVG or PNG), each with the
//! CPU both processes spent per GB moved. The broker is one at `--broker`,
//! a cluster's bootstrap list there, or started by `--embedded` (a local
//! cluster with `--brokers 3`); `--replication-factor` is that of the
//! topics the run creates.
//!
//! Criterion micro-benchmarks of the engine live in `engine/benches/`.

pub mod config;
pub mod embedded;
pub mod omb;
pub mod plan;
pub mod report;
pub mod resources;
pub mod run;
pub mod window;
