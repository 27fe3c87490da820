//! The channel between the monitor and one worker.
//!
//! A `SOCK_SEQPACKET` unix socketpair: one message per datagram, so a message
//! is never split or merged, and a file descriptor (an onward TCP socket the
//! monitor connected) travels with the message that explains it (SCM_RIGHTS).
//! Messages are JSON: small, debuggable with `strace -s`, and parsed with
//! serde into closed enums, so an unexpected message from a compromised
//! worker is a decode error, not undefined behaviour.
#![allow(unsafe_code)]

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Largest message either side accepts. Host keys and auth requests are far below it.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A secret string (a private host key) whose Debug output is redacted.
#[derive(Clone, Serialize, Deserialize)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What the server presents in the SSH handshake.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostIdentity {
    /// OpenSSH private host keys, PEM.
    pub keys: Vec<Secret>,
    /// OpenSSH host certificates (`…-cert-v01@openssh.com …`), each for one of `keys`.
    pub certificates: Vec<String>,
    /// The ciphers offered, in order (names from `config::SUPPORTED_CIPHERS`).
    pub ciphers: Vec<String>,
}

/// What the worker needs to know to run one connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInit {
    /// Session id, as it appears in the audit trail.
    pub sid: String,
    /// The client's address, for the worker's own log lines.
    pub peer: String,
    /// The host's keys and certificates for the handshake.
    pub host: HostIdentity,
    /// Sandbox to enter before any untrusted byte is parsed; None when sandboxing is off.
    pub sandbox: Option<SandboxPlan>,
    /// Emit JSON log lines (true when the monitor's stderr is not a terminal).
    pub log_json: bool,
    /// tracing filter directive for the worker.
    pub log_filter: String,
    /// `bastion sandbox-selftest`: after entering the sandbox, make a
    /// forbidden (true) or an allowed (false) system call instead of serving SSH.
    pub selftest_forbidden: Option<bool>,
    /// Refuse every login with this message (shown to the client as the
    /// pre-authentication banner), e.g. while the audit trail cannot be written.
    pub refuse: Option<String>,
}

/// The sandbox parameters the monitor chose for one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxPlan {
    /// Unprivileged uid (and gid) of this worker, unique among live workers.
    pub uid: u32,
    /// Address-space limit, bytes.
    pub memory_limit: u64,
    /// An empty directory on the host to mount the worker's empty root on.
    pub root_dir: String,
}

/// The monitor's answer to an authentication request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AuthVerdict {
    Accept,
    Reject,
    /// Refuse and disconnect with this message (e.g. the audit trail cannot be written).
    Disconnect {
        message: String,
    },
}

/// Monitor → worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    Init(WorkerInit),
    AuthReply {
        id: u64,
        verdict: AuthVerdict,
    },
    /// `Ok` carries the connected socket as SCM_RIGHTS; `Err` the reason (already audited).
    ForwardReply {
        id: u64,
        result: Result<(), ForwardRefusal>,
    },
    /// Disconnect the client with this message and exit.
    Shutdown {
        message: String,
    },
}

/// Why a forward was not opened, in the terms SSH can express.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardRefusal {
    Prohibited(String),
    ConnectFailed(String),
}

/// Worker → monitor.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToMonitor {
    /// The sandbox is in place; the worker is about to speak SSH.
    Ready,
    /// The client proved possession of `key` (OpenSSH public key line) and wants to log in as `login`.
    Auth { id: u64, login: String, key: String },
    /// A direct-tcpip channel (`-J`, `-W`, `-L`) asks for `host:port`.
    Forward {
        id: u64,
        host: String,
        port: u32,
        originator: String,
    },
    /// A forward opened earlier has ended.
    ForwardEnd {
        id: u64,
        bytes_in: u64,
        bytes_out: u64,
        duration_ms: u64,
    },
    /// The client asked for something this bastion does not offer.
    Refused { what: String, detail: String },
}

/// Errors on the monitor/worker channel.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("creating the control socketpair: {0}")]
    Socketpair(#[source] nix::Error),
    #[error("sending on the control socket: {0}")]
    Send(#[source] io::Error),
    #[error("receiving on the control socket: {0}")]
    Recv(#[source] io::Error),
    #[error("the peer closed the control socket")]
    Closed,
    #[error("malformed control message: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("encoding a control message: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("control message is {0} bytes, more than the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
}

/// A connected pair of control sockets: (monitor end, worker end). Both CLOEXEC.
pub fn pair() -> Result<(OwnedFd, OwnedFd), IpcError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(IpcError::Socketpair)
}

fn send_raw(fd: RawFd, bytes: &[u8], pass: Option<RawFd>) -> io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let fds;
    let cmsgs: &[ControlMessage] = match pass {
        Some(f) => {
            fds = [f];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    sendmsg::<()>(fd, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map(|_| ())
        .map_err(io::Error::from)
}

fn recv_raw(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    if msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "control message truncated",
        ));
    }
    let mut passed = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for f in fds {
                // SAFETY: the kernel just installed `f` in our fd table for us
                // (SCM_RIGHTS); nothing else owns it. Extra fds are closed by
                // being dropped here.
                let owned = unsafe { OwnedFd::from_raw_fd(f) };
                if passed.is_none() {
                    passed = Some(owned);
                }
            }
        }
    }
    Ok((msg.bytes, passed))
}

fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, IpcError> {
    let bytes = serde_json::to_vec(msg).map_err(IpcError::Encode)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(IpcError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

fn decode<T: for<'de> Deserialize<'de>>(buf: &[u8]) -> Result<T, IpcError> {
    if buf.is_empty() {
        // A zero-length datagram on SEQPACKET is how EOF looks.
        return Err(IpcError::Closed);
    }
    serde_json::from_slice(buf).map_err(IpcError::Decode)
}

/// Blocking send, for the worker before its runtime exists.
pub fn send_blocking<T: Serialize>(fd: &OwnedFd, msg: &T) -> Result<(), IpcError> {
    let bytes = encode(msg)?;
    send_raw(fd.as_raw_fd(), &bytes, None).map_err(IpcError::Send)
}

/// Blocking receive, for the worker before its runtime exists.
pub fn recv_blocking<T: for<'de> Deserialize<'de>>(fd: &OwnedFd) -> Result<T, IpcError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, _fd) = recv_raw(fd.as_raw_fd(), &mut buf).map_err(IpcError::Recv)?;
    decode(&buf[..n])
}

/// Registers an owned fd with the tokio reactor (control sockets, pidfds).
pub fn watch_fd(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the fd stays
    // open and refers to the same file description until the AsyncFd drops
    // it, and OwnedFd::as_raw_fd always returns that same number.
    unsafe { AsyncFd::register_with_interest(fd, interest) }
        .map_err(|e| io::Error::other(e.to_string()))
}

/// The async end of a control socket. Shared by reference between tasks:
/// SEQPACKET sends are atomic, so concurrent senders do not interleave.
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    /// Wraps a control socket; it is switched to non-blocking mode.
    pub fn new(fd: OwnedFd) -> io::Result<Channel> {
        let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Channel {
            fd: watch_fd(fd, Interest::READABLE | Interest::WRITABLE)?,
        })
    }

    /// Sends one message, optionally passing a file descriptor with it.
    pub async fn send<T: Serialize>(
        &self,
        msg: &T,
        pass: Option<&OwnedFd>,
    ) -> Result<(), IpcError> {
        let bytes = encode(msg)?;
        let raw = pass.map(|f| f.as_raw_fd());
        loop {
            let mut guard = self.fd.writable().await.map_err(IpcError::Send)?;
            match guard.try_io(|inner| send_raw(inner.get_ref().as_raw_fd(), &bytes, raw)) {
                Ok(result) => return result.map_err(IpcError::Send),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one message and the file descriptor that came with it, if any.
    pub async fn recv<T: for<'de> Deserialize<'de>>(
        &self,
    ) -> Result<(T, Option<OwnedFd>), IpcError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let mut guard = self.fd.readable().await.map_err(IpcError::Recv)?;
            match guard.try_io(|inner| recv_raw(inner.get_ref().as_raw_fd(), &mut buf)) {
                Ok(Ok((n, fd))) => return Ok((decode(&buf[..n])?, fd)),
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(IpcError::Closed)
                }
                Ok(Err(e)) => return Err(IpcError::Recv(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[tokio::test]
    async fn messages_and_fds_cross() {
        let (a, b) = pair().unwrap();
        let (a, b) = (Channel::new(a).unwrap(), Channel::new(b).unwrap());
        let (mut left, right) = std::os::unix::net::UnixStream::pair().unwrap();
        let right: OwnedFd = right.into();
        a.send(
            &ToWorker::ForwardReply {
                id: 7,
                result: Ok(()),
            },
            Some(&right),
        )
        .await
        .unwrap();
        let (msg, fd) = b.recv::<ToWorker>().await.unwrap();
        assert!(matches!(
            msg,
            ToWorker::ForwardReply {
                id: 7,
                result: Ok(())
            }
        ));
        let mut passed = std::os::unix::net::UnixStream::from(fd.expect("fd passed"));
        left.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        passed.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn closed_peer_is_reported() {
        let (a, b) = pair().unwrap();
        drop(a);
        let b = Channel::new(b).unwrap();
        assert!(matches!(b.recv::<ToMonitor>().await, Err(IpcError::Closed)));
    }

    #[tokio::test]
    async fn garbage_is_a_decode_error() {
        let (a, b) = pair().unwrap();
        send_raw(a.as_raw_fd(), b"{not json", None).unwrap();
        let b = Channel::new(b).unwrap();
        assert!(matches!(
            b.recv::<ToMonitor>().await,
            Err(IpcError::Decode(_))
        ));
    }

    #[test]
    fn secrets_are_redacted() {
        let s = format!("{:?}", Secret("-----BEGIN OPENSSH PRIVATE KEY-----".into()));
        assert!(!s.contains("BEGIN"));
    }
}
