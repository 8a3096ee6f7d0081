//! Which node and which cluster a data directory belongs to: `<data-dir>/node.json`.
//!
//! ```text
//!  {"node_id": 2, "voters": [1, 2, 3], "cluster_id": "9f0c…"}
//! ```
//!
//! Written at the first start (node id and voters), and again once the
//! node first learns its cluster's id from the applied metadata (a one-node
//! broker names its own at the first start). Every later start compares:
//! another `--node-id`, another set of voters (`--peers`, or none for a
//! one-node broker) or, once applied, another cluster id is refused, so
//! that a data directory never serves as a member of a cluster it was not
//! made in. Only ids are compared, not addresses: a peer may move.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::NodeId;

/// What `node.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node's `--node-id`.
    pub node_id: NodeId,
    /// The voters' ids (`--peers`); empty for a one-node broker.
    pub voters: BTreeSet<NodeId>,
    /// The cluster's id, once known.
    pub cluster_id: Option<String>,
}

/// Why a data directory refuses this node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing `node.json` failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the node was doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// `node.json` does not parse.
    #[error("{path} is unreadable: {reason}; restore it from a backup")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory belongs to another node, set of voters or cluster.
    #[error("data directory {data_dir} belongs to {recorded}, not to {requested}; start with the flags it was made with, or pick another --data-dir")]
    Mismatch {
        /// The data directory.
        data_dir: PathBuf,
        /// What `node.json` says.
        recorded: String,
        /// What this start asks for.
        requested: String,
    },
}

fn describe(node_id: NodeId, voters: &BTreeSet<NodeId>) -> String {
    if voters.is_empty() {
        format!("node {node_id} of a one-node broker (no --peers)")
    } else {
        format!("node {node_id} of a cluster of voters {voters:?}")
    }
}

fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.json")
}

/// Checks `node.json` against this start, writing it when the directory has none.
///
/// # Errors
/// [`IdentityError::Mismatch`] for another node id or other voters; I/O and parse errors.
pub fn check(
    data_dir: &Path,
    node_id: NodeId,
    voters: BTreeSet<NodeId>,
) -> Result<NodeIdentity, IdentityError> {
    let path = identity_path(data_dir);
    let recorded = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<NodeIdentity>(&bytes).map_err(|e| {
            IdentityError::Unreadable {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Data of a one-node broker from before node.json existed.
            if !voters.is_empty() && data_dir.join("metadata.json").exists() {
                return Err(IdentityError::Mismatch {
                    data_dir: data_dir.to_path_buf(),
                    recorded: "a one-node broker (it holds metadata.json)".into(),
                    requested: describe(node_id, &voters),
                });
            }
            // A one-node broker names its cluster itself: nothing else will.
            let cluster_id = voters
                .is_empty()
                .then(|| super::raft::new_cluster_id(node_id));
            let identity = NodeIdentity {
                node_id,
                voters,
                cluster_id,
            };
            store(data_dir, &identity)?;
            return Ok(identity);
        }
        Err(e) => {
            return Err(IdentityError::Io {
                op: "reading",
                path,
                source: e,
            })
        }
    };
    if recorded.node_id != node_id || recorded.voters != voters {
        return Err(IdentityError::Mismatch {
            data_dir: data_dir.to_path_buf(),
            recorded: describe(recorded.node_id, &recorded.voters),
            requested: describe(node_id, &voters),
        });
    }
    Ok(recorded)
}

/// Records the cluster id the node learned, or refuses one that is not the recorded one.
///
/// # Errors
/// [`IdentityError::Mismatch`] when another id is recorded; I/O errors.
pub fn record_cluster_id(
    data_dir: &Path,
    identity: &mut NodeIdentity,
    cluster_id: &str,
) -> Result<(), IdentityError> {
    assert!(!cluster_id.is_empty(), "only a named cluster is recorded");
    match &identity.cluster_id {
        Some(recorded) if recorded == cluster_id => Ok(()),
        Some(recorded) => Err(IdentityError::Mismatch {
            data_dir: data_dir.to_path_buf(),
            recorded: format!("cluster {recorded}"),
            requested: format!("cluster {cluster_id}, which the metadata group names"),
        }),
        None => {
            identity.cluster_id = Some(cluster_id.to_string());
            store(data_dir, identity)
        }
    }
}

/// Writes `node.json` durably (temporary file, fsync, rename, directory fsync).
fn store(data_dir: &Path, identity: &NodeIdentity) -> Result<(), IdentityError> {
    let path = identity_path(data_dir);
    let tmp = path.with_extension("json.tmp");
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { op, path, source }
    };
    let bytes = serde_json::to_vec_pretty(identity).map_err(|e| IdentityError::Unreadable {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut file = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("renaming", &path))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io("syncing", data_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_refuses_another_node_voters_or_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let mut first = check(dir.path(), 2, voters.clone()).unwrap();
        assert_eq!(first.cluster_id, None);
        assert_eq!(check(dir.path(), 2, voters.clone()).unwrap(), first);
        let other_id = check(dir.path(), 3, voters.clone()).unwrap_err();
        assert!(matches!(other_id, IdentityError::Mismatch { .. }));
        let message = other_id.to_string();
        assert!(message.contains("node 2 of a cluster"), "{message}");
        assert!(!message.contains('\n'), "one line: {message}");
        assert!(check(dir.path(), 2, [1, 2, 4].into()).is_err());
        assert!(check(dir.path(), 2, BTreeSet::new()).is_err());

        record_cluster_id(dir.path(), &mut first, "c1").unwrap();
        record_cluster_id(dir.path(), &mut first, "c1").unwrap();
        let mut again = check(dir.path(), 2, voters).unwrap();
        assert_eq!(again.cluster_id.as_deref(), Some("c1"));
        assert!(matches!(
            record_cluster_id(dir.path(), &mut again, "c2"),
            Err(IdentityError::Mismatch { .. })
        ));
    }

    #[test]
    fn a_one_node_broker_names_its_cluster_and_refuses_peers_later() {
        let dir = tempfile::tempdir().unwrap();
        let alone = check(dir.path(), 0, BTreeSet::new()).unwrap();
        assert!(alone.cluster_id.as_ref().is_some_and(|id| id.len() == 32));
        assert_eq!(check(dir.path(), 0, BTreeSet::new()).unwrap(), alone);
        assert!(check(dir.path(), 0, [0].into()).is_err());
        std::fs::write(dir.path().join("node.json"), b"{").unwrap();
        assert!(matches!(
            check(dir.path(), 0, BTreeSet::new()),
            Err(IdentityError::Unreadable { .. })
        ));
    }
}
