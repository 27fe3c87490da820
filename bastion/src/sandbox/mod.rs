//! The per-connection sandbox.
//!
//! Two halves:
//! - [`spawn_worker`] runs in the (multi-threaded, privileged) monitor. It
//!   creates the worker with `clone(2)` directly into fresh mount, pid, net,
//!   ipc, uts and cgroup namespaces and immediately `execve`s `/proc/self/exe`
//!   in worker mode. Between clone and exec the child only makes
//!   async-signal-safe system calls: no allocation, no locks, no Rust runtime.
//! - [`enter`] runs in the worker, still single-threaded and before any
//!   untrusted byte is read, and confines it step by step (see the function;
//!   `docs/SECURITY.md` lists the same steps in the same order).
//!
//! This is the only module with `unsafe` code besides the fd passing in `ipc`.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{chdir, pivot_root, setgroups, sethostname, setresgid, setresuid, Gid, Uid};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The fd numbers a worker finds its sockets on.
pub const CLIENT_FD: RawFd = 3;
pub const CONTROL_FD: RawFd = 4;

/// Fds the child still needs while it sets up `CLIENT_FD` and `CONTROL_FD`
/// (the sockets, the worker binary) are moved to this number or above first,
/// so the `dup2` onto those two can never clobber them.
const ABOVE_WORKER_FDS: RawFd = 10;

