//! Who is counted against the connection caps: every TCP connection from accept until it ends
//! (before and after a WebSocket upgrade), and every member in grace, against the client IP that
//! joined it. A [`Ticket`] is one such count; the count ends when the last clone drops.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::StatusCode;

#[derive(Debug)]
pub struct Admission {
    max_connections: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<ClientKey, usize>,
}

/// What a client is counted as: its IPv4 address, or its IPv6 /64 (one subscriber usually holds
/// a whole /64, so counting single IPv6 addresses would give one machine 2^64 allowances).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Which cap a connection would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverCap {
    PerIp,
    Total,
}

impl OverCap {
    pub fn status(self) -> StatusCode {
        match self {
            Self::PerIp => StatusCode::TOO_MANY_REQUESTS,
            Self::Total => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// One counted connection (or member in grace). Clones share the count, which ends when the last
/// clone drops: the HTTP connection, the WebSocket task and a suspended member can each hold it.
#[derive(Debug, Clone)]
pub struct Ticket(Arc<Counted>);

#[derive(Debug)]
struct Counted {
    admission: Arc<Admission>,
    key: Mutex<ClientKey>,
}

impl Admission {
    pub fn new(max_connections: usize, max_per_ip: usize) -> Self {
        Self { max_connections, max_per_ip, counts: Mutex::default() }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more connection from `ip`, or says which cap it would break.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, OverCap> {
        let key = ClientKey::of(ip);
        let mut counts = self.counts();
        if counts.total >= self.max_connections {
            return Err(OverCap::Total);
        }
        let from_ip = counts.per_ip.entry(key).or_default();
        if *from_ip >= self.max_per_ip {
            return Err(OverCap::PerIp);
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(Ticket(Arc::new(Counted { admission: Arc::clone(self), key: Mutex::new(key) })))
    }

    /// Connections and members in grace counted now.
    pub fn counted(&self) -> usize {
        self.counts().total
    }
}

impl Ticket {
    /// Counts this connection against `ip` from now on instead (a proxied connection, once its
    /// request head names the client). Over the per-IP cap it stays where it was.
    pub fn move_to(&self, ip: IpAddr) -> Result<(), OverCap> {
        let new_key = ClientKey::of(ip);
        let mut key = self.0.key.lock().unwrap_or_else(PoisonError::into_inner);
        if *key == new_key {
            return Ok(());
        }
        let admission = &self.0.admission;
        let mut counts = admission.counts();
        let to = counts.per_ip.entry(new_key).or_default();
        if *to >= admission.max_per_ip {
            if *to == 0 {
                counts.per_ip.remove(&new_key);
            }
            return Err(OverCap::PerIp);
        }
        *to += 1;
        release(&mut counts.per_ip, *key);
        *key = new_key;
        Ok(())
    }

    /// The client this ticket counts against.
    #[cfg(test)]
    pub fn client(&self) -> ClientKey {
        *self.0.key.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn release(per_ip: &mut HashMap<ClientKey, usize>, key: ClientKey) {
    if let Some(from_ip) = per_ip.get_mut(&key) {
        *from_ip -= 1;
        if *from_ip == 0 {
            per_ip.remove(&key);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let key = *self.key.get_mut().unwrap_or_else(PoisonError::into_inner);
        let mut counts = self.admission.counts();
        counts.total -= 1;
        release(&mut counts.per_ip, key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_until_the_last_clone_drops() {
        let admission = Arc::new(Admission::new(3, 2));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = admission.admit(a).expect("room");
        let _second = admission.admit(a).expect("room");
        assert_eq!(admission.admit(a).err(), Some(OverCap::PerIp));
        let _third = admission.admit(b).expect("room");
        assert_eq!(admission.admit(b).err(), Some(OverCap::Total));
        let kept = first.clone();
        drop(first);
        assert_eq!(admission.counted(), 3, "a clone still holds the count");
        drop(kept);
        assert_eq!(admission.counted(), 2);
        assert!(admission.admit(a).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let admission = Arc::new(Admission::new(100, 2));
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let two: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other_64: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        let _a = admission.admit(one).expect("room");
        let _b = admission.admit(two).expect("room");
        assert_eq!(admission.admit(one).err(), Some(OverCap::PerIp), "same /64");
        assert!(admission.admit(other_64).is_ok());
        let v4: IpAddr = [192, 0, 2, 1].into();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        assert_eq!(ClientKey::of(mapped), ClientKey::of(v4));
    }

    #[test]
    fn a_ticket_moves_to_the_client_behind_a_proxy() {
        let admission = Arc::new(Admission::new(100, 1));
        let proxy: IpAddr = [10, 0, 0, 1].into();
        let client: IpAddr = [192, 0, 2, 7].into();
        let ticket = admission.admit(proxy).expect("room");
        ticket.move_to(client).expect("the client has room");
        assert_eq!(ticket.client(), ClientKey::of(client));
        let second = admission.admit(proxy).expect("the proxy's place was given back");
        assert_eq!(second.move_to(client), Err(OverCap::PerIp));
        assert_eq!(second.client(), ClientKey::of(proxy), "a refused move keeps the old count");
        drop(ticket);
        drop(second);
        assert_eq!(admission.counted(), 0);
        assert!(admission.counts().per_ip.is_empty());
    }
}
