//! Parsing of OpenSSH `authorized_keys` files (`sshd(8)`, section "Authorized keys file format").
//!
//! Only the parts a bastion relies on are interpreted: the key itself, `from=`, `permitopen=`,
//! `expiry-time=`, `restrict` / `[no-]port-forwarding` and `command=` (kept for auditing).
//! Options that only matter for shells/PTYs/agents are parsed and ignored. Anything the
//! bastion cannot honour safely (certificates, `cert-authority`, unknown options) makes the
//! line fail, which, as in sshd, means the line is skipped.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use ipnet::IpNet;
use sha2::{Digest, Sha256};

/// Key algorithms accepted in plain (non-certificate) form.
const ACCEPTED_ALGOS: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Suffix shared by all OpenSSH certificate key types.
const CERT_SUFFIX: &str = "-cert-v01@openssh.com";

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

/// Why a key or an `authorized_keys` line was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The line (or the part after the options) has no key type and key data.
    #[error("no public key found (expected \"ALGORITHM BASE64 [comment]\")")]
    MissingKey,
    /// The key data is not valid base64.
    #[error("key data is not valid base64: {0}")]
    BadBase64(base64::DecodeError),
    /// The algorithm named on the line differs from the one encoded in the key blob.
    #[error("key type {algo:?} does not match the key data, which is of type {found:?}")]
    AlgoMismatch {
        /// Algorithm named on the line.
        algo: String,
        /// Algorithm found in the blob (lossy UTF-8, or a description if the blob is malformed).
        found: String,
    },
    /// A key algorithm the bastion does not accept.
    #[error("unsupported key algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// An OpenSSH certificate was given instead of a plain key.
    #[error("certificates are not supported yet (key type {0:?})")]
    CertificateNotSupported(String),
    /// The `cert-authority` or `principals=` option was used.
    #[error("cert-authority keys are not supported yet")]
    CertAuthorityNotSupported,
    /// An option name that is not part of the `authorized_keys` format (or not supported here).
    #[error("unknown option {0:?}")]
    UnknownOption(String),
    /// A known option used incorrectly.
    #[error("bad option {name:?}: {reason}")]
    BadOption {
        /// Option name as written.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `expiry-time=` value that is not a valid `YYYYMMDD[HHMM[SS]][Z]` timestamp.
    #[error("bad expiry-time {0:?}: expected YYYYMMDD[HHMM[SS]][Z]")]
    BadExpiry(String),
    /// A `permitopen=` value that is not `host:port`.
    #[error("bad permitopen {value:?}: {reason}")]
    BadPermitOpen {
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A public key in SSH wire format, decoded from the base64 of an OpenSSH key line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyBlob {
    /// Key algorithm, e.g. `ssh-ed25519`.
    pub algo: String,
    /// The decoded key blob (SSH wire format, starting with the algorithm string).
    pub blob: Vec<u8>,
}

impl PublicKeyBlob {
    /// Parse "ALGO BASE64 [comment]" (e.g. what `ssh-keygen` writes to `id_ed25519.pub`).
    ///
    /// Validates that the base64 decodes and that the blob's first SSH string
    /// (u32 big-endian length + bytes) equals ALGO. Only the algorithms listed in
    /// sshd's modern defaults are accepted.
    ///
    /// # Errors
    ///
    /// [`KeyError::MissingKey`], [`KeyError::CertificateNotSupported`],
    /// [`KeyError::UnsupportedAlgorithm`], [`KeyError::BadBase64`] or [`KeyError::AlgoMismatch`].
    pub fn from_openssh(s: &str) -> Result<Self, KeyError> {
        parse_key(s).map(|(key, _comment)| key)
    }

    /// `"SHA256:"` + unpadded standard base64 of sha256(blob), exactly as `ssh-keygen -lf` prints it.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            STANDARD_NO_PAD.encode(Sha256::digest(&self.blob))
        )
    }

    /// `"ALGO BASE64"` (no comment).
    #[must_use]
    pub fn to_openssh(&self) -> String {
        format!("{} {}", self.algo, STANDARD.encode(&self.blob))
    }
}

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

