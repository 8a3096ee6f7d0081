//! The consumer group APIs. Each is routed to the group's coordinator (the
//! owner of its `__offsets` partition); ListGroups asks every shard.
//!
//! Parsing checks every name a request carries (group ids, topic names in
//! commits, resets, subscriptions and owned lists) before anything is
//! routed, so a coordinator never holds or stores a name it could not
//! write to `__offsets` (see `groups/mod.rs`).

use std::collections::BTreeMap;
use std::rc::Rc;

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use shardlog_wire::protocol::fb;

use super::Outgoing;
use super::{error_parts, finish};
use crate::error::WireError;
use crate::groups::{self, GroupSnapshot, Heartbeat, TopicPartition, Writer, OFFSETS_TOPIC};
use crate::shard::messages::{GroupCall, GroupReply};
use crate::shard::{ShardRequest, ShardResponse, ShardState};

/// Most partitions in one group request.
const PARTITIONS_PER_REQUEST_MAX: usize = 100_000;
/// Most topics one member subscribes to.
const SUBSCRIBED_TOPICS_MAX: usize = 10_000;

/// A group request in owned values.
#[derive(Debug)]
pub enum GroupParsed {
    Heartbeat {
        group: String,
        heartbeat: Heartbeat,
    },
    Commit {
        group: String,
        member_id: String,
        commits: Vec<(TopicPartition, i64)>,
    },
    Fetch {
        group: String,
        partitions: Option<Vec<TopicPartition>>,
    },
    List,
    Describe {
        groups: Vec<String>,
    },
    Delete {
        group: String,
    },
    Reset {
        group: String,
        topic: String,
        spec: fb::OffsetSpec,
        offset: i64,
        timestamp_ms: i64,
        to_offset: bool,
    },
}

fn invalid(message: impl Into<String>) -> WireError {
    WireError::new(fb::ErrorCode::InvalidRequest, message)
}

fn topic_partitions(
    list: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<fb::TopicPartitions<'_>>>>,
) -> Result<Vec<TopicPartition>, WireError> {
    let mut out = Vec::new();
    for entry in list.iter().flatten() {
        let topic = entry.topic().unwrap_or_default();
        groups::validate_topic_name(topic)?;
        for partition in entry.partitions().iter().flatten() {
            out.push((topic.to_string(), partition));
            if out.len() > PARTITIONS_PER_REQUEST_MAX {
                return Err(invalid(format!(
                    "at most {PARTITIONS_PER_REQUEST_MAX} partitions per request"
                )));
            }
        }
    }
    Ok(out)
}

fn group_id(id: Option<&str>) -> Result<String, WireError> {
    let id = id.unwrap_or_default();
    groups::validate_group_id(id)?;
    Ok(id.to_string())
}

fn subscription(
    topics: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<&str>>>,
) -> Result<Option<std::collections::BTreeSet<String>>, WireError> {
    let Some(topics) = topics else {
        return Ok(None);
    };
    if topics.len() > SUBSCRIBED_TOPICS_MAX {
        return Err(invalid(format!(
            "a member subscribes to at most {SUBSCRIBED_TOPICS_MAX} topics"
        )));
    }
    let mut out = std::collections::BTreeSet::new();
    for topic in topics.iter() {
        groups::validate_topic_name(topic)?;
        out.insert(topic.to_string());
    }
    Ok(Some(out))
}

fn member_id(id: Option<&str>) -> Result<String, WireError> {
    let id = id.unwrap_or_default();
    if id.len() > groups::MEMBER_ID_BYTES_MAX {
        let max = groups::MEMBER_ID_BYTES_MAX;
        return Err(invalid(format!(
            "member ids have at most {max} bytes, not {}",
            id.len()
        )));
    }
    Ok(id.to_string())
}

fn parse_heartbeat(body: fb::GroupHeartbeatRequest<'_>) -> Result<GroupParsed, WireError> {
    let heartbeat = Heartbeat {
        member_id: member_id(body.member_id())?,
        member_epoch: body.member_epoch(),
        topics: subscription(body.subscribed_topics())?,
        owned: topic_partitions(body.owned())?.into_iter().collect(),
        session_timeout_ms: u64::from(body.session_timeout_ms()),
        assignor: body.assignor().unwrap_or_default().to_string(),
    };
    Ok(GroupParsed::Heartbeat {
        group: group_id(body.group_id())?,
        heartbeat,
    })
}

