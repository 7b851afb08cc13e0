//! Per-client limits of one listener, after Kamailio's `pike`: each client address may hold at
//! most so many connections and send requests at a sustained rate with a burst (a token
//! bucket). A client is its IPv4 address or its IPv6 /64, the smallest block one host gets.
//! The table is bounded: idle clients are forgotten first, and when it is full of busy ones a
//! new client goes untracked (the listener's own connection cap still holds) and is counted.
//!
//! Clients behind one carrier-grade NAT share an address: the defaults leave room for that,
//! and operators raise them for known NATs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many client addresses one listener tracks at once.
const MAX_CLIENTS: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientLimitsConfig {
    pub max_connections: usize,
    pub requests_per_second: f64,
    pub burst: f64,
}

#[derive(Debug)]
struct Client {
    connections: usize,
    tokens: f64,
    refilled: Instant,
}

pub struct ClientLimits {
    config: ClientLimitsConfig,
    clients: Mutex<HashMap<IpAddr, Client>>,
}

/// Why a client was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It holds its maximum of connections.
    Connections,
    /// Its request rate is used up; it may try again after this long.
    Rate(Duration),
}

/// A wait as a `Retry-After` value: whole seconds, rounded up, at least one.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// One open connection counted against its client; released when dropped.
pub struct ConnectionSlot {
    limits: Arc<ClientLimits>,
    client: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(client) = self.client {
            let mut clients = self.limits.clients.lock().expect("client limits lock");
            if let Some(entry) = clients.get_mut(&client) {
                entry.connections = entry.connections.saturating_sub(1);
            }
        }
    }
}

/// The address a client is counted under.
pub fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
    }
}

impl ClientLimits {
    pub fn new(config: ClientLimitsConfig) -> Arc<ClientLimits> {
        Arc::new(ClientLimits {
            config,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `ip`, or refuses it when the client holds its maximum.
    pub fn connect(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<ConnectionSlot, Refused> {
        let client = client_of(ip);
        let mut clients = self.clients.lock().expect("client limits lock");
        let Some(entry) = self.entry(&mut clients, client, now) else {
            return Ok(ConnectionSlot {
                limits: self.clone(),
                client: None,
            });
        };
        if entry.connections >= self.config.max_connections {
            return Err(Refused::Connections);
        }
        entry.connections += 1;
        Ok(ConnectionSlot {
            limits: self.clone(),
            client: Some(client),
        })
    }

    /// Takes one request from `ip`'s bucket, or says how long until the next one is allowed.
    pub fn request(&self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        let mut clients = self.clients.lock().expect("client limits lock");
        let Some(entry) = self.entry(&mut clients, client_of(ip), now) else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
        entry.tokens =
            (entry.tokens + elapsed * self.config.requests_per_second).min(self.config.burst);
        entry.refilled = now;
        if entry.tokens >= 1.0 {
            entry.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - entry.tokens) / self.config.requests_per_second;
        Err(Refused::Rate(Duration::from_secs_f64(wait.max(0.001))))
    }

    /// The client's entry, made if there is room; None when the table is full of busy clients.
    fn entry<'a>(
        &self,
        clients: &'a mut HashMap<IpAddr, Client>,
        client: IpAddr,
        now: Instant,
    ) -> Option<&'a mut Client> {
        if !clients.contains_key(&client) && clients.len() >= MAX_CLIENTS {
            let (rate, burst) = (self.config.requests_per_second, self.config.burst);
            // Idle: no connection, and a bucket that has refilled by now.
            clients.retain(|_, c| {
                let elapsed = now.saturating_duration_since(c.refilled).as_secs_f64();
                c.connections > 0 || c.tokens + elapsed * rate < burst
            });
            if clients.len() >= MAX_CLIENTS {
                metrics::counter!("switchyard_http_clients_untracked_total").increment(1);
                return None;
            }
        }
        Some(clients.entry(client).or_insert(Client {
            connections: 0,
            tokens: self.config.burst,
            refilled: now,
        }))
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.clients.lock().expect("client limits lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn limits(max_connections: usize, rate: f64, burst: f64) -> Arc<ClientLimits> {
        ClientLimits::new(ClientLimitsConfig {
            max_connections,
            requests_per_second: rate,
            burst,
        })
    }

    const ONE: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const TWO: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_client_holds_at_most_its_connections_and_gets_them_back_on_close() {
        let limits = limits(2, 10.0, 10.0);
        let now = Instant::now();
        let first = limits.connect(ONE, now).unwrap();
        let _second = limits.connect(ONE, now).unwrap();
        assert_eq!(limits.connect(ONE, now).err(), Some(Refused::Connections));
        let _other = limits
            .connect(TWO, now)
            .expect("another client has its own count");
        drop(first);
        limits
            .connect(ONE, now)
            .expect("a closed connection frees its slot");
    }

    #[test]
    fn requests_beyond_the_burst_wait_for_the_rate() {
        let limits = limits(8, 10.0, 3.0);
        let start = Instant::now();
        for _ in 0..3 {
            limits.request(ONE, start).unwrap();
        }
        let Err(Refused::Rate(wait)) = limits.request(ONE, start) else {
            panic!("the burst is spent")
        };
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        limits
            .request(TWO, start)
            .expect("another client has its own bucket");
        // 100 ms at 10/s is one token, exactly at the edge.
        limits
            .request(ONE, start + Duration::from_millis(100))
            .unwrap();
        assert!(limits
            .request(ONE, start + Duration::from_millis(100))
            .is_err());
        // A long pause refills to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            limits.request(ONE, later).unwrap();
        }
        assert!(limits.request(ONE, later).is_err());
    }

    #[test]
    fn an_ipv6_host_is_its_slash_64_and_a_mapped_ipv4_its_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(client_of(a), client_of(b));
        assert_ne!(client_of(a), client_of("2001:db8:1:3::1".parse().unwrap()));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(client_of(mapped), ONE);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_clients_first() {
        let limits = limits(4, 1.0, 2.0);
        let now = Instant::now();
        let busy = limits.connect(ONE, now).unwrap();
        for i in 0..MAX_CLIENTS as u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            limits.request(ip, now).unwrap();
        }
        assert_eq!(limits.tracked(), MAX_CLIENTS);
        // Full of clients that sent a request just now (buckets not yet refilled): a new client
        // goes untracked, and is let through.
        limits.request(TWO, now).unwrap();
        assert_eq!(limits.tracked(), MAX_CLIENTS);
        // Two seconds on, every bucket has refilled: the idle ones make room, the busy one stays.
        let later = now + Duration::from_secs(2);
        limits.request(TWO, later).unwrap();
        assert_eq!(limits.tracked(), 2);
        assert_eq!(limits.connect(ONE, later).map(|_| ()), Ok(()));
        drop(busy);
    }
}
