//! PROXY protocol version 2 (what an AWS Network Load Balancer sends when
//! `proxy_protocol_v2` is enabled on its target group): the client's real
//! address, ahead of the SSH bytes, so that the audit trail, `from=` key
//! options and per-source admission see the client rather than the load
//! balancer.
//!
//! With `proxy_protocol = true` every connection must start with a valid v2
//! header (fail closed: a connection without one is dropped); enable it only
//! where nothing but the load balancer can reach the listen port. `LOCAL`
//! headers (the load balancer's own health checks) keep the socket's peer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest address block accepted (addresses plus TLVs such as the NLB's
/// VPC endpoint id); the format allows 65535, nobody needs that.
const MAX_BLOCK: usize = 1024;
/// How long a connection may take to send its header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error(
        "no PROXY protocol v2 signature (is proxy_protocol on without a load balancer sending it?)"
    )]
    Signature,
    #[error("PROXY protocol version {0} is not supported (only 2)")]
    Version(u8),
    #[error("unknown PROXY command {0:#x}")]
    Command(u8),
    #[error("PROXY address block of {0} bytes is longer than {MAX_BLOCK}")]
    TooLong(usize),
    #[error("PROXY address family/protocol {0:#04x} is not TCP over IPv4 or IPv6")]
    Family(u8),
    #[error("PROXY address block too short for its family")]
    Short,
    #[error("reading the PROXY header: {0}")]
    Io(String),
    #[error("no PROXY header within {}s", HEADER_TIMEOUT.as_secs())]
    Timeout,
}

/// The 16-byte fixed part: (command, family byte, address block length).
pub fn parse_fixed(head: &[u8; 16]) -> Result<(bool, u8, usize), ProxyError> {
    if head[..12] != SIGNATURE {
        return Err(ProxyError::Signature);
    }
    let version = head[12] >> 4;
    if version != 2 {
        return Err(ProxyError::Version(version));
    }
    let local = match head[12] & 0x0f {
        0x0 => true,
        0x1 => false,
        c => return Err(ProxyError::Command(c)),
    };
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    if len > MAX_BLOCK {
        return Err(ProxyError::TooLong(len));
    }
    Ok((local, head[13], len))
}

/// The source address in the address block of a `PROXY` (not `LOCAL`) header.
pub fn parse_source(family: u8, block: &[u8]) -> Result<SocketAddr, ProxyError> {
    match family {
        // TCP over IPv4: src 4, dst 4, src port 2, dst port 2.
        0x11 => {
            let b = block.get(..12).ok_or(ProxyError::Short)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Ok(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([b[8], b[9]]),
            ))
        }
        // TCP over IPv6: src 16, dst 16, src port 2, dst port 2.
        0x21 => {
            let b = block.get(..36).ok_or(ProxyError::Short)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            Ok(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([b[32], b[33]]),
            ))
        }
        f => Err(ProxyError::Family(f)),
    }
}

/// Reads exactly the header from `stream` (nothing of what follows) and
/// returns the client's address; `peer` for `LOCAL` headers.
pub async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, ProxyError> {
    let work = async {
        let mut head = [0u8; 16];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|e| ProxyError::Io(e.to_string()))?;
        let (local, family, len) = parse_fixed(&head)?;
        let mut block = vec![0u8; len];
        stream
            .read_exact(&mut block)
            .await
            .map_err(|e| ProxyError::Io(e.to_string()))?;
        if local {
            Ok(peer)
        } else {
            parse_source(family, &block)
        }
    };
    tokio::time::timeout(HEADER_TIMEOUT, work)
        .await
        .map_err(|_| ProxyError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.push(cmd);
        h.push(fam);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    fn fixed(h: &[u8]) -> [u8; 16] {
        h[..16].try_into().unwrap()
    }

    #[test]
    fn ipv4_and_ipv6_sources() {
        let mut v4 = vec![198, 51, 100, 7, 10, 0, 0, 1];
        v4.extend_from_slice(&4444u16.to_be_bytes());
        v4.extend_from_slice(&22u16.to_be_bytes());
        v4.extend_from_slice(&[0x03, 0x00, 0x04, 1, 2, 3, 4]); // a TLV after the addresses
        let h = header(0x21, 0x11, &v4);
        assert_eq!(parse_fixed(&fixed(&h)), Ok((false, 0x11, v4.len())));
        assert_eq!(
            parse_source(0x11, &h[16..]),
            Ok("198.51.100.7:4444".parse().unwrap())
        );
        let mut v6 = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        v6.extend_from_slice(&[0u8; 16]);
        v6.extend_from_slice(&[0x11, 0x5c, 0, 22]);
        assert_eq!(
            parse_source(0x21, &v6),
            Ok("[2001:db8::7]:4444".parse().unwrap())
        );
    }

    #[test]
    fn refusals() {
        let mut bad = header(0x21, 0x11, &[0; 12]);
        bad[0] = b'X';
        assert_eq!(parse_fixed(&fixed(&bad)), Err(ProxyError::Signature));
        let h = header(0x11, 0x11, &[0; 12]);
        assert_eq!(parse_fixed(&fixed(&h)), Err(ProxyError::Version(1)));
        let h = header(0x22, 0x11, &[0; 12]);
        assert_eq!(parse_fixed(&fixed(&h)), Err(ProxyError::Command(2)));
        let h = header(0x20, 0x00, &[]);
        assert_eq!(parse_fixed(&fixed(&h)), Ok((true, 0, 0)), "LOCAL");
        let mut long = header(0x21, 0x11, &[]);
        long[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(parse_fixed(&fixed(&long)), Err(ProxyError::TooLong(2000)));
        assert_eq!(
            parse_source(0x12, &[0; 12]),
            Err(ProxyError::Family(0x12)),
            "UDP"
        );
        assert_eq!(
            parse_source(0x31, &[0; 216]),
            Err(ProxyError::Family(0x31)),
            "unix"
        );
        assert_eq!(parse_source(0x11, &[0; 11]), Err(ProxyError::Short));
        // A plain SSH client's first bytes are not a header.
        let ssh: [u8; 16] = *b"SSH-2.0-OpenSSH_";
        assert_eq!(parse_fixed(&ssh), Err(ProxyError::Signature));
    }
}
