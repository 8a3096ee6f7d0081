//! The `shardlog-bench` binary.

use shardlog_bench::config::{BenchConfig, ConfigError, Workload};
use shardlog_bench::embedded::EmbeddedCluster;
use shardlog_bench::omb::{OmbResult, OmbTotals, OmbWorkload};
use shardlog_bench::plan::Plan;

fn main() -> std::process::ExitCode {
    let config = match BenchConfig::from_args(std::env::args_os()) {
        Ok(config) => config,
        Err(ConfigError::Clap(error)) => error.exit(),
        Err(ConfigError::Invalid(message)) => {
            eprintln!("shardlog-bench: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    let plan = match plan(&config) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("shardlog-bench: {error:#}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&config, &plan) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardlog-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn plan(config: &BenchConfig) -> anyhow::Result<Plan> {
    match (&config.workload, &config.file) {
        (Workload::Omb, Some(file)) => {
            let omb = OmbWorkload::load(file)?;
            if omb.message_size_bytes < 16 {
                anyhow::bail!("{}: messageSize must be at least 16", file.display());
            }
            Ok(Plan::from_omb(config, &omb, &topic_suffix()))
        }
        _ => Ok(Plan::from_options(config)),
    }
}

/// A suffix that keeps one run's topics apart from another's on the same broker.
fn topic_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:07x}",
        (nanos ^ u128::from(std::process::id())) as u32 & 0x0fff_ffff
    )
}

fn run(config: &BenchConfig, plan: &Plan) -> anyhow::Result<()> {
    let embedded = if config.embedded {
        Some(EmbeddedCluster::start(config)?)
    } else {
        None
    };
    let (broker, metrics) = match &embedded {
        Some(cluster) => (cluster.bootstrap(), cluster.metrics_addrs()),
        None => (config.broker_addrs().join(","), config.metrics_addrs()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (report, histograms, sampled) =
        runtime.block_on(shardlog_bench::run::run(config, plan, &broker, &metrics))?;
    print!("{}", report.table());
    if let Some(path) = &config.json {
        report.write_json(path)?;
    }
    if let Some(path) = &config.omb_json {
        let totals = OmbTotals {
            publish: &histograms.publish,
            publish_delay: &histograms.publish_delay,
            end_to_end: &histograms.end_to_end,
        };
        OmbResult::new(&plan.omb_shape(), &sampled.windows, totals).write(path)?;
    }
    if let Some(path) = &config.plot {
        report.plot(path, &histograms)?;
    }
    Ok(())
}
