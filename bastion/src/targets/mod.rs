//! Where users may connect onward: the forwarding policy (patterns, protected
//! ranges, name resolution) and, later, target kinds such as EC2 instances.

pub mod policy;
