use super::*;
use proptest::prelude::*;

fn request_bytes(correlation_id: u32) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let name = fbb.create_string("t");
    let names = fbb.create_vector(&[name]);
    let body = fb::MetadataRequest::create(
        &mut fbb,
        &fb::MetadataRequestArgs {
            topics: Some(names),
        },
    );
    let args = fb::RequestArgs {
        correlation_id,
        api_version: 0,
        client_id: None,
        body_type: fb::RequestBody::MetadataRequest,
        body: Some(body.as_union_value()),
    };
    let request = fb::Request::create(&mut fbb, &args);
    fbb.finish(request, None);
    fbb.finished_data().to_vec()
}

#[test]
fn a_request_round_trips_through_a_frame() {
    let message = request_bytes(7);
    let mut frame = encode_prefix(message.len(), 0).to_vec();
    frame.extend_from_slice(&message);
    let limits = ProtocolLimits::default();
    let prefix = parse_prefix(&frame, &limits).unwrap().unwrap();
    assert_eq!(prefix.frame_bytes, frame.len());
    assert_eq!(prefix.payload_bytes(), 0);
    let request = verify_request(&frame[FRAME_PREFIX_BYTES..prefix.frame_bytes], &limits).unwrap();
    assert_eq!(request.correlation_id(), 7);
    let topics = request
        .body_as_metadata_request()
        .unwrap()
        .topics()
        .unwrap();
    assert_eq!(topics.get(0), "t");
}

#[test]
fn prefixes_are_checked() {
    let limits = ProtocolLimits {
        frame_bytes_max: 1024,
        ..ProtocolLimits::default()
    };
    assert_eq!(parse_prefix(&[1, 0], &limits), Ok(None));
    assert!(matches!(
        parse_prefix(&2000u32.to_le_bytes(), &limits),
        Err(PrefixError::AbsurdLength { .. })
    ));
    assert!(matches!(
        parse_prefix(&encode_prefix(0, 0)[..4], &limits),
        Ok(None)
    ));
    let mut overrun = 10u32.to_le_bytes().to_vec();
    overrun.extend_from_slice(&100u32.to_le_bytes());
    assert_eq!(
        parse_prefix(&overrun, &limits),
        Err(PrefixError::MessageOverrun {
            message_len: 100,
            available: 6,
            frame_bytes: 14
        })
    );
    let mut tiny = 2u32.to_le_bytes().to_vec();
    tiny.extend_from_slice(&0u32.to_le_bytes());
    assert!(matches!(
        parse_prefix(&tiny, &limits),
        Err(PrefixError::AbsurdLength { .. })
    ));
}

#[test]
fn every_api_has_a_version() {
    assert_eq!(max_version(fb::RequestBody::ProduceRequest), Some(0));
    assert_eq!(max_version(fb::RequestBody::NONE), None);
}

proptest! {
    #[test]
    fn garbage_never_panics_the_verifier(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let limits = ProtocolLimits::default();
        let _ = parse_prefix(&bytes, &limits);
        if let Ok(request) = verify_request(&bytes, &limits) {
            let _ = request.body_as_metadata_request().map(|m| m.topics().map(|t| t.len()));
            let _ = request.client_id();
        }
    }

    #[test]
    fn flipped_bytes_are_verified_or_rejected(at in 0usize..200, bit in 0u8..8) {
        let mut message = request_bytes(1);
        let at = at % message.len();
        message[at] ^= 1 << bit;
        if let Ok(request) = verify_request(&message, &ProtocolLimits::default()) {
            // Whatever verified must be safe to read in full.
            if let Some(metadata) = request.body_as_metadata_request() {
                if let Some(topics) = metadata.topics() {
                    for topic in topics.iter() {
                        let _ = topic.len();
                    }
                }
            }
        }
    }
}

#[test]
fn prefixes_past_four_gib_are_refused_not_panicked() {
    assert!(super::checked_prefix(10, u64::from(u32::MAX)).is_none());
    assert!(super::checked_prefix(10, u64::MAX).is_none());
    let prefix = super::checked_prefix(10, 20).unwrap();
    assert_eq!(u32::from_le_bytes(prefix[..4].try_into().unwrap()), 34);
    assert_eq!(u32::from_le_bytes(prefix[4..].try_into().unwrap()), 10);
}
