//! The registrar (RFC 3261 §10.3): REGISTER with digest authentication binds contacts to an
//! account's address of record. Every binding change of one REGISTER happens in one transaction,
//! or none does. It also checks the digest credentials of the phones' INVITEs, as their proxy.

use std::sync::Arc;

use rsip::prelude::*;
use rsip::Header;

use super::digest::{Algorithm, Credentials, Digest, DigestError};
use super::message::{self, cseq, response, Inbound};
use super::status::{refuse, Refusal};
use super::uri::{canonical_aor, name_addr, split_list};
use crate::app::App;
use crate::config::SipConfig;
use crate::db::records::{SipAccount, SipContact};
use crate::db::sip::{delete_sip_contacts, save_sip_contact, sip_contacts_in};
use crate::shared::now_ms;

/// The host of a `sip:`/`sips:` Request-URI without a user part (a registrar's domain).
pub(crate) fn register_domain(request_uri: &str) -> Option<String> {
    let (scheme, rest) = request_uri.split_once(':')?;
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return None;
    }
    let hostport = rest.split([';', '?']).next()?;
    if hostport.contains('@') {
        return None;
    }
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        format!("[{}]", v6.split(']').next()?)
    } else {
        hostport.split(':').next()?.to_string()
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// What one Contact asks for.
#[derive(Debug)]
pub(crate) struct Binding {
    pub contact: String,
    pub q: Option<String>,
    /// Seconds, 0 (remove) or within the limits.
    pub expires: u64,
}

/// The registrar's `sip.min_expires_seconds`, `max_expires_seconds` and
/// `default_expires_seconds`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExpiryLimits {
    pub min: u64,
    pub max: u64,
    pub default: u64,
}

/// What a REGISTER's Contact entries (split) ask for under its `Expires` header: each binding,
/// or `None` to remove them all (`Contact: *`, RFC 3261 §10.3 step 6).
pub(crate) fn bindings(
    contacts: &[String],
    expires_header: Option<&str>,
    limits: ExpiryLimits,
) -> Result<Option<Vec<Binding>>, Refusal> {
    let default_expires = match expires_header {
        Some(v) => v.parse::<u64>().map_err(|_| refuse(400, "Bad Expires"))?,
        None => limits.default,
    };
    if contacts.iter().any(|c| c == "*") {
        if contacts.len() != 1 || default_expires != 0 {
            return Err(refuse(
                400,
                "Contact: * Needs Expires: 0 And No Other Contact",
            ));
        }
        return Ok(None);
    }
    let mut bindings = Vec::new();
    for value in contacts {
        let (uri, params) = name_addr(value).ok_or_else(|| refuse(400, "Bad Contact"))?;
        let expires = match params.iter().find(|(k, _)| k == "expires") {
            Some((_, v)) => v
                .parse::<u64>()
                .map_err(|_| refuse(400, "Bad Contact expires"))?,
            None => default_expires,
        };
        if expires > 0 && expires < limits.min {
            let min = Header::MinExpires(limits.min.to_string().into());
            return Err(Refusal(423, "Interval Too Brief".into(), vec![min]));
        }
        bindings.push(Binding {
            contact: uri,
            q: params
                .iter()
                .find(|(k, _)| k == "q")
                .map(|(_, v)| v.clone()),
            expires: expires.min(limits.max),
        });
    }
    Ok(Some(bindings))
}

/// The registrar of the edge's domains (`sip.domains`), with the digest of its realm.
pub struct Registrar {
    app: Arc<App>,
    config: SipConfig,
    digest: Digest,
    domains: Vec<String>,
}

impl Registrar {
    /// The registrar of `app`'s SIP configuration; its digest secret is made on first use.
    pub fn new(app: Arc<App>) -> anyhow::Result<Registrar> {
        let config = app.config.sip.clone();
        let secret =
            crate::pki::load_or_create_secret(&app.config.sip_secret_path(), "SIP secret")?;
        let domains = app.config.sip_domains();
        let digest = Digest::new(
            app.config.sip_realm(),
            secret.as_bytes(),
            config.nonce_lifetime_seconds,
            &config.digest_algorithms,
        );
        Ok(Registrar {
            app,
            config,
            digest,
            domains,
        })
    }

