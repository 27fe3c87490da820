//! What a rule's entries say: principals (`alice`, `group:ops`, `*`) and
//! targets (`HOST[:PORT|:LO-HI]`, `tag:KEY=VALUE[:PORT]`), parsed from the
//! configuration, and the matching they need (name globs, canonical
//! addresses). [`super::policy`] decides with them.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// A problem in one `[[allow]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("empty principal")]
    EmptyPrincipal,
    #[error("\"group:\" needs a group name")]
    EmptyGroup,
    #[error("empty target")]
    EmptyTarget,
    #[error("empty host in {0:?}")]
    EmptyHost(String),
    #[error("port {port:?} is not a number between 1 and 65535 in {target:?}")]
    BadPort { target: String, port: String },
    #[error("port range {lo}-{hi} is reversed in {target:?}")]
    ReversedRange { target: String, lo: u16, hi: u16 },
    #[error("CIDR {cidr:?} is invalid in {target:?}: {why}")]
    BadCidr {
        target: String,
        cidr: String,
        why: String,
    },
    #[error("{host:?} is not an IP address, CIDR or DNS name (in {target:?})")]
    BadHost { target: String, host: String },
    #[error("an IPv6 address with a port must be in brackets, like [::1]:22 (in {0:?})")]
    Unbracketed(String),
    #[error(
        "{0:?} is not a tag target; write tag:KEY=VALUE or tag:KEY=VALUE:PORT (VALUE may use *)"
    )]
    BadTag(String),
}

/// Who a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// `*`: anyone authenticated.
    Any,
    /// A login, compared exactly.
    Login(String),
    /// `group:NAME`: members of a group (IAM groups, later).
    Group(String),
}

impl FromStr for Principal {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(PolicyError::EmptyPrincipal);
        }
        if s == "*" {
            return Ok(Principal::Any);
        }
        if let Some(g) = s.strip_prefix("group:") {
            if g.is_empty() {
                return Err(PolicyError::EmptyGroup);
            }
            return Ok(Principal::Group(g.to_string()));
        }
        Ok(Principal::Login(s.to_string()))
    }
}

/// The host part of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// An address or a network (an address is a /32 or /128).
    Net(IpNet),
    /// Lowercase, no trailing dot, may contain `*`.
    Name(String),
    /// `tag:KEY=VALUE`: an EC2 instance asked for by id whose tag KEY matches VALUE (which
    /// may contain `*`); both compared case-sensitively, as EC2 does.
    Tag {
        /// The tag's key, exactly.
        key: String,
        /// A glob over the tag's value.
        value: String,
    },
}

/// One `to` entry: `HOST[:PORT|:LO-HI]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host part.
    pub host: HostPattern,
    /// The lowest port allowed (1 when no port was written).
    pub lo: u16,
    /// The highest port allowed (65535 when no port was written).
    pub hi: u16,
    /// As written in the configuration, for reasons in the audit trail.
    pub text: String,
}

fn parse_port(target: &str, p: &str) -> Result<u16, PolicyError> {
    match p.parse::<u16>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(PolicyError::BadPort {
            target: target.into(),
            port: p.into(),
        }),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '*')
        })
}

