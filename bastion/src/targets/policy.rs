//! Forwarding policy: may this principal open a TCP connection to
//! `host:port`, and to which address?
//!
//! Deny by default. The monitor resolves names itself and passes every
//! resolved address in; the address returned in [`Decision::Allow`] is the
//! one it connects to, so the checked address is the connected address.
//!
//! Protected addresses (loopback, link-local — which includes the instance
//! metadata service 169.254.169.254 —, multicast, unspecified/broadcast and
//! the bastion's own addresses) are never matched by a name rule, a wildcard
//! or a wider CIDR: only by a rule whose own network lies inside the
//! protected range (for own addresses: names exactly that address).
//!
//! EC2 instances may be asked for by id (`ssh -J bastion ec2-user@i-0123…`):
//! the monitor resolves the id to the instance's private address and passes
//! its tags in, so rules can name instances by id glob (`i-*:22`, matched
//! like a name) or by tag (`tag:env=dev:22`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;

use super::pattern::glob;
pub use super::pattern::{canonical_ip, HostPattern, PolicyError, Principal, Target};

/// Where in a rule a problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    /// `principals` or `to`.
    pub list: &'static str,
    /// The entry's index in that list.
    pub index: usize,
    /// What is wrong with it.
    pub error: PolicyError,
}

impl RuleProblem {
    /// The key path inside the rule, like `to[2]`.
    pub fn key(&self) -> String {
        format!("{}[{}]", self.list, self.index)
    }
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// One `[[allow]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Whom it applies to (any of them).
    pub principals: Vec<Principal>,
    /// Where they may go (any of them).
    pub to: Vec<Target>,
}

impl Rule {
    /// Parses a rule, collecting every problem.
    pub fn parse(principals: &[String], to: &[String]) -> Result<Rule, Vec<RuleProblem>> {
        let mut problems = Vec::new();
        let mut rule = Rule {
            principals: Vec::new(),
            to: Vec::new(),
        };
        for (index, p) in principals.iter().enumerate() {
            match p.parse() {
                Ok(p) => rule.principals.push(p),
                Err(error) => problems.push(RuleProblem {
                    list: "principals",
                    index,
                    error,
                }),
            }
        }
        for (index, t) in to.iter().enumerate() {
            match t.parse() {
                Ok(t) => rule.to.push(t),
                Err(error) => problems.push(RuleProblem {
                    list: "to",
                    index,
                    error,
                }),
            }
        }
        if problems.is_empty() {
            Ok(rule)
        } else {
            Err(problems)
        }
    }
}

/// Who is asking.
pub struct Subject<'a> {
    /// The login name the client gave.
    pub login: &'a str,
    /// The principal it stands for (the IAM user name as IAM spells it; the
    /// login itself for file and command sources).
    pub user: &'a str,
    /// The principal's groups (IAM group names, compared ignoring case as IAM does).
    pub groups: &'a [String],
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Connect to `addr` (the checked address), allowed by rule number `rule`.
    Allow {
        /// The address to connect to.
        addr: SocketAddr,
        /// The index of the `[[allow]]` entry that allowed it.
        rule: usize,
        /// For the audit trail.
        reason: String,
    },
    /// Refuse, saying why.
    Deny {
        /// For the user and the audit trail.
        reason: String,
    },
}

/// Why an address is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protected {
    Loopback,
    LinkLocal,
    Multicast,
    Unspecified,
    Own,
}

impl Protected {
    fn describe(self) -> &'static str {
        match self {
            Protected::Loopback => "a loopback address",
            Protected::LinkLocal => {
                "a link-local address (this includes the instance metadata service)"
            }
            Protected::Multicast => "a multicast address",
            Protected::Unspecified => "an unspecified or broadcast address",
            Protected::Own => "one of the bastion's own addresses",
        }
    }
}

