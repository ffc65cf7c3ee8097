//! The `linear` model (the simplest server, one request at a time): one thread accepts
//! connections, waits for their requests, and runs each whole request itself, from the
//! app call to the last byte of the response, before it takes the next.
//!
//! While a request head or a small body trickles in, the connection waits in the
//! thread's epoll set, as under `threads` (whose acceptor this model reuses with no
//! threads behind it): a slow client costs a slot and a timer, never the thread, and an
//! idle keep-alive client does not keep others out.

use std::sync::Arc;

use super::{threads, Env, Listener, ServerError};

pub fn run(listeners: Vec<Listener>, env: Arc<Env>) -> Result<(), ServerError> {
    threads::run_inline(listeners, env)
}
