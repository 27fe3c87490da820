//! `bastion serve`: the configuration checked and prepared before anything binds, then
//! the monitor, the health endpoint and the signals composed; the audit spool shipped at exit.

use super::*;
use crate::server::lifecycle;

/// Everything derived from the configuration that can fail, checked before anything binds.
pub(super) struct Prepared {
    policy: Policy,
    sources: KeySources,
    host_keys: Vec<Secret>,
    /// OpenSSH host certificates (public), each for one of `host_keys`.
    host_certificates: Vec<String>,
    fingerprints: Vec<String>,
}

/// Checks an OpenSSH host certificate: a host certificate, validly signed,
/// valid now, for one of `keys` (when `must_match`: every host key was read).
/// Returns it re-encoded and a line describing it for the start-up log.
pub(super) fn host_certificate(
    text: &str,
    keys: &[russh::keys::ssh_key::public::KeyData],
    must_match: bool,
) -> Result<(String, String), String> {
    use russh::keys::ssh_key::certificate::CertType;
    let cert = russh::keys::Certificate::from_openssh(text.trim())
        .map_err(|e| format!("not an OpenSSH certificate: {e}"))?;
    if cert.cert_type() != CertType::Host {
        return Err("a user certificate, not a host certificate (sign with ssh-keygen -h)".into());
    }
    cert.verify_signature()
        .map_err(|e| format!("its CA signature does not verify: {e}"))?;
    let now = std::time::SystemTime::now();
    if cert.valid_after_time().is_some_and(|t| now < t) {
        return Err("not valid yet".into());
    }
    if cert.valid_before_time().is_some_and(|t| now >= t) {
        return Err("expired".into());
    }
    if must_match && !keys.iter().any(|k| k == cert.public_key()) {
        return Err("certifies a key that is not one of host_keys".into());
    }
    let encoded = cert
        .to_openssh()
        .map_err(|e| format!("cannot re-encode: {e}"))?;
    let until = match cert.valid_before_time() {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => "forever".into(),
    };
    let about = format!(
        "certificate {:?} by CA {} for [{}], valid until {until}",
        cert.key_id(),
        cert.signature_key()
            .fingerprint(russh::keys::HashAlg::Sha256),
        cert.valid_principals().join(",")
    );
    Ok((encoded, about))
}

/// `fetch_remote`: fetch host keys kept in AWS (serve), or only check their references (check-config).
pub(super) fn prepare(cfg: &Config, fetch_remote: bool) -> Result<Prepared, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let err = |key: String, message: String| ConfigError {
        source: cfg.origins.of(key.split('[').next().unwrap_or(&key)),
        key,
        message,
        hint: None,
    };
    let mut host_keys = Vec::new();
    let mut public_keys = Vec::new();
    let mut fingerprints = Vec::new();
    // What is kept in AWS is fetched only to serve (check-config makes no AWS call).
    let remote: Vec<config::HostKey> = cfg
        .host_keys
        .iter()
        .chain(&cfg.host_certificates)
        .filter(|k| fetch_remote && k.is_remote())
        .cloned()
        .collect();
    let mut fetched = crate::server::hostkeys::fetch(&remote).into_iter();
    let mut read = |source: &config::HostKey| match source {
        config::HostKey::File(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
        ),
        _ if !fetch_remote => None,
        _ => Some(
            fetched
                .next()
                .unwrap_or_else(|| Err(format!("{source}: not fetched"))),
        ),
    };
    for (i, source) in cfg.host_keys.iter().enumerate() {
        let Some(text) = read(source) else { continue };
        match text {
            Ok(text) => match russh::keys::decode_secret_key(&text, None) {
                Ok(key) => {
                    fingerprints.push(format!(
                        "{} {}",
                        key.public_key().fingerprint(russh::keys::HashAlg::Sha256),
                        key.algorithm().as_str()
                    ));
                    public_keys.push(key.public_key().key_data().clone());
                    host_keys.push(Secret(text));
                }
                Err(e) => errors.push(err(
                    format!("host_keys[{i}]"),
                    format!("{source} is not an OpenSSH private key: {e}"),
                )),
            },
            Err(why) => errors.push(err(format!("host_keys[{i}]"), why)),
        }
    }
    let mut host_certificates = Vec::new();
    for (i, source) in cfg.host_certificates.iter().enumerate() {
        let Some(text) = read(source) else { continue };
        // Keys of remote host keys are unknown to check-config: match only what was read.
        let all_keys_read = public_keys.len() == cfg.host_keys.len();
        match text.and_then(|t| host_certificate(&t, &public_keys, all_keys_read)) {
            Ok((cert, about)) => {
                fingerprints.push(about);
                host_certificates.push(cert);
            }
            Err(why) => errors.push(err(
                format!("host_certificates[{i}]"),
                format!("{source}: {why}"),
            )),
        }
    }
    let mut rules = Vec::new();
    for rule in &cfg.allow {
        match Rule::parse(&rule.principals, &rule.to) {
            Ok(r) => rules.push(r),
            Err(problems) => {
                for p in problems {
                    errors.push(ConfigError {
                        source: cfg.origins.of(&rule.key),
                        key: format!("{}.{}", rule.key, p.key()),
                        message: p.to_string(),
                        hint: None,
                    });
                }
            }
        }
    }
    let want_groups = cfg
        .allow
        .iter()
        .any(|r| r.principals.iter().any(|p| p.starts_with("group:")));
    let sources = match KeySources::new(&cfg.auth, want_groups) {
        Ok(s) => Some(s),
        Err(problems) => {
            for (i, key, message) in problems {
                errors.push(err(format!("auth[{i}].{key}"), message));
            }
            None
        }
    };
    match sources {
        Some(sources) if errors.is_empty() => Ok(Prepared {
            policy: Policy::new(rules, own_addresses(&cfg.listen)),
            sources,
            host_keys,
            host_certificates,
            fingerprints,
        }),
        _ => Err(errors),
    }
}

