//! The checks a configuration needs beyond its types: values in range, keys that go together,
//! files a role needs.

use super::issue::ConfigIssue;
use super::Config;

impl Config {
    pub(super) fn semantic_issues(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut bad = |key: &str, message: String| {
            issues.push(ConfigIssue {
                key: key.into(),
                message,
            })
        };
        if self.data_dir.as_os_str().is_empty() {
            bad("data_dir", "must not be empty".into());
        }
        if !switchyard_protocol::pki::valid_provider_id(&self.provider_id) {
            bad(
                "provider_id",
                "must be 1-253 characters of letters, digits, `.`, `-` and `_`".into(),
            );
        }
        if self.endpoint_api.tls_cert.is_some() != self.endpoint_api.tls_key.is_some() {
            bad(
                "endpoint_api.tls_key",
                "tls_cert and tls_key must be set together".into(),
            );
        }
        if self.pki.endpoint_ca_cert.is_some() != self.pki.endpoint_ca_key.is_some() {
            bad(
                "pki.endpoint_ca_key",
                "endpoint_ca_cert and endpoint_ca_key must be set together".into(),
            );
        }
        if self.endpoint_api.server_names.is_empty() {
            bad(
                "endpoint_api.server_names",
                "needs at least one name or address".into(),
            );
        }
        for (key, value) in [
            (
                "endpoint_api.max_body_bytes",
                self.endpoint_api.max_body_bytes,
            ),
            ("admin.max_body_bytes", self.admin.max_body_bytes),
            ("federation.max_body_bytes", self.federation.max_body_bytes),
        ] {
            if value < 1024 {
                bad(key, format!("{value} is too small; at least 1024"));
            }
        }
        if let Some(url) = &self.database.url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                bad(
                    "database.url",
                    format!("`{url}` is neither `sqlite:PATH` nor `postgres://...`"),
                );
            }
        }
        if self.database.max_connections == 0 {
            bad("database.max_connections", "must be at least 1".into());
        }
        if let Some(code) = self.registry.default_country_code {
            if !(1..=999).contains(&code) {
                bad(
                    "registry.default_country_code",
                    format!("{code} is not a country calling code (1-999)"),
                );
            }
        }
        if self.registry.endpoint_certificate_days == 0 {
            bad(
                "registry.endpoint_certificate_days",
                "must be at least 1".into(),
            );
        }
        for (key, value) in [
            (
                "registry.provisioning_code_ttl_seconds",
                self.registry.provisioning_code_ttl_seconds,
            ),
            (
                "invitation.ring_timeout_seconds",
                self.invitation.ring_timeout_seconds,
            ),
            (
                "invitation.seal_key_rotation_seconds",
                self.invitation.seal_key_rotation_seconds,
            ),
            (
                "invitation.max_call_duration_seconds",
                self.invitation.max_call_duration_seconds,
            ),
            (
                "invitation.sweep_interval_ms",
                self.invitation.sweep_interval_ms,
            ),
            ("push.ttl_seconds", self.push.ttl_seconds),
            (
                "push.long_poll_max_seconds",
                self.push.long_poll_max_seconds,
            ),
            ("push.recheck_interval_ms", self.push.recheck_interval_ms),
            (
                "sip.requests_per_second_per_source",
                u64::from(self.sip.requests_per_second_per_source),
            ),
            (
                "sip.request_burst_per_source",
                u64::from(self.sip.request_burst_per_source),
            ),
            (
                "relay.allocations_per_second_per_source",
                u64::from(self.relay.allocations_per_second_per_source),
            ),
            (
                "relay.allocation_burst_per_source",
                u64::from(self.relay.allocation_burst_per_source),
            ),
            (
                "sip.max_invites_in_progress",
                self.sip.max_invites_in_progress as u64,
            ),
            (
                "sip.max_completed_transactions",
                self.sip.max_completed_transactions as u64,
            ),
            (
                "sip.max_completed_transaction_bytes",
                self.sip.max_completed_transaction_bytes as u64,
            ),
            (
                "sip.tcp_write_queue_messages",
                self.sip.tcp_write_queue_messages as u64,
            ),
            (
                "relay.max_endpoint_lookups",
                self.relay.max_endpoint_lookups as u64,
            ),
            (
                "relay.max_known_endpoints",
                self.relay.max_known_endpoints as u64,
            ),
        ] {
            if value == 0 {
                bad(key, "must be greater than 0".into());
            }
        }
        for (section, limits) in [
            ("endpoint_api", &self.endpoint_api.limits),
            ("admin", &self.admin.limits),
            ("federation", &self.federation.limits),
            ("directory", &self.directory.limits),
        ] {
            for (key, value) in [
                ("max_connections", limits.max_connections as u64),
                ("header_timeout_seconds", limits.header_timeout_seconds),
                ("idle_timeout_seconds", limits.idle_timeout_seconds),
                ("body_timeout_seconds", limits.body_timeout_seconds),
                (
                    "max_connections_per_client",
                    limits.max_connections_per_client as u64,
                ),
                (
                    "requests_per_second_per_client",
                    u64::from(limits.requests_per_second_per_client),
                ),
                (
                    "request_burst_per_client",
                    u64::from(limits.request_burst_per_client),
                ),
            ] {
                if value == 0 {
                    bad(
                        &format!("{section}.limits.{key}"),
                        "must be greater than 0".into(),
                    );
                }
            }
        }
        // A long-poll (push channel, HTTP relay) waits without a byte moving; the idle limit
        // must outlast it.
        let longest_poll = self
            .push
            .long_poll_max_seconds
            .max(switchyard_protocol::relay_frame::MAX_RECV_WAIT_MS / 1000);
        if self.endpoint_api.limits.idle_timeout_seconds <= longest_poll {
            bad(
                "endpoint_api.limits.idle_timeout_seconds",
                format!(
                    "must be longer than the longest long-poll ({longest_poll} s: \
                     push.long_poll_max_seconds, and the HTTP relay's 25 s)"
                ),
            );
        }
        if self.invitation.seal_key_rotation_seconds < 2 * self.invitation.ring_timeout_seconds {
            bad(
                "invitation.seal_key_rotation_seconds",
                "must be at least twice invitation.ring_timeout_seconds, or sealed calls outlive their key"
                    .into(),
            );
        }
        if self.federation.enabled {
            for (key, value) in [
                ("federation.ca_cert", &self.federation.ca_cert),
                ("federation.cert", &self.federation.cert),
                ("federation.key", &self.federation.key),
            ] {
                if value.is_none() {
                    bad(key, "required when federation.enabled is true".into());
                }
            }
            match &self.federation.bootstrap_uri {
                None => bad(
                    "federation.bootstrap_uri",
                    "required when federation.enabled is true".into(),
                ),
                Some(uri) => match url::Url::parse(uri) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                    _ => bad(
                        "federation.bootstrap_uri",
                        format!("`{uri}` is not an http:// or https:// URI"),
                    ),
                },
            }
        }
        for (key, p) in [
            (
                "federation.bloom_false_positive_rate",
                self.federation.bloom_false_positive_rate,
            ),
            (
                "federation.peer_filter_max_false_positive_rate",
                self.federation.peer_filter_max_false_positive_rate,
            ),
        ] {
            if !(p > 0.0 && p <= 0.5) {
                bad(key, format!("{p} is not in (0, 0.5]"));
            }
        }
        for (key, value) in [
            (
                "federation.directory_refresh_seconds",
                self.federation.directory_refresh_seconds,
            ),
            (
                "federation.request_timeout_ms",
                self.federation.request_timeout_ms,
            ),
            (
                "federation.timestamp_window_seconds",
                self.federation.timestamp_window_seconds,
            ),
            (
                "federation.breaker_failures",
                u64::from(self.federation.breaker_failures),
            ),
            (
                "federation.breaker_open_seconds",
                self.federation.breaker_open_seconds,
            ),
            (
                "federation.bloom_rebuild_seconds",
                self.federation.bloom_rebuild_seconds,
            ),
            (
                "federation.bloom_rebuild_changes",
                self.federation.bloom_rebuild_changes,
            ),
            (
                "federation.bloom_pull_seconds",
                self.federation.bloom_pull_seconds,
            ),
            (
                "federation.cert_check_seconds",
                self.federation.cert_check_seconds,
            ),
            (
                "federation.max_filter_bytes",
                self.federation.max_filter_bytes,
            ),
            (
                "federation.max_dispatch_candidates",
                self.federation.max_dispatch_candidates as u64,
            ),
            (
                "federation.max_answer_bytes",
                self.federation.max_answer_bytes as u64,
            ),
        ] {
            if value == 0 {
                bad(key, "must be greater than 0".into());
            }
        }
        for (key, value) in [
            (
                "relay.credential_ttl_seconds",
                self.relay.credential_ttl_seconds,
            ),
            (
                "relay.max_allocations_per_endpoint",
                u64::from(self.relay.max_allocations_per_endpoint),
            ),
            (
                "relay.max_allocations_per_member",
                u64::from(self.relay.max_allocations_per_member),
            ),
            (
                "relay.max_allocations",
                u64::from(self.relay.max_allocations),
            ),
        ] {
            if value == 0 {
                bad(key, "must be greater than 0".into());
            }
        }
        if self.relay.max_allocations_per_endpoint > self.relay.max_allocations {
            bad(
                "relay.max_allocations_per_endpoint",
                "must not exceed relay.max_allocations".into(),
            );
        }
        if let Some(ip) = self.relay.relay_address {
            if ip.is_unspecified() || ip.is_multicast() {
                bad(
                    "relay.relay_address",
                    format!("{ip} is not an address endpoints can reach"),
                );
            } else if ip.is_ipv4() != self.relay.listen.is_ipv4() {
                bad(
                    "relay.relay_address",
                    format!(
                        "{ip} is not of the same address family as relay.listen {}",
                        self.relay.listen
                    ),
                );
            }
        }
        if let Some(realm) = &self.relay.realm {
            if realm.is_empty() || realm.len() > 127 || realm.contains(['"', '\\']) {
                bad(
                    "relay.realm",
                    "must be 1-127 characters without `\"` or `\\`".into(),
                );
            }
        }
        for (key, value) in [
            ("sip.min_expires_seconds", self.sip.min_expires_seconds),
            ("sip.max_expires_seconds", self.sip.max_expires_seconds),
            (
                "sip.default_expires_seconds",
                self.sip.default_expires_seconds,
            ),
            (
                "sip.max_contacts_per_aor",
                u64::from(self.sip.max_contacts_per_aor),
            ),
            (
                "sip.nonce_lifetime_seconds",
                self.sip.nonce_lifetime_seconds,
            ),
        ] {
            if value == 0 {
                bad(key, "must be greater than 0".into());
            }
        }
        if self.sip.min_expires_seconds > self.sip.max_expires_seconds {
            bad(
                "sip.min_expires_seconds",
                "must not exceed sip.max_expires_seconds".into(),
            );
        }
        if !(1024..=65_507).contains(&self.sip.max_message_bytes) {
            bad(
                "sip.max_message_bytes",
                "must be 1024-65507 (a UDP datagram)".into(),
            );
        }
        if self.sip.udp_receive_buffer_bytes < 65_536 {
            bad(
                "sip.udp_receive_buffer_bytes",
                "must be at least 65536".into(),
            );
        }
        let algorithms = &self.sip.digest_algorithms;
        let repeated = algorithms
            .iter()
            .enumerate()
            .any(|(i, a)| algorithms[..i].contains(a));
        if algorithms.is_empty() || repeated {
            bad(
                "sip.digest_algorithms",
                "list MD5, SHA-256 or both, each once".into(),
            );
        }
        if self.sip.transports.is_empty() {
            bad(
                "sip.transports",
                "name at least one of udp, tcp, tls".into(),
            );
        }
        if self.sip.tls_cert.is_some() != self.sip.tls_key.is_some() {
            bad(
                "sip.tls_cert",
                "sip.tls_cert and sip.tls_key go together".into(),
            );
        }
        for domain in &self.sip.domains {
            let ok = !domain.is_empty()
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
            if !ok {
                bad(
                    "sip.domains",
                    format!("`{domain}` is not a domain name (letters, digits, `.`, `-`)"),
                );
            }
        }
        if let Some(realm) = &self.sip.realm {
            if realm.is_empty() || realm.len() > 127 || realm.contains(['"', '\\']) {
                bad(
                    "sip.realm",
                    "must be 1-127 characters without `\"` or `\\`".into(),
                );
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            bad("log.level", format!("not a valid filter: {e}"));
        }
        issues
    }
}
