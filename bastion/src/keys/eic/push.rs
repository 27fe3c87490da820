//! EC2 Instance Connect onward (`[eic] push = true`): `DescribeInstances` for an instance asked
//! for by id, and `SendSSHPublicKey` of the very key the user authenticated with, so that the
//! user's own end-to-end SSH to the instance succeeds without the bastion holding any key of
//! theirs. The monitor calls these once the policy allows the instance.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use aws_sdk_ec2instanceconnect::error::ProvideErrorMetadata;

use crate::keys::authorized_keys::PublicKeyBlob;

/// Why EC2 Instance Connect would not take a key; the message says what it would accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushableError {
    /// An `ssh-rsa` key below 2048 bits.
    #[error("the key type ssh-rsa with {bits} bits is not accepted by EC2 Instance Connect (RSA needs at least 2048 bits); log in with an Ed25519 or a larger RSA key")]
    RsaTooSmall { bits: usize },
    /// An `ssh-rsa` blob whose modulus cannot be read.
    #[error("the ssh-rsa key could not be read")]
    UnreadableRsa,
    /// Any key type but `ssh-ed25519` and `ssh-rsa`.
    #[error("the key type {0} is not accepted by EC2 Instance Connect (it takes ssh-ed25519, or ssh-rsa of 2048 bits or more); log in with such a key")]
    KeyType(String),
}

/// Whether EC2 Instance Connect takes this key: `ssh-ed25519`, or `ssh-rsa` of at
/// least 2048 bits. The error says what would be accepted.
pub fn check_pushable(key: &PublicKeyBlob) -> Result<(), PushableError> {
    match key.algo.as_str() {
        "ssh-ed25519" => Ok(()),
        "ssh-rsa" => match rsa_bits(&key.blob) {
            Some(bits) if bits >= 2048 => Ok(()),
            Some(bits) => Err(PushableError::RsaTooSmall { bits }),
            None => Err(PushableError::UnreadableRsa),
        },
        other => Err(PushableError::KeyType(other.to_string())),
    }
}

/// The modulus size of an `ssh-rsa` blob (string "ssh-rsa", mpint e, mpint n).
fn rsa_bits(blob: &[u8]) -> Option<usize> {
    fn field(b: &[u8]) -> Option<(&[u8], &[u8])> {
        let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let body = b.get(4..4 + len)?;
        Some((body, &b[4 + len..]))
    }
    let (_, rest) = field(blob)?;
    let (_, rest) = field(rest)?;
    let (n, _) = field(rest)?;
    let n: Vec<u8> = n.iter().copied().skip_while(|&c| c == 0).collect();
    let first = *n.first()?;
    Some((n.len() - 1) * 8 + (8 - first.leading_zeros() as usize))
}

/// What the monitor needs to know about an instance asked for by id.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub state: String,
    pub private_ip: Option<IpAddr>,
    pub az: Option<String>,
    pub tags: Vec<(String, String)>,
}

/// A refused lookup or push: the reason for the user and the audit trail, and the
/// service's error code when there was one.
#[derive(Debug, Clone)]
pub struct Ec2Failure {
    pub reason: String,
    pub code: Option<String>,
}

/// A successful push.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub request_id: Option<String>,
    pub took: Duration,
}

/// EC2's error code for an instance id it does not know.
const NOT_FOUND: &str = "InvalidInstanceID.NotFound";

/// An unknown instance, whether EC2 said so or answered without it.
fn not_found(id: &str) -> Ec2Failure {
    Ec2Failure {
        reason: format!("instance {id} was not found (DescribeInstances)"),
        code: Some(NOT_FOUND.into()),
    }
}

/// The EC2 and EC2 Instance Connect clients, built on first use.
pub struct Ec2Api {
    timeout: Duration,
    clients: tokio::sync::OnceCell<(aws_sdk_ec2::Client, aws_sdk_ec2instanceconnect::Client)>,
}

impl Ec2Api {
    /// `timeout`: the longest one call may take; the clients are built on first use.
    pub fn new(timeout: Duration) -> Ec2Api {
        Ec2Api {
            timeout,
            clients: tokio::sync::OnceCell::new(),
        }
    }

    async fn clients(&self) -> &(aws_sdk_ec2::Client, aws_sdk_ec2instanceconnect::Client) {
        self.clients
            .get_or_init(|| async {
                let config = crate::awsutil::sdk_config(self.timeout).await;
                (
                    aws_sdk_ec2::Client::new(&config),
                    aws_sdk_ec2instanceconnect::Client::new(&config),
                )
            })
            .await
    }

