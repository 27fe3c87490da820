//! The russh [`Handler`](russh::server::Handler) of a worker's session:
//! public-key logins and direct-tcpip forwards are questions to the monitor;
//! everything else the bastion does not offer is refused and reported.

use std::sync::Arc;
use std::time::Instant;

use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure};

use super::control::Control;
use super::relay::relay;
use super::{WorkerError, NO_SHELL};
use crate::ipc::{AuthVerdict, ForwardRefusal, ToMonitor, ToWorker};

/// One session's handler: the monitor decides, through `ctl`.
pub(super) struct WorkerHandler {
    pub(super) ctl: Arc<Control>,
    /// Set when the monitor refuses every login on this connection.
    pub(super) refuse: Option<String>,
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
