//! Unit tests of the EIC verification, on the fixtures in `keys/testdata/eic/`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use der::asn1::AnyRef;
use der::Tag;

use super::ocsp::generalized_time;
use super::x509::Cert;
use super::*;

const CN: &str = "managed-ssh-signer.us-east-1.amazonaws.com";
const BUNDLE: &str = include_str!("../testdata/eic/bundle.pem");
const RECORDS: &str = include_str!("../testdata/eic/records.txt");
const RECORDS_EXPECT: &str = include_str!("../testdata/eic/records.expect");
const CALLER: &str = "arn:aws:iam::123456789012:user/bastion-e2e";
const REQUEST: &str = "0c4e2112-8e87-4894-bc09-3881fb7e0ded";
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);

macro_rules! chain_fixture {
    ($($kind:literal),*) => {
        fn fixture(kind: &str) -> (&'static str, &'static str) {
            match kind {
                $($kind => (
                    include_str!(concat!("../testdata/eic/chain_", $kind, ".pem")),
                    include_str!(concat!("../testdata/eic/chain_", $kind, ".staples")),
                ),)*
                other => panic!("no fixture {other}"),
            }
        }
    };
}
chain_fixture!(
    "good",
    "wrong_cn",
    "revoked_signer",
    "revoked_intermediate",
    "untrusted_root",
    "missing_staple",
    "missing_intermediate_staple",
    "stale_staple",
    "ecdsa",
    "sha1",
    "pathlen",
    "not_ca"
);

fn now() -> SystemTime {
    let secs: u64 = include_str!("../testdata/eic/now.txt")
        .trim()
        .parse()
        .unwrap();
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn instance() -> &'static str {
    include_str!("../testdata/eic/instance.txt").trim()
}

fn anchors() -> Anchors {
    Anchors::from_pem(BUNDLE).unwrap()
}

fn certs(kind: &str) -> Vec<Vec<u8>> {
    parse_chain_pem(fixture(kind).0).unwrap()
}

fn staples(kind: &str) -> HashMap<String, Vec<u8>> {
    fixture(kind)
        .1
        .lines()
        .map(|l| {
            let (name, b64) = l.split_once(' ').unwrap();
            (name.to_string(), BASE64.decode(b64).unwrap())
        })
        .collect()
}

fn verify_at(kind: &str, t: SystemTime) -> Result<SignerKey, ChainError> {
    verify_signer(&certs(kind), &staples(kind), &anchors(), CN, t)
}

fn err(r: Result<SignerKey, ChainError>) -> ChainError {
    r.expect_err("the chain must be refused")
}

fn pem_of(der: &[u8]) -> String {
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        BASE64.encode(der)
    )
}

fn good_signer() -> SignerKey {
    verify_at("good", now()).unwrap()
}

fn fixture_records() -> Vec<(RawRecord, &'static str)> {
    let recs = parse_records(RECORDS);
    let expect: Vec<&str> = RECORDS_EXPECT.lines().collect();
    assert_eq!(
        recs.len(),
        expect.len(),
        "records.txt and records.expect disagree"
    );
    recs.into_iter().zip(expect).collect()
}

// ---- chains ---------------------------------------------------------------------------

#[test]
fn good_chain_verifies() {
    let key = good_signer();
    assert_eq!(key.fingerprint(), staple_name(&certs("good")[0]));
    assert_eq!(anchors().len(), 1);
}

#[test]
fn each_chain_fault_has_its_kind() {
    for (kind, expect) in [
        ("wrong_cn", "wrong_cn"),
        ("revoked_signer", "revoked"),
        ("revoked_intermediate", "revoked"),
        ("untrusted_root", "untrusted_chain"),
        ("missing_staple", "missing_staple"),
        ("missing_intermediate_staple", "missing_staple"),
        ("stale_staple", "stale_staple"),
        ("sha1", "unsupported_algorithm"),
    ] {
        let e = err(verify_at(kind, now()));
        assert_eq!(e.kind(), expect, "{kind}: {e}");
    }
}

