//! The decoder fuzzing harness, shared by the fuzz driver (`examples/fuzz_decoder.rs`)
//! and the property tests (`tests/it/vectors.rs`): the test-vector file format, a seeded
//! mutator, and the invariants every input must keep.
//!
//! Invariants, for the request decoder and the chunked decoder alike:
//! - no input makes it panic;
//! - the outcome does not depend on how the bytes are split into reads (all at once,
//!   byte by byte, random pieces);
//! - whatever it accepts, re-encoded canonically and decoded again, gives the same
//!   request (or body).

#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use bytes::BytesMut;
use forklift::app::Version;
use forklift::http::{ChunkedDecoder, Decoded, Decoder, Limits, UwsgiDecoder};

/// The two fuzz targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Whole requests through [`Decoder`].
    Request,
    /// A chunked body through [`ChunkedDecoder`].
    Chunked,
    /// uwsgi packets through [`UwsgiDecoder`].
    Uwsgi,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Request => "request",
            Target::Chunked => "chunked",
            Target::Uwsgi => "uwsgi",
        }
    }

    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "request" => Some(Target::Request),
            "chunked" => Some(Target::Chunked),
            "uwsgi" => Some(Target::Uwsgi),
            _ => None,
        }
    }

    /// Checks every invariant on `input`; `Err` describes the first one broken
    /// (a panic included).
    pub fn check(self, input: &[u8]) -> Result<(), String> {
        let run = || match self {
            Target::Request => check_request(input),
            Target::Chunked => check_chunked(input),
            Target::Uwsgi => check_uwsgi(input),
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(r) => r,
            Err(p) => Err(format!(
                "panic: {}",
                p.downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| p.downcast_ref::<&str>().copied())
                    .unwrap_or("(not a string)")
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Test vectors

/// One file of `tests/vectors/`: `# key: value` lines, then the request written with
/// escapes (`\r`, `\n`, `\t`, `\0`, `\xHH`, `\\`, and `\[N:text]` for `text` repeated
/// N times); the file's own line breaks are not part of the request.
#[derive(Debug, Clone)]
pub struct Vector {
    pub name: String,
    /// What the server must answer: a status (`400`, `431`, ...), `accept` (any 2xx),
    /// or `close` (the request is incomplete: no response, the connection closes).
    pub expect: String,
    /// For an accepted request: the body the echo app must send back.
    pub body: Option<Vec<u8>>,
    pub bytes: Vec<u8>,
}

impl Vector {
    pub fn parse(name: &str, text: &str) -> Vector {
        let mut expect = String::new();
        let mut body = None;
        let mut raw = String::new();
        for line in text.lines() {
            if let Some(meta) = line.strip_prefix("# ") {
                if let Some(v) = meta.strip_prefix("expect: ") {
                    expect = v.trim().to_string();
                } else if let Some(v) = meta.strip_prefix("body: ") {
                    body = Some(unescape(v));
                }
            } else {
                raw.push_str(line);
            }
        }
        assert!(!expect.is_empty(), "{name}: no `# expect:` line");
        Vector {
            name: name.to_string(),
            expect,
            body,
            bytes: unescape(&raw),
        }
    }

    /// Every `*.http` file in `dir`, sorted by name.
    pub fn load_dir(dir: &Path) -> Vec<Vector> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "http"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap();
                Vector::parse(&p.file_stem().unwrap().to_string_lossy(), &text)
            })
            .collect()
    }
}

/// Decodes the escapes of the vector format.
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        i += 2;
        match b[i - 1] {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = std::str::from_utf8(&b[i..i + 2]).unwrap();
                out.push(u8::from_str_radix(hex, 16).expect("\\xHH"));
                i += 2;
            }
            b'[' => {
                let end = i + b[i..].iter().position(|&c| c == b']').expect("\\[N:text]");
                let spec = std::str::from_utf8(&b[i..end]).unwrap();
                let (n, text) = spec.split_once(':').expect("\\[N:text]");
                let n: usize = n.parse().expect("\\[N:text]");
                out.extend(std::iter::repeat_n(text.as_bytes(), n).flatten());
                i = end + 1;
            }
            other => panic!("unknown escape \\{}", other as char),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The request decoder

