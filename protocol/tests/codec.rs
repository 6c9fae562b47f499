//! Property tests of the frame codec: round trips, truncation, corruption
//! and limits.

use ember_protocol::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn request_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,128}"
}

fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,40}"
}

fn header_text() -> impl Strategy<Value = String> {
    "[ -~]{0,60}"
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn error_info() -> impl Strategy<Value = ErrorInfo> {
    (text(), text()).prop_map(|(error_type, error_message)| ErrorInfo {
        error_type,
        error_message,
    })
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Ok),
        error_info().prop_map(Outcome::HandledError),
        error_info().prop_map(Outcome::UnhandledError),
        Just(Outcome::Timeout),
        any::<i32>().prop_map(|s| Outcome::RuntimeExit(ExitInfo {
            status: Some(s),
            signal: None
        })),
        any::<i32>().prop_map(|s| Outcome::RuntimeExit(ExitInfo {
            status: None,
            signal: Some(s)
        })),
    ]
}

fn configure() -> impl Strategy<Value = Configure> {
    (
        "[a-z][a-z0-9-]{0,20}",
        text(),
        header_text(),
        text(),
        prop_oneof![
            Just(RuntimeKind::Provided),
            Just(RuntimeKind::Exec),
            Just(RuntimeKind::Python313),
            Just(RuntimeKind::Nodejs20)
        ],
        vec(("[A-Z_][A-Z0-9_]{0,10}", text()), 0..8),
        1u32..10_240,
        any::<u64>(),
        1u64..u64::MAX,
    )
        .prop_map(
            |(name, version, arn, handler, runtime, env, memory_mib, timeout_ms, init)| Configure {
                function_name: name,
                function_version: version,
                function_arn: arn,
                handler,
                runtime,
                env,
                memory_mib,
                timeout_ms,
                init_timeout_ms: init,
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (text(), any::<u64>(), any::<u64>()).prop_map(|(v, k, a)| Message::Hello(Hello {
            agent_version: v,
            boot: BootTiming {
                kernel_us: k,
                agent_us: a
            }
        })),
        configure().prop_map(Message::Configure),
        any::<u64>().prop_map(|d| Message::Ready(Ready {
            init_duration_us: d
        })),
        error_info().prop_map(Message::InitError),
        (
            request_id(),
            1u64..u64::MAX,
            bytes(300),
            option::of(header_text()),
            option::of(header_text())
        )
            .prop_map(
                |(request_id, timeout_ms, payload, client_context, trace_id)| {
                    Message::Invoke(Invoke {
                        request_id,
                        timeout_ms,
                        payload,
                        client_context,
                        trace_id,
                    })
                }
            ),
        (
            request_id(),
            outcome(),
            bytes(300),
            any::<u64>(),
            option::of(any::<u64>()),
            option::of(any::<u64>()),
            bytes(LOG_TAIL_LEN + 1)
        )
            .prop_map(|(request_id, outcome, payload, d, i, p, log_tail)| {
                Message::Result(InvokeResult {
                    request_id,
                    outcome,
                    payload,
                    duration_us: d,
                    init_duration_us: i,
                    peak_memory_bytes: p,
                    log_tail,
                })
            }),
        (
            option::of(request_id()),
            prop_oneof![
                Just(LogStream::Stdout),
                Just(LogStream::Stderr),
                Just(LogStream::Agent)
            ],
            bytes(200)
        )
            .prop_map(|(request_id, stream, data)| Message::Log(LogRecord {
                request_id,
                stream,
                data
            })),
        any::<u64>().prop_map(Message::Ping),
        any::<u64>().prop_map(Message::Pong),
        Just(Message::Shutdown),
        (option::of(request_id()), 1u16..=9, text()).prop_map(|(request_id, c, message)| {
            Message::Error(ProtocolError {
                request_id,
                code: ErrorCode::from_u16(c).unwrap(),
                message,
            })
        }),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(m in message()) {
        let frame = m.encode().unwrap();
        let (back, used) = Message::decode(&frame).unwrap();
        prop_assert_eq!(used, frame.len());
        prop_assert_eq!(back, m);
    }

    #[test]
    fn a_stream_of_frames_reads_back_in_order(ms in vec(message(), 0..6)) {
        let mut stream = Vec::new();
        for m in &ms {
            write_message(&mut stream, m).unwrap();
        }
        let mut r = &stream[..];
        for m in &ms {
            let got = read_message(&mut r).unwrap().unwrap().unwrap();
            prop_assert_eq!(&got, m);
        }
        prop_assert!(read_message(&mut r).unwrap().is_none());
    }

    #[test]
    fn every_truncation_is_incomplete_never_a_message(m in message(), cut in any::<prop::sample::Index>()) {
        let frame = m.encode().unwrap();
        let cut = cut.index(frame.len());
        match Message::decode(&frame[..cut]) {
            Err(DecodeError::Incomplete { needed }) => prop_assert!(needed > cut),
            other => prop_assert!(false, "cut at {}: {:?}", cut, other),
        }
        let mut r = &frame[..cut];
        let res = read_message(&mut r);
        if cut == 0 {
            prop_assert!(matches!(res, Ok(None)));
        } else {
            prop_assert_eq!(res.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
        }
    }

    #[test]
    fn a_body_cut_short_inside_its_frame_is_refused(m in message(), cut in any::<prop::sample::Index>()) {
        // The header is rewritten to match the shorter body: framing stays
        // intact but a field is missing.
        let frame = m.encode().unwrap();
        let body_len = frame.len() - HEADER_LEN;
        prop_assume!(body_len > 0);
        let keep = cut.index(body_len);
        let mut short = frame[..HEADER_LEN + keep].to_vec();
        short[..4].copy_from_slice(&(keep as u32).to_be_bytes());
        prop_assert!(Message::decode(&short).is_err());
    }

    #[test]
    fn random_bytes_never_panic(buf in bytes(512)) {
        let _ = Message::decode(&buf);
        let mut r = &buf[..];
        while let Ok(Some(_)) = read_message(&mut r) {}
    }

    #[test]
    fn flipped_bytes_decode_or_fail_cleanly(m in message(), at in any::<prop::sample::Index>(), x in 1u8..) {
        let mut frame = m.encode().unwrap();
        let i = at.index(frame.len());
        frame[i] ^= x;
        if let Ok((back, _)) = Message::decode(&frame) {
            // Whatever decodes must itself be a valid, encodable message.
            prop_assert!(back.encode().is_ok());
        }
    }

    #[test]
    fn unknown_types_and_versions_are_refused_with_the_frame_skipped(
        kind in 12u8.., version in 2u8.., body in bytes(64), m in message()
    ) {
        let mut stream = Vec::new();
        for (v, k) in [(PROTOCOL_VERSION, kind), (version, MessageType::Ping as u8)] {
            stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
            stream.extend_from_slice(&[v, k, 0, 0]);
            stream.extend_from_slice(&body);
        }
        write_message(&mut stream, &m).unwrap();
        let mut r = &stream[..];
        let e = read_message(&mut r).unwrap().unwrap().unwrap_err();
        prop_assert_eq!(e.to_protocol_error().code, ErrorCode::UnknownMessageType);
        let e = read_message(&mut r).unwrap().unwrap().unwrap_err();
        prop_assert_eq!(e.to_protocol_error().code, ErrorCode::UnsupportedVersion);
        prop_assert_eq!(read_message(&mut r).unwrap().unwrap().unwrap(), m);
    }
}

fn invoke(payload_len: usize) -> Invoke {
    Invoke {
        request_id: "req-1".into(),
        timeout_ms: 1000,
        payload: vec![7; payload_len],
        client_context: None,
        trace_id: None,
    }
}

#[test]
fn a_payload_of_exactly_the_limit_passes() {
    let m = Message::Invoke(invoke(MAX_PAYLOAD_LEN));
    let frame = m.encode().unwrap();
    assert_eq!(Message::decode(&frame).unwrap().0, m);
}

#[test]
fn the_encoder_refuses_a_payload_over_the_limit() {
    let err = Message::Invoke(invoke(MAX_PAYLOAD_LEN + 1))
        .encode()
        .unwrap_err();
    assert_eq!(
        err,
        EncodeError::PayloadTooLarge {
            len: MAX_PAYLOAD_LEN + 1
        }
    );
    assert!(err
        .to_string()
        .contains("exceeds the limit of 6291456 bytes"));
}

#[test]
fn the_decoder_refuses_a_payload_over_the_limit_naming_the_request() {
    // Build the oversized frame by hand: the encoder would refuse it.
    let mut frame = Message::Invoke(invoke(MAX_PAYLOAD_LEN)).encode().unwrap();
    frame.push(7);
    let body_len = (frame.len() - HEADER_LEN) as u32;
    frame[..4].copy_from_slice(&body_len.to_be_bytes());
    let len_at = frame.len() - MAX_PAYLOAD_LEN - 1 - 4;
    frame[len_at..len_at + 4].copy_from_slice(&(MAX_PAYLOAD_LEN as u32 + 1).to_le_bytes());
    let err = Message::decode(&frame).unwrap_err();
    assert_eq!(
        err,
        DecodeError::PayloadTooLarge {
            request_id: Some("req-1".into()),
            len: MAX_PAYLOAD_LEN + 1
        }
    );
    let pe = err.to_protocol_error();
    assert_eq!(pe.code, ErrorCode::PayloadTooLarge);
    assert_eq!(pe.request_id.as_deref(), Some("req-1"));
}

#[test]
fn an_oversized_frame_is_skipped_on_a_stream() {
    let len = MAX_BODY_LEN + 10;
    let mut stream = (len as u32).to_be_bytes().to_vec();
    stream.extend_from_slice(&[PROTOCOL_VERSION, MessageType::Invoke as u8, 0, 0]);
    stream.resize(HEADER_LEN + len, 0);
    write_message(&mut stream, &Message::Ping(9)).unwrap();
    let mut r = &stream[..];
    let e = read_message(&mut r).unwrap().unwrap().unwrap_err();
    assert_eq!(e, DecodeError::FrameTooLarge { len });
    assert_eq!(e.to_protocol_error().code, ErrorCode::FrameTooLarge);
    assert_eq!(
        read_message(&mut r).unwrap().unwrap().unwrap(),
        Message::Ping(9)
    );
}

#[test]
fn invalid_fields_are_refused_by_the_encoder() {
    let mut i = invoke(1);
    i.request_id = "has space".into();
    assert!(Message::Invoke(i.clone()).encode().is_err());
    i.request_id = "a/b".into();
    assert!(Message::Invoke(i.clone()).encode().is_err());
    i.request_id = "ok".into();
    i.trace_id = Some("line\nbreak".into());
    assert!(Message::Invoke(i).encode().is_err());
    let tail = InvokeResult {
        request_id: "r".into(),
        outcome: Outcome::Ok,
        payload: vec![],
        duration_us: 0,
        init_duration_us: None,
        peak_memory_bytes: None,
        log_tail: vec![0; LOG_TAIL_LEN + 1],
    };
    assert!(Message::Result(tail).encode().is_err());
}

#[test]
fn reserved_header_bytes_must_be_zero() {
    let mut frame = Message::Ping(1).encode().unwrap();
    frame[7] = 1;
    assert_eq!(Message::decode(&frame).unwrap_err(), DecodeError::BadHeader);
}
