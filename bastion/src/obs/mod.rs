//! Observability: liveness, readiness and metrics over HTTP (the server answers through
//! [`health::HealthView`]), the counters, and logging.

pub mod health;
pub mod logging;
pub mod metrics;