#[test]
fn chain_fault_messages_are_specific() {
    let int = "certificate 1 (CN=EIC Test Intermediate CA)";
    let signer = format!("certificate 0 (CN={CN})");
    assert_eq!(
        err(verify_at("wrong_cn", now())).to_string(),
        format!(
            "signer certificate CN is managed-ssh-signer.us-west-2.amazonaws.com, expected {CN}"
        )
    );
    // The staple was made a moment after `now`; its revocation time is 2 h before that.
    let revoked = err(verify_at("revoked_signer", now())).to_string();
    let prefix = format!("{signer} is revoked according to its OCSP staple (revoked at ");
    let at = revoked
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{revoked}"));
    let lo = rfc3339(now() - 2 * HOUR);
    let hi = rfc3339(now() - 2 * HOUR + Duration::from_secs(60));
    assert!(lo.as_str() <= at && at <= hi.as_str(), "{revoked}");
    assert!(err(verify_at("revoked_intermediate", now()))
        .to_string()
        .starts_with(&format!("{int} is revoked according to its OCSP staple")));
    assert_eq!(
        err(verify_at("untrusted_root", now())).to_string(),
        "the chain does not end at a trusted anchor: certificate 2 (CN=EIC Test Root CA) is not signed by any certificate in the trust bundle"
    );
    let name0 = staple_name(&certs("good")[0]);
    assert_eq!(
        err(verify_at("missing_staple", now())).to_string(),
        format!("no OCSP staple for {signer}; looked for {name0}")
    );
    let name1 = staple_name(&certs("good")[1]);
    assert_eq!(
        err(verify_at("missing_intermediate_staple", now())).to_string(),
        format!("no OCSP staple for {int}; looked for {name1}")
    );
    let stale = err(verify_at("stale_staple", now())).to_string();
    assert!(
        stale.starts_with(&format!("OCSP staple for {signer} is stale: nextUpdate ")),
        "{stale}"
    );
    assert!(stale.ends_with(" is in the past"), "{stale}");
    let sha1 = err(verify_at("sha1", now())).to_string();
    assert_eq!(
        sha1,
        format!("{signer} is signed with SHA-1, which is refused")
    );
}

#[test]
fn good_chain_with_another_expected_cn_is_wrong_cn() {
    let e = err(verify_signer(
        &certs("good"),
        &staples("good"),
        &anchors(),
        "managed-ssh-signer.eu-west-1.amazonaws.com",
        now(),
    ));
    assert_eq!(e.kind(), "wrong_cn");
    assert_eq!(
        e.to_string(),
        format!(
            "signer certificate CN is {CN}, expected managed-ssh-signer.eu-west-1.amazonaws.com"
        )
    );
    // Not a suffix or prefix match.
    let e = err(verify_signer(
        &certs("good"),
        &staples("good"),
        &anchors(),
        &CN[1..],
        now(),
    ));
    assert_eq!(e.kind(), "wrong_cn");
}

#[test]
fn served_root_is_never_an_anchor() {
    // The untrusted chain's own root, served, with its own (valid) staples: still refused.
    let forged = certs("untrusted_root");
    assert_eq!(
        err(verify_signer(
            &forged,
            &staples("untrusted_root"),
            &anchors(),
            CN,
            now()
        ))
        .kind(),
        "untrusted_chain"
    );
    // The genuine chain against a bundle holding the forged root (same name, other key).
    let other = Anchors::from_pem(&pem_of(&forged[2])).unwrap();
    let e = err(verify_signer(
        &certs("good"),
        &staples("good"),
        &other,
        CN,
        now(),
    ));
    assert_eq!(e.kind(), "untrusted_chain", "{e}");
    // A forged intermediate (same name as the genuine one) under the genuine root is no better.
    let mixed = vec![
        forged[0].clone(),
        forged[1].clone(),
        certs("good")[2].clone(),
    ];
    let e = err(verify_signer(
        &mixed,
        &staples("untrusted_root"),
        &anchors(),
        CN,
        now(),
    ));
    assert_eq!(e.kind(), "untrusted_chain", "{e}");
}

