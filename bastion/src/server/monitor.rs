//! The monitor: the privileged parent. It accepts TCP connections, admits or
//! drops them, starts one sandboxed worker per connection, and answers the
//! workers' questions: may this key log in, may this session reach that
//! address. It holds the key sources, the policy and the audit trail, and it
//! never parses SSH.

use std::collections::HashMap;
use std::ffi::CString;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::audit::{trail_name, AuditLog, Event};
use crate::config::Config;
use crate::ipc::{
    self, AuthVerdict, ForwardRefusal, HostIdentity, SandboxPlan, ToMonitor, ToWorker, WorkerInit,
};
use crate::keys::authorized_keys::{validate_login, KeyOptions, PublicKeyBlob};
use crate::keys::{KeySources, Lookup};
use crate::sandbox;
use crate::targets::policy::{Decision, Policy, Subject};

/// What a client is told when the audit trail cannot be written.
pub const AUDIT_DOWN: &str = "bastion: the audit trail cannot be written, so new sessions are refused; please tell the bastion's operators";

/// What a client is told when the audit spool is over `audit.spool_max`.
pub const SPOOL_FULL: &str = "bastion: the audit spool is full (the remote audit sinks are behind), so new sessions are refused; please tell the bastion's operators";

/// Shutdown phases, broadcast to every task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// SIGTERM with `limits.drain_delay`: `/healthz` says 503 so the load
    /// balancer takes us out, while new connections are still accepted.
    Leaving,
    /// No new connections; live sessions continue.
    Draining,
    /// Grace over (or SIGINT): close every session now.
    Closing,
}

/// Errors that stop the monitor from starting.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot prepare the sandbox root {path}: {source}")]
    RuntimeDir {
        path: String,
        source: std::io::Error,
    },
}

/// Everything the sessions share.
pub struct Shared {
    pub config: Config,
    pub policy: Policy,
    pub sources: KeySources,
    pub audit: AuditLog,
    pub host: HostIdentity,
    pub log_filter: String,
    pub log_json: bool,
    pub metrics: crate::obs::metrics::Metrics,
    /// EC2 and EC2 Instance Connect, for targets asked for by instance id.
    ec2: crate::keys::eic::Ec2Api,
    /// PROXY protocol headers being awaited (at most `max_startups`).
    proxy_headers: Arc<tokio::sync::Semaphore>,
    exe: sandbox::WorkerExe,
    root_dir: String,
    admission: Mutex<Admission>,
}

/// Admission counters: unauthenticated connections in total and per source
/// address, all connections, and the uids of live workers.
struct Admission {
    unauth: usize,
    unauth_by_ip: HashMap<IpAddr, usize>,
    sessions: usize,
    free_uids: Vec<u32>,
    next_uid: u32,
}

/// A connection's place in the admission counters; released on drop.
struct Ticket {
    shared: Arc<Shared>,
    ip: IpAddr,
    uid: u32,
    unauthenticated: bool,
}

impl Ticket {
    /// The connection authenticated: it no longer counts as a startup.
    fn authenticated(&mut self) {
        if self.unauthenticated {
            self.unauthenticated = false;
            if let Ok(mut a) = self.shared.admission.lock() {
                a.release_unauth(self.ip);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut a) = self.shared.admission.lock() {
            if self.unauthenticated {
                a.release_unauth(self.ip);
            }
            a.sessions -= 1;
            a.free_uids.push(self.uid);
        }
    }
}

impl Admission {
    fn release_unauth(&mut self, ip: IpAddr) {
        self.unauth -= 1;
        if let Some(n) = self.unauth_by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.unauth_by_ip.remove(&ip);
            }
        }
    }
}