fn parse_commit(body: fb::OffsetCommitRequest<'_>) -> Result<GroupParsed, WireError> {
    let too_many = || {
        invalid(format!(
            "a commit carries 1 to {PARTITIONS_PER_REQUEST_MAX} partitions"
        ))
    };
    let mut commits = Vec::new();
    for topic in body.topics().iter().flatten() {
        let name = topic.topic().unwrap_or_default().to_string();
        groups::validate_topic_name(&name)?;
        for p in topic.partitions().iter().flatten() {
            if p.offset() < 0 {
                let message = format!("cannot commit the negative offset {}", p.offset());
                return Err(invalid(message));
            }
            if commits.len() == PARTITIONS_PER_REQUEST_MAX {
                return Err(too_many());
            }
            commits.push(((name.clone(), p.partition()), p.offset()));
        }
    }
    if commits.is_empty() {
        return Err(too_many());
    }
    Ok(GroupParsed::Commit {
        group: group_id(body.group_id())?,
        member_id: member_id(body.member_id())?,
        commits,
    })
}

pub fn parse(request: &fb::Request<'_>) -> Result<GroupParsed, WireError> {
    let missing = || invalid("the request body is missing");
    Ok(match request.body_type() {
        fb::RequestBody::GroupHeartbeatRequest => {
            let body = request
                .body_as_group_heartbeat_request()
                .ok_or_else(missing)?;
            parse_heartbeat(body)?
        }
        fb::RequestBody::OffsetCommitRequest => {
            let body = request
                .body_as_offset_commit_request()
                .ok_or_else(missing)?;
            parse_commit(body)?
        }
        fb::RequestBody::OffsetFetchRequest => {
            let body = request.body_as_offset_fetch_request().ok_or_else(missing)?;
            let partitions = match body.topics() {
                Some(_) => Some(topic_partitions(body.topics())?),
                None => None,
            };
            GroupParsed::Fetch {
                group: group_id(body.group_id())?,
                partitions,
            }
        }
        fb::RequestBody::ListGroupsRequest => GroupParsed::List,
        fb::RequestBody::DescribeGroupsRequest => {
            let body = request
                .body_as_describe_groups_request()
                .ok_or_else(missing)?;
            let groups = body
                .group_ids()
                .iter()
                .flatten()
                .take(1000)
                .map(str::to_string)
                .collect();
            GroupParsed::Describe { groups }
        }
        fb::RequestBody::DeleteGroupRequest => {
            let body = request.body_as_delete_group_request().ok_or_else(missing)?;
            GroupParsed::Delete {
                group: group_id(body.group_id())?,
            }
        }
        fb::RequestBody::ResetOffsetsRequest => {
            let body = request
                .body_as_reset_offsets_request()
                .ok_or_else(missing)?;
            let topic = body.topic().unwrap_or_default();
            groups::validate_topic_name(topic)?;
            GroupParsed::Reset {
                group: group_id(body.group_id())?,
                topic: topic.to_string(),
                spec: body.spec(),
                offset: body.offset(),
                timestamp_ms: body.timestamp_ms(),
                to_offset: body.to_offset(),
            }
        }
        _ => return Err(WireError::new(fb::ErrorCode::UnknownApi, "unknown API")),
    })
}

/// The shard coordinating `group`: the owner of its `__offsets` partition
/// on that partition's leader. Another broker answers `NotLeader`, and the
/// SDK asks the leader (it computes the partition the same way).
fn coordinator_of(shard: &ShardState, group: &str) -> Result<usize, WireError> {
    let partition = groups::offsets_partition(group);
    match shard.partitions.leader_owner_of(OFFSETS_TOPIC, partition) {
        Err(error) if error.code == fb::ErrorCode::UnknownTopicOrPartition => Err(WireError::new(
            fb::ErrorCode::ShuttingDown,
            "the offsets topic is not ready yet; retry",
        )),
        other => other,
    }
}

async fn ask(
    shard: &Rc<ShardState>,
    group: &str,
    call: GroupCall,
) -> Result<GroupReply, WireError> {
    let coordinator = coordinator_of(shard, group)?;
    match shard.call(coordinator, ShardRequest::Group(call)).await {
        ShardResponse::Group(reply) => Ok(reply),
        _ => Err(WireError::unavailable()),
    }
}

