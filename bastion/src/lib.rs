//! bastion: a stateless, sandboxed SSH bastion for AWS.
//!
//! The process model (see `docs/ARCHITECTURE.md` and `docs/SECURITY.md`): a
//! privileged monitor ([`server::monitor`]) accepts connections and starts one
//! sandboxed worker ([`server::worker`], [`sandbox`]) per connection; the
//! worker speaks SSH and asks the monitor ([`ipc`]) for every decision: keys
//! ([`keys`]), onward connections ([`targets`]), and the monitor records
//! everything ([`audit`]), which leaves the instance through its sinks
//! ([`audit::sinks`]).
#![deny(unsafe_code)]

pub mod audit;
pub mod awsutil;
pub mod cli;
pub mod config;
pub mod fsutil;
pub mod ipc;
pub mod keys;
pub mod obs;
pub mod sandbox;
pub mod server;
pub mod targets;