impl Shared {
    pub fn new(
        config: Config,
        policy: Policy,
        sources: KeySources,
        audit: AuditLog,
        host: HostIdentity,
        log_filter: String,
        log_json: bool,
    ) -> Shared {
        let root_dir = sandbox::root_mount_point(&config.sandbox.runtime_dir)
            .display()
            .to_string();
        let first_uid = config.sandbox.uid_base;
        let ec2_timeout = config.eic.timeout;
        let max_startups = config.limits.max_startups;
        Shared {
            config,
            policy,
            sources,
            audit,
            host,
            log_filter,
            log_json,
            metrics: crate::obs::metrics::Metrics::default(),
            ec2: crate::keys::eic::Ec2Api::new(ec2_timeout),
            proxy_headers: Arc::new(tokio::sync::Semaphore::new(max_startups)),
            exe: sandbox::WorkerExe::locate(),
            root_dir,
            admission: Mutex::new(Admission {
                unauth: 0,
                unauth_by_ip: HashMap::new(),
                sessions: 0,
                free_uids: Vec::new(),
                next_uid: first_uid,
            }),
        }
    }

    /// Admission control, before any expensive work (fork, key exchange).
    /// Returns why a connection is dropped.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, &'static str> {
        let limits = &self.config.limits;
        let mut a = self.admission.lock().map_err(|_| "internal error")?;
        if a.sessions >= limits.max_sessions {
            return Err("max_sessions reached");
        }
        if a.unauth >= limits.max_startups {
            return Err("max_startups reached");
        }
        if a.unauth_by_ip.get(&ip).copied().unwrap_or(0) >= limits.per_source {
            return Err("per_source limit reached for this address");
        }
        let uid = match a.free_uids.pop() {
            Some(uid) => uid,
            None if a.next_uid - self.config.sandbox.uid_base < self.config.sandbox.uid_count => {
                a.next_uid += 1;
                a.next_uid - 1
            }
            None => return Err("no free worker uid (sandbox.uid_count)"),
        };
        a.sessions += 1;
        a.unauth += 1;
        *a.unauth_by_ip.entry(ip).or_insert(0) += 1;
        Ok(Ticket {
            shared: self.clone(),
            ip,
            uid,
            unauthenticated: true,
        })
    }

    /// (connections open now, limits.max_sessions).
    pub fn sessions(&self) -> (usize, usize) {
        let open = self
            .admission
            .lock()
            .map(|a| a.sessions)
            .unwrap_or(usize::MAX);
        (open, self.config.limits.max_sessions)
    }

    /// Whether the directory workers mount their root on is there.
    pub fn root_dir_ready(&self) -> bool {
        std::path::Path::new(&self.root_dir).is_dir()
    }

    /// Creates the empty directory workers mount their root on.
    /// The program workers run (located once, at start).
    pub fn worker_exe(&self) -> &sandbox::WorkerExe {
        &self.exe
    }

    pub fn prepare_runtime_dir(&self) -> Result<(), MonitorError> {
        use std::os::unix::fs::DirBuilderExt;
        let err = |source| MonitorError::RuntimeDir {
            path: self.root_dir.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.root_dir)
            .map_err(err)?;
        Ok(())
    }
}

/// Binds every listen address; all or nothing.
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, MonitorError> {
    let mut out = Vec::new();
    for addr in addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MonitorError::Bind {
                addr: *addr,
                source,
            })?;
        out.push(listener);
    }
    Ok(out)
}

