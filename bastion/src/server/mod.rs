//! The server: the privileged monitor (listener, admission, sessions,
//! authentication and forwarding decisions), the sandboxed per-connection
//! worker that speaks SSH, the PROXY protocol reader and the host keys.

pub mod health;
pub mod hostkeys;
pub mod lifecycle;
pub mod monitor;
pub mod proxy_protocol;
pub mod worker;
