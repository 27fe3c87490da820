//! The system calls that confine a worker, behind one small trait (youki's
//! `Syscall` pattern): [`LinuxSys`] makes them for real, and the recording
//! fake of the unit tests (`sandbox/fake.rs`) writes them down instead, so
//! the order of the steps in [`super::enter`] can be tested without root.
//!
//! One method per system call, with the arguments the kernel sees; no
//! method decides anything (that is `enter`'s job), so a reviewer can check
//! [`LinuxSys`] line by line against the trait.

use std::path::Path;

use caps::errors::CapsError;
use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::resource::Resource;
use nix::unistd::{Gid, Uid};
use seccompiler::BpfProgram;

/// The system calls of the worker's confinement, one method each.
pub trait Sys {
    /// mount(2).
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// chdir(2).
    fn chdir(&mut self, path: &Path) -> nix::Result<()>;
    /// pivot_root(2).
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> nix::Result<()>;
    /// umount2(2).
    fn umount2(&mut self, target: &Path, flags: MntFlags) -> nix::Result<()>;
    /// sethostname(2).
    fn sethostname(&mut self, name: &str) -> nix::Result<()>;
    /// getrlimit(2): (soft, hard).
    fn getrlimit(&mut self, resource: Resource) -> nix::Result<(u64, u64)>;
    /// setrlimit(2).
    fn setrlimit(&mut self, resource: Resource, soft: u64, hard: u64) -> nix::Result<()>;
    /// setgroups(2).
    fn setgroups(&mut self, groups: &[Gid]) -> nix::Result<()>;
    /// setresgid(2).
    fn setresgid(&mut self, real: Gid, effective: Gid, saved: Gid) -> nix::Result<()>;
    /// setresuid(2).
    fn setresuid(&mut self, real: Uid, effective: Uid, saved: Uid) -> nix::Result<()>;
    /// Drops one capability from the bounding set (prctl(PR_CAPBSET_DROP)).
    fn drop_bounding(&mut self, cap: Capability) -> Result<(), CapsError>;
    /// Empties one capability set of the calling thread (capset(2), or
    /// prctl(PR_CAP_AMBIENT_CLEAR_ALL) for the ambient set).
    fn clear_caps(&mut self, set: CapSet) -> Result<(), CapsError>;
    /// Reads one capability set of the calling thread (capget(2)).
    fn read_caps(&mut self, set: CapSet) -> Result<CapsHashSet, CapsError>;
    /// prctl(2) with one integer argument.
    fn prctl(&mut self, option: libc::c_int, arg: libc::c_ulong) -> std::io::Result<()>;
    /// Installs a seccomp filter on the calling thread (seccomp(2)).
    fn apply_seccomp(&mut self, program: &BpfProgram) -> Result<(), seccompiler::Error>;
}

/// The real system calls, on nix, caps, seccompiler and libc.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinuxSys;

impl Sys for LinuxSys {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn chdir(&mut self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn umount2(&mut self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }

    fn sethostname(&mut self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }

    fn getrlimit(&mut self, resource: Resource) -> nix::Result<(u64, u64)> {
        nix::sys::resource::getrlimit(resource)
    }

    fn setrlimit(&mut self, resource: Resource, soft: u64, hard: u64) -> nix::Result<()> {
        nix::sys::resource::setrlimit(resource, soft, hard)
    }

    fn setgroups(&mut self, groups: &[Gid]) -> nix::Result<()> {
        nix::unistd::setgroups(groups)
    }

    fn setresgid(&mut self, real: Gid, effective: Gid, saved: Gid) -> nix::Result<()> {
        nix::unistd::setresgid(real, effective, saved)
    }

    fn setresuid(&mut self, real: Uid, effective: Uid, saved: Uid) -> nix::Result<()> {
        nix::unistd::setresuid(real, effective, saved)
    }

    fn drop_bounding(&mut self, cap: Capability) -> Result<(), CapsError> {
        caps::drop(None, CapSet::Bounding, cap)
    }

    fn clear_caps(&mut self, set: CapSet) -> Result<(), CapsError> {
        caps::clear(None, set)
    }

    fn read_caps(&mut self, set: CapSet) -> Result<CapsHashSet, CapsError> {
        caps::read(None, set)
    }

    fn prctl(&mut self, option: libc::c_int, arg: libc::c_ulong) -> std::io::Result<()> {
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
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn apply_seccomp(&mut self, program: &BpfProgram) -> Result<(), seccompiler::Error> {
        seccompiler::apply_filter(program)
    }
}
