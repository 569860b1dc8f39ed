use super::*;
use crate::key::KeyEncoder;
use proptest::prelude::*;
use std::fmt::Write as _;

fn key(k: &str) -> WireKey {
    KeyEncoder::new("").unwrap().encode(k)
}

/// One reply, by a parser that keeps every value.
fn parse(buf: &mut BytesMut) -> Result<Option<Reply>, ProtocolError> {
    Parser::new(MAX_DECLARED).parse(buf)
}

fn encoded(req: Request<'_>) -> String {
    let mut out = BytesMut::new();
    req.encode(7, &mut out);
    String::from_utf8(out.to_vec()).unwrap()
}

#[test]
fn requests_are_built_from_typed_values() {
    let k = key("user:1");
    assert_eq!(
        encoded(Request::GetOrLease {
            key: &k,
            lease: 3,
            refresh: 0,
            ttl: false,
        }),
        "mg user:1 v c f k N3 O7\r\n"
    );
    assert_eq!(
        encoded(Request::GetOrLease {
            key: &k,
            lease: 3,
            refresh: 20,
            ttl: false,
        }),
        "mg user:1 v c f k N3 R20 O7\r\n"
    );
    assert_eq!(
        encoded(Request::GetOrLease {
            key: &k,
            lease: 3,
            refresh: 0,
            ttl: true,
        }),
        "mg user:1 v c f k N3 t O7\r\n"
    );
    assert_eq!(
        encoded(Request::SetIfCas {
            key: &k,
            data: b"{}",
            flags: 5,
            ttl: 60,
            cas: 99,
            return_cas: false,
        }),
        "ms user:1 2 T60 C99 F5 O7\r\n{}\r\n"
    );
    assert_eq!(
        encoded(Request::SetIfCas {
            key: &k,
            data: b"{}",
            flags: 5,
            ttl: 60,
            cas: 99,
            return_cas: true,
        }),
        "ms user:1 2 c T60 C99 F5 O7\r\n{}\r\n"
    );
    assert_eq!(
        encoded(Request::Delete {
            key: &k,
            cas: Some(4)
        }),
        "md user:1 C4 O7\r\n"
    );
    assert_eq!(
        encoded(Request::Delete { key: &k, cas: None }),
        "md user:1 O7\r\n"
    );
    assert_eq!(
        encoded(Request::Touch { key: &k, ttl: 4 }),
        "mg user:1 c T4 O7\r\n"
    );
    assert_eq!(
        encoded(Request::Set {
            key: &k,
            data: b"abc",
            flags: 5,
            ttl: 61,
        }),
        "ms user:1 3 T61 F5 O7\r\nabc\r\n"
    );
    assert_eq!(encoded(Request::Get { key: &k }), "mg user:1 v f O7\r\n");
    assert_eq!(
        encoded(Request::TouchChunk { key: &k, ttl: 62 }),
        "mg user:1 s f T62 O7\r\n"
    );
}

#[test]
fn a_hostile_key_cannot_inject_a_command() {
    let k = key("x v\r\nflush_all\r\nmg y");
    let line = encoded(Request::GetOrLease {
        key: &k,
        lease: 1,
        refresh: 0,
        ttl: false,
    });
    assert_eq!(line.matches("\r\n").count(), 1, "{line:?}");
    assert_eq!(line.split(' ').count(), 8, "one key token: {line:?}");
}

fn parse_all(bytes: &[u8]) -> Vec<Reply> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(reply) = parse(&mut buf).unwrap() {
        out.push(reply);
    }
    assert!(buf.is_empty(), "left over: {buf:?}");
    out
}

fn meta(reply: &Reply) -> &Meta {
    match reply {
        Reply::Meta(meta) => meta,
        other => panic!("expected a meta reply, got {other:?}"),
    }
}

/// A chunk's touch, as memcached 1.6.18 answers `mg <key> s f T<ttl> O<op>` (captured).
#[test]
fn a_touch_tells_the_size_and_flags() {
    let replies = parse_all(b"HD s3 f5 O7\r\nEN O8\r\n");
    let there = meta(&replies[0]);
    assert_eq!(
        (there.code, there.size, there.client_flags, there.data.len()),
        (Code::Stored, 3, Some(5), 0)
    );
    assert!(!there.skipped(), "no value asked, none skipped");
    assert_eq!(meta(&replies[1]).code, Code::Miss);
    // A value's size is its `VA`'s, whatever an `s` says.
    let value = parse_all(b"VA 2 s99 f1\r\nab\r\n");
    assert_eq!(
        (meta(&value[0]).size, &meta(&value[0]).data[..]),
        (2, &b"ab"[..])
    );
}