/// On the coordinator (or, for `List` and `Commits`, any shard).
pub async fn serve(shard: &Rc<ShardState>, call: GroupCall) -> GroupReply {
    let coordinator = &shard.coordinator;
    match call {
        GroupCall::Heartbeat { group, heartbeat } => {
            GroupReply::Heartbeat(shard.groups().heartbeat(&group, heartbeat))
        }
        GroupCall::Commit {
            group,
            member_id,
            commits,
        } => {
            let writer = Writer::Member(&member_id);
            GroupReply::Done(shard.groups().commit(&group, writer, &commits).await)
        }
        GroupCall::Fetch { group, partitions } => {
            GroupReply::Offsets(Ok(coordinator.committed(&group, partitions.as_deref())))
        }
        GroupCall::List => GroupReply::Listed(coordinator.list()),
        GroupCall::Describe { group } => GroupReply::Described(coordinator.describe(&group)),
        GroupCall::Delete { group } => GroupReply::Done(shard.groups().delete(&group).await),
        GroupCall::Reset { group, offsets } => {
            let result = shard.groups().commit(&group, Writer::Reset, &offsets).await;
            GroupReply::Offsets(result.map(|()| offsets))
        }
        GroupCall::Commits => GroupReply::Commits(coordinator.all_commits()),
    }
}

pub async fn handle(shard: &Rc<ShardState>, correlation_id: u32, request: GroupParsed) -> Outgoing {
    match request {
        GroupParsed::Heartbeat { group, heartbeat } => {
            let outcome = ask(
                shard,
                &group,
                GroupCall::Heartbeat {
                    group: group.clone(),
                    heartbeat,
                },
            )
            .await
            .and_then(GroupReply::into_heartbeat);
            encode_heartbeat(correlation_id, outcome)
        }
        GroupParsed::Commit {
            group,
            member_id,
            commits,
        } => {
            let outcome = ask(
                shard,
                &group,
                GroupCall::Commit {
                    group: group.clone(),
                    member_id,
                    commits,
                },
            )
            .await
            .and_then(GroupReply::into_done);
            let mut fbb = FlatBufferBuilder::new();
            let (error_code, error_message) = error_parts(&mut fbb, outcome.as_ref().err());
            let args = fb::OffsetCommitResponseArgs {
                error_code,
                error_message,
                partitions: None,
            };
            let body = fb::OffsetCommitResponse::create(&mut fbb, &args);
            Outgoing {
                message: finish(
                    fbb,
                    correlation_id,
                    fb::ResponseBody::OffsetCommitResponse,
                    body.as_union_value(),
                ),
                payload: Vec::new(),
            }
        }
        GroupParsed::Fetch { group, partitions } => {
            let outcome = ask(
                shard,
                &group,
                GroupCall::Fetch {
                    group: group.clone(),
                    partitions,
                },
            )
            .await
            .and_then(GroupReply::into_offsets);
            let offsets = outcome.map(|o| {
                o.into_iter()
                    .map(|(tp, off)| (tp, off, -1, String::new()))
                    .collect::<Vec<_>>()
            });
            encode_offsets(
                correlation_id,
                fb::ResponseBody::OffsetFetchResponse,
                offsets.as_ref().map_err(Clone::clone),
            )
        }
        GroupParsed::Reset {
            group,
            topic,
            spec,
            offset,
            timestamp_ms,
            to_offset,
        } => {
            let outcome = reset(shard, &group, &topic, spec, offset, timestamp_ms, to_offset).await;
            let offsets = outcome.map(|o| {
                o.into_iter()
                    .map(|(tp, off)| (tp, off, -1, String::new()))
                    .collect::<Vec<_>>()
            });
            encode_offsets(
                correlation_id,
                fb::ResponseBody::ResetOffsetsResponse,
                offsets.as_ref().map_err(Clone::clone),
            )
        }
        GroupParsed::Delete { group } => {
            let outcome = ask(
                shard,
                &group,
                GroupCall::Delete {
                    group: group.clone(),
                },
            )
            .await
            .and_then(GroupReply::into_done);
            let mut fbb = FlatBufferBuilder::new();
            let (error_code, error_message) = error_parts(&mut fbb, outcome.as_ref().err());
            let body = fb::DeleteGroupResponse::create(
                &mut fbb,
                &fb::DeleteGroupResponseArgs {
                    error_code,
                    error_message,
                },
            );
            Outgoing {
                message: finish(
                    fbb,
                    correlation_id,
                    fb::ResponseBody::DeleteGroupResponse,
                    body.as_union_value(),
                ),
                payload: Vec::new(),
            }
        }
        GroupParsed::List => list(shard, correlation_id).await,
        GroupParsed::Describe { groups } => describe(shard, correlation_id, groups).await,
    }
}

