//! bastion: a stateless, sandboxed SSH bastion for AWS.
//!
//! The process model (see `docs/SECURITY.md` and `../shared/DESIGN.md`): a
//! privileged monitor ([`monitor`]) accepts connections and starts one
//! sandboxed worker ([`worker`], [`sandbox`]) per connection; the worker
//! speaks SSH and asks the monitor ([`ipc`]) for every decision: keys
//! ([`keysource`], [`authkeys`]), onward connections ([`policy`]), and the
//! monitor records everything ([`audit`]).
#![deny(unsafe_code)]

pub mod akc;
pub mod audit;
pub mod auditread;
pub mod authkeys;
pub mod awsutil;
pub mod cli;
pub mod config;
pub mod eic;
pub mod eic_verify;
pub mod health;
pub mod hostkeys;
pub mod iam;
pub mod ipc;
pub mod keysource;
pub mod logging;
pub mod monitor;
pub mod policy;
pub mod proxy_protocol;
pub mod sandbox;
pub mod shipper;
pub mod worker;