#[test]
fn chain_without_the_root_still_needs_the_intermediate_staple() {
    let two = certs("good")[..2].to_vec();
    verify_signer(&two, &staples("good"), &anchors(), CN, now()).unwrap();
    let e = err(verify_signer(
        &two,
        &staples("missing_intermediate_staple"),
        &anchors(),
        CN,
        now(),
    ));
    assert_eq!(e.kind(), "missing_staple");
    let e = err(verify_signer(
        &two,
        &staples("revoked_intermediate"),
        &anchors(),
        CN,
        now(),
    ));
    assert_eq!(e.kind(), "revoked");
}

#[test]
fn walk_stops_at_an_anchor_in_the_middle() {
    // The intermediate as the only anchor: only the signer's staple is needed.
    let c = certs("good");
    let a = Anchors::from_pem(&pem_of(&c[1])).unwrap();
    verify_signer(&c, &staples("missing_intermediate_staple"), &a, CN, now()).unwrap();
    verify_signer(
        &c[..1],
        &staples("missing_intermediate_staple"),
        &a,
        CN,
        now(),
    )
    .unwrap();
    // ...and the intermediate's revocation is then not looked at.
    verify_signer(&c, &staples("revoked_intermediate"), &a, CN, now()).unwrap();
    assert_eq!(
        err(verify_signer(&c, &staples("missing_staple"), &a, CN, now())).kind(),
        "missing_staple"
    );
    // A signer pinned in the bundle is trusted as is (no staple needed).
    let pinned = Anchors::from_pem(&pem_of(&c[0])).unwrap();
    verify_signer(&c[..1], &HashMap::new(), &pinned, CN, now()).unwrap();
}

#[test]
fn bundle_with_several_anchors_and_comments() {
    let forged_root = pem_of(&certs("untrusted_root")[2]);
    let bundle = format!(
        "# EIC Test Root CA (forged)\n{forged_root}\n# EIC Test Root CA\r\n{}",
        BUNDLE.replace('\n', "\r\n")
    );
    let a = Anchors::from_pem(&bundle).unwrap();
    assert_eq!(a.len(), 2);
    // Both anchors have the issuer's name; the one whose key verifies is used.
    verify_signer(&certs("good"), &staples("good"), &a, CN, now()).unwrap();
}

#[test]
fn broken_chains_are_refused() {
    let c = certs("good");
    let s = staples("good");
    let e = err(verify_signer(&[], &s, &anchors(), CN, now()));
    assert_eq!(e.kind(), "malformed");
    let e = err(verify_signer(&c[..1], &s, &anchors(), CN, now()));
    assert_eq!(e.kind(), "untrusted_chain");
    assert!(e.to_string().contains("certificate 0 (CN=managed-ssh-signer.us-east-1.amazonaws.com) is not signed by any certificate"), "{e}");
    let swapped = vec![c[0].clone(), c[2].clone(), c[1].clone()];
    let e = err(verify_signer(&swapped, &s, &anchors(), CN, now()));
    assert_eq!(e.kind(), "untrusted_chain");
    assert!(e.to_string().starts_with("certificate 0 (CN=managed-ssh-signer.us-east-1.amazonaws.com) names issuer CN=EIC Test Intermediate CA, but the next one is certificate 1 (CN=EIC Test Root CA)"), "{e}");
    let mut garbage = c.clone();
    garbage[1] = b"\x30\x03\x02\x01\x01".to_vec();
    assert_eq!(
        err(verify_signer(&garbage, &s, &anchors(), CN, now())).kind(),
        "malformed"
    );
    let mut truncated = c.clone();
    truncated[0].pop();
    assert_eq!(
        err(verify_signer(&truncated, &s, &anchors(), CN, now())).kind(),
        "malformed"
    );
    let mut trailing = c.clone();
    trailing[0].push(0);
    assert_eq!(
        err(verify_signer(&trailing, &s, &anchors(), CN, now())).kind(),
        "malformed"
    );
    // A bit flipped inside the signer's TBS: its signature no longer verifies.
    let mut flipped = c.clone();
    let at = flipped[0].len() / 3;
    flipped[0][at] ^= 0x01;
    let e = err(verify_signer(&flipped, &s, &anchors(), CN, now()));
    assert_eq!(e.kind(), "untrusted_chain");
    assert!(e.to_string().ends_with("is not signed by certificate 1 (CN=EIC Test Intermediate CA): the signature does not verify"), "{e}");
    let too_long: Vec<Vec<u8>> = std::iter::repeat_n(c[0].clone(), MAX_CHAIN_LEN + 1).collect();
    assert_eq!(
        err(verify_signer(&too_long, &s, &anchors(), CN, now())).kind(),
        "malformed"
    );
}

