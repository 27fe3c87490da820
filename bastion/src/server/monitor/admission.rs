//! Admission control: who may start a connection now, counted before any expensive work
//! (fork, key exchange). Pure bookkeeping, so the counts are unit-tested without processes.

use std::collections::HashMap;
use std::net::IpAddr;

/// The limits admission enforces (`[limits]` and the worker uid range of `[sandbox]`).
#[derive(Debug, Clone, Copy)]
pub(super) struct AdmissionLimits {
    pub max_sessions: usize,
    pub max_startups: usize,
    pub per_source: usize,
    pub uid_base: u32,
    pub uid_count: u32,
}

/// Why a connection is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    #[error("max_sessions reached")]
    MaxSessions,
    #[error("max_startups reached")]
    MaxStartups,
    #[error("per_source limit reached for this address")]
    PerSource,
    #[error("no free worker uid (sandbox.uid_count)")]
    NoUid,
}

/// Unauthenticated connections in total and per source address, all connections, and the
/// uids of live workers (each live worker has its own).
#[derive(Debug)]
pub(super) struct Admission {
    limits: AdmissionLimits,
    unauth: usize,
    unauth_by_ip: HashMap<IpAddr, usize>,
    sessions: usize,
    free_uids: Vec<u32>,
    next_uid: u32,
}

impl Admission {
    pub(super) fn new(limits: AdmissionLimits) -> Admission {
        Admission {
            limits,
            unauth: 0,
            unauth_by_ip: HashMap::new(),
            sessions: 0,
            free_uids: Vec::new(),
            next_uid: limits.uid_base,
        }
    }

    /// Admits a connection from `ip` as unauthenticated and gives it a worker uid.
    pub(super) fn admit(&mut self, ip: IpAddr) -> Result<u32, Refusal> {
        let l = self.limits;
        if self.sessions >= l.max_sessions {
            return Err(Refusal::MaxSessions);
        }
        if self.unauth >= l.max_startups {
            return Err(Refusal::MaxStartups);
        }
        if self.unauth_by_ip.get(&ip).copied().unwrap_or(0) >= l.per_source {
            return Err(Refusal::PerSource);
        }
        let uid = match self.free_uids.pop() {
            Some(uid) => uid,
            None if self.next_uid - l.uid_base < l.uid_count => {
                self.next_uid += 1;
                self.next_uid - 1
            }
            None => return Err(Refusal::NoUid),
        };
        self.sessions += 1;
        self.unauth += 1;
        *self.unauth_by_ip.entry(ip).or_insert(0) += 1;
        Ok(uid)
    }

    /// A connection from `ip` authenticated (or, at its end, never did): it no longer counts
    /// as a startup.
    pub(super) fn release_unauth(&mut self, ip: IpAddr) {
        self.unauth -= 1;
        if let Some(n) = self.unauth_by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.unauth_by_ip.remove(&ip);
            }
        }
    }

    /// A connection ended: its session count and its uid are free again.
    pub(super) fn release(&mut self, uid: u32) {
        self.sessions -= 1;
        self.free_uids.push(uid);
    }

    /// Connections open now.
    pub(super) fn sessions(&self) -> usize {
        self.sessions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_sessions: 5,
            max_startups: 3,
            per_source: 2,
            uid_base: 1000,
            uid_count: 100,
        }
    }

    #[test]
    fn per_source_then_max_startups_then_freed_by_authentication() {
        let mut a = Admission::new(limits());
        assert_eq!(a.admit(A), Ok(1000));
        assert_eq!(a.admit(A), Ok(1001));
        assert_eq!(a.admit(A), Err(Refusal::PerSource));
        assert_eq!(a.admit(B), Ok(1002));
        assert_eq!(a.admit(B), Err(Refusal::MaxStartups));
        // One of A's authenticates: a startup slot and A's per-source slot are free again.
        a.release_unauth(A);
        assert_eq!(a.admit(A), Ok(1003));
        assert_eq!(a.sessions(), 4);
        // A refused connection takes nothing.
        assert_eq!(a.admit(A), Err(Refusal::MaxStartups));
        assert_eq!(a.sessions(), 4);
    }

    #[test]
    fn max_sessions_counts_authenticated_connections_too() {
        let mut a = Admission::new(AdmissionLimits {
            max_startups: 100,
            per_source: 100,
            ..limits()
        });
        for i in 0..5 {
            assert_eq!(a.admit(A), Ok(1000 + i));
            a.release_unauth(A);
        }
        assert_eq!(a.admit(B), Err(Refusal::MaxSessions));
        a.release(1002);
        assert_eq!(a.admit(B), Ok(1002), "the freed uid is used again");
    }

    #[test]
    fn uids_run_out_and_come_back() {
        let mut a = Admission::new(AdmissionLimits {
            uid_count: 2,
            ..limits()
        });
        assert_eq!(a.admit(A), Ok(1000));
        assert_eq!(a.admit(B), Ok(1001));
        assert_eq!(a.admit(B), Err(Refusal::NoUid));
        a.release_unauth(A);
        a.release(1000);
        assert_eq!(a.admit(B), Ok(1000));
        // A uid is never handed to two live connections.
        assert_eq!(a.admit(A), Err(Refusal::NoUid));
    }

    #[test]
    fn refusal_texts_name_the_setting() {
        assert_eq!(Refusal::MaxStartups.to_string(), "max_startups reached");
        assert_eq!(
            Refusal::NoUid.to_string(),
            "no free worker uid (sandbox.uid_count)"
        );
    }
}