/// Runs the monitor until `shutdown` says so and every session is gone.
pub async fn run(shared: Arc<Shared>, listeners: Vec<TcpListener>, phase: watch::Receiver<Phase>) {
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    for listener in listeners {
        tokio::spawn(accept_loop(
            shared.clone(),
            listener,
            phase.clone(),
            done_tx.clone(),
        ));
    }
    drop(done_tx);
    // Returns once every accept loop and session task has dropped its sender.
    let _ = done_rx.recv().await;
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut phase: watch::Receiver<Phase>,
    done: mpsc::Sender<()>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = reached(&mut phase, Phase::Draining) => {
                let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                tracing::info!(%addr, "stopped accepting connections");
                return;
            }
        };
        let (socket, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e) => {
                // EMFILE and friends: log once per failure, back off, carry on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let peer = canonical(peer);
        crate::obs::metrics::bump(&shared.metrics.connections);
        if shared.config.proxy_protocol {
            // The header is read in its own task, so a slow sender cannot stall
            // accepting; at most max_startups headers are awaited at once.
            let Ok(permit) = shared.proxy_headers.clone().try_acquire_owned() else {
                crate::obs::metrics::bump(&shared.metrics.dropped);
                tracing::warn!(%peer, "connection dropped: too many PROXY headers pending");
                continue;
            };
            let (shared, phase, done) = (shared.clone(), phase.clone(), done.clone());
            tokio::spawn(async move {
                let mut socket = socket;
                let client = crate::server::proxy_protocol::read_header(&mut socket, peer).await;
                drop(permit);
                match client {
                    Ok(client) => start_session(&shared, socket, canonical(client), &phase, &done),
                    Err(e) => {
                        crate::obs::metrics::bump(&shared.metrics.dropped);
                        tracing::warn!(%peer, error = %e, "connection dropped: bad PROXY protocol header");
                    }
                }
            });
        } else {
            start_session(&shared, socket, peer, &phase, &done);
        }
    }
}

/// Admission, then a session task for an accepted connection from `peer`
/// (the client's address, from the PROXY header when there is one).
fn start_session(
    shared: &Arc<Shared>,
    socket: TcpStream,
    peer: SocketAddr,
    phase: &watch::Receiver<Phase>,
    done: &mpsc::Sender<()>,
) {
    if matches!(*phase.borrow(), Phase::Draining | Phase::Closing) {
        // Accepted before draining began, admitted after (a PROXY header was late).
        return;
    }
    match shared.admit(peer.ip()) {
        Ok(ticket) => {
            let local = socket.local_addr().map(canonical).ok();
            let sid = new_sid();
            let span = tracing::info_span!("conn", %sid, %peer);
            let task = session(
                shared.clone(),
                sid,
                socket,
                peer,
                local,
                ticket,
                phase.clone(),
                done.clone(),
            );
            tokio::spawn(task.instrument(span));
        }
        Err(why) => {
            crate::obs::metrics::bump(&shared.metrics.dropped);
            tracing::warn!(%peer, reason = why, "connection dropped by admission control");
            drop(socket);
        }
    }
}

/// Resolves once the shutdown phase is at least `at` (the watch guard is
/// dropped inside, so callers' futures stay Send).
async fn reached(phase: &mut watch::Receiver<Phase>, at: Phase) {
    let rank = |p: &Phase| match p {
        Phase::Running => 0,
        Phase::Leaving => 1,
        Phase::Draining => 2,
        Phase::Closing => 3,
    };
    let target = rank(&at);
    if phase.wait_for(|p| rank(p) >= target).await.is_err() {
        // The sender is gone: the monitor is exiting; treat as reached.
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(crate::targets::policy::canonical_ip(addr.ip()), addr.port())
}

fn new_sid() -> String {
    let bytes: [u8; 12] = rand::random();
    hex::encode(bytes)
}

/// What the monitor knows about one authenticated session.
struct Identity {
    login: String,
    user: String,
    key_fp: String,
    /// The public key the user authenticated with, for EC2 Instance Connect pushes.
    key: PublicKeyBlob,
    options: KeyOptions,
    /// The principal's groups (IAM groups), for `group:` rules.
    groups: Vec<String>,
}

/// Shared between a session's main task and its forward tasks.
struct SessionCtx {
    shared: Arc<Shared>,
    sid: String,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    chan: ipc::Channel,
    identity: std::sync::OnceLock<Identity>,
    forwards: Mutex<HashMap<u64, OpenForward>>,
    /// Authentication requests this worker has made (see [`MAX_AUTH_REQUESTS`]).
    auth_requests: std::sync::atomic::AtomicU32,
}

/// Authentication requests the monitor answers per connection. The worker
/// enforces the client-facing limit (6 attempts), but it is the untrusted
/// side: a compromised worker must not be able to make the key sources (and
/// IAM's account-wide rate limit) work for it without end.
const MAX_AUTH_REQUESTS: u32 = 12;

struct OpenForward {
    target: String,
    addr: SocketAddr,
}

impl SessionCtx {
    /// An event of this session, with who/where filled in as far as known.
    fn event(&self, name: &'static str) -> Event {
        let (trail, login, user, fp) = match self.identity.get() {
            Some(id) => (
                trail_name(Some(&id.user)),
                Some(id.login.clone()),
                Some(id.user.clone()),
                Some(id.key_fp.clone()),
            ),
            None => (trail_name(None), None, None, None),
        };
        Event::new(name, &self.sid, &trail)
            .with_opt("login", login)
            .with_opt("user", user)
            .with_opt("key_fp", fp)
            .with("remote_addr", self.peer.to_string())
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
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
            let ev = ctx
                .event("port.end")
                .with("target", fwd.target)
                .with("addr", fwd.addr.to_string())
                .with(
                    "error",
                    "the session ended before the forward reported its end",
                );
            let _ = shared.audit.write(ev, false).await;
        }
        let ev = ctx
            .event("session.end")
            .with("duration_ms", started.elapsed().as_millis() as u64)
            .with("reason", end_reason.clone())
            .with_opt("exit_code", status.code)
            .with_opt("signal", status.signal);
        if let Err(e) = shared.audit.write(ev, true).await {
            tracing::error!(error = %e, "could not write session.end");
        }
    }
    shared.audit.end_session(&sid);
    tracing::info!(reason = %end_reason, duration_ms = started.elapsed().as_millis() as u64, "connection closed");
}

