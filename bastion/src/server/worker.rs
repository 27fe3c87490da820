//! The worker: one per TCP connection, `bastion` re-executed by the monitor.
//!
//! It speaks SSH (russh) to one client inside the sandbox and decides
//! nothing itself: every authentication and every onward connection is a
//! question to the monitor over the control socket. Onward sockets arrive
//! connected, by fd; the worker only pumps bytes.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use russh::server::{Auth, ChannelOpenHandle, Handle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect, MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use crate::ipc::{self, AuthVerdict, ForwardRefusal, ToMonitor, ToWorker, WorkerInit};
use crate::sandbox;

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

    if let Some(plan) = &init.sandbox {
        sandbox::enter(
            plan.uid,
            plan.memory_limit,
            std::path::Path::new(&plan.root_dir),
        )?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    if init.sandbox.is_some() {
        let program = sandbox::build_filter()?;
        sandbox::apply_seccomp(&program)?;
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

/// A reply from the monitor, with the fd that came with it.
type Reply = (ToWorker, Option<OwnedFd>);

/// The worker's side of the control socket: requests with ids, replies routed back.
struct Control {
    chan: ipc::Channel,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    handle: OnceLock<Handle>,
    /// Held by every relay task; when all are gone, every forward has reported its end.
    relays: Mutex<Option<tokio::sync::mpsc::Sender<()>>>,
}

impl Control {
    /// A token that keeps the worker alive until this relay has reported.
    fn relay_token(&self) -> Option<tokio::sync::mpsc::Sender<()>> {
        self.relays.lock().ok().and_then(|r| r.clone())
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a request and waits for the reply with the same id.
    async fn ask(
        &self,
        id: u64,
        msg: ToMonitor,
    ) -> Result<(ToWorker, Option<OwnedFd>), WorkerError> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| ipc::IpcError::Closed)?
            .insert(id, tx);
        self.chan.send(&msg, None).await?;
        rx.await
            .map_err(|_| WorkerError::Ipc(ipc::IpcError::Closed))
    }

    /// Tells the monitor something that needs no answer.
    async fn tell(&self, msg: ToMonitor) {
        if let Err(e) = self.chan.send(&msg, None).await {
            tracing::warn!(error = %e, "could not report to the monitor");
        }
    }

    fn disconnect(&self, message: String) {
        if let Some(handle) = self.handle.get().cloned() {
            tokio::spawn(async move {
                let _ = handle
                    .disconnect(Disconnect::ByApplication, message, "en".into())
                    .await;
            });
        }
    }

    /// Routes the monitor's messages until it closes the socket.
    async fn dispatch(self: Arc<Self>) {
        loop {
            match self.chan.recv::<ToWorker>().await {
                Ok((ToWorker::Shutdown { message }, _)) => self.disconnect(message),
                Ok((msg, fd)) => {
                    let id = match &msg {
                        ToWorker::AuthReply { id, .. } | ToWorker::ForwardReply { id, .. } => *id,
                        other => {
                            tracing::warn!(message = ?other, "unexpected control message");
                            continue;
                        }
                    };
                    let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
                    if let Some(tx) = waiter {
                        let _ = tx.send((msg, fd));
                    }
                }
                Err(e) => {
                    // Without the monitor nothing can be authorised: end the session.
                    tracing::debug!(error = %e, "control socket closed");
                    self.disconnect("bastion: internal error, please reconnect".into());
                    return;
                }
            }
        }
    }
}

/// Bytes the relay moves per read, each way.
const RELAY_BUFFER: usize = 256 * 1024;

fn ssh_config(
    keys: Vec<russh::keys::PrivateKey>,
    certificates: Vec<russh::keys::Certificate>,
    ciphers: &[String],
) -> russh::server::Config {
    use russh::keys::{Algorithm, EcdsaCurve, HashAlg};
    use russh::{cipher, kex, mac, Preferred};
    use std::borrow::Cow;
    let preferred = Preferred {
        kex: Cow::Borrowed(&[
            kex::MLKEM768X25519_SHA256,
            kex::CURVE25519,
            kex::CURVE25519_PRE_RFC_8731,
            kex::EXTENSION_SUPPORT_AS_SERVER,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
        ]),
        key: Cow::Owned(vec![
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP384,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP521,
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
        ]),
        // The monitor's choice (`ciphers`, validated there); the client picks the first
        // of its own list that is offered here.
        cipher: Cow::Owned(
            ciphers
                .iter()
                .filter_map(|c| cipher::Name::try_from(c.as_str()).ok())
                .collect(),
        ),
        mac: Cow::Borrowed(&[
            mac::HMAC_SHA256_ETM,
            mac::HMAC_SHA512_ETM,
            mac::HMAC_SHA256,
            mac::HMAC_SHA512,
        ]),
        ..Preferred::DEFAULT
    };
    russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-bastion".into()),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // The first "none" probe every OpenSSH client sends is answered at once;
        // later rejections take a fixed time.
        auth_rejection_time: Duration::from_millis(200),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys,
        certificates,
        max_auth_attempts: 6,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        nodelay: true,
        preferred,
        // Forwarding throughput (bench/jumpbench.py): a window of 8 MiB lets a
        // client's upload run further ahead of the acknowledgements, and a
        // deeper channel queue keeps the relay from stalling on the session task.
        window_size: 8 * 1024 * 1024,
        channel_buffer_size: 256,
        ..Default::default()
    }
}

