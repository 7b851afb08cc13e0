//! SIP accounts, as operators provision them (admin API, `switchyard sip`): an address of record
//! in one of `sip.domains`, a digest username (the AoR's user part unless given) and a password,
//! kept only as HA1 in both digest algorithms; and the gateway endpoint each account acts
//! through.

use switchyard_protocol::capabilities::Capabilities;

use super::digest::{ha1, Algorithm};
use super::status::{db_refusal, Refusal};
use super::uri::{canonical_aor, uris_of};
use crate::app::App;
use crate::auth::AuthEndpoint;
use crate::config::Config;
use crate::db::records::{EndpointRecord, SipAccount};
use crate::shared::now_ms;

/// What a gateway endpoint can answer: the codecs SIP phones and trunks commonly offer. The
/// phones negotiate between themselves; this only decides which calls ring the gateway.
pub fn gateway_capabilities() -> Capabilities {
    Capabilities {
        audio: true,
        video: true,
        audio_codecs: ["opus", "PCMU", "PCMA", "G722", "G729"]
            .map(String::from)
            .to_vec(),
        video_codecs: ["H264", "VP8"].map(String::from).to_vec(),
    }
}

/// The gateway endpoint of an account, authenticated as its user's endpoint.
pub async fn gateway_of(app: &App, account: &SipAccount) -> Result<AuthEndpoint, Refusal> {
    let unavailable = || Refusal(480, "Account Has No Gateway Endpoint".into(), vec![]);
    let id = account.endpoint_id.as_deref().ok_or_else(unavailable)?;
    let endpoint: EndpointRecord = app
        .db
        .endpoint(id)
        .await
        .map_err(db_refusal)?
        .ok_or_else(unavailable)?;
    let uris = uris_of(app, account).await?;
    Ok(AuthEndpoint { endpoint, uris })
}

const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("aor: `{0}` is not a sip: address of record (sip:user@domain)")]
    BadAor(String),
    #[error("aor: this provider serves SIP domains {domains:?}, not `{domain}`")]
    ForeignDomain {
        domain: String,
        domains: Vec<String>,
    },
    #[error("username: 1-64 characters of letters, digits and `-_.!~*'()&=+$,;?/`, not `{0}`")]
    BadUsername(String),
    #[error("password: {MIN_PASSWORD}-{MAX_PASSWORD} characters")]
    BadPassword,
}

/// A new account for `user_id`, checked against the configuration.
pub fn new_account(
    config: &Config,
    user_id: &str,
    aor: &str,
    username: Option<&str>,
    password: &str,
) -> Result<SipAccount, AccountError> {
    let aor = canonical_aor(aor).ok_or_else(|| AccountError::BadAor(aor.to_string()))?;
    let (user, domain) = aor
        .strip_prefix("sip:")
        .and_then(|rest| rest.rsplit_once('@'))
        .ok_or_else(|| AccountError::BadAor(aor.clone()))?;
    let domains = config.sip_domains();
    if !domains.iter().any(|d| d == domain) {
        return Err(AccountError::ForeignDomain {
            domain: domain.to_string(),
            domains,
        });
    }
    let username = username.unwrap_or(user);
    let username_ok = (1..=64).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&b));
    if !username_ok {
        return Err(AccountError::BadUsername(username.to_string()));
    }
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&password.chars().count()) {
        return Err(AccountError::BadPassword);
    }
    let realm = config.sip_realm();
    Ok(SipAccount {
        user_id: user_id.to_string(),
        username: username.to_string(),
        realm: realm.to_string(),
        ha1_md5: ha1(Algorithm::Md5, username, realm, password),
        ha1_sha256: ha1(Algorithm::Sha256, username, realm, password),
        created_at: now_ms(),
        aor,
        endpoint_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_checked_before_anything_is_stored() {
        let config = Config {
            provider_id: "a.test".into(),
            ..Config::default()
        };
        let account = new_account(&config, "u1", "sip:Bob@A.test", None, "correct horse").unwrap();
        assert_eq!(account.aor, "sip:Bob@a.test");
        assert_eq!(account.username, "Bob");
        assert_eq!(account.realm, "a.test");
        assert_eq!(
            account.ha1_md5,
            ha1(Algorithm::Md5, "Bob", "a.test", "correct horse")
        );
        for (aor, username, password) in [
            ("tel:+15551234567", None, "correct horse"),
            ("sip:bob@b.test", None, "correct horse"),
            ("sip:bob@a.test", Some("b o b"), "correct horse"),
            ("sip:bob@a.test", None, "short"),
        ] {
            assert!(
                new_account(&config, "u1", aor, username, password).is_err(),
                "{aor} {username:?} {password}"
            );
        }
    }
}