/// Hands the socket to a new worker and sends it its init message.
async fn start_worker(
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
async fn audit_refusal(shared: &Shared) -> Option<String> {
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

async fn handle(ctx: &Arc<SessionCtx>, msg: ToMonitor, pid: i32, ticket: &mut Ticket) {
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
                let ev = ctx
                    .event("refused")
                    .with("what", "auth")
                    .with("login", login)
                    .with(
                        "reason",
                        format!("more than {MAX_AUTH_REQUESTS} authentication requests on one connection; worker killed"),
                    );
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
                let ev = ctx
                    .event("port.end")
                    .with("target", fwd.target)
                    .with("addr", fwd.addr.to_string())
                    .with("bytes_in", bytes_in)
                    .with("bytes_out", bytes_out)
                    .with("duration_ms", duration_ms);
                if let Err(e) = ctx.shared.audit.write(ev, false).await {
                    tracing::error!(error = %e, "could not write port.end");
                }
            }
        }
        ToMonitor::Refused { what, detail } => {
            tracing::info!(what = %what, detail = %detail, "refused a request");
            let ev = ctx
                .event("refused")
                .with("what", what)
                .with("reason", detail);
            if let Err(e) = ctx.shared.audit.write(ev, false).await {
                tracing::error!(error = %e, "could not write a refusal");
            }
        }
    }
}