    pub fn realm(&self) -> &str {
        self.digest.realm()
    }

    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// Whether `domain` is one of `sip.domains`.
    fn serves(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Answers a REGISTER.
    pub async fn register(&self, inbound: &Inbound) -> Vec<u8> {
        let request = &inbound.request;
        let (status, reason, extra) = match self.bind(inbound).await {
            Ok(extra) => (200, "OK".to_string(), extra),
            Err(Refusal(status, reason, extra)) => (status, reason, extra),
        };
        metrics::counter!("switchyard_sip_registrations_total", "status" => status.to_string())
            .increment(1);
        if status >= 400 {
            tracing::info!(source = %inbound.source, status, reason, "SIP REGISTER refused");
        }
        response(
            request,
            inbound.source,
            status,
            &reason,
            &message::new_tag(6),
            extra,
        )
    }

    async fn bind(&self, inbound: &Inbound) -> Result<Vec<Header>, Refusal> {
        let request = &inbound.request;
        let domain = register_domain(&inbound.request_uri).ok_or_else(|| {
            if inbound.request_uri.to_ascii_lowercase().starts_with("tel:") {
                refuse(416, "REGISTER Needs A sip: Request-URI")
            } else {
                refuse(400, "The Request-URI Must Name The Domain Only")
            }
        })?;
        if !self.serves(&domain) {
            return Err(refuse(403, format!("Domain {domain} Not Served Here")));
        }
        let to = request
            .to_header()
            .map_err(|_| refuse(400, "Missing To"))?
            .value()
            .to_string();
        let aor = name_addr(&to)
            .and_then(|(uri, _)| canonical_aor(&uri))
            .ok_or_else(|| refuse(400, "The To Header Is Not A sip: Address Of Record"))?;
        let aor_host = aor.rsplit_once('@').map(|(_, h)| h).unwrap_or("");
        if !self.serves(aor_host) {
            return Err(refuse(403, format!("Domain {aor_host} Not Served Here")));
        }
        let account = self.authenticate(inbound, false).await?;
        if account.aor != aor {
            return Err(refuse(
                403,
                "Credentials Not Valid For This Address Of Record",
            ));
        }

        let (call_id, cseq) = (
            request
                .call_id_header()
                .map_err(|_| refuse(400, "Missing Call-ID"))?
                .value()
                .to_string(),
            cseq(request).map_or(0, |(n, _)| i64::from(n)),
        );
        let contacts: Vec<String> = inbound
            .fields
            .values("Contact")
            .flat_map(split_list)
            .collect();
        let limits = ExpiryLimits {
            min: self.config.min_expires_seconds,
            max: self.config.max_expires_seconds,
            default: self.config.default_expires_seconds,
        };
        let asked = bindings(&contacts, inbound.fields.first("Expires"), limits)?;
        let now = now_ms();
        let remove_all = asked.is_none();
        let bindings = asked.unwrap_or_default();
        let user_agent = inbound.fields.first("User-Agent").map(str::to_string);

        let mut tx = self.app.db.begin_write().await.map_err(server_error)?;
        let existing = sip_contacts_in(&mut tx, &aor, now)
            .await
            .map_err(server_error)?;
        // RFC 3261 §10.3 step 7: a binding made by this Call-ID is only changed by a higher CSeq.
        let out_of_order = existing.iter().any(|e| {
            e.call_id == call_id
                && e.cseq >= cseq
                && (remove_all || bindings.iter().any(|b| b.contact == e.contact))
        });
        if out_of_order {
            return Err(refuse(400, "CSeq Not Above The Binding's"));
        }
        if remove_all {
            delete_sip_contacts(&mut tx, &aor, None)
                .await
                .map_err(server_error)?;
        } else {
            let kept = existing
                .iter()
                .filter(|e| !bindings.iter().any(|b| b.contact == e.contact))
                .count();
            let added = bindings.iter().filter(|b| b.expires > 0).count();
            if kept + added > self.config.max_contacts_per_aor as usize {
                return Err(refuse(
                    403,
                    format!(
                        "More Than {} Contacts For One Address Of Record",
                        self.config.max_contacts_per_aor
                    ),
                ));
            }
            for binding in &bindings {
                if binding.expires == 0 {
                    delete_sip_contacts(&mut tx, &aor, Some(&binding.contact))
                        .await
                        .map_err(server_error)?;
                } else {
                    let contact = SipContact {
                        aor: aor.clone(),
                        contact: binding.contact.clone(),
                        q: binding.q.clone(),
                        call_id: call_id.clone(),
                        cseq,
                        expires_at: now + (binding.expires as i64) * 1000,
                        transport: inbound.transport.as_str().to_string(),
                        source: inbound.source.to_string(),
                        user_agent: user_agent.clone(),
                        updated_at: now,
                    };
                    save_sip_contact(&mut tx, &contact)
                        .await
                        .map_err(server_error)?;
                }
            }
        }
        let current = sip_contacts_in(&mut tx, &aor, now)
            .await
            .map_err(server_error)?;
        tx.commit().await.map_err(server_error)?;
        let mut extra: Vec<Header> = current
            .iter()
            .map(|c| {
                let left = ((c.expires_at - now).max(0) + 999) / 1000;
                Header::Contact(format!("<{}>;expires={left}", c.contact).into())
            })
            .collect();
        extra.push(Header::Date(
            httpdate::fmt_http_date(std::time::SystemTime::now()).into(),
        ));
        Ok(extra)
    }

    /// Checks the digest credentials of `inbound`, challenging when there are none (or stale
    /// ones): as a registrar (401, Authorization) or, for `proxy`, as a proxy (407,
    /// Proxy-Authorization, RFC 3261 §22.3).
    pub async fn authenticate(
        &self,
        inbound: &Inbound,
        proxy: bool,
    ) -> Result<SipAccount, Refusal> {
        let now = (now_ms() / 1000) as u64;
        let challenge = |stale: bool| {
            let headers = self
                .digest
                .challenges(now, stale)
                .into_iter()
                .map(|c| {
                    if proxy {
                        Header::ProxyAuthenticate(c.into())
                    } else {
                        Header::WwwAuthenticate(c.into())
                    }
                })
                .collect();
            if proxy {
                Refusal(407, "Proxy Authentication Required".into(), headers)
            } else {
                Refusal(401, "Unauthorized".into(), headers)
            }
        };
        let credentials = inbound
            .fields
            .values(if proxy {
                "Proxy-Authorization"
            } else {
                "Authorization"
            })
            .filter_map(|v| Credentials::parse(v).ok())
            .find(|c| c.realm == self.digest.realm());
        let Some(credentials) = credentials else {
            return Err(challenge(false));
        };
        let algorithm = credentials
            .algorithm()
            .map_err(|e| refuse(400, format!("Bad Authorization: {e}")))?;
        if !self.digest.offers(algorithm) {
            return Err(challenge(false));
        }
        let account = self
            .app
            .db
            .sip_account_by_credential(self.digest.realm(), &credentials.username)
            .await
            .map_err(server_error)?;
        // An unknown username is refused like a wrong password: no account enumeration.
        let Some(account) = account else {
            return Err(refuse(403, "Bad Credentials"));
        };
        let ha1 = match algorithm {
            Algorithm::Md5 => &account.ha1_md5,
            Algorithm::Sha256 => &account.ha1_sha256,
        };
        match self.digest.verify(
            &credentials,
            &inbound.method.to_string(),
            &inbound.request_uri,
            ha1,
            now,
        ) {
            Ok(()) => Ok(account),
            // A used nonce gets a fresh one: a phone without qop reuses its nonce, and a
            // replayed answer gets nothing it could use.
            Err(DigestError::Stale | DigestError::Replay) => Err(challenge(true)),
            Err(DigestError::BadNonce) => Err(challenge(false)),
            Err(DigestError::Mismatch) => Err(refuse(403, "Bad Credentials")),
            Err(e) => Err(refuse(400, format!("Bad Authorization: {e}"))),
        }
    }
}

fn server_error(e: crate::db::StoreError) -> Refusal {
    tracing::error!(error = %e, "SIP registrar: database");
    refuse(500, "Database Unavailable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_register_names_the_domain_only() {
        assert_eq!(
            register_domain("sip:A.test:5060").as_deref(),
            Some("a.test")
        );
        assert_eq!(register_domain("sip:bob@a.test"), None);
    }
}
