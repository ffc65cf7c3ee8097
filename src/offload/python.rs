//! Glue between the offload engine and the `forklift` Python module: `@forklift.task`
//! functions become registered tasks, `task.spool()` goes to the spool (or to Redis
//! under `redis`), and `forklift.offload(func)` runs on the engine's threads (for
//! `pool`, `thread` and `inline`; closures cannot cross processes, so under `loop`,
//! `spool` and `redis` it keeps the module's own small pool). Python tasks are not available under `loop`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Offload, Strategy, Task, TaskError};
use crate::python::{self, OffloadExecutor, SpoolSink};

/// Registered name of the task that runs a Python closure handed to `forklift.offload`.
pub const CALL_TASK: &str = "forklift.call";

type Job = Box<dyn FnOnce() + Send + 'static>;

/// What [`install`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PythonGlue {
    /// `@forklift.task` names registered in the engine's registry.
    pub tasks: Vec<String>,
    /// `task.spool()` stores into the spool (strategy `spool`).
    pub spool_sink: bool,
    /// `forklift.offload(func)` runs on the engine (strategies pool, thread, inline).
    pub executor: bool,
}

/// Connects the loaded Python app to `offload`. Call it after the app was imported (so
/// its `@forklift.task` declarations ran), in every process that loaded it: in the
/// master before fork for preloaded apps, in each worker for lazy apps.
pub fn install(offload: &Offload) -> PythonGlue {
    let mut glue = PythonGlue::default();
    // Under `loop` tasks run in the offload host, a process forked from the master
    // that never went through the interpreter's after-fork hooks: Python must not run
    // there, so Python tasks are not registered (submitting one is `UnknownTask`).
    let names = if offload.config().strategy == Strategy::Loop {
        Vec::new()
    } else {
        python::task_names()
    };
    for name in names {
        let task = name.clone();
        offload.registry().register(name.clone(), move |p| {
            let json = std::str::from_utf8(&p.data)
                .map_err(|_| TaskError::permanent("payload is not UTF-8 JSON"))?;
            python::run_task(&task, json).map_err(|e| match e {
                python::TaskError::BadPayload { .. } => TaskError::permanent(e.to_string()),
                other => TaskError::new(other.to_string()),
            })
        });
        glue.tasks.push(name);
    }
    if matches!(offload.config().strategy, Strategy::Spool | Strategy::Redis) {
        python::set_spool_sink(Arc::new(Sink(offload.clone())));
        glue.spool_sink = true;
    }
    if matches!(
        offload.config().strategy,
        Strategy::Pool | Strategy::Thread | Strategy::Inline
    ) {
        let exec = Arc::new(Exec {
            offload: offload.clone(),
            jobs: Arc::new(Jobs::default()),
        });
        let jobs = exec.jobs.clone();
        offload.registry().register(CALL_TASK, move |p| {
            let id = <[u8; 8]>::try_from(&p.data[..])
                .map(u64::from_le_bytes)
                .map_err(|_| TaskError::permanent("bad call id"))?;
            match jobs.take(id) {
                Some(job) => {
                    job();
                    Ok(())
                }
                None => Err(TaskError::permanent(format!("no pending call {id}"))),
            }
        });
        python::set_offload_executor(exec);
        glue.executor = true;
    }
    glue
}

struct Sink(Offload);

impl SpoolSink for Sink {
    fn spool(&self, task: &str, payload_json: &str, delay: Duration) -> Result<String, String> {
        self.0
            .submit(Task::new(task, payload_json.as_bytes().to_vec()).after(delay))
            .map(|id| id.to_string())
            .map_err(|e| e.to_string())
    }
}

/// Closures waiting for their task to run, by id. Bounded by the engine: an entry
/// exists only while its task is queued or running.
#[derive(Default)]
struct Jobs {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Job>>,
}

impl Jobs {
    fn put(&self, job: Job) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, job);
        id
    }

    fn take(&self, id: u64) -> Option<Job> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }
}

struct Exec {
    offload: Offload,
    jobs: Arc<Jobs>,
}

impl OffloadExecutor for Exec {
    fn submit(&self, job: Job) -> Result<(), Job> {
        let id = self.jobs.put(job);
        match self
            .offload
            .submit(Task::new(CALL_TASK, id.to_le_bytes().to_vec()))
        {
            Ok(_) => Ok(()),
            // Hand the job back (the caller drops it with the GIL held).
            Err(_) => Err(self.jobs.take(id).unwrap_or_else(|| Box::new(|| ()))),
        }
    }
}
