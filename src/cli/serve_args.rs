//! The options of `forklift serve`, as clap parses them from the command line (and an
//! ini file expands into): long names follow uWSGI's where uWSGI has the option.

use std::path::PathBuf;

use clap::Args;

use super::OpsArgs;
use crate::server::Model;

/// `forklift serve` options. Long names follow uWSGI's where uWSGI has the option.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The app to serve, and where its code is.
    #[command(flatten)]
    pub app: AppArgs,

    #[command(flatten)]
    pub offload: crate::offload::OffloadArgs,

    #[command(flatten)]
    pub fanout: crate::fanout::FanoutArgs,

    #[command(flatten)]
    pub ops: OpsArgs,

    /// Read options from an ini file: the keys of its [uwsgi] and [forklift] sections, or
    /// of [SECTION] with FILE:SECTION (command-line options win).
    #[arg(long, value_name = "FILE[:SECTION]")]
    pub ini: Option<PathBuf>,

    /// Address to serve HTTP on: HOST:PORT or :PORT (all interfaces), a unix socket
    /// path with a / (./app.sock), or @NAME (an abstract unix socket). Repeatable. Default 127.0.0.1:8080
    /// when no socket option is given.
    #[arg(long, value_name = "ADDR")]
    pub http: Vec<String>,

    /// Same as --http (uWSGI's name for a native HTTP socket).
    #[arg(long, value_name = "ADDR")]
    pub http_socket: Vec<String>,

    /// Address to serve the uwsgi protocol on, for nginx's `uwsgi_pass`: HOST:PORT,
    /// :PORT, a unix socket path (/run/app.sock) or @NAME. Repeatable.
    #[arg(long, short = 's', value_name = "ADDR")]
    pub socket: Vec<String>,

    /// Same as --socket.
    #[arg(long, value_name = "ADDR")]
    pub uwsgi_socket: Vec<String>,

    /// The protocol of the --socket addresses: uwsgi (the default) or http.
    #[arg(long, value_name = "PROTO", value_parser = ["uwsgi", "http"])]
    pub protocol: Option<String>,

    /// Accepted for uWSGI compatibility: Python is built in (`plugins = python3`); other
    /// plugins are refused by name.
    #[arg(
        long,
        visible_alias = "plugin",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub plugins: Vec<String>,

    /// Mode of the unix socket files (octal; 666 when given without a value).
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "666")]
    pub chmod_socket: Option<String>,

    /// Owner of the unix socket files: USER[:GROUP] (names or numbers).
    #[arg(long, value_name = "USER[:GROUP]")]
    pub chown_socket: Option<String>,

    /// Remove the unix socket files (and the --pidfile) on exit.
    #[arg(long)]
    pub vacuum: bool,

    /// Run as this user (name or number) once the sockets are bound; the app is loaded
    /// after. Needs root to start.
    #[arg(long, value_name = "USER")]
    pub uid: Option<String>,

    /// Run as this group (name or number) once the sockets are bound.
    #[arg(long, value_name = "GROUP")]
    pub gid: Option<String>,

    /// Write the server's pid (the master's, with several processes) to FILE.
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,

    /// Not supported: forklift stays in the foreground; run it under systemd (or
    /// another supervisor) and send the log to a file with --logto.
    #[arg(long, value_name = "LOGFILE", num_args = 0..=1, default_missing_value = "")]
    pub daemonize: Option<String>,

    /// Set an environment variable for the app: NAME=VALUE (repeatable).
    #[arg(long, value_name = "NAME=VALUE")]
    pub env: Vec<String>,

    /// Refuse unknown options in ini files instead of warning about them.
    #[arg(long)]
    pub strict: bool,

    /// Accepted for uWSGI compatibility: forklift never starts without its app (a
    /// failing import is an error and exit code 1).
    #[arg(long)]
    pub need_app: bool,

    /// Accepted for uWSGI compatibility: a request body is always read whole (bounded
    /// by --limit-post) before the app is called.
    #[arg(long, value_name = "BYTES")]
    pub post_buffering: Option<u64>,

    /// Accepted for uWSGI compatibility, no effect: workers accept from their own
    /// readiness loops on non-blocking sockets, so no lock is needed around accept.
    #[arg(long)]
    pub thunder_lock: bool,

    /// Accepted for uWSGI compatibility: each process runs one Python interpreter.
    #[arg(long)]
    pub single_interpreter: bool,

    /// Concurrency model: linear, threads, epoll or async. Default: epoll (a WSGI app
    /// under --gevent/--asyncio too); for a native app, async when --async/--gevent is
    /// given and threads when --threads N > 1 is.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<Model>,

    /// Worker processes sharing the socket (a master supervises them when > 1).
    #[arg(long, short = 'p', value_name = "N", value_parser = count::<1, 1024>)]
    pub processes: Option<u32>,

    /// Alias of --processes (uWSGI).
    #[arg(long, value_name = "N", hide = true, value_parser = count::<1, 1024>)]
    pub workers: Option<u32>,

    /// Threads per worker: the pool of the threads model, the runtime threads of async,
    /// and the Python threads that run a WSGI app under epoll/async.
    #[arg(long, value_name = "N", value_parser = count::<1, 4096>)]
    pub threads: Option<u32>,

    /// Requests one async worker works on at once.
    #[arg(long, value_name = "N", value_parser = count::<1, 1_000_000>)]
    pub cores: Option<u32>,

    /// uWSGI's async mode: the async model with N cores.
    #[arg(long = "async", value_name = "N", value_parser = count::<1, 1_000_000>)]
    pub async_cores: Option<u32>,

    /// uWSGI's gevent mode. A WSGI app: each worker runs gevent's hub and every request
    /// in its own greenlet, up to N at once (more wait their turn). A native app: the
    /// async model with N cores.
    #[arg(long, value_name = "N", value_parser = count::<1, 1_000_000>)]
    pub gevent: Option<u32>,

    /// With --gevent: gevent.monkey.patch_all() in each worker as its hub starts (after
    /// the app is loaded, as under uWSGI).
    #[arg(long)]
    pub gevent_monkey_patch: bool,

    /// With --gevent: gevent.monkey.patch_all() before the app is loaded.
    #[arg(long)]
    pub gevent_early_monkey_patch: bool,

    /// uWSGI's asyncio loop engine (with --greenlet): each worker runs an asyncio event
    /// loop and every WSGI request in its own greenlet, up to N (2 or more) at once.
    #[arg(long, value_name = "N", value_parser = count::<1, 1_000_000>)]
    pub asyncio: Option<u32>,

    /// The greenlet suspend engine, which --asyncio needs.
    #[arg(long)]
    pub greenlet: bool,

    /// Run a master process even with one worker (respawn, graceful reload on SIGHUP).
    #[arg(long, short = 'M')]
    pub master: bool,

    /// Listen backlog.
    #[arg(long, short = 'l', value_name = "N", default_value_t = 1024)]
    pub listen: i32,

    /// Seconds a graceful stop waits for in-flight requests.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub shutdown_timeout: f64,

    /// Seconds an idle keep-alive connection is kept between requests.
    #[arg(
        long,
        visible_alias = "keepalive-timeout",
        value_name = "SECONDS",
        default_value_t = 60.0
    )]
    pub http_timeout: f64,

    /// Seconds a client has to send a whole request head, from its first byte (and a
    /// new connection to start its first request); 408 after. Sending slowly does not
    /// stretch it.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub header_timeout: f64,

    /// Seconds a request body may go without a byte arriving; 408 after.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub body_timeout: f64,

    /// Seconds a response may wait for a client that does not read; closed after.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub send_timeout: f64,

    /// Kill (and replace) a worker whose request runs longer than SECONDS; implies
    /// --master.
    #[arg(long, value_name = "SECONDS")]
    pub harakiri: Option<f64>,

    /// Recycle a worker after it served N requests (needs a master to replace it).
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u64>,

    /// Largest request body in bytes (413 beyond).
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024 * 1024)]
    pub limit_post: u64,

    /// Largest request head in bytes (431 beyond): the HTTP request line and headers
    /// (default 65536), and the vars block of a uwsgi packet (default 4096, as uWSGI).
    #[arg(long, short = 'b', value_name = "BYTES")]
    pub buffer_size: Option<usize>,

    /// Connections queued for the threads of the threads model.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub queue: usize,

    /// Most open connections per epoll/async worker.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub max_connections: usize,

    /// No access log lines.
    #[arg(long)]
    pub disable_logging: bool,

    /// Write the log to FILE instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub logto: Option<PathBuf>,

    /// Load the app in each worker after fork instead of once in the master.
    #[arg(long)]
    pub lazy_apps: bool,

    /// Python: leave the loaded app's objects in the garbage collector's generations
    /// (by default they are frozen out of it with gc.freeze() before serving).
    #[arg(long)]
    pub no_gc_freeze: bool,

    /// An ASGI 3 app: the module (`pkg.mod:app`) defining it; the same as --module
    /// with --interface asgi.
    #[arg(long, value_name = "MODULE:APP")]
    pub asgi: Option<String>,

    /// The protocol of the app given with --module / --wsgi-file: wsgi or asgi.
    #[arg(long, value_name = "IFACE", value_parser = ["wsgi", "asgi"])]
    pub interface: Option<String>,

    /// ASGI: run the lifespan protocol: auto (unless the app does not support it),
    /// on, off.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub lifespan: String,

    /// ASGI: the event loop: auto (uvloop when installed), asyncio, uvloop.
    #[arg(long = "loop", value_name = "LOOP", default_value = "auto", value_parser = ["auto", "asyncio", "uvloop"])]
    pub event_loop: String,

    /// Accepted for uWSGI compatibility: Python threads always run.
    #[arg(long)]
    pub enable_threads: bool,

    /// Accepted for uWSGI compatibility: SIGTERM always stops gracefully.
    #[arg(long)]
    pub die_on_term: bool,
}

