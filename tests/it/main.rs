//! All integration tests, in one test binary (one link, shared support code).

mod support;

#[cfg(feature = "python")]
mod asgi;
mod bench;
mod cli;
mod conformance;
mod docs;
mod fanout;
#[cfg(feature = "python")]
mod gevent;
mod hardening;
mod layout;
mod master;
mod offload;
mod ops;
mod policy;
#[cfg(feature = "python")]
mod python;
mod redis;
mod reload;
#[cfg(feature = "python")]
mod uwsgi;
mod vectors;
