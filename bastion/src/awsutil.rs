//! Small pieces every AWS caller shares.

use std::time::Duration;

/// The standard AWS chain (environment, profile, web identity, container,
/// instance metadata), with a 3 s connect timeout and `operation` for a
/// whole call, retries included.
pub async fn sdk_config(operation: Duration) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_timeout(operation)
        .build();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .load()
        .await
}

/// An SDK error as `Code: message` (service errors) or with its whole cause
/// chain (transport, timeouts, credentials). Never holds request data.
pub fn error_text<E, R>(e: &aws_sdk_ssm::error::SdkError<E, R>) -> String
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(s) => format!(
            "{}: {}",
            s.code().unwrap_or("error"),
            s.message().unwrap_or("no message")
        ),
        None => aws_sdk_ssm::error::DisplayErrorContext(e).to_string(),
    }
}
