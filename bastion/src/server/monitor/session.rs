//! One connection: its sandboxed worker started, its requests answered in the order the
//! protocol allows, and the worker reaped when it ends.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) async fn session(
    shared: Arc<Shared>,
    sid: String,
    socket: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    mut ticket: Ticket,
    mut phase: watch::Receiver<Phase>,
    _done: mpsc::Sender<()>,
) {
    let started = Instant::now();

    let Some((ctx, worker)) = start_worker(&shared, socket, &sid, peer, local, ticket.uid).await
    else {
        return;
    };
    let ctx = Arc::new(ctx);
    let pidfd = match ipc::watch_fd(worker.pidfd, tokio::io::Interest::READABLE) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the worker");
            kill(worker.pid);
            return;
        }
    };
    let grace = tokio::time::sleep(shared.config.limits.login_grace);
    tokio::pin!(grace);
    let mut kill_at: Option<Instant> = None;
    let mut end_reason = String::from("client disconnected");

    loop {
        let deadline = kill_at.map(tokio::time::Instant::from_std);
        tokio::select! {
            msg = ctx.chan.recv::<ToMonitor>() => match msg {
                Ok((msg, _)) => handle(&ctx, msg, worker.pid, &mut ticket).await,
                Err(ipc::IpcError::Closed) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "worker broke the control protocol; killing it");
                    end_reason = format!("worker killed: {e}");
                    kill(worker.pid);
                    break;
                }
            },
            _ = pidfd.readable() => {
                // The worker is gone, but what it sent last (a forward's byte
                // counts) may still be queued on the control socket.
                while let Ok(Ok((msg, _))) = tokio::time::timeout(Duration::from_millis(200), ctx.chan.recv::<ToMonitor>()).await {
                    handle(&ctx, msg, worker.pid, &mut ticket).await;
                }
                break;
            }
            _ = &mut grace, if ctx.identity.get().is_none() => {
                tracing::info!("login grace time expired; closing");
                end_reason = "login grace time expired".into();
                kill(worker.pid);
                break;
            }
            _ = reached(&mut phase, Phase::Closing), if kill_at.is_none() => {
                end_reason = "bastion shutting down".into();
                let _ = ctx.chan.send(&ToWorker::Shutdown { message: "bastion is shutting down; please reconnect".into() }, None).await;
                kill_at = Some(Instant::now() + Duration::from_secs(3));
            }
            _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } }, if deadline.is_some() => {
                kill(worker.pid);
                break;
            }
        }
    }

    let status = reap(&pidfd, worker.pid).await;
    if let Some(signal) = status.signal {
        end_reason = match signal {
            libc::SIGSYS => "worker killed by the seccomp filter (forbidden system call)".into(),
            libc::SIGKILL if end_reason == "client disconnected" => "worker killed".into(),
            libc::SIGKILL => end_reason,
            s => format!("worker killed by signal {s}"),
        };
        if signal == libc::SIGSYS {
            tracing::error!("worker made a forbidden system call and was killed");
        }
    }
    if ctx.identity.get().is_some() {
        let leftovers: Vec<(u64, OpenForward)> = ctx
            .forwards
            .lock()
            .map(|mut f| f.drain().collect())
            .unwrap_or_default();
        for (_, fwd) in leftovers {
            let ev = ctx.event(AuditEvent::PortEnd(ev::PortEnd {
                who: ctx.who(),
                target: fwd.target,
                addr: fwd.addr.to_string(),
                error: Some("the session ended before the forward reported its end".into()),
                ..Default::default()
            }));
            let _ = shared.audit.write(ev, false).await;
        }
        let ev = ctx.event(AuditEvent::SessionEnd(ev::SessionEnd {
            who: ctx.who(),
            duration_ms: started.elapsed().as_millis() as u64,
            reason: end_reason.clone(),
            exit_code: status.code,
            signal: status.signal,
        }));
        if let Err(e) = shared.audit.write(ev, true).await {
            tracing::error!(error = %e, "could not write session.end");
        }
    }
    shared.audit.end_session(&sid);
    tracing::info!(reason = %end_reason, duration_ms = started.elapsed().as_millis() as u64, "connection closed");
}

/// Hands the socket to a new worker and sends it its init message.
pub(super) async fn start_worker(
    shared: &Arc<Shared>,
    socket: TcpStream,
    sid: &str,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    uid: u32,
) -> Option<(SessionCtx, sandbox::Spawned)> {
    let t0 = Instant::now();
    let socket: OwnedFd = match socket.into_std() {
        Ok(s) => s.into(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot take the client socket");
            return None;
        }
    };
    let (ours, theirs) = match ipc::pair() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the control socket");
            return None;
        }
    };
    let argv = [
        CString::from(c"bastion-worker"),
        CString::from(c"worker"),
        CString::new(sid).unwrap_or_default(),
    ];
    let enabled = shared.config.sandbox.enabled;
    let spawned = match sandbox::spawn_worker(&shared.exe.path, &argv, &socket, &theirs, enabled) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker");
            return None;
        }
    };
    // The worker owns the client socket and its end of the control socket now.
    drop(socket);
    drop(theirs);
    let chan = match ipc::Channel::new(ours) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "control socket");
            kill(spawned.pid);
            return None;
        }
    };
    let init = WorkerInit {
        sid: sid.to_string(),
        peer: peer.to_string(),
        host: shared.host.clone(),
        sandbox: enabled.then(|| SandboxPlan {
            uid,
            memory_limit: shared.config.sandbox.memory_limit,
            root_dir: shared.root_dir.clone(),
        }),
        log_json: shared.log_json,
        log_filter: shared.log_filter.clone(),
        selftest_forbidden: None,
        refuse: audit_refusal(shared).await,
    };
    if let Err(e) = chan.send(&ToWorker::Init(init), None).await {
        tracing::error!(error = %e, "cannot initialise the worker");
        kill(spawned.pid);
        return None;
    }
    shared.metrics.spawned(t0.elapsed());
    tracing::debug!(
        pid = spawned.pid,
        spawn_us = t0.elapsed().as_micros() as u64,
        "worker started"
    );
    let ctx = SessionCtx {
        shared: shared.clone(),
        sid: sid.to_string(),
        peer,
        local,
        chan,
        identity: std::sync::OnceLock::new(),
        forwards: Mutex::new(HashMap::new()),
        auth_requests: std::sync::atomic::AtomicU32::new(0),
    };
    Some((ctx, spawned))
}

