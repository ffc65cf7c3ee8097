//! `forklift compare …`: each command reproduces one published experiment against
//! `forklift serve` child processes and prints its reference table with forklift's
//! figures beside the published ones, plus an SVG chart, an HTML report and JSON.
//!
//! # Layout
//! - [`args`]: the options every command shares ([`CommonArgs`]) and those of the
//!   commands that load servers with `forklift bench` ([`LoadArgs`]), flattened into each.
//! - [`runner`]: the flow they share ([`run`]): find the binary, pick the scenarios,
//!   start the servers, measure, print the table, write the chart (not when nothing was
//!   measured), and name the scenarios that were not measured.
//! - [`server`]: a `forklift serve` child process, found by its banner.
//! - [`models`]: `compare models`, the server under each concurrency model.
//! - [`offload`]: `compare offload`, `builtin:slowlog` under each offload strategy.
//! - [`mod@fanout`]: `compare fanout`, `builtin:fanout` calling a backend sequentially
//!   and concurrently under several configurations.
//! - [`overhead`]: the fan-out client's cost per call, the last part of `compare fanout`.

pub mod args;
pub mod fanout;
pub mod models;
pub mod offload;
pub mod overhead;
pub mod runner;
pub mod server;

pub use args::{CommonArgs, LoadArgs};
pub use fanout::{compare_fanout, CompareFanoutArgs, FanoutComparison};
pub use models::{compare_models, CompareModelsArgs, ModelsComparison};
pub use offload::{compare_offload, CompareOffloadArgs, OffloadResult};
pub use runner::{run, Experiment, Outcome};
pub use server::ServerProcess;