fn net(s: &str) -> IpNet {
    // Fixed, valid literals.
    s.parse()
        .unwrap_or_else(|_| IpNet::from(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
}

/// The protected ranges, each with its category.
fn protected_ranges() -> [(IpNet, Protected); 10] {
    [
        (net("127.0.0.0/8"), Protected::Loopback),
        (net("::1/128"), Protected::Loopback),
        (net("169.254.0.0/16"), Protected::LinkLocal),
        (net("fe80::/10"), Protected::LinkLocal),
        (net("224.0.0.0/4"), Protected::Multicast),
        (net("ff00::/8"), Protected::Multicast),
        (net("0.0.0.0/8"), Protected::Unspecified),
        (net("::/128"), Protected::Unspecified),
        (net("255.255.255.255/32"), Protected::Unspecified),
        // fd00:ec2::254 is the IPv6 instance metadata endpoint on Nitro instances.
        (net("fd00:ec2::254/128"), Protected::LinkLocal),
    ]
}

/// The forwarding policy.
pub struct Policy {
    rules: Vec<Rule>,
    own: Vec<IpAddr>,
}

impl Policy {
    /// A policy of `rules`, protecting the bastion's own addresses `own_addrs`.
    pub fn new(rules: Vec<Rule>, own_addrs: Vec<IpAddr>) -> Policy {
        Policy {
            rules,
            own: own_addrs.into_iter().map(canonical_ip).collect(),
        }
    }

    /// No rule at all: every forward is denied.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Parses an IP literal as a client sends it (`10.0.0.1`, `::1`, `[::1]`, `::ffff:127.0.0.1`), canonicalised.
    pub fn ip_literal(host: &str) -> Option<IpAddr> {
        let h = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        h.parse::<IpAddr>().ok().map(canonical_ip)
    }

    fn protection(&self, ip: IpAddr) -> Option<(Protected, IpNet)> {
        if self.own.contains(&ip) {
            // Own addresses that are also loopback etc. are reported as such.
            if let Some(hit) = protected_ranges()
                .into_iter()
                .find(|(n, _)| n.contains(&ip))
            {
                return Some((hit.1, hit.0));
            }
            return Some((Protected::Own, IpNet::from(ip)));
        }
        protected_ranges()
            .into_iter()
            .find(|(n, _)| n.contains(&ip))
            .map(|(n, p)| (p, n))
    }

    fn applies(rule: &Rule, subject: &Subject) -> bool {
        rule.principals.iter().any(|p| match p {
            Principal::Any => true,
            Principal::Login(l) => l == subject.login || l == subject.user,
            Principal::Group(g) => subject.groups.iter().any(|x| x.eq_ignore_ascii_case(g)),
        })
    }

    /// Decides a request for `requested_host:port` whose candidate addresses are `resolved`.
    pub fn decide(
        &self,
        subject: &Subject,
        requested_host: &str,
        port: u16,
        resolved: &[IpAddr],
    ) -> Decision {
        self.decide_with_tags(subject, requested_host, port, resolved, None)
    }

    /// Whether any rule could allow `subject` to reach the instance `id` on `port` (by id
    /// glob or by tag), before anything is asked of EC2: no API call is made for a
    /// request no rule could allow, so users cannot probe for instances.
    pub fn could_allow_instance(&self, subject: &Subject, id: &str, port: u16) -> bool {
        let id = id.to_ascii_lowercase();
        self.rules
            .iter()
            .filter(|r| Self::applies(r, subject))
            .flat_map(|r| &r.to)
            .filter(|t| (t.lo..=t.hi).contains(&port))
            .any(|t| match &t.host {
                HostPattern::Tag { .. } => true,
                HostPattern::Name(p) => glob(p, &id),
                HostPattern::Net(_) => false,
            })
    }

    /// [`Policy::decide`] for an EC2 instance asked for by id: `tags` are its tags, for
    /// `tag:` targets (which match nothing else).
    pub fn decide_with_tags(
        &self,
        subject: &Subject,
        requested_host: &str,
        port: u16,
        resolved: &[IpAddr],
        tags: Option<&[(String, String)]>,
    ) -> Decision {
        let applicable: Vec<(usize, &Rule)> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| Self::applies(r, subject))
            .collect();
        if applicable.is_empty() {
            return Decision::Deny {
                reason: format!("no forwarding rule applies to {}", subject.login),
            };
        }
        if resolved.is_empty() {
            return Decision::Deny {
                reason: format!("{requested_host} did not resolve to any address"),
            };
        }
        let literal = Self::ip_literal(requested_host).is_some();
        let name = requested_host.trim_end_matches('.').to_ascii_lowercase();
        let mut protected_reason: Option<String> = None;
        for &raw in resolved {
            let ip = canonical_ip(raw);
            let protection = self.protection(ip);
            for &(index, rule) in &applicable {
                for t in rule.to.iter().filter(|t| (t.lo..=t.hi).contains(&port)) {
                    let ok = match (&t.host, protection) {
                        (HostPattern::Net(n), None) => n.contains(&ip),
                        (HostPattern::Net(n), Some((Protected::Own, _))) => *n == IpNet::from(ip),
                        (HostPattern::Net(n), Some((_, range))) => {
                            n.contains(&ip) && range.contains(n)
                        }
                        (HostPattern::Name(p), None) => !literal && glob(p, &name),
                        (HostPattern::Tag { key, value }, None) => tags.is_some_and(|tags| {
                            tags.iter().any(|(k, v)| k == key && glob(value, v))
                        }),
                        (HostPattern::Name(_) | HostPattern::Tag { .. }, Some(_)) => false,
                    };
                    if ok {
                        return Decision::Allow {
                            addr: SocketAddr::new(ip, port),
                            rule: index,
                            reason: format!("allowed by allow[{index}] ({})", t.text),
                        };
                    }
                }
            }
            if let (Some((kind, range)), None) = (protection, &protected_reason) {
                // When a rule does name this protected address (for other
                // ports), the generic "no rule allows … on port" is the truth.
                let named = applicable
                    .iter()
                    .flat_map(|(_, r)| &r.to)
                    .any(|t| match &t.host {
                        HostPattern::Net(n) if kind == Protected::Own => *n == IpNet::from(ip),
                        HostPattern::Net(n) => n.contains(&ip) && range.contains(n),
                        HostPattern::Name(_) | HostPattern::Tag { .. } => false,
                    });
                if !named {
                    protected_reason = Some(format!(
                        "{ip} is {}; only a rule that names it explicitly allows it",
                        kind.describe()
                    ));
                }
            }
        }
        if let Some(reason) = protected_reason {
            return Decision::Deny { reason };
        }
        let reason = if literal || resolved.len() == 1 {
            let shown = if literal {
                requested_host.to_string()
            } else {
                format!("{requested_host} ({})", resolved[0])
            };
            format!(
                "no rule allows {} to reach {shown} on port {port}",
                subject.login
            )
        } else {
            let list: Vec<String> = resolved.iter().map(|a| a.to_string()).collect();
            format!(
                "none of the {} addresses {requested_host} resolved to ({}) is allowed for {} on port {port}",
                resolved.len(),
                list.join(", "),
                subject.login
            )
        };
        Decision::Deny { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[(&[&str], &[&str])]) -> Policy {
        let rules = rules
            .iter()
            .map(|(p, t)| {
                let p: Vec<String> = p.iter().map(|s| s.to_string()).collect();
                let t: Vec<String> = t.iter().map(|s| s.to_string()).collect();
                Rule::parse(&p, &t).unwrap()
            })
            .collect();
        Policy::new(rules, vec!["10.0.0.5".parse().unwrap()])
    }

    fn ask(p: &Policy, login: &str, host: &str, port: u16, resolved: &[&str]) -> Decision {
        let ips: Vec<IpAddr> = resolved.iter().map(|s| s.parse().unwrap()).collect();
        let groups = if login == "bob" {
            vec!["ops".to_string()]
        } else {
            vec![]
        };
        p.decide(
            &Subject {
                login,
                user: login,
                groups: &groups,
            },
            host,
            port,
            &ips,
        )
    }

    fn allowed(d: &Decision) -> bool {
        matches!(d, Decision::Allow { .. })
    }

    #[test]
    fn grammar() {
        let t: Target = "10.0.0.0/8:22".parse().unwrap();
        assert_eq!((t.lo, t.hi), (22, 22));
        let t: Target = "10.1.2.3:8000-8100".parse().unwrap();
        assert_eq!((t.lo, t.hi), (8000, 8100));
        let t: Target = "db.internal".parse().unwrap();
        assert_eq!(
            (t.lo, t.hi, t.host),
            (1, 65535, HostPattern::Name("db.internal".into()))
        );
        assert!(matches!(
            "[::1]:22".parse::<Target>().unwrap().host,
            HostPattern::Net(_)
        ));
        assert!(matches!(
            "[fd00::/8]:22".parse::<Target>().unwrap().host,
            HostPattern::Net(_)
        ));
        assert!(matches!(
            "fd00::1".parse::<Target>().unwrap().host,
            HostPattern::Net(_)
        ));
        assert_eq!(
            "*.Internal.:22".parse::<Target>().unwrap().host,
            HostPattern::Name("*.internal".into())
        );
        for bad in [
            "",
            ":22",
            "10.0.0.0/33:22",
            "host:0",
            "host:70000",
            "host:99-10",
            "host:x",
            "fd00::1:22x",
            "bad host:22",
            "[::1",
            "1.2.3.4.5:22",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad} should be rejected");
        }
        assert!(matches!(
            "10.0.0.0/33:22".parse::<Target>(),
            Err(PolicyError::BadCidr { .. })
        ));
        assert!(matches!(
            "host:99-10".parse::<Target>(),
            Err(PolicyError::ReversedRange { .. })
        ));
        assert_eq!("".parse::<Principal>(), Err(PolicyError::EmptyPrincipal));
        assert_eq!("group:".parse::<Principal>(), Err(PolicyError::EmptyGroup));
        let problems = Rule::parse(&["".into()], &["ok:22".into(), "x:0".into()]).unwrap_err();
        assert_eq!(
            problems.iter().map(|p| p.key()).collect::<Vec<_>>(),
            vec!["principals[0]", "to[1]"]
        );
    }

    #[test]
    fn deny_by_default_and_principals() {
        let p = policy(&[
            (&["alice"], &["10.0.0.0/8:22"]),
            (&["group:ops"], &["10.2.0.0/16:5432"]),
        ]);
        assert!(allowed(&ask(&p, "alice", "10.1.1.1", 22, &["10.1.1.1"])));
        assert!(!allowed(&ask(&p, "alice", "10.1.1.1", 23, &["10.1.1.1"])));
        assert!(
            allowed(&ask(&p, "bob", "10.2.3.4", 5432, &["10.2.3.4"])),
            "bob is in ops"
        );
        match ask(&p, "carol", "10.1.1.1", 22, &["10.1.1.1"]) {
            Decision::Deny { reason } => assert!(
                reason.contains("no forwarding rule applies to carol"),
                "{reason}"
            ),
            d => panic!("{d:?}"),
        }
        let empty = policy(&[]);
        assert!(!allowed(&ask(
            &empty,
            "alice",
            "10.1.1.1",
            22,
            &["10.1.1.1"]
        )));
    }

    #[test]
    fn protected_ranges_need_explicit_rules() {
        let wide = policy(&[(
            &["*"],
            &["0.0.0.0/0:22", "0.0.0.0/0:80", "*.internal:22", "[::/0]:22"],
        )]);
        for (host, port) in [
            ("127.0.0.1", 22),
            ("169.254.169.254", 80),
            ("224.0.0.1", 22),
            ("0.0.0.0", 22),
            ("::1", 22),
            ("::ffff:127.0.0.1", 22),
            ("10.0.0.5", 22),
        ] {
            let d = ask(
                &wide,
                "a",
                host,
                port,
                &[Policy::ip_literal(host).unwrap().to_string().as_str()],
            );
            assert!(!allowed(&d), "{host} must be denied by a wildcard");
        }
        match ask(&wide, "a", "169.254.169.254", 80, &["169.254.169.254"]) {
            Decision::Deny { reason } => assert!(reason.contains("link-local"), "{reason}"),
            d => panic!("{d:?}"),
        }
        match ask(&wide, "a", "127.0.0.1", 22, &["127.0.0.1"]) {
            Decision::Deny { reason } => assert!(reason.contains("loopback"), "{reason}"),
            d => panic!("{d:?}"),
        }
        let explicit = policy(&[(
            &["*"],
            &[
                "127.0.0.1:22",
                "169.254.169.254:80",
                "127.0.0.0/8:2200-2300",
                "10.0.0.5:22",
            ],
        )]);
        assert!(allowed(&ask(
            &explicit,
            "a",
            "127.0.0.1",
            22,
            &["127.0.0.1"]
        )));
        assert!(
            allowed(&ask(&explicit, "a", "localhost", 22, &["127.0.0.1"])),
            "a name resolving to an explicitly allowed address"
        );
        assert!(allowed(&ask(
            &explicit,
            "a",
            "169.254.169.254",
            80,
            &["169.254.169.254"]
        )));
        assert!(allowed(&ask(
            &explicit,
            "a",
            "127.9.9.9",
            2222,
            &["127.9.9.9"]
        )));
        assert!(
            allowed(&ask(&explicit, "a", "10.0.0.5", 22, &["10.0.0.5"])),
            "own address named exactly"
        );
        match ask(&explicit, "a", "127.0.0.1", 23, &["127.0.0.1"]) {
            Decision::Deny { reason } => assert!(
                reason.contains("no rule allows a to reach 127.0.0.1 on port 23"),
                "{reason}"
            ),
            d => panic!("{d:?}"),
        }
        let own_wide = policy(&[(&["*"], &["10.0.0.0/8:22"])]);
        match ask(&own_wide, "a", "10.0.0.5", 22, &["10.0.0.5"]) {
            Decision::Deny { reason } => assert!(reason.contains("bastion's own"), "{reason}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn names_and_resolution() {
        let p = policy(&[(&["*"], &["*.internal:22", "db.example.com:5432"])]);
        assert!(allowed(&ask(&p, "a", "db.internal", 22, &["10.9.0.1"])));
        assert!(allowed(&ask(&p, "a", "a.b.internal", 22, &["10.9.0.1"])));
        assert!(!allowed(&ask(&p, "a", "internal", 22, &["10.9.0.1"])));
        assert!(!allowed(&ask(&p, "a", "db.internalx", 22, &["10.9.0.1"])));
        assert!(allowed(&ask(
            &p,
            "a",
            "DB.Example.com.",
            5432,
            &["10.9.0.2"]
        )));
        match ask(&p, "a", "x.internal", 22, &["127.0.0.1", "10.0.0.9"]) {
            Decision::Allow { addr, .. } => assert_eq!(
                addr,
                "10.0.0.9:22".parse().unwrap(),
                "the loopback answer is skipped"
            ),
            d => panic!("{d:?}"),
        }
        match ask(&p, "a", "x.internal", 22, &["127.0.0.1"]) {
            Decision::Deny { reason } => assert!(reason.contains("loopback"), "{reason}"),
            d => panic!("{d:?}"),
        }
        match ask(&p, "a", "x.internal", 22, &[]) {
            Decision::Deny { reason } => assert!(reason.contains("did not resolve"), "{reason}"),
            d => panic!("{d:?}"),
        }
        match ask(&p, "a", "web.example.org", 22, &["10.1.0.1", "10.1.0.2"]) {
            Decision::Deny { reason } => {
                assert!(reason.contains("none of the 2 addresses"), "{reason}")
            }
            d => panic!("{d:?}"),
        }
        // An IP literal never matches a name rule, even if it "looks" like one.
        assert!(!allowed(&ask(&p, "a", "10.9.0.1", 22, &["10.9.0.1"])));
    }

    #[test]
    fn allow_names_the_rule() {
        let p = policy(&[
            (&["bob"], &["10.0.0.0/8:22"]),
            (&["*"], &["10.1.0.0/16:22"]),
        ]);
        match ask(&p, "alice", "10.1.2.3", 22, &["10.1.2.3"]) {
            Decision::Allow { rule, reason, .. } => {
                assert_eq!(rule, 1);
                assert!(reason.contains("allow[1] (10.1.0.0/16:22)"), "{reason}");
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn instances_by_id_and_tag() {
        let t: Target = "tag:aws:cloudformation:stack-name=web-*:22"
            .parse()
            .unwrap();
        assert_eq!(
            (t.lo, t.hi, t.host),
            (
                22,
                22,
                HostPattern::Tag {
                    key: "aws:cloudformation:stack-name".into(),
                    value: "web-*".into()
                }
            )
        );
        let t: Target = "tag:env=dev".parse().unwrap();
        assert_eq!((t.lo, t.hi), (1, 65535));
        for bad in ["tag:env", "tag:=dev:22", "tag:e*=dev", "tag:env=dev:0"] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
        let p = policy(&[(&["alice"], &["tag:env=dev:22", "i-0aa*:22"])]);
        let who = Subject {
            login: "alice",
            user: "alice",
            groups: &[],
        };
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let dev = vec![("env".to_string(), "dev".to_string())];
        let prod = vec![("env".to_string(), "prod".to_string())];
        let ask = |id: &str, port: u16, tags: &[(String, String)]| {
            p.decide_with_tags(&who, id, port, &[ip], Some(tags))
        };
        assert!(allowed(&ask("i-0123456789abcdef0", 22, &dev)));
        assert!(!allowed(&ask("i-0123456789abcdef0", 22, &prod)));
        assert!(!allowed(&ask("i-0123456789abcdef0", 23, &dev)));
        // Tag values are case-sensitive, as in EC2.
        let dev_upper = vec![("env".to_string(), "Dev".to_string())];
        assert!(!allowed(&ask("i-0123456789abcdef0", 22, &dev_upper)));
        assert!(allowed(&ask("i-0aa3456789abcdef0", 22, &prod)));
        assert!(p.could_allow_instance(&who, "i-0123456789abcdef0", 22));
        assert!(!p.could_allow_instance(&who, "i-0123456789abcdef0", 23));
        let ids_only = policy(&[(&["alice"], &["i-0aa*:22", "10.0.0.0/8:22"])]);
        assert!(ids_only.could_allow_instance(&who, "i-0aa3456789abcdef0", 22));
        assert!(!ids_only.could_allow_instance(&who, "i-0bb3456789abcdef0", 22));
        let bob = Subject {
            login: "bob",
            user: "bob",
            groups: &[],
        };
        assert!(!p.could_allow_instance(&bob, "i-0123456789abcdef0", 22));
        // A tag rule matches nothing that is not an instance, and never a protected address.
        assert!(!allowed(&p.decide(&who, "10.1.2.3", 22, &[ip])));
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!allowed(&p.decide_with_tags(
            &who,
            "i-0123456789abcdef0",
            22,
            &[lo],
            Some(&dev)
        )));
    }
}