/// Computes the offsets a reset sets, then has the coordinator commit them (only while the group is empty).
async fn reset(
    shard: &Rc<ShardState>,
    group: &str,
    topic: &str,
    spec: fb::OffsetSpec,
    offset: i64,
    timestamp_ms: i64,
    to_offset: bool,
) -> Result<Vec<(TopicPartition, i64)>, WireError> {
    let count = shard
        .partitions
        .metadata()
        .topics
        .get(topic)
        .map(|t| t.partition_count())
        .ok_or_else(|| WireError::unknown_partition(topic, 0))?;
    let mut offsets = Vec::with_capacity(count as usize);
    for partition in 0..count {
        let target = if to_offset {
            if offset < 0 {
                return Err(invalid("cannot reset to a negative offset"));
            }
            offset
        } else {
            let found =
                super::list_offsets::lookup(shard, topic, partition, spec, timestamp_ms).await?;
            if found.offset >= 0 {
                found.offset
            } else {
                found.high_watermark as i64
            }
        };
        offsets.push(((topic.to_string(), partition), target));
    }
    let call = GroupCall::Reset {
        group: group.to_string(),
        offsets,
    };
    ask(shard, group, call)
        .await
        .and_then(GroupReply::into_offsets)
}

async fn list(shard: &Rc<ShardState>, correlation_id: u32) -> Outgoing {
    let calls =
        (0..shard.count).map(|target| shard.call(target, ShardRequest::Group(GroupCall::List)));
    let mut listed = Vec::new();
    for response in futures_util::future::join_all(calls).await {
        if let ShardResponse::Group(GroupReply::Listed(groups)) = response {
            listed.extend(groups);
        }
    }
    listed.sort();
    let mut fbb = FlatBufferBuilder::new();
    let entries: Vec<_> = listed
        .iter()
        .map(|(id, state, members)| {
            let (id, state) = (fbb.create_string(id), fbb.create_string(state));
            fb::GroupListing::create(
                &mut fbb,
                &fb::GroupListingArgs {
                    group_id: Some(id),
                    state: Some(state),
                    members: *members,
                },
            )
        })
        .collect();
    let groups = fbb.create_vector(&entries);
    let body = fb::ListGroupsResponse::create(
        &mut fbb,
        &fb::ListGroupsResponseArgs {
            groups: Some(groups),
        },
    );
    Outgoing {
        message: finish(
            fbb,
            correlation_id,
            fb::ResponseBody::ListGroupsResponse,
            body.as_union_value(),
        ),
        payload: Vec::new(),
    }
}

/// A group's snapshot and the log end offset of each of its partitions.
type Described = (GroupSnapshot, Vec<i64>);

async fn describe(shard: &Rc<ShardState>, correlation_id: u32, groups: Vec<String>) -> Outgoing {
    let mut described: Vec<(String, Result<Described, WireError>)> = Vec::new();
    for group in groups {
        let call = GroupCall::Describe {
            group: group.clone(),
        };
        let snapshot = match crate::groups::validate_group_id(&group) {
            Ok(()) => ask(shard, &group, call)
                .await
                .and_then(GroupReply::into_described),
            Err(error) => Err(error),
        };
        let outcome = match snapshot {
            Ok(snapshot) => {
                let ends = snapshot.offsets.iter().map(|((topic, partition), _, _)| {
                    super::list_offsets::lookup(shard, topic, *partition, fb::OffsetSpec::Latest, 0)
                });
                let ends = futures_util::future::join_all(ends)
                    .await
                    .into_iter()
                    .map(|r| r.map_or(-1, |o| o.offset))
                    .collect();
                Ok((snapshot, ends))
            }
            Err(error) => Err(error),
        };
        described.push((group, outcome));
    }
    let mut fbb = FlatBufferBuilder::new();
    let mut entries = Vec::new();
    for (group, outcome) in &described {
        let id = fbb.create_string(group);
        let (error_code, error_message) = error_parts(&mut fbb, outcome.as_ref().err());
        let mut args = fb::GroupDescriptionArgs {
            group_id: Some(id),
            error_code,
            error_message,
            ..Default::default()
        };
        if let Ok((snapshot, ends)) = outcome {
            let members: Vec<_> = snapshot
                .members
                .iter()
                .map(|(member_id, epoch, topics, assignment)| {
                    let member_id = fbb.create_string(member_id);
                    let names: Vec<_> = topics.iter().map(|t| fbb.create_string(t)).collect();
                    let topics = fbb.create_vector(&names);
                    let assignment = encode_topic_partitions(&mut fbb, assignment);
                    let args = fb::MemberDescriptionArgs {
                        member_id: Some(member_id),
                        member_epoch: *epoch,
                        subscribed_topics: Some(topics),
                        assignment: Some(assignment),
                    };
                    fb::MemberDescription::create(&mut fbb, &args)
                })
                .collect();
            let offsets: Vec<_> = snapshot
                .offsets
                .iter()
                .zip(ends)
                .map(|((tp, committed, owner), end)| {
                    committed_offset(&mut fbb, tp, *committed, *end, owner)
                })
                .collect();
            args.state = Some(fbb.create_string(snapshot.state));
            args.assignor = Some(fbb.create_string(snapshot.assignor));
            args.members = Some(fbb.create_vector(&members));
            args.offsets = Some(fbb.create_vector(&offsets));
        }
        entries.push(fb::GroupDescription::create(&mut fbb, &args));
    }
    let groups = fbb.create_vector(&entries);
    let body = fb::DescribeGroupsResponse::create(
        &mut fbb,
        &fb::DescribeGroupsResponseArgs {
            groups: Some(groups),
        },
    );
    Outgoing {
        message: finish(
            fbb,
            correlation_id,
            fb::ResponseBody::DescribeGroupsResponse,
            body.as_union_value(),
        ),
        payload: Vec::new(),
    }
}

