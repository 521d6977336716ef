//! Which Host and Origin headers a request may carry: against DNS rebinding (a foreign name that
//! resolves to this server) and cross-site WebSocket hijacking (a foreign page opening `/ws`).

use std::net::IpAddr;

use axum::http::{HeaderMap, StatusCode, header};

/// The Host names a request may name (`--allowed-host`, and the loopback names by default).
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    /// Every Host is fine: the server listens beyond loopback and no `--allowed-host` was given.
    any: bool,
    /// Lower-case, without port or trailing dot; IPv6 in brackets.
    names: Vec<String>,
}

impl AllowedHosts {
    /// `listening_on_loopback`: a server only reachable from this machine is the one DNS
    /// rebinding targets, so it accepts only loopback names unless told others.
    pub fn new(listening_on_loopback: bool, allowed: &[String]) -> Self {
        let any = !listening_on_loopback && allowed.is_empty();
        Self { any, names: allowed.iter().map(|name| normalize(name)).collect() }
    }

    /// `Ok`, or the status to answer: 400 without a Host, 403 for a Host not allowed.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), StatusCode> {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return Err(StatusCode::BAD_REQUEST);
        };
        if self.any {
            return Ok(());
        }
        let name = normalize(strip_port(host));
        if is_loopback_name(&name) || self.names.contains(&name) {
            Ok(())
        } else {
            Err(StatusCode::FORBIDDEN)
        }
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `example.org:8080` → `example.org`, `[::1]:8080` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(inside, _)| &host[..inside.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn is_loopback_name(name: &str) -> bool {
    if name == "localhost" || name == "[::1]" {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4() && ip.is_loopback())
}

/// Cross-site WebSocket hijacking defence: a browser always sends Origin, so a request without
/// one comes from a native client. A browser page may connect only from the server's own origin
/// (`scheme` is the server's, `http` or `https`, and host:port equals the request's Host) or from
/// an origin in `allowed`.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String], scheme: &str) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    if allowed.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
        return true;
    }
    let origin_host = origin
        .split_once("://")
        .filter(|(origin_scheme, _)| origin_scheme.eq_ignore_ascii_case(scheme))
        .map(|(_, host)| host);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin_host, host) {
        (Some(origin_host), Some(host)) => origin_host.eq_ignore_ascii_case(host),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&'static str>, host: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(header::HOST, HeaderValue::from_static(host));
        }
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
        }
        headers
    }

    #[test]
    fn origin_rules() {
        let host = Some("127.0.0.1:8080");
        assert!(origin_allowed(&headers(None, host), &[], "http"));
        assert!(origin_allowed(&headers(Some("http://127.0.0.1:8080"), host), &[], "http"));
        assert!(!origin_allowed(&headers(Some("https://127.0.0.1:8080"), host), &[], "http"), "wrong scheme");
        assert!(origin_allowed(&headers(Some("https://127.0.0.1:8080"), host), &[], "https"));
        assert!(!origin_allowed(&headers(Some("http://127.0.0.1:8080"), host), &[], "https"));
        assert!(!origin_allowed(&headers(Some("http://evil.example"), host), &[], "http"));
        assert!(!origin_allowed(&headers(Some("http://127.0.0.1:9999"), host), &[], "http"));
        assert!(!origin_allowed(&headers(Some("null"), host), &[], "http"));
        assert!(!origin_allowed(&headers(Some("http://127.0.0.1:8080"), None), &[], "http"));
        let allowed = vec!["https://app.example.org".to_owned()];
        assert!(origin_allowed(&headers(Some("https://app.example.org"), host), &allowed, "http"));
    }

    #[test]
    fn loopback_servers_accept_loopback_hosts_only() {
        let hosts = AllowedHosts::new(true, &["Chat.Example.org".to_owned()]);
        for good in [
            "localhost:8080",
            "127.0.0.1:8080",
            "127.3.4.5",
            "[::1]:8080",
            "LOCALHOST",
            "chat.example.org:443",
        ] {
            let mut map = HeaderMap::new();
            map.insert(header::HOST, HeaderValue::from_static(good));
            assert_eq!(hosts.check(&map), Ok(()), "{good}");
        }
        for bad in
            ["evil.example:8080", "127.0.0.1.evil.example", "10.0.0.1:8080", "[::2]:8080", "localhost.evil"]
        {
            let mut map = HeaderMap::new();
            map.insert(header::HOST, HeaderValue::from_static(bad));
            assert_eq!(hosts.check(&map), Err(StatusCode::FORBIDDEN), "{bad}");
        }
        assert_eq!(hosts.check(&HeaderMap::new()), Err(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn public_servers_accept_any_host_unless_told() {
        let mut map = HeaderMap::new();
        map.insert(header::HOST, HeaderValue::from_static("whatever.example:80"));
        assert_eq!(AllowedHosts::new(false, &[]).check(&map), Ok(()));
        assert_eq!(
            AllowedHosts::new(false, &["chat.example.org".into()]).check(&map),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(AllowedHosts::new(false, &[]).check(&HeaderMap::new()), Err(StatusCode::BAD_REQUEST));
    }
}
