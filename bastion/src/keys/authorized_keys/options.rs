//! The options of an `authorized_keys` line (`sshd(8)`, "AUTHORIZED_KEYS FILE FORMAT"): how
//! they are parsed, and what `from=`, `permitopen=` and `expiry-time=` allow.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use super::{next_token, KeyError};

/// Options that are parsed and deliberately ignored (the bastion has no PTY, agent, X11, ...).
const IGNORED_FLAGS: &[&str] = &[
    "no-agent-forwarding",
    "no-x11-forwarding",
    "no-pty",
    "no-user-rc",
    "agent-forwarding",
    "x11-forwarding",
    "pty",
    "user-rc",
    "no-touch-required",
    "verify-required",
];

/// One `permitopen="host:port"` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermitOpen {
    /// Host as written, without the brackets of a bracketed IPv6 address.
    pub host: String,
    /// Port; `None` means `*` (any port).
    pub port: Option<u16>,
}

/// The options of one `authorized_keys` line that the bastion interprets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyOptions {
    /// Raw pattern-list of `from="..."`.
    pub from: Option<String>,
    /// `permitopen="..."` entries; empty means no narrowing.
    pub permitopen: Vec<PermitOpen>,
    /// `expiry-time="..."`, interpreted as UTC (OpenSSH uses local time unless the value ends
    /// in `Z`; our bastions run in UTC). If given several times, the earliest wins, as in sshd.
    pub expiry: Option<SystemTime>,
    /// `false` after `restrict` or `no-port-forwarding`, `true` again after a later
    /// `port-forwarding`; `true` by default.
    pub port_forwarding: bool,
    /// `command="..."`, kept for the audit trail (the bastion has no shell).
    pub command: Option<String>,
    /// `restrict` was given.
    pub restrict: bool,
}

impl Default for KeyOptions {
    /// No options at all: everything allowed, in particular port forwarding.
    fn default() -> Self {
        Self {
            from: None,
            permitopen: Vec::new(),
            expiry: None,
            port_forwarding: true,
            command: None,
            restrict: false,
        }
    }
}

impl KeyOptions {
    /// OpenSSH `from=` semantics against the client's IP address.
    ///
    /// No DNS is done: hostname patterns only match if they match the textual IP. The pattern
    /// list is comma separated; `*` and `?` are wildcards; a leading `!` negates (a negated
    /// match denies outright); CIDR entries like `10.0.0.0/8` or `2001:db8::/32` are supported.
    /// A malformed list (empty entry, CIDR with host bits set) denies, like sshd.
    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are treated as the IPv4 address.
    /// `None` allows every address.
    #[must_use]
    pub fn from_allows(&self, addr: IpAddr) -> bool {
        let Some(list) = &self.from else {
            return true;
        };
        let addr = addr.to_canonical();
        let text = addr.to_string();
        let mut allowed = false;
        for entry in list.split(',') {
            let (negated, pattern) = match entry.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, entry),
            };
            let matched = match FromPattern::parse(pattern) {
                Ok(FromPattern::Net(net)) => net.contains(&addr),
                Ok(FromPattern::Wildcard(p)) => wildcard_match(&text, p),
                Err(_) => return false,
            };
            if matched && negated {
                return false;
            }
            allowed |= matched;
        }
        allowed
    }

    /// `true` when `expiry-time` is set and `now` is at or past it.
    #[must_use]
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expiry.is_some_and(|t| now >= t)
    }

    /// OpenSSH `permitopen` semantics: an empty list permits everything; otherwise some entry
    /// must have a host equal to `host` (case-insensitive literal compare, no resolution;
    /// brackets around an IPv6 `host` are ignored) and a port that is `*` or equal to `port`.
    #[must_use]
    pub fn permits_open(&self, host: &str, port: u16) -> bool {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        self.permitopen.is_empty()
            || self
                .permitopen
                .iter()
                .any(|p| p.host.eq_ignore_ascii_case(host) && p.port.unwrap_or(port) == port)
    }
}

/// Parse the comma-separated option list at the start of `s`; returns the options and the
/// text after them (the key part).
pub(super) fn parse_options(s: &str) -> Result<(KeyOptions, &str), KeyError> {
    let mut opts = KeyOptions::default();
    let mut rest = s;
    loop {
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(rest.len());
        let (name, after) = rest.split_at(name_len);
        if name.is_empty() {
            return Err(KeyError::BadOption {
                name: next_token(rest).0.into(),
                reason: "expected an option name here".into(),
            });
        }
        rest = after;
        let value = match rest.strip_prefix('=') {
            Some(v) => {
                let (value, after) = take_quoted(name, v)?;
                rest = after;
                Some(value)
            }
            None => None,
        };
        apply_option(&mut opts, name, value)?;
        match rest.chars().next() {
            Some(',') => rest = &rest[1..],
            Some(c) if c.is_whitespace() => return Ok((opts, rest.trim_start())),
            None => return Err(KeyError::MissingKey),
            Some(c) => {
                return Err(KeyError::BadOption {
                    name: name.into(),
                    reason: format!("unexpected character {c:?} after the option"),
                })
            }
        }
    }
}

/// Read a double-quoted value at the start of `s` (`\"` is an escaped quote); returns the
/// unescaped value and the text after the closing quote.
fn take_quoted<'a>(name: &str, s: &'a str) -> Result<(String, &'a str), KeyError> {
    let bad = |reason: &str| KeyError::BadOption {
        name: name.into(),
        reason: reason.into(),
    };
    let body = s
        .strip_prefix('"')
        .ok_or_else(|| bad("the value must be in double quotes"))?;
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &body[i + 1..])),
            '\\' if body[i + 1..].starts_with('"') => {
                value.push('"');
                chars.next();
            }
            _ => value.push(c),
        }
    }
    Err(bad("the closing double quote is missing"))
}

