//! Who may open a WebSocket: connection caps (total and per client IP) and the Origin check,
//! both decided before the upgrade so a refused client costs no WebSocket state.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::{HeaderMap, StatusCode, header};

#[derive(Debug)]
pub struct Admission {
    max_connections: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; it stops counting when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(max_connections: usize, max_per_ip: usize) -> Self {
        Self { max_connections, max_per_ip, counts: Mutex::default() }
    }

    /// Counts one more connection from `ip`, or says which cap it would break.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, StatusCode> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_connections {
            return Err(StatusCode::SERVICE_UNAVAILABLE);
        }
        let from_ip = counts.per_ip.entry(ip).or_default();
        if *from_ip >= self.max_per_ip {
            return Err(StatusCode::TOO_MANY_REQUESTS);
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(Ticket { admission: Arc::clone(self), ip })
    }

    /// Connections counted now.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.admission.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total -= 1;
        if let Some(from_ip) = counts.per_ip.get_mut(&self.ip) {
            *from_ip -= 1;
            if *from_ip == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Cross-site WebSocket hijacking defence: a browser always sends Origin, so a request without
/// one comes from a native client. A browser page may connect only from the server's own origin
/// (its host:port equals the request's Host) or from an origin in `allowed`.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    if allowed.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
        return true;
    }
    let origin_host = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
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

    fn headers(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static(host));
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
        }
        headers
    }

    #[test]
    fn origin_rules() {
        assert!(origin_allowed(&headers(None, "127.0.0.1:8080"), &[]));
        assert!(origin_allowed(&headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"), &[]));
        assert!(!origin_allowed(&headers(Some("http://evil.example"), "127.0.0.1:8080"), &[]));
        assert!(!origin_allowed(&headers(Some("http://127.0.0.1:9999"), "127.0.0.1:8080"), &[]));
        assert!(!origin_allowed(&headers(Some("null"), "127.0.0.1:8080"), &[]));
        let allowed = vec!["https://app.example.org".to_owned()];
        assert!(origin_allowed(&headers(Some("https://app.example.org"), "127.0.0.1:8080"), &allowed));
    }

    #[test]
    fn caps_count_until_the_ticket_drops() {
        let admission = Arc::new(Admission::new(3, 2));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = admission.admit(a).expect("room");
        let _second = admission.admit(a).expect("room");
        assert_eq!(admission.admit(a).err(), Some(StatusCode::TOO_MANY_REQUESTS));
        let _third = admission.admit(b).expect("room");
        assert_eq!(admission.admit(b).err(), Some(StatusCode::SERVICE_UNAVAILABLE));
        drop(first);
        assert_eq!(admission.open(), 2);
        assert!(admission.admit(a).is_ok());
    }
}
