//! Observability: liveness, readiness and metrics over HTTP, and logging.

pub mod health;
pub mod logging;