fn parse_host(target: &str, host: &str) -> Result<HostPattern, PolicyError> {
    if host.is_empty() {
        return Err(PolicyError::EmptyHost(target.into()));
    }
    if host.contains('/') {
        return match host.parse::<IpNet>() {
            Ok(net) => Ok(HostPattern::Net(canonical_net(net))),
            Err(e) => Err(PolicyError::BadCidr {
                target: target.into(),
                cidr: host.into(),
                why: e.to_string(),
            }),
        };
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        let ip = canonical_ip(ip);
        return Ok(HostPattern::Net(IpNet::from(ip)));
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if valid_name(&name) && !name.chars().all(|c| c.is_ascii_digit() || c == '.') {
        Ok(HostPattern::Name(name))
    } else {
        Err(PolicyError::BadHost {
            target: target.into(),
            host: host.into(),
        })
    }
}

/// `tag:KEY=VALUE[:PORT|:LO-HI]`: the port part is the text after the last `:` when it is
/// one (a value that itself contains `:` needs the port written).
fn parse_tag(t: &str, rest: &str) -> Result<Target, PolicyError> {
    let bad = || PolicyError::BadTag(t.into());
    let (key, value) = rest.split_once('=').ok_or_else(bad)?;
    let is_port_part = |p: &str| {
        !p.is_empty()
            && p.split('-').count() <= 2
            && p.chars().all(|c| c.is_ascii_digit() || c == '-')
    };
    let (value, port) = match value.rsplit_once(':') {
        Some((v, p)) if is_port_part(p) => (v, Some(p)),
        _ => (value, None),
    };
    // EC2's limits: keys 1-128 characters, values up to 256; no control characters.
    let key_ok = !key.is_empty() && key.len() <= 128 && !key.contains('*');
    let value_ok = value.len() <= 256;
    if !key_ok || !value_ok || t.chars().any(char::is_control) {
        return Err(bad());
    }
    let (lo, hi) = parse_ports(t, port)?;
    Ok(Target {
        host: HostPattern::Tag {
            key: key.to_string(),
            value: value.to_string(),
        },
        lo,
        hi,
        text: t.to_string(),
    })
}

fn parse_ports(t: &str, port: Option<&str>) -> Result<(u16, u16), PolicyError> {
    Ok(match port {
        None => (1, 65535),
        Some(p) => match p.split_once('-') {
            Some((a, b)) => {
                let (lo, hi) = (parse_port(t, a)?, parse_port(t, b)?);
                if lo > hi {
                    return Err(PolicyError::ReversedRange {
                        target: t.into(),
                        lo,
                        hi,
                    });
                }
                (lo, hi)
            }
            None => {
                let n = parse_port(t, p)?;
                (n, n)
            }
        },
    })
}

impl FromStr for Target {
    type Err = PolicyError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let t = text.trim();
        if t.is_empty() {
            return Err(PolicyError::EmptyTarget);
        }
        if let Some(rest) = t.strip_prefix("tag:") {
            return parse_tag(t, rest);
        }
        // Split HOST from the optional port part.
        let (host, port): (&str, Option<&str>) = if let Some(rest) = t.strip_prefix('[') {
            let Some(close) = rest.find(']') else {
                return Err(PolicyError::BadHost {
                    target: t.into(),
                    host: t.into(),
                });
            };
            let host = &rest[..close];
            match &rest[close + 1..] {
                "" => (host, None),
                p if p.starts_with(':') => (host, Some(&p[1..])),
                _ => {
                    return Err(PolicyError::BadHost {
                        target: t.into(),
                        host: t.into(),
                    })
                }
            }
        } else if t.matches(':').count() > 1 {
            // Bare IPv6 (or CIDR) without a port.
            if t.parse::<IpAddr>().is_ok() || t.parse::<IpNet>().is_ok() {
                (t, None)
            } else {
                return Err(PolicyError::Unbracketed(t.into()));
            }
        } else {
            match t.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (t, None),
            }
        };
        let host = parse_host(t, host)?;
        let (lo, hi) = parse_ports(t, port)?;
        Ok(Target {
            host,
            lo,
            hi,
            text: t.to_string(),
        })
    }
}

/// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) as the IPv4 address they are.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn canonical_net(n: IpNet) -> IpNet {
    match n {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(n),
            None => n,
        },
        other => other.trunc(),
    }
}

/// Glob match with `*` (any run of characters), case already folded.
pub(super) fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(glob("*.internal", "db.internal"));
        assert!(glob("web-*.prod.internal", "web-12.prod.internal"));
        assert!(!glob("web-*.prod.internal", "db-12.prod.internal"));
        assert!(glob("*", "anything"));
        assert!(!glob("a*b", "ac"));
    }
}
