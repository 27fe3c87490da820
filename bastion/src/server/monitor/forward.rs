//! "May this user connect to host:port?": the policy, the name resolved and every address
//! checked, EC2 Instance Connect pushes, the `port` event written before the connect.

use super::*;

/// Longest host name a client may ask for (DNS limit).
pub(super) const MAX_HOST: usize = 253;

pub(super) async fn forward(
    ctx: Arc<SessionCtx>,
    id: u64,
    host: String,
    port: u32,
    originator: String,
) {
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

pub(super) async fn reply(
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
pub(super) async fn decide(
    ctx: &SessionCtx,
    identity: &Identity,
    host: &str,
    port: u32,
) -> Decision {
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
pub(super) async fn decide_instance(
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
    if let Err(why) = crate::keys::eic::check_pushable(&identity.key).map_err(|e| e.to_string()) {
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