/// Each sandbox step has its own error, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("preparing the worker's file descriptors: {0}")]
    PrepareFds(#[source] nix::Error),
    #[error("clone(2) of the worker into new namespaces failed: {0}")]
    Clone(#[source] std::io::Error),
    #[error("pidfd_open for worker {pid}: {source}")]
    Pidfd { pid: i32, source: std::io::Error },
    #[error("making the mount tree private: {0}")]
    MountPrivate(#[source] nix::Error),
    #[error("mounting the empty root on {path}: {source}")]
    MountRoot { path: String, source: nix::Error },
    #[error("pivot_root into the empty root: {0}")]
    PivotRoot(#[source] nix::Error),
    #[error("detaching the host's root: {0}")]
    DetachOldRoot(#[source] nix::Error),
    #[error("remounting the empty root read-only: {0}")]
    RemountRoot(#[source] nix::Error),
    #[error("setting the hostname: {0}")]
    Hostname(#[source] nix::Error),
    #[error("setting rlimit {what}: {source}")]
    Rlimit {
        what: &'static str,
        source: nix::Error,
    },
    #[error("dropping supplementary groups and setting gid {gid}: {source}")]
    SetGid { gid: u32, source: nix::Error },
    #[error("dropping the capability bounding set: {0}")]
    Bounding(#[source] caps::errors::CapsError),
    #[error("setting uid {uid}: {source}")]
    SetUid { uid: u32, source: nix::Error },
    #[error("clearing capabilities: {0}")]
    ClearCaps(#[source] caps::errors::CapsError),
    #[error("capabilities remain after dropping privileges: {0}")]
    CapsRemain(String),
    #[error("prctl({what}): {source}")]
    Prctl {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("building the seccomp filter: {0}")]
    SeccompBuild(String),
    #[error("installing the seccomp filter: {0}")]
    SeccompApply(#[source] seccompiler::Error),
}

/// The empty directory under `sandbox.runtime_dir` that workers mount their root on.
pub fn root_mount_point(runtime_dir: &Path) -> std::path::PathBuf {
    runtime_dir.join("root")
}

/// The client socket and the control socket a worker inherits on fds 3 and 4.
pub fn inherited_fds() -> (OwnedFd, OwnedFd) {
    // SAFETY: `spawn_worker` placed exactly these two fds at these numbers
    // for the worker, which adopts each once, at start.
    unsafe {
        (
            OwnedFd::from_raw_fd(CLIENT_FD),
            OwnedFd::from_raw_fd(CONTROL_FD),
        )
    }
}

/// A worker process the monitor started.
pub struct Spawned {
    pub pid: i32,
    /// Becomes readable when the worker exits (pidfd_open(2)).
    pub pidfd: OwnedFd,
}

/// Starts `exe` (normally `/proc/self/exe`) with `argv` as a worker process.
///
/// The worker finds `client` on fd 3 and `control` on fd 4, `/dev/null` on
/// stdin, the monitor's stderr on both stdout and stderr (stdout may carry the
/// audit stream, which a worker must never write to), an empty environment,
/// and dies with the monitor (PR_SET_PDEATHSIG). When `isolate` is true it
/// starts in fresh mount, pid, net, ipc, uts and cgroup namespaces.
pub fn spawn_worker(
    exe: &CStr,
    argv: &[CString],
    client: &OwnedFd,
    control: &OwnedFd,
    isolate: bool,
) -> Result<Spawned, SandboxError> {
    use nix::fcntl::{fcntl, FcntlArg};
    // Move both fds above the target numbers first, so dup2 onto 3 and 4
    // can never clobber one with the other. They stay CLOEXEC here; dup2 in
    // the child clears the flag on the copies only.
    let client_hi = fcntl(client, FcntlArg::F_DUPFD_CLOEXEC(ABOVE_WORKER_FDS))
        .map_err(SandboxError::PrepareFds)?;
    // SAFETY: F_DUPFD_CLOEXEC returned a fresh fd that nothing else owns.
    let client_hi = unsafe { OwnedFd::from_raw_fd(client_hi) };
    let control_hi = fcntl(control, FcntlArg::F_DUPFD_CLOEXEC(ABOVE_WORKER_FDS))
        .map_err(SandboxError::PrepareFds)?;
    // SAFETY: as above.
    let control_hi = unsafe { OwnedFd::from_raw_fd(control_hi) };
    let devnull = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(SandboxError::PrepareFds)?;

    // Everything the child touches is prepared before clone: no allocation after it.
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let (c_fd, k_fd, n_fd) = (
        client_hi.as_raw_fd(),
        control_hi.as_raw_fd(),
        devnull.as_raw_fd(),
    );

    let mut flags = libc::SIGCHLD as libc::c_ulong;
    if isolate {
        flags |= (libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP) as libc::c_ulong;
    }
    // SAFETY: a fork-like clone (no CLONE_VM, no new stack: the child gets a
    // copy-on-write copy of this thread's stack). In the child we only call
    // async-signal-safe libc wrappers over prepared, immutable data, then
    // execve or _exit; we never return into Rust code that might take a lock
    // another (now absent) thread held.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid == 0 {
        // SAFETY: child side, see above. Each call is a plain system call.
        unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            if libc::dup2(c_fd, CLIENT_FD) < 0
                || libc::dup2(k_fd, CONTROL_FD) < 0
                || libc::dup2(n_fd, 0) < 0
                || libc::dup2(2, 1) < 0
            {
                libc::_exit(126);
            }
            libc::execve(exe.as_ptr(), argv_ptrs.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    if pid < 0 {
        return Err(SandboxError::Clone(std::io::Error::last_os_error()));
    }
    let pid = pid as i32;
    // The child is ours to reap, so its pid cannot be reused before we
    // waitpid(): pidfd_open cannot race with pid reuse here.
    // SAFETY: plain system call with integer arguments.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: plain system calls on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(SandboxError::Pidfd { pid, source: err });
    }
    // SAFETY: pidfd_open returned a new fd we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    Ok(Spawned { pid, pidfd })
}

/// Confines the calling worker process. Called once, single-threaded, after
/// the worker has read its init message and before it reads a byte from the
/// client. The order follows youki and firecracker's jailer: filesystem first
/// (needs privileges), then limits, then identity, then capabilities, then
/// no_new_privs, and the seccomp filter last, by the caller, right before
/// the untrusted work starts (see [`apply_seccomp`]).
pub fn enter(uid: u32, memory_limit: u64, root_dir: &Path) -> Result<(), SandboxError> {
    // 1. Stop mount events propagating between our new mount namespace and
    //    the host's, in both directions, before changing anything.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(SandboxError::MountPrivate)?;

    // 2. An empty, tiny tmpfs becomes the new root: nothing of the host's
    //    filesystem (keys, config, credentials, /proc) is reachable.
    mount(
        Some("tmpfs"),
        root_dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k,nr_inodes=4,mode=0555"),
    )
    .map_err(|source| SandboxError::MountRoot {
        path: root_dir.display().to_string(),
        source,
    })?;

    // 3. pivot_root(".", ".") stacks the old root under the new one; detaching
    //    it leaves the worker with only the empty tmpfs.
    chdir(root_dir).map_err(|source| SandboxError::MountRoot {
        path: root_dir.display().to_string(),
        source,
    })?;
    pivot_root(".", ".").map_err(SandboxError::PivotRoot)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(SandboxError::DetachOldRoot)?;
    chdir("/").map_err(SandboxError::PivotRoot)?;

    // 4. And that root is read-only.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(SandboxError::RemountRoot)?;

    // 5. Our own uts namespace: a hostname that says what this is.
    sethostname("bastion-worker").map_err(SandboxError::Hostname)?;

    // 6. Resource limits, while we still may raise them: few files, no
    //    processes, bounded memory, no core dumps (they would hold key
    //    material and user traffic), a little lockable memory for key buffers.
    let limits: [(&'static str, Resource, u64); 5] = [
        ("NOFILE", Resource::RLIMIT_NOFILE, 1024),
        ("NPROC", Resource::RLIMIT_NPROC, 0),
        ("AS", Resource::RLIMIT_AS, memory_limit),
        ("CORE", Resource::RLIMIT_CORE, 0),
        ("MEMLOCK", Resource::RLIMIT_MEMLOCK, 16 << 20),
    ];
    for (what, resource, wanted) in limits {
        // Only ever lower a limit: never above what the monitor was given.
        let (_, hard) = nix::sys::resource::getrlimit(resource)
            .map_err(|source| SandboxError::Rlimit { what, source })?;
        let value = wanted.min(hard);
        setrlimit(resource, value, value)
            .map_err(|source| SandboxError::Rlimit { what, source })?;
    }

    // 7. Identity: no supplementary groups, then the worker's own gid.
    setgroups(&[]).map_err(|source| SandboxError::SetGid { gid: uid, source })?;
    let gid = Gid::from_raw(uid);
    setresgid(gid, gid, gid).map_err(|source| SandboxError::SetGid { gid: uid, source })?;

    // 8. Empty the capability bounding set while we still hold CAP_SETPCAP,
    //    so nothing can ever regain a capability.
    for cap in caps::all() {
        caps::drop(None, caps::CapSet::Bounding, cap).map_err(SandboxError::Bounding)?;
    }

    // 9. The worker's own uid, unique among live workers, so workers cannot
    //    signal or trace one another. Leaving uid 0 clears the permitted and
    //    effective sets.
    let id = Uid::from_raw(uid);
    setresuid(id, id, id).map_err(|source| SandboxError::SetUid { uid, source })?;

    // 10. Clear every remaining set explicitly and check nothing is left.
    for set in [
        caps::CapSet::Inheritable,
        caps::CapSet::Ambient,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(SandboxError::ClearCaps)?;
    }
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
        let left = caps::read(None, set).map_err(SandboxError::ClearCaps)?;
        if !left.is_empty() {
            return Err(SandboxError::CapsRemain(format!("{set:?}: {left:?}")));
        }
    }

    // 11. Not dumpable: no ptrace attach, no /proc/<pid>/mem from other
    //     processes of the same uid, no core dump.
    prctl("PR_SET_DUMPABLE", libc::PR_SET_DUMPABLE, 0)?;

    // 12. no_new_privs: execve can never grant privileges again (and it lets
    //     an unprivileged process install a seccomp filter).
    prctl("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS, 1)?;
    Ok(())
}

fn prctl(what: &'static str, option: libc::c_int, arg: libc::c_ulong) -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments only; no pointers are passed.
    let rc = unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(SandboxError::Prctl {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

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

/// Installs the filter on the calling (only) thread. Needs no_new_privs.
pub fn apply_seccomp(program: &BpfProgram) -> Result<(), SandboxError> {
    seccompiler::apply_filter(program).map_err(SandboxError::SeccompApply)
}

/// What `/proc/<pid>/status` and `/proc/<pid>/ns` say about a worker, read
/// by the monitor from outside: the audit trail records what the kernel
/// reports, not what the worker claims.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Observed {
    pub enabled: bool,
    pub uid: Option<u32>,
    pub no_new_privs: Option<bool>,
    pub seccomp: Option<u32>,
    pub cap_eff: Option<String>,
    pub netns_isolated: bool,
    pub mntns_isolated: bool,
    pub pidns_isolated: bool,
}

/// Reads the sandbox facts of process `pid` from /proc.
pub fn observe(pid: i32, enabled: bool) -> Observed {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let differs = |ns: &str| {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}"));
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}"));
        matches!((theirs, ours), (Ok(a), Ok(b)) if a != b)
    };
    Observed {
        enabled,
        uid: field("Uid:").and_then(|v| v.split_whitespace().nth(1)?.parse().ok()),
        no_new_privs: field("NoNewPrivs:").map(|v| v == "1"),
        seccomp: field("Seccomp:").and_then(|v| v.parse().ok()),
        cap_eff: field("CapEff:"),
        netns_isolated: differs("net"),
        mntns_isolated: differs("mnt"),
        pidns_isolated: differs("pid"),
    }
}

/// Can this process create the worker sandbox? (root, or at least the
/// capabilities clone and setuid need.) Checked at start so a bastion that
/// cannot sandbox refuses to run instead of running unconfined.
pub fn preflight() -> Result<(), String> {
    let need = [
        caps::Capability::CAP_SYS_ADMIN,
        caps::Capability::CAP_SETUID,
        caps::Capability::CAP_SETGID,
        caps::Capability::CAP_SETPCAP,
    ];
    let have = caps::read(None, caps::CapSet::Effective).map_err(|e| e.to_string())?;
    let missing: Vec<String> = need
        .iter()
        .filter(|c| !have.contains(c))
        .map(|c| c.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the worker sandbox needs {} (run the bastion as root, or in a container with these capabilities)",
            missing.join(", ")
        ));
    }
    // Namespaces can be disabled by the kernel or a container runtime's
    // seccomp profile: try one for real, in a throwaway child.
    // SAFETY: fork-like clone; the child only calls _exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::SIGCHLD | libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET)
                as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        // SAFETY: child side; plain exit.
        unsafe { libc::_exit(0) };
    }
    if pid < 0 {
        return Err(format!(
            "the kernel refused to create namespaces: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    Ok(())
}

/// The program workers run: `bastion-worker` next to this binary when it is
/// there (a small binary without the AWS SDK: less to map and relocate, so
/// less memory per session and a faster start), else this binary itself.
/// Opened once (`O_PATH`) and executed through `/proc/self/fd/N`, so that
/// replacing the files on disk (an upgrade) never mixes versions.
pub struct WorkerExe {
    /// What to pass to `execve`.
    pub path: std::ffi::CString,
    /// Keeps the opened binary alive.
    _file: Option<OwnedFd>,
    /// Which file it is, for the log.
    pub describe: String,
}

impl WorkerExe {
    pub fn locate() -> WorkerExe {
        let fallback = |why: &str| WorkerExe {
            path: std::ffi::CString::from(c"/proc/self/exe"),
            _file: None,
            describe: format!("this binary ({why})"),
        };
        let Some(path) = std::env::current_exe()
            .ok()
            .map(|p| p.with_file_name("bastion-worker"))
        else {
            return fallback("its own path is unknown");
        };
        let Ok(opened) = nix::fcntl::open(
            &path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) else {
            return fallback("bastion-worker not found next to it");
        };
        // The child execs /proc/self/fd/N after its dup2 onto CLIENT_FD and
        // CONTROL_FD: N must not be one of them.
        let Ok(fd) = nix::fcntl::fcntl(
            &opened,
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(ABOVE_WORKER_FDS),
        ) else {
            return fallback("bastion-worker could not be kept open");
        };
        drop(opened);
        // SAFETY: F_DUPFD_CLOEXEC returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A regular, executable file that only we (or root) could have written:
        // the worker handles every untrusted byte, so a file someone else can
        // replace is not run (the bastion binary itself is used instead).
        let me = nix::unistd::geteuid().as_raw();
        let usable = nix::sys::stat::fstat(&fd).is_ok_and(|st| {
            st.st_mode & libc::S_IFMT == libc::S_IFREG
                && st.st_mode & 0o111 != 0
                && st.st_mode & 0o022 == 0
                && (st.st_uid == 0 || st.st_uid == me)
        });
        if !usable {
            tracing::warn!(path = %path.display(), "not using bastion-worker: it must be a regular executable file owned by root (or us) and writable by no one else");
            return fallback("bastion-worker next to it is not safe to run");
        }
        match std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
            Ok(c) => WorkerExe {
                path: c,
                _file: Some(fd),
                describe: path.display().to_string(),
            },
            Err(_) => fallback("unreachable: no NUL in a number"),
        }
    }
}

/// Are we in a container (Docker, Podman)? Only used to word hints.
pub fn in_container() -> bool {
    Path::new("/.dockerenv").exists() || Path::new("/run/.containerenv").exists()
}

/// Names the calling thread (what `ps -L`/`top` show as comm).
pub fn set_process_name(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|b| *b != 0).take(15).collect();
    bytes.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes, which `bytes` is.
    unsafe { libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// Terminates this process by `sig` (default action, no core file), so a
/// parent sees the same fate the sandboxed child met.
pub fn die_by_signal(sig: i32) -> ! {
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    // SAFETY: restoring the default disposition of one signal and sending it
    // to ourselves; no memory is touched.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

/// Makes the forbidden or allowed system call for `bastion sandbox-selftest`.
pub fn selftest_syscall(forbidden: bool) -> i32 {
    if forbidden {
        // SAFETY: socket(2) with integer arguments; under the filter it never returns.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if fd >= 0 {
            // SAFETY: closing the fd we just got.
            unsafe { libc::close(fd) };
        }
        // Reaching this line means the filter did not stop us.
        3
    } else {
        // SAFETY: getpid has no arguments.
        unsafe { libc::getpid() };
        0
    }
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
