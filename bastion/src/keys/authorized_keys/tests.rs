//! Unit tests of the `authorized_keys` format and its options.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::options::wildcard_match;
use super::*;

// Generated with `ssh-keygen -t ed25519 -f /tmp/x -N '' -C alice@laptop`; fingerprint from `ssh-keygen -lf`.
const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBqB9BGnw1ICJwGKnVlG38R0fBBxm1TP1OfeD5HvjkzW alice@laptop";
const ED25519_FP: &str = "SHA256:ZzxmvJ0AOExTip8UGrCaNCvkEs6ebM7yEm2PLhFh/bM";
// `ssh-keygen -t rsa -b 2048 -C bob@ops`.
const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDCwLheiWzf+XAJ+TI/JvJGLP2PZ8Fm8jtFCEwLTFlHr3nKpxRv40kErav9ba036W+URXw7Uly0a6TlJbOz/4shQ0oIKMt7d04jk42SUUhd0cJk47779HqDXPXCEo9LE54Hnaov4iaYxlAu/+oSUXB5DrUogB71tkY1Q2SDlsNnGSaV/anKTFiDmnqjZgI2OhMN4Nr7PRjEMswmF4DVzyNOfGfwowhqF9FViMic9sMgTYxVSBuZjzSVTTutWkduDc0nGr9PMFj54toXtS4iWZzqb8gnmcRK50gPk3Bl8jX164SkTCoveXMnIcjzHUXcNkiIYEzFk89FLBdIg1/bs2Lb bob@ops";
const RSA_FP: &str = "SHA256:T5WBGX/Sd1LoYxsLS4odhKTA2G+mljZK7VIQeedXEdc";
// `ssh-keygen -t ecdsa -b 256 -C e`.
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBIJnzwzWe1zwMXWeZqTUU0VU25nXN2atCF3261hI0lASTEOoPjw/jo6GbPej5BrLlv7t781k2idzrKse7qzQqVw= e";
const ECDSA_FP: &str = "SHA256:BdJ/qNLW4ilcJDgzpjf1iubdWG/UPtA4nFG8HECw7kc";

fn ed25519_key_part() -> &'static str {
    ED25519.rsplit_once(' ').unwrap().0
}

fn opts(options: &str) -> KeyOptions {
    let parsed = parse_authorized_keys(&format!("{options} {ED25519}"));
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    parsed.keys.into_iter().next().unwrap().options
}

fn line_err(line: &str) -> KeyError {
    let mut parsed = parse_authorized_keys(line);
    assert!(parsed.keys.is_empty(), "{line:?} unexpectedly parsed");
    assert_eq!(parsed.errors.len(), 1);
    parsed.errors.remove(0).error
}

/// A blob whose first SSH string is `algo`, followed by some bytes.
fn fake_key(algo: &str) -> String {
    let mut blob = u32::try_from(algo.len()).unwrap().to_be_bytes().to_vec();
    blob.extend_from_slice(algo.as_bytes());
    blob.extend_from_slice(&[0, 0, 0, 4, 1, 2, 3, 4]);
    format!("{algo} {}", STANDARD.encode(blob))
}