/// Decides one publickey attempt (the worker has verified the signature).
async fn authenticate(ctx: &SessionCtx, login: &str, key_line: &str, pid: i32) -> AuthVerdict {
    let shared = &ctx.shared;
    if ctx.identity.get().is_some() {
        return AuthVerdict::Reject;
    }
    let key = match PublicKeyBlob::from_openssh(key_line) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "worker sent an unparsable key");
            return AuthVerdict::Reject;
        }
    };
    let fp = key.fingerprint();
    let base = |trail: &str| {
        Event::new("auth", &ctx.sid, trail)
            .with("login", login)
            .with("key_fp", fp.clone())
            .with("key_type", key.algo.clone())
            .with("remote_addr", ctx.peer.to_string())
            .with_opt("local_addr", ctx.local.map(|a| a.to_string()))
    };
    let (lookup, trail) = match validate_login(login) {
        Err(why) => (
            Lookup::Denied {
                reason: format!("login name is not valid: {why}"),
                principal: None,
                audit: Vec::new(),
                source: None,
                kind: "invalid_login",
            },
            trail_name(None),
        ),
        Ok(()) => {
            let lookup = shared.sources.authorize(login, &key, ctx.peer.ip()).await;
            // One trail per principal: an IAM user's logins in any spelling
            // (`alice.at.example.com`, `alice@example.com`) land in one file.
            let trail = match &lookup {
                Lookup::Denied { principal, .. } => trail_name(principal.as_deref()),
                Lookup::Authorized(who) => trail_name(Some(&who.user)),
            };
            (lookup, trail)
        }
    };
    match lookup {
        Lookup::Denied {
            reason,
            audit,
            source,
            kind,
            ..
        } => {
            shared.metrics.auth(source.unwrap_or("none"), "refused");
            shared.metrics.refusal(source.unwrap_or("none"), kind);
            tracing::info!(login, key_fp = %fp, reason = %reason, "authentication refused");
            let mut ev = base(&trail).with("success", false).with("reason", reason);
            for (k, v) in audit {
                ev = ev.with(k, v);
            }
            match shared.audit.write(ev, false).await {
                Ok(()) => AuthVerdict::Reject,
                Err(e) => {
                    tracing::error!(error = %e, "audit trail unwritable; refusing");
                    AuthVerdict::Disconnect {
                        message: AUDIT_DOWN.into(),
                    }
                }
            }
        }
        Lookup::Authorized(who) => {
            shared.metrics.auth(&who.source, "accepted");
            let mut ev = base(&trail)
                .with("success", true)
                .with("user", who.user.clone())
                .with("source", who.source.clone())
                .with("port_forwarding", who.options.port_forwarding)
                .with_opt(
                    "permitopen",
                    (!who.options.permitopen.is_empty()).then(|| {
                        who.options
                            .permitopen
                            .iter()
                            .map(|p| {
                                format!(
                                    "{}:{}",
                                    p.host,
                                    p.port.map_or("*".to_string(), |p| p.to_string())
                                )
                            })
                            .collect::<Vec<_>>()
                    }),
                );
            for (k, v) in &who.audit {
                ev = ev.with(k, v.clone());
            }
            if let Err(e) = shared.audit.write(ev, true).await {
                tracing::error!(error = %e, "audit trail unwritable; refusing");
                return AuthVerdict::Disconnect {
                    message: AUDIT_DOWN.into(),
                };
            }
            let _ = ctx.identity.set(Identity {
                login: login.to_string(),
                user: who.user.clone(),
                key_fp: fp.clone(),
                key: key.clone(),
                options: who.options,
                groups: who.groups,
            });
            let observed = sandbox::observe(pid, shared.config.sandbox.enabled);
            let sandbox_json = serde_json::to_value(&observed).unwrap_or_default();
            let ev = ctx
                .event("session.start")
                .with("source", who.source)
                .with_opt("local_addr", ctx.local.map(|a| a.to_string()))
                .with("worker_pid", pid)
                .with("sandbox", sandbox_json);
            if let Err(e) = shared.audit.write(ev, true).await {
                tracing::error!(error = %e, "audit trail unwritable; refusing");
                return AuthVerdict::Disconnect {
                    message: AUDIT_DOWN.into(),
                };
            }
            tracing::info!(login, key_fp = %fp, "authenticated");
            AuthVerdict::Accept
        }
    }
}

/// Longest host name a client may ask for (DNS limit).
const MAX_HOST: usize = 253;

