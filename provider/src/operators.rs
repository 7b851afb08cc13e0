//! Operator accounts of the admin API and its web pages: a name, a role (an operator may change
//! things, a viewer only look), an argon2id password hash; browser sessions (a random id in an
//! HttpOnly cookie, of which the database keeps only the SHA-256, and a CSRF token every change
//! must echo in a header); and login rate limiting. The admin API's middleware (`admin.rs`)
//! applies them and writes the audit log.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::db::records::{OperatorRecord, SessionRecord};
use crate::shared::now_ms;

/// The cookie that carries a session id.
pub const SESSION_COOKIE: &str = "switchyard_session";
/// The header a cookie-authenticated change must carry, equal to the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May change anything the admin API changes.
    Operator,
    /// May read everything (secrets excepted) and change nothing.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = OperatorError;

    fn from_str(s: &str) -> Result<Role, OperatorError> {
        match s {
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            other => Err(OperatorError::Invalid(
                "role",
                format!("`{other}` is neither operator nor viewer"),
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// Checks a new operator's name (1-64 of letters, digits, `.`, `_`, `-`, `@`) and password
/// (12-1024 bytes: an operator can change every account of the provider).
pub fn check_new(name: &str, password: &str) -> Result<(), OperatorError> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if !name_ok {
        return Err(OperatorError::Invalid(
            "name",
            "1 to 64 letters, digits, `.`, `_`, `-` or `@`".into(),
        ));
    }
    if password.len() < 12 || password.len() > 1024 {
        return Err(OperatorError::Invalid(
            "password",
            "12 to 1024 bytes".into(),
        ));
    }
    Ok(())
}

/// A new operator, its password hashed with argon2id (the crate's defaults: 19 MiB, 2 passes).
pub fn new_operator(
    name: &str,
    role: Role,
    password: &str,
) -> Result<OperatorRecord, OperatorError> {
    check_new(name, password)?;
    let salt = SaltString::generate(&mut OsRng);
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| OperatorError::Hashing(e.to_string()))?;
    Ok(OperatorRecord {
        name: name.to_string(),
        role: role.as_str().to_string(),
        password_hash: hash.to_string(),
        created_at: now_ms(),
    })
}

/// Whether `password` is the one `hash` was made from. Slow on purpose (tens of milliseconds):
/// call it off the async threads.
pub fn password_matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A password hash to check unknown names against, so that a wrong name costs as much time as
/// a wrong password and does not tell which names exist.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"no operator has this password", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// The SHA-256 under which a session id is stored.
pub fn session_digest(id: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, id.as_bytes()))
}

/// A new session for `operator`: the id for the cookie, and the record to store.
pub fn new_session(operator: &str) -> (String, SessionRecord) {
    let id = crate::shared::random_token(32);
    let now = now_ms();
    let record = SessionRecord {
        id_sha256: session_digest(&id),
        operator: operator.to_string(),
        csrf_token: crate::shared::random_token(32),
        created_at: now,
        expires_at: now + SESSION_TTL.as_millis() as i64,
    };
    (id, record)
}

/// The `Set-Cookie` value for a session id: Secure, HttpOnly, SameSite=Strict, limited to the
/// admin paths, for the session's lifetime. Browsers keep Secure cookies of `http://localhost`
/// and `http://127.0.0.1` too.
pub fn session_cookie(id: &str) -> String {
    format!(
        "{SESSION_COOKIE}={id}; Path=/admin; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that ends the session in the browser.
pub fn cleared_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/admin; Max-Age=0; Secure; HttpOnly; SameSite=Strict")
}

/// The session id in a `Cookie` header, if any.
pub fn session_id_in(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty())
}