fn utc(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

#[test]
fn fingerprints_match_ssh_keygen() {
    for (line, fp) in [(ED25519, ED25519_FP), (RSA, RSA_FP), (ECDSA, ECDSA_FP)] {
        let key = PublicKeyBlob::from_openssh(line).unwrap();
        assert_eq!(key.fingerprint(), fp);
    }
}

#[test]
fn to_openssh_round_trips_without_comment() {
    let key = PublicKeyBlob::from_openssh(ED25519).unwrap();
    assert_eq!(key.algo, "ssh-ed25519");
    assert_eq!(key.to_openssh(), ed25519_key_part());
    assert_eq!(PublicKeyBlob::from_openssh(&key.to_openssh()).unwrap(), key);
    let rsa = PublicKeyBlob::from_openssh(RSA).unwrap();
    assert_eq!(format!("{} bob@ops", rsa.to_openssh()), RSA);
}

#[test]
fn security_key_algorithms_are_accepted() {
    for algo in [
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "ecdsa-sha2-nistp521",
    ] {
        assert_eq!(
            PublicKeyBlob::from_openssh(&fake_key(algo)).unwrap().algo,
            algo
        );
    }
}

#[test]
fn key_errors() {
    assert_eq!(PublicKeyBlob::from_openssh(""), Err(KeyError::MissingKey));
    assert_eq!(
        PublicKeyBlob::from_openssh("ssh-ed25519"),
        Err(KeyError::MissingKey)
    );
    assert!(matches!(
        PublicKeyBlob::from_openssh("ssh-ed25519 not*base64"),
        Err(KeyError::BadBase64(_))
    ));
    let swapped = ED25519.replacen("ssh-ed25519", "ssh-rsa", 1);
    assert_eq!(
        PublicKeyBlob::from_openssh(&swapped),
        Err(KeyError::AlgoMismatch {
            algo: "ssh-rsa".into(),
            found: "ssh-ed25519".into()
        })
    );
    let truncated = format!("ssh-ed25519 {}", STANDARD.encode([0, 0, 0, 99, b's']));
    assert!(matches!(
        PublicKeyBlob::from_openssh(&truncated),
        Err(KeyError::AlgoMismatch { found, .. }) if found == "<malformed blob>"
    ));
    let err = PublicKeyBlob::from_openssh(&fake_key("ssh-dss")).unwrap_err();
    assert_eq!(err, KeyError::UnsupportedAlgorithm("ssh-dss".into()));
    assert!(err.to_string().contains("ssh-dss"));
    let cert =
        PublicKeyBlob::from_openssh(&fake_key("ssh-ed25519-cert-v01@openssh.com")).unwrap_err();
    assert!(matches!(cert, KeyError::CertificateNotSupported(_)));
    assert!(cert
        .to_string()
        .starts_with("certificates are not supported yet"));
}

#[test]
fn plain_lines_and_comments() {
    let text = format!(
        "# header\n\n   \n{ED25519}\n  {RSA}  \r\n{}\n",
        ed25519_key_part()
    );
    let parsed = parse_authorized_keys(&text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let lines: Vec<_> = parsed
        .keys
        .iter()
        .map(|k| (k.line, k.comment.as_str()))
        .collect();
    assert_eq!(lines, [(4, "alice@laptop"), (5, "bob@ops"), (6, "")]);
    assert_eq!(parsed.keys[0].options, KeyOptions::default());
    assert!(parsed.keys[0].options.port_forwarding);
}

#[test]
fn comment_with_spaces_is_kept() {
    let parsed = parse_authorized_keys(&format!("{} Alice  Smith (laptop)", ed25519_key_part()));
    assert_eq!(parsed.keys[0].comment, "Alice  Smith (laptop)");
}

#[test]
fn quoted_values_with_commas_and_escaped_quotes() {
    let o = opts(r#"command="echo \"a, b\" c\\d",from="10.0.0.0/8,192.168.*",no-pty"#);
    assert_eq!(o.command.as_deref(), Some(r#"echo "a, b" c\\d"#));
    assert_eq!(o.from.as_deref(), Some("10.0.0.0/8,192.168.*"));
    let spaced = opts(r#"command="run this, now""#);
    assert_eq!(spaced.command.as_deref(), Some("run this, now"));
}

#[test]
fn option_names_are_case_insensitive_and_ignored_ones_parse() {
    let o = opts(
        r#"No-Agent-Forwarding,NO-X11-FORWARDING,no-pty,no-user-rc,agent-forwarding,x11-forwarding,pty,user-rc,environment="A=b, c",tunnel="1",no-touch-required,verify-required,PermitOpen="h:1""#,
    );
    assert_eq!(
        o.permitopen,
        [PermitOpen {
            host: "h".into(),
            port: Some(1)
        }]
    );
    assert!(o.port_forwarding && !o.restrict);
}

#[test]
fn restrict_and_port_forwarding() {
    let o = opts("restrict");
    assert!(o.restrict && !o.port_forwarding);
    let o = opts("restrict,port-forwarding");
    assert!(o.restrict && o.port_forwarding);
    let o = opts("port-forwarding,restrict");
    assert!(!o.port_forwarding);
    assert!(!opts("no-port-forwarding").port_forwarding);
    assert!(opts("no-port-forwarding,port-forwarding").port_forwarding);
}

#[test]
fn option_errors() {
    assert_eq!(
        line_err(&format!("bogus {ED25519}")),
        KeyError::UnknownOption("bogus".into())
    );
    assert!(line_err(&format!("no-pty,frob=\"x\" {ED25519}"))
        .to_string()
        .contains("frob"));
    assert_eq!(
        line_err(&format!("cert-authority {ED25519}")),
        KeyError::CertAuthorityNotSupported
    );
    assert_eq!(
        line_err(&format!(r#"principals="alice" {ED25519}"#)).to_string(),
        "cert-authority keys are not supported yet"
    );
    for (line, name) in [
        (format!("command=x {ED25519}"), "command"),
        (format!(r#"command="unterminated {ED25519}"#), "command"),
        (format!("from {ED25519}"), "from"),
        (format!(r#"no-pty="x" {ED25519}"#), "no-pty"),
        (format!(r#"command="a",command="b" {ED25519}"#), "command"),
        (format!(r#"from="10.0.0.1/8" {ED25519}"#), "from"),
        (format!(r#"from="10.0.0.0/8,,1.2.3.4" {ED25519}"#), "from"),
        (format!(r#"command="a"x {ED25519}"#), "command"),
    ] {
        assert!(
            matches!(line_err(&line), KeyError::BadOption { name: ref n, .. } if n == name),
            "{line}: {:?}",
            line_err(&line)
        );
    }
    assert!(matches!(
        line_err(&format!("restrict, {ED25519}")),
        KeyError::BadOption { .. }
    ));
    assert_eq!(line_err("restrict,no-pty"), KeyError::MissingKey);
    assert_eq!(line_err("restrict "), KeyError::MissingKey);
}

#[test]
fn bad_lines_are_reported_good_lines_load() {
    let text = format!(
        "{ED25519}\nnot-a-key-at-all\nfrobnicate {RSA}\n# fine\n{}\nrestrict {}\nssh-rsa AAAA!!!\nexpiry-time=\"2020\" {ED25519}\n{ECDSA}\n",
        fake_key("ssh-dss"),
        fake_key("ssh-rsa-cert-v01@openssh.com"),
    );
    let parsed = parse_authorized_keys(&text);
    let good: Vec<_> = parsed.keys.iter().map(|k| k.line).collect();
    assert_eq!(good, [1, 9]);
    let errors: Vec<_> = parsed
        .errors
        .iter()
        .map(|e| (e.line, e.error.clone()))
        .collect();
    assert_eq!(
        errors[0],
        (2, KeyError::UnknownOption("not-a-key-at-all".into()))
    );
    assert_eq!(errors[1], (3, KeyError::UnknownOption("frobnicate".into())));
    assert_eq!(
        errors[2],
        (5, KeyError::UnsupportedAlgorithm("ssh-dss".into()))
    );
    assert!(matches!(
        errors[3],
        (6, KeyError::CertificateNotSupported(_))
    ));
    assert!(matches!(errors[4], (7, KeyError::BadBase64(_))));
    assert_eq!(errors[5], (8, KeyError::BadExpiry("2020".into())));
    assert_eq!(errors.len(), 6);
    assert!(parsed.errors[0]
        .to_string()
        .starts_with("line 2: unknown option"));
}

#[test]
fn from_cidr_wildcard_negation() {
    let o = opts(r#"from="10.0.0.0/8,192.168.1.?,!10.1.2.3,172.16.*.5""#);
    assert!(o.from_allows(v4(10, 9, 8, 7)));
    assert!(!o.from_allows(v4(10, 1, 2, 3)));
    assert!(o.from_allows(v4(192, 168, 1, 7)));
    assert!(!o.from_allows(v4(192, 168, 1, 70)));
    assert!(o.from_allows(v4(172, 16, 200, 5)));
    assert!(!o.from_allows(v4(11, 0, 0, 1)));
    // A negated match denies even when an earlier entry allowed.
    let o = opts(r#"from="*,!203.0.113.0/24""#);
    assert!(o.from_allows(v4(198, 51, 100, 1)));
    assert!(!o.from_allows(v4(203, 0, 113, 9)));
    // Hostname patterns never match an IP (no DNS); only-negative lists allow nothing.
    assert!(!opts(r#"from="*.example.com""#).from_allows(v4(1, 2, 3, 4)));
    assert!(!opts(r#"from="!10.0.0.1""#).from_allows(v4(1, 2, 3, 4)));
    assert!(KeyOptions::default().from_allows(v4(1, 2, 3, 4)));
}

#[test]
fn from_ipv6_and_v4_mapped() {
    let o = opts(r#"from="2001:db8::/32,::1,fe80::*""#);
    assert!(o.from_allows(v6("2001:db8:1::42")));
    assert!(o.from_allows(v6("0:0::1")));
    assert!(o.from_allows(v6("fe80::abcd")));
    assert!(o.from_allows(v6("FE80::ABCD")));
    assert!(!o.from_allows(v6("2001:db9::1")));
    assert!(!o.from_allows(v4(127, 0, 0, 1)));
    let o = opts(r#"from="10.0.0.0/8,!10.6.6.6""#);
    assert!(o.from_allows(v6("::ffff:10.1.2.3")));
    assert!(!o.from_allows(v6("::ffff:10.6.6.6")));
    assert!(!o.from_allows(v6("::ffff:11.1.2.3")));
    assert!(opts(r#"from="10.1.*""#).from_allows(v6("::ffff:10.1.2.3")));
}

#[test]
fn from_invalid_list_denies() {
    let o = KeyOptions {
        from: Some("10.0.0.0/8,10.0.0.1/8".into()),
        ..KeyOptions::default()
    };
    assert!(!o.from_allows(v4(10, 0, 0, 1)));
    let o = KeyOptions {
        from: Some("10.0.0.0/8,".into()),
        ..KeyOptions::default()
    };
    assert!(!o.from_allows(v4(10, 0, 0, 1)));
}

#[test]
fn wildcards() {
    assert!(wildcard_match("abc", "a*"));
    assert!(wildcard_match("abc", "*c"));
    assert!(wildcard_match("abc", "a?c"));
    assert!(wildcard_match("", "*"));
    assert!(wildcard_match("aXbXc", "a*b*c"));
    assert!(!wildcard_match("abc", "a?"));
    assert!(!wildcard_match("abc", "b*"));
    assert!(!wildcard_match("", "?"));
}

#[test]
fn expiry_time() {
    let o = opts(r#"expiry-time="20300101""#);
    assert_eq!(o.expiry, Some(utc(1_893_456_000)));
    assert!(!o.expired(utc(1_893_455_999)));
    assert!(o.expired(utc(1_893_456_000)));
    assert!(o.expired(utc(1_893_456_001)));
    assert_eq!(
        opts(r#"expiry-time="202501011230Z""#).expiry,
        Some(utc(1_735_734_600))
    );
    assert_eq!(
        opts(r#"expiry-time="20240229235959""#).expiry,
        Some(utc(1_709_251_199))
    );
    assert_eq!(opts(r#"expiry-time="19700101""#).expiry, Some(UNIX_EPOCH));
    assert_eq!(
        opts(r#"expiry-time="19691231235959""#).expiry,
        UNIX_EPOCH.checked_sub(Duration::from_secs(1))
    );
    // Past expiry: parsed fine, reported expired.
    assert!(opts(r#"expiry-time="20200101""#).expired(SystemTime::now()));
    assert!(!opts(r#"expiry-time="99991231""#).expired(SystemTime::now()));
    assert!(!KeyOptions::default().expired(SystemTime::now()));
    // The earliest of several wins.
    let o = opts(r#"expiry-time="20300101",expiry-time="20250101""#);
    assert_eq!(o.expiry, Some(utc(1_735_689_600)));
    for bad in [
        "2030010",
        "203001011",
        "20231301",
        "20230229",
        "20230100",
        "202301012400",
        "202301012360",
        "20230101235960",
        "2023-01-01",
        "20230101ZZ",
        "",
    ] {
        assert_eq!(
            line_err(&format!("expiry-time=\"{bad}\" {ED25519}")),
            KeyError::BadExpiry(bad.into()),
            "{bad}"
        );
    }
}

#[test]
fn permitopen() {
    let o =
        opts(r#"permitopen="DB.internal:5432",permitopen="[2001:db8::1]:*",permitopen="[::1]:22""#);
    assert_eq!(
        o.permitopen[1],
        PermitOpen {
            host: "2001:db8::1".into(),
            port: None
        }
    );
    assert!(o.permits_open("db.internal", 5432));
    assert!(o.permits_open("DB.INTERNAL", 5432));
    assert!(!o.permits_open("db.internal", 5433));
    assert!(!o.permits_open("db", 5432));
    assert!(o.permits_open("2001:db8::1", 1));
    assert!(o.permits_open("2001:DB8::1", 65535));
    assert!(o.permits_open("::1", 22));
    assert!(o.permits_open("[::1]", 22));
    assert!(!o.permits_open("::1", 23));
    let any = opts(r#"permitopen="host:*""#);
    assert!(any.permits_open("host", 1) && any.permits_open("HOST", 8080));
    assert!(KeyOptions::default().permits_open("anything", 1));
    for bad in [
        "host",
        ":22",
        "host:",
        "host:0",
        "host:65536",
        "host:+1",
        "host:x",
        "[::1",
        "[::1]22",
        "[]:22",
        "::1:22",
    ] {
        assert!(
            matches!(line_err(&format!("permitopen=\"{bad}\" {ED25519}")), KeyError::BadPermitOpen { ref value, .. } if value == bad),
            "{bad}"
        );
    }
}

#[test]
fn login_names() {
    for ok in [
        "alice",
        "alice@example.com",
        "bob+ops",
        "a",
        "svc_deploy-1",
        "x=y,z",
        "a.b",
        &"a".repeat(64),
    ] {
        assert_eq!(validate_login(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        ".hidden",
        "-rf",
        "a b",
        "naïve",
        "a\0b",
        &"a".repeat(65),
    ] {
        let err = validate_login(bad).unwrap_err();
        assert!(!err.to_string().is_empty(), "{bad}");
    }
    assert!(validate_login("a/b")
        .unwrap_err()
        .to_string()
        .contains("'/'"));
    assert!(validate_login(&"a".repeat(65))
        .unwrap_err()
        .to_string()
        .contains("64"));
}
