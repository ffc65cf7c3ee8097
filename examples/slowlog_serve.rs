//! A stand-in for `forklift serve builtin:slowlog --offload …` until the CLI wires the
//! offload flags: `slowlog_serve serve builtin:slowlog --http 127.0.0.1:0 [--model M]
//! [--processes N] [offload flags] [--disable-logging]`. Prints the same banner.

use std::sync::Arc;

use clap::Parser;
use forklift::offload::{Offload, OffloadArgs, OffloadConfig, Registry, SlowLog};
use forklift::server::config::{Model, ServerConfig};

#[derive(Parser)]
struct Cli {
    /// Always `serve`.
    cmd: String,
    /// Always `builtin:slowlog`.
    app: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    http: std::net::SocketAddr,
    #[arg(long, default_value = "epoll")]
    model: Model,
    #[arg(long, default_value_t = 1)]
    processes: usize,
    #[arg(long)]
    disable_logging: bool,
    #[command(flatten)]
    offload: OffloadArgs,
}

fn main() {
    let cli = Cli::parse();
    assert!(
        cli.cmd == "serve" && cli.app == "builtin:slowlog",
        "usage: serve builtin:slowlog …"
    );
    let cfg = OffloadConfig::from_args(&cli.offload).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let off = Offload::new(cfg, Registry::global().clone()).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    forklift::offload::set_global(off.clone());
    let app: forklift::app::App = Arc::new(SlowLog::new(off));
    let listener = std::net::TcpListener::bind(cli.http).expect("bind");
    let config = ServerConfig {
        model: cli.model,
        processes: cli.processes,
        master: cli.processes > 1,
        ..ServerConfig::default()
    };
    eprintln!(
        "forklift (slowlog_serve) listening on http://{} (model={}, processes={}, offload={})",
        listener.local_addr().expect("addr"),
        config.model,
        config.processes,
        cli.offload.offload
    );
    let log = forklift::server::log::Log::stderr(!cli.disable_logging);
    if config.master {
        let source = forklift::server::master::AppSource::Preloaded(app);
        let code = forklift::server::master::run(listener, source, config, log).expect("master");
        std::process::exit(code);
    }
    // A single process: start the engine here (the spool resumes pending tasks).
    app.after_fork();
    let shutdown = forklift::rt::Shutdown::new();
    let _signals = forklift::server::signals::watch(&shutdown, false).expect("signals");
    forklift::server::run_worker(listener, app, config, log, shutdown).expect("serve");
}
