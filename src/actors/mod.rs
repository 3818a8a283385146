//! The actors: one `Registry` per process, one `Execution` per running execution.

pub mod execution;
pub mod live;
pub mod registry;

pub use execution::Execution;
pub use registry::{CancelExecution, Launcher, Registry, StartExecution, Subscribe};
