//! Request vectors against a server under every model (`tests/vectors/`: gunicorn's
//! invalid and valid requests, with forklift's expected answers), and the decoder's
//! fuzzing invariants as property tests with a fixed seed.

#[path = "../../fuzz/harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};

use forklift::server::Model;

use crate::conformance::{App, Cfg};
use crate::support::*;
use harness::{Rng, Target, Vector};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn vectors(sub: &str) -> Vec<Vector> {
    Vector::load_dir(&root().join("tests/vectors").join(sub))
}

/// Sends `bytes` on a new connection, ends the sending side, and parses what came back
/// before the server closed: `None` when nothing did.
fn answer(srv: &Server, bytes: &[u8]) -> Option<Response> {
    let mut s = srv.connect();
    // A refusal may come (and the server stop reading) before all is written.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    (!got.is_empty()).then(|| parse_whole(&got, bytes.starts_with(b"HEAD")))
}

/// What is wrong with the server's answer to `v`, if anything.
fn mismatch(v: &Vector, got: Option<Response>) -> Option<String> {
    let Some(r) = got else {
        return (v.expect != "close").then(|| "no response".to_string());
    };
    let ok = match v.expect.as_str() {
        "close" => false,
        "accept" => (200..300).contains(&r.status),
        status => {
            let want: u16 = status.parse().expect("a status");
            // A refusal comes from the decoder, which always closes the connection.
            r.status == want && (want < 400 || r.closes())
        }
    } && v.body.as_ref().is_none_or(|b| *b == r.body);
    (!ok).then(|| {
        format!(
            "{} {} (closes: {}, body {:?})",
            r.status,
            r.reason,
            r.closes(),
            r.text()
        )
    })
}

/// Every vector of `sub` gets its expected answer from one server of `model` started
/// with `--buffer-size 4096`.
fn vectors_answered(model: Model, sub: &str) {
    let srv = Cfg {
        model,
        processes: 1,
        app: App::Native,
    }
    .start_with(&["--buffer-size", "4096"]);
    let all = vectors(sub);
    assert!(all.len() >= 20, "{sub}: only {} vectors", all.len());
    let wrong: Vec<String> = all
        .iter()
        .filter_map(|v| {
            mismatch(v, answer(&srv, &v.bytes))
                .map(|m| format!("{}: expected {}, got {m}", v.name, v.expect))
        })
        .collect();
    assert!(wrong.is_empty(), "{sub} vectors:\n{}", wrong.join("\n"));
    // Refusing them all left the server healthy.
    assert_eq!(srv.get("/").status, 200);
}

for_each_model! {
    invalid => vectors_answered("invalid");
    valid => vectors_answered("valid");
}

/// Every seed and every saved failing input (`fuzz/crashes/`, when a fuzz run left
/// some) keeps the decoder's invariants.
#[test]
fn decoder_invariants_hold_on_seeds() {
    for target in [Target::Request, Target::Chunked, Target::Uwsgi] {
        let mut inputs = harness::seeds(root(), target);
        let crashes = root().join("fuzz/crashes");
        if let Ok(entries) = std::fs::read_dir(&crashes) {
            let mut paths: Vec<PathBuf> = entries
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(target.name())
                })
                .collect();
            paths.sort();
            inputs.extend(paths.iter().map(|p| std::fs::read(p).unwrap()));
        }
        for input in &inputs {
            if let Err(why) = target.check(input) {
                panic!(
                    "{}: {why}\ninput: {:?}",
                    target.name(),
                    String::from_utf8_lossy(input)
                );
            }
        }
    }
}

/// Mutations of the seeds, a fixed number from a fixed seed: no panic, the same outcome
/// however the bytes are split, and accepted requests survive re-encoding.
#[test]
fn decoder_invariants_hold_on_mutations() {
    for (target, iterations) in [
        (Target::Request, 4000),
        (Target::Chunked, 20000),
        (Target::Uwsgi, 4000),
    ] {
        let seeds = harness::seeds(root(), target);
        let mut rng = Rng::new(0x5eed_f0c4_11f7);
        let mut failures = Vec::new();
        harness::run(
            target,
            &seeds,
            &mut rng,
            |n| n < iterations,
            |input, why| {
                failures.push(format!(
                    "{why}\n  input: {:?}",
                    String::from_utf8_lossy(input)
                ))
            },
        );
        assert!(
            failures.is_empty(),
            "{}: {} failures, first: {}",
            target.name(),
            failures.len(),
            failures[0]
        );
    }
}
