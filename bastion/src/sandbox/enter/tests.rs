//! The confinement sequence against the recording fake: the exact calls in
//! the exact order, and what a failure at each of them does.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::resource::Resource;

use super::super::fake::{Call, RecordingSys};
use super::super::{build_filter, SandboxError};
use super::{apply_seccomp, enter};

const UID: u32 = 2_000_123;
const MEMORY: u64 = 1 << 30;
const ROOT_DIR: &str = "/run/bastion/root";

/// The whole sequence as the worker runs it: `enter`, then seccomp.
fn run(sys: &mut RecordingSys) -> Result<(), SandboxError> {
    let entered = enter(sys, UID, MEMORY, Path::new(ROOT_DIR))?;
    let program = build_filter()?;
    apply_seccomp(sys, entered, &program)
}

fn completed() -> RecordingSys {
    let mut sys = RecordingSys::new();
    run(&mut sys).expect("every call succeeds on the fake");
    sys
}

fn mount(source: Option<&str>, target: &str, flags: MsFlags, data: Option<&str>) -> Call {
    Call::Mount {
        source: source.map(str::to_string),
        target: PathBuf::from(target),
        fstype: source.map(str::to_string),
        flags,
        data: data.map(str::to_string),
    }
}

fn rlimit(resource: Resource, value: u64) -> [Call; 2] {
    [
        Call::GetRlimit(resource),
        Call::SetRlimit(resource, value, value),
    ]
}

#[test]
fn exact_calls_in_order() {
    let sys = completed();
    let program_len = build_filter().expect("filter builds").len();
    let mut expected = vec![
        mount(None, "/", MsFlags::MS_REC | MsFlags::MS_PRIVATE, None),
        mount(
            Some("tmpfs"),
            ROOT_DIR,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4k,nr_inodes=4,mode=0555"),
        ),
        Call::Chdir(ROOT_DIR.into()),
        Call::PivotRoot(".".into(), ".".into()),
        Call::Umount2(".".into(), MntFlags::MNT_DETACH),
        Call::Chdir("/".into()),
        mount(
            None,
            "/",
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None,
        ),
        Call::SetHostname("bastion-worker".into()),
    ];
    expected.extend(rlimit(Resource::RLIMIT_NOFILE, 1024));
    expected.extend(rlimit(Resource::RLIMIT_NPROC, 0));
    expected.extend(rlimit(Resource::RLIMIT_AS, MEMORY));
    expected.extend(rlimit(Resource::RLIMIT_CORE, 0));
    expected.extend(rlimit(Resource::RLIMIT_MEMLOCK, 16 << 20));
    expected.extend([Call::SetGroups(vec![]), Call::SetResGid(UID, UID, UID)]);
    // The bounding set is dropped one capability at a time, in whatever
    // order caps::all() yields them: checked as a block below.
    expected.push(Call::DropBounding(caps::Capability::CAP_SETPCAP));
    expected.extend([
        Call::SetResUid(UID, UID, UID),
        Call::ClearCaps("Inheritable".into()),
        Call::ClearCaps("Ambient".into()),
        Call::ClearCaps("Effective".into()),
        Call::ClearCaps("Permitted".into()),
        Call::ReadCaps("Effective".into()),
        Call::ReadCaps("Permitted".into()),
        Call::Prctl(libc::PR_SET_DUMPABLE, 0),
        Call::Prctl(libc::PR_SET_NO_NEW_PRIVS, 1),
        Call::ApplySeccomp(program_len),
    ]);

    let first_drop = sys
        .calls
        .iter()
        .position(|c| matches!(c, Call::DropBounding(_)))
        .expect("the bounding set is dropped");
    let dropped: Vec<caps::Capability> = sys
        .calls
        .iter()
        .skip(first_drop)
        .map_while(|c| match c {
            Call::DropBounding(cap) => Some(*cap),
            _ => None,
        })
        .collect();
    let all = caps::all();
    assert_eq!(dropped.len(), all.len(), "each capability dropped once");
    assert!(dropped.iter().all(|c| all.contains(c)));

    let mut seen = sys.calls.clone();
    seen.splice(
        first_drop..first_drop + dropped.len(),
        [Call::DropBounding(caps::Capability::CAP_SETPCAP)],
    );
    assert_eq!(seen, expected);
}

