//! `shardlog`: the command-line tool. Topics, produce from stdin, consume to stdout.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use shardlog_client::{
    Acks, Admin, ClientConfig, Compression, Consumer, ConsumerConfig, Error, GroupConsumer,
    GroupConsumerConfig, NewTopic, Offset, OffsetReset, Producer, ProducerConfig, ProducerRecord,
};
use tokio::io::AsyncBufReadExt;

#[derive(Debug, Parser)]
#[command(
    name = "shardlog",
    version,
    about = "Talk to a shardlog broker: topics, produce, consume."
)]
struct Cli {
    /// The broker's address, or several separated by commas (any one that answers is enough).
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
    /// List, describe, reset and delete consumer groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Describe the cluster: brokers, controller, term, metadata revision.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Show each broker's id, address and state (alive or fenced), the
    /// controller, the Raft term and the committed metadata revision.
    Describe {
        /// Output format.
        #[arg(long, value_enum, default_value_t = FormatArg::Text)]
        format: FormatArg,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// List groups.
    List,
    /// Show a group's members and, per partition, member, committed offset, log end offset and lag.
    Describe {
        /// The group.
        group: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = FormatArg::Text)]
        format: FormatArg,
    },
    /// Set an empty group's committed offsets for every partition of a topic.
    Reset(ResetArgs),
    /// Delete an empty group and its offsets.
    Delete {
        /// The group.
        group: String,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset", "to_timestamp"])))]
struct ResetArgs {
    /// The group.
    group: String,
    /// The topic.
    #[arg(long)]
    topic: String,
    /// To the first offset still stored.
    #[arg(long)]
    to_earliest: bool,
    /// To the end.
    #[arg(long)]
    to_latest: bool,
    /// To this offset.
    #[arg(long)]
    to_offset: Option<u64>,
    /// To the first record at or after this timestamp (ms).
    #[arg(long)]
    to_timestamp: Option<i64>,
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
        /// Copies of each partition, each on its own broker (default 1).
        #[arg(long)]
        replication_factor: Option<u16>,
        /// Replicas in sync that an acks=all produce needs (default 1).
        #[arg(long)]
        min_insync_replicas: Option<u16>,
        /// When no in-sync replica is alive, let another replica lead (it may lack acknowledged records; off by default).
        #[arg(long)]
        unclean_leader_election: bool,
    },
    /// List topics.
    List,
    /// Show a topic's partitions: shard, offsets, status, leader, replicas, ISR, leader epoch.
    Describe {
        /// The topic.
        name: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = FormatArg::Text)]
        format: FormatArg,
    },
    /// Delete a topic and its data.
    Delete {
        /// The topic.
        name: String,
    },
    /// Bring a poisoned partition (status "poisoned" in describe) back
    /// without restarting the broker: it is rescanned from its last synced
    /// point and takes writes again.
    Recover {
        /// The topic.
        name: String,
        /// Only these partitions (default: every poisoned one).
        #[arg(long)]
        partition: Vec<u32>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OffsetResetArg {
    Earliest,
    Latest,
    None,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    /// The topic.
    topic: String,
    /// Read only this partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Start at the first offset still stored (default: the end); implies
    /// --offset-reset earliest. With --group: where partitions with no
    /// committed offset start.
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Start at this offset.
    #[arg(long, conflicts_with = "group")]
    offset: Option<u64>,
    /// Where to go when a position is out of range (deleted by retention,
    /// or past the end) and, with --group, where a partition with no
    /// committed offset starts: earliest, latest, or none (fail with an
    /// error) [default: latest, or earliest with --from-beginning].
    #[arg(long, value_enum)]
    offset_reset: Option<OffsetResetArg>,
    /// Stop after this many records.
    #[arg(long)]
    max_records: Option<u64>,
    /// Stop after this long with nothing new.
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
    /// Print `partition<TAB>offset<TAB>value`.
    #[arg(long)]
    print_offsets: bool,
    /// Consume as a member of this group: the group assigns partitions, and
    /// offsets are committed as the tool goes and on exit.
    #[arg(long, conflicts_with = "partition")]
    group: Option<String>,
    /// With --group: the broker drops this member after this long without a heartbeat.
    #[arg(long, default_value_t = 10_000)]
    session_timeout_ms: u64,
}

/// The reset policy of `consume`, as Kafka's console consumer decides it.
fn offset_reset(args: &ConsumeArgs) -> Result<OffsetReset, String> {
    let reset = match args.offset_reset {
        Some(OffsetResetArg::Earliest) => OffsetReset::Earliest,
        Some(OffsetResetArg::Latest) => OffsetReset::Latest,
        Some(OffsetResetArg::None) => OffsetReset::None,
        None if args.from_beginning => OffsetReset::Earliest,
        None => OffsetReset::Latest,
    };
    if args.from_beginning && reset != OffsetReset::Earliest {
        return Err("--from-beginning means --offset-reset earliest; give one or the other".into());
    }
    Ok(reset)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let reset = match &cli.command {
        Command::Consume(args) => offset_reset(args).unwrap_or_else(|message| {
            Cli::command()
                .error(clap::error::ErrorKind::ArgumentConflict, message)
                .exit()
        }),
        _ => OffsetReset::default(),
    };
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
            Command::Consume(args) if args.group.is_some() => {
                consume_group(client, args, reset).await
            }
            Command::Consume(args) => consume(client, args, reset).await,
            Command::Group(command) => group(client, command).await,
            Command::Cluster(command) => cluster(client, command).await,
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

async fn cluster(client: ClientConfig, command: ClusterCommand) -> Result<(), Error> {
    let ClusterCommand::Describe { format } = command;
    let cluster = Admin::new(client).describe_cluster().await?;
    let state = |alive: bool| if alive { "alive" } else { "fenced" };
    if format == FormatArg::Json {
        let brokers: Vec<serde_json::Value> = cluster
            .brokers
            .iter()
            .map(|b| {
                serde_json::json!({
                    "id": b.id,
                    "address": format!("{}:{}", b.host, b.port),
                    "state": state(b.alive),
                    "shard_ports": b.shard_ports,
                })
            })
            .collect();
        let json = serde_json::json!({
            "controller": cluster.controller_id,
            "brokers": brokers,
            "raft_term": cluster.raft_term,
            "metadata_revision": cluster.metadata_revision,
            "cluster_id": cluster.cluster_id,
            "answered_by": cluster.answered_by,
        });
        println!("{json}");
        return Ok(());
    }
    let controller = cluster
        .controller_id
        .map_or_else(|| "none".to_string(), |id| id.to_string());
    println!(
        "cluster {} controller {controller} term {} metadata revision {}",
        cluster.cluster_id, cluster.raft_term, cluster.metadata_revision
    );
    println!("broker\taddress\tstate");
    for b in &cluster.brokers {
        println!("{}\t{}:{}\t{}", b.id, b.host, b.port, state(b.alive));
    }
    Ok(())
}

/// `topic describe --format json`: `{"topic", "partitions": [{"partition", "leader", "replicas", "isr", "leader_epoch", "under_replicated", "replica_lag": [{"broker", "lag_offsets", "lag_bytes"}], ..}]}`.
fn topic_json(topic: &shardlog_client::TopicDescription) -> serde_json::Value {
    let partitions: Vec<serde_json::Value> = topic
        .partitions
        .iter()
        .map(|p| {
            serde_json::json!({
                "partition": p.partition,
                "leader": p.leader,
                "replicas": p.replicas,
                "isr": p.isr,
                "leader_epoch": p.leader_epoch,
                "under_replicated": p.isr.len() < p.replicas.len(),
                "replica_lag": p.replica_lags.iter().map(|lag| serde_json::json!({
                    "broker": lag.broker,
                    "lag_offsets": lag.lag_offsets,
                    "lag_bytes": lag.lag_bytes,
                })).collect::<Vec<_>>(),
                "shard": p.shard,
                "log_start_offset": p.log_start_offset,
                "log_end_offset": p.high_watermark,
                "status": p.status,
            })
        })
        .collect();
    serde_json::json!({"topic": topic.name, "partitions": partitions})
}

/// The `replica_lag` column: `broker:offsets/bytes` per follower, e.g.
/// `2:0/0B,3:120/49152B`; `-` when the leader reported none.
fn replica_lag_text(lags: &[shardlog_client::protocol::ReplicaLag]) -> String {
    if lags.is_empty() {
        return "-".into();
    }
    let each: Vec<String> = lags
        .iter()
        .map(|lag| format!("{}:{}/{}B", lag.broker, lag.lag_offsets, lag.lag_bytes))
        .collect();
    each.join(",")
}

/// `group describe --format json`: `{"group", "state", "assignor", "members":
/// [{"member_id", "member_epoch", "subscribed_topics", "assignment": [{"topic",
/// "partition"}]}], "offsets": [{"topic", "partition", "member_id",
/// "committed_offset", "log_end_offset", "lag"}]}`; a committed offset of -1
/// (none) and its lag are `null`.
fn group_json(group: &shardlog_client::protocol::GroupDescription) -> serde_json::Value {
    let members: Vec<serde_json::Value> = group
        .members
        .iter()
        .map(|m| {
            let assignment: Vec<serde_json::Value> = m
                .assignment
                .iter()
                .map(|(topic, partition)| serde_json::json!({"topic": topic, "partition": partition}))
                .collect();
            serde_json::json!({
                "member_id": m.member_id,
                "member_epoch": m.member_epoch,
                "subscribed_topics": m.subscribed_topics,
                "assignment": assignment,
            })
        })
        .collect();
    let offsets: Vec<serde_json::Value> = group
        .offsets
        .iter()
        .map(|o| {
            let known = |v: i64| (v >= 0).then_some(v);
            let lag = known(o.offset)
                .zip(known(o.log_end_offset))
                .map(|(committed, end)| end - committed);
            serde_json::json!({
                "topic": o.topic,
                "partition": o.partition,
                "member_id": (!o.member_id.is_empty()).then_some(o.member_id.as_str()),
                "committed_offset": known(o.offset),
                "log_end_offset": known(o.log_end_offset),
                "lag": lag,
            })
        })
        .collect();
    serde_json::json!({
        "group": group.group_id,
        "state": group.state,
        "assignor": group.assignor,
        "members": members,
        "offsets": offsets,
    })
}

async fn topic(client: ClientConfig, command: TopicCommand) -> Result<(), Error> {
    let admin = Admin::new(client);
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            min_insync_replicas,
            unclean_leader_election,
        } => {
            let topic = NewTopic {
                replication_factor,
                min_insync_replicas,
                unclean_leader_election,
                ..NewTopic::new(&name, partitions)
            };
            admin.create_topic(topic).await?;
            let factor = replication_factor.unwrap_or(1);
            println!(
                "created topic {name} with {partitions} partitions, replication factor {factor}"
            );
        }
        TopicCommand::List => {
            for name in admin.list_topics().await? {
                println!("{name}");
            }
        }
        TopicCommand::Describe { name, format } => {
            let topic = admin.describe_topic(&name).await?;
            if format == FormatArg::Json {
                println!("{}", topic_json(&topic));
                return Ok(());
            }
            println!("topic {} partitions {}", topic.name, topic.partitions.len());
            println!("partition\tshard\tlog_start_offset\tlog_end_offset\tstatus\tleader\treplicas\tisr\tleader_epoch\tunder_replicated\treplica_lag");
            let ids = |ids: &[u32]| {
                let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                ids.join(",")
            };
            for p in topic.partitions {
                let leader = p.leader.map_or_else(|| "none".into(), |l| l.to_string());
                let under_replicated = if p.isr.len() < p.replicas.len() {
                    "yes"
                } else {
                    "no"
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{leader}\t{}\t{}\t{}\t{under_replicated}\t{}",
                    p.partition,
                    p.shard,
                    p.log_start_offset,
                    p.high_watermark,
                    p.status,
                    ids(&p.replicas),
                    ids(&p.isr),
                    p.leader_epoch,
                    replica_lag_text(&p.replica_lags)
                );
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
        TopicCommand::Recover { name, partition } => {
            let mut failed = None;
            for result in admin.recover_partitions(&name, &partition).await? {
                let p = result.partition;
                match (&result.error, result.was_poisoned) {
                    (Some(error), _) => {
                        println!("partition {p}: not recovered: {error}");
                        failed = Some(error.clone());
                    }
                    (None, true) => println!(
                        "partition {p}: recovered; log end offset {}, {} unsynced bytes cut",
                        result.log_end_offset, result.cut_bytes
                    ),
                    (None, false) => println!("partition {p}: online, nothing to recover"),
                }
            }
            if let Some(error) = failed {
                return Err(Error::Broker(error));
            }
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

async fn consume(client: ClientConfig, args: ConsumeArgs, reset: OffsetReset) -> Result<(), Error> {
    let from = match (args.offset, args.from_beginning) {
        (Some(offset), _) => Offset::At(offset),
        (None, true) => Offset::Earliest,
        (None, false) => Offset::Latest,
    };
    let mut consumer = Consumer::new(ConsumerConfig {
        client,
        max_wait: Duration::from_millis(200),
        auto_offset_reset: reset,
        ..ConsumerConfig::default()
    });
    match args.partition {
        Some(partition) => consumer.assign(&args.topic, &[partition], from),
        None => {
            consumer.assign_all(&args.topic, from).await?;
        }
    }
    let mut printer = Printer::new(&args);
    while !printer.done() {
        let records = match consumer.poll().await {
            // A leader failing over: look again shortly (the idle timeout still ends the run).
            Err(error) if error.is_retriable() => {
                tokio::time::sleep(RETRY_BACKOFF).await;
                Vec::new()
            }
            other => other?,
        };
        if records.is_empty() {
            if printer.idle_expired() {
                break;
            }
            continue;
        }
        printer.print(&records)?;
    }
    printer.finish()
}

/// Pause before a consumer polls again after a retriable error (a failover).
const RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);

/// Prints records as `consume` does, counting them against --max-records and --idle-timeout-ms.
struct Printer {
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
    printed: u64,
    max_records: Option<u64>,
    idle: Option<Duration>,
    last_record: tokio::time::Instant,
    print_offsets: bool,
}

impl Printer {
    fn new(args: &ConsumeArgs) -> Printer {
        Printer {
            out: std::io::BufWriter::new(std::io::stdout().lock()),
            printed: 0,
            max_records: args.max_records,
            idle: args.idle_timeout_ms.map(Duration::from_millis),
            last_record: tokio::time::Instant::now(),
            print_offsets: args.print_offsets,
        }
    }

    fn done(&self) -> bool {
        self.max_records.is_some_and(|max| self.printed >= max)
    }

    fn idle_expired(&self) -> bool {
        self.idle
            .is_some_and(|idle| self.last_record.elapsed() >= idle)
    }

    /// Prints records until --max-records is reached; returns how many it printed.
    fn print(&mut self, records: &[shardlog_client::ConsumerRecord]) -> std::io::Result<usize> {
        self.last_record = tokio::time::Instant::now();
        let mut count = 0;
        for record in records {
            if self.done() {
                break;
            }
            if self.print_offsets {
                write!(self.out, "{}\t{}\t", record.partition, record.offset)?;
            }
            self.out
                .write_all(record.value.as_deref().unwrap_or_default())?;
            self.out.write_all(b"\n")?;
            self.printed += 1;
            count += 1;
        }
        self.out.flush()?;
        Ok(count)
    }

    fn finish(mut self) -> Result<(), Error> {
        self.out.flush()?;
        Ok(())
    }
}

async fn group(client: ClientConfig, command: GroupCommand) -> Result<(), Error> {
    let admin = Admin::new(client);
    match command {
        GroupCommand::List => {
            for group in admin.list_groups().await? {
                println!(
                    "{}\t{}\t{} members",
                    group.group_id, group.state, group.members
                );
            }
        }
        GroupCommand::Describe { group, format } => {
            let described = admin.describe_group(&group).await?;
            if format == FormatArg::Json {
                println!("{}", group_json(&described));
                return Ok(());
            }
            println!(
                "group {} state {} assignor {} members {}",
                described.group_id,
                described.state,
                described.assignor,
                described.members.len()
            );
            println!("topic\tpartition\tmember\tcommitted_offset\tlog_end_offset\tlag");
            for offset in described.offsets {
                let lag = if offset.offset >= 0 && offset.log_end_offset >= 0 {
                    (offset.log_end_offset - offset.offset).to_string()
                } else {
                    "-".into()
                };
                let member = if offset.member_id.is_empty() {
                    "-"
                } else {
                    offset.member_id.as_str()
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    offset.topic,
                    offset.partition,
                    member,
                    offset.offset,
                    offset.log_end_offset,
                    lag
                );
            }
        }
        GroupCommand::Reset(args) => {
            let to = match (
                args.to_earliest,
                args.to_latest,
                args.to_offset,
                args.to_timestamp,
            ) {
                (true, ..) => Offset::Earliest,
                (_, true, ..) => Offset::Latest,
                (_, _, Some(offset), _) => Offset::At(offset),
                (_, _, _, Some(ms)) => Offset::Timestamp(ms),
                _ => Offset::Earliest,
            };
            for offset in admin.reset_offsets(&args.group, &args.topic, to).await? {
                println!("{}\t{}\t{}", offset.topic, offset.partition, offset.offset);
            }
        }
        GroupCommand::Delete { group } => {
            admin.delete_group(&group).await?;
            println!("deleted group {group}");
        }
    }
    Ok(())
}

/// `consume --group`: commits exactly through the last record printed.
async fn consume_group(
    client: ClientConfig,
    args: ConsumeArgs,
    reset: OffsetReset,
) -> Result<(), Error> {
    let group = args.group.clone().unwrap_or_default();
    let consumer_config = ConsumerConfig {
        client,
        max_wait: Duration::from_millis(200),
        auto_offset_reset: reset,
        ..ConsumerConfig::default()
    };
    let mut config = GroupConsumerConfig::new(consumer_config, group);
    config.session_timeout = Duration::from_millis(args.session_timeout_ms);
    config.auto_commit_interval = Some(Duration::from_secs(1));
    let mut consumer = GroupConsumer::new(config);
    consumer.subscribe(&[args.topic.as_str()]);
    let mut printer = Printer::new(&args);
    while !printer.done() {
        let records = match consumer.poll().await {
            // A leader failing over: look again shortly (the idle timeout still ends the run).
            Err(error) if error.is_retriable() => {
                tokio::time::sleep(RETRY_BACKOFF).await;
                Vec::new()
            }
            other => other?,
        };
        if records.is_empty() {
            if printer.idle_expired() {
                break;
            }
            continue;
        }
        let printed = printer.print(&records)?;
        if printed < records.len() {
            // Rewind every partition to its first record not printed, so the commit covers only what was printed.
            let mut first_unprinted = std::collections::BTreeMap::new();
            for rest in &records[printed..] {
                first_unprinted.entry(rest.partition).or_insert(rest.offset);
            }
            for (partition, offset) in first_unprinted {
                consumer.seek(&args.topic, partition, offset);
            }
        }
    }
    printer.finish()?;
    consumer.close().await
}