/// Login attempts allowed per account name from one client address, and per client address,
/// within [`LOGIN_WINDOW`]; past either, logins of that name from that address, or all logins
/// from that address, are refused (`429`) until the window moves on. A name is limited per
/// address so that nobody can lock an operator out by failing logins in their name from
/// elsewhere.
pub const LOGIN_FAILURES_PER_NAME: usize = 5;
pub const LOGIN_FAILURES_PER_ADDRESS: usize = 20;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Password checks (argon2id, 19 MiB each) run at once at most; a login past them is answered
/// `503` at once instead of queueing memory and CPU.
pub const LOGIN_CONCURRENT_CHECKS: usize = 4;

/// Counts login attempts in memory (each replica on its own). An attempt counts as a failure
/// from the moment it is let through, before its password is checked, so logins sent together
/// cannot all be checked before the first failure is counted; a success takes its own count
/// back.
pub struct LoginLimiter {
    attempts: Mutex<HashMap<String, VecDeque<Instant>>>,
    checks: tokio::sync::Semaphore,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter {
            attempts: Mutex::default(),
            checks: tokio::sync::Semaphore::new(LOGIN_CONCURRENT_CHECKS),
        }
    }
}

/// Why a login is not let through.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginRefusal {
    /// The name from this address, or this address, used its attempts: try after this long.
    Limited(Duration),
    /// [`LOGIN_CONCURRENT_CHECKS`] passwords are being checked already.
    Busy,
}

/// A login let through: holds one of the password checks until dropped.
pub struct LoginAttempt<'a> {
    limiter: &'a LoginLimiter,
    name: String,
    address: std::net::IpAddr,
    at: Instant,
    _check: tokio::sync::SemaphorePermit<'a>,
}

impl LoginAttempt<'_> {
    /// The password was right: the name's count from this address is cleared, and this attempt
    /// is taken off the address's count.
    pub fn succeeded(self) {
        let mut attempts = self.limiter.attempts.lock().expect("login limiter");
        let [(name_key, _), (address_key, _)] = LoginLimiter::keys(&self.name, self.address);
        attempts.remove(&name_key);
        if let Some(times) = attempts.get_mut(&address_key) {
            if let Some(i) = times.iter().position(|t| *t == self.at) {
                times.remove(i);
            }
        }
    }
}

impl LoginLimiter {
    fn keys(name: &str, address: std::net::IpAddr) -> [(String, usize); 2] {
        [
            (format!("name:{name}@{address}"), LOGIN_FAILURES_PER_NAME),
            (format!("address:{address}"), LOGIN_FAILURES_PER_ADDRESS),
        ]
    }

