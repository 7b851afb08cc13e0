//! The nonces of the TURN server, handed out again in front of it. The webrtc-rs `turn` server
//! makes a nonce for every request without credentials (a `401`) or with a nonce it does not
//! know (a `438`) and keeps each until a client presents it stale, so a flood of unauthenticated
//! Allocates grows its memory without bound (about 120 bytes a request, measured in
//! `bench/floods/run.sh`). The listener keeps the nonces the server issued lately and answers
//! such requests itself with one of them: the server then makes a new nonce only every
//! [`HAND_OUT_FOR`] (a few a hour), however many requests come.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use stun::attributes::{ATTR_MESSAGE_INTEGRITY, ATTR_NONCE};
use stun::error_code::{ErrorCode, ErrorCodeAttribute, CODE_STALE_NONCE, CODE_UNAUTHORIZED};
use stun::message::{
    is_message, Getter, Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_REQUEST,
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH,
};
use stun::textattrs::{Nonce, Realm, TextAttribute};

/// How long one of the server's nonces is handed out to new clients before the next request
/// goes through to the server for a fresh one.
pub const HAND_OUT_FOR: Duration = Duration::from_secs(10 * 60);
/// How long a nonce the server issued is taken as its own: well inside the server's one-hour
/// nonce lifetime, so a client never gets a nonce the server has let go stale.
const RECOGNISED_FOR: Duration = Duration::from_secs(50 * 60);
/// Nonces remembered at most (the server's 401s and 438s to clients whose requests went through).
const REMEMBERED: usize = 256;

/// What to do with a request before the server sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let the server have it.
    Pass,
    /// Answer it here with this datagram (a `401` or `438` carrying a recent nonce).
    Answer(Vec<u8>),
}

#[derive(Default)]
pub struct NoncePool {
    /// Newest last.
    issued: VecDeque<(String, Instant)>,
}

impl NoncePool {
    /// Notes the nonce in a `401` or `438` the server sends.
    pub fn note_sent(&mut self, datagram: &[u8], now: Instant) {
        let Some(m) = decode_if(datagram, |typ| typ.class == CLASS_ERROR_RESPONSE) else {
            return;
        };
        let mut code = ErrorCodeAttribute::default();
        if code.get_from(&m).is_err()
            || !(code.code == CODE_UNAUTHORIZED || code.code == CODE_STALE_NONCE)
        {
            return;
        }
        let Ok(nonce) = TextAttribute::get_from_as(&m, ATTR_NONCE) else {
            return;
        };
        self.forget_old(now);
        if !self.issued.iter().any(|(n, _)| *n == nonce.text) {
            if self.issued.len() == REMEMBERED {
                self.issued.pop_front();
            }
            self.issued.push_back((nonce.text, now));
        }
    }

    /// For a request that needs credentials: answered here when it has none (`401`) or names a
    /// nonce the server did not issue lately (`438`), as long as a recent nonce is at hand.
    pub fn verdict(&mut self, datagram: &[u8], realm: &str, now: Instant) -> Verdict {
        let needs_credentials = |typ: MessageType| {
            typ.class == CLASS_REQUEST
                && [
                    METHOD_ALLOCATE,
                    METHOD_REFRESH,
                    METHOD_CREATE_PERMISSION,
                    METHOD_CHANNEL_BIND,
                ]
                .contains(&typ.method)
        };
        let Some(m) = decode_if(datagram, needs_credentials) else {
            return Verdict::Pass;
        };
        self.forget_old(now);
        let Some(current) = self
            .issued
            .back()
            .filter(|(_, at)| now.saturating_duration_since(*at) < HAND_OUT_FOR)
            .map(|(nonce, _)| nonce.clone())
        else {
            return Verdict::Pass;
        };
        let code = if !m.contains(ATTR_MESSAGE_INTEGRITY) {
            CODE_UNAUTHORIZED
        } else {
            match TextAttribute::get_from_as(&m, ATTR_NONCE) {
                Ok(nonce) if self.issued.iter().any(|(n, _)| *n == nonce.text) => {
                    return Verdict::Pass
                }
                _ => CODE_STALE_NONCE,
            }
        };
        match challenge(&m, code, &current, realm) {
            Some(answer) => Verdict::Answer(answer),
            None => Verdict::Pass,
        }
    }

    fn forget_old(&mut self, now: Instant) {
        while self
            .issued
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= RECOGNISED_FOR)
        {
            self.issued.pop_front();
        }
    }
}

/// The STUN message in `datagram`, decoded only when its type (read from the header) is one
/// `wanted` asks for: every relayed Data indication passes through here, and is not copied.
fn decode_if(datagram: &[u8], wanted: impl Fn(MessageType) -> bool) -> Option<Message> {
    if !is_message(datagram) {
        return None;
    }
    let mut typ = MessageType::default();
    typ.read_value(u16::from_be_bytes([datagram[0], datagram[1]]));
    if !wanted(typ) {
        return None;
    }
    let mut m = Message::new();
    m.raw = datagram.to_vec();
    m.decode().ok()?;
    Some(m)
}

