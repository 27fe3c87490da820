//! The eic source as a [`KeySource`]: the decision for one (login, key) from the verified
//! records of [`EicSource`], and the audit fields it adds (`eic_instance`, `eic_expires`…).

use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use futures::FutureExt as _;

use super::{validate_os_user, EicAuth, EicSource};
use crate::keys::authorized_keys::{KeyOptions, PublicKeyBlob};
use crate::keys::{Answer, Authorized, BuildError, KeyDetail, KeySource, Lookup, Query};

/// Builds the source of a `type = "eic"` entry: reads its trust anchors.
pub(crate) fn from_config(c: &EicAuth) -> Result<Arc<dyn KeySource>, BuildError> {
    match EicSource::from_config(c) {
        Ok(src) => Ok(Arc::new(src)),
        Err(e) => Err(("ca_bundle", e.to_string())),
    }
}

impl KeySource for EicSource {
    fn kind(&self) -> &'static str {
        "eic"
    }

    fn describe(&self) -> String {
        format!(
            "eic: keys pushed with EC2 Instance Connect, read from the instance metadata service, {} trust anchors",
            self.anchors()
        )
    }

    fn answer<'a>(&'a self, q: Query<'a>) -> BoxFuture<'a, Answer> {
        decide(self, q.login, q.key, q.fingerprint).boxed()
    }
}

/// The eic source's decision: a verified record for this login holding this key.
async fn decide(src: &EicSource, login: &str, key: &PublicKeyBlob, fingerprint: &str) -> Answer {
    if validate_os_user(login).is_err() {
        // Not a name EC2 Instance Connect could have stored: no IMDS request.
        return Answer::Unknown;
    }
    let found = match src.keys_for(login, SystemTime::now()).await {
        Ok(f) => f,
        Err(failure) => {
            return Answer::Failed(format!("eic: {}; refusing (fail closed)", failure.reason))
        }
    };
    let deny = |reason: String, kind: &'static str, audit: KeyDetail| {
        Answer::Decided(Lookup::Denied {
            reason,
            principal: Some(login.to_string()),
            audit,
            source: Some("eic"),
            kind,
        })
    };
    let instance = KeyDetail {
        eic_instance: Some(found.instance_id.clone()),
        ..KeyDetail::default()
    };
    if let Some(ok) = found.accepted.iter().find(|a| a.key.blob == key.blob) {
        let r = &ok.record;
        let audit = KeyDetail {
            eic_expires: Some(humantime::format_rfc3339_seconds(r.expires).to_string()),
            eic_signer: found.signer.clone(),
            eic_caller: r.caller.clone(),
            eic_request: r.request.clone(),
            ..instance
        };
        return Answer::Decided(Lookup::Authorized(Authorized {
            user: login.to_string(),
            source: "eic".to_string(),
            options: KeyOptions::default(),
            groups: Vec::new(),
            audit,
        }));
    }
    let same_key = |line: &Option<String>| {
        line.as_deref()
            .and_then(|l| PublicKeyBlob::from_openssh(l).ok())
            .is_some_and(|k| k.blob == key.blob)
    };
    if let Some((_, why)) = found.rejected.iter().find(|(line, _)| same_key(line)) {
        return deny(
            format!(
                "eic: the EC2 Instance Connect record for key {fingerprint} was rejected: {why}"
            ),
            "key_restricted",
            instance,
        );
    }
    let total = found.accepted.len() + found.rejected.len();
    if total == 0 {
        return deny(
            format!(
                "eic: no EC2 Instance Connect key was pushed for {login} to this instance ({}) in the last 60 s",
                found.instance_id
            ),
            "unknown_login",
            instance,
        );
    }
    let mut reason = format!(
        "eic: key {fingerprint} is not among the {total} EC2 Instance Connect keys pushed for {login}"
    );
    if !found.rejected.is_empty() {
        let whys: Vec<&str> = found.rejected.iter().map(|(_, w)| w.as_str()).collect();
        reason.push_str(&format!(" ({} rejected: {})", whys.len(), whys.join("; ")));
    }
    deny(reason, "key_not_authorized", instance)
}
