//! "May this proven key log in as this login?": the key sources asked, the verdict audited.

use super::*;

/// Decides one publickey attempt (the worker has verified the signature).
pub(super) async fn authenticate(
    ctx: &SessionCtx,
    login: &str,
    key_line: &str,
    pid: i32,
) -> AuthVerdict {
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
    let base = ev::Auth {
        who: Who {
            login: Some(login.to_string()),
            user: None,
            key_fp: Some(fp.clone()),
            remote_addr: ctx.peer.to_string(),
        },
        key_type: key.algo.clone(),
        local_addr: ctx.local.map(|a| a.to_string()),
        ..Default::default()
    };
    let (lookup, trail) = match validate_login(login) {
        Err(why) => (
            Lookup::Denied {
                reason: format!("login name is not valid: {why}"),
                principal: None,
                audit: KeyDetail::default(),
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
            let ev = Event::new(
                &ctx.sid,
                &trail,
                AuditEvent::Auth(Box::new(ev::Auth {
                    success: false,
                    reason: Some(reason),
                    detail: audit,
                    ..base
                })),
            );
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
            let permitopen = who.options.permitopen.iter().map(|p| {
                let port = p.port.map_or("*".to_string(), |p| p.to_string());
                format!("{}:{port}", p.host)
            });
            let ev = Event::new(
                &ctx.sid,
                &trail,
                AuditEvent::Auth(Box::new(ev::Auth {
                    who: Who {
                        user: Some(who.user.clone()),
                        ..base.who
                    },
                    success: true,
                    source: Some(who.source.clone()),
                    port_forwarding: Some(who.options.port_forwarding),
                    permitopen: (!who.options.permitopen.is_empty()).then(|| permitopen.collect()),
                    detail: who.audit.clone(),
                    ..base
                })),
            );
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
            let ev = ctx.event(AuditEvent::SessionStart(ev::SessionStart {
                who: ctx.who(),
                source: who.source,
                local_addr: ctx.local.map(|a| a.to_string()),
                worker_pid: pid,
                sandbox: sandbox_json,
            }));
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
