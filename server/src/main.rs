//! The `shardlog-server` binary: parses flags, sets up logging, runs the broker.

use clap::Parser;
use shardlog_server::config::{Cli, ServerConfig};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match ServerConfig::resolve(cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("shardlog-server: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match shardlog_server::server::run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardlog-server: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