#[test]
fn replies_of_memcached_1_6_parse() {
    // As memcached 1.6.18 answers (captured from a real server).
    let replies = parse_all(
        b"VA 0 c1 f0 O123 kfoo W\r\n\r\n\
          VA 0 c1 f0 O124 Z\r\n\r\n\
          VA 3 c4 f5 O9 X W\r\nold\r\n\
          HD O126\r\nEX O127\r\nNF O128\r\nNS O129\r\nEN\r\n\
          SERVER_ERROR object too large for cache\r\nCLIENT_ERROR bad command line format\r\nERROR\r\n",
    );
    let won = meta(&replies[0]);
    assert!(won.win && !won.won_elsewhere && won.data.is_empty());
    assert_eq!(
        won.key.as_deref().map(WireKey::as_str),
        Some("foo"),
        "the echoed key of a win"
    );
    assert_eq!(
        (won.code, won.cas, won.client_flags, won.opaque),
        (Code::Value, Some(1), Some(0), Some(123))
    );
    assert!(meta(&replies[1]).won_elsewhere);
    let stale = meta(&replies[2]);
    assert!(stale.stale && stale.win);
    assert_eq!(&stale.data[..], b"old");
    let codes: Vec<Code> = replies[3..8].iter().map(|r| meta(r).code).collect();
    assert_eq!(
        codes,
        [
            Code::Stored,
            Code::Exists,
            Code::NotFound,
            Code::NotStored,
            Code::Miss
        ]
    );
    assert_eq!(
        replies[8],
        Reply::Error {
            kind: ErrorKind::Server,
            message: "object too large for cache".into()
        }
    );
    assert!(matches!(
        replies[9],
        Reply::Error {
            kind: ErrorKind::Client,
            ..
        }
    ));
    assert!(matches!(
        replies[10],
        Reply::Error {
            kind: ErrorKind::Command,
            ..
        }
    ));
}

#[test]
fn a_ttl_left_parses_and_no_expiry_is_none() {
    // As memcached 1.6.18 answers `mg … t`, for an item set with T10 and one with T0.
    let replies = parse_all(b"VA 3 c2 f5 ka t10 O2\r\nabc\r\nVA 3 c3 f0 kb t-1 O3\r\nabc\r\n");
    assert_eq!(meta(&replies[0]).ttl, Some(10));
    assert_eq!(meta(&replies[1]).ttl, None);
    assert!(parse(&mut BytesMut::from(&b"VA 0 tx O1\r\n\r\n"[..])).is_err());
}

#[test]
fn partial_replies_wait_for_more_bytes() {
    let whole = b"VA 5 c2 f1 O1\r\nhello\r\n";
    for cut in 0..whole.len() {
        let mut buf = BytesMut::from(&whole[..cut]);
        assert_eq!(parse(&mut buf).unwrap(), None, "cut at {cut}");
        buf.extend_from_slice(&whole[cut..]);
        let reply = parse(&mut buf).unwrap().unwrap();
        assert_eq!(&meta(&reply).data[..], b"hello");
    }
}