#[test]
fn a_signer_used_as_issuer_is_not_a_ca() {
    // signer -> signer: names do not chain; the signer is not a CA either way.
    let c = certs("good");
    let e = err(verify_signer(
        &[c[0].clone(), c[0].clone()],
        &staples("good"),
        &anchors(),
        CN,
        now(),
    ));
    assert_eq!(e.kind(), "untrusted_chain");
}

#[test]
fn issuers_must_be_cas_within_their_path_length() {
    // The genuine intermediate has pathlen:0; here a sub CA sits below it.
    let e = err(verify_at("pathlen", now()));
    assert_eq!(e.kind(), "untrusted_chain");
    assert_eq!(
        e.to_string(),
        "certificate 2 (CN=EIC Test Intermediate CA) has pathLenConstraint 0 but 1 intermediate certificate(s) below it"
    );
    // ...also when the intermediate is the anchor.
    let c = certs("pathlen");
    let a = Anchors::from_pem(&pem_of(&c[2])).unwrap();
    let e = err(verify_signer(&c, &staples("pathlen"), &a, CN, now()));
    assert!(e.to_string().starts_with("trust anchor (CN=EIC Test Intermediate CA) that issued certificate 1 (CN=EIC Test Sub CA) has pathLenConstraint 0"), "{e}");
    // The genuine signer (cA false) used as an issuer.
    let e = err(verify_at("not_ca", now()));
    assert_eq!(e.kind(), "untrusted_chain");
    assert_eq!(
        e.to_string(),
        format!("certificate 1 (CN={CN}) is not a CA: its basicConstraints say cA false")
    );
}

#[test]
fn pinned_signer_is_still_checked_for_dates() {
    let c = certs("good");
    let pinned = Anchors::from_pem(&pem_of(&c[0])).unwrap();
    let e = err(verify_signer(
        &c[..1],
        &HashMap::new(),
        &pinned,
        CN,
        now() + 31 * DAY,
    ));
    assert_eq!(e.kind(), "cert_expired");
}

#[test]
fn far_times_do_not_panic() {
    let far = UNIX_EPOCH + Duration::from_secs(1 << 40);
    assert_eq!(err(verify_at("good", far)).kind(), "cert_expired");
    assert_eq!(
        err(verify_at("good", UNIX_EPOCH)).kind(),
        "cert_not_yet_valid"
    );
    let (rec, _) = &fixture_records()[0];
    assert_eq!(
        verify_record(rec, &good_signer(), instance(), far)
            .unwrap_err()
            .kind(),
        "expired"
    );
}

#[test]
fn ecdsa_issuers_are_supported() {
    let a = Anchors::from_pem(include_str!("../testdata/eic/bundle_ecdsa.pem")).unwrap();
    let key = verify_signer(&certs("ecdsa"), &staples("ecdsa"), &a, CN, now()).unwrap();
    // Same signer key as the genuine chain: the good record verifies with it.
    let (rec, _) = &fixture_records()[0];
    verify_record(rec, &key, instance(), now()).unwrap();
    // ...and this chain does not verify against the RSA bundle.
    assert_eq!(err(verify_at("ecdsa", now())).kind(), "untrusted_chain");
}

// ---- time -----------------------------------------------------------------------------

