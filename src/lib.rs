//! forklift: an application server for Python WSGI apps and native Rust handlers, under
//! the concurrency model you pick, that lifts slow work off the request path.
//!
//! # Layout
//! - [`app`]: the native handler API (`Request`, `Response`, `Body`, `Handler`,
//!   `AsyncHandler`, `Reply`) and the built-in apps (`builtin:hello|echo|wait|file|demo`).
//! - [`rt`]: runtime pieces shared by every model: `block_on`, the process-wide timer
//!   (`sleep`), and the `Shutdown` signal.
//! - [`offload`]: the offload engine: handlers hand slow work off (`Offload::submit`)
//!   to a strategy (inline, loop, thread, pool, durable spool), tasks registered by
//!   name, counters, draining, the spool CLI, and `builtin:slowlog`.

pub mod app;
pub mod offload;
pub mod rt;
