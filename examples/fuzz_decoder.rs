//! A stable-toolchain fuzzer for the request decoder, the chunked decoder and the uwsgi
//! decoder: `cargo run --example fuzz_decoder -- TARGET SECONDS [SEED]` with TARGET
//! `request`, `chunked` or `uwsgi`. It mutates the seed corpus (`fuzz/corpus/TARGET/`, plus the test vectors
//! for `request`) without coverage feedback, checks the invariants of `fuzz/harness.rs`
//! on every input, and saves each input that breaks one to `fuzz/crashes/`. Exits 1 if
//! any did. `scripts/fuzz` runs every target.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{Rng, Target};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fuzz_decoder request|chunked|uwsgi SECONDS [SEED]";
    let target = args
        .first()
        .and_then(|t| Target::parse(t))
        .unwrap_or_else(|| panic!("{usage}"));
    let seconds: u64 = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{usage}"));
    let seed = args.get(2).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    // Panics are caught and reported as failures; their default message would repeat it.
    std::panic::set_hook(Box::new(|_| {}));

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let crashes = root.join("fuzz/crashes");
    let seeds = harness::seeds(root, target);
    let mut rng = Rng::new(seed);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut failures = 0u32;
    let started = Instant::now();
    let n = harness::run(
        target,
        &seeds,
        &mut rng,
        |n| !n.is_multiple_of(64) || Instant::now() < deadline,
        |input, why| {
            failures += 1;
            std::fs::create_dir_all(&crashes).expect("create fuzz/crashes");
            let name = format!("{}-{:016x}", target.name(), fnv1a(input));
            std::fs::write(crashes.join(&name), input).expect("save a crashing input");
            eprintln!(
                "fuzz {}: {why}\n  saved as fuzz/crashes/{name}",
                target.name()
            );
        },
    );
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz {}: {n} inputs in {secs:.0} s ({:.0}/s) from {} seeds, seed {seed}: {failures} failures",
        target.name(),
        n as f64 / secs.max(1e-9),
        seeds.len()
    );
    if failures > 0 {
        std::process::exit(1);
    }
}

/// A stable name for a saved input.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
