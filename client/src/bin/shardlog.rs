//! `shardlog`: the command-line tool. Topics, produce from stdin, consume to stdout.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use shardlog_client::{
    Acks, Admin, ClientConfig, Compression, Consumer, ConsumerConfig, Error, NewTopic, Offset,
    Producer, ProducerConfig, ProducerRecord,
};
use tokio::io::AsyncBufReadExt;

#[derive(Debug, Parser)]
#[command(
    name = "shardlog",
    version,
    about = "Talk to a shardlog broker: topics, produce, consume."
)]
struct Cli {
    /// The broker's address.
    #[arg(
        long,
        global = true,
        env = "SHARDLOG_BROKER",
        default_value = "127.0.0.1:7070"
    )]
    broker: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Send each line of stdin as one record.
    Produce(ProduceArgs),
    /// Print records to stdout, one value per line.
    Consume(ConsumeArgs),
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        /// The topic.
        name: String,
        /// Its number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
    },
    /// List topics.
    List,
    /// Show a topic's partitions, shards and offsets.
    Describe {
        /// The topic.
        name: String,
    },
    /// Delete a topic and its data.
    Delete {
        /// The topic.
        name: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AcksArg {
    None,
    Leader,
    All,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompressionArg {
    None,
    Lz4,
    Zstd,
}

#[derive(Debug, Args)]
struct ProduceArgs {
    /// The topic.
    topic: String,
    /// Send every record to this partition (default: by key, or sticky).
    #[arg(long)]
    partition: Option<u32>,
    /// Split each line at the first separator into key and value.
    #[arg(long)]
    key_separator: Option<String>,
    /// When the broker answers.
    #[arg(long, value_enum, default_value = "all")]
    acks: AcksArg,
    /// Codec of each batch.
    #[arg(long, value_enum, default_value = "none")]
    compression: CompressionArg,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    /// The topic.
    topic: String,
    /// Read only this partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Start at the first offset still stored (default: the end).
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Start at this offset.
    #[arg(long)]
    offset: Option<u64>,
    /// Stop after this many records.
    #[arg(long)]
    max_records: Option<u64>,
    /// Stop after this long with nothing new.
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
    /// Print `partition<TAB>offset<TAB>value`.
    #[arg(long)]
    print_offsets: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("shardlog: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let client = ClientConfig::new(cli.broker.clone());
    let reports_own_errors = matches!(cli.command, Command::Produce(_));
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Topic(command) => topic(client, command).await,
            Command::Produce(args) => produce(client, args).await,
            Command::Consume(args) => consume(client, args).await,
        }
    });
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if reports_own_errors => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("shardlog: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn topic(client: ClientConfig, command: TopicCommand) -> Result<(), Error> {
    let admin = Admin::new(client);
    match command {
        TopicCommand::Create { name, partitions } => {
            admin.create_topic(NewTopic::new(&name, partitions)).await?;
            println!("created topic {name} with {partitions} partitions");
        }
        TopicCommand::List => {
            for name in admin.list_topics().await? {
                println!("{name}");
            }
        }
        TopicCommand::Describe { name } => {
            let topic = admin.describe_topic(&name).await?;
            println!("topic {} partitions {}", topic.name, topic.partitions.len());
            println!("partition\tshard\tlog_start_offset\tlog_end_offset");
            for p in topic.partitions {
                println!(
                    "{}\t{}\t{}\t{}",
                    p.partition, p.shard, p.log_start_offset, p.high_watermark
                );
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

/// Deliveries awaited at once before reading more of stdin.
const DELIVERIES_IN_FLIGHT_MAX: usize = 10_000;

/// Produce reports its own error, so that `acknowledged: <n>` stays the last line on stderr.
async fn produce(client: ClientConfig, args: ProduceArgs) -> Result<(), Error> {
    let mut acknowledged = 0u64;
    let result = produce_lines(client, &args, &mut acknowledged).await;
    if let Err(error) = &result {
        eprintln!("shardlog: {error}");
    }
    eprintln!("acknowledged: {acknowledged}");
    result.map_err(|_| Error::Closed)
}

async fn produce_lines(
    client: ClientConfig,
    args: &ProduceArgs,
    acknowledged: &mut u64,
) -> Result<(), Error> {
    let acks = match args.acks {
        AcksArg::None => Acks::None,
        AcksArg::Leader => Acks::Leader,
        AcksArg::All => Acks::All,
    };
    let compression = match args.compression {
        CompressionArg::None => Compression::None,
        CompressionArg::Lz4 => Compression::Lz4,
        CompressionArg::Zstd => Compression::Zstd,
    };
    let config = ProducerConfig {
        client,
        acks,
        compression,
        delivery_timeout: Duration::from_secs(30),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(config).await?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut deliveries = std::collections::VecDeque::new();
    while let Some(line) = lines.next_line().await? {
        let mut record = match args
            .key_separator
            .as_deref()
            .and_then(|sep| line.split_once(sep))
        {
            Some((key, value)) => {
                ProducerRecord::new(&args.topic, value.to_string()).key(key.to_string())
            }
            None => ProducerRecord::new(&args.topic, line),
        };
        record.partition = args.partition;
        deliveries.push_back(producer.enqueue(record).await?);
        if deliveries.len() >= DELIVERIES_IN_FLIGHT_MAX {
            while deliveries.len() > DELIVERIES_IN_FLIGHT_MAX / 2 {
                await_delivery(&mut deliveries, acknowledged).await?;
            }
        }
    }
    producer.flush().await?;
    while !deliveries.is_empty() {
        await_delivery(&mut deliveries, acknowledged).await?;
    }
    producer.close().await
}

async fn await_delivery(
    deliveries: &mut std::collections::VecDeque<shardlog_client::DeliveryFuture>,
    acknowledged: &mut u64,
) -> Result<(), Error> {
    if let Some(delivery) = deliveries.pop_front() {
        delivery.await?;
        *acknowledged += 1;
    }
    Ok(())
}

async fn consume(client: ClientConfig, args: ConsumeArgs) -> Result<(), Error> {
    let from = match (args.offset, args.from_beginning) {
        (Some(offset), _) => Offset::At(offset),
        (None, true) => Offset::Earliest,
        (None, false) => Offset::Latest,
    };
    let mut consumer = Consumer::new(ConsumerConfig {
        client,
        max_wait: Duration::from_millis(200),
        ..ConsumerConfig::default()
    });
    match args.partition {
        Some(partition) => consumer.assign(&args.topic, &[partition], from),
        None => {
            consumer.assign_all(&args.topic, from).await?;
        }
    }
    let idle = args.idle_timeout_ms.map(Duration::from_millis);
    let mut last_record = tokio::time::Instant::now();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        if args.max_records.is_some_and(|max| printed >= max) {
            break;
        }
        let records = consumer.poll().await?;
        if records.is_empty() {
            if idle.is_some_and(|idle| last_record.elapsed() >= idle) {
                break;
            }
            continue;
        }
        last_record = tokio::time::Instant::now();
        for record in records {
            if args.max_records.is_some_and(|max| printed >= max) {
                break;
            }
            let value = record.value.as_deref().unwrap_or_default();
            if args.print_offsets {
                write!(out, "{}\t{}\t", record.partition, record.offset)?;
            }
            out.write_all(value)?;
            out.write_all(b"\n")?;
            printed += 1;
        }
    }
    out.flush()?;
    Ok(())
}