#[test]
fn certificate_validity_uses_now() {
    let e = err(verify_at("good", now() + 31 * DAY));
    assert_eq!(e.kind(), "cert_expired", "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("certificate 0 (CN={CN}) expired at ")),
        "{e}"
    );
    let e = err(verify_at("good", now() - 2 * DAY));
    assert_eq!(e.kind(), "cert_not_yet_valid", "{e}");
}

#[test]
fn staple_window_with_skew() {
    // Staples: thisUpdate = generation - 1 h, nextUpdate = generation + 1 day.
    verify_at("good", now() + DAY + Duration::from_secs(4 * 60)).unwrap();
    let e = err(verify_at("good", now() + DAY + Duration::from_secs(6 * 60)));
    assert_eq!(e.kind(), "stale_staple", "{e}");
    assert!(e.to_string().contains("is stale: nextUpdate"), "{e}");
    verify_at("good", now() - HOUR - Duration::from_secs(4 * 60)).unwrap();
    let e = err(verify_at(
        "good",
        now() - HOUR - Duration::from_secs(6 * 60),
    ));
    assert_eq!(e.kind(), "stale_staple", "{e}");
    assert!(
        e.to_string().contains("is not valid yet: thisUpdate"),
        "{e}"
    );
}

// ---- staples --------------------------------------------------------------------------

#[test]
fn staple_names_are_sha1_fingerprints() {
    let c = certs("good");
    let mut names: Vec<String> = staples("good").into_keys().collect();
    names.sort();
    let mut ours = vec![staple_name(&c[0]), staple_name(&c[1])];
    ours.sort();
    assert_eq!(names, ours);
    assert!(ours.iter().all(|n| n.len() == 40
        && n.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())));
}

#[test]
fn wrong_or_broken_staples_are_bad_staples() {
    let c = certs("good");
    let (n0, n1) = (staple_name(&c[0]), staple_name(&c[1]));
    let good = staples("good");
    let with = |der: Vec<u8>| {
        let mut s = good.clone();
        s.insert(n0.clone(), der);
        verify_signer(&c, &s, &anchors(), CN, now())
    };
    // The intermediate's staple (signed by the root, about the intermediate) under the signer's name.
    let e = err(with(good[&n1].clone()));
    assert_eq!(e.kind(), "bad_staple", "{e}");
    // A staple about the forged signer, signed by the forged intermediate.
    let forged = staples("untrusted_root");
    let forged_signer = staple_name(&certs("untrusted_root")[0]);
    let e = err(with(forged[&forged_signer].clone()));
    assert_eq!(e.kind(), "bad_staple", "{e}");
    assert!(
        e.to_string()
            .contains("is not signed by its issuer, certificate 1 (CN=EIC Test Intermediate CA)"),
        "{e}"
    );
    // wrong_cn's signer staple: signed by the genuine intermediate but about another serial.
    let wrong = staples("wrong_cn");
    let wrong_name = staple_name(&certs("wrong_cn")[0]);
    let e = err(with(wrong[&wrong_name].clone()));
    assert_eq!(e.kind(), "bad_staple", "{e}");
    assert!(e.to_string().contains("does not cover it"), "{e}");
    // Garbage, truncation, a flipped bit in the signed data.
    assert_eq!(err(with(b"not der".to_vec())).kind(), "bad_staple");
    let mut cut = good[&n0].clone();
    cut.truncate(cut.len() - 10);
    assert_eq!(err(with(cut)).kind(), "bad_staple");
    let mut flipped = good[&n0].clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x01;
    assert_eq!(err(with(flipped)).kind(), "bad_staple");
    // OCSPResponse with status tryLater (3) and no body.
    assert_eq!(
        err(with(vec![0x30, 0x03, 0x0a, 0x01, 0x03])).kind(),
        "bad_staple"
    );
}

