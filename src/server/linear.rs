//! The `linear` model (the simplest server, one connection at a time): one thread
//! accepts a connection, serves it to the end, then takes the next. Keep-alive is offered
//! only while nobody else is waiting in the backlog, so one client cannot starve the rest.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use super::{accept, blocking, Env, ServerError};

pub fn run(listener: TcpListener, env: Arc<Env>) -> Result<(), ServerError> {
    let others_waiting = || accept::wait_readable(&listener, &env.shutdown, Some(Duration::ZERO));
    accept::blocking_loop(&listener, &env.shutdown, |stream| {
        let session = blocking::Session::new(stream);
        blocking::serve(session, &env, blocking::Idle::Hold(&others_waiting));
    })?;
    Ok(())
}