async fn serve(
    client: OwnedFd,
    control: OwnedFd,
    init: WorkerInit,
    keys: Vec<russh::keys::PrivateKey>,
    certificates: Vec<russh::keys::Certificate>,
) -> Result<(), WorkerError> {
    let (relays_tx, mut relays_rx) = tokio::sync::mpsc::channel::<()>(1);
    let ctl = Arc::new(Control {
        chan: ipc::Channel::new(control)?,
        next_id: AtomicU64::new(1),
        pending: Mutex::new(HashMap::new()),
        handle: OnceLock::new(),
        relays: Mutex::new(Some(relays_tx)),
    });
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
    let _ = ctl.handle.set(running.handle());
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
    if let Ok(mut r) = ctl.relays.lock() {
        r.take();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), relays_rx.recv()).await;
    result
}

struct WorkerHandler {
    ctl: Arc<Control>,
    /// Set when the monitor refuses every login on this connection.
    refuse: Option<String>,
}

impl WorkerHandler {
    async fn refuse(&self, what: &str, detail: String) {
        self.ctl
            .tell(ToMonitor::Refused {
                what: what.into(),
                detail,
            })
            .await;
    }

    /// Answers a shell or exec request on the bastion itself: one line on
    /// stderr saying how to use `-J`, exit status 1.
    async fn no_shell(
        &self,
        what: &str,
        detail: String,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), WorkerError> {
        self.refuse(what, detail).await;
        session.channel_success(channel)?;
        session.extended_data(channel, 1, NO_SHELL.as_bytes().to_vec())?;
        session.exit_status_request(channel, 1)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

impl russh::server::Handler for WorkerHandler {
    type Error = WorkerError;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        Ok(self.refuse.as_ref().map(|m| format!("{m}\r\n")))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if let Some(message) = &self.refuse {
            self.ctl.disconnect(message.clone());
            return Ok(Auth::reject());
        }
        // Only reached after russh verified the signature: the client holds
        // the private key. Only now may a key source hear about it.
        let line = key
            .public_key
            .to_openssh()
            .map_err(|e| WorkerError::HostKey(e.to_string()))?;
        let id = self.ctl.id();
        let (reply, _) = self
            .ctl
            .ask(
                id,
                ToMonitor::Auth {
                    id,
                    login: user.to_string(),
                    key: line,
                },
            )
            .await?;
        Ok(match reply {
            ToWorker::AuthReply {
                verdict: AuthVerdict::Accept,
                ..
            } => Auth::Accept,
            ToWorker::AuthReply {
                verdict: AuthVerdict::Disconnect { message },
                ..
            } => {
                self.ctl.disconnect(message);
                Auth::reject()
            }
            _ => Auth::reject(),
        })
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Accepted only so that a shell/exec request gets a helpful answer.
        reply.accept().await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _c: u32,
        _r: u32,
        _pw: u32,
        _ph: u32,
        _m: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.no_shell(
            "shell",
            "interactive shell on the bastion".into(),
            channel,
            session,
        )
        .await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command: String = String::from_utf8_lossy(data).chars().take(200).collect();
        self.no_shell(
            "exec",
            format!("command on the bastion: {command}"),
            channel,
            session,
        )
        .await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("subsystem", format!("subsystem {name} on the bastion"))
            .await;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("x11", "X11 forwarding is not offered".into())
            .await;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse("agent", "agent forwarding is not offered".into())
            .await;
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse(
            "tcpip-forward",
            format!("remote forwarding (-R) of {address}:{port} is not offered"),
        )
        .await;
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse(
            "streamlocal",
            format!("unix socket forwarding of {path} is not offered"),
        )
        .await;
        Ok(false)
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(
            "streamlocal",
            format!("unix socket forwarding to {path} is not offered"),
        )
        .await;
        reply
            .reject(prohibited(
                "unix socket forwarding is not offered by this bastion",
            ))
            .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _a: &str,
        _p: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(prohibited("X11 forwarding is not offered by this bastion"))
            .await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The monitor may take a while (DNS, connect timeout): answer from a
        // task so the session keeps serving its other channels meanwhile.
        let ctl = self.ctl.clone();
        let (host, originator) = (host.to_string(), format!("{originator}:{originator_port}"));
        let token = ctl.relay_token();
        tokio::spawn(async move {
            let _token = token;
            let id = ctl.id();
            let started = Instant::now();
            let answer = ctl
                .ask(
                    id,
                    ToMonitor::Forward {
                        id,
                        host,
                        port,
                        originator,
                    },
                )
                .await;
            let target = match answer {
                Ok((ToWorker::ForwardReply { result: Ok(()), .. }, Some(fd))) => fd,
                Ok((
                    ToWorker::ForwardReply {
                        result: Err(refusal),
                        ..
                    },
                    _,
                )) => {
                    reply.reject(open_failure(refusal)).await;
                    return;
                }
                _ => {
                    reply
                        .reject(prohibited("the bastion could not decide on this forward"))
                        .await;
                    return;
                }
            };
            let (bytes_in, bytes_out) = match relay(channel, reply, target).await {
                Ok(counts) => counts,
                Err(e) => {
                    tracing::debug!(error = %e, "relay ended with an error");
                    (0, 0)
                }
            };
            ctl.tell(ToMonitor::ForwardEnd {
                id,
                bytes_in,
                bytes_out,
                duration_ms: started.elapsed().as_millis() as u64,
            })
            .await;
        });
        Ok(())
    }
}

fn prohibited(reason: &str) -> ChannelOpenFailure {
    open_failure(ForwardRefusal::Prohibited(reason.into()))
}

/// The SSH channel-open failure for a refusal, with the monitor's reason as
/// its text (RFC 4254: 1 = administratively prohibited, 2 = connect failed).
fn open_failure(refusal: ForwardRefusal) -> ChannelOpenFailure {
    let (code, reason) = match refusal {
        ForwardRefusal::Prohibited(r) => (1, r),
        ForwardRefusal::ConnectFailed(r) => (2, r),
    };
    ChannelOpenFailure::Other { code, reason }
}

/// Pumps bytes between the client's channel and the onward socket until
/// both directions are closed. Returns (bytes from the target to the client,
/// bytes from the client to the target).
async fn relay(
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    target: OwnedFd,
) -> std::io::Result<(u64, u64)> {
    let tcp = std::net::TcpStream::from(target);
    tcp.set_nonblocking(true)?;
    let tcp = tokio::net::TcpStream::from_std(tcp)?;
    tcp.set_nodelay(true)?;
    reply.accept().await;
    let to_target = Arc::new(AtomicU64::new(0));
    let to_client = Arc::new(AtomicU64::new(0));
    let mut chan = Counted {
        inner: channel.into_stream(),
        read: to_target.clone(),
    };
    let mut tcp = Counted {
        inner: tcp,
        read: to_client.clone(),
    };
    let result =
        tokio::io::copy_bidirectional_with_sizes(&mut chan, &mut tcp, RELAY_BUFFER, RELAY_BUFFER)
            .await;
    let counts = (
        to_client.load(Ordering::Relaxed),
        to_target.load(Ordering::Relaxed),
    );
    result.map(|_| counts).or(Ok(counts))
}

/// A stream that counts the bytes read from it, even when the copy ends in an error.
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