/// A `401` to an Allocate carrying `nonce`, as the server sends one: what the fuzz target
/// primes a pool with.
#[doc(hidden)]
pub fn allocate_challenge(nonce: &str, realm: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.build(&[
        Box::new(stun::agent::TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
    ])
    .expect("an empty request builds");
    challenge(&m, CODE_UNAUTHORIZED, nonce, realm).expect("a challenge builds")
}

/// The error response the server itself would send: the code, the nonce and the realm.
fn challenge(request: &Message, code: ErrorCode, nonce: &str, realm: &str) -> Option<Vec<u8>> {
    let mut answer = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(Message {
            transaction_id: request.transaction_id,
            ..Default::default()
        }),
        Box::new(MessageType::new(request.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code,
            reason: Vec::new(),
        }),
        Box::new(Nonce::new(ATTR_NONCE, nonce.to_string())),
        Box::new(Realm::new(stun::attributes::ATTR_REALM, realm.to_string())),
    ];
    answer.build(&setters).ok()?;
    Some(answer.raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::agent::TransactionId;
    use stun::message::BINDING_REQUEST;

    fn request(method: stun::message::Method, nonce: Option<&str>, integrity: bool) -> Vec<u8> {
        let mut m = Message::new();
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        if let Some(nonce) = nonce {
            setters.push(Box::new(Nonce::new(ATTR_NONCE, nonce.to_string())));
        }
        m.build(&setters).unwrap();
        if integrity {
            // A MESSAGE-INTEGRITY attribute, whatever its value: the server checks it.
            m.add(ATTR_MESSAGE_INTEGRITY, &[0u8; 20]);
            m.write_length();
        }
        m.raw
    }

    fn server_challenge(nonce: &str) -> Vec<u8> {
        allocate_challenge(nonce, "example.org")
    }

    fn answered(verdict: Verdict) -> (u16, String) {
        let Verdict::Answer(datagram) = verdict else {
            panic!("passed to the server")
        };
        let m = decode_if(&datagram, |_| true).unwrap();
        let mut code = ErrorCodeAttribute::default();
        code.get_from(&m).unwrap();
        let nonce = TextAttribute::get_from_as(&m, ATTR_NONCE).unwrap().text;
        let realm = TextAttribute::get_from_as(&m, stun::attributes::ATTR_REALM)
            .unwrap()
            .text;
        assert_eq!(realm, "example.org");
        (code.code.0, nonce)
    }

    #[test]
    fn unauthenticated_requests_get_the_servers_recent_nonce_without_reaching_it() {
        let mut pool = NoncePool::default();
        let now = Instant::now();
        let allocate = request(METHOD_ALLOCATE, None, false);
        assert_eq!(
            pool.verdict(&allocate, "example.org", now),
            Verdict::Pass,
            "no nonce yet"
        );
        pool.note_sent(&server_challenge("server-nonce-1"), now);
        for _ in 0..1000 {
            let verdict = pool.verdict(&request(METHOD_ALLOCATE, None, false), "example.org", now);
            assert_eq!(
                answered(verdict),
                (CODE_UNAUTHORIZED.0, "server-nonce-1".into())
            );
        }
        // A request with credentials and the server's nonce goes through.
        let signed = request(METHOD_ALLOCATE, Some("server-nonce-1"), true);
        assert_eq!(pool.verdict(&signed, "example.org", now), Verdict::Pass);
        // A made-up nonce is told the current one, without the server making another.
        let made_up = request(METHOD_REFRESH, Some("attacker"), true);
        assert_eq!(
            answered(pool.verdict(&made_up, "example.org", now)),
            (CODE_STALE_NONCE.0, "server-nonce-1".into())
        );
        // Other messages are the server's business.
        let binding = request(BINDING_REQUEST.method, None, false);
        assert_eq!(pool.verdict(&binding, "example.org", now), Verdict::Pass);
        assert_eq!(pool.verdict(b"not stun", "example.org", now), Verdict::Pass);
    }

    #[test]
    fn the_server_is_asked_for_a_fresh_nonce_once_the_current_one_was_handed_out_long_enough() {
        let mut pool = NoncePool::default();
        let start = Instant::now();
        pool.note_sent(&server_challenge("first"), start);
        let later = start + HAND_OUT_FOR;
        let allocate = request(METHOD_ALLOCATE, None, false);
        assert_eq!(pool.verdict(&allocate, "example.org", later), Verdict::Pass);
        pool.note_sent(&server_challenge("second"), later);
        assert_eq!(
            answered(pool.verdict(&allocate, "example.org", later)),
            (CODE_UNAUTHORIZED.0, "second".into())
        );
        // The older one is still the server's for clients that hold it...
        let signed = request(METHOD_CHANNEL_BIND, Some("first"), true);
        assert_eq!(pool.verdict(&signed, "example.org", later), Verdict::Pass);
        // ...until it nears the server's lifetime.
        let much_later = start + RECOGNISED_FOR;
        pool.note_sent(&server_challenge("third"), much_later);
        assert_eq!(
            answered(pool.verdict(&signed, "example.org", much_later)),
            (CODE_STALE_NONCE.0, "third".into())
        );
        assert!(pool.issued.len() <= REMEMBERED);
    }
}