#[test]
fn generalized_times() {
    let t = |s: &[u8]| generalized_time(&AnyRef::new(Tag::GeneralizedTime, s).unwrap());
    assert_eq!(
        t(b"19700101000001Z").unwrap(),
        UNIX_EPOCH + Duration::from_secs(1)
    );
    assert_eq!(
        t(b"20260101000000.123Z").unwrap(),
        UNIX_EPOCH + Duration::from_secs(1_767_225_600)
    );
    for bad in [
        &b"20260101000000"[..],
        b"2026010100000Z",
        b"20260101000000.Z",
        b"20261301000000Z",
        b"2026010100000aZ",
        b"20260101000000+0100",
    ] {
        assert!(t(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    assert!(generalized_time(&AnyRef::new(Tag::UtcTime, b"260101000000Z").unwrap()).is_err());
}

// ---- PEM, names -----------------------------------------------------------------------

#[test]
fn chain_pem_parsing() {
    assert_eq!(certs("good").len(), 3);
    let good = fixture("good").0;
    assert_eq!(
        parse_chain_pem(&good.replace('\n', "\r\n")).unwrap().len(),
        3
    );
    for bad in [
        String::new(),
        "\n\n".to_string(),
        "garbage".to_string(),
        format!("junk\n{good}"),
        good.replacen("MII", "M!I", 1),
        good.replacen("-----END CERTIFICATE-----", "", 1),
        good.replacen("CERTIFICATE", "PRIVATE KEY", 1),
    ] {
        let e = parse_chain_pem(&bad).unwrap_err();
        assert_eq!(e.kind(), "malformed", "{e}");
    }
    assert!(Anchors::from_pem("").is_err());
    assert!(Anchors::from_pem("# only a comment\n").is_err());
    assert!(Anchors::from_pem(&pem_of(b"\x30\x00")).is_err());
}

#[test]
fn regions_and_names() {
    assert_eq!(region_from_az("us-east-1a").unwrap(), "us-east-1");
    assert_eq!(region_from_az("us-gov-west-1a").unwrap(), "us-gov-west-1");
    assert_eq!(region_from_az("ap-southeast-2c").unwrap(), "ap-southeast-2");
    for bad in [
        "",
        "us-east-1",
        "us-east-1ab",
        "us-east-12a",
        "useast-1a",
        "US-east-1a",
        "us--1a",
        "a-b-c-d-1a",
        "us-east-1a\n",
        "us-east-1-bos-1a",
        "-east-1a",
    ] {
        assert!(region_from_az(bad).is_err(), "{bad:?}");
    }
    assert_eq!(expected_signer_cn("us-east-1", "amazonaws.com"), CN);
}

#[test]
fn served_text_is_escaped_in_messages() {
    assert_eq!(clean("a\nb\r\u{7}c"), "a\\nb\\r\\u{7}c");
    assert_eq!(clean(&"x".repeat(300)).chars().count(), 201);
}

// ---- records --------------------------------------------------------------------------

#[test]
fn each_record_fault_has_its_kind() {
    let key = good_signer();
    for (n, (rec, expect)) in fixture_records().into_iter().enumerate() {
        match verify_record(&rec, &key, instance(), now()) {
            Ok(v) => {
                assert_eq!(expect, "ok", "record {n} verified");
                assert_eq!(v.caller.as_deref(), Some(CALLER));
            }
            Err(e) => assert_eq!(e.kind(), expect, "record {n}: {e}"),
        }
    }
}

#[test]
fn good_record_returns_its_fields() {
    let recs = fixture_records();
    let (rec, _) = &recs[0];
    let v = verify_record(rec, &good_signer(), instance(), now()).unwrap();
    assert_eq!(v.key_line, rec.key_line);
    assert!(v.key_line.starts_with("ssh-ed25519 AAAA") && v.key_line.ends_with(" user0@example"));
    assert_eq!(v.expires, now() + Duration::from_secs(60));
    assert_eq!(v.caller.as_deref(), Some(CALLER));
    assert_eq!(v.request.as_deref(), Some(REQUEST));
    // The wrapped one and the one with an extra field.
    assert!(recs[7].0.signature_b64.len() > 76 && RECORDS.lines().any(|l| l.len() == 76));
    assert_eq!(
        recs[8].0.fields.last().unwrap(),
        &(
            "Extra".to_string(),
            "unknown=field, signed over".to_string()
        )
    );
    assert!(verify_record(&recs[8].0, &good_signer(), instance(), now()).is_ok());
}

#[test]
fn record_error_messages() {
    let key = good_signer();
    let recs = fixture_records();
    let msg = |n: usize| {
        verify_record(&recs[n].0, &key, instance(), now())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        msg(1),
        format!(
            "record expired at {}",
            rfc3339(now() - Duration::from_secs(10))
        )
    );
    assert_eq!(
        msg(2),
        format!(
            "record is for instance i-0fedcba9876543210, this is {}",
            instance()
        )
    );
    assert!(msg(3).starts_with("signature does not verify"));
    assert_eq!(msg(4), "signature is not base64");
    assert_eq!(msg(5), "record has no #Timestamp= field");
    assert_eq!(msg(6), "record has no #Instance= field");
    assert_eq!(msg(10), "#Timestamp= is not a non-zero integer: \"0\"");
    assert_eq!(msg(13), "record has more than one #Instance= field");
}

#[test]
fn record_expiry_is_strict_in_whole_seconds() {
    let (rec, _) = &fixture_records()[0];
    let key = good_signer();
    let ts = now() + Duration::from_secs(60);
    assert!(verify_record(rec, &key, instance(), ts - Duration::from_secs(1)).is_ok());
    assert!(verify_record(rec, &key, instance(), ts - Duration::from_millis(1)).is_ok());
    assert_eq!(
        verify_record(rec, &key, instance(), ts).unwrap_err().kind(),
        "expired"
    );
    assert_eq!(
        verify_record(rec, &key, instance(), ts + Duration::from_millis(500))
            .unwrap_err()
            .kind(),
        "expired"
    );
}

#[test]
fn record_checks_its_instance_and_signer() {
    let (rec, _) = &fixture_records()[0];
    let e = verify_record(rec, &good_signer(), "i-0fedcba9876543210", now()).unwrap_err();
    assert_eq!(e.kind(), "wrong_instance");
    // The wrong_cn chain's signer (another key) does not verify the genuine records.
    let other = SignerKey::from_cert(&Cert::parse(&certs("wrong_cn")[0]).unwrap()).unwrap();
    assert_eq!(
        verify_record(rec, &other, instance(), now())
            .unwrap_err()
            .kind(),
        "bad_signature"
    );
}

#[test]
fn every_signed_line_is_covered() {
    let key = good_signer();
    let recs = fixture_records();
    let tamper = |n: usize, f: &dyn Fn(&mut RawRecord)| {
        let mut r = recs[n].0.clone();
        f(&mut r);
        verify_record(&r, &key, instance(), now())
            .unwrap_err()
            .kind()
    };
    assert_eq!(tamper(0, &|r| r.key_line.push('x')), "bad_signature");
    assert_eq!(tamper(0, &|r| r.field_lines[2].push('x')), "bad_signature");
    assert_eq!(
        tamper(8, &|r| {
            r.field_lines.pop();
        }),
        "bad_signature"
    );
    assert_eq!(tamper(0, &|r| r.field_lines.swap(0, 1)), "bad_signature");
    assert_eq!(
        tamper(0, &|r| r.field_lines.push("#Note=x".into())),
        "bad_signature"
    );
    assert_eq!(
        tamper(0, &|r| r.signature_b64.clear()),
        "malformed_signature"
    );
    assert_eq!(
        tamper(0, &|r| r.signature_b64.push('\r')),
        "malformed_signature"
    );
    assert_eq!(
        tamper(0, &|r| {
            r.signature_b64.pop();
        }),
        "malformed_signature"
    );
}

#[test]
fn records_are_split_like_aws_does() {
    assert!(parse_records("").is_empty());
    // Blank-line separation, several blank lines, padding trimmed (spaces and tabs only).
    let body = "#A=1\n#B=x=y\nssh-ed25519 K1 c\nSIG1\n\n\n \t#A=2\t\n  ssh-rsa K2\nSI\nG2 \n";
    let r = parse_records(body);
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[0].fields,
        vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
    );
    assert_eq!(
        r[0].field_lines,
        vec!["#A=1".to_string(), "#B=x=y".to_string()]
    );
    assert_eq!(
        (r[0].key_line.as_str(), r[0].signature_b64.as_str()),
        ("ssh-ed25519 K1 c", "SIG1")
    );
    assert_eq!(r[1].field_lines, vec!["#A=2".to_string()]);
    assert_eq!(
        (r[1].key_line.as_str(), r[1].signature_b64.as_str()),
        ("ssh-rsa K2", "SIG2")
    );
    assert_eq!(r[0].signed_bytes(), b"#A=1\n#B=x=y\nssh-ed25519 K1 c\n");
    // \r is part of the line.
    let r = parse_records("#A=1\r\nssh-ed25519 K\r\nSIG\r\n");
    assert_eq!(r[0].field_lines, vec!["#A=1\r".to_string()]);
    assert_eq!(r[0].fields, vec![("A".into(), "1\r".into())]);
    assert_eq!(
        (r[0].key_line.as_str(), r[0].signature_b64.as_str()),
        ("ssh-ed25519 K\r", "SIG\r")
    );
    // A block whose first non-# line is not a key is skipped to the next blank line.
    let r = parse_records("#A=1\nnot-a-key\nssh-ed25519 HIDDEN\n\n#A=2\nssh-ed25519 K\nSIG\n");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].key_line, "ssh-ed25519 K");
    // Field lines that run into a blank line have no key.
    let r = parse_records("#A=1\n\nssh-ed25519 K\nSIG\n");
    assert_eq!(r.len(), 1);
    assert!(r[0].field_lines.is_empty());
    // A record without a blank line after it swallows what follows as signature lines.
    let r = parse_records("#A=1\nssh-ed25519 K\nSIG\n#A=2\nssh-ed25519 L\n");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].signature_b64, "SIG#A=2ssh-ed25519 L");
    // The last line without \n is lost.
    let r = parse_records("#A=1\nssh-ed25519 K\nSIG");
    assert_eq!(r[0].signature_b64, "");
    assert!(parse_records("#A=1\nssh-ed25519 K").is_empty());
    // # lines without '=' are signed but are no fields; "ssh" must start the key line.
    let r = parse_records("#comment\n#A=1\nssh-x K\nS\n\n#A=1\n ssh\tK\nS\n\n#A=1\nrsa-ssh K\nS\n");
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].field_lines.len(), 2);
    assert_eq!(r[0].fields.len(), 1);
    assert_eq!(r[1].key_line, "ssh\tK");
}

