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
    let ev = ctx.event(AuditEvent::Port(ev::Port {
        who: ctx.who(),
        target: target.clone(),
        addr: addr.map(|a| a.to_string()),
        allowed,
        reason: reason.clone(),
        originator,
    }));
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
            let ev = ctx.event(AuditEvent::PortEnd(ev::PortEnd {
                who: ctx.who(),
                target,
                addr: addr.to_string(),
                bytes_in: Some(0),
                bytes_out: Some(0),
                duration_ms: None,
                error: Some(why.clone()),
            }));
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
    let port = match check_request(&identity.options, &identity.key_fp, host, port) {
        Ok(port) => port,
        Err(reason) => return deny(reason),
    };
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

/// What can be refused before any policy or name lookup: the port, the host name's
/// characters, and the key's own options (`restrict`, `permitopen=`).
fn check_request(options: &KeyOptions, key_fp: &str, host: &str, port: u32) -> Result<u16, String> {
    let Ok(port) = u16::try_from(port) else {
        return Err(format!("port {port} is out of range"));
    };
    if port == 0 {
        return Err("port 0 is not a destination".into());
    }
    if host.is_empty()
        || host.len() > MAX_HOST
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:[]%".contains(c))
    {
        return Err("the requested host name is not valid".into());
    }
    if !options.port_forwarding {
        return Err(format!(
            "the key {key_fp} was restricted (restrict/no-port-forwarding) and may not forward"
        ));
    }
    if !options.permits_open(host, port) {
        return Err(format!(
            "{host}:{port} is not among the key's permitopen destinations"
        ));
    }
    Ok(port)
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
        let ev = ctx.event(AuditEvent::EicPush(ev::EicPush {
            who: ctx.who(),
            instance_id: id.to_string(),
            reason: Some(why.clone()),
            ..Default::default()
        }));
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
        let mut push = ev::EicPush {
            who: ctx.who(),
            instance_id: id.to_string(),
            os_user: Some(os_user.clone()),
            success: result.is_ok(),
            ..Default::default()
        };
        match &result {
            Ok(p) => {
                push.request_id = p.request_id.clone();
                push.duration_ms = Some(p.took.as_millis() as u64);
                tracing::info!(instance = id, os_user = %os_user, request_id = ?p.request_id, "pushed the key with EC2 Instance Connect");
            }
            Err(e) => {
                push.error = e.code.clone();
                push.reason = Some(e.reason.clone());
                tracing::info!(instance = id, os_user = %os_user, reason = %e.reason, "EC2 Instance Connect push failed");
            }
        }
        let ev = ctx.event(AuditEvent::EicPush(push));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::authorized_keys::parse_authorized_keys;

    /// The options of one authorized_keys line with `options` in front of a key.
    fn options(opts: &str) -> KeyOptions {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        let line = if opts.is_empty() {
            key.to_string()
        } else {
            format!("{opts} {key}")
        };
        let parsed = parse_authorized_keys(&line);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        parsed.keys[0].options.clone()
    }

    #[test]
    fn ports_and_host_names_are_checked_first() {
        let any = options("");
        assert_eq!(check_request(&any, "fp", "db", 22), Ok(22));
        assert_eq!(
            check_request(&any, "fp", "db", 65536).unwrap_err(),
            "port 65536 is out of range"
        );
        assert_eq!(
            check_request(&any, "fp", "db", 0).unwrap_err(),
            "port 0 is not a destination"
        );
        for bad in ["", "db;rm", "a b", "db/x", &"a".repeat(MAX_HOST + 1)] {
            assert_eq!(
                check_request(&any, "fp", bad, 22).unwrap_err(),
                "the requested host name is not valid",
                "{bad:?}"
            );
        }
        assert_eq!(check_request(&any, "fp", "[2001:db8::1]", 22), Ok(22));
    }

    #[test]
    fn the_key_options_narrow_before_the_policy() {
        let restricted = options("restrict");
        let why = check_request(&restricted, "SHA256:k", "db", 22).unwrap_err();
        assert!(
            why.contains("SHA256:k") && why.contains("restricted"),
            "{why}"
        );

        let one = options(r#"permitopen="db:5432""#);
        assert_eq!(check_request(&one, "fp", "db", 5432), Ok(5432));
        assert_eq!(
            check_request(&one, "fp", "db", 22).unwrap_err(),
            "db:22 is not among the key's permitopen destinations"
        );
        assert!(check_request(&one, "fp", "other", 5432).is_err());

        // restrict with an explicit permit-port-forwarding and a permitopen is allowed there.
        let both = options(r#"restrict,port-forwarding,permitopen="db:*""#);
        assert_eq!(check_request(&both, "fp", "db", 1234), Ok(1234));
    }
}
