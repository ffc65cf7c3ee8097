//! The command line: what the user typed (flags, uWSGI-style ini files) turned into a
//! validated [`ServerConfig`] and an app, then run. `main.rs` only calls [`main`].
//!
//! uWSGI compatibility: the same option names are accepted (`--http`, `--http-socket`,
//! `--wsgi-file`, `--module`, `--callable`, `--master`, `--processes`, `--threads`,
//! `--async`/`--gevent`, `--lazy-apps`, `--listen`, `--logto`, `--disable-logging`,
//! `--enable-threads`, `--die-on-term`, `--harakiri`, `--max-requests`, `--stats`…), and
//! `--ini FILE` reads the `[uwsgi]` and `[forklift]` sections of an ini file (or `--ini FILE:SECTION`
//! that section), each key being the long option of the same name. A bad value that came
//! from an ini file is reported with the file and line.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::{builtin, App};
use crate::server::{self, listen, GreenEngine, Model, ServerConfig, Timeouts};

mod ini;
mod ops;
mod serve_args;
mod spool;
mod uwsgi_compat;
mod worker;

pub use ini::{expand_ini, parse_ini, Ini, IniEntry, IniOption, IniSource};
pub use ops::OpsArgs;
pub use serve_args::{AppArgs, ServeArgs};
pub use spool::{run_spool_cli, run_spool_cmd, SpoolArgs, SpoolCli, SpoolCmd, SpoolCmdError};
pub use worker::{run_worker, WorkerArgs};

/// What `--help` says about ini files, at the top level and under `serve`.
const INI_HELP: &str =
    "Ini files: `forklift --ini FILE` runs `serve` with the options FILE sets, so a \
uWSGI ini file runs as it is: the keys of its [uwsgi] section (and of [forklift], for \
forklift's own options) are the long options of the same name, e.g. `processes = 4`. \
`--ini FILE:SECTION` reads [SECTION] instead; options on the command line win.";

/// forklift: an application server for WSGI apps and native handlers.
#[derive(Debug, Parser)]
#[command(
    name = "forklift",
    version,
    about,
    args_override_self = true,
    override_usage = "forklift <COMMAND>\n       forklift [SERVE OPTIONS] (as `forklift serve`, like a uWSGI command line)\n       forklift --ini FILE[:SECTION] [SERVE OPTIONS]",
    after_help = INI_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once; boxing buys nothing
pub enum Command {
    /// Serve an app: `builtin:NAME` (hello, echo, wait, file, demo, slowlog, fanout), or a
    /// WSGI app given with --wsgi-file / --module, or what an ini file says (`forklift
    /// --ini FILE`).
    #[command(after_help = INI_HELP)]
    Serve(ServeArgs),
    /// Load-test a URL: ab's options and report, HTTP/1.1, microsecond percentiles.
    Bench(crate::bench::BenchArgs),
    /// N requests with at most C in flight, and the total time (what a hammer.py-style
    /// load script measures).
    Hammer(crate::bench::HammerArgs),
    /// Reproduce a seed's table with forklift's figures beside the seed's.
    #[command(subcommand)]
    Compare(Compare),
    /// Inspect the durable spool (or, with --redis-url, a Redis queue): stats,
    /// dead-lettered tasks, retry, purge.
    Spool(SpoolCli),
    /// Run an app's tasks from a Redis queue (--offload redis) without serving HTTP.
    Worker(WorkerArgs),
}

/// `forklift compare …`: one reproduced experiment per subcommand.
#[derive(Debug, Subcommand)]
pub enum Compare {
    /// Seed 003: the server under each concurrency model.
    Models(crate::bench::compare::CompareModelsArgs),
    /// Seed 000: builtin:slowlog's slow work under each offload strategy.
    Offload(crate::bench::compare::CompareOffloadArgs),
    /// Seed 002: fan-out to backend services, sequential vs concurrent.
    Fanout(crate::bench::compare::CompareFanoutArgs),
}

