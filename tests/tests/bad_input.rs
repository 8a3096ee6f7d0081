//! The broker answers bad input with an error, or closes the connection when
//! the frame boundary is lost, and keeps serving everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use flatbuffers::FlatBufferBuilder;
use shardlog_client::protocol::{encode_request, Acks, Request, Response};
use shardlog_client::ErrorCode;
use shardlog_tests::{batch, consume_all, create_topic, produce, Broker};
use shardlog_wire::batch::BatchBuilderOptions;
use shardlog_wire::protocol::{encode_prefix, fb};

fn still_serves(broker: &Broker) {
    let mut connection = broker.connect();
    assert!(
        matches!(connection.call(&Request::ApiVersions).unwrap(), Response::ApiVersions(apis) if apis.len() >= 8)
    );
}

fn frame(message: &[u8]) -> Vec<u8> {
    let mut frame = encode_prefix(message.len(), 0).to_vec();
    frame.extend_from_slice(message);
    frame
}

fn raw_request(body_type: fb::RequestBody, api_version: u16) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let body = fb::ApiVersionsRequest::create(
        &mut fbb,
        &fb::ApiVersionsRequestArgs {
            client_software: None,
        },
    );
    let args = fb::RequestArgs {
        correlation_id: 77,
        api_version,
        client_id: None,
        body_type,
        body: Some(body.as_union_value()),
    };
    let root = fb::Request::create(&mut fbb, &args);
    fbb.finish(root, None);
    frame(fbb.finished_data())
}

#[test]
fn garbage_inside_an_intact_frame_gets_an_error_and_the_connection_lives() {
    let broker = Broker::start(2, &[]);
    let mut connection = broker.connect();
    let mut seed = 0x1234_5678_9abc_def0u64;
    for round in 0..50 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let garbage: Vec<u8> = (0..(seed % 300) as usize)
            .map(|i| (seed >> (i % 56)) as u8 ^ i as u8)
            .collect();
        connection.send_raw(&frame(&garbage)).unwrap();
        let (_, response) = connection.receive().unwrap();
        assert!(
            matches!(response, Response::Error(ref e) if e.code == ErrorCode::MalformedFrame),
            "round {round}: {response:?}"
        );
    }
    assert!(
        matches!(
            connection.call(&Request::ApiVersions).unwrap(),
            Response::ApiVersions(_)
        ),
        "the same connection still works"
    );
}

#[test]
fn unknown_apis_and_versions_are_refused_by_code() {
    let broker = Broker::start(2, &[]);
    let mut connection = broker.connect();
    connection
        .send_raw(&raw_request(fb::RequestBody(200), 0))
        .unwrap();
    let (correlation_id, response) = connection.receive().unwrap();
    assert_eq!(correlation_id, 77);
    assert!(
        matches!(response, Response::Error(ref e) if e.code == ErrorCode::UnknownApi),
        "{response:?}"
    );
    connection
        .send_raw(&raw_request(fb::RequestBody::ApiVersionsRequest, 9))
        .unwrap();
    let (_, response) = connection.receive().unwrap();
    assert!(
        matches!(response, Response::Error(ref e) if e.code == ErrorCode::UnsupportedVersion),
        "{response:?}"
    );
    let mut overrun = 100u32.to_le_bytes().to_vec();
    overrun.extend_from_slice(&500u32.to_le_bytes());
    overrun.extend_from_slice(&[0u8; 96]);
    connection.send_raw(&overrun).unwrap();
    let (_, response) = connection.receive().unwrap();
    assert!(
        matches!(response, Response::Error(ref e) if e.code == ErrorCode::MalformedFrame),
        "{response:?}"
    );
    assert!(matches!(
        connection.call(&Request::ApiVersions).unwrap(),
        Response::ApiVersions(_)
    ));
}

#[test]
fn an_absurd_length_closes_the_connection_only() {
    let broker = Broker::start(2, &[]);
    let mut stream = TcpStream::connect(broker.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&u32::MAX.to_le_bytes()).unwrap();
    stream.write_all(&[0u8; 64]).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        stream.read(&mut buf).unwrap_or(0),
        0,
        "the broker closed the connection"
    );
    still_serves(&broker);
}

#[test]
fn truncated_frames_and_abandoned_connections_do_not_disturb_others() {
    let broker = Broker::start(2, &[]);
    for _ in 0..20 {
        let mut stream = TcpStream::connect(broker.addr).unwrap();
        let request = encode_request(1, &Request::Metadata(vec![]));
        stream.write_all(&request[..request.len() / 2]).unwrap();
        drop(stream);
        let mut stream = TcpStream::connect(broker.addr).unwrap();
        stream.write_all(&[1, 2, 3]).unwrap();
        drop(stream);
    }
    still_serves(&broker);
}

#[test]
fn a_corrupt_batch_is_refused_and_nothing_is_stored() {
    let broker = Broker::start(2, &[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "safe", 2);
    produce(&mut connection, "safe", 1, &["good".to_string()]);
    let good = batch(
        &["a".to_string(), "b".to_string()],
        BatchBuilderOptions::default(),
    );
    let mut corrupt = good.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x20;
    // A good batch followed by a corrupt one in the same partition: all or nothing.
    let mut both = good.to_vec();
    both.extend_from_slice(&corrupt);
    for data in [corrupt.clone(), both, good[..good.len() - 3].to_vec()] {
        let request = Request::Produce {
            acks: Acks::All,
            timeout_ms: 5_000,
            partitions: vec![("safe".into(), 1, data.into())],
        };
        let Response::Produce(results) = connection.call(&request).unwrap() else {
            panic!()
        };
        assert_eq!(
            results[0].error.as_ref().unwrap().code,
            ErrorCode::CorruptBatch
        );
    }
    let request = Request::Produce {
        acks: Acks::All,
        timeout_ms: 5_000,
        partitions: vec![("safe".into(), 9, good.clone())],
    };
    let Response::Produce(results) = connection.call(&request).unwrap() else {
        panic!()
    };
    assert_eq!(
        results[0].error.as_ref().unwrap().code,
        ErrorCode::UnknownTopicOrPartition
    );
    assert_eq!(
        consume_all(&mut connection, "safe", 1, 0),
        vec![(0, "good".to_string())]
    );
}