/// One successfully parsed `authorized_keys` line.
#[derive(Clone, Debug)]
pub struct AuthorizedKey {
    /// The public key.
    pub key: PublicKeyBlob,
    /// Its options.
    pub options: KeyOptions,
    /// Trailing comment (may be empty).
    pub comment: String,
    /// 1-based line number in the file.
    pub line: usize,
}

/// A line that was skipped, and why.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct LineError {
    /// 1-based line number in the file.
    pub line: usize,
    /// What was wrong with it.
    pub error: KeyError,
}

/// Result of parsing a whole `authorized_keys` file.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Keys from the lines that parsed.
    pub keys: Vec<AuthorizedKey>,
    /// Lines that were skipped.
    pub errors: Vec<LineError>,
}

/// Parse a whole `authorized_keys` file.
///
/// Blank lines and `#` comments are skipped. A line with a bad key or a bad/unknown option is
/// skipped and reported in `errors` (as sshd does: it ignores lines it cannot parse); other
/// lines still load.
#[must_use]
pub fn parse_authorized_keys(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        match parse_line(content) {
            Ok((key, options, comment)) => parsed.keys.push(AuthorizedKey {
                key,
                options,
                comment,
                line,
            }),
            Err(error) => parsed.errors.push(LineError { line, error }),
        }
    }
    parsed
}

/// Is this a login name the bastion accepts (before any key source sees it)?
///
/// 1..=64 bytes of `[A-Za-z0-9._@+=,-]`, not starting with `.` or `-`, and not `.` or `..`.
/// # Errors
///
/// A short human sentence saying why the name is rejected.
pub fn validate_login(login: &str) -> Result<(), String> {
    if login.is_empty() {
        return Err("login name is empty".into());
    }
    if login.len() > 64 {
        return Err(format!(
            "login name is {} bytes long; at most 64 are allowed",
            login.len()
        ));
    }
    if login == "." || login == ".." {
        return Err(format!("login name must not be {login:?}"));
    }
    if login.starts_with(['.', '-']) {
        return Err("login name must not start with '.' or '-'".into());
    }
    if let Some(c) = login
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._@+=,-".contains(*c)))
    {
        return Err(format!("login name contains the invalid character {c:?}"));
    }
    Ok(())
}

/// Split off the first whitespace-separated token; the rest has leading whitespace removed.
fn next_token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Parse "ALGO BASE64 [comment]" into the key and its (trimmed) comment.
fn parse_key(s: &str) -> Result<(PublicKeyBlob, String), KeyError> {
    let (algo, rest) = next_token(s);
    let (data, comment) = next_token(rest);
    if algo.is_empty() {
        return Err(KeyError::MissingKey);
    }
    if algo.ends_with(CERT_SUFFIX) {
        return Err(KeyError::CertificateNotSupported(algo.into()));
    }
    if !ACCEPTED_ALGOS.contains(&algo) {
        return Err(KeyError::UnsupportedAlgorithm(algo.into()));
    }
    if data.is_empty() {
        return Err(KeyError::MissingKey);
    }
    let blob = STANDARD.decode(data).map_err(KeyError::BadBase64)?;
    let found = blob_algo(&blob);
    if found != Some(algo.as_bytes()) {
        let found = found.map_or_else(
            || "<malformed blob>".to_string(),
            |f| String::from_utf8_lossy(f).into_owned(),
        );
        return Err(KeyError::AlgoMismatch {
            algo: algo.into(),
            found,
        });
    }
    let key = PublicKeyBlob {
        algo: algo.into(),
        blob,
    };
    Ok((key, comment.trim_end().to_string()))
}

