//! Which peer addresses relayed traffic may reach: the one rule the TURN relay and the HTTP
//! relay both enforce.

use std::net::IpAddr;

/// The address classes relayed traffic may reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    pub allow_loopback: bool,
    pub allow_private: bool,
}

impl PeerPolicy {
    /// Whether the relay may send to, or accept from, `ip`. Unspecified, multicast, broadcast and
    /// "this network" (0.0.0.0/8) addresses are never allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                if a == 0 || v4.is_multicast() || v4.is_broadcast() || a >= 240 {
                    false
                } else if v4.is_loopback() {
                    self.allow_loopback
                } else if v4.is_private() || v4.is_link_local() || (a == 100 && (b & 0xc0) == 64) {
                    self.allow_private
                } else {
                    true
                }
            }
            IpAddr::V6(v6) => {
                let first = v6.segments()[0];
                if v6.is_unspecified() || v6.is_multicast() {
                    false
                } else if v6.is_loopback() {
                    self.allow_loopback
                } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 {
                    // Unique local (fc00::/7) and link-local (fe80::/10).
                    self.allow_private
                } else {
                    true
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn strict_policy_allows_only_public_unicast() {
        let strict = PeerPolicy::default();
        for allowed in ["8.8.8.8", "192.0.2.1", "2001:db8::1", "::ffff:8.8.4.4"] {
            assert!(strict.permits(ip(allowed)), "{allowed}");
        }
        for refused in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "224.0.0.251",
            "239.1.1.1",
            "255.255.255.255",
            "240.0.0.1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!strict.permits(ip(refused)), "{refused}");
        }
        assert!(strict.permits(ip("172.32.0.1")));
        assert!(strict.permits(ip("100.128.0.1")));
    }

    #[test]
    fn configuration_opens_loopback_and_private_separately() {
        let loopback = PeerPolicy {
            allow_loopback: true,
            allow_private: false,
        };
        assert!(loopback.permits(ip("127.0.0.1")));
        assert!(loopback.permits(ip("::1")));
        assert!(!loopback.permits(ip("10.0.0.1")));
        let private = PeerPolicy {
            allow_loopback: false,
            allow_private: true,
        };
        assert!(!private.permits(ip("127.0.0.1")));
        for addr in [
            "10.0.0.1",
            "192.168.0.1",
            "fd00::1",
            "fe80::1",
            "169.254.0.1",
        ] {
            assert!(private.permits(ip(addr)), "{addr}");
        }
        let open = PeerPolicy {
            allow_loopback: true,
            allow_private: true,
        };
        for never in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"] {
            assert!(!open.permits(ip(never)), "{never}");
        }
    }
}