/// Apply one option to `opts`.
fn apply_option(opts: &mut KeyOptions, name: &str, value: Option<String>) -> Result<(), KeyError> {
    let bad = |reason: &str| KeyError::BadOption {
        name: name.into(),
        reason: reason.into(),
    };
    let lower = name.to_ascii_lowercase();
    let lower = lower.as_str();
    let takes_value = matches!(
        lower,
        "from" | "permitopen" | "expiry-time" | "command" | "environment" | "tunnel"
    );
    let is_flag = matches!(lower, "restrict" | "no-port-forwarding" | "port-forwarding")
        || IGNORED_FLAGS.contains(&lower);
    if lower == "cert-authority" || lower == "principals" {
        return Err(KeyError::CertAuthorityNotSupported);
    }
    if !takes_value && !is_flag {
        return Err(KeyError::UnknownOption(name.into()));
    }
    let value = match (takes_value, value) {
        (true, Some(v)) => v,
        (true, None) => return Err(bad("a quoted value is required")),
        (false, Some(_)) => return Err(bad("this option takes no value")),
        (false, None) => String::new(),
    };
    match lower {
        "restrict" => {
            opts.restrict = true;
            opts.port_forwarding = false;
        }
        "no-port-forwarding" => opts.port_forwarding = false,
        "port-forwarding" => opts.port_forwarding = true,
        "command" if opts.command.is_some() => return Err(bad("given more than once")),
        "command" => opts.command = Some(value),
        "from" if opts.from.is_some() => return Err(bad("given more than once")),
        "from" => {
            for entry in value.split(',') {
                FromPattern::parse(entry.strip_prefix('!').unwrap_or(entry))
                    .map_err(|reason| bad(&reason))?;
            }
            opts.from = Some(value);
        }
        "permitopen" => opts.permitopen.push(parse_permitopen(&value)?),
        "expiry-time" => {
            let t = parse_expiry(&value)?;
            opts.expiry = Some(opts.expiry.map_or(t, |old| old.min(t)));
        }
        _ => {} // accepted and ignored
    }
    Ok(())
}

/// One entry of a `from=` pattern list (without its `!`).
enum FromPattern<'a> {
    /// An address or CIDR network.
    Net(IpNet),
    /// A `*`/`?` pattern matched against the textual address.
    Wildcard(&'a str),
}

impl<'a> FromPattern<'a> {
    /// Classify an entry; an error is a reason the whole list is invalid.
    fn parse(entry: &'a str) -> Result<Self, String> {
        if entry.is_empty() {
            return Err("the pattern list has an empty entry".into());
        }
        if let Ok(addr) = entry.parse::<IpAddr>() {
            return Ok(Self::Net(IpNet::from(addr)));
        }
        match entry.parse::<IpNet>() {
            Ok(net) if net.trunc() != net => Err(format!(
                "{entry} has bits set beyond its prefix length (did you mean {}?)",
                net.trunc()
            )),
            Ok(net) => Ok(Self::Net(net)),
            Err(_) => Ok(Self::Wildcard(entry)),
        }
    }
}

/// Case-insensitive match of `text` against a pattern with `*` (any run) and `?` (any byte).
pub(super) fn wildcard_match(text: &str, pattern: &str) -> bool {
    let (t, p) = (text.as_bytes(), pattern.as_bytes());
    let (mut ti, mut pi) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while let Some(&tc) = t.get(ti) {
        match p.get(pi) {
            Some(b'*') => {
                backtrack = Some((pi, ti));
                pi += 1;
            }
            Some(&pc) if pc == b'?' || pc.eq_ignore_ascii_case(&tc) => {
                pi += 1;
                ti += 1;
            }
            _ => match backtrack {
                Some((star_p, star_t)) => {
                    backtrack = Some((star_p, star_t + 1));
                    pi = star_p + 1;
                    ti = star_t + 1;
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|r| r.iter().all(|&c| c == b'*'))
}

/// Parse a `permitopen` value: `host:port`, `[v6]:port`, port may be `*`.
fn parse_permitopen(value: &str) -> Result<PermitOpen, KeyError> {
    let bad = |reason| KeyError::BadPermitOpen {
        value: value.into(),
        reason,
    };
    let (host, port) = match value.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("expected ':' and a port after ']'"))?;
            (host, port)
        }
        None => value
            .split_once(':')
            .ok_or_else(|| bad("expected host:port"))?,
    };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    let port = match port {
        "*" => None,
        p => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(bad("the port must be 1-65535 or '*'")),
        },
    };
    Ok(PermitOpen {
        host: host.into(),
        port,
    })
}

/// Parse `YYYYMMDD[HHMM[SS]][Z]` as a UTC time (see [`KeyOptions::expiry`]).
fn parse_expiry(value: &str) -> Result<SystemTime, KeyError> {
    let bad = || KeyError::BadExpiry(value.into());
    let digits = value.strip_suffix(['Z', 'z']).unwrap_or(value);
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // Missing fields (hour/minute/second) read as 0.
    let field = |range: std::ops::Range<usize>| -> i64 {
        digits.as_bytes().get(range).map_or(0, |d| {
            d.iter().fold(0, |acc, &b| acc * 10 + i64::from(b - b'0'))
        })
    };
    let (year, month, day) = (field(0..4), field(4..6), field(6..8));
    let (hour, min, sec) = (field(8..10), field(10..12), field(12..14));
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || min > 59
        || sec > 59
    {
        return Err(bad());
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + min * 60 + sec;
    let time = match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH.checked_add(Duration::from_secs(s)),
        Err(_) => UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs())),
    };
    time.ok_or_else(bad)
}

/// Number of days in `month` (1-12) of `year` (proleptic Gregorian).
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
