//! The worker's confinement, as one linear list of steps (firecracker's
//! jailer `Env::run`): each step says why, and fails with its own
//! [`SandboxError`] variant. `docs/SECURITY.md` lists the same steps in the
//! same order.
//!
//! The order follows youki and firecracker's jailer: filesystem first
//! (needs privileges), then limits, then identity, then capabilities, then
//! no_new_privs ([`enter`]), and the seccomp filter last, by the caller,
//! right before the untrusted work starts ([`apply_seccomp`], which only
//! takes the [`Entered`] that `enter` returns).

use std::path::Path;

use caps::CapSet;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::resource::Resource;
use nix::unistd::{Gid, Uid};
use seccompiler::BpfProgram;

use super::sys::Sys;
use super::SandboxError;

/// Proof that [`enter`] completed: the seccomp filter may be installed now.
#[must_use = "the seccomp filter still has to be installed (apply_seccomp)"]
#[derive(Debug)]
pub struct Entered {
    _private: (),
}

/// Confines the calling worker process through `sys` (the real entry point
/// passes [`super::LinuxSys`]). Called once, single-threaded, after the
/// worker has read its init message and before it reads a byte from the
/// client. `uid` is the worker's own uid (and gid); `root_dir` the empty
/// directory its new root is mounted on. Stops at the first step that fails.
pub fn enter<S: Sys>(
    sys: &mut S,
    uid: u32,
    memory_limit: u64,
    root_dir: &Path,
) -> Result<Entered, SandboxError> {
    let root = Path::new("/");
    let here = Path::new(".");
    let mount_root = |source| SandboxError::MountRoot {
        path: root_dir.display().to_string(),
        source,
    };

    // 1. Stop mount events propagating between our new mount namespace and
    //    the host's, in both directions, before changing anything.
    sys.mount(
        None,
        root,
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(SandboxError::MountPrivate)?;

    // 2. An empty, tiny tmpfs becomes the new root: nothing of the host's
    //    filesystem (keys, config, credentials, /proc) is reachable.
    sys.mount(
        Some("tmpfs"),
        root_dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k,nr_inodes=4,mode=0555"),
    )
    .map_err(mount_root)?;

    // 3. pivot_root(".", ".") stacks the old root under the new one; detaching
    //    it leaves the worker with only the empty tmpfs.
    sys.chdir(root_dir).map_err(mount_root)?;
    sys.pivot_root(here, here)
        .map_err(SandboxError::PivotRoot)?;
    sys.umount2(here, MntFlags::MNT_DETACH)
        .map_err(SandboxError::DetachOldRoot)?;
    sys.chdir(root).map_err(SandboxError::PivotRoot)?;

    // 4. And that root is read-only.
    sys.mount(
        None,
        root,
        None,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None,
    )
    .map_err(SandboxError::RemountRoot)?;

    // 5. Our own uts namespace: a hostname that says what this is.
    sys.sethostname("bastion-worker")
        .map_err(SandboxError::Hostname)?;

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
        let (_, hard) = sys
            .getrlimit(resource)
            .map_err(|source| SandboxError::Rlimit { what, source })?;
        let value = wanted.min(hard);
        sys.setrlimit(resource, value, value)
            .map_err(|source| SandboxError::Rlimit { what, source })?;
    }

    // 7. Identity: no supplementary groups, then the worker's own gid.
    let set_gid = |source| SandboxError::SetGid { gid: uid, source };
    sys.setgroups(&[]).map_err(set_gid)?;
    let gid = Gid::from_raw(uid);
    sys.setresgid(gid, gid, gid).map_err(set_gid)?;

    // 8. Empty the capability bounding set while we still hold CAP_SETPCAP,
    //    so nothing can ever regain a capability.
    for cap in caps::all() {
        sys.drop_bounding(cap).map_err(SandboxError::Bounding)?;
    }

    // 9. The worker's own uid, unique among live workers, so workers cannot
    //    signal or trace one another. Leaving uid 0 clears the permitted and
    //    effective sets.
    let id = Uid::from_raw(uid);
    sys.setresuid(id, id, id)
        .map_err(|source| SandboxError::SetUid { uid, source })?;

    // 10. Clear every remaining set explicitly and check nothing is left.
    for set in [
        CapSet::Inheritable,
        CapSet::Ambient,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        sys.clear_caps(set).map_err(SandboxError::ClearCaps)?;
    }
    for set in [CapSet::Effective, CapSet::Permitted] {
        let left = sys.read_caps(set).map_err(SandboxError::ClearCaps)?;
        if !left.is_empty() {
            return Err(SandboxError::CapsRemain(format!("{set:?}: {left:?}")));
        }
    }

    // 11. Not dumpable: no ptrace attach, no /proc/<pid>/mem from other
    //     processes of the same uid, no core dump.
    prctl(sys, "PR_SET_DUMPABLE", libc::PR_SET_DUMPABLE, 0)?;

    // 12. no_new_privs: execve can never grant privileges again (and it lets
    //     an unprivileged process install a seccomp filter).
    prctl(sys, "PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS, 1)?;
    Ok(Entered { _private: () })
}

/// 13. The seccomp filter ([`super::build_filter`]), installed on the calling
///     (only) thread as the very last step, after [`enter`] (it needs
///     no_new_privs) and after the async runtime is built, right before the
///     SSH session starts.
pub fn apply_seccomp<S: Sys>(
    sys: &mut S,
    _entered: Entered,
    program: &BpfProgram,
) -> Result<(), SandboxError> {
    sys.apply_seccomp(program)
        .map_err(SandboxError::SeccompApply)
}

fn prctl<S: Sys>(
    sys: &mut S,
    what: &'static str,
    option: libc::c_int,
    arg: libc::c_ulong,
) -> Result<(), SandboxError> {
    sys.prctl(option, arg)
        .map_err(|source| SandboxError::Prctl { what, source })
}

#[cfg(test)]
mod tests;