#[test]
fn fixture_body_has_wrapped_and_single_line_signatures() {
    let recs = fixture_records();
    assert_eq!(recs.len(), 14);
    // 256-byte RSA signatures: 344 base64 characters, one line or wrapped at 76.
    assert!(recs
        .iter()
        .filter(|(_, k)| *k != "malformed_signature")
        .all(|(r, _)| r.signature_b64.len() == 344));
}

#[test]
fn error_kinds_are_distinct_and_stable() {
    let c = [
        ChainError::Malformed(String::new()),
        ChainError::WrongCn(String::new()),
        ChainError::UntrustedChain(String::new()),
        ChainError::CertExpired(String::new()),
        ChainError::CertNotYetValid(String::new()),
        ChainError::UnsupportedAlgorithm(String::new()),
        ChainError::BadSignerKey(String::new()),
        ChainError::MissingStaple(String::new()),
        ChainError::BadStaple(String::new()),
        ChainError::StaleStaple(String::new()),
        ChainError::Revoked(String::new()),
    ];
    let mut kinds: Vec<&str> = c.iter().map(ChainError::kind).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds.len(), c.len());
    let r = [
        RecordError::MissingField(String::new()),
        RecordError::Malformed(String::new()),
        RecordError::WrongInstance(String::new()),
        RecordError::Expired(String::new()),
        RecordError::MalformedSignature(String::new()),
        RecordError::BadSignature(String::new()),
    ];
    let mut kinds: Vec<&str> = r.iter().map(RecordError::kind).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds.len(), r.len());
}