/// An error the user can fix: printed as one line, exit code 1 (2 for usage errors).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    /// A bad value of `--option`; `problem` says what it must be.
    #[error("--{option} {problem}, got {value}")]
    Invalid {
        option: &'static str,
        value: String,
        problem: String,
    },
    #[error("{0}")]
    Listen(#[from] listen::ListenError),
    #[error("{0}")]
    App(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Server(#[from] server::ServerError),
    #[error("{0}")]
    Master(#[from] server::master::MasterError),
    #[error("{0}")]
    Bench(#[from] crate::bench::BenchError),
    #[error("{0}")]
    Ops(#[from] crate::ops::OpsError),
}

/// Runs the command line; returns the exit code. `virtual_env` is the value of
/// `$VIRTUAL_ENV` (an activated virtualenv is used for WSGI apps).
pub fn main(args: Vec<OsString>, virtual_env: Option<PathBuf>) -> i32 {
    let args = uwsgi_compat::implicit_serve(args);
    // What a SIGUSR2 runs again: the same arguments, with the program as this binary's
    // path (a new binary installed there is the one started).
    let mut original = args.clone();
    if let (Some(first), Ok(exe)) = (original.first_mut(), std::env::current_exe()) {
        *first = exe.into_os_string();
    }
    let (args, ini) = match expand_ini(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("forklift: {e}");
            return 2;
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            if let Some(line) = ini.as_ref().and_then(|i| i.locate_clap_error(&e)) {
                eprintln!("forklift: {line}");
                return 2;
            }
            if let Some(line) = unsupported_uwsgi_option(&e) {
                eprintln!("forklift: {line}");
                return 2;
            }
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let result = match cli.command {
        Command::Serve(a) => serve(a, virtual_env, original).map_err(|e| in_ini(e, ini.as_ref())),
        Command::Bench(a) => crate::bench::run_bench(&a).map_err(CliError::from),
        Command::Hammer(a) => crate::bench::run_hammer(&a).map_err(CliError::from),
        Command::Compare(Compare::Models(a)) => {
            crate::bench::compare::run(&a).map_err(CliError::from)
        }
        Command::Compare(Compare::Fanout(a)) => {
            crate::bench::compare::run(&a).map_err(CliError::from)
        }
        Command::Compare(Compare::Offload(a)) => {
            crate::bench::compare::run(&a).map_err(CliError::from)
        }
        Command::Spool(a) => run_spool_cli(&a, &mut std::io::stdout())
            .map(|()| 0)
            .map_err(|e| CliError::App(e.to_string())),
        Command::Worker(a) => run_worker(a, virtual_env),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("forklift: {e}");
            match e {
                CliError::Usage(_)
                | CliError::Invalid { .. }
                | CliError::Bench(crate::bench::BenchError::Usage(_)) => 2,
                _ => 1,
            }
        }
    }
}

/// An unknown argument that is one of uWSGI's options: its one-line refusal.
fn unsupported_uwsgi_option(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    match e.get(ContextKind::InvalidArg)? {
        ContextValue::String(arg) => uwsgi_compat::refusal(arg),
        _ => None,
    }
}

/// A bad value that `serve` took from an ini file, reported at the file's line.
fn in_ini(e: CliError, ini: Option<&IniSource>) -> CliError {
    if let CliError::Invalid {
        option, problem, ..
    } = &e
    {
        if let Some(opt) = ini.and_then(|i| i.line_of(option)) {
            return CliError::Usage(opt.located(problem));
        }
    }
    e
}

/// The settings `serve` derives from its arguments.
pub struct ServePlan {
    pub config: ServerConfig,
    /// The sockets to listen on, HTTP ones first.
    pub sockets: Vec<(listen::Address, server::Protocol)>,
    /// The mode and owner of unix socket files.
    pub unix: listen::UnixOptions,
    /// The user and group to run as once the sockets are bound.
    pub run_as: (Option<nix::unistd::Uid>, Option<nix::unistd::Gid>),
    pub app_name: String,
    /// Why this model runs (for the banner).
    pub model_reason: &'static str,
}

fn secs(v: f64, name: &'static str) -> Result<Duration, CliError> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(CliError::Invalid {
            option: name,
            value: v.to_string(),
            problem: "must be a positive number of seconds".into(),
        })
    }
}

/// Validates `ServeArgs` into a configuration (no sockets opened).
pub fn plan(a: &ServeArgs) -> Result<ServePlan, CliError> {
    if let Some(log) = &a.daemonize {
        let logto = if log.is_empty() {
            String::new()
        } else {
            format!(" with --logto {log}")
        };
        return Err(CliError::Usage(format!(
            "--daemonize is not supported: forklift stays in the foreground; run it under \
             systemd (Type=simple, or a .socket unit) or another supervisor{logto}"
        )));
    }
    if let Some(other) = a.plugins.iter().map(|p| p.trim()).find(|p| {
        !p.is_empty()
            && !p.starts_with("python")
            && !["http", "gevent", "greenlet", "asyncio", "0"].contains(p)
    }) {
        return Err(CliError::Usage(format!(
            "plugin {other:?} is not available: forklift has Python (WSGI, ASGI), HTTP, gevent \
             and the asyncio/greenlet loop engine built in, and no other uWSGI plugin; remove \
             it from --plugins"
        )));
    }
    let sockets = sockets(a)?;
    let unix = listen::UnixOptions {
        mode: a
            .chmod_socket
            .as_deref()
            .map(|m| {
                u32::from_str_radix(m.trim(), 8)
                    .ok()
                    .filter(|&m| m <= 0o7777)
                    .ok_or_else(|| CliError::Invalid {
                        option: "chmod-socket",
                        value: m.to_string(),
                        problem: "must be an octal mode such as 660".into(),
                    })
            })
            .transpose()?,
        owner: None,
        group: None,
    };
    let unix = match &a.chown_socket {
        None => unix,
        Some(spec) => {
            let (user, group) = match spec.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (spec.as_str(), None),
            };
            listen::UnixOptions {
                owner: Some(user_id(user, "chown-socket")?.as_raw()),
                group: group
                    .map(|g| group_id(g, "chown-socket").map(|g| g.as_raw()))
                    .transpose()?,
                ..unix
            }
        }
    };
    let run_as = (
        a.uid.as_deref().map(|u| user_id(u, "uid")).transpose()?,
        a.gid.as_deref().map(|g| group_id(g, "gid")).transpose()?,
    );
    for kv in &a.env {
        if !kv.contains('=') || kv.starts_with('=') {
            return Err(CliError::Invalid {
                option: "env",
                value: kv.clone(),
                problem: "must be NAME=VALUE".into(),
            });
        }
    }
    let async_cores = a.async_cores.or(a.gevent).or(a.asyncio);
    // A WSGI app runs, as under uWSGI, on the threads that read its requests (one unless
    // --threads says more); a native app on the readiness loop.
    let asgi = is_asgi(a);
    let wsgi = !asgi && (a.app.wsgi_file.is_some() || a.app.module.is_some());
    let green = green_engine(a, asgi || wsgi, asgi)?;
    let behind_front_server = sockets.iter().all(|(_, p)| *p == server::Protocol::Uwsgi);
    // An ASGI app runs on its event loops: the server's own loop feeds them best.
    // A Python app runs on the readiness loop, which reads and parses requests and
    // hands whole ones to its `--threads` Python threads: no slow client holds a Python
    // thread, and a process takes only the clients it has idle threads for.
    let (model, model_reason) = match (a.model, async_cores, a.threads) {
        (Some(m), _, _) => (m, "--model"),
        _ if green.is_some() => (
            Model::Epoll,
            "the loop that feeds a WSGI app's greenlets under --gevent/--asyncio",
        ),
        (None, Some(_), _) => (Model::Async, "--async/--gevent"),
        // Behind a front server speaking uwsgi (nginx's `uwsgi_pass`), the front server
        // holds slow clients and buffers bodies, and opens a connection per request: a
        // hand-off to a Python thread per request would only cost CPU. As uWSGI does,
        // the accepting thread runs the app (half the CPU per request of `epoll` there).
        (None, None, None | Some(1)) if wsgi && behind_front_server => (
            Model::Linear,
            "a WSGI app behind a front server: only uwsgi sockets",
        ),
        _ if asgi || wsgi => (Model::Epoll, "the default for Python apps"),
        (None, None, Some(t)) if t > 1 => (Model::Threads, "--threads with a native app"),
        _ => (Model::Epoll, "the default for native apps"),
    };
    let processes = a.processes.or(a.workers).unwrap_or(1) as usize;
    let defaults = ServerConfig::default();
    let threads = match (a.threads, model) {
        (Some(t), _) => t as usize,
        (None, Model::Threads) if wsgi => 1,
        (None, Model::Threads) => defaults.threads,
        (None, _) => 1,
    };
    let cores = a
        .cores
        .or(async_cores)
        .map(|c| c as usize)
        .unwrap_or(defaults.cores);
    if a.listen <= 0 {
        return Err(CliError::Invalid {
            option: "listen",
            value: a.listen.to_string(),
            problem: "must be positive".into(),
        });
    }
    if let Some(b) = a.buffer_size.filter(|&b| b < 1024) {
        return Err(CliError::Invalid {
            option: "buffer-size",
            value: b.to_string(),
            problem: "must be at least 1024 bytes".into(),
        });
    }
    let head_limit = a.buffer_size.unwrap_or(64 * 1024);
    let needs_master = a.harakiri.is_some() || a.max_requests.is_some() || a.ops.needs_master();
    let config = ServerConfig {
        model,
        processes,
        master: a.master || processes > 1 || needs_master,
        threads,
        cores,
        queue: a.queue.max(1),
        max_connections: a.max_connections.max(1),
        backlog: a.listen,
        limits: crate::http::Limits {
            max_head: head_limit,
            max_uri: head_limit.clamp(1024, 8 * 1024),
            max_body: a.limit_post,
            max_uwsgi_vars: a.buffer_size.unwrap_or(4096),
            ..crate::http::Limits::default()
        },
        timeouts: Timeouts {
            keepalive: secs(a.http_timeout, "http-timeout")?,
            header: secs(a.header_timeout, "header-timeout")?,
            body: secs(a.body_timeout, "body-timeout")?,
            send: secs(a.send_timeout, "send-timeout")?,
            shutdown: secs(a.shutdown_timeout, "shutdown-timeout")?,
        },
        max_requests: a.max_requests,
        harakiri: a.harakiri.map(|h| secs(h, "harakiri")).transpose()?,
        server_header: true,
    };
    if a.asgi.is_some() && a.interface.as_deref() == Some("wsgi") {
        return Err(CliError::Usage(
            "--asgi names an ASGI app; it cannot go with --interface wsgi".into(),
        ));
    }
    let module = a.asgi.as_ref().or(a.app.module.as_ref());
    let several_modules = a.asgi.is_some() && a.app.module.is_some();
    let app_name = match (&a.app.app, &a.app.wsgi_file, module) {
        _ if several_modules => {
            return Err(CliError::Usage(
                "give one app: --asgi or --module, not both".into(),
            ))
        }
        (Some(app), None, None) => app.clone(),
        (None, Some(f), None) if asgi => format!("asgi file {}", f.display()),
        (None, Some(f), None) => format!("wsgi-file {}", f.display()),
        (None, None, Some(m)) if asgi => format!("asgi {m}"),
        (None, None, Some(m)) => format!("module {m}"),
        (None, None, None) => {
            return Err(CliError::Usage(
                "no app given: name one (e.g. `forklift serve builtin:hello`) or use --wsgi-file FILE / --module MOD / --asgi MOD:APP".into(),
            ))
        }
        _ => {
            return Err(CliError::Usage(
                "give one app: a builtin:NAME, --wsgi-file or --module, not several".into(),
            ))
        }
    };
    Ok(ServePlan {
        config,
        sockets,
        unix,
        run_as,
        app_name,
        model_reason,
    })
}

/// The greenlet loop engine asked for (`--gevent N`, `--asyncio N --greenlet`) when it
/// serves a Python app; `None` for a native app, which runs on the async model with N
/// cores instead.
fn green_engine(
    a: &ServeArgs,
    python: bool,
    asgi: bool,
) -> Result<Option<(GreenEngine, u32)>, CliError> {
    if a.greenlet && a.asyncio.is_none() {
        return Err(CliError::Usage(
            "--greenlet is the suspend engine of uWSGI's asyncio loop engine: give it with --asyncio N"
                .into(),
        ));
    }
    if (a.gevent_monkey_patch || a.gevent_early_monkey_patch) && a.gevent.is_none() {
        return Err(CliError::Usage(
            "--gevent-monkey-patch and --gevent-early-monkey-patch go with --gevent N".into(),
        ));
    }
    let (engine, n) = match (a.gevent, a.asyncio) {
        (Some(_), Some(_)) => {
            return Err(CliError::Usage(
                "give one loop engine: --gevent N or --asyncio N, not both".into(),
            ))
        }
        (Some(n), None) => (GreenEngine::Gevent, n),
        (None, Some(n)) => (GreenEngine::Asyncio, n),
        (None, None) => return Ok(None),
    };
    if engine == GreenEngine::Asyncio {
        if n < 2 {
            return Err(CliError::Invalid {
                option: "asyncio",
                value: n.to_string(),
                problem: "must be 2 or more: the asyncio loop engine switches between async cores (uWSGI: \"the greenlet suspend engine requires async mode\")".into(),
            });
        }
        if !a.greenlet {
            return Err(CliError::Usage(
                "--asyncio needs --greenlet: each request runs in a greenlet (uWSGI's suspend engine for the asyncio loop)"
                    .into(),
            ));
        }
    }
    if !python {
        return Ok(None);
    }
    let opt = engine.option();
    if asgi {
        return Err(CliError::Usage(format!(
            "{opt} runs WSGI apps in greenlets; an ASGI app runs on its own asyncio event loops: drop {opt}"
        )));
    }
    if let Some(t) = a.threads.filter(|&t| t > 1) {
        return Err(CliError::Usage(format!(
            "{opt} cannot go with --threads {t}: one {} per worker process runs all its requests; raise {opt} N for more at once, or --processes for more CPUs",
            match engine {
                GreenEngine::Gevent => "gevent hub",
                GreenEngine::Asyncio => "asyncio loop",
            }
        )));
    }
    Ok(Some((engine, n)))
}

/// The sockets the options name, HTTP ones first (the default `127.0.0.1:8080` when
/// none is given).
fn sockets(a: &ServeArgs) -> Result<Vec<(listen::Address, server::Protocol)>, CliError> {
    use server::Protocol::{Http, Uwsgi};
    // uWSGI's `protocol = http` makes `socket` speak HTTP.
    let socket_protocol = match a.protocol.as_deref() {
        Some("http") => Http,
        _ => Uwsgi,
    };
    let given: Vec<(&'static str, &String, server::Protocol)> =
        (a.http.iter().map(|h| ("http", h, Http)))
            .chain(a.http_socket.iter().map(|h| ("http-socket", h, Http)))
            .chain(a.socket.iter().map(|h| ("socket", h, socket_protocol)))
            .chain(a.uwsgi_socket.iter().map(|h| ("uwsgi-socket", h, Uwsgi)))
            .collect();
    if given.is_empty() {
        let default = listen::Address::Tcp("127.0.0.1:8080".parse().expect("an address"));
        return Ok(vec![(default, Http)]);
    }
    let mut out: Vec<(listen::Address, server::Protocol)> = Vec::with_capacity(given.len());
    for (option, text, protocol) in given {
        let addr = listen::Address::parse(text).map_err(|e| CliError::Invalid {
            option,
            value: text.clone(),
            problem: match e {
                listen::ListenError::Resolve(_, io) => {
                    format!("must be an address this host can resolve ({io})")
                }
                _ => "must be HOST:PORT, :PORT, a unix socket path with a / or @NAME (e.g. :8080, /run/app.sock, ./app.sock)".into(),
            },
        })?;
        let ephemeral = matches!(addr, listen::Address::Tcp(a) if a.port() == 0);
        if !ephemeral && out.iter().any(|(a, _)| *a == addr) {
            return Err(CliError::Usage(format!(
                "--{option} {text}: this address is given twice"
            )));
        }
        out.push((addr, protocol));
    }
    Ok(out)
}

/// A user named or numbered, for `--uid` and `--chown-socket`.
fn user_id(text: &str, option: &'static str) -> Result<nix::unistd::Uid, CliError> {
    if let Ok(n) = text.trim().parse::<u32>() {
        return Ok(nix::unistd::Uid::from_raw(n));
    }
    match nix::unistd::User::from_name(text.trim()) {
        Ok(Some(u)) => Ok(u.uid),
        _ => Err(CliError::Invalid {
            option,
            value: text.to_string(),
            problem: "must be a user name known to this system, or a number".into(),
        }),
    }
}

/// A group named or numbered, for `--gid` and `--chown-socket`.
fn group_id(text: &str, option: &'static str) -> Result<nix::unistd::Gid, CliError> {
    if let Ok(n) = text.trim().parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(text.trim()) {
        Ok(Some(g)) => Ok(g.gid),
        _ => Err(CliError::Invalid {
            option,
            value: text.to_string(),
            problem: "must be a group name known to this system, or a number".into(),
        }),
    }
}

/// `--gid`, `--uid`: drops privileges once the sockets are bound (the group first,
/// while still allowed to; supplementary groups reset to it).
fn drop_privileges(
    run_as: (Option<nix::unistd::Uid>, Option<nix::unistd::Gid>),
) -> Result<(), CliError> {
    use nix::unistd::{getegid, geteuid, setgid, setgroups, setuid};
    let (uid, gid) = run_as;
    if let Some(g) = gid.filter(|&g| g != getegid() || geteuid().is_root()) {
        if geteuid().is_root() {
            let _ = setgroups(&[g]);
        }
        setgid(g).map_err(|e| {
            CliError::Usage(format!(
                "--gid {g}: cannot switch group: {} (start forklift as root to use --gid)",
                e.desc()
            ))
        })?;
    }
    if let Some(u) = uid.filter(|&u| u != geteuid()) {
        if gid.is_none() && geteuid().is_root() {
            let _ = setgroups(&[]);
        }
        setuid(u).map_err(|e| {
            CliError::Usage(format!(
                "--uid {u}: cannot switch user: {} (start forklift as root to use --uid)",
                e.desc()
            ))
        })?;
    }
    Ok(())
}

/// True when the Python app is an ASGI one (`--asgi`, or `--interface asgi`).
fn is_asgi(a: &ServeArgs) -> bool {
    a.asgi.is_some() || a.interface.as_deref() == Some("asgi")
}

/// How the Python app on the command line is to be found and run.
#[cfg(feature = "python")]
fn python_options(
    a: &ServeArgs,
    config: &ServerConfig,
    virtual_env: Option<&PathBuf>,
) -> crate::python::PythonOptions {
    use crate::python::{Interface, Lifespan, LoopKind};
    let green = green_engine(a, true, is_asgi(a))
        .ok()
        .flatten()
        .map(|(engine, cores)| crate::python::GreenOptions {
            engine,
            cores: cores as usize,
            monkey_patch: a.gevent_monkey_patch,
            early_monkey_patch: a.gevent_early_monkey_patch,
        });
    crate::python::PythonOptions {
        wsgi_file: a.app.wsgi_file.clone(),
        module: a.asgi.clone().or_else(|| a.app.module.clone()),
        callable: a.app.callable.clone(),
        pythonpath: a.app.pythonpath.clone(),
        // `serve` has already changed directory.
        chdir: None,
        virtualenv: a.app.virtualenv.clone().or_else(|| virtual_env.cloned()),
        pool_threads: config.threads,
        multithread: match config.model {
            // Greenlets of one hub run requests concurrently.
            _ if green.is_some() => config.cores > 1,
            Model::Linear => false,
            Model::Threads | Model::Epoll => config.threads > 1,
            Model::Async => config.threads > 1 || config.cores > 1,
        },
        multiprocess: config.processes > 1,
        interface: if is_asgi(a) {
            Interface::Asgi
        } else {
            Interface::Wsgi
        },
        lifespan: match a.lifespan.as_str() {
            "on" => Lifespan::On,
            "off" => Lifespan::Off,
            _ => Lifespan::Auto,
        },
        event_loop: match a.event_loop.as_str() {
            "asyncio" => LoopKind::Asyncio,
            "uvloop" => LoopKind::Uvloop,
            _ => LoopKind::Auto,
        },
        // Without a master this process serves what it loads; with one, each worker
        // starts its loops after fork.
        serve_here: !config.master,
        shutdown_timeout: config.timeouts.shutdown,
        green,
        gc_freeze: !a.no_gc_freeze,
    }
}

/// Checks, without loading anything, that the app can be looked for (lazy apps: the
/// master imports nothing, but a missing file is still a one-line error before fork).
fn check_app(
    a: &ServeArgs,
    config: &ServerConfig,
    virtual_env: Option<&PathBuf>,
) -> Result<(), CliError> {
    if let Some(spec) = &a.app.app {
        return load_app(a, config, virtual_env)
            .map(drop)
            .map_err(|e| match e {
                CliError::App(m) => CliError::App(format!("{spec}: {m}")),
                e => e,
            });
    }
    #[cfg(feature = "python")]
    {
        crate::python::check_options(&python_options(a, config, virtual_env))
            .map_err(|e| CliError::App(e.to_string()))
    }
    #[cfg(not(feature = "python"))]
    load_app(a, config, virtual_env).map(drop)
}

/// A reload of a preloaded app: the master imports it again, reading the app's own
/// modules anew (installed packages stay loaded); if the import fails, the modules
/// already loaded are put back and the old app serves on.
fn reimport(load: server::master::Loader) -> server::master::Loader {
    Box::new(move || {
        #[cfg(feature = "python")]
        {
            let saved = crate::python::forget_app_modules();
            let loaded = load();
            if let (Err(_), Some(saved)) = (&loaded, saved) {
                crate::python::restore_modules(saved);
            }
            loaded
        }
        #[cfg(not(feature = "python"))]
        load()
    })
}

/// Loads the app named on the command line. `virtual_env` is `$VIRTUAL_ENV`, used when
/// `--virtualenv` is not given.
fn load_app(
    a: &ServeArgs,
    config: &ServerConfig,
    virtual_env: Option<&PathBuf>,
) -> Result<App, CliError> {
    if let Some(spec) = &a.app.app {
        let name = spec.strip_prefix("builtin:").ok_or_else(|| {
            CliError::Usage(format!(
                "unknown app {spec:?}: use builtin:NAME ({}) or --wsgi-file / --module",
                builtin::NAMES.join(", ")
            ))
        })?;
        return builtin::by_name(name).map_err(CliError::App);
    }
    #[cfg(feature = "python")]
    {
        let app = crate::python::load_app(&python_options(a, config, virtual_env))
            .map_err(|e| CliError::App(e.to_string()))?;
        if let Some(offload) = crate::offload::global() {
            crate::offload::python::install(offload);
        }
        Ok(app)
    }
    #[cfg(not(feature = "python"))]
    {
        let _ = (config, virtual_env);
        Err(CliError::App(
            "this build of forklift has no Python support (rebuild with the `python` feature)"
                .into(),
        ))
    }
}

/// The files a server creates (unix socket files, the pidfile): removed when it stops
/// with `--vacuum`, and always when it fails to start.
struct Vacuum {
    paths: Vec<PathBuf>,
    /// `--vacuum`.
    on_exit: bool,
    /// The server started and stopped normally.
    clean: bool,
    /// The process that created them (a forked worker never removes them).
    pid: u32,
}

impl Drop for Vacuum {
    fn drop(&mut self) {
        if std::process::id() == self.pid && (self.on_exit || !self.clean) {
            for p in &self.paths {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn serve(
    a: ServeArgs,
    virtual_env: Option<PathBuf>,
    command_line: Vec<OsString>,
) -> Result<i32, CliError> {
    // Sockets passed by systemd or by the master this one replaces: taken first, before
    // anything else opens descriptors.
    let mut inherited = server::inherit::take().map_err(|e| CliError::App(e.to_string()))?;
    let plan = plan(&a)?;
    let config = plan.config;
    for kv in &a.env {
        // Checked by `plan`; set before anything starts a thread or loads the app.
        if let Some((k, v)) = kv.split_once('=') {
            std::env::set_var(k, v);
        }
    }
    if let Some(dir) = &a.app.chdir {
        std::env::set_current_dir(dir)
            .map_err(|e| CliError::App(format!("cannot chdir to {}: {e}", dir.display())))?;
    }
    let log = a.ops.open_log(!a.disable_logging, a.logto.as_deref())?;
    let mut vacuum = Vacuum {
        paths: Vec::new(),
        on_exit: a.vacuum,
        clean: false,
        pid: std::process::id(),
    };
    // Bound before the app's sockets: a busy stats or metrics address stops the start.
    // Taking over from a previous master (SIGUSR2), which holds the stats and metrics
    // addresses until it exits: the master binds them then.
    let late_endpoints = inherited.predecessor.is_some() && config.master && a.ops.has_endpoints();
    let endpoints = if late_endpoints {
        crate::ops::Endpoints::default()
    } else {
        a.ops.endpoints()?
    };
    // The sockets are bound (ports below 1024 included) before privileges are dropped
    // and before the app is loaded, as uWSGI does: the app never runs as root. A socket
    // passed by systemd or by the previous master is served as it is.
    let mut listeners = Vec::with_capacity(plan.sockets.len());
    let passed = inherited.assign(&plan.sockets);
    for ((addr, protocol), passed) in plan.sockets.iter().zip(passed) {
        let l = match passed {
            Some((l, exact)) => {
                // A socket file passed on keeps its meaning: this server removes it
                // on exit with --vacuum, as the one that bound it would have.
                if let (true, listen::Address::Unix(path)) = (exact, addr) {
                    vacuum.paths.push(path.clone());
                }
                if !exact {
                    log.line(&format!(
                        "forklift: serving the passed socket {} (LISTEN_FDS) instead of binding {addr}",
                        l.name()
                    ));
                }
                l
            }
            None => {
                let l = server::Listener::bind(addr, *protocol, config.backlog, &plan.unix)?;
                vacuum.paths.extend(l.path().map(PathBuf::from));
                l
            }
        };
        listeners.push(l);
    }
    if !inherited.fds.is_empty() {
        log.line(&format!(
            "forklift: {} passed socket(s) not used (no --http/--socket address names them)",
            inherited.fds.len()
        ));
        inherited.fds.clear();
    }
    // As uWSGI's `pidfile`: written before privileges are dropped (where only root may
    // write, such as /run).
    if let Some(path) = &a.pidfile {
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(|e| {
            CliError::Usage(format!("--pidfile {}: cannot write: {e}", path.display()))
        })?;
        vacuum.paths.push(path.clone());
    }
    drop_privileges(plan.run_as)?;
    // Load (and so validate) the app before forking, so a bad app is a one-line error
    // and exit code 1.
    let virtual_env = virtual_env.filter(|p| !p.as_os_str().is_empty());
    // The outbound HTTP client's settings (each process creates its client lazily).
    let _ = crate::fanout::configure(a.fanout.to_config());
    // The offload engine, built once (before any fork) and shared by every process.
    let offload_cfg = crate::offload::OffloadConfig::from_args(&a.offload)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let offload =
        crate::offload::Offload::new(offload_cfg, crate::offload::Registry::global().clone())
            .map_err(|e| CliError::App(e.to_string()))?;
    crate::offload::set_global(offload.clone());
    let lazy = a.lazy_apps && config.master;
    let app = if lazy {
        // Loaded in each worker; still refuse a bad app name before forking.
        check_app(&a, &config, virtual_env.as_ref())?;
        None
    } else {
        Some(load_app(&a, &config, virtual_env.as_ref())?)
    };
    // One process: stop signals are watched before the start-up line says it is ready.
    let single = if config.master {
        None
    } else {
        let shutdown = crate::rt::Shutdown::new();
        let signals = server::signals::watch(&shutdown, false)?;
        Some((shutdown, signals))
    };
    let names: Vec<String> = listeners.iter().map(server::Listener::describe).collect();
    log.line(&format!(
        "forklift {} listening on {} (app={}, model={} [{}], processes={}, threads={}, cores={}, pid={})",
        env!("CARGO_PKG_VERSION"),
        names.join(" and "),
        plan.app_name,
        config.model,
        plan.model_reason,
        config.processes,
        config.threads,
        config.cores,
        std::process::id()
    ));
    endpoints.describe().iter().for_each(|line| log.line(line));
    if config.master {
        let (a2, c2, venv2) = (a.clone(), config.clone(), virtual_env.clone());
        let load: server::master::Loader =
            Box::new(move || load_app(&a2, &c2, venv2.as_ref()).map_err(|e| e.to_string()));
        let mut options = a.ops.master_options(endpoints, a.logto.as_ref())?;
        options.predecessor = inherited.predecessor;
        if late_endpoints {
            let ops_args = a.ops.clone();
            options.endpoints_later = Some(Box::new(move || {
                ops_args.endpoints().map_err(|e| e.to_string())
            }));
        }
        options.exec_args = Some(command_line);
        let source = if lazy {
            server::master::AppSource::Lazy(load)
        } else {
            options.reload_app = Some(reimport(load));
            server::master::AppSource::Preloaded(app.expect("loaded unless lazy"))
        };
        let code = server::master::run_with(listeners, source, config, log, options)?;
        vacuum.clean = true;
        // The new master serves the same socket files now.
        vacuum.on_exit &= !server::master::handed_over();
        return Ok(code);
    }
    let (shutdown, _signals) = single.expect("watched without a master");
    let app = app.expect("loaded unless lazy");
    // One process: run the offload executors here (the spool resumes pending tasks).
    if let Err(e) = offload.start() {
        log.line(&format!("forklift: offload: {e}"));
    }
    if let Some(path) = &a.logto {
        server::log::watch_reopen(path.clone(), a.ops.log_reopen)?;
    }
    let card = ops::serve_here(endpoints, &listeners, &config)?;
    let drain = offload.config().drain_timeout;
    let log = log.for_worker(1);
    server::run_worker_with(listeners, app, config, log.clone(), shutdown, card)?;
    let report = offload.shutdown(drain);
    if report.dropped > 0 || report.left_in_spool > 0 {
        log.line(&format!("forklift: {report}"));
    }
    vacuum.clean = true;
    drop(vacuum);
    log.line("forklift: stopped");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => a,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn a_wsgi_app_behind_a_front_server_runs_on_the_accepting_thread() {
        let plan_of = |extra: &[&str]| {
            let mut args = vec!["forklift", "serve", "--wsgi-file", "app.py"];
            args.extend_from_slice(extra);
            plan(&parse(&args)).unwrap()
        };
        let p = plan_of(&["--socket", "/run/app.sock"]);
        assert_eq!(
            (p.config.model, p.model_reason),
            (
                Model::Linear,
                "a WSGI app behind a front server: only uwsgi sockets"
            )
        );
        assert_eq!(
            plan_of(&["--socket", ":3031", "--processes", "4"])
                .config
                .model,
            Model::Linear
        );
        // An HTTP socket beside it, several threads, or an explicit model: as before.
        for extra in [
            &["--socket", "/run/app.sock", "--http", ":8080"][..],
            &["--socket", "/run/app.sock", "--threads", "4"],
            &["--socket", "/run/app.sock", "--model", "epoll"],
        ] {
            assert_eq!(plan_of(extra).config.model, Model::Epoll, "{extra:?}");
        }
    }

    #[test]
    fn model_inference() {
        // A Python app runs on the readiness loop with `--threads` Python threads,
        // whatever `--threads` says.
        for threads in ["1", "4"] {
            let p = plan(&parse(&[
                "forklift",
                "serve",
                "--wsgi-file",
                "app.py",
                "--threads",
                threads,
            ]))
            .unwrap();
            assert_eq!(
                (p.config.model, p.model_reason),
                (Model::Epoll, "the default for Python apps")
            );
            assert_eq!(p.config.threads.to_string(), threads);
        }
        assert_eq!(
            plan(&parse(&["forklift", "serve", "builtin:hello"]))
                .unwrap()
                .config
                .model,
            Model::Epoll
        );
        assert_eq!(
            plan(&parse(&[
                "forklift",
                "serve",
                "builtin:hello",
                "--threads",
                "4"
            ]))
            .unwrap()
            .config
            .model,
            Model::Threads
        );
        let p = plan(&parse(&[
            "forklift",
            "serve",
            "builtin:hello",
            "--gevent",
            "50",
        ]))
        .unwrap();
        assert_eq!((p.config.model, p.config.cores), (Model::Async, 50));
        let p = plan(&parse(&[
            "forklift",
            "serve",
            "builtin:hello",
            "--processes",
            "2",
        ]))
        .unwrap();
        assert!(p.config.master);
    }

    #[test]
    fn gevent_and_asyncio_for_wsgi_apps() {
        // A WSGI app: greenlets on the epoll model's loop, N cores.
        let p = plan(&parse(&[
            "forklift",
            "serve",
            "--wsgi-file",
            "app.py",
            "--gevent",
            "50",
        ]))
        .unwrap();
        assert_eq!((p.config.model, p.config.cores), (Model::Epoll, 50));
        let p = plan(&parse(&[
            "forklift",
            "serve",
            "--wsgi-file",
            "app.py",
            "--asyncio",
            "2",
            "--greenlet",
            "--threads",
            "1",
        ]))
        .unwrap();
        assert_eq!((p.config.model, p.config.cores), (Model::Epoll, 2));
        for (args, want) in [
            (
                &["--gevent", "10", "--threads", "2"][..],
                "cannot go with --threads 2",
            ),
            (&["--asyncio", "4"][..], "--asyncio needs --greenlet"),
            (&["--asyncio", "1", "--greenlet"][..], "must be 2 or more"),
            (&["--greenlet"][..], "give it with --asyncio N"),
            (&["--gevent-monkey-patch"][..], "go with --gevent N"),
            (
                &["--gevent", "2", "--asyncio", "2", "--greenlet"][..],
                "not both",
            ),
        ] {
            let mut argv = vec!["forklift", "serve", "--wsgi-file", "app.py"];
            argv.extend_from_slice(args);
            let e = plan(&parse(&argv)).err().expect("refused").to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn bad_values_are_clear() {
        let argv: Vec<OsString> = ["forklift", "serve", "builtin:hello", "--model", "fast"]
            .iter()
            .map(OsString::from)
            .collect();
        let e = Cli::try_parse_from(argv).unwrap_err().to_string();
        assert!(e.contains("unknown model"), "{e}");
        assert!(plan(&parse(&["forklift", "serve"])).is_err());
        for bad in ["nope:x", "8080", "@", "garbage"] {
            let e = plan(&parse(&[
                "forklift",
                "serve",
                "builtin:hello",
                "--http",
                bad,
            ]))
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.to_string().contains("HOST:PORT"), "{e}");
        }
        let e = plan(&parse(&[
            "forklift",
            "serve",
            "builtin:hello",
            "--daemonize",
            "/x",
        ]))
        .err()
        .unwrap();
        assert!(e.to_string().contains("systemd"), "{e}");
        let e = plan(&parse(&[
            "forklift",
            "serve",
            "builtin:hello",
            "--chmod-socket",
            "9",
        ]))
        .err()
        .unwrap();
        assert!(e.to_string().contains("octal"), "{e}");
    }

    #[test]
    fn sockets_of_every_kind() {
        use crate::server::Protocol::{Http, Uwsgi};
        let p = plan(&parse(&[
            "forklift",
            "serve",
            "builtin:hello",
            "--socket",
            "/run/app.sock",
            "--http",
            ":8080",
            "--uwsgi-socket",
            "@abs",
            "--socket",
            "./app.sock",
            "--chmod-socket",
        ]))
        .unwrap();
        let got: Vec<(String, server::Protocol)> =
            p.sockets.iter().map(|(a, p)| (a.to_string(), *p)).collect();
        assert_eq!(
            got,
            [
                ("0.0.0.0:8080".to_string(), Http),
                ("/run/app.sock".to_string(), Uwsgi),
                ("./app.sock".to_string(), Uwsgi),
                ("@abs".to_string(), Uwsgi),
            ]
        );
        assert_eq!(p.unix.mode, Some(0o666));
        assert_eq!(p.config.limits.max_uwsgi_vars, 4096);
        assert_eq!(p.config.limits.max_head, 64 * 1024);
        let p = plan(&parse(&[
            "forklift",
            "serve",
            "builtin:hello",
            "-b",
            "32768",
        ]))
        .unwrap();
        assert_eq!(p.config.limits.max_uwsgi_vars, 32768);
        assert_eq!(p.config.limits.max_head, 32768);
        // `protocol = http` makes `socket` speak HTTP; `plugins = python3` is accepted.
        let p = plan(&parse(&[
            "forklift",
            "serve",
            "builtin:hello",
            "--socket",
            ":8000",
            "--protocol",
            "http",
            "--plugins",
            "python3,http",
        ]))
        .unwrap();
        assert_eq!(p.sockets[0].1, Http);
        let e = plan(&parse(&[
            "forklift",
            "serve",
            "builtin:hello",
            "--plugin",
            "psgi",
        ]))
        .err()
        .unwrap();
        assert!(e.to_string().contains("plugin \"psgi\""), "{e}");
    }
}
