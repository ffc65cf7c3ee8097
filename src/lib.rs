//! forklift: an application server for Python WSGI apps and native Rust handlers, under
//! the concurrency model you pick, that lifts slow work off the request path.
//!
//! # Layout
//! - [`app`]: the native handler API (`Request`, `Response`, `Body`, `Handler`,
//!   `AsyncHandler`, `Reply`) and the built-in apps (`builtin:hello|echo|wait|file|demo`).
//! - [`rt`]: runtime pieces shared by every model: `block_on`, the process-wide timer
//!   (`sleep`), and the `Shutdown` signal.
//! - [`bench`]: the load generator (`forklift bench`, `hammer`, `compare models`) and the
//!   reusable comparison table / SVG / HTML report.

pub mod app;
pub mod bench;
pub mod rt;
