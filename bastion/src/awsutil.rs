//! Small pieces every AWS caller shares.

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