/// A decoded request, as compared by the invariants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: Vec<u8>,
    pub target: Vec<u8>,
    pub version: Version,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    pub keep_alive: bool,
    /// The CGI variables of a uwsgi packet (empty for HTTP).
    pub cgi: Vec<(Vec<u8>, Vec<u8>)>,
}

fn seen(r: &forklift::app::Request, keep_alive: bool) -> Seen {
    Seen {
        method: r.method.to_vec(),
        target: r.target.to_vec(),
        version: r.version,
        headers: r
            .headers
            .iter()
            .map(|h| (h.name.to_vec(), h.value.to_vec()))
            .collect(),
        body: r.body.to_vec(),
        keep_alive,
        cgi: r
            .cgi_vars
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect(),
    }
}

/// How a run over some input ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Waiting for more bytes.
    NeedMore,
    /// Refused with this status.
    Refused(u16),
}

/// The requests decoded from `input` fed in `pieces` (lengths summing to its length),
/// and how the run ended.
pub fn decode_pieces(input: &[u8], pieces: &[usize], limits: &Limits) -> (Vec<Seen>, End) {
    let mut dec = Decoder::new();
    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    let mut at = 0;
    for &n in pieces {
        buf.extend_from_slice(&input[at..at + n]);
        at += n;
        loop {
            match dec.decode(&mut buf, limits) {
                Ok(Decoded::NeedMore) => break,
                Ok(Decoded::Continue) => {}
                Ok(Decoded::Head { .. }) => unreachable!("only from decode_head_first"),
                Ok(Decoded::Request(r, m)) => seen.push(self::seen(&r, m.keep_alive)),
                Err(e) => return (seen, End::Refused(e.status())),
            }
        }
    }
    (seen, End::NeedMore)
}

/// Writes `r` the one canonical way: request line, fields as `name: value`, and the body
/// framed as its fields say (chunked in one chunk, or as is).
pub fn encode_request(r: &Seen) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&r.method);
    out.push(b' ');
    out.extend_from_slice(&r.target);
    out.extend_from_slice(match r.version {
        Version::Http10 => b" HTTP/1.0\r\n",
        Version::Http11 => b" HTTP/1.1\r\n",
    });
    let mut chunked = false;
    for (n, v) in &r.headers {
        chunked |= n.eq_ignore_ascii_case(b"transfer-encoding");
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if chunked {
        out.extend_from_slice(&encode_chunked(&r.body));
    } else {
        out.extend_from_slice(&r.body);
    }
    out
}

