//! [`IamApi`] over the AWS SDK: ListSSHPublicKeys, GetSSHPublicKey, ListGroupsForUser, with
//! an assumed role where configured, and errors classified (throttled, unavailable, other).

use super::*;

// ---------------------------------------------------------------------------
// The AWS SDK
// ---------------------------------------------------------------------------

/// The real IAM, through the AWS SDK: region, credentials and endpoint from
/// the standard chain (`AWS_REGION`, `AWS_ACCESS_KEY_ID`…, profiles, web
/// identity, container and instance credentials, `AWS_ENDPOINT_URL[_IAM]`),
/// optionally through an assumed role.
pub struct SdkIam {
    assume_role_arn: Option<String>,
    timeout: Duration,
    client: OnceCell<aws_sdk_iam::Client>,
}

impl SdkIam {
    pub fn new(assume_role_arn: Option<String>, timeout: Duration) -> SdkIam {
        SdkIam {
            assume_role_arn,
            timeout,
            client: OnceCell::new(),
        }
    }

    /// The client, built on first use (inside the runtime; building it calls nothing).
    async fn client(&self) -> &aws_sdk_iam::Client {
        self.client
            .get_or_init(|| async {
                use aws_config::retry::RetryConfig;
                use aws_config::timeout::TimeoutConfig;
                // IAM is a global service: any region of the partition signs
                // for it. us-east-1 unless the environment names another.
                let region = aws_config::meta::region::RegionProviderChain::default_provider()
                    .or_else("us-east-1");
                // Retries with exponential back-off and jitter inside one
                // lookup; the lookup as a whole is bounded by `timeout`.
                let retry = RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(2));
                let timeouts = TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(self.timeout.min(Duration::from_secs(5)))
                    .operation_timeout(self.timeout)
                    .build();
                let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(region)
                    .retry_config(retry)
                    .timeout_config(timeouts)
                    .load()
                    .await;
                let mut conf = aws_sdk_iam::config::Builder::from(&base);
                if let Some(arn) = &self.assume_role_arn {
                    // The SDK caches the role's session and renews it shortly
                    // before it expires.
                    let provider = aws_config::sts::AssumeRoleProvider::builder(arn)
                        .session_name("bastion-key-reader")
                        .configure(&base)
                        .build()
                        .await;
                    conf = conf.credentials_provider(provider);
                }
                aws_sdk_iam::Client::from_conf(conf.build())
            })
            .await
    }
}

/// Sorts an SDK error into throttling, outage, "no such entity" or other.
pub(super) fn classify<E>(e: aws_sdk_iam::error::SdkError<E>) -> ApiResult<std::convert::Infallible>
where
    E: aws_sdk_iam::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use aws_sdk_iam::error::{DisplayErrorContext, SdkError};
    let kind = match &e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("");
            let status = s.raw().status().as_u16();
            if code == "NoSuchEntity" {
                return Ok(None);
            }
            if code.contains("Throttl")
                || code == "RequestLimitExceeded"
                || code == "TooManyRequestsException"
                || status == 429
            {
                ApiErrorKind::Throttled
            } else if status >= 500 || code == "ServiceFailure" {
                ApiErrorKind::Unavailable
            } else {
                ApiErrorKind::Other
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ApiErrorKind::Unavailable
        }
        _ => ApiErrorKind::Other,
    };
    let message = match &e {
        SdkError::ServiceError(s) => format!(
            "{}: {}",
            s.err().code().unwrap_or("error"),
            s.err().message().unwrap_or("no message")
        ),
        other => DisplayErrorContext(other).to_string(),
    };
    Err(ApiError { kind, message })
}

pub(super) fn fail<T, E>(e: aws_sdk_iam::error::SdkError<E>) -> ApiResult<T>
where
    E: aws_sdk_iam::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match classify(e) {
        Ok(None) => Ok(None),
        Err(e) => Err(e),
        Ok(Some(never)) => match never {},
    }
}

impl IamApi for SdkIam {
    async fn get_user(&self, name: &str) -> ApiResult<(String, String)> {
        let out = match self.client().await.get_user().user_name(name).send().await {
            Ok(o) => o,
            Err(e) => return fail(e),
        };
        match out.user() {
            Some(u) => Ok(Some((u.user_name().to_string(), u.arn().to_string()))),
            None => Err(ApiError {
                kind: ApiErrorKind::Other,
                message: "GetUser answered without a user".into(),
            }),
        }
    }

    async fn list_keys(&self, name: &str) -> ApiResult<Vec<(String, bool)>> {
        let mut pages = self
            .client()
            .await
            .list_ssh_public_keys()
            .user_name(name)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            for k in page.ssh_public_keys() {
                out.push((
                    k.ssh_public_key_id().to_string(),
                    *k.status() == aws_sdk_iam::types::StatusType::Active,
                ));
            }
        }
        Ok(Some(out))
    }

    async fn get_key(&self, name: &str, id: &str) -> ApiResult<String> {
        let out = match self
            .client()
            .await
            .get_ssh_public_key()
            .user_name(name)
            .ssh_public_key_id(id)
            .encoding(aws_sdk_iam::types::EncodingType::Ssh)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => return fail(e),
        };
        Ok(out
            .ssh_public_key()
            .map(|k| k.ssh_public_key_body().to_string()))
    }

    async fn list_groups(&self, name: &str) -> ApiResult<Vec<String>> {
        let mut pages = self
            .client()
            .await
            .list_groups_for_user()
            .user_name(name)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            out.extend(page.groups().iter().map(|g| g.group_name().to_string()));
        }
        Ok(Some(out))
    }
}
