//! Codec unit tests on byte buffers: no sockets.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::app::{Body, Response, Version};

fn decode_all(input: &[u8]) -> Result<Vec<Decoded>, HttpError> {
    let mut dec = Decoder::new();
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    loop {
        match dec.decode(&mut buf, &Limits::default())? {
            Decoded::NeedMore => return Ok(out),
            d => out.push(d),
        }
    }
}

fn one(input: &[u8]) -> (crate::app::Request, RequestMeta) {
    let mut v = decode_all(input).expect("decodes");
    assert_eq!(v.len(), 1, "one request expected");
    match v.remove(0) {
        Decoded::Request(r, m) => (r, m),
        other => panic!("expected a request, got {other:?}"),
    }
}

fn status_of(input: &[u8]) -> u16 {
    decode_all(input).expect_err("must fail").status()
}

#[test]
fn simple_get() {
    let (r, m) = one(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.method(), "GET");
    assert_eq!(r.path(), "/a");
    assert_eq!(r.query(), "b=c");
    assert!(m.keep_alive);
    assert!(!m.head);
}

#[test]
fn keep_alive_rules() {
    assert!(!one(b"GET / HTTP/1.0\r\n\r\n").1.keep_alive);
    let (_, m) = one(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert!(m.keep_alive && m.echo_keep_alive);
    assert!(
        !one(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .1
            .keep_alive
    );
    assert!(
        !one(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n")
            .1
            .keep_alive
    );
}

#[test]
fn incremental_head_and_body() {
    let full = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    let mut dec = Decoder::new();
    let mut buf = BytesMut::new();
    let mut got = None;
    for &b in full.iter() {
        buf.extend_from_slice(&[b]);
        match dec.decode(&mut buf, &Limits::default()).unwrap() {
            Decoded::Request(r, _) => got = Some(r),
            Decoded::NeedMore => {}
            Decoded::Continue => panic!("no continue without Expect"),
            Decoded::Head { .. } => unreachable!("only from decode_head_first"),
        }
    }
    assert_eq!(&got.expect("request").body[..], b"hello");
}

#[test]
fn pipelined_requests_in_order() {
    let v = decode_all(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nokGET /3 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let paths: Vec<String> = v
        .iter()
        .map(|d| match d {
            Decoded::Request(r, _) => r.path().into_owned(),
            _ => panic!(),
        })
        .collect();
    assert_eq!(paths, ["/1", "/2", "/3"]);
}

#[test]
fn chunked_body_with_extensions_and_trailers() {
    let (r, _) = one(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
    );
    assert_eq!(&r.body[..], b"hello world");
}

#[test]
fn chunked_body_split_everywhere() {
    let full: &[u8] =
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n";
    for split in 1..full.len() {
        let mut dec = Decoder::new();
        let mut buf = BytesMut::from(&full[..split]);
        let mut got = None;
        if let Decoded::Request(r, _) = dec.decode(&mut buf, &Limits::default()).unwrap() {
            got = Some(r);
        }
        buf.extend_from_slice(&full[split..]);
        if got.is_none() {
            if let Decoded::Request(r, _) = dec.decode(&mut buf, &Limits::default()).unwrap() {
                got = Some(r);
            }
        }
        assert_eq!(
            &got.expect("complete").body[..],
            b"0123456789",
            "split at {split}"
        );
    }
}

#[test]
fn expect_continue_reported_once() {
    let mut dec = Decoder::new();
    let mut buf = BytesMut::from(
        &b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"[..],
    );
    assert!(matches!(
        dec.decode(&mut buf, &Limits::default()).unwrap(),
        Decoded::Continue
    ));
    assert!(matches!(
        dec.decode(&mut buf, &Limits::default()).unwrap(),
        Decoded::NeedMore
    ));
    buf.extend_from_slice(b"abc");
    match dec.decode(&mut buf, &Limits::default()).unwrap() {
        Decoded::Request(r, _) => assert_eq!(&r.body[..], b"abc"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn expect_continue_not_needed_when_body_came_along() {
    let v = decode_all(
        b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    )
    .unwrap();
    assert_eq!(v.len(), 1);
    assert!(matches!(v[0], Decoded::Request(..)));
}

#[test]
fn limits_map_to_statuses() {
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    assert_eq!(status_of(long_uri.as_bytes()), 414);
    // An endless request line is cut off before the head completes.
    let endless = format!("GET /{}", "a".repeat(20000));
    assert_eq!(status_of(endless.as_bytes()), 414);
    let many = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        "X-A: b\r\n".repeat(150)
    );
    assert_eq!(status_of(many.as_bytes()), 431);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70000)
    );
    assert_eq!(status_of(big.as_bytes()), 431);
    let body = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n";
    assert_eq!(status_of(body), 413);
    let limits = Limits {
        max_body: 4,
        ..Limits::default()
    };
    let mut dec = Decoder::new();
    let mut buf = BytesMut::from(
        &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"[..],
    );
    assert_eq!(dec.decode(&mut buf, &limits).unwrap_err().status(), 413);
}

#[test]
fn malformed_requests_are_400() {
    assert_eq!(
        status_of(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"),
        400
    );
    assert_eq!(status_of(b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(
        status_of(b"GET / HTTP/1.1\r\n\r\n"),
        400,
        "1.1 without Host"
    );
    assert_eq!(
        status_of(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        400
    );
    assert_eq!(status_of(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 505);
}

#[test]
fn smuggling_defences() {
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
    ];
    for c in cases {
        assert_eq!(status_of(c), 400, "{}", String::from_utf8_lossy(c));
    }
    assert_eq!(
        status_of(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
        501
    );
}

fn meta(version: Version, keep_alive: bool, head: bool) -> RequestMeta {
    RequestMeta {
        version,
        keep_alive,
        head,
        echo_keep_alive: version == Version::Http10 && keep_alive,
        te_trailers: false,
        close_delimited: false,
    }
}

fn encode(resp: &Response, m: RequestMeta) -> (String, BodyEncoder, bool) {
    let mut out = BytesMut::new();
    let (enc, ka) = encode_head(&mut out, resp, &m, false).unwrap();
    (String::from_utf8(out.to_vec()).unwrap(), enc, ka)
}

#[test]
fn full_body_gets_content_length_and_date() {
    let r = Response::text(200, "Hello world");
    let (head, enc, ka) = encode(&r, meta(Version::Http11, true, false));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(head.contains("Content-Length: 11\r\n"));
    assert!(head.contains("\r\nDate: "));
    assert!(head.ends_with("\r\n\r\n"));
    assert!(!head.contains("Connection"));
    assert_eq!(enc.framing(), Framing::Length(11));
    assert!(ka);
}

#[test]
fn http10_keep_alive_is_echoed() {
    let r = Response::text(200, "x");
    let (head, _, ka) = encode(&r, meta(Version::Http10, true, false));
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"));
    assert!(head.contains("Connection: keep-alive\r\n"));
    assert!(ka);
    let (head, _, ka) = encode(&r, meta(Version::Http10, false, false));
    assert!(head.contains("Connection: close\r\n"));
    assert!(!ka);
}

#[test]
fn unknown_length_is_chunked_on_11_and_close_delimited_on_10() {
    let stream =
        || Response::new(200).with_body(Body::Stream(Box::pin(futures_util::stream::empty())));
    let (head, mut enc, ka) = encode(&stream(), meta(Version::Http11, true, false));
    assert!(head.contains("Transfer-Encoding: chunked\r\n"));
    assert!(ka);
    let mut out = BytesMut::new();
    enc.push(&mut out, b"hello");
    enc.push(&mut out, &[b'x'; 26]);
    enc.finish(&mut out).unwrap();
    assert_eq!(
        &out[..],
        &b"5\r\nhello\r\n1a\r\nxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n0\r\n\r\n"[..]
    );
    let (head, enc, ka) = encode(&stream(), meta(Version::Http10, true, false));
    assert!(!head.contains("chunked"));
    assert!(head.contains("Connection: close\r\n"));
    assert_eq!(enc.framing(), Framing::Close);
    assert!(!ka);
}

#[test]
fn head_has_length_but_no_body() {
    let r = Response::text(200, "Hello world");
    let (head, mut enc, _) = encode(&r, meta(Version::Http11, true, true));
    assert!(head.contains("Content-Length: 11\r\n"));
    let mut out = BytesMut::new();
    enc.push(&mut out, b"Hello world");
    enc.finish(&mut out).unwrap();
    assert!(out.is_empty());
}

#[test]
fn app_content_length_truncates_and_detects_short() {
    let r = Response::new(200)
        .with_header("Content-Length", Bytes::from_static(b"4"))
        .with_body(Body::Stream(Box::pin(futures_util::stream::empty())));
    let (head, mut enc, _) = encode(&r, meta(Version::Http11, true, false));
    assert!(head.contains("Content-Length: 4\r\n"));
    assert_eq!(head.matches("Content-Length").count(), 1);
    let mut out = BytesMut::new();
    enc.push(&mut out, b"abcdef");
    assert_eq!(&out[..], b"abcd");
    assert!(enc.finish(&mut out).is_ok());
    let (_, mut enc, _) = encode(&r, meta(Version::Http11, true, false));
    enc.push(&mut out, b"ab");
    assert_eq!(enc.finish(&mut out), Err(ShortBody { missing: 2 }));
}

#[test]
fn no_body_statuses() {
    let r = Response::new(204).with_body(Body::Full(Bytes::from_static(b"ignored")));
    let (head, enc, _) = encode(&r, meta(Version::Http11, true, false));
    assert!(!head.contains("Content-Length"));
    assert_eq!(enc.framing(), Framing::None);
    let r = Response::new(304);
    let (head, _, _) = encode(&r, meta(Version::Http11, true, false));
    assert!(!head.contains("Content-Length"));
}

#[test]
fn bad_app_headers_are_errors() {
    let mut out = BytesMut::new();
    let m = meta(Version::Http11, true, false);
    let r = Response::new(200).with_header("X-A", Bytes::from_static(b"a\r\nInjected: 1"));
    assert_eq!(
        encode_head(&mut out, &r, &m, false).unwrap_err().status(),
        500
    );
    let r = Response::new(200).with_header("Bad Name", Bytes::from_static(b"x"));
    assert!(encode_head(&mut out, &r, &m, false).is_err());
    let r = Response::new(200).with_header("Content-Length", Bytes::from_static(b"abc"));
    assert!(encode_head(&mut out, &r, &m, false).is_err());
}

#[test]
fn server_owned_headers_are_not_duplicated() {
    let r = Response::text(200, "x")
        .with_header("Connection", Bytes::from_static(b"keep-alive"))
        .with_header("Transfer-Encoding", Bytes::from_static(b"chunked"));
    let (head, _, _) = encode(&r, meta(Version::Http11, false, false));
    assert_eq!(head.matches("Connection").count(), 1);
    assert!(head.contains("Connection: close"));
    assert!(!head.contains("Transfer-Encoding"));
}

#[test]
fn error_response_closes() {
    let mut out = BytesMut::new();
    encode_error(&mut out, &HttpError::UriTooLong, Version::Http11);
    let s = String::from_utf8(out.to_vec()).unwrap();
    assert!(s.starts_with("HTTP/1.1 414 URI Too Long\r\n"));
    assert!(s.contains("Connection: close\r\n"));
}

#[test]
fn strict_fields_and_targets() {
    let cases: &[(&[u8], u16)] = &[
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x07b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX : y\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Type: a\r\ncontent-type: b\r\n\r\n",
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent_Length: 5\r\n\r\n",
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET x.y:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET a/b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT x.y HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT x.y:443 HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"GET / HTTP/111\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/0.99\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nHost: y\r\n\r\n",
            400,
        ),
    ];
    for (input, status) in cases {
        assert_eq!(
            status_of(input),
            *status,
            "{}",
            String::from_utf8_lossy(input)
        );
    }
    let (r, _) = one(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(&r.target[..], b"*");
    let (r, _) = one(b"GET http://h:8/p?q HTTP/1.1\r\nHost: h\r\nX-L: caf\xe9\r\n\r\n");
    assert_eq!(&r.target[..], b"http://h:8/p?q");
    assert_eq!(r.header("x-l"), Some(&b"caf\xe9"[..]));
}

#[test]
fn version_answer_does_not_depend_on_reads() {
    // `HTTP/2` could still become `HTTP/2.0` (505) or `HTTP/2x` (400): wait for the line.
    let mut dec = Decoder::new();
    let mut buf = BytesMut::from(&b"GET / HTTP/2"[..]);
    assert!(matches!(
        dec.decode(&mut buf, &Limits::default()),
        Ok(Decoded::NeedMore)
    ));
    buf.extend_from_slice(b".0\r\n\r\n");
    assert_eq!(
        dec.decode(&mut buf, &Limits::default())
            .unwrap_err()
            .status(),
        505
    );
}

#[test]
fn long_request_line_is_414_even_past_the_head_limit() {
    let limits = Limits {
        max_uri: 4096,
        max_head: 4096,
        ..Limits::default()
    };
    let line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(4100));
    for input in [&line[..], &line[..4110]] {
        let mut buf = BytesMut::from(input.as_bytes());
        let err = Decoder::new().decode(&mut buf, &limits).unwrap_err();
        assert_eq!(err.status(), 414);
    }
}

#[test]
fn empty_lines_before_a_request_are_bounded() {
    let (r, _) = one(b"\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.path(), "/x");
    let endless = "\r\n".repeat(40_000);
    assert_eq!(status_of(endless.as_bytes()), 431);
}

#[test]
fn head_first_hands_out_the_head_then_the_body_in_pieces() {
    use crate::http::Piece;
    let limits = Limits::default();
    let mut dec = Decoder::new();
    // Whole: an ordinary request.
    let mut buf =
        BytesMut::from(&b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"[..]);
    assert!(matches!(
        dec.decode_head_first(&mut buf, &limits).unwrap(),
        Decoded::Request(r, _) if &r.body[..] == b"abc"
    ));
    // Part of a sized body: the head with what is here, then pieces.
    let mut buf = BytesMut::from(&b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nab"[..]);
    match dec.decode_head_first(&mut buf, &limits).unwrap() {
        Decoded::Head {
            req,
            expect_continue,
            ..
        } => {
            assert_eq!(&req.body[..], b"ab");
            assert!(!expect_continue);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(dec.body_piece(&mut buf, &limits).unwrap(), Piece::NeedMore);
    buf.extend_from_slice(b"cdefGET");
    assert_eq!(
        dec.body_piece(&mut buf, &limits).unwrap(),
        Piece::Data(bytes::Bytes::from_static(b"cdef"))
    );
    assert_eq!(dec.body_piece(&mut buf, &limits).unwrap(), Piece::End);
    assert_eq!(&buf[..], b"GET", "the next request stays");
    // Chunked, waiting for 100-continue.
    let mut buf = BytesMut::from(
        &b"PUT / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
            [..],
    );
    assert!(matches!(
        dec.decode_head_first(&mut buf, &limits).unwrap(),
        Decoded::Head { expect_continue: true, ref req, .. } if req.body.is_empty()
    ));
    buf.extend_from_slice(b"3\r\nxyz\r\n0\r\n\r\n");
    assert_eq!(
        dec.body_piece(&mut buf, &limits).unwrap(),
        Piece::Data(bytes::Bytes::from_static(b"xyz"))
    );
    assert_eq!(dec.body_piece(&mut buf, &limits).unwrap(), Piece::End);
    assert!(buf.is_empty());
    // A bad chunk is an error.
    let mut buf =
        BytesMut::from(&b"PUT / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"[..]);
    assert!(matches!(
        dec.decode_head_first(&mut buf, &limits).unwrap(),
        Decoded::Head { .. }
    ));
    buf.extend_from_slice(b"zz\r\n");
    assert!(dec.body_piece(&mut buf, &limits).is_err());
}

#[test]
fn trailers_go_after_a_chunked_body_to_clients_that_accept_them() {
    let trailers = crate::app::Trailers::new();
    trailers.push("X-Sum", Bytes::from_static(b"7"));
    trailers.push("Content-Length", Bytes::from_static(b"3"));
    trailers.push("X-Bad", Bytes::from_static(b"a\r\nb"));
    let mut resp = Response::new(200).with_body(Body::Full(Bytes::from_static(b"abc")));
    resp.trailers = Some(trailers.clone());
    let mut m = meta(Version::Http11, true, false);
    m.te_trailers = true;
    let (head, mut enc, _) = encode(&resp, m);
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    let mut out = BytesMut::new();
    enc.push(&mut out, b"abc");
    enc.finish_with(&mut out, &trailers.take()).unwrap();
    assert_eq!(&out[..], b"3\r\nabc\r\n0\r\nX-Sum: 7\r\n\r\n");
    // Without TE: trailers the length is known, as usual.
    let (head, _, _) = encode(&resp, meta(Version::Http11, true, false));
    assert!(head.contains("Content-Length: 3"), "{head}");
}
