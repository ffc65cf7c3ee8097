//! Temporary stand-in for the CLI wiring: `cargo run --example bench -- bench URL ...`.

use clap::{Parser, Subcommand};
use forklift::bench::{
    run_bench, run_compare_models, run_hammer, BenchArgs, CompareModelsArgs, HammerArgs,
};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Bench(BenchArgs),
    Hammer(HammerArgs),
    CompareModels(CompareModelsArgs),
}

fn main() {
    let code = match Cli::parse().cmd {
        Cmd::Bench(a) => run_bench(&a),
        Cmd::Hammer(a) => run_hammer(&a),
        Cmd::CompareModels(a) => run_compare_models(&a),
    };
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
