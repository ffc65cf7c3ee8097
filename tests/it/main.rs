//! All integration tests, in one test binary (one link, shared support code).

mod support;

mod bench;
mod cli;
mod conformance;
mod docs;
mod fanout;
mod master;
mod offload;
#[cfg(feature = "python")]
mod python;