fn committed_offset<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    tp: &TopicPartition,
    offset: i64,
    end: i64,
    owner: &str,
) -> WIPOffset<fb::CommittedOffset<'a>> {
    let topic = fbb.create_string(&tp.0);
    let member_id = fbb.create_string(owner);
    let args = fb::CommittedOffsetArgs {
        topic: Some(topic),
        partition: tp.1,
        offset,
        log_end_offset: end,
        member_id: Some(member_id),
    };
    fb::CommittedOffset::create(fbb, &args)
}

fn encode_topic_partitions<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    list: &[TopicPartition],
) -> WIPOffset<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<fb::TopicPartitions<'a>>>> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (topic, partition) in list {
        by_topic.entry(topic).or_default().push(*partition);
    }
    let entries: Vec<_> = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            let topic = fbb.create_string(topic);
            let partitions = fbb.create_vector(&partitions);
            fb::TopicPartitions::create(
                fbb,
                &fb::TopicPartitionsArgs {
                    topic: Some(topic),
                    partitions: Some(partitions),
                },
            )
        })
        .collect();
    fbb.create_vector(&entries)
}

fn encode_heartbeat(
    correlation_id: u32,
    outcome: Result<groups::HeartbeatOutcome, WireError>,
) -> Outgoing {
    let mut fbb = FlatBufferBuilder::new();
    let (error_code, error_message) = error_parts(&mut fbb, outcome.as_ref().err());
    let mut args = fb::GroupHeartbeatResponseArgs {
        error_code,
        error_message,
        heartbeat_interval_ms: groups::state::HEARTBEAT_INTERVAL_MS,
        ..Default::default()
    };
    if let Ok(outcome) = &outcome {
        args.member_id = Some(fbb.create_string(&outcome.member_id));
        args.member_epoch = outcome.member_epoch;
        args.assignment = Some(encode_topic_partitions(&mut fbb, &outcome.assignment));
    }
    let body = fb::GroupHeartbeatResponse::create(&mut fbb, &args);
    Outgoing {
        message: finish(
            fbb,
            correlation_id,
            fb::ResponseBody::GroupHeartbeatResponse,
            body.as_union_value(),
        ),
        payload: Vec::new(),
    }
}

type OffsetRow = (TopicPartition, i64, i64, String);

fn encode_offsets(
    correlation_id: u32,
    body_type: fb::ResponseBody,
    outcome: Result<&Vec<OffsetRow>, WireError>,
) -> Outgoing {
    let mut fbb = FlatBufferBuilder::new();
    let (error_code, error_message) = error_parts(&mut fbb, outcome.as_ref().err());
    let rows: Vec<_> = outcome
        .iter()
        .flat_map(|rows| rows.iter())
        .map(|(tp, offset, end, owner)| committed_offset(&mut fbb, tp, *offset, *end, owner))
        .collect();
    let offsets = Some(fbb.create_vector(&rows));
    let body = if body_type == fb::ResponseBody::OffsetFetchResponse {
        fb::OffsetFetchResponse::create(
            &mut fbb,
            &fb::OffsetFetchResponseArgs {
                error_code,
                error_message,
                offsets,
            },
        )
        .as_union_value()
    } else {
        fb::ResetOffsetsResponse::create(
            &mut fbb,
            &fb::ResetOffsetsResponseArgs {
                error_code,
                error_message,
                offsets,
            },
        )
        .as_union_value()
    };
    Outgoing {
        message: finish(fbb, correlation_id, body_type, body),
        payload: Vec::new(),
    }
}
