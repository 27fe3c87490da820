//! A [`Sys`] that records every call with its arguments instead of making
//! it, and can be told to fail at the Nth call (test code only).

use std::path::{Path, PathBuf};

use caps::errors::CapsError;
use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::resource::Resource;
use nix::unistd::{Gid, Uid};
use seccompiler::BpfProgram;

use super::sys::Sys;

/// One recorded system call, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<String>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Chdir(PathBuf),
    PivotRoot(PathBuf, PathBuf),
    Umount2(PathBuf, MntFlags),
    SetHostname(String),
    GetRlimit(Resource),
    SetRlimit(Resource, u64, u64),
    SetGroups(Vec<u32>),
    SetResGid(u32, u32, u32),
    SetResUid(u32, u32, u32),
    DropBounding(Capability),
    /// The set, by name (`CapSet` has no `PartialEq`).
    ClearCaps(String),
    ReadCaps(String),
    Prctl(libc::c_int, libc::c_ulong),
    /// The number of BPF instructions installed.
    ApplySeccomp(usize),
}

impl Call {
    /// The system call's name, for order checks.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Mount { .. } => "mount",
            Call::Chdir(_) => "chdir",
            Call::PivotRoot(..) => "pivot_root",
            Call::Umount2(..) => "umount2",
            Call::SetHostname(_) => "sethostname",
            Call::GetRlimit(_) => "getrlimit",
            Call::SetRlimit(..) => "setrlimit",
            Call::SetGroups(_) => "setgroups",
            Call::SetResGid(..) => "setresgid",
            Call::SetResUid(..) => "setresuid",
            Call::DropBounding(_) => "drop_bounding",
            Call::ClearCaps(_) => "clear_caps",
            Call::ReadCaps(_) => "read_caps",
            Call::Prctl(libc::PR_SET_DUMPABLE, _) => "prctl(PR_SET_DUMPABLE)",
            Call::Prctl(libc::PR_SET_NO_NEW_PRIVS, _) => "prctl(PR_SET_NO_NEW_PRIVS)",
            Call::Prctl(..) => "prctl",
            Call::ApplySeccomp(_) => "seccomp",
        }
    }
}

/// Records calls; fails the one at index `fail_at` (counting from 0) with
/// EPERM, and answers reads with `hard_limit` and `caps_left`.
pub struct RecordingSys {
    pub calls: Vec<Call>,
    pub fail_at: Option<usize>,
    /// The hard limit getrlimit reports for every resource.
    pub hard_limit: u64,
    /// What read_caps reports as still held, for every set.
    pub caps_left: CapsHashSet,
}

impl RecordingSys {
    /// A fake on which every call succeeds.
    pub fn new() -> RecordingSys {
        RecordingSys {
            calls: Vec::new(),
            fail_at: None,
            hard_limit: libc::RLIM_INFINITY,
            caps_left: CapsHashSet::new(),
        }
    }

    /// A fake whose call number `n` (from 0) fails.
    pub fn failing_at(n: usize) -> RecordingSys {
        RecordingSys {
            fail_at: Some(n),
            ..RecordingSys::new()
        }
    }

    /// The names of the calls made so far.
    pub fn names(&self) -> Vec<&'static str> {
        self.calls.iter().map(Call::name).collect()
    }

    /// Records `call`; true when it is the one that must fail.
    fn record(&mut self, call: Call) -> bool {
        self.calls.push(call);
        self.fail_at == Some(self.calls.len() - 1)
    }

    fn nix(&mut self, call: Call) -> nix::Result<()> {
        if self.record(call) {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    fn caps(&mut self, call: Call) -> Result<(), CapsError> {
        if self.record(call) {
            return Err(CapsError::from("injected failure"));
        }
        Ok(())
    }
}

fn path(p: &Path) -> PathBuf {
    p.to_path_buf()
}

fn owned(s: Option<&str>) -> Option<String> {
    s.map(str::to_string)
}

fn eperm() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EPERM)
}

impl Sys for RecordingSys {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        self.nix(Call::Mount {
            source: owned(source),
            target: path(target),
            fstype: owned(fstype),
            flags,
            data: owned(data),
        })
    }

    fn chdir(&mut self, p: &Path) -> nix::Result<()> {
        self.nix(Call::Chdir(path(p)))
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        self.nix(Call::PivotRoot(path(new_root), path(put_old)))
    }

    fn umount2(&mut self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        self.nix(Call::Umount2(path(target), flags))
    }

    fn sethostname(&mut self, name: &str) -> nix::Result<()> {
        self.nix(Call::SetHostname(name.to_string()))
    }

    fn getrlimit(&mut self, resource: Resource) -> nix::Result<(u64, u64)> {
        self.nix(Call::GetRlimit(resource))?;
        Ok((self.hard_limit, self.hard_limit))
    }

    fn setrlimit(&mut self, resource: Resource, soft: u64, hard: u64) -> nix::Result<()> {
        self.nix(Call::SetRlimit(resource, soft, hard))
    }

    fn setgroups(&mut self, groups: &[Gid]) -> nix::Result<()> {
        self.nix(Call::SetGroups(groups.iter().map(|g| g.as_raw()).collect()))
    }

    fn setresgid(&mut self, real: Gid, effective: Gid, saved: Gid) -> nix::Result<()> {
        self.nix(Call::SetResGid(
            real.as_raw(),
            effective.as_raw(),
            saved.as_raw(),
        ))
    }

    fn setresuid(&mut self, real: Uid, effective: Uid, saved: Uid) -> nix::Result<()> {
        self.nix(Call::SetResUid(
            real.as_raw(),
            effective.as_raw(),
            saved.as_raw(),
        ))
    }

    fn drop_bounding(&mut self, cap: Capability) -> Result<(), CapsError> {
        self.caps(Call::DropBounding(cap))
    }

    fn clear_caps(&mut self, set: CapSet) -> Result<(), CapsError> {
        self.caps(Call::ClearCaps(format!("{set:?}")))
    }

    fn read_caps(&mut self, set: CapSet) -> Result<CapsHashSet, CapsError> {
        self.caps(Call::ReadCaps(format!("{set:?}")))?;
        Ok(self.caps_left.clone())
    }

    fn prctl(&mut self, option: libc::c_int, arg: libc::c_ulong) -> std::io::Result<()> {
        if self.record(Call::Prctl(option, arg)) {
            return Err(eperm());
        }
        Ok(())
    }

    fn apply_seccomp(&mut self, program: &BpfProgram) -> Result<(), seccompiler::Error> {
        if self.record(Call::ApplySeccomp(program.len())) {
            return Err(seccompiler::Error::Seccomp(eperm()));
        }
        Ok(())
    }
}
