//! The `linear` model (the simplest server, one connection at a time): one thread
//! accepts a connection, serves it to the end, then takes the next. Keep-alive is offered
//! only while nobody else is waiting in the backlog, so one client cannot starve the rest.

use std::sync::Arc;
use std::time::Duration;

use super::{accept, blocking, Env, Listener, ServerError};

pub fn run(listeners: Vec<Listener>, env: Arc<Env>) -> Result<(), ServerError> {
    let others_waiting =
        || accept::wait_readable(&listeners, &env.shutdown, Some(Duration::ZERO)).is_some();
    accept::blocking_loop(&listeners, &env.shutdown, |stream, peer, protocol| {
        let session = blocking::Session::new(stream, peer, protocol);
        blocking::serve(session, &env, blocking::Idle::Hold(&others_waiting));
    })?;
    Ok(())
}
