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

use crate::audit::event::{self as ev, AuditEvent, KeyDetail, Who};
use crate::audit::{trail_name, AuditLog, Event};
use crate::config::Config;
use crate::ipc::{
    self, AuthVerdict, ForwardRefusal, HostIdentity, SandboxPlan, ToMonitor, ToWorker, WorkerInit,
};
use crate::keys::authorized_keys::{validate_login, KeyOptions, PublicKeyBlob};
use crate::keys::{KeySources, Lookup};
use crate::sandbox;
use crate::targets::policy::{Decision, Policy, Subject};

mod admission;
mod auth;
mod forward;
mod session;

use admission::{Admission, AdmissionLimits};
use auth::authenticate;
use forward::forward;
use session::session;

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
            a.release(self.uid);
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
        let limits = AdmissionLimits {
            max_sessions: config.limits.max_sessions,
            max_startups: config.limits.max_startups,
            per_source: config.limits.per_source,
            uid_base: config.sandbox.uid_base,
            uid_count: config.sandbox.uid_count,
        };
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
            admission: Mutex::new(Admission::new(limits)),
        }
    }

    /// Admission control, before any expensive work (fork, key exchange).
    /// Returns why a connection is dropped.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, String> {
        let mut a = self
            .admission
            .lock()
            .map_err(|_| "internal error".to_string())?;
        let uid = a.admit(ip).map_err(|r| r.to_string())?;
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
            .map(|a| a.sessions())
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
            tracing::warn!(%peer, reason = %why, "connection dropped by admission control");
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
    /// Who this session is, as far as known (before authentication: only the peer).
    fn who(&self) -> Who {
        let id = self.identity.get();
        Who {
            login: id.map(|id| id.login.clone()),
            user: id.map(|id| id.user.clone()),
            key_fp: id.map(|id| id.key_fp.clone()),
            remote_addr: self.peer.to_string(),
        }
    }

    /// `body` as an event of this session, for the authenticated user's trail (or the
    /// unknown trail before authentication).
    fn event(&self, body: AuditEvent) -> Event {
        let trail = trail_name(self.identity.get().map(|id| id.user.as_str()));
        Event::new(&self.sid, &trail, body)
    }
}

struct ExitStatus {
    code: Option<i32>,
    signal: Option<i32>,
}
