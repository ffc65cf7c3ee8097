//! `forklift worker APP --redis-url URL`: runs the tasks an app registers (native or
//! Python, the app named as for `serve`) from a Redis queue, without serving HTTP. Any
//! number of workers on any number of hosts share a queue; a graceful stop (SIGTERM,
//! SIGINT) finishes or gives back the tasks in hand.

use std::path::PathBuf;

use clap::Parser;

use super::{load_app, plan, AppArgs, Cli, CliError, Command, ServeArgs};
use crate::offload::{Offload, OffloadArgs, OffloadConfig, Registry, Strategy};

/// `forklift worker` options.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The app whose tasks to run (builtin:NAME, e.g. builtin:slowlog, or a Python app
    /// and its @forklift.task functions), named as for `serve`.
    #[command(flatten)]
    pub app: AppArgs,

    /// Offload and Redis options (the strategy is always redis here; --offload-workers
    /// tasks run at once).
    #[command(flatten)]
    pub offload: OffloadArgs,
}

/// `serve`'s arguments for the same app, with serve's defaults for everything else.
fn as_serve_args(w: &WorkerArgs) -> ServeArgs {
    let Ok(Cli {
        command: Command::Serve(mut a),
    }) = Cli::try_parse_from(["forklift", "serve"])
    else {
        unreachable!("`forklift serve` without options parses");
    };
    a.app = w.app.clone();
    a.offload = w.offload.clone();
    a.offload.offload = Strategy::Redis;
    a.offload.redis.no_run_tasks = false;
    a.threads = Some(w.offload.offload_workers.clamp(1, 4096) as u32);
    a
}

/// Runs `forklift worker` until SIGTERM/SIGINT; returns the exit code.
pub fn run_worker(w: WorkerArgs, virtual_env: Option<PathBuf>) -> Result<i32, CliError> {
    if let Some(dir) = &w.app.chdir {
        std::env::set_current_dir(dir)
            .map_err(|e| CliError::App(format!("cannot chdir to {}: {e}", dir.display())))?;
    }
    let a = as_serve_args(&w);
    let config = plan(&a)?.config;
    let virtual_env = virtual_env.filter(|p| !p.as_os_str().is_empty());
    let offload_cfg =
        OffloadConfig::from_args(&a.offload).map_err(|e| CliError::Usage(e.to_string()))?;
    let offload = Offload::new(offload_cfg, Registry::global().clone())
        .map_err(|e| CliError::App(e.to_string()))?;
    crate::offload::set_global(offload.clone());
    // Loading the app registers its tasks (builtin:slowlog's, @forklift.task functions).
    let _app = load_app(&a, &config, virtual_env.as_ref())?;
    let tasks = offload.registry().names();
    if tasks.is_empty() {
        return Err(CliError::App(format!(
            "{}: the app registers no task, so this worker would run nothing",
            a.app.app.as_deref().unwrap_or("the Python app")
        )));
    }
    let shutdown = crate::rt::Shutdown::new();
    let _signals = crate::server::signals::watch(&shutdown, false)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    shutdown.on_trigger(move || {
        let _ = tx.try_send(());
    });
    offload.start().map_err(|e| CliError::App(e.to_string()))?;
    let r = &offload.config().redis;
    eprintln!(
        "forklift worker {} running queue {:?} from {} ({} task(s) at once; tasks: {}; pid={})",
        env!("CARGO_PKG_VERSION"),
        r.queue,
        crate::offload::redact_url(&r.url),
        offload.config().workers,
        tasks.join(", "),
        std::process::id()
    );
    let _ = rx.recv();
    let report = offload.shutdown(offload.config().drain_timeout);
    let c = offload.counters();
    eprintln!(
        "forklift worker: stopped: {} completed, {} failed, {} retried, {} dead-lettered; {} finished while stopping, {} given back to the queue",
        c.completed, c.failed, c.retried, c.dead, report.drained, report.left_in_spool
    );
    Ok(0)
}
