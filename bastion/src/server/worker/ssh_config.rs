//! The SSH server's settings: algorithms, authentication, timeouts, windows.

use std::time::Duration;

use russh::{MethodKind, MethodSet};

/// The russh server configuration for one session, with the monitor's host
/// keys, certificates and cipher choice.
pub(super) fn ssh_config(
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
