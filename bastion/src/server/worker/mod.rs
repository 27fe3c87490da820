//! The worker: one per TCP connection, `bastion` re-executed by the monitor.
//!
//! It speaks SSH (russh) to one client inside the sandbox and decides
//! nothing itself: every authentication and every onward connection is a
//! question to the monitor over the control socket. Onward sockets arrive
//! connected, by fd; the worker only pumps bytes.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::ipc::{self, ToMonitor, ToWorker, WorkerInit};
use crate::sandbox::{self, LinuxSys};

mod control;
mod handler;
mod relay;
mod ssh_config;

use control::Control;
use handler::WorkerHandler;
use ssh_config::ssh_config;

/// Shown to anyone who asks the bastion itself for a shell or a command.
pub const NO_SHELL: &str = "This bastion does not offer a shell. Use it as a jump host: ssh -J <you>@<this bastion> <target>\r\n";

/// Errors that end a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
    #[error(transparent)]
    Ipc(#[from] ipc::IpcError),
    #[error("host key: {0}")]
    HostKey(String),
    #[error("sandbox: {0}")]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("expected an init message from the monitor, got {0}")]
    Protocol(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Entry point of `bastion worker` (hidden): never returns normally.
pub fn main() -> std::process::ExitCode {
    let (client, control) = sandbox::inherited_fds();
    match run_worker(client, control) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            std::process::ExitCode::from(1)
        }
    }
}

fn run_worker(client: OwnedFd, control: OwnedFd) -> Result<u8, WorkerError> {
    let init = match ipc::recv_blocking::<ToWorker>(&control)? {
        ToWorker::Init(init) => init,
        other => return Err(WorkerError::Protocol(format!("{other:?}"))),
    };
    crate::obs::logging::init_worker(&init.log_filter, init.log_json);
    sandbox::set_process_name("bastion-worker");

    // Parse host keys before the sandbox: pure CPU, but keeps the sandboxed
    // part of start-up small.
    let mut keys = Vec::with_capacity(init.host.keys.len());
    for k in &init.host.keys {
        keys.push(
            russh::keys::decode_secret_key(&k.0, None)
                .map_err(|e| WorkerError::HostKey(e.to_string()))?,
        );
    }
    let mut certificates = Vec::with_capacity(init.host.certificates.len());
    for c in &init.host.certificates {
        certificates.push(
            russh::keys::Certificate::from_openssh(c)
                .map_err(|e| WorkerError::HostKey(e.to_string()))?,
        );
    }

    // The real system calls, chosen here and only here.
    let mut sys = LinuxSys;
    let entered = match &init.sandbox {
        Some(plan) => Some(sandbox::enter(
            &mut sys,
            plan.uid,
            plan.memory_limit,
            std::path::Path::new(&plan.root_dir),
        )?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    if let Some(entered) = entered {
        let program = sandbox::build_filter()?;
        sandbox::apply_seccomp(&mut sys, entered, &program)?;
    }
    if let Some(forbidden) = init.selftest_forbidden {
        return Ok(sandbox::selftest_syscall(forbidden) as u8);
    }
    // One worker process serves exactly one session: every line it logs
    // belongs to it, so the span is entered for the whole run (in sync code,
    // around the runtime, not across an await).
    let span = tracing::info_span!("session", sid = %init.sid, peer = %init.peer);
    let _enter = span.enter();
    runtime.block_on(serve(client, control, init, keys, certificates))?;
    Ok(0)
}

/// Speaks SSH with the client on `client`, asking the monitor on `control`
/// for every decision, until the session ends and its relays have reported.
async fn serve(
    client: OwnedFd,
    control: OwnedFd,
    init: WorkerInit,
    keys: Vec<russh::keys::PrivateKey>,
    certificates: Vec<russh::keys::Certificate>,
) -> Result<(), WorkerError> {
    let (relays_tx, mut relays_rx) = tokio::sync::mpsc::channel::<()>(1);
    let ctl = Arc::new(Control::new(ipc::Channel::new(control)?, relays_tx));
    ctl.tell(ToMonitor::Ready).await;
    tokio::spawn(ctl.clone().dispatch());

    let stream = std::net::TcpStream::from(client);
    stream.set_nonblocking(true)?;
    let stream = tokio::net::TcpStream::from_std(stream)?;
    stream.set_nodelay(true)?;

    let handler = WorkerHandler {
        ctl: ctl.clone(),
        refuse: init.refuse.clone(),
    };
    let running = russh::server::run_stream(
        Arc::new(ssh_config(keys, certificates, &init.host.ciphers)),
        stream,
        handler,
    )
    .await?;
    ctl.set_handle(running.handle());
    let result = match running.await {
        Ok(()) => Ok(()),
        // A client that goes away mid-session is not the worker's failure.
        Err(WorkerError::Ssh(e)) => {
            tracing::debug!(error = %e, "session ended");
            Ok(())
        }
        Err(e) => Err(e),
    };
    // Let open relays wind down and report their byte counts to the
    // monitor (for the audit trail), but not forever.
    ctl.no_more_relays();
    let _ = tokio::time::timeout(Duration::from_secs(5), relays_rx.recv()).await;
    result
}
