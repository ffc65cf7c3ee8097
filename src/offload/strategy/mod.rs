//! The offload strategies, one file each, named after the strategy.
//!
//! `inline`, `loop` (`loop_strategy`), `thread` and `pool`, each an
//! [`crate::offload::engine::Engine`], and `redis` (a directory: Redis Streams). The
//! `spool` strategy is a subsystem of its own, in `crate::offload::spool`.

pub mod inline;
pub mod loop_strategy;
pub mod pool;
pub mod redis;
pub mod thread;