async fn forward(ctx: Arc<SessionCtx>, id: u64, host: String, port: u32, originator: String) {
    let shared = &ctx.shared;
    let Some(identity) = ctx.identity.get() else {
        return;
    };
    let target = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let decision = decide(&ctx, identity, &host, port).await;
    let (allowed, reason, addr) = match &decision {
        Decision::Allow { addr, reason, .. } => (true, reason.clone(), Some(*addr)),
        Decision::Deny { reason } => (false, reason.clone(), None),
    };
    let ev = ctx
        .event("port")
        .with("target", target.clone())
        .with_opt("addr", addr.map(|a| a.to_string()))
        .with("allowed", allowed)
        .with("reason", reason.clone())
        .with("originator", originator);
    // Fail closed: nothing is opened unless its record is on disk.
    if let Err(e) = shared.audit.write(ev, true).await {
        tracing::error!(error = %e, "audit trail unwritable; refusing the forward");
        reply(
            &ctx,
            id,
            Err(ForwardRefusal::Prohibited(
                "the bastion's audit trail cannot be written, so forwarding is refused".into(),
            )),
            None,
        )
        .await;
        return;
    }
    let Some(addr) = addr else {
        shared.metrics.forward("denied");
        tracing::info!(%target, %reason, "forward denied");
        reply(&ctx, id, Err(ForwardRefusal::Prohibited(reason)), None).await;
        return;
    };
    let connect = tokio::time::timeout(
        shared.config.limits.connect_timeout,
        TcpStream::connect(addr),
    )
    .await;
    match connect {
        Ok(Ok(stream)) => {
            shared.metrics.forward("allowed");
            tracing::info!(%target, %addr, "forward opened");
            if let Ok(mut f) = ctx.forwards.lock() {
                f.insert(id, OpenForward { target, addr });
            }
            match stream.into_std() {
                Ok(std_stream) => {
                    let fd: OwnedFd = std_stream.into();
                    reply(&ctx, id, Ok(()), Some(&fd)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot hand over the onward socket");
                    let why = format!("the bastion could not hand over the connection to {addr}");
                    reply(&ctx, id, Err(ForwardRefusal::ConnectFailed(why)), None).await;
                }
            }
        }
        failed => {
            let why = match failed {
                Ok(Err(e)) => format!("connecting to {addr} failed: {e}"),
                _ => format!("connecting to {addr} timed out"),
            };
            shared.metrics.forward("failed");
            tracing::info!(%target, %why, "forward failed");
            let ev = ctx
                .event("port.end")
                .with("target", target)
                .with("addr", addr.to_string())
                .with("error", why.clone())
                .with("bytes_in", 0)
                .with("bytes_out", 0);
            let _ = shared.audit.write(ev, false).await;
            reply(&ctx, id, Err(ForwardRefusal::ConnectFailed(why)), None).await;
        }
    }
}

async fn reply(
    ctx: &SessionCtx,
    id: u64,
    result: Result<(), ForwardRefusal>,
    fd: Option<&OwnedFd>,
) {
    if let Err(e) = ctx
        .chan
        .send(&ToWorker::ForwardReply { id, result }, fd)
        .await
    {
        tracing::debug!(error = %e, "worker gone before the forward reply");
    }
}

/// Key options first (they narrow), then the policy over the resolved addresses.
/// An instance id is resolved with EC2 and, when `[eic] push` is on and the policy
/// allows it, the user's key is pushed to the instance before the answer.
async fn decide(ctx: &SessionCtx, identity: &Identity, host: &str, port: u32) -> Decision {
    let shared = &*ctx.shared;
    let deny = |reason: String| Decision::Deny { reason };
    let Ok(port) = u16::try_from(port) else {
        return deny(format!("port {port} is out of range"));
    };
    if port == 0 {
        return deny("port 0 is not a destination".into());
    }
    if host.is_empty()
        || host.len() > MAX_HOST
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:[]%".contains(c))
    {
        return deny("the requested host name is not valid".into());
    }
    if !identity.options.port_forwarding {
        return deny(format!(
            "the key {} was restricted (restrict/no-port-forwarding) and may not forward",
            identity.key_fp
        ));
    }
    if !identity.options.permits_open(host, port) {
        return deny(format!(
            "{host}:{port} is not among the key's permitopen destinations"
        ));
    }
    let subject = Subject {
        login: &identity.login,
        user: &identity.user,
        groups: &identity.groups,
    };
    if crate::keys::eic::is_instance_id(host) {
        return decide_instance(ctx, identity, &subject, host, port).await;
    }
    let resolved: Vec<IpAddr> = match Policy::ip_literal(host) {
        Some(ip) => vec![ip],
        None => match tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((host, port)),
        )
        .await
        {
            Ok(Ok(addrs)) => {
                let mut ips: Vec<IpAddr> = Vec::new();
                for a in addrs {
                    let ip = canonical(a).ip();
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
                ips
            }
            Ok(Err(e)) => return deny(format!("{host} could not be resolved: {e}")),
            Err(_) => return deny(format!("resolving {host} timed out")),
        },
    };
    shared.policy.decide(&subject, host, port, &resolved)
}

/// An instance asked for by id: no EC2 call unless some rule could allow it; then
/// `DescribeInstances` (running, its private address, its tags), the policy, and
/// the EC2 Instance Connect pushes, each audited as `eic.push`.
async fn decide_instance(
    ctx: &SessionCtx,
    identity: &Identity,
    subject: &Subject<'_>,
    id: &str,
    port: u16,
) -> Decision {
    let shared = &*ctx.shared;
    let deny = |reason: String| Decision::Deny { reason };
    if !shared.policy.could_allow_instance(subject, id, port) {
        return deny(format!(
            "no rule allows {} to reach {id} on port {port}",
            subject.login
        ));
    }
    let instance = match shared.ec2.describe(id).await {
        Ok(i) => i,
        Err(e) => return deny(e.reason),
    };
    if instance.state != "running" {
        return deny(format!("instance {id} is {}, not running", instance.state));
    }
    let Some(ip) = instance.private_ip else {
        return deny(format!("instance {id} has no private IP address"));
    };
    let decision = shared
        .policy
        .decide_with_tags(subject, id, port, &[ip], Some(&instance.tags));
    let Decision::Allow { rule, .. } = &decision else {
        return decision;
    };
    if !shared.config.eic.push {
        return decision;
    }
    if let Err(why) = crate::keys::eic::check_pushable(&identity.key) {
        let ev = ctx
            .event("eic.push")
            .with("instance_id", id)
            .with("success", false)
            .with("reason", why.clone());
        let _ = shared.audit.write(ev, false).await;
        return deny(why);
    }
    let os_users = shared
        .config
        .allow
        .get(*rule)
        .and_then(|r| r.os_users.clone())
        .unwrap_or_else(|| shared.config.eic.os_users.clone());
    let key_line = identity.key.to_openssh();
    for os_user in &os_users {
        let result = shared.ec2.push(&instance, os_user, &key_line).await;
        let mut ev = ctx
            .event("eic.push")
            .with("instance_id", id)
            .with("os_user", os_user.clone())
            .with("success", result.is_ok());
        match &result {
            Ok(p) => {
                ev = ev
                    .with_opt("request_id", p.request_id.clone())
                    .with("duration_ms", p.took.as_millis() as u64);
                tracing::info!(instance = id, os_user = %os_user, request_id = ?p.request_id, "pushed the key with EC2 Instance Connect");
            }
            Err(e) => {
                ev = ev
                    .with_opt("error", e.code.clone())
                    .with("reason", e.reason.clone());
                tracing::info!(instance = id, os_user = %os_user, reason = %e.reason, "EC2 Instance Connect push failed");
            }
        }
        if let Err(e) = shared.audit.write(ev, true).await {
            tracing::error!(error = %e, "audit trail unwritable; refusing the forward");
            return deny(
                "the bastion's audit trail cannot be written, so forwarding is refused".into(),
            );
        }
        if let Err(e) = result {
            return deny(format!(
                "pushing your key to {id} for {os_user} with EC2 Instance Connect failed: {}",
                e.reason
            ));
        }
    }
    decision
}

struct ExitStatus {
    code: Option<i32>,
    signal: Option<i32>,
}

/// Waits for the worker to exit (killing it if it lingers) and reaps it.
async fn reap(pidfd: &AsyncFd<OwnedFd>, pid: i32) -> ExitStatus {
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

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}