/// The app and where its code is: what `serve` serves and `forklift worker` runs the
/// tasks of.
#[derive(Debug, Clone, Args)]
pub struct AppArgs {
    /// The app: builtin:hello|echo|wait|file[:PATH]|demo|slowlog|fanout. Omit it when
    /// a Python app is given with --wsgi-file or --module (`serve` also takes --asgi).
    pub app: Option<String>,

    /// WSGI: the file defining the app callable.
    #[arg(long, value_name = "FILE")]
    pub wsgi_file: Option<PathBuf>,

    /// WSGI: the module (`pkg.mod` or `pkg.mod:callable`) defining the app.
    #[arg(long, short = 'w', value_name = "MODULE")]
    pub module: Option<String>,

    /// WSGI: the name of the app callable.
    #[arg(long, value_name = "NAME", default_value = "application")]
    pub callable: String,

    /// Python: directories added to sys.path (repeatable).
    #[arg(long, value_name = "DIR")]
    pub pythonpath: Vec<PathBuf>,

    /// Change to DIR before loading the app.
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// Python: the virtualenv to use (default: $VIRTUAL_ENV when set).
    #[arg(long, visible_alias = "home", short = 'H', value_name = "DIR")]
    pub virtualenv: Option<PathBuf>,
}

/// A whole number from `MIN` to `MAX`, for count options; the error says the range.
pub(super) fn count<const MIN: u32, const MAX: u32>(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if (u64::from(MIN)..=u64::from(MAX)).contains(&n) => Ok(n as u32),
        _ => Err(format!("must be a whole number from {MIN} to {MAX}")),
    }
}
