//! The client behind a trusted reverse proxy: `--trusted-proxy CIDR` and X-Forwarded-For.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u128::from(u32::from(net)), self.prefix, 32)
                    == masked(u128::from(u32::from(ip)), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128) == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `width`-bit number.
fn masked(value: u128, prefix: u8, width: u8) -> u128 {
    let dropped = u32::from(width - prefix);
    if dropped >= 128 { 0 } else { (value >> dropped) << dropped }
}

/// IPv4-mapped IPv6 addresses (a dual-stack socket's view of an IPv4 peer) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IP address (write 10.0.0.0/8 or ::1)"))?;
        let network = canonical(network);
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(p) if p <= width => p,
                _ => return Err(format!("prefix length {prefix:?} must be 0–{width}")),
            },
        };
        Ok(Self { network, prefix })
    }
}

/// The client a request comes from: `peer` itself, or, when `peer` is a trusted proxy, the
/// right-most X-Forwarded-For address that is not itself trusted (proxies append, so everything
/// left of the last untrusted hop may be forged by the client). `None` of that parses: the peer.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|cidr| cidr.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    // Several X-Forwarded-For headers are one list, in order.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) if is_trusted(ip) => continue,
            Some(ip) => return canonical(ip),
            // Garbage where the client should be: count the proxy rather than guess.
            None => return peer,
        }
    }
    peer
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    hop.rsplit_once(':')?.0.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn forwarded(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn cidrs_parse_and_match() {
        let block: Cidr = "10.1.0.0/16".parse().expect("valid");
        assert!(block.contains(ip("10.1.200.3")));
        assert!(!block.contains(ip("10.2.0.1")));
        assert!(block.contains(ip("::ffff:10.1.0.1")));
        let one: Cidr = "127.0.0.1".parse().expect("valid");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "2001:db8::/32".parse().expect("valid");
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        let all: Cidr = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains(ip("203.0.113.9")));
        for bad in ["10.0.0.0/33", "::/129", "example.org", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().expect("valid")];
        let proxy = ip("10.0.0.1");
        // The client forged "1.1.1.1"; the proxy appended the address it saw.
        let headers = forwarded(&["1.1.1.1, 203.0.113.5"]);
        assert_eq!(client_ip(proxy, &headers, &trusted), ip("203.0.113.5"));
        // A chain of trusted proxies is skipped; several headers are one list.
        let headers = forwarded(&["1.1.1.1, 203.0.113.5", "10.0.0.7"]);
        assert_eq!(client_ip(proxy, &headers, &trusted), ip("203.0.113.5"));
        assert_eq!(client_ip(proxy, &forwarded(&["[2001:db8::5]:4444"]), &trusted), ip("2001:db8::5"));
        assert_eq!(client_ip(proxy, &forwarded(&["198.51.100.2:80"]), &trusted), ip("198.51.100.2"));
        // Nothing usable: the proxy itself.
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        assert_eq!(client_ip(proxy, &forwarded(&["1.1.1.1, nonsense"]), &trusted), proxy);
        // From an untrusted peer the header means nothing.
        let stranger = ip("192.0.2.1");
        assert_eq!(client_ip(stranger, &forwarded(&["203.0.113.5"]), &trusted), stranger);
        assert_eq!(client_ip(proxy, &forwarded(&["203.0.113.5"]), &[]), proxy);
    }
}
