//! The rows the daemon reads and writes, as its other modules see them. They live apart from
//! the SQL of each area because areas exchange them (a SIP account's gateway is an endpoint
//! record, a call's parties are endpoint records), and [`super::Db`]'s methods, written in the
//! area files, all speak them.

use switchyard_protocol::capabilities::Capabilities;

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRecord {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub push_token: String,
    pub capabilities: Capabilities,
    pub cert_fingerprint: String,
    pub cert_not_after: i64,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A peer's Bloom filter as stored: its algorithm's name, and the bit array in base64.
#[derive(Debug, Clone)]
pub struct StoredPeerFilter {
    pub provider_id: String,
    pub generation: i64,
    pub algorithm: String,
    pub bits: i64,
    pub items: i64,
    pub filter_base64: String,
    pub fetched_at: i64,
}

/// An operator of the admin API and web UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRecord {
    pub name: String,
    /// `operator` or `viewer`.
    pub role: String,
    pub password_hash: String,
    pub created_at: i64,
}

/// A browser session of an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id_sha256: String,
    pub operator: String,
    pub csrf_token: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// One change made through the admin API: who, what, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub id: String,
    pub at: i64,
    pub actor: String,
    pub method: String,
    pub path: String,
    pub status: u16,
}

pub struct NewUser<'a> {
    pub id: &'a str,
    pub display_name: &'a str,
    pub uris: &'a [String],
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    pub display_name: String,
    pub uris: Vec<String>,
    pub created_at: i64,
    pub active_endpoints: i64,
}

/// A SIP phone's account: its address of record, the user it acts for, and digest HA1s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipAccount {
    pub aor: String,
    pub user_id: String,
    pub username: String,
    pub realm: String,
    pub ha1_md5: String,
    pub ha1_sha256: String,
    pub created_at: i64,
    /// The gateway endpoint the edge acts as for this account (see [`gateway_endpoint`]); none
    /// only for an account made before gateways existed, until the edge starts.
    pub endpoint_id: Option<String>,
}

/// One registered contact of an AoR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipContact {
    pub aor: String,
    /// The Contact URI as registered.
    pub contact: String,
    pub q: Option<String>,
    pub call_id: String,
    pub cseq: i64,
    pub expires_at: i64,
    /// How the REGISTER arrived (`udp`, `tcp`, `tls`) and from where: requests to the contact
    /// go back that way (the phone is often behind a NAT).
    pub transport: String,
    pub source: String,
    pub user_agent: Option<String>,
    pub updated_at: i64,
}

/// Where a queued push stands in the order the SIP edge reads its gateways' pushes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayPushKey {
    pub created_at: i64,
    pub endpoint_id: String,
    pub seq: i64,
}

#[derive(Debug, Clone)]
pub struct StoredPush {
    pub seq: i64,
    /// The push dictionary as an XML property list, which keeps data and strings apart.
    pub body: String,
}
