//! Temporary stand-in for the CLI wiring of the fan-out tools:
//! `cargo run --release --example fanout -- overhead http://127.0.0.1:PORT/ --calls N`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Seed 002's experiment.
    Compare(forklift::fanout::compare::CompareFanoutArgs),
    /// Client overhead per call against a fast local backend.
    Overhead {
        url: String,
        #[arg(long, default_value_t = 20_000)]
        calls: u64,
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
}

fn main() {
    match Cli::parse().cmd {
        Cmd::Compare(a) => match forklift::fanout::compare::run_compare_fanout(&a) {
            Ok(c) => std::process::exit(c),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        },
        Cmd::Overhead { url, calls, batch } => {
            match forklift::fanout::overhead::client_overhead(&url, calls, batch) {
                Ok(runs) => runs.iter().for_each(|r| println!("{}", r.to_line())),
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}