/// The bastion's own addresses: every interface address and the listen addresses.
pub(super) fn own_addresses(listen: &[SocketAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    if let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() {
        for ifa in ifaddrs {
            let Some(addr) = ifa.address else { continue };
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    for l in listen {
        if !l.ip().is_unspecified() && !out.contains(&l.ip()) {
            out.push(l.ip());
        }
    }
    out
}

pub(super) fn overrides(args: &ServeArgs) -> Vec<Override> {
    let mut out = Vec::new();
    if !args.listen.is_empty() {
        out.push(Override {
            key: "listen".into(),
            value: toml::Value::Array(
                args.listen
                    .iter()
                    .map(|a| toml::Value::String(a.to_string()))
                    .collect(),
            ),
            source: "flag --listen".into(),
        });
    }
    if !args.host_keys.is_empty() {
        out.push(Override {
            key: "host_keys".into(),
            value: toml::Value::Array(
                args.host_keys
                    .iter()
                    .map(|p| toml::Value::String(p.display().to_string()))
                    .collect(),
            ),
            source: "flag --host-key".into(),
        });
    }
    if let Some(dir) = &args.audit_dir {
        out.push(Override {
            key: "audit.dir".into(),
            value: toml::Value::String(dir.display().to_string()),
            source: "flag --audit-dir".into(),
        });
    }
    if args.no_sandbox {
        out.push(Override {
            key: "sandbox.enabled".into(),
            value: toml::Value::Boolean(false),
            source: "flag --no-sandbox".into(),
        });
    }
    out
}

pub(super) fn serve(args: ServeArgs) -> ExitCode {
    let (log_filter, log_json) = crate::obs::logging::init_monitor();
    let loaded = if args.dev {
        crate::cli::dev::config(&args, overrides(&args))
    } else {
        let r = config::load(args.config.as_deref(), std::env::vars(), overrides(&args));
        if args.config.is_none() {
            if let Err(errors) = &r {
                if errors.iter().any(|e| e.key == "host_keys") {
                    eprintln!(
                        "note: no --config given; for a quick local try use: bastion serve --dev"
                    );
                }
            }
        }
        r.map(|c| (c, None))
    };
    let (cfg, dev) = match loaded {
        Ok(c) => c,
        Err(errors) => return print_config_errors(&errors),
    };
    let prepared = match prepare(&cfg, true) {
        Ok(p) => p,
        Err(errors) => return print_config_errors(&errors),
    };

    if cfg.sandbox.enabled {
        if let Err(why) = sandbox::preflight() {
            print_error(
                &format!("cannot sandbox workers: {why}"),
                Some(&sandbox_hint()),
            );
            return ExitCode::from(1);
        }
    } else {
        tracing::warn!("SANDBOX DISABLED by configuration: workers run without namespaces, seccomp or privilege separation");
        eprintln!("warning: the worker sandbox is DISABLED (sandbox.enabled = false): every connection runs unconfined");
    }

    let audit = match AuditLog::open(&cfg.audit.dir, cfg.audit.stdout).map(|mut a| {
        let started = a.start_shipping(&cfg.audit);
        (a, started)
    }) {
        Ok((a, Ok(()))) => a,
        Ok((_, Err(e))) => {
            print_error(&format!("cannot start the remote audit sinks: {e}"), None);
            return ExitCode::from(1);
        }
        Err(e) => {
            print_error(
                &format!("cannot write the audit trail: {e}"),
                Some("audit.dir must be a directory the bastion can create and write"),
            );
            return ExitCode::from(1);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bastion-monitor")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            print_error(&format!("cannot start the async runtime: {e}"), None);
            return ExitCode::from(1);
        }
    };
    let fingerprints = prepared.fingerprints.clone();
    let sources_desc = prepared.sources.describe();
    let cfg_ciphers = cfg
        .ciphers
        .clone()
        .unwrap_or_else(crate::config::default_ciphers);
    let shared = Arc::new(Shared::new(
        cfg,
        prepared.policy,
        prepared.sources,
        audit,
        ipc::HostIdentity {
            keys: prepared.host_keys,
            certificates: prepared.host_certificates,
            ciphers: cfg_ciphers,
        },
        log_filter,
        log_json,
    ));
    if shared.config.sandbox.enabled {
        if let Err(e) = shared.prepare_runtime_dir() {
            print_error(
                &e.to_string(),
                Some("sandbox.runtime_dir must be a directory the bastion can create"),
            );
            return ExitCode::from(1);
        }
        // Capabilities are not enough: a container runtime's seccomp or
        // AppArmor profile may still refuse a step (pivot_root, mount). One
        // real worker goes through every step before anything is accepted.
        let sb = &shared.config.sandbox;
        let root = sandbox::root_mount_point(&sb.runtime_dir);
        match trial_worker(
            shared.worker_exe(),
            &root,
            sb.uid_base,
            sb.memory_limit,
            false,
        ) {
            Ok((0, None)) => tracing::debug!("trial worker entered its sandbox"),
            outcome => {
                let why = match outcome {
                    Ok((code, None)) => format!("a trial worker could not enter its sandbox (exit status {code}; its error is above)"),
                    Ok((_, Some(sig))) => format!("a trial worker was killed by signal {sig} while entering its sandbox"),
                    Err(e) => e,
                };
                print_error(
                    &format!("cannot sandbox workers: {why}"),
                    Some(&sandbox_hint()),
                );
                return ExitCode::from(1);
            }
        }
    }
    runtime.block_on(async move {
        let listeners = match monitor::bind(&shared.config.listen).await {
            Ok(l) => l,
            Err(e) => {
                print_error(
                    &e.to_string(),
                    Some("is another process using the port? change `listen` or use --listen"),
                );
                return ExitCode::from(1);
            }
        };
        let health = match shared.config.health_listen {
            None => None,
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    print_error(
                        &format!("cannot listen on {addr} (health_listen): {e}"),
                        Some("change health_listen"),
                    );
                    return ExitCode::from(1);
                }
            },
        };
        announce(&shared, &fingerprints, &sources_desc, dev.as_ref());
        let (phase_tx, phase_rx) = tokio::sync::watch::channel(Phase::Running);
        if let Some(l) = health {
            let view = Arc::new(crate::server::health::Health::new(
                shared.clone(),
                phase_rx.clone(),
            ));
            tokio::spawn(crate::obs::health::serve(l, view));
        }
        let mut signals = match lifecycle::os_signals() {
            Ok(s) => s,
            Err(e) => {
                print_error(
                    &format!("cannot install the SIGTERM/SIGINT handlers: {e}"),
                    None,
                );
                return ExitCode::from(1);
            }
        };
        let timing = lifecycle::Timing {
            drain_delay: shared.config.limits.drain_delay,
            grace: shared.config.limits.shutdown_grace,
        };
        let mut lifecycle = lifecycle::Lifecycle::new(phase_tx, timing);
        let mut server = tokio::spawn(monitor::run(shared.clone(), listeners, phase_rx));
        let finished = tokio::select! {
            _ = &mut server => true,
            () = lifecycle.run(&mut signals) => false,
        };
        if !finished {
            // The sessions got their Closing notice; give them a moment to say goodbye.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(6), &mut server).await;
        }
        // SIGINT means now: no wait for the audit sinks either.
        if !lifecycle.interrupted() {
            tokio::task::block_in_place(|| ship_before_exit(&shared));
        }
        tracing::info!("bastion stopped");
        ExitCode::SUCCESS
    })
}

/// At exit: the remote audit sinks get up to `audit.ship_grace` to ship what the spool
/// holds, and the log says what they could not.
pub(super) fn ship_before_exit(shared: &Shared) {
    let shipping = shared.audit.shipping();
    if shipping.sinks.is_empty() {
        return;
    }
    let grace = shared.config.audit.ship_grace;
    tracing::info!(grace = %humantime::format_duration(grace), "shipping what the audit spool holds before exit");
    let started = std::time::Instant::now();
    let left = shipping.flush(grace);
    if left.is_empty() {
        tracing::info!(took = ?started.elapsed(), "audit spool shipped: every remote sink holds the whole trail");
    }
    for u in left {
        let trails: Vec<String> = u
            .trails
            .iter()
            .map(|(t, n)| format!("{t} ({n} bytes)"))
            .collect();
        tracing::error!(sink = u.sink, bytes = u.bytes, trails = ?trails, last_error = u.error.as_deref().unwrap_or("none: still shipping when the grace period ended"),
            dir = %shared.config.audit.dir.display(),
            "audit trail not shipped before exit: {} bytes stay in the local spool and ship at the next start on this disk; if this disk is deleted (an instance terminated) they are lost", u.bytes);
    }
}

pub(super) fn announce(
    shared: &Shared,
    fingerprints: &[String],
    sources: &[String],
    dev: Option<&dev::DevInfo>,
) {
    let cfg = &shared.config;
    let listen: Vec<String> = cfg.listen.iter().map(|a| a.to_string()).collect();
    let rules: Vec<String> = cfg
        .allow
        .iter()
        .map(|r| format!("{} -> {}", r.principals.join(","), r.to.join(", ")))
        .collect();
    tracing::info!(listen = ?listen, host_keys = ?fingerprints, key_sources = ?sources, forwarding = ?rules,
        audit_dir = %cfg.audit.dir.display(), sandbox = cfg.sandbox.enabled, worker = %shared.worker_exe().describe,
        ciphers = ?shared.host.ciphers, ciphers_automatic = cfg.ciphers.is_none(), hardware_aes_gcm = crate::config::hardware_aes_gcm(),
        eic_push = cfg.eic.push, eic_os_users = ?cfg.eic.os_users, version = env!("CARGO_PKG_VERSION"), "bastion listening");
    if let Some(dev) = dev {
        eprintln!("bastion {} in development mode", env!("CARGO_PKG_VERSION"));
        eprintln!("  listening on      {}", listen.join(", "));
        for fp in fingerprints {
            eprintln!("  host key          {fp}   ({})", dev.host_key.display());
        }
        eprintln!(
            "  key source        {} (login: {})",
            dev.authorized_keys.display(),
            dev.login
        );
        eprintln!("  forwarding        loopback port 22 only (127.0.0.1:22, [::1]:22)");
        eprintln!(
            "  audit trail       {}/<login>.jsonl",
            cfg.audit.dir.display()
        );
        eprintln!(
            "  sandbox           {}",
            if cfg.sandbox.enabled { "on" } else { "OFF" }
        );
        eprintln!(
            "  try:              ssh -J {}@{} {}@127.0.0.1",
            dev.login,
            listen.first().map(String::as_str).unwrap_or(""),
            dev.login
        );
    }
}
