//! The `threads` model (seed 003's thread pool, uWSGI's `threads = N`): an acceptor
//! feeds accepted connections into a bounded queue served by N threads. When the queue
//! is full the acceptor stops accepting, and new clients wait in the kernel's backlog.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, SendTimeoutError};

use super::{accept, blocking, Env, ServerError};

pub fn run(listener: TcpListener, env: Arc<Env>) -> Result<(), ServerError> {
    let threads = env.config.threads.max(1);
    let (tx, rx) = bounded::<std::net::TcpStream>(env.config.queue.max(1));
    let served = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        let rx = rx.clone();
        let env = env.clone();
        let served = served.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("forklift-worker-{i}"))
                .spawn(move || {
                    while let Ok(stream) = rx.recv() {
                        let n = blocking::serve(stream, &env, &|| !rx.is_empty());
                        served.fetch_add(n, Ordering::Relaxed);
                    }
                })?,
        );
    }
    drop(rx);
    let result = accept::blocking_loop(&listener, &env.shutdown, |mut stream| {
        loop {
            match tx.send_timeout(stream, Duration::from_millis(200)) {
                Ok(()) => break,
                Err(SendTimeoutError::Timeout(s)) => {
                    if env.shutdown.is_triggered() {
                        return false;
                    }
                    stream = s;
                }
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
        env.config
            .max_requests
            .is_none_or(|max| served.load(Ordering::Relaxed) < max)
    });
    // Stop: no new connections; the threads finish what is queued and in flight.
    drop(tx);
    let deadline = Instant::now() + env.config.timeouts.shutdown;
    for h in handles {
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if h.is_finished() {
            let _ = h.join();
        }
    }
    result?;
    Ok(())
}
