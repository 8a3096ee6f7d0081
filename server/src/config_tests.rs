//! Tests of `config.rs`: defaults, files, flags, limits, the README's table.

use clap::CommandFactory;

use super::*;

const DESCRIPTORS: u64 = 1 << 20;

fn resolve(settings: Settings) -> Result<ServerConfig> {
    ServerConfig::resolve(
        Cli {
            config: None,
            settings,
        },
        DESCRIPTORS,
    )
}

#[test]
fn defaults_make_a_durable_local_broker_with_separate_ports() {
    let config = resolve(Settings::default()).unwrap();
    assert_eq!(config.flush, FlushPolicy::Always);
    assert_eq!(config.listen.to_string(), "127.0.0.1:7070");
    assert_eq!(config.metrics_listen.to_string(), "127.0.0.1:9644");
    assert!(config.data_dir.is_absolute());
    assert_eq!(
        config.data_dir,
        std::env::current_dir().unwrap().join("data"),
        "./data resolves against the working directory"
    );
    assert_eq!(config.shard_port(1), 7072);
    assert_eq!(config.limits.connections_per_shard_max, 4096);
}

#[test]
fn relative_paths_from_the_file_resolve_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, "data-dir = \"rel/dir\"\n").unwrap();
    let cli = Cli {
        config: Some(path),
        settings: Settings::default(),
    };
    let config = ServerConfig::resolve(cli, DESCRIPTORS).unwrap();
    assert_eq!(
        config.data_dir,
        std::env::current_dir().unwrap().join("rel/dir")
    );
}

#[test]
fn flags_win_over_the_file_and_unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    std::fs::write(
        &path,
        "shards = 3\nflush = \"never\"\ndata-dir = \"/x\"\nfetch-bytes-max = 16777216\n",
    )
    .unwrap();
    let cli = Cli {
        config: Some(path.clone()),
        settings: Settings {
            shards: Some(2),
            ..Settings::default()
        },
    };
    let config = ServerConfig::resolve(cli, DESCRIPTORS).unwrap();
    assert_eq!(config.shards, 2);
    assert_eq!(config.flush, FlushPolicy::Never);
    assert_eq!(config.data_dir, PathBuf::from("/x"));
    assert_eq!(config.limits.fetch_bytes_max, 16 << 20);
    std::fs::write(&path, "shard = 3\n").unwrap();
    let cli = Cli {
        config: Some(path),
        settings: Settings::default(),
    };
    assert!(
        ServerConfig::resolve(cli, DESCRIPTORS).is_err(),
        "unknown keys are refused"
    );
}

#[test]
fn values_out_of_range_are_refused() {
    let cases = [
        Settings {
            flush: Some("sometimes".into()),
            ..Settings::default()
        },
        Settings {
            shards: Some(0),
            ..Settings::default()
        },
        Settings {
            log_format: Some("xml".into()),
            ..Settings::default()
        },
        Settings {
            connection_idle_timeout_ms: Some(0),
            ..Settings::default()
        },
        Settings {
            connection_idle_timeout_ms: Some(60_000),
            ..Settings::default()
        },
        Settings {
            connection_memory_bytes_max: Some(1 << 20),
            ..Settings::default()
        },
        Settings {
            fetch_bytes_max: Some(1 << 30),
            ..Settings::default()
        },
        Settings {
            fetch_partition_bytes_max: Some(60 << 20),
            ..Settings::default()
        },
    ];
    for settings in cases {
        let shown = format!("{settings:?}");
        assert!(resolve(settings).is_err(), "{shown}");
    }
}

#[test]
fn overlapping_ports_are_refused() {
    for metrics_port in [7070, 7071, 7072] {
        let settings = Settings {
            shards: Some(2),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], metrics_port))),
            ..Settings::default()
        };
        let error = resolve(settings).unwrap_err().to_string();
        assert!(error.contains("overlaps"), "{metrics_port}: {error}");
    }
    let elsewhere = Settings {
        shards: Some(2),
        metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7073))),
        ..Settings::default()
    };
    assert!(resolve(elsewhere).is_ok());
}

