//! Connection caps, checked at accept: at most `max_connections` client connections in all, and
//! at most `max_connections_per_ip` from one client (an IPv4 address, or an IPv6 /64, as rate
//! limits key them). A connection over a cap is closed at once, before any byte is read, and
//! counted in `proxy_connections_refused_total`. Peers in `trusted_proxies` (load balancers,
//! which carry many clients on their connections) are not capped per address.
//!
//! A snapshot may change the caps: they apply from the next accept. Connections already open
//! stay, even over a lowered cap; new ones are refused until the count is under it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::convert::ConnectionLimits;
use crate::limits::client_key;
use crate::metrics::{ConnectionOpen, Metrics};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerIp,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

/// Counts open client connections, in all and per client.
pub struct Gate {
    max_connections: AtomicUsize,
    /// `NO_CAP`: no per-client cap.
    max_per_ip: AtomicUsize,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    metrics: Arc<Metrics>,
}

/// One admitted connection; dropping it (with every clone, e.g. an Upgrade tunnel's) frees its
/// place.
pub struct Permit {
    gate: Arc<Gate>,
    /// The per-client key it counts against, when capped.
    key: Option<IpAddr>,
    _open: ConnectionOpen,
}

const NO_CAP: usize = usize::MAX;

impl Gate {
    pub fn new(limits: &ConnectionLimits, metrics: Arc<Metrics>) -> Gate {
        let gate = Gate {
            max_connections: AtomicUsize::new(0),
            max_per_ip: AtomicUsize::new(NO_CAP),
            open: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            metrics,
        };
        gate.set_limits(limits);
        gate
    }

    /// The caps of a new snapshot, for the next connections.
    pub fn set_limits(&self, limits: &ConnectionLimits) {
        self.max_connections
            .store(limits.max_connections, Ordering::Relaxed);
        self.max_per_ip.store(
            limits.max_connections_per_ip.unwrap_or(NO_CAP),
            Ordering::Relaxed,
        );
    }

    /// A place for a connection from `peer`; `capped` is false for trusted proxies.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, capped: bool) -> Result<Permit, Refusal> {
        let refuse = |why: Refusal| {
            self.metrics.connection_refused(why.as_str());
            Err(why)
        };
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_connections.load(Ordering::Relaxed)
        {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return refuse(Refusal::MaxConnections);
        }
        let max_per_ip = self.max_per_ip.load(Ordering::Relaxed);
        let key = match max_per_ip {
            NO_CAP => None,
            _ if !capped => None,
            max => {
                let key = client_key(peer);
                let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
                let count = per_ip.entry(key).or_insert(0);
                if *count >= max {
                    if *count == 0 {
                        per_ip.remove(&key);
                    }
                    drop(per_ip);
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    return refuse(Refusal::MaxConnectionsPerIp);
                }
                *count += 1;
                Some(key)
            }
        };
        Ok(Permit {
            gate: self.clone(),
            key,
            _open: self.metrics.connection_opened(),
        })
    }

    #[cfg(test)]
    fn tracked_clients(&self) -> usize {
        self.per_ip.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(key) = self.key {
            let mut per_ip = self.gate.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = per_ip.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    per_ip.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max: usize, per_ip: Option<usize>) -> Arc<Gate> {
        let limits = ConnectionLimits {
            max_connections: max,
            max_connections_per_ip: per_ip,
            ..ConnectionLimits::default()
        };
        Arc::new(Gate::new(&limits, Arc::new(Metrics::new())))
    }

    #[test]
    fn caps_in_all_and_per_client_and_places_come_back() {
        let g = gate(3, Some(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = g.admit(a, true).unwrap();
        let a2 = g.admit(a, true).unwrap();
        assert_eq!(g.admit(a, true).err(), Some(Refusal::MaxConnectionsPerIp));
        let b1 = g.admit(b, true).unwrap();
        assert_eq!(g.admit(b, true).err(), Some(Refusal::MaxConnections));
        drop(a1);
        let a3 = g.admit(a, true).unwrap();
        drop((a2, a3, b1));
        assert_eq!(g.tracked_clients(), 0, "nothing left behind");
    }

    #[test]
    fn trusted_peers_and_a_cap_turned_off_are_not_capped_per_client() {
        let g = gate(10, Some(1));
        let lb: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| g.admit(lb, false).unwrap()).collect();
        assert_eq!(held.len(), 5);
        let g = gate(10, None);
        let held: Vec<_> = (0..5).map(|_| g.admit(lb, true).unwrap()).collect();
        assert_eq!(held.len(), 5);
    }

    #[test]
    fn new_caps_apply_to_the_next_connections_and_open_ones_stay() {
        let g = gate(3, Some(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<_> = (0..2).map(|_| g.admit(a, true).unwrap()).collect();
        let lowered = ConnectionLimits {
            max_connections: 1,
            max_connections_per_ip: Some(1),
            ..ConnectionLimits::default()
        };
        g.set_limits(&lowered);
        assert_eq!(g.admit(a, true).err(), Some(Refusal::MaxConnections));
        drop(held);
        let one = g.admit(a, true).unwrap();
        assert_eq!(g.admit(a, true).err(), Some(Refusal::MaxConnections));
        g.set_limits(&ConnectionLimits {
            max_connections: 10,
            max_connections_per_ip: None,
            ..ConnectionLimits::default()
        });
        let more: Vec<_> = (0..5).map(|_| g.admit(a, true).unwrap()).collect();
        drop((one, more));
        assert_eq!(g.tracked_clients(), 0);
    }

    #[test]
    fn one_ipv6_64_is_one_client() {
        let g = gate(10, Some(1));
        let _a = g.admit("2001:db8:1:2::1".parse().unwrap(), true).unwrap();
        assert!(g.admit("2001:db8:1:2::ff".parse().unwrap(), true).is_err());
        assert!(g.admit("2001:db8:1:3::1".parse().unwrap(), true).is_ok());
    }
}