/// `data` as one chunk and the last chunk (no trailers).
pub fn encode_chunked(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if !data.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Limits small enough for short inputs to reach them, and the defaults.
pub fn fuzz_limits() -> [Limits; 2] {
    [
        Limits {
            max_uri: 256,
            max_head: 1024,
            max_headers: 16,
            max_body: 2048,
            max_uwsgi_vars: 256,
        },
        Limits::default(),
    ]
}

/// Statuses that say a limit was reached: which limit trips first may depend on how
/// much of the input had arrived, so they are compared only as "refused".
fn is_limit(status: u16) -> bool {
    matches!(status, 413 | 414 | 431)
}

fn same_end(a: &End, b: &End) -> bool {
    match (a, b) {
        (End::Refused(x), End::Refused(y)) => x == y || (is_limit(*x) || is_limit(*y)),
        _ => a == b,
    }
}

/// Splits of `len` bytes to try: whole, byte by byte (short inputs only: the head is
/// re-parsed per read), and pieces of a size derived from the input.
fn splits(len: usize) -> Vec<Vec<usize>> {
    let mut v = vec![vec![len]];
    if len <= 600 {
        v.push(vec![1; len]);
    }
    let step = 1 + len % 7 + len / 5;
    let mut pieces = vec![step; len / step];
    if !len.is_multiple_of(step) {
        pieces.push(len % step);
    }
    v.push(pieces);
    v
}

pub fn check_request(input: &[u8]) -> Result<(), String> {
    for limits in fuzz_limits() {
        let splits = splits(input.len());
        let (seen, end) = decode_pieces(input, &splits[0], &limits);
        for pieces in &splits[1..] {
            let (s, e) = decode_pieces(input, pieces, &limits);
            if s != seen || !same_end(&e, &end) {
                return Err(format!(
                    "split into {} pieces: {} requests then {e:?}, whole: {} requests then {end:?}",
                    pieces.len(),
                    s.len(),
                    seen.len()
                ));
            }
        }
        for r in &seen {
            let again = encode_request(r);
            let (s, e) = decode_pieces(&again, &[again.len()], &limits);
            if s.len() != 1 || &s[0] != r || e != End::NeedMore {
                return Err(format!(
                    "round trip: {r:?} re-encoded as {:?} decodes as {s:?} then {e:?}",
                    String::from_utf8_lossy(&again)
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The uwsgi decoder

/// The request decoded from a uwsgi packet fed in `pieces`, and how the run ended.
pub fn decode_uwsgi_pieces(input: &[u8], pieces: &[usize], limits: &Limits) -> (Vec<Seen>, End) {
    let mut dec = UwsgiDecoder::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    for &n in pieces {
        buf.extend_from_slice(&input[at..at + n]);
        at += n;
        match dec.decode(&mut buf, limits) {
            Ok(Decoded::Request(r, m)) => out.push(seen(&r, m.keep_alive)),
            Ok(_) => {}
            Err(e) => return (out, End::Refused(e.status())),
        }
    }
    (out, End::NeedMore)
}

/// Writes `r` back as a packet: the method, its CGI variables as they came, the headers
/// as `HTTP_*` (the body's length and type as `CONTENT_*`), then the body.
pub fn encode_uwsgi(r: &Seen) -> Vec<u8> {
    let mut vars: Vec<(Vec<u8>, Vec<u8>)> = vec![(b"REQUEST_METHOD".to_vec(), r.method.clone())];
    vars.extend(r.cgi.iter().cloned());
    for (n, v) in &r.headers {
        let key = match &n[..] {
            b"content-length" => b"CONTENT_LENGTH".to_vec(),
            b"content-type" => b"CONTENT_TYPE".to_vec(),
            _ => {
                let mut k = b"HTTP_".to_vec();
                k.extend(n.iter().map(|&b| {
                    if b == b'-' {
                        b'_'
                    } else {
                        b.to_ascii_uppercase()
                    }
                }));
                k
            }
        };
        vars.push((key, v.clone()));
    }
    let refs: Vec<(&[u8], &[u8])> = vars.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    forklift::http::uwsgi::encode_request(&refs, &r.body)
}

pub fn check_uwsgi(input: &[u8]) -> Result<(), String> {
    for limits in fuzz_limits() {
        let splits = splits(input.len());
        let (seen, end) = decode_uwsgi_pieces(input, &splits[0], &limits);
        for pieces in &splits[1..] {
            let (s, e) = decode_uwsgi_pieces(input, pieces, &limits);
            if s != seen || !same_end(&e, &end) {
                return Err(format!(
                    "split into {} pieces: {s:?} then {e:?}, whole: {seen:?} then {end:?}",
                    pieces.len()
                ));
            }
        }
        for r in &seen {
            let again = encode_uwsgi(r);
            let (s, e) = decode_uwsgi_pieces(&again, &[again.len()], &limits);
            // Re-encoded headers may outgrow a vars block that was just within bounds.
            let refused_by_size = matches!(e, End::Refused(431));
            if !refused_by_size && (s.len() != 1 || &s[0] != r || e != End::NeedMore) {
                return Err(format!(
                    "round trip: {r:?} re-encoded decodes as {s:?} then {e:?}"
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The chunked decoder

/// The chunked decoder over `input` fed in `pieces`: the data, and whether the body
/// ended (with what was left after it) or was refused (with the status).
pub fn dechunk_pieces(
    input: &[u8],
    pieces: &[usize],
    max_body: u64,
) -> (Vec<u8>, Result<Option<Vec<u8>>, u16>) {
    let mut dec = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut at = 0;
    for &n in pieces {
        buf.extend_from_slice(&input[at..at + n]);
        at += n;
        match dec.decode(&mut buf, &mut out, max_body) {
            Ok(true) => {
                buf.extend_from_slice(&input[at..]);
                return (out.to_vec(), Ok(Some(buf.to_vec())));
            }
            Ok(false) => {}
            Err(e) => return (out.to_vec(), Err(e.status())),
        }
    }
    (out.to_vec(), Ok(None))
}

pub fn check_chunked(input: &[u8]) -> Result<(), String> {
    for max_body in [64, 1 << 20] {
        let splits = splits(input.len());
        let (data, end) = dechunk_pieces(input, &splits[0], max_body);
        for pieces in &splits[1..] {
            let (d, e) = dechunk_pieces(input, pieces, max_body);
            // Data is handed over as it arrives, so a refused body may have passed on
            // more of it when fed whole; an accepted one must be the same.
            let same = match (&e, &end) {
                (Err(x), Err(y)) => x == y || is_limit(*x) || is_limit(*y),
                _ => d == data && e == end,
            };
            if !same {
                return Err(format!(
                    "split into {} pieces: {d:?} {e:?}, whole: {data:?} {end:?}",
                    pieces.len()
                ));
            }
        }
        if let Ok(Some(_)) = end {
            let again = encode_chunked(&data);
            let (d, e) = dechunk_pieces(&again, &[again.len()], max_body);
            if d != data || e != Ok(Some(Vec::new())) {
                return Err(format!("round trip of {data:?}: {d:?} {e:?}"));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The mutator

/// xorshift64*: small, seedable, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Pieces of HTTP that mutations insert, so random inputs reach deep states.
const DICTIONARY: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"=",
    b"\"",
    b"_",
    b"*",
    b"/",
    b"?",
    b"GET ",
    b"POST ",
    b"OPTIONS ",
    b"CONNECT ",
    b"HEAD ",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\r\n",
    b"HTTP/2.0",
    b"http://h",
    b"h:443",
    b"Host: x\r\n",
    b"Content-Length: ",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: ",
    b"chunked",
    b"identity",
    b"Content-Type: t\r\n",
    b"Content_Length",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",
    b";ext=1",
    b"ffffffffffffffff",
    b"X-T: v\r\n",
    b"Trailer: x\r\n",
];

const BYTES: &[u8] = b"\r\n\0\t :;,=\"_-*/?\x07\x0b\x7f\x80\xff0159aAfFzZ";

/// Changes `data` by 1 to 8 random edits; `other` is a second seed to splice from.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8], max_len: usize) {
    for _ in 0..1 + rng.below(8) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = BYTES[rng.below(BYTES.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                let word = DICTIONARY[rng.below(DICTIONARY.len())];
                data.splice(i..i, word.iter().copied());
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                data.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let copy: Vec<u8> = data[i..i + n].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => data.truncate(rng.below(len)),
            7 => {
                let i = rng.below(len + 1);
                data.insert(i, BYTES[rng.below(BYTES.len())]);
            }
            _ => {
                // A digit run, to reach size and length parsing.
                let i = rng.below(len + 1);
                let digits = format!("{:x}", rng.next() >> rng.below(64));
                data.splice(i..i, digits.bytes());
            }
        }
    }
    data.truncate(max_len);
}

/// The seeds of a target: the files of `fuzz/corpus/<target>/`, and for requests the
/// test vectors too.
pub fn seeds(root: &Path, target: Target) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let dir = root.join("fuzz/corpus").join(target.name());
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        out.extend(paths.iter().map(|p| std::fs::read(p).unwrap()));
    }
    if target == Target::Request {
        for sub in ["invalid", "valid"] {
            let vectors = Vector::load_dir(&root.join("tests/vectors").join(sub));
            out.extend(vectors.into_iter().map(|v| v.bytes));
        }
    }
    assert!(!out.is_empty(), "no seeds for {}", target.name());
    out
}

/// Runs `target` over `iterations` mutated seeds from `rng`; calls `on_failure` with
/// each input that breaks an invariant and what broke. Returns the inputs tried.
pub fn run(
    target: Target,
    seeds: &[Vec<u8>],
    rng: &mut Rng,
    mut keep_going: impl FnMut(u64) -> bool,
    mut on_failure: impl FnMut(&[u8], &str),
) -> u64 {
    let mut n = 0;
    for s in seeds {
        if let Err(why) = target.check(s) {
            on_failure(s, &why);
        }
    }
    while keep_going(n) {
        let mut input = seeds[rng.below(seeds.len())].clone();
        let other = &seeds[rng.below(seeds.len())];
        mutate(rng, &mut input, other, 4096);
        if let Err(why) = target.check(&input) {
            on_failure(&input, &why);
        }
        n += 1;
    }
    n
}
