//! The iam source as a [`KeySource`]: the decision for one (login, key) from the cached
//! answer of [`IamSource`], and the audit fields it adds (`iam_user`, `iam_arn`, `iam_cache`…).

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt as _;

use super::{
    iam_user_for_login, validate_user_name, Freshness, IamApi, IamAuth, IamSource, Record, SdkIam,
    Settings,
};
use crate::keys::authorized_keys::{KeyOptions, PublicKeyBlob};
use crate::keys::{Answer, Authorized, BuildError, KeyDetail, KeySource, Lookup, Query};

/// Builds the source of a `type = "iam"` entry (it cannot fail: the settings were checked
/// with the configuration); it is also kept in `iam_sources` for the metrics.
/// `want_groups`: the policy names groups, so ask for every user's groups.
pub(crate) fn from_config(
    c: &IamAuth,
    want_groups: bool,
    iam_sources: &mut Vec<Arc<IamSource<SdkIam>>>,
) -> Result<Arc<dyn KeySource>, BuildError> {
    let src = Arc::new(IamSource::new(
        SdkIam::new(c.assume_role_arn.clone(), c.timeout),
        Settings::from_config(c, want_groups),
    ));
    iam_sources.push(Arc::clone(&src));
    Ok(src)
}

impl<A: IamApi> KeySource for IamSource<A> {
    fn kind(&self) -> &'static str {
        "iam"
    }

    fn describe(&self) -> String {
        let s = self.settings();
        format!(
            "iam: {}, cache {} (stale up to {})",
            if s.groups.is_empty() {
                "any IAM user".to_string()
            } else {
                format!("members of {}", s.groups.join(", "))
            },
            humantime::format_duration(s.cache_ttl),
            humantime::format_duration(s.stale_ttl)
        )
    }

    fn answer<'a>(&'a self, q: Query<'a>) -> BoxFuture<'a, Answer> {
        decide(self, q.login, q.key, q.fingerprint).boxed()
    }
}

/// The iam source's decision: the IAM user the login names (widdix spellings
/// allowed), its Active keys compared by key material, its groups.
async fn decide<A: IamApi>(
    src: &IamSource<A>,
    login: &str,
    key: &PublicKeyBlob,
    fingerprint: &str,
) -> Answer {
    let name = iam_user_for_login(login);
    if let Err(why) = validate_user_name(&name) {
        // Not a name IAM could hold: no call is made.
        tracing::debug!(login, why = %why, "login is not an IAM user name");
        return Answer::Unknown;
    }
    let answer = match src.lookup(&name).await {
        Ok(a) => a,
        Err(outage) => {
            return Answer::Failed(format!(
                "iam: cannot check IAM user {name}: {outage}; refusing (fail closed)"
            ))
        }
    };
    let user = match &*answer.record {
        Record::NoSuchUser => return Answer::Unknown,
        Record::User(u) => u,
    };
    let mut audit = KeyDetail {
        iam_user: Some(user.name.clone()),
        iam_arn: Some(user.arn.clone()),
        iam_cache: Some(answer.freshness.word().to_string()),
        ..KeyDetail::default()
    };
    if let Freshness::Cached { age } | Freshness::Stale { age, .. } = &answer.freshness {
        audit.iam_cache_age_s = Some(age.as_secs());
    }
    let stale_note = match &answer.freshness {
        Freshness::Stale { why, .. } => {
            audit.iam_stale_reason = Some(why.clone());
            format!(" (from a stale cache: {why})")
        }
        _ => String::new(),
    };
    let deny = |reason: String, audit: KeyDetail| {
        Answer::Decided(Lookup::Denied {
            reason: format!("{reason}{stale_note}"),
            principal: Some(user.name.clone()),
            audit,
            source: Some("iam"),
            kind: "key_restricted",
        })
    };
    let required = &src.settings().groups;
    let Some(keys) = &user.keys else {
        return deny(
            format!(
                "IAM user {} is not in any of the groups {}",
                user.name,
                required.join(", ")
            ),
            audit,
        );
    };
    let matching = keys
        .iter()
        .find(|k| PublicKeyBlob::from_openssh(&k.body).is_ok_and(|parsed| parsed.blob == key.blob));
    match matching {
        None => deny(
            format!(
                "key {fingerprint} is not among IAM user {}'s SSH public keys ({} uploaded)",
                user.name,
                keys.len()
            ),
            audit,
        ),
        Some(k) if !k.active => {
            audit.iam_key_id = Some(k.id.clone());
            deny(
                format!(
                    "key {fingerprint} ({}) of IAM user {} is Inactive",
                    k.id, user.name
                ),
                audit,
            )
        }
        Some(k) => {
            audit.iam_key_id = Some(k.id.clone());
            audit.iam_groups.clone_from(&user.groups);
            if let Freshness::Stale { .. } = answer.freshness {
                tracing::warn!(login, user = %user.name, "login allowed from a stale IAM answer");
            }
            Answer::Decided(Lookup::Authorized(Authorized {
                user: user.name.clone(),
                source: "iam".to_string(),
                options: KeyOptions::default(),
                groups: user.groups.clone().unwrap_or_default(),
                audit,
            }))
        }
    }
}