#[test]
fn order_rules() {
    let sys = completed();
    let names = sys.names();
    let first = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("{name} was never called: {names:?}"))
    };
    let last = |name: &str| {
        names
            .iter()
            .rposition(|n| *n == name)
            .unwrap_or_else(|| panic!("{name} was never called: {names:?}"))
    };
    assert_eq!(first("mount"), 0, "mount propagation is stopped first");
    // (earlier, later, why): every call of the first before any of the second.
    let rules = [
        ("pivot_root", "setresuid", "pivot_root needs CAP_SYS_ADMIN"),
        ("umount2", "setresuid", "detaching needs CAP_SYS_ADMIN"),
        (
            "mount",
            "setresuid",
            "the read-only remount needs CAP_SYS_ADMIN",
        ),
        (
            "sethostname",
            "setresuid",
            "sethostname needs CAP_SYS_ADMIN",
        ),
        (
            "setrlimit",
            "setresuid",
            "limits are set while they may be raised",
        ),
        ("setgroups", "setresgid", "groups go with the gid"),
        ("setresgid", "setresuid", "setresgid needs CAP_SETGID"),
        ("drop_bounding", "setresuid", "dropping needs CAP_SETPCAP"),
        (
            "setresuid",
            "clear_caps",
            "the sets are cleared after the uid change",
        ),
        ("clear_caps", "read_caps", "what is checked is what is left"),
        (
            "read_caps",
            "prctl(PR_SET_DUMPABLE)",
            "fail closed before going on",
        ),
        (
            "prctl(PR_SET_DUMPABLE)",
            "prctl(PR_SET_NO_NEW_PRIVS)",
            "the documented order",
        ),
        (
            "prctl(PR_SET_NO_NEW_PRIVS)",
            "seccomp",
            "seccomp needs no_new_privs",
        ),
    ];
    for (earlier, later, why) in rules {
        assert!(
            last(earlier) < first(later),
            "{earlier} must come before {later}: {why}"
        );
    }
    assert_eq!(last("seccomp"), names.len() - 1, "seccomp is the last step");
    assert_eq!(first("seccomp"), last("seccomp"), "one filter, once");
}

/// The error a failure of `call` must be reported as: the step it belongs to.
fn step_error(call: &Call) -> String {
    let root = Path::new(ROOT_DIR);
    match call {
        Call::Mount { flags, .. } if flags.contains(MsFlags::MS_PRIVATE) => {
            "making the mount tree private: ".into()
        }
        Call::Mount { flags, .. } if flags.contains(MsFlags::MS_REMOUNT) => {
            "remounting the empty root read-only: ".into()
        }
        Call::Mount { .. } => format!("mounting the empty root on {ROOT_DIR}: "),
        Call::Chdir(p) if p == root => format!("mounting the empty root on {ROOT_DIR}: "),
        Call::Chdir(_) | Call::PivotRoot(..) => "pivot_root into the empty root: ".into(),
        Call::Umount2(..) => "detaching the host's root: ".into(),
        Call::SetHostname(_) => "setting the hostname: ".into(),
        Call::GetRlimit(r) | Call::SetRlimit(r, ..) => {
            let what = match r {
                Resource::RLIMIT_NOFILE => "NOFILE",
                Resource::RLIMIT_NPROC => "NPROC",
                Resource::RLIMIT_AS => "AS",
                Resource::RLIMIT_CORE => "CORE",
                Resource::RLIMIT_MEMLOCK => "MEMLOCK",
                other => panic!("unexpected rlimit {other:?}"),
            };
            format!("setting rlimit {what}: ")
        }
        Call::SetGroups(_) | Call::SetResGid(..) => {
            format!("dropping supplementary groups and setting gid {UID}: ")
        }
        Call::DropBounding(_) => "dropping the capability bounding set: ".into(),
        Call::SetResUid(..) => format!("setting uid {UID}: "),
        Call::ClearCaps(_) | Call::ReadCaps(_) => "clearing capabilities: ".into(),
        Call::Prctl(..) => format!("{}: ", call.name()),
        Call::ApplySeccomp(_) => "installing the seccomp filter: ".into(),
    }
}

#[test]
fn a_failed_step_stops_the_sequence_and_is_named() {
    let total = completed().calls.len();
    for n in 0..total {
        let mut sys = RecordingSys::failing_at(n);
        let err = match run(&mut sys) {
            Err(e) => e,
            Ok(()) => panic!("a failure at call {n} went unnoticed"),
        };
        assert_eq!(
            sys.calls.len(),
            n + 1,
            "nothing runs after the failed call {n} ({:?}): {:?}",
            sys.calls[n],
            &sys.calls[n..]
        );
        let want = step_error(&sys.calls[n]);
        let got = err.to_string();
        assert!(
            got.starts_with(&want),
            "call {n} ({:?}) failed as {got:?}, expected {want:?}",
            sys.calls[n]
        );
    }
}

#[test]
fn capabilities_left_over_fail_closed() {
    let mut sys = RecordingSys::new();
    sys.caps_left.insert(caps::Capability::CAP_NET_RAW);
    let err = run(&mut sys).expect_err("a capability is left");
    assert!(matches!(err, SandboxError::CapsRemain(_)), "{err}");
    assert!(err.to_string().contains("CAP_NET_RAW"), "{err}");
    assert_eq!(sys.calls.last(), Some(&Call::ReadCaps("Effective".into())));
}

#[test]
fn limits_are_only_ever_lowered() {
    let mut sys = RecordingSys::new();
    sys.hard_limit = 512;
    run(&mut sys).expect("every call succeeds on the fake");
    let set: Vec<(Resource, u64)> = sys
        .calls
        .iter()
        .filter_map(|c| match c {
            Call::SetRlimit(r, soft, hard) => {
                assert_eq!(soft, hard, "{r:?}");
                Some((*r, *soft))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        set,
        vec![
            (Resource::RLIMIT_NOFILE, 512),
            (Resource::RLIMIT_NPROC, 0),
            (Resource::RLIMIT_AS, 512),
            (Resource::RLIMIT_CORE, 0),
            (Resource::RLIMIT_MEMLOCK, 512),
        ]
    );
}