#[test]
fn budgets_follow_the_descriptor_limit_and_explicit_ones_must_fit() {
    let settings = Settings {
        shards: Some(2),
        ..Settings::default()
    };
    let config = ServerConfig::resolve(
        Cli {
            config: None,
            settings: settings.clone(),
        },
        20_000,
    )
    .unwrap();
    let limits = config.limits;
    let used =
        2 * (limits.connections_per_shard_max as u64 + u64::from(limits.open_files_per_shard_max));
    assert!(used + FILE_DESCRIPTORS_RESERVED <= 20_000, "{limits:?}");
    let too_many = Settings {
        connections_per_shard_max: Some(9_000),
        open_files_per_shard_max: Some(1_000),
        ..settings
    };
    let error = ServerConfig::resolve(
        Cli {
            config: None,
            settings: too_many,
        },
        20_000,
    )
    .unwrap_err();
    assert!(error.to_string().contains("RLIMIT_NOFILE"), "{error}");
}

#[test]
fn group_limits_have_defaults_file_keys_and_bounds() {
    let config = resolve(Settings::default()).unwrap();
    assert_eq!(config.limits.groups_per_shard_max, 10_000);
    assert_eq!(config.limits.group_retention_ms, 7 * 24 * 3600 * 1000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    let keys =
        "groups-per-shard-max = 5\ngroup-retention-ms = 60000\nretention-check-interval-ms = 100\n";
    std::fs::write(&path, keys).unwrap();
    let cli = Cli {
        config: Some(path),
        settings: Settings::default(),
    };
    let config = ServerConfig::resolve(cli, DESCRIPTORS).unwrap();
    assert_eq!(config.limits.groups_per_shard_max, 5);
    assert_eq!(config.limits.group_retention_ms, 60_000);
    assert_eq!(config.retention_check_interval_ms, 100);
    for bad in [
        Settings {
            groups_per_shard_max: Some(0),
            ..Settings::default()
        },
        Settings {
            group_retention_ms: Some(0),
            ..Settings::default()
        },
        Settings {
            retention_check_interval_ms: Some(0),
            ..Settings::default()
        },
    ] {
        assert!(resolve(bad).is_err());
    }
}

#[test]
fn peers_name_this_node_at_its_listen_port_and_node_ids_fit_the_wire() {
    let clustered = |node_id: u64, peers: &str| {
        resolve(Settings {
            node_id: Some(node_id),
            peers: Some(peers.to_string()),
            ..Settings::default()
        })
    };
    let config = clustered(2, "1@h1:7070,2@127.0.0.1:7070,3@h3:7070").unwrap();
    assert!(config.is_clustered());
    assert_eq!(config.peers.as_ref().map(|p| p.len()), Some(3));
    assert!(!resolve(Settings::default()).unwrap().is_clustered());
    assert!(
        !clustered(0, " ").unwrap().is_clustered(),
        "an empty list is no cluster"
    );
    for (node_id, peers, says) in [
        (4, "1@h:7070,2@h:7071,3@h:7072", "not one of the voters"),
        (1, "1@h:7070,2@h:7071", "1, 3 or 5 voters"),
        (1, "1@h:7071", "--listen"),
        (1, "1@h", "not <id>@<host>:<port>"),
        (1 << 33, "8589934592@h:7070", "at most"),
    ] {
        let error = clustered(node_id, peers).unwrap_err().to_string();
        assert!(error.contains(says), "{peers}: {error}");
    }
    let file: Settings = toml::from_str("node-id = 3\npeers = \"3@h:7070\"").unwrap();
    assert_eq!(file.node_id, Some(3));
    assert_eq!(file.peers.as_deref(), Some("3@h:7070"));
}

/// The README's limits table lists every setting by its flag.
#[test]
fn the_readme_lists_every_setting() {
    let readme = include_str!("../../README.md");
    let command = Cli::command();
    for argument in command.get_arguments() {
        let Some(flag) = argument.get_long() else {
            continue;
        };
        if matches!(flag, "help" | "version") {
            continue;
        }
        assert!(
            readme.contains(&format!("`--{flag}`")),
            "README.md has no row for `--{flag}`"
        );
    }
}
