//! The strategies, one file each, named after the strategy: `inline`, `loop`
//! (`loop_strategy`), `thread` and `pool`. Each is an [`crate::offload::engine::Engine`];
//! the `spool` strategy is a subsystem of its own in `crate::offload::spool`.

pub mod inline;
pub mod loop_strategy;
pub mod pool;
pub mod thread;
