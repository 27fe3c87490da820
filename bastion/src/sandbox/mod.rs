//! The per-connection sandbox.
//!
//! Two halves:
//! - [`spawn_worker`] (`spawn.rs`) runs in the (multi-threaded, privileged)
//!   monitor. It creates the worker with `clone(2)` directly into fresh
//!   mount, pid, net, ipc, uts and cgroup namespaces and immediately
//!   `execve`s the worker binary ([`WorkerExe`]). Between clone and exec the
//!   child only makes async-signal-safe system calls: no allocation, no
//!   locks, no Rust runtime.
//! - [`enter`] (`enter.rs`) runs in the worker, still single-threaded and
//!   before any untrusted byte is read, and confines it step by step;
//!   [`apply_seccomp`] installs the filter of `seccomp.rs` as the last step.
//!   `docs/SECURITY.md` lists the same steps in the same order.
//!
//! The system calls of the confinement go through the [`Sys`] trait
//! (`sys.rs`): the worker passes [`LinuxSys`], the real calls; the unit tests
//! pass a recording fake (`fake.rs`) that checks the order of the steps and
//! what a failure at each of them does.
//!
//! This is the only module with `unsafe` code besides the fd passing in `ipc`.
#![allow(unsafe_code)]

use std::path::Path;

use nix::sys::resource::{setrlimit, Resource};

mod enter;
#[cfg(test)]
mod fake;
mod observe;
mod seccomp;
mod spawn;
mod sys;

pub use enter::{apply_seccomp, enter, Entered};
pub use observe::{observe, Observed};
pub use seccomp::build_filter;
pub use spawn::{
    inherited_fds, preflight, spawn_worker, Spawned, WorkerExe, CLIENT_FD, CONTROL_FD,
};
pub use sys::{LinuxSys, Sys};

/// Each sandbox step has its own error, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Spawning: duplicating the sockets above the worker's fd numbers, opening /dev/null.
    #[error("preparing the worker's file descriptors: {0}")]
    PrepareFds(#[source] nix::Error),
    /// Spawning: clone(2) itself.
    #[error("clone(2) of the worker into new namespaces failed: {0}")]
    Clone(#[source] std::io::Error),
    /// Spawning: the pidfd that tells the monitor the worker exited.
    #[error("pidfd_open for worker {pid}: {source}")]
    Pidfd { pid: i32, source: std::io::Error },
    /// Step 1: mount propagation.
    #[error("making the mount tree private: {0}")]
    MountPrivate(#[source] nix::Error),
    /// Step 2 (and the chdir of step 3): the empty tmpfs root.
    #[error("mounting the empty root on {path}: {source}")]
    MountRoot { path: String, source: nix::Error },
    /// Step 3: pivot_root and the chdir after it.
    #[error("pivot_root into the empty root: {0}")]
    PivotRoot(#[source] nix::Error),
    /// Step 3: detaching the old root.
    #[error("detaching the host's root: {0}")]
    DetachOldRoot(#[source] nix::Error),
    /// Step 4: the read-only remount.
    #[error("remounting the empty root read-only: {0}")]
    RemountRoot(#[source] nix::Error),
    /// Step 5: the hostname.
    #[error("setting the hostname: {0}")]
    Hostname(#[source] nix::Error),
    /// Step 6: one resource limit.
    #[error("setting rlimit {what}: {source}")]
    Rlimit {
        what: &'static str,
        source: nix::Error,
    },
    /// Step 7: supplementary groups and gid.
    #[error("dropping supplementary groups and setting gid {gid}: {source}")]
    SetGid { gid: u32, source: nix::Error },
    /// Step 8: the capability bounding set.
    #[error("dropping the capability bounding set: {0}")]
    Bounding(#[source] caps::errors::CapsError),
    /// Step 9: the uid.
    #[error("setting uid {uid}: {source}")]
    SetUid { uid: u32, source: nix::Error },
    /// Step 10: clearing (or reading back) a capability set.
    #[error("clearing capabilities: {0}")]
    ClearCaps(#[source] caps::errors::CapsError),
    /// Step 10: a capability survived clearing (fail closed).
    #[error("capabilities remain after dropping privileges: {0}")]
    CapsRemain(String),
    /// Steps 11 and 12: not dumpable, no_new_privs.
    #[error("prctl({what}): {source}")]
    Prctl {
        what: &'static str,
        source: std::io::Error,
    },
    /// Step 13: compiling the filter.
    #[error("building the seccomp filter: {0}")]
    SeccompBuild(String),
    /// Step 13: installing the filter.
    #[error("installing the seccomp filter: {0}")]
    SeccompApply(#[source] seccompiler::Error),
}

/// The empty directory under `sandbox.runtime_dir` that workers mount their root on.
pub fn root_mount_point(runtime_dir: &Path) -> std::path::PathBuf {
    runtime_dir.join("root")
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
