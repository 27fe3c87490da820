//! Host keys (and host certificates) kept outside the instance: SSM
//! Parameter Store SecureStrings (`ssm:/bastion/host_ed25519_key`) and
//! Secrets Manager secrets (`secretsmanager:bastion/host_ed25519_key`),
//! fetched once at start and kept only in memory, so that every bastion
//! behind one load balancer, and every replacement instance, presents the
//! same host key.
//!
//! Region, credentials and endpoint come from the standard AWS chain
//! (`AWS_ENDPOINT_URL_SSM`, `AWS_ENDPOINT_URL_SECRETS_MANAGER` for tests).
//! A value may be a private key: it is never logged, and errors name only
//! the reference.

use std::time::Duration;

use crate::config::HostKey;

/// Fetches each remote reference (files are not read here); one result per
/// reference, in order.
pub fn fetch(refs: &[HostKey]) -> Vec<Result<String, String>> {
    if refs.is_empty() {
        return Vec::new();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return refs
                .iter()
                .map(|_| Err(format!("cannot start the async runtime: {e}")))
                .collect()
        }
    };
    runtime.block_on(async {
        let conf = crate::awsutil::sdk_config(Duration::from_secs(20)).await;
        let mut ssm = None;
        let mut secrets = None;
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let got = match r {
                HostKey::File(p) => Err(format!("{}: not a remote reference", p.display())),
                HostKey::Ssm(name) => {
                    let client = ssm.get_or_insert_with(|| aws_sdk_ssm::Client::new(&conf));
                    match client
                        .get_parameter()
                        .name(name)
                        .with_decryption(true)
                        .send()
                        .await
                    {
                        Ok(o) => o
                            .parameter()
                            .and_then(|p| p.value())
                            .map(str::to_string)
                            .ok_or_else(|| "the parameter has no value".to_string()),
                        Err(e) => Err(crate::awsutil::error_text(&e)),
                    }
                }
                HostKey::SecretsManager(id) => {
                    let client =
                        secrets.get_or_insert_with(|| aws_sdk_secretsmanager::Client::new(&conf));
                    match client.get_secret_value().secret_id(id).send().await {
                        Ok(o) => match (o.secret_string(), o.secret_binary()) {
                            (Some(s), _) => Ok(s.to_string()),
                            (None, Some(b)) => String::from_utf8(b.as_ref().to_vec())
                                .map_err(|_| "the secret's binary value is not text".to_string()),
                            (None, None) => Err("the secret has no value".to_string()),
                        },
                        Err(e) => Err(crate::awsutil::error_text(&e)),
                    }
                }
            };
            out.push(got.map_err(|e| format!("{r}: {e}")));
        }
        out
    })
}
