//! Host keys kept outside the instance: SSM Parameter Store SecureStrings
//! (`host_keys = ["ssm:/bastion/host_ed25519_key"]`), fetched once at start
//! and kept only in memory, so that every bastion behind one load balancer,
//! and every replacement instance, presents the same host key.
//!
//! Region, credentials and endpoint come from the standard AWS chain
//! (`AWS_ENDPOINT_URL_SSM` for tests). The value is a private key: it is
//! never logged, and errors name only the parameter.

use std::time::Duration;

/// Fetches each parameter (with decryption); one result per name, in order.
pub fn fetch_ssm(names: &[String]) -> Vec<Result<String, String>> {
    if names.is_empty() {
        return Vec::new();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return names
                .iter()
                .map(|_| Err(format!("cannot start the async runtime: {e}")))
                .collect()
        }
    };
    runtime.block_on(async {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_timeout(Duration::from_secs(20))
            .build();
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(timeouts)
            .load()
            .await;
        let client = aws_sdk_ssm::Client::new(&conf);
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let got = client
                .get_parameter()
                .name(name)
                .with_decryption(true)
                .send()
                .await;
            out.push(match got {
                Ok(o) => match o.parameter().and_then(|p| p.value()) {
                    Some(v) => Ok(v.to_string()),
                    None => Err(format!("ssm:{name}: the parameter has no value")),
                },
                Err(e) => {
                    use aws_sdk_ssm::error::ProvideErrorMetadata;
                    let why = match e.as_service_error() {
                        Some(s) => format!(
                            "{}: {}",
                            s.code().unwrap_or("error"),
                            s.message().unwrap_or("no message")
                        ),
                        None => aws_sdk_ssm::error::DisplayErrorContext(&e).to_string(),
                    };
                    Err(format!("ssm:{name}: {why}"))
                }
            });
        }
        out
    })
}