/// The first SSH string (u32 big-endian length + bytes) of a key blob.
fn blob_algo(blob: &[u8]) -> Option<&[u8]> {
    let len_bytes: [u8; 4] = blob.get(..4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
    blob.get(4..4_usize.checked_add(len)?)
}

/// Parse one non-blank, non-comment line (already trimmed).
fn parse_line(line: &str) -> Result<(PublicKeyBlob, KeyOptions, String), KeyError> {
    let (first, rest) = next_token(line);
    // No options if the line starts with a key type. Besides the types we know, treat
    // "WORD AAAA..." as a key line so that e.g. `ssh-dss AAAA...` reports the algorithm.
    let starts_with_key = ACCEPTED_ALGOS.contains(&first)
        || first.ends_with(CERT_SUFFIX)
        || (!first.contains(['=', '"', ',']) && rest.starts_with("AAAA"));
    let (options, key_part) = if starts_with_key {
        (KeyOptions::default(), line)
    } else {
        parse_options(line)?
    };
    let (key, comment) = parse_key(key_part)?;
    Ok((key, options, comment))
}

/// Parse the comma-separated option list at the start of `s`; returns the options and the
/// text after them (the key part).
fn parse_options(s: &str) -> Result<(KeyOptions, &str), KeyError> {
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
fn wildcard_match(text: &str, pattern: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    // Generated with `ssh-keygen -t ed25519 -f /tmp/x -N '' -C alice@laptop`; fingerprint from `ssh-keygen -lf`.
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBqB9BGnw1ICJwGKnVlG38R0fBBxm1TP1OfeD5HvjkzW alice@laptop";
    const ED25519_FP: &str = "SHA256:ZzxmvJ0AOExTip8UGrCaNCvkEs6ebM7yEm2PLhFh/bM";
    // `ssh-keygen -t rsa -b 2048 -C bob@ops`.
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDCwLheiWzf+XAJ+TI/JvJGLP2PZ8Fm8jtFCEwLTFlHr3nKpxRv40kErav9ba036W+URXw7Uly0a6TlJbOz/4shQ0oIKMt7d04jk42SUUhd0cJk47779HqDXPXCEo9LE54Hnaov4iaYxlAu/+oSUXB5DrUogB71tkY1Q2SDlsNnGSaV/anKTFiDmnqjZgI2OhMN4Nr7PRjEMswmF4DVzyNOfGfwowhqF9FViMic9sMgTYxVSBuZjzSVTTutWkduDc0nGr9PMFj54toXtS4iWZzqb8gnmcRK50gPk3Bl8jX164SkTCoveXMnIcjzHUXcNkiIYEzFk89FLBdIg1/bs2Lb bob@ops";
    const RSA_FP: &str = "SHA256:T5WBGX/Sd1LoYxsLS4odhKTA2G+mljZK7VIQeedXEdc";
    // `ssh-keygen -t ecdsa -b 256 -C e`.
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBIJnzwzWe1zwMXWeZqTUU0VU25nXN2atCF3261hI0lASTEOoPjw/jo6GbPej5BrLlv7t781k2idzrKse7qzQqVw= e";
    const ECDSA_FP: &str = "SHA256:BdJ/qNLW4ilcJDgzpjf1iubdWG/UPtA4nFG8HECw7kc";

    fn ed25519_key_part() -> &'static str {
        ED25519.rsplit_once(' ').unwrap().0
    }

    fn opts(options: &str) -> KeyOptions {
        let parsed = parse_authorized_keys(&format!("{options} {ED25519}"));
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        parsed.keys.into_iter().next().unwrap().options
    }

    fn line_err(line: &str) -> KeyError {
        let mut parsed = parse_authorized_keys(line);
        assert!(parsed.keys.is_empty(), "{line:?} unexpectedly parsed");
        assert_eq!(parsed.errors.len(), 1);
        parsed.errors.remove(0).error
    }

    /// A blob whose first SSH string is `algo`, followed by some bytes.
    fn fake_key(algo: &str) -> String {
        let mut blob = u32::try_from(algo.len()).unwrap().to_be_bytes().to_vec();
        blob.extend_from_slice(algo.as_bytes());
        blob.extend_from_slice(&[0, 0, 0, 4, 1, 2, 3, 4]);
        format!("{algo} {}", STANDARD.encode(blob))
    }

    fn utc(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
    }

    #[test]
    fn fingerprints_match_ssh_keygen() {
        for (line, fp) in [(ED25519, ED25519_FP), (RSA, RSA_FP), (ECDSA, ECDSA_FP)] {
            let key = PublicKeyBlob::from_openssh(line).unwrap();
            assert_eq!(key.fingerprint(), fp);
        }
    }

    #[test]
    fn to_openssh_round_trips_without_comment() {
        let key = PublicKeyBlob::from_openssh(ED25519).unwrap();
        assert_eq!(key.algo, "ssh-ed25519");
        assert_eq!(key.to_openssh(), ed25519_key_part());
        assert_eq!(PublicKeyBlob::from_openssh(&key.to_openssh()).unwrap(), key);
        let rsa = PublicKeyBlob::from_openssh(RSA).unwrap();
        assert_eq!(format!("{} bob@ops", rsa.to_openssh()), RSA);
    }

    #[test]
    fn security_key_algorithms_are_accepted() {
        for algo in [
            "sk-ssh-ed25519@openssh.com",
            "sk-ecdsa-sha2-nistp256@openssh.com",
            "ecdsa-sha2-nistp521",
        ] {
            assert_eq!(
                PublicKeyBlob::from_openssh(&fake_key(algo)).unwrap().algo,
                algo
            );
        }
    }

    #[test]
    fn key_errors() {
        assert_eq!(PublicKeyBlob::from_openssh(""), Err(KeyError::MissingKey));
        assert_eq!(
            PublicKeyBlob::from_openssh("ssh-ed25519"),
            Err(KeyError::MissingKey)
        );
        assert!(matches!(
            PublicKeyBlob::from_openssh("ssh-ed25519 not*base64"),
            Err(KeyError::BadBase64(_))
        ));
        let swapped = ED25519.replacen("ssh-ed25519", "ssh-rsa", 1);
        assert_eq!(
            PublicKeyBlob::from_openssh(&swapped),
            Err(KeyError::AlgoMismatch {
                algo: "ssh-rsa".into(),
                found: "ssh-ed25519".into()
            })
        );
        let truncated = format!("ssh-ed25519 {}", STANDARD.encode([0, 0, 0, 99, b's']));
        assert!(matches!(
            PublicKeyBlob::from_openssh(&truncated),
            Err(KeyError::AlgoMismatch { found, .. }) if found == "<malformed blob>"
        ));
        let err = PublicKeyBlob::from_openssh(&fake_key("ssh-dss")).unwrap_err();
        assert_eq!(err, KeyError::UnsupportedAlgorithm("ssh-dss".into()));
        assert!(err.to_string().contains("ssh-dss"));
        let cert =
            PublicKeyBlob::from_openssh(&fake_key("ssh-ed25519-cert-v01@openssh.com")).unwrap_err();
        assert!(matches!(cert, KeyError::CertificateNotSupported(_)));
        assert!(cert
            .to_string()
            .starts_with("certificates are not supported yet"));
    }

    #[test]
    fn plain_lines_and_comments() {
        let text = format!(
            "# header\n\n   \n{ED25519}\n  {RSA}  \r\n{}\n",
            ed25519_key_part()
        );
        let parsed = parse_authorized_keys(&text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let lines: Vec<_> = parsed
            .keys
            .iter()
            .map(|k| (k.line, k.comment.as_str()))
            .collect();
        assert_eq!(lines, [(4, "alice@laptop"), (5, "bob@ops"), (6, "")]);
        assert_eq!(parsed.keys[0].options, KeyOptions::default());
        assert!(parsed.keys[0].options.port_forwarding);
    }

    #[test]
    fn comment_with_spaces_is_kept() {
        let parsed =
            parse_authorized_keys(&format!("{} Alice  Smith (laptop)", ed25519_key_part()));
        assert_eq!(parsed.keys[0].comment, "Alice  Smith (laptop)");
    }

    #[test]
    fn quoted_values_with_commas_and_escaped_quotes() {
        let o = opts(r#"command="echo \"a, b\" c\\d",from="10.0.0.0/8,192.168.*",no-pty"#);
        assert_eq!(o.command.as_deref(), Some(r#"echo "a, b" c\\d"#));
        assert_eq!(o.from.as_deref(), Some("10.0.0.0/8,192.168.*"));
        let spaced = opts(r#"command="run this, now""#);
        assert_eq!(spaced.command.as_deref(), Some("run this, now"));
    }

    #[test]
    fn option_names_are_case_insensitive_and_ignored_ones_parse() {
        let o = opts(
            r#"No-Agent-Forwarding,NO-X11-FORWARDING,no-pty,no-user-rc,agent-forwarding,x11-forwarding,pty,user-rc,environment="A=b, c",tunnel="1",no-touch-required,verify-required,PermitOpen="h:1""#,
        );
        assert_eq!(
            o.permitopen,
            [PermitOpen {
                host: "h".into(),
                port: Some(1)
            }]
        );
        assert!(o.port_forwarding && !o.restrict);
    }

    #[test]
    fn restrict_and_port_forwarding() {
        let o = opts("restrict");
        assert!(o.restrict && !o.port_forwarding);
        let o = opts("restrict,port-forwarding");
        assert!(o.restrict && o.port_forwarding);
        let o = opts("port-forwarding,restrict");
        assert!(!o.port_forwarding);
        assert!(!opts("no-port-forwarding").port_forwarding);
        assert!(opts("no-port-forwarding,port-forwarding").port_forwarding);
    }

    #[test]
    fn option_errors() {
        assert_eq!(
            line_err(&format!("bogus {ED25519}")),
            KeyError::UnknownOption("bogus".into())
        );
        assert!(line_err(&format!("no-pty,frob=\"x\" {ED25519}"))
            .to_string()
            .contains("frob"));
        assert_eq!(
            line_err(&format!("cert-authority {ED25519}")),
            KeyError::CertAuthorityNotSupported
        );
        assert_eq!(
            line_err(&format!(r#"principals="alice" {ED25519}"#)).to_string(),
            "cert-authority keys are not supported yet"
        );
        for (line, name) in [
            (format!("command=x {ED25519}"), "command"),
            (format!(r#"command="unterminated {ED25519}"#), "command"),
            (format!("from {ED25519}"), "from"),
            (format!(r#"no-pty="x" {ED25519}"#), "no-pty"),
            (format!(r#"command="a",command="b" {ED25519}"#), "command"),
            (format!(r#"from="10.0.0.1/8" {ED25519}"#), "from"),
            (format!(r#"from="10.0.0.0/8,,1.2.3.4" {ED25519}"#), "from"),
            (format!(r#"command="a"x {ED25519}"#), "command"),
        ] {
            assert!(
                matches!(line_err(&line), KeyError::BadOption { name: ref n, .. } if n == name),
                "{line}: {:?}",
                line_err(&line)
            );
        }
        assert!(matches!(
            line_err(&format!("restrict, {ED25519}")),
            KeyError::BadOption { .. }
        ));
        assert_eq!(line_err("restrict,no-pty"), KeyError::MissingKey);
        assert_eq!(line_err("restrict "), KeyError::MissingKey);
    }

    #[test]
    fn bad_lines_are_reported_good_lines_load() {
        let text = format!(
            "{ED25519}\nnot-a-key-at-all\nfrobnicate {RSA}\n# fine\n{}\nrestrict {}\nssh-rsa AAAA!!!\nexpiry-time=\"2020\" {ED25519}\n{ECDSA}\n",
            fake_key("ssh-dss"),
            fake_key("ssh-rsa-cert-v01@openssh.com"),
        );
        let parsed = parse_authorized_keys(&text);
        let good: Vec<_> = parsed.keys.iter().map(|k| k.line).collect();
        assert_eq!(good, [1, 9]);
        let errors: Vec<_> = parsed
            .errors
            .iter()
            .map(|e| (e.line, e.error.clone()))
            .collect();
        assert_eq!(
            errors[0],
            (2, KeyError::UnknownOption("not-a-key-at-all".into()))
        );
        assert_eq!(errors[1], (3, KeyError::UnknownOption("frobnicate".into())));
        assert_eq!(
            errors[2],
            (5, KeyError::UnsupportedAlgorithm("ssh-dss".into()))
        );
        assert!(matches!(
            errors[3],
            (6, KeyError::CertificateNotSupported(_))
        ));
        assert!(matches!(errors[4], (7, KeyError::BadBase64(_))));
        assert_eq!(errors[5], (8, KeyError::BadExpiry("2020".into())));
        assert_eq!(errors.len(), 6);
        assert!(parsed.errors[0]
            .to_string()
            .starts_with("line 2: unknown option"));
    }

    #[test]
    fn from_cidr_wildcard_negation() {
        let o = opts(r#"from="10.0.0.0/8,192.168.1.?,!10.1.2.3,172.16.*.5""#);
        assert!(o.from_allows(v4(10, 9, 8, 7)));
        assert!(!o.from_allows(v4(10, 1, 2, 3)));
        assert!(o.from_allows(v4(192, 168, 1, 7)));
        assert!(!o.from_allows(v4(192, 168, 1, 70)));
        assert!(o.from_allows(v4(172, 16, 200, 5)));
        assert!(!o.from_allows(v4(11, 0, 0, 1)));
        // A negated match denies even when an earlier entry allowed.
        let o = opts(r#"from="*,!203.0.113.0/24""#);
        assert!(o.from_allows(v4(198, 51, 100, 1)));
        assert!(!o.from_allows(v4(203, 0, 113, 9)));
        // Hostname patterns never match an IP (no DNS); only-negative lists allow nothing.
        assert!(!opts(r#"from="*.example.com""#).from_allows(v4(1, 2, 3, 4)));
        assert!(!opts(r#"from="!10.0.0.1""#).from_allows(v4(1, 2, 3, 4)));
        assert!(KeyOptions::default().from_allows(v4(1, 2, 3, 4)));
    }

    #[test]
    fn from_ipv6_and_v4_mapped() {
        let o = opts(r#"from="2001:db8::/32,::1,fe80::*""#);
        assert!(o.from_allows(v6("2001:db8:1::42")));
        assert!(o.from_allows(v6("0:0::1")));
        assert!(o.from_allows(v6("fe80::abcd")));
        assert!(o.from_allows(v6("FE80::ABCD")));
        assert!(!o.from_allows(v6("2001:db9::1")));
        assert!(!o.from_allows(v4(127, 0, 0, 1)));
        let o = opts(r#"from="10.0.0.0/8,!10.6.6.6""#);
        assert!(o.from_allows(v6("::ffff:10.1.2.3")));
        assert!(!o.from_allows(v6("::ffff:10.6.6.6")));
        assert!(!o.from_allows(v6("::ffff:11.1.2.3")));
        assert!(opts(r#"from="10.1.*""#).from_allows(v6("::ffff:10.1.2.3")));
    }

    #[test]
    fn from_invalid_list_denies() {
        let o = KeyOptions {
            from: Some("10.0.0.0/8,10.0.0.1/8".into()),
            ..KeyOptions::default()
        };
        assert!(!o.from_allows(v4(10, 0, 0, 1)));
        let o = KeyOptions {
            from: Some("10.0.0.0/8,".into()),
            ..KeyOptions::default()
        };
        assert!(!o.from_allows(v4(10, 0, 0, 1)));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("abc", "a*"));
        assert!(wildcard_match("abc", "*c"));
        assert!(wildcard_match("abc", "a?c"));
        assert!(wildcard_match("", "*"));
        assert!(wildcard_match("aXbXc", "a*b*c"));
        assert!(!wildcard_match("abc", "a?"));
        assert!(!wildcard_match("abc", "b*"));
        assert!(!wildcard_match("", "?"));
    }

    #[test]
    fn expiry_time() {
        let o = opts(r#"expiry-time="20300101""#);
        assert_eq!(o.expiry, Some(utc(1_893_456_000)));
        assert!(!o.expired(utc(1_893_455_999)));
        assert!(o.expired(utc(1_893_456_000)));
        assert!(o.expired(utc(1_893_456_001)));
        assert_eq!(
            opts(r#"expiry-time="202501011230Z""#).expiry,
            Some(utc(1_735_734_600))
        );
        assert_eq!(
            opts(r#"expiry-time="20240229235959""#).expiry,
            Some(utc(1_709_251_199))
        );
        assert_eq!(opts(r#"expiry-time="19700101""#).expiry, Some(UNIX_EPOCH));
        assert_eq!(
            opts(r#"expiry-time="19691231235959""#).expiry,
            UNIX_EPOCH.checked_sub(Duration::from_secs(1))
        );
        // Past expiry: parsed fine, reported expired.
        assert!(opts(r#"expiry-time="20200101""#).expired(SystemTime::now()));
        assert!(!opts(r#"expiry-time="99991231""#).expired(SystemTime::now()));
        assert!(!KeyOptions::default().expired(SystemTime::now()));
        // The earliest of several wins.
        let o = opts(r#"expiry-time="20300101",expiry-time="20250101""#);
        assert_eq!(o.expiry, Some(utc(1_735_689_600)));
        for bad in [
            "2030010",
            "203001011",
            "20231301",
            "20230229",
            "20230100",
            "202301012400",
            "202301012360",
            "20230101235960",
            "2023-01-01",
            "20230101ZZ",
            "",
        ] {
            assert_eq!(
                line_err(&format!("expiry-time=\"{bad}\" {ED25519}")),
                KeyError::BadExpiry(bad.into()),
                "{bad}"
            );
        }
    }

    #[test]
    fn permitopen() {
        let o = opts(
            r#"permitopen="DB.internal:5432",permitopen="[2001:db8::1]:*",permitopen="[::1]:22""#,
        );
        assert_eq!(
            o.permitopen[1],
            PermitOpen {
                host: "2001:db8::1".into(),
                port: None
            }
        );
        assert!(o.permits_open("db.internal", 5432));
        assert!(o.permits_open("DB.INTERNAL", 5432));
        assert!(!o.permits_open("db.internal", 5433));
        assert!(!o.permits_open("db", 5432));
        assert!(o.permits_open("2001:db8::1", 1));
        assert!(o.permits_open("2001:DB8::1", 65535));
        assert!(o.permits_open("::1", 22));
        assert!(o.permits_open("[::1]", 22));
        assert!(!o.permits_open("::1", 23));
        let any = opts(r#"permitopen="host:*""#);
        assert!(any.permits_open("host", 1) && any.permits_open("HOST", 8080));
        assert!(KeyOptions::default().permits_open("anything", 1));
        for bad in [
            "host",
            ":22",
            "host:",
            "host:0",
            "host:65536",
            "host:+1",
            "host:x",
            "[::1",
            "[::1]22",
            "[]:22",
            "::1:22",
        ] {
            assert!(
                matches!(line_err(&format!("permitopen=\"{bad}\" {ED25519}")), KeyError::BadPermitOpen { ref value, .. } if value == bad),
                "{bad}"
            );
        }
    }

    #[test]
    fn login_names() {
        for ok in [
            "alice",
            "alice@example.com",
            "bob+ops",
            "a",
            "svc_deploy-1",
            "x=y,z",
            "a.b",
            &"a".repeat(64),
        ] {
            assert_eq!(validate_login(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "-rf",
            "a b",
            "naïve",
            "a\0b",
            &"a".repeat(65),
        ] {
            let err = validate_login(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(validate_login("a/b").unwrap_err().contains("'/'"));
        assert!(validate_login(&"a".repeat(65)).unwrap_err().contains("64"));
    }
}