#[test]
fn garbage_is_a_protocol_error() {
    for bad in [
        &b"HELLO\r\n"[..],
        b"VA x\r\n",
        b"VA 2 cZ\r\nab\r\n",
        b"VA 2\r\nabcd",
        b"HD O-1\r\n",
        "HD \u{e9}\r\n".as_bytes(),
        "HD O1 \u{1f600}x\r\n".as_bytes(),
    ] {
        assert!(
            parse(&mut BytesMut::from(bad)).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(parse(&mut BytesMut::from(&[b'a'; MAX_LINE + 1][..])).is_err());
}

#[test]
fn a_value_over_the_limit_is_skipped_without_room_reserved_for_it() {
    let mut parser = Parser::new(1000);
    let mut wire = b"VA 100000 c9 f7 O1\r\n".to_vec();
    wire.extend_from_slice(&[b'x'; 100_000]);
    wire.extend_from_slice(b"\r\nHD O2\r\n");
    let mut buf = BytesMut::with_capacity(8192);
    let mut replies = Vec::new();
    for chunk in wire.chunks(7001) {
        buf.extend_from_slice(chunk);
        while let Some(reply) = parser.parse(&mut buf).unwrap() {
            replies.push(reply);
        }
        assert!(
            buf.capacity() <= 16 * 1024,
            "never more room than a read's worth: {}",
            buf.capacity()
        );
    }
    let skipped = meta(&replies[0]);
    assert!(skipped.skipped() && skipped.data.is_empty());
    assert_eq!(
        (
            skipped.size,
            skipped.cas,
            skipped.client_flags,
            skipped.opaque
        ),
        (100_000, Some(9), Some(7), Some(1))
    );
    assert!(!skipped.won_lease(), "a skipped value is not an empty stub");
    assert_eq!(meta(&replies[1]).opaque, Some(2), "still in step");
    assert!(buf.is_empty());
}

/// What the test checks of a parsed reply: code (None for an error), value, CAS, client
/// flags, opaque, W, X.
type Fields = (
    Option<Code>,
    Vec<u8>,
    Option<u64>,
    Option<u32>,
    Option<u32>,
    bool,
    bool,
);

/// A reply as memcached 1.6 writes it, and what it parses to.
fn reply_strategy() -> impl Strategy<Value = (Vec<u8>, Fields)> {
    let value = (
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(data, cas, flags, opaque, win, stale)| {
            let mut wire = format!("VA {} c{cas} f{flags} O{opaque}", data.len()).into_bytes();
            if win {
                wire.extend_from_slice(b" W");
            }
            if stale {
                wire.extend_from_slice(b" X");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&data);
            wire.extend_from_slice(b"\r\n");
            let expected = (
                Some(Code::Value),
                data,
                Some(cas),
                Some(flags),
                Some(opaque),
                win,
                stale,
            );
            (wire, expected)
        });
    let status = (
        prop_oneof![
            Just(("HD", Code::Stored)),
            Just(("EN", Code::Miss)),
            Just(("NS", Code::NotStored)),
            Just(("EX", Code::Exists)),
            Just(("NF", Code::NotFound)),
        ],
        any::<u32>(),
    )
        .prop_map(|((head, code), opaque)| {
            let wire = format!("{head} O{opaque}\r\n").into_bytes();
            (
                wire,
                (
                    Some(code),
                    Vec::new(),
                    None,
                    None,
                    Some(opaque),
                    false,
                    false,
                ),
            )
        });
    let error = prop_oneof![
        Just("SERVER_ERROR out of memory storing object\r\n"),
        Just("CLIENT_ERROR bad data chunk\r\n"),
        Just("ERROR\r\n"),
    ]
    .prop_map(|line| {
        (
            line.as_bytes().to_vec(),
            (None, Vec::new(), None, None, None, false, false),
        )
    });
    prop_oneof![4 => value, 3 => status, 1 => error]
}

fn fields(reply: &Reply) -> Fields {
    match reply {
        Reply::Meta(m) => (
            Some(m.code),
            m.data.to_vec(),
            m.cas,
            m.client_flags,
            m.opaque,
            m.win,
            m.stale,
        ),
        Reply::Error { .. } => (None, Vec::new(), None, None, None, false, false),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn the_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut parser = Parser::new(100);
        while let Ok(Some(_)) = parser.parse(&mut buf) {}
    }

    #[test]
    fn every_value_round_trips(data in proptest::collection::vec(any::<u8>(), 0..2000), cas in any::<u64>(), flags in any::<u32>()) {
        let mut buf = BytesMut::new();
        write!(buf, "VA {} c{cas} f{flags} O3\r\n", data.len()).unwrap();
        buf.extend_from_slice(&data);
        buf.extend_from_slice(b"\r\n");
        let reply = parse(&mut buf).unwrap().unwrap();
        let m = meta(&reply);
        prop_assert_eq!((&m.data[..], m.cas, m.client_flags, m.opaque), (&data[..], Some(cas), Some(flags), Some(3)));
    }

    /// Valid replies, pipelined, arriving cut at arbitrary points (as TCP may deliver them),
    /// parse to exactly what was sent, in order, whatever the cuts; values over the limit
    /// come back skipped, with the replies after them intact.
    #[test]
    fn replies_cut_anywhere_parse_to_what_was_sent(
        replies in proptest::collection::vec(reply_strategy(), 1..8),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
        limit in prop_oneof![Just(usize::MAX), 0usize..300],
    ) {
        let wire: Vec<u8> = replies.iter().flat_map(|(w, _)| w.clone()).collect();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut parser = Parser::new(limit);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut from = 0;
        for to in points {
            buf.extend_from_slice(&wire[from..to]);
            from = to;
            while let Some(reply) = parser.parse(&mut buf).unwrap() {
                got.push(reply);
            }
        }
        prop_assert!(buf.is_empty());
        let expected: Vec<_> = replies.iter().map(|(_, e)| {
            let mut e = e.clone();
            if e.1.len() > limit {
                e.1.clear();
            }
            e
        }).collect();
        let got: Vec<_> = got.iter().map(fields).collect();
        prop_assert_eq!(got, expected);
    }
}
