//! `bastion sandbox-selftest` and the trial worker `serve` runs before it accepts anything.

use super::*;

/// `bastion sandbox-selftest`: a real worker, through the real spawn path and
/// sandbox, that makes one system call; its fate becomes ours.
pub(super) fn selftest(forbidden: bool) -> ExitCode {
    let run = || -> Result<(i32, Option<i32>), String> {
        sandbox::preflight()?;
        let root = sandbox::root_mount_point(Path::new(config::DEFAULT_RUNTIME_DIR));
        std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
        trial_worker(
            &sandbox::WorkerExe::locate(),
            &root,
            1_999_999_999,
            1 << 30,
            forbidden,
        )
    };
    match run() {
        Ok((_, Some(sig))) => {
            eprintln!(
                "sandboxed worker was killed by signal {sig}{}",
                if sig == libc::SIGSYS {
                    " (SIGSYS: seccomp)"
                } else {
                    ""
                }
            );
            sandbox::die_by_signal(sig)
        }
        Ok((code, None)) => {
            eprintln!("sandboxed worker exited with status {code}");
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        Err(e) => {
            print_error(&format!("sandbox self-test could not run: {e}"), None);
            ExitCode::from(1)
        }
    }
}

/// What to do when the sandbox cannot be built, worded for where we run.
pub(super) fn sandbox_hint() -> String {
    let unconfined = "or, knowing that every connection then runs unconfined, set sandbox.enabled = false (BASTION_SANDBOX__ENABLED=false or --no-sandbox)";
    if sandbox::in_container() {
        format!(
            "in a container, the bastion (not its workers, which keep nothing) needs: \
             --cap-add SYS_ADMIN --security-opt seccomp=unconfined (Docker's default seccomp profile refuses pivot_root) \
             and, where AppArmor is enabled, --security-opt apparmor=unconfined (docker-default refuses mount); \
             see \"Privileges\" in the README; {unconfined}"
        )
    } else {
        format!("run the bastion as root; {unconfined}")
    }
}

/// One real worker through the real spawn path and sandbox, at `root`, making
/// one system call (allowed or `forbidden`): its exit status, or the signal
/// that killed it.
pub(super) fn trial_worker(
    exe: &sandbox::WorkerExe,
    root: &Path,
    uid: u32,
    memory_limit: u64,
    forbidden: bool,
) -> Result<(i32, Option<i32>), String> {
    let (ours, theirs) = ipc::pair().map_err(|e| e.to_string())?;
    let (client, _keep) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let client: std::os::fd::OwnedFd = client.into();
    let argv = [
        c"bastion-worker".to_owned(),
        c"worker".to_owned(),
        c"selftest".to_owned(),
    ];
    let spawned = sandbox::spawn_worker(&exe.path, &argv, &client, &theirs, true)
        .map_err(|e| e.to_string())?;
    drop(theirs);
    let init = WorkerInit {
        sid: "selftest".into(),
        peer: "-".into(),
        host: ipc::HostIdentity::default(),
        sandbox: Some(ipc::SandboxPlan {
            uid,
            memory_limit,
            root_dir: root.display().to_string(),
        }),
        // Its errors go to our stderr, formatted as ours are.
        log_json: !std::io::IsTerminal::is_terminal(&std::io::stderr()),
        log_filter: "warn".into(),
        selftest_forbidden: Some(forbidden),
        refuse: None,
    };
    ipc::send_blocking(&ours, &ToWorker::Init(init)).map_err(|e| e.to_string())?;
    match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(spawned.pid), None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => Ok((code, None)),
        Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => Ok((0, Some(sig as i32))),
        other => Err(format!("unexpected wait status {other:?}")),
    }
}
