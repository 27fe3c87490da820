//! The monitor's half of the sandbox: starting a worker with `clone(2)`
//! straight into new namespaces and `execve`, its inherited fds, the binary
//! it runs, and the check that this process can do all that at all.
//!
//! Between clone and exec the child only makes async-signal-safe system
//! calls on data prepared before the clone: no allocation, no locks, no Rust
//! runtime (the monitor is multi-threaded).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::SandboxError;

/// The fd a worker finds the client's TCP socket on.
pub const CLIENT_FD: RawFd = 3;
/// The fd a worker finds its control socket to the monitor on.
pub const CONTROL_FD: RawFd = 4;

/// Fds the child still needs while it sets up `CLIENT_FD` and `CONTROL_FD`
/// (the sockets, the worker binary) are moved to this number or above first,
/// so the `dup2` onto those two can never clobber them.
const ABOVE_WORKER_FDS: RawFd = 10;

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
    /// Its pid, in the monitor's pid namespace.
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
    /// Finds and opens the worker binary (see [`WorkerExe`]); never fails:
    /// falls back to this binary, saying why in `describe`.
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