    /// `DescribeInstances` for one id.
    pub async fn describe(&self, id: &str) -> Result<Instance, Ec2Failure> {
        let (ec2, _) = self.clients().await;
        let out = ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| {
                let code = e
                    .as_service_error()
                    .and_then(|s| s.code())
                    .map(str::to_string);
                if code.as_deref() == Some(NOT_FOUND) {
                    not_found(id)
                } else {
                    Ec2Failure {
                        reason: format!(
                            "instance {id} could not be looked up (DescribeInstances): {}",
                            crate::awsutil::error_text(&e)
                        ),
                        code,
                    }
                }
            })?;
        let found = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(id));
        let Some(i) = found else {
            return Err(not_found(id));
        };
        Ok(Instance {
            id: id.to_string(),
            state: i
                .state()
                .and_then(|s| s.name())
                .map_or("unknown".to_string(), |n| n.as_str().to_string()),
            private_ip: i.private_ip_address().and_then(|a| a.parse().ok()),
            az: i
                .placement()
                .and_then(|p| p.availability_zone())
                .map(str::to_string),
            tags: i
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
                .collect(),
        })
    }

    /// `SendSSHPublicKey`: `key_line` may log in as `os_user` on `instance` for 60 s.
    pub async fn push(
        &self,
        instance: &Instance,
        os_user: &str,
        key_line: &str,
    ) -> Result<Pushed, Ec2Failure> {
        let (_, eic) = self.clients().await;
        let started = Instant::now();
        let mut req = eic
            .send_ssh_public_key()
            .instance_id(&instance.id)
            .instance_os_user(os_user)
            .ssh_public_key(key_line);
        if let Some(az) = &instance.az {
            req = req.availability_zone(az);
        }
        match req.send().await {
            Ok(out) => Ok(Pushed {
                request_id: out.request_id().map(str::to_string).or_else(|| {
                    use aws_sdk_ec2instanceconnect::operation::RequestId;
                    RequestId::request_id(&out).map(str::to_string)
                }),
                took: started.elapsed(),
            }),
            Err(e) => {
                let code = e
                    .as_service_error()
                    .and_then(|s| s.code())
                    .map(str::to_string);
                let what = match code.as_deref() {
                    Some("ThrottlingException") => {
                        "EC2 Instance Connect is throttling requests; try again in a little while".to_string()
                    }
                    Some("EC2InstanceNotFoundException") => {
                        format!("EC2 Instance Connect did not find instance {}", instance.id)
                    }
                    Some("EC2InstanceStateInvalidException") => format!(
                        "instance {} is not in a state EC2 Instance Connect accepts (not running)",
                        instance.id
                    ),
                    Some("EC2InstanceUnavailableException") => format!(
                        "instance {} is not available to EC2 Instance Connect right now",
                        instance.id
                    ),
                    Some("AuthException") | Some("AccessDeniedException") => {
                        "the bastion is not allowed to push keys to this instance (ec2-instance-connect:SendSSHPublicKey)".to_string()
                    }
                    _ => "pushing the key failed".to_string(),
                };
                Err(Ec2Failure {
                    reason: format!("{what} ({})", crate::awsutil::error_text(&e)),
                    code,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushable_keys() {
        let ed = PublicKeyBlob::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIrvfN7B7bWkTt3WJoN7kmqjxj0YGhMRwDbyUuMWEfuV",
        )
        .unwrap();
        assert!(check_pushable(&ed).is_ok());
        // A 1024-bit and a 2048-bit modulus, built by hand.
        let rsa = |bits: usize| {
            let mut blob = Vec::new();
            for part in [b"ssh-rsa".to_vec(), vec![1, 0, 1], {
                let mut n = vec![0u8];
                n.push(0x80);
                n.extend(std::iter::repeat_n(0x11, bits / 8 - 1));
                n
            }] {
                blob.extend((part.len() as u32).to_be_bytes());
                blob.extend(part);
            }
            PublicKeyBlob {
                algo: "ssh-rsa".into(),
                blob,
            }
        };
        assert_eq!(rsa_bits(&rsa(2048).blob), Some(2048));
        assert!(check_pushable(&rsa(2048)).is_ok());
        let e = check_pushable(&rsa(1024)).unwrap_err();
        assert!(e.to_string().contains("1024 bits"), "{e}");
        let ecdsa = PublicKeyBlob {
            algo: "ecdsa-sha2-nistp256".into(),
            blob: vec![],
        };
        assert!(check_pushable(&ecdsa)
            .unwrap_err()
            .to_string()
            .contains("key type"));
    }
}