/// While the audit trail cannot be written, new connections are refused
/// with a message, before authentication. A failed trail is probed again
/// for every new connection, so the bastion recovers by itself once an
/// operator has made room.
pub(super) async fn audit_refusal(shared: &Shared) -> Option<String> {
    if let Some(why) = shared.audit.shipping().spool_full() {
        tracing::error!(reason = %why, "audit spool full; refusing a new connection");
        return Some(SPOOL_FULL.to_string());
    }
    if shared.audit.healthy() {
        return None;
    }
    let audit = shared.audit.clone();
    match tokio::task::spawn_blocking(move || audit.recheck()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "audit trail still unwritable; refusing a new connection");
            Some(AUDIT_DOWN.to_string())
        }
        Err(_) => Some(AUDIT_DOWN.to_string()),
    }
}

pub(super) async fn handle(ctx: &Arc<SessionCtx>, msg: ToMonitor, pid: i32, ticket: &mut Ticket) {
    match msg {
        ToMonitor::Ready => tracing::debug!("worker sandboxed and ready"),
        ToMonitor::Auth { id, login, key } => {
            let n = ctx
                .auth_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n >= MAX_AUTH_REQUESTS {
                tracing::warn!(
                    limit = MAX_AUTH_REQUESTS,
                    "worker exceeded the authentication requests a connection may make; killing it"
                );
                let ev = ctx.event(AuditEvent::Refused(ev::Refused {
                    who: Who {
                        login: Some(login),
                        ..ctx.who()
                    },
                    what: "auth".into(),
                    reason: format!("more than {MAX_AUTH_REQUESTS} authentication requests on one connection; worker killed"),
                }));
                let _ = ctx.shared.audit.write(ev, false).await;
                kill(pid);
                return;
            }
            let verdict = authenticate(ctx, &login, &key, pid).await;
            if matches!(verdict, AuthVerdict::Accept) {
                ticket.authenticated();
            }
            if let Err(e) = ctx
                .chan
                .send(&ToWorker::AuthReply { id, verdict }, None)
                .await
            {
                tracing::debug!(error = %e, "worker gone before the auth reply");
            }
        }
        ToMonitor::Forward {
            id,
            host,
            port,
            originator,
        } => {
            if ctx.identity.get().is_none() {
                tracing::warn!("forward request before authentication; killing the worker");
                kill(pid);
                return;
            }
            tokio::spawn(forward(ctx.clone(), id, host, port, originator));
        }
        ToMonitor::ForwardEnd {
            id,
            bytes_in,
            bytes_out,
            duration_ms,
        } => {
            let open = ctx.forwards.lock().ok().and_then(|mut f| f.remove(&id));
            if let Some(fwd) = open {
                let m = &ctx.shared.metrics;
                m.bytes_in
                    .fetch_add(bytes_in, std::sync::atomic::Ordering::Relaxed);
                m.bytes_out
                    .fetch_add(bytes_out, std::sync::atomic::Ordering::Relaxed);
                let ev = ctx.event(AuditEvent::PortEnd(ev::PortEnd {
                    who: ctx.who(),
                    target: fwd.target,
                    addr: fwd.addr.to_string(),
                    bytes_in: Some(bytes_in),
                    bytes_out: Some(bytes_out),
                    duration_ms: Some(duration_ms),
                    error: None,
                }));
                if let Err(e) = ctx.shared.audit.write(ev, false).await {
                    tracing::error!(error = %e, "could not write port.end");
                }
            }
        }
        ToMonitor::Refused { what, detail } => {
            tracing::info!(what = %what, detail = %detail, "refused a request");
            let ev = ctx.event(AuditEvent::Refused(ev::Refused {
                who: ctx.who(),
                what,
                reason: detail,
            }));
            if let Err(e) = ctx.shared.audit.write(ev, false).await {
                tracing::error!(error = %e, "could not write a refusal");
            }
        }
    }
}

/// Waits for the worker to exit (killing it if it lingers) and reaps it.
pub(super) async fn reap(pidfd: &AsyncFd<OwnedFd>, pid: i32) -> ExitStatus {
    if tokio::time::timeout(Duration::from_secs(5), pidfd.readable())
        .await
        .is_err()
    {
        kill(pid);
        let _ = pidfd.readable().await;
    }
    match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => ExitStatus {
            code: Some(code),
            signal: None,
        },
        Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => ExitStatus {
            code: None,
            signal: Some(sig as i32),
        },
        _ => ExitStatus {
            code: None,
            signal: None,
        },
    }
}

pub(super) fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}
