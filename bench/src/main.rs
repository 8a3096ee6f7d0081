//! The `shardlog-bench` binary.

use clap::Parser;
use shardlog_bench::config::BenchConfig;
use shardlog_bench::embedded::EmbeddedBroker;

fn main() -> std::process::ExitCode {
    let config = BenchConfig::parse();
    if let Err(message) = config.validate() {
        eprintln!("shardlog-bench: {message}");
        return std::process::ExitCode::from(2);
    }
    match run(&config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardlog-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config: &BenchConfig) -> anyhow::Result<()> {
    let embedded = if config.embedded {
        Some(EmbeddedBroker::start(config)?)
    } else {
        None
    };
    let broker = embedded
        .as_ref()
        .map_or(config.broker.clone(), |b| b.addr.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (report, latency) = runtime.block_on(shardlog_bench::run::run(config, &broker))?;
    print!("{}", report.table());
    if let Some(rss) = embedded.as_ref().and_then(EmbeddedBroker::peak_rss_bytes) {
        println!("broker peak RSS: {:.1} MiB", rss as f64 / (1024.0 * 1024.0));
    }
    if let Some(path) = &config.json {
        report.write_json(path)?;
    }
    if let Some(path) = &config.plot {
        report.plot(path, &latency)?;
    }
    Ok(())
}