    /// Lets a login of `name` from `address` through, counting it, or says why not.
    pub fn begin(
        &self,
        name: &str,
        address: std::net::IpAddr,
        now: Instant,
    ) -> Result<LoginAttempt<'_>, LoginRefusal> {
        let mut attempts = self.attempts.lock().expect("login limiter");
        let keys = Self::keys(name, address);
        let mut wait = Duration::ZERO;
        for (key, allowed) in &keys {
            if let Some(times) = attempts.get_mut(key) {
                while times
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= LOGIN_WINDOW)
                {
                    times.pop_front();
                }
                if times.len() >= *allowed {
                    let oldest = times.front().copied().unwrap_or(now);
                    wait = wait.max(LOGIN_WINDOW.saturating_sub(now.duration_since(oldest)));
                }
            }
        }
        if !wait.is_zero() {
            return Err(LoginRefusal::Limited(wait));
        }
        let check = self.checks.try_acquire().map_err(|_| LoginRefusal::Busy)?;
        // Bounded: a flood of made-up names cannot grow the map without end.
        if attempts.len() > 100_000 {
            attempts.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < LOGIN_WINDOW)
            });
        }
        for (key, _) in keys {
            attempts.entry(key).or_default().push_back(now);
        }
        Ok(LoginAttempt {
            limiter: self,
            name: name.to_string(),
            address,
            at: now,
            _check: check,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hashed_with_argon2id_and_checked() {
        let operator = new_operator("ops", Role::Viewer, "correct horse battery").unwrap();
        assert!(operator.password_hash.starts_with("$argon2id$"));
        assert!(password_matches(
            &operator.password_hash,
            "correct horse battery"
        ));
        assert!(!password_matches(
            &operator.password_hash,
            "correct horse batterY"
        ));
        assert!(!password_matches("not a hash", "correct horse battery"));
        assert!(!password_matches(decoy_hash(), ""));
        assert_eq!(operator.role, "viewer");
    }

    #[test]
    fn bad_names_passwords_and_roles_are_refused() {
        for (name, password, field) in [
            ("", "long enough password", "name"),
            ("has space", "long enough password", "name"),
            (&"x".repeat(65), "long enough password", "name"),
            ("ops", "short", "password"),
        ] {
            match check_new(name, password) {
                Err(OperatorError::Invalid(f, _)) => assert_eq!(f, field, "{name:?}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        assert!("admin".parse::<Role>().is_err());
        assert_eq!("operator".parse::<Role>().unwrap(), Role::Operator);
    }

    #[test]
    fn sessions_store_only_a_digest_and_cookies_are_locked_down() {
        let (id, record) = new_session("ops");
        assert_eq!(record.id_sha256, session_digest(&id));
        assert_ne!(record.id_sha256, id);
        assert_ne!(record.csrf_token, id);
        let cookie = session_cookie(&id);
        for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/admin"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        let header = format!("theme=dark; {SESSION_COOKIE}={id}; other=1");
        assert_eq!(session_id_in(&header), Some(id.as_str()));
        assert_eq!(session_id_in("theme=dark"), None);
        assert_eq!(session_id_in(&format!("{SESSION_COOKIE}=")), None);
    }

    #[test]
    fn logins_are_limited_per_name_and_per_address() {
        let limiter = LoginLimiter::default();
        let here: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let there: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let start = Instant::now();
        for _ in 0..LOGIN_FAILURES_PER_NAME {
            drop(limiter.begin("ops", here, start).unwrap());
        }
        assert_eq!(
            limiter.begin("ops", here, start).err(),
            Some(LoginRefusal::Limited(LOGIN_WINDOW))
        );
        // The failures in a name from one address do not lock it out elsewhere.
        limiter.begin("ops", there, start).unwrap().succeeded();
        assert!(limiter.begin("other", here, start).is_ok(), "another name");
        assert!(limiter.begin("ops", here, start + LOGIN_WINDOW).is_ok());

        // Many names from one address: the address runs out.
        for i in 0..LOGIN_FAILURES_PER_ADDRESS {
            drop(limiter.begin(&format!("guess{i}"), there, start));
        }
        assert!(matches!(
            limiter.begin("fresh", there, start),
            Err(LoginRefusal::Limited(_))
        ));
    }

    #[test]
    fn attempts_count_before_the_password_is_checked_and_checks_are_bounded() {
        let limiter = LoginLimiter::default();
        let here: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        // Logins sent together: each is counted as it is let through, while the first ones are
        // still being checked.
        let running: Vec<LoginAttempt<'_>> = (0..LOGIN_CONCURRENT_CHECKS)
            .map(|_| limiter.begin("ops", here, now).unwrap())
            .collect();
        assert_eq!(
            limiter.begin("other", here, now).err(),
            Some(LoginRefusal::Busy)
        );
        drop(running);
        const { assert!(LOGIN_CONCURRENT_CHECKS < LOGIN_FAILURES_PER_NAME) };
        for _ in LOGIN_CONCURRENT_CHECKS..LOGIN_FAILURES_PER_NAME {
            drop(limiter.begin("ops", here, now).unwrap());
        }
        assert!(matches!(
            limiter.begin("ops", here, now),
            Err(LoginRefusal::Limited(_))
        ));
        // A success takes its own attempt back from the address's count.
        let elsewhere: std::net::IpAddr = "192.0.2.3".parse().unwrap();
        for _ in 0..LOGIN_FAILURES_PER_ADDRESS {
            limiter.begin("ops", elsewhere, now).unwrap().succeeded();
        }
        assert!(limiter.begin("ops", elsewhere, now).is_ok());
    }
}
