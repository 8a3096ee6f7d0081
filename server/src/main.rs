//! The `shardlog-server` binary: parses flags, sets up logging, runs the broker.

use std::io::IsTerminal;

use clap::Parser;
use shardlog_server::config::{Cli, LogFormat, ServerConfig};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let descriptors_max = shardlog_server::server::raise_file_limit();
    let config = match ServerConfig::resolve(cli, descriptors_max) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("shardlog-server: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(&config);
    abort_on_panic();
    #[cfg(feature = "fault-injection")]
    if let Ok(spec) = std::env::var("SHARDLOG_FAULTS") {
        if let Err(error) = shardlog_engine::faults::arm_from_spec(&spec) {
            eprintln!("shardlog-server: SHARDLOG_FAULTS: {error}");
            return std::process::ExitCode::from(2);
        }
        tracing::warn!(%spec, "fault injection armed (a test build)");
    }
    match shardlog_server::server::run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardlog-server: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &ServerConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// A panic anywhere (a shard thread included) ends the whole process: a
/// broker missing one shard would leave that shard's partitions and every
/// call to it hanging. Release builds also set `panic = "abort"`.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(%info, "panic: stopping the broker");
        report(info);
        std::process::abort();
    }));
}
