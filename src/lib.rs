//! forklift: an application server for Python WSGI apps and native Rust handlers, under
//! the concurrency model you pick, that lifts slow work off the request path.
//!
//! # Layout
//! - [`app`]: the native handler API (`Request`, `Response`, `Body`, `Handler`,
//!   `AsyncHandler`, `Reply`; `body`: a request body streamed to the app through a
//!   bounded pipe, `RequestBody`) and the built-in apps
//!   (`builtin:hello|echo|wait|file|demo|slowlog|fanout`; `slowlog`, whose writes go
//!   through [`offload`], in `app::slowlog`; `fanout` lives with [`fanout`]).
//! - [`http`]: the sans-IO codecs shared by every model: HTTP/1.1 request decoding with
//!   limits and smuggling defences, the uwsgi protocol (`uwsgi`, nginx's `uwsgi_pass`)
//!   feeding the same request type, response framing, the status mapping of errors.
//! - [`server`]: configuration, the listening sockets (`listen`: TCP, unix paths and
//!   abstract names, each with its protocol), the connection state machine
//!   (`conn`: every connection rule — time limits, lingering, `--max-requests`, panics,
//!   admission) and the blocking driver (`blocking`), one module per concurrency model
//!   that only moves bytes and waits (`linear`, `threads`, `epoll`, `tokio_model` for
//!   `async`), accepting and shedding (`accept`), the pre-fork `master` (respawns,
//!   reloads, hand-over to a new master), sockets passed by systemd or a previous
//!   master (`inherit`), `harakiri`, signals and the access log.
//! - [`rt`]: runtime pieces shared by every model: `block_on`, the process-wide timer
//!   (`sleep`), the `Shutdown` signal, and `fork::ForkLocal` (per-process state that a
//!   forked child rebuilds instead of inheriting locked).
//! - [`fanout`]: concurrent calls to backend services from any handler: the
//!   per-process outbound HTTP client (own runtime thread, pooled connections, DNS cache,
//!   timeouts, bounded calls in flight) and `builtin:fanout`.
//! - [`offload`]: the offload engine: handlers hand slow work off (`Offload::submit`)
//!   to a strategy (`strategy/`: inline, loop, thread, pool, and `redis/` on Redis
//!   Streams; `spool/`: the durable spool, a per-process journal file in front of
//!   SQLite), tasks registered by name, counters and draining.
//! - [`python`] (feature `python`): embedded CPython serving WSGI apps (PEP 3333) and
//!   ASGI 3 apps (`python::asgi`: asyncio event loops fed in batches, lifespan), WSGI
//!   apps as greenlets on gevent's hub or an asyncio loop (`python::green`: `--gevent`,
//!   `--asyncio --greenlet`; the loop threads' start, stop and blocked-loop watchdog
//!   shared by both in `python::loops`), the `forklift` Python module, fork and thread
//!   integration.
//!   The only module using pyo3.
//! - [`ops`]: what a running server reports: uWSGI's stats document (`--stats`), the
//!   Prometheus metrics and the live dashboard (`--metrics`), served by a thread of the
//!   master from a shared-memory scoreboard that workers write without locks.
//! - [`cli`]: the command line (`serve` options validated into a `ServerConfig`; uWSGI
//!   command lines without a subcommand and uWSGI-only options refused by name, in
//!   `uwsgi_compat`),
//!   uWSGI-style ini files (`ini`), the spool and Redis queue inspection command
//!   (`spool`) and `forklift worker` (`worker`, running a Redis queue's tasks); the
//!   binary's `main` only calls [`cli::main`].
//! - [`mod@bench`]: the load generator (`forklift bench`, `hammer`), the reusable
//!   comparison table / SVG / HTML report, and the benchmark tooling: `compare models`,
//!   `compare offload`, `compare fanout` and the fan-out client's overhead harness
//!   (`bench::compare`).

pub mod app;
pub mod bench;
pub mod cli;
pub mod fanout;
pub mod http;
pub mod offload;
pub mod ops;
#[cfg(feature = "python")]
pub mod python;
pub mod rt;
pub mod server;
