//! Where users may connect onward: the forwarding policy (patterns, protected
//! ranges, name resolution) and, later, target kinds such as EC2 instances.
//!
//! `pattern.rs` parses and matches what one rule says (principals, targets,
//! globs); `policy.rs` holds the rule set, the protected ranges and the
//! decision, and re-exports the pattern types.

mod pattern;
pub mod policy;
