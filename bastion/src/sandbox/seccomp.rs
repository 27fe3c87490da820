//! The worker's seccomp policy, as reviewable data (firecracker's
//! `resources/seccomp/*.json`): [`allowed_syscalls`] lists every system call
//! the worker may make, each with a comment naming who needs it; anything
//! else kills the whole process. [`super::apply_seccomp`] installs it.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::SandboxError;

/// The worker's system-call allow-list, as reviewable data: every entry names
/// who needs it. Anything else kills the whole process (SECCOMP_RET_KILL_PROCESS).
/// Notably absent: socket, connect, bind, listen, accept (the worker has no
/// network of its own: the monitor hands it connected sockets), open/openat
/// (no files), execve, clone/fork (no new processes or threads), ptrace,
/// mount, setuid and friends.
fn allowed_syscalls() -> Vec<(&'static str, i64, Vec<SeccompRule>)> {
    let mut list: Vec<(&'static str, i64, Vec<SeccompRule>)> = vec![
        // I/O on the client socket, the control socket and forwarded sockets.
        ("read", libc::SYS_read, vec![]),
        ("write", libc::SYS_write, vec![]),
        ("readv", libc::SYS_readv, vec![]),
        ("writev", libc::SYS_writev, vec![]),
        ("recvfrom", libc::SYS_recvfrom, vec![]),
        ("sendto", libc::SYS_sendto, vec![]),
        ("recvmsg", libc::SYS_recvmsg, vec![]), // control messages with passed fds
        ("sendmsg", libc::SYS_sendmsg, vec![]),
        ("shutdown", libc::SYS_shutdown, vec![]), // half-close of forwarded streams
        ("close", libc::SYS_close, vec![]),
        // tokio's reactor (epoll) and waker (eventfd).
        ("epoll_ctl", libc::SYS_epoll_ctl, vec![]),
        ("epoll_pwait", libc::SYS_epoll_pwait, vec![]),
        ("epoll_create1", libc::SYS_epoll_create1, vec![]),
        ("eventfd2", libc::SYS_eventfd2, vec![]),
        // Socket options tokio and russh set on passed sockets (nodelay, nonblocking).
        ("setsockopt", libc::SYS_setsockopt, vec![]),
        ("getsockopt", libc::SYS_getsockopt, vec![]),
        ("getsockname", libc::SYS_getsockname, vec![]),
        ("getpeername", libc::SYS_getpeername, vec![]),
        ("fcntl", libc::SYS_fcntl, vec![]),
        ("ioctl", libc::SYS_ioctl, vec![ioctl_rule(libc::FIONBIO)]),
        // Memory: the allocator. Never executable mappings.
        ("mmap", libc::SYS_mmap, vec![no_exec_rule(2)]),
        ("mprotect", libc::SYS_mprotect, vec![no_exec_rule(2)]),
        ("munmap", libc::SYS_munmap, vec![]),
        ("mremap", libc::SYS_mremap, vec![]),
        ("madvise", libc::SYS_madvise, vec![]),
        ("brk", libc::SYS_brk, vec![]),
        // russh locks buffers holding session keys so they are never swapped out.
        ("mlock", libc::SYS_mlock, vec![]),
        ("munlock", libc::SYS_munlock, vec![]),
        // Time, randomness (key exchange), waiting.
        ("clock_gettime", libc::SYS_clock_gettime, vec![]),
        ("clock_nanosleep", libc::SYS_clock_nanosleep, vec![]),
        ("nanosleep", libc::SYS_nanosleep, vec![]),
        ("getrandom", libc::SYS_getrandom, vec![]),
        ("futex", libc::SYS_futex, vec![]),
        ("sched_yield", libc::SYS_sched_yield, vec![]),
        // Signals: Rust's runtime and panics (abort raises SIGABRT on itself).
        ("rt_sigaction", libc::SYS_rt_sigaction, vec![]),
        ("rt_sigprocmask", libc::SYS_rt_sigprocmask, vec![]),
        ("rt_sigreturn", libc::SYS_rt_sigreturn, vec![]),
        ("sigaltstack", libc::SYS_sigaltstack, vec![]),
        ("getpid", libc::SYS_getpid, vec![]),
        ("gettid", libc::SYS_gettid, vec![]),
        ("tgkill", libc::SYS_tgkill, vec![]),
        // Leaving.
        ("exit", libc::SYS_exit, vec![]),
        ("exit_group", libc::SYS_exit_group, vec![]),
    ];
    #[cfg(target_arch = "x86_64")]
    list.extend([
        // x86_64 also has the older entry points glibc may use.
        ("epoll_wait", libc::SYS_epoll_wait, vec![]),
        ("poll", libc::SYS_poll, vec![]),
    ]);
    list
}

/// mmap/mprotect allowed only when PROT_EXEC is not requested.
fn no_exec_rule(arg: u8) -> SeccompRule {
    rule(arg, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0)
}

/// ioctl allowed only for this request.
fn ioctl_rule(request: u64) -> SeccompRule {
    rule(1, SeccompCmpOp::Eq, request)
}

fn rule(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompRule {
    // Both constructors only fail for an argument index > 5 or an empty
    // condition list, which these fixed call sites never produce.
    let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value);
    match cond.and_then(|c| SeccompRule::new(vec![c])) {
        Ok(r) => r,
        Err(e) => unreachable!("static seccomp rule is valid: {e}"),
    }
}

/// Builds the worker's seccomp program.
pub fn build_filter() -> Result<BpfProgram, SandboxError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = allowed_syscalls()
        .into_iter()
        .map(|(_, nr, rules)| (nr, rules))
        .collect();
    #[cfg(target_arch = "x86_64")]
    let arch = TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    let arch = TargetArch::aarch64;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| SandboxError::SeccompBuild(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| SandboxError::SeccompBuild(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_compiles_and_lists_no_network_syscalls() {
        build_filter().expect("filter builds");
        let names: Vec<&str> = allowed_syscalls().iter().map(|(n, _, _)| *n).collect();
        for forbidden in [
            "socket", "connect", "bind", "execve", "clone", "ptrace", "openat", "mount",
        ] {
            assert!(
                !names.contains(&forbidden),
                "{forbidden} must not be allowed"
            );
        }
        let nrs: std::collections::BTreeSet<i64> =
            allowed_syscalls().iter().map(|(_, nr, _)| *nr).collect();
        assert_eq!(nrs.len(), names.len(), "no syscall listed twice");
    }
}
