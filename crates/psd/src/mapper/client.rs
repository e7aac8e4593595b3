//! Who the client is: the peer address, or, when the peer is a trusted proxy,
//! the rightmost untrusted address it forwarded (`Forwarded`, RFC 7239, or
//! else `X-Forwarded-For`). Headers from untrusted peers are ignored, so a
//! client cannot claim another address. And how much each address holds
//! (`PerClient`): the one count behind `MaxSessionsPerClient` and
//! `MaxConnectionsPerClient`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use http::HeaderMap;

/// An address range, `ADDR` or `ADDR/BITS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => match b.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("'{s}': prefix length must be 0..={max}")),
            },
        };
        Ok(Cidr { addr, bits })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (canonical(self.addr), ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), u32::from(ip).into(), 32, self.bits)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), u128::from(ip), 128, self.bits)
            }
            _ => false,
        }
    }
}

fn masked(net: u128, ip: u128, width: u32, bits: u8) -> bool {
    let shift = width - u32::from(bits);
    if shift >= 128 {
        return true;
    }
    (net >> shift) == (ip >> shift)
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Whether `ip` is one of the `TrustedProxy` ranges.
pub fn trusts(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// The client's address for a request that arrived from `peer`.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusts(trusted, ip);
    if !is_trusted(peer) {
        return peer;
    }
    let chain = forwarded_for(headers).unwrap_or_else(|| x_forwarded_for(headers));
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop {
            // An address we cannot read ends the walk: what lies left of it
            // could be anything.
            None => break,
            Some(ip) => {
                client = *ip;
                if !is_trusted(*ip) {
                    break;
                }
            }
        }
    }
    canonical(client)
}

/// What a trusted proxy says about the request it forwards: the scheme,
/// host and path prefix the client used.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    pub https: Option<bool>,
    pub host: Option<String>,
    pub prefix: Option<String>,
}

/// `X-Forwarded-Proto/-Host/-Prefix` (or `Forwarded` `proto=`/`host=`),
/// believed only from a trusted peer. The first value of a list is the one
/// the client's own request carried.
pub fn forwarded(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> Forwarded {
    if !trusts(trusted, peer) {
        return Forwarded::default();
    }
    let first = |name: &str| {
        let value = headers.get(name)?.to_str().ok()?;
        let first = value.split(',').next()?.trim();
        (!first.is_empty()).then(|| first.to_string())
    };
    let rfc7239 = |key: &str| {
        let value = headers.get("forwarded")?.to_str().ok()?;
        value.split(',').next()?.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case(key)
                .then(|| v.trim().trim_matches('"').to_string())
        })
    };
    let proto = first("x-forwarded-proto").or_else(|| rfc7239("proto"));
    let prefix = first("x-forwarded-prefix")
        .map(|p| p.trim_end_matches('/').to_string())
        .filter(|p| p.is_empty() || p.starts_with('/'));
    Forwarded {
        https: proto.map(|p| p.eq_ignore_ascii_case("https")),
        host: first("x-forwarded-host").or_else(|| rfc7239("host")),
        prefix,
    }
}

/// The `for=` addresses of every `Forwarded` header, in order, or `None`
/// when there is no such header.
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut values = headers.get_all("forwarded").iter().peekable();
    values.peek()?;
    let mut hops = vec![];
    for value in values {
        let Ok(value) = value.to_str() else {
            hops.push(None);
            continue;
        };
        for element in value.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| v.trim().trim_matches('"'))
            });
            if let Some(node) = node {
                hops.push(parse_node(node));
            }
        }
    }
    Some(hops)
}

fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|hop| parse_node(hop.trim()))
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    node.parse()
        .ok()
        .or_else(|| node.rsplit_once(':')?.0.parse().ok())
}

/// What each client address holds (sessions, connections), each bounded.
#[derive(Default)]
pub(crate) struct PerClient {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One thing held by an address; given back on drop.
pub(crate) struct Held {
    per_client: Arc<PerClient>,
    addr: IpAddr,
}

impl PerClient {
    /// One more for `addr`, unless it already holds `max`.
    pub fn take(self: &Arc<Self>, addr: IpAddr, max: usize) -> Option<Held> {
        let mut counts = self.counts.lock().expect("per-client lock");
        let n = counts.get(&addr).copied().unwrap_or(0);
        if n >= max {
            return None;
        }
        counts.insert(addr, n + 1);
        Some(Held {
            per_client: self.clone(),
            addr,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut counts = self.per_client.counts.lock().expect("per-client lock");
        if let Some(n) = counts.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cidr_ranges() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.2.3.4")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.9.9.9")), "mapped IPv4");
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains(ip("2001:db8::1")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("proxy".parse::<Cidr>().is_err());
    }

    #[test]
    fn untrusted_peers_cannot_claim_an_address() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=6.6.6.6")]);
        assert_eq!(
            client_addr(ip("9.9.9.9"), &h, &["10.0.0.0/8".parse().unwrap()]),
            ip("9.9.9.9")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = ["10.0.0.0/8".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.0.0.7")]);
        assert_eq!(client_addr(ip("127.0.0.1"), &h, &trusted), ip("2.2.2.2"));
        let all_trusted = headers(&[("x-forwarded-for", "10.0.0.1, 10.0.0.2")]);
        assert_eq!(
            client_addr(ip("127.0.0.1"), &all_trusted, &trusted),
            ip("10.0.0.1")
        );
        let garbage = headers(&[("x-forwarded-for", "1.1.1.1, nonsense, 10.0.0.2")]);
        assert_eq!(
            client_addr(ip("127.0.0.1"), &garbage, &trusted),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn scheme_host_and_prefix_come_only_from_trusted_proxies() {
        let trusted = ["127.0.0.1".parse().unwrap()];
        let h = headers(&[
            ("x-forwarded-proto", "https, http"),
            ("x-forwarded-host", "www.example.com"),
            ("x-forwarded-prefix", "/outer/"),
        ]);
        let seen = forwarded(ip("127.0.0.1"), &h, &trusted);
        assert_eq!(
            seen,
            Forwarded {
                https: Some(true),
                host: Some("www.example.com".into()),
                prefix: Some("/outer".into())
            }
        );
        assert_eq!(
            forwarded(ip("127.0.0.2"), &h, &trusted),
            Forwarded::default()
        );
        let rfc = headers(&[("forwarded", "for=1.2.3.4;proto=https;host=\"a.example\"")]);
        let seen = forwarded(ip("127.0.0.1"), &rfc, &trusted);
        assert_eq!(
            (seen.https, seen.host.as_deref()),
            (Some(true), Some("a.example"))
        );
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for() {
        let trusted = ["127.0.0.0/8".parse().unwrap()];
        let h = headers(&[
            ("x-forwarded-for", "3.3.3.3"),
            (
                "forwarded",
                "for=192.0.2.60;proto=http;by=203.0.113.43, for=\"[2001:db8:cafe::17]:4711\"",
            ),
        ]);
        assert_eq!(
            client_addr(ip("127.0.0.1"), &h, &trusted),
            ip("2001:db8:cafe::17")
        );
        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(
            client_addr(ip("127.0.0.1"), &unknown, &trusted),
            ip("127.0.0.1")
        );
    }
}
