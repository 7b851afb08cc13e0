//! Which peers the relay talks to, and the relayed sockets that enforce it and count allocations.
//!
//! The `turn` crate has no hook on CreatePermission or ChannelBind, so the filter is applied in
//! two places of our own:
//! - [`ListenerConn`], the server's listening socket, answers an authenticated CreatePermission or
//!   ChannelBind naming a forbidden peer with `403 Forbidden` itself, before the server sees it;
//!   it also answers a retransmitted Allocate with the server's success response to it (RFC 8656
//!   §7.2), which the `turn` server would answer with `437 Allocation Mismatch`;
//! - [`RelayedConn`], each allocation's relayed socket, drops every datagram sent to a forbidden
//!   peer (Send indications and ChannelData) and every datagram received from one, so nothing
//!   crosses the relay in either direction whatever reached the server. The same socket holds the
//!   allocation's quota slot and gives it back when the allocation is closed (or dropped).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use turn::relay::RelayAddressGenerator;
use webrtc_util::Conn;

use super::auth::RelayState;
use super::nonces::{NoncePool, Verdict};
use crate::client_limits::ClientLimits;

type TurnResult<T> = std::result::Result<T, turn::Error>;

/// Makes the relayed socket of each allocation: bound on the listen IP, announced with the
/// configured relay address, counted against the quotas of the endpoint that authenticated the
/// Allocate request.
pub struct QuotaGenerator {
    pub state: Arc<RelayState>,
    /// Where relayed sockets are bound (the listen IP).
    pub bind_ip: IpAddr,
    /// What is announced in XOR-RELAYED-ADDRESS.
    pub public_ip: IpAddr,
}

#[async_trait]
impl RelayAddressGenerator for QuotaGenerator {
    fn validate(&self) -> TurnResult<()> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> TurnResult<(Arc<dyn Conn + Send + Sync>, SocketAddr)> {
        if use_ipv4 != self.public_ip.is_ipv4() {
            return Err(turn::Error::Other(
                "the requested address family is not relayed here".into(),
            ));
        }
        // The server handles the datagrams of a listener one after the other, so the endpoint
        // authenticated last is the one whose Allocate request is being processed.
        let endpoint = self
            .state
            .last_authenticated()
            .ok_or_else(|| turn::Error::Other("no authenticated endpoint".into()))?;
        self.state
            .take_allocation_slot(&endpoint)
            .map_err(|reason| turn::Error::Other(reason.into()))?;
        let socket = match UdpSocket::bind(SocketAddr::new(self.bind_ip, requested_port)).await {
            Ok(socket) => socket,
            Err(e) => {
                self.state.release_allocation_slot(&endpoint);
                return Err(turn::Error::Other(format!("binding a relayed socket: {e}")));
            }
        };
        let mut relay_addr = match socket.local_addr() {
            Ok(addr) => addr,
            Err(e) => {
                self.state.release_allocation_slot(&endpoint);
                return Err(turn::Error::Other(e.to_string()));
            }
        };
        relay_addr.set_ip(self.public_ip);
        tracing::debug!(%endpoint, %relay_addr, "relay allocation");
        let conn = RelayedConn {
            socket,
            state: self.state.clone(),
            traffic: self.state.track(&endpoint, relay_addr),
            endpoint,
            released: AtomicBool::new(false),
            closed: CancellationToken::new(),
        };
        Ok((Arc::new(conn), relay_addr))
    }
}

/// How long a client may retransmit a request: a STUN transaction over UDP lasts 39.5 s (RFC 8489
/// §6.2.1: Rc = 7, Rm = 16, RTO 500 ms).
const TRANSACTION_LIFETIME: Duration = Duration::from_secs(40);

/// STUN message types (RFC 8489 §5) of an Allocate request and its success response.
pub(crate) const ALLOCATE_REQUEST: [u8; 2] = [0x00, 0x03];
pub(crate) const ALLOCATE_SUCCESS: [u8; 2] = [0x01, 0x03];

/// Whether `datagram` is an Allocate request with credentials (MESSAGE-INTEGRITY): one that can
/// make an allocation, and so counts against its source's rate.
fn signed_allocate(datagram: &[u8]) -> bool {
    if transaction_of(datagram, ALLOCATE_REQUEST).is_none() {
        return false;
    }
    let mut m = stun::message::Message::new();
    m.raw = datagram.to_vec();
    m.decode().is_ok() && m.contains(stun::attributes::ATTR_MESSAGE_INTEGRITY)
}

/// `486 Allocation Quota Reached` for an Allocate request, unsigned: a source over its rate.
fn quota_reached(datagram: &[u8]) -> Option<Vec<u8>> {
    use stun::error_code::{ErrorCodeAttribute, CODE_ALLOC_QUOTA_REACHED};
    use stun::message::{Message, MessageType, Setter, CLASS_ERROR_RESPONSE, METHOD_ALLOCATE};

    let transaction = transaction_of(datagram, ALLOCATE_REQUEST)?;
    let mut answer = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(Message {
            transaction_id: stun::agent::TransactionId(transaction),
            ..Default::default()
        }),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code: CODE_ALLOC_QUOTA_REACHED,
            reason: b"Allocation Quota Reached".to_vec(),
        }),
    ];
    answer.build(&setters).ok()?;
    Some(answer.raw)
}

/// The transaction id of a STUN message of type `typ`, if `datagram` is one.
pub(crate) fn transaction_of(datagram: &[u8], typ: [u8; 2]) -> Option<[u8; 12]> {
    if !stun::message::is_message(datagram) || datagram[..2] != typ {
        return None;
    }
    datagram[8..20].try_into().ok()
}

/// The last Allocate success response sent to a client, kept to answer its retransmissions.
struct AllocateAnswer {
    transaction: [u8; 12],
    response: Vec<u8>,
    sent: Instant,
}

/// The TURN server's listening socket, refusing permissions and channels for forbidden peers and
/// answering retransmitted Allocates.
pub struct ListenerConn {
    socket: UdpSocket,
    state: Arc<RelayState>,
    /// Per client address (the listener's end of the 5-tuple is fixed).
    allocate_answers: Mutex<HashMap<SocketAddr, AllocateAnswer>>,
    /// The server's recent nonces, handed out here to requests without valid ones.
    nonces: Mutex<NoncePool>,
    /// Each source's rate of Allocates that reach the server.
    allocate_rate: Arc<ClientLimits>,
}

impl ListenerConn {
    pub fn new(
        socket: UdpSocket,
        state: Arc<RelayState>,
        allocate_rate: Arc<ClientLimits>,
    ) -> Self {
        ListenerConn {
            socket,
            state,
            allocate_rate,
            allocate_answers: Mutex::default(),
            nonces: Mutex::default(),
        }
    }

    /// For a retransmission of the Allocate request last answered with a success on this
    /// 5-tuple, within the transaction's lifetime: that success response again.
    fn repeated_allocate_answer(&self, datagram: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        let transaction = transaction_of(datagram, ALLOCATE_REQUEST)?;
        let answers = self.allocate_answers.lock().expect("allocate answers lock");
        answers
            .get(&from)
            .filter(|a| a.transaction == transaction && a.sent.elapsed() < TRANSACTION_LIFETIME)
            .map(|a| a.response.clone())
    }

    /// Notes an Allocate success response the server sends, and forgets expired ones.
    fn remember_allocate_answer(&self, datagram: &[u8], to: SocketAddr) {
        let Some(transaction) = transaction_of(datagram, ALLOCATE_SUCCESS) else {
            return;
        };
        let mut answers = self.allocate_answers.lock().expect("allocate answers lock");
        answers.retain(|_, a| a.sent.elapsed() < TRANSACTION_LIFETIME);
        answers.insert(
            to,
            AllocateAnswer {
                transaction,
                response: datagram.to_vec(),
                sent: Instant::now(),
            },
        );
    }
}

/// For a CreatePermission or ChannelBind request with valid integrity naming a peer `state`'s
/// policy forbids: the `403` answer to send back. `now` is Unix seconds, for the credentials.
pub(crate) fn forbidden_answer(state: &RelayState, datagram: &[u8], now: u64) -> Option<Vec<u8>> {
    use stun::attributes::{ATTR_REALM, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS};
    use stun::error_code::{ErrorCodeAttribute, CODE_FORBIDDEN};
    use stun::integrity::MessageIntegrity;
    use stun::message::{
        is_message, Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_REQUEST,
        METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION,
    };
    use stun::textattrs::TextAttribute;
    use stun::xoraddr::XorMappedAddress;

    if !is_message(datagram) {
        return None;
    }
    let mut m = Message::new();
    m.raw = datagram.to_vec();
    m.decode().ok()?;
    if m.typ.class != CLASS_REQUEST
        || !(m.typ.method == METHOD_CREATE_PERMISSION || m.typ.method == METHOD_CHANNEL_BIND)
    {
        return None;
    }
    let forbidden = m
        .attributes
        .0
        .iter()
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        .any(|a| {
            let mut one = Message::new();
            one.transaction_id = m.transaction_id;
            one.add(ATTR_XOR_PEER_ADDRESS, &a.value);
            let mut peer = XorMappedAddress::default();
            peer.get_from_as(&one, ATTR_XOR_PEER_ADDRESS).is_ok() && !state.policy.permits(peer.ip)
        });
    if !forbidden {
        return None;
    }
    let username = TextAttribute::get_from_as(&m, ATTR_USERNAME).ok()?;
    let realm = TextAttribute::get_from_as(&m, ATTR_REALM).ok()?;
    let key = state.check(&username.text, &realm.text, now).ok()?;
    let integrity = MessageIntegrity(key);
    integrity.check(&mut m.clone()).ok()?;
    let mut answer = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(Message {
            transaction_id: m.transaction_id,
            ..Default::default()
        }),
        Box::new(MessageType::new(m.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code: CODE_FORBIDDEN,
            reason: b"Forbidden peer address".to_vec(),
        }),
        Box::new(integrity),
    ];
    answer.build(&setters).ok()?;
    Some(answer.raw)
}

#[async_trait]
impl Conn for ListenerConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            if let Some(answer) = self.repeated_allocate_answer(&buf[..n], from) {
                tracing::debug!(client = %from, "relay: retransmitted Allocate answered again");
                let _ = self.socket.send_to(&answer, from).await;
                continue;
            }
            let verdict = self.nonces.lock().expect("nonce pool lock").verdict(
                &buf[..n],
                &self.state.realm,
                Instant::now(),
            );
            if let Verdict::Answer(challenge) = verdict {
                metrics::counter!("switchyard_relay_challenged_here_total").increment(1);
                let _ = self.socket.send_to(&challenge, from).await;
                continue;
            }
            if signed_allocate(&buf[..n])
                && self
                    .allocate_rate
                    .request(from.ip(), Instant::now())
                    .is_err()
            {
                metrics::counter!("switchyard_relay_refused_total", "reason" => "source-rate")
                    .increment(1);
                if let Some(answer) = quota_reached(&buf[..n]) {
                    let _ = self.socket.send_to(&answer, from).await;
                }
                continue;
            }
            match forbidden_answer(&self.state, &buf[..n], super::auth::unix_now()) {
                None => return Ok((n, from)),
                Some(answer) => {
                    refused("permission");
                    tracing::debug!(client = %from, "relay: permission for a forbidden peer refused");
                    let _ = self.socket.send_to(&answer, from).await;
                }
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.remember_allocate_answer(buf, target);
        self.nonces
            .lock()
            .expect("nonce pool lock")
            .note_sent(buf, Instant::now());
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// Nothing: the server calls this when any allocation closes; the socket closes when the
    /// server drops it.
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// One allocation's relayed socket, filtering peers and holding a quota slot.
pub struct RelayedConn {
    socket: UdpSocket,
    state: Arc<RelayState>,
    endpoint: String,
    traffic: Arc<super::auth::AllocationTraffic>,
    released: AtomicBool,
    closed: CancellationToken,
}

impl RelayedConn {
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.state.release_allocation_slot(&self.endpoint);
            self.state.untrack(self.traffic.relayed);
        }
    }
}

impl Drop for RelayedConn {
    fn drop(&mut self) {
        self.release();
    }
}

fn refused(direction: &'static str) {
    metrics::counter!("switchyard_relay_peer_refused_total", "direction" => direction).increment(1);
}

#[async_trait]
impl Conn for RelayedConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other(
            "a relayed socket is not connected".into(),
        ))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = tokio::select! {
                received = self.socket.recv_from(buf) => received?,
                _ = self.closed.cancelled() => return Err(webrtc_util::Error::ErrUseClosedNetworkConn),
            };
            if self.state.policy.permits(from.ip()) {
                metrics::counter!("switchyard_relay_bytes_total", "direction" => "from-peer")
                    .increment(n as u64);
                self.traffic
                    .from_peer
                    .fetch_add(n as u64, Ordering::Relaxed);
                return Ok((n, from));
            }
            refused("from-peer");
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other(
            "a relayed socket is not connected".into(),
        ))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if !self.state.policy.permits(target.ip()) {
            // Reported as sent: the client learns nothing about what lies behind the relay.
            refused("to-peer");
            return Ok(buf.len());
        }
        let n = self.socket.send_to(buf, target).await?;
        metrics::counter!("switchyard_relay_bytes_total", "direction" => "to-peer")
            .increment(n as u64);
        self.traffic.to_peer.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.closed.cancel();
        self.release();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::policy::PeerPolicy;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn relayed_socket_drops_forbidden_peers_and_holds_a_quota_slot() {
        use turn::auth::AuthHandler;
        let state = Arc::new(RelayState::new(
            b"0123456789abcdef".to_vec(),
            "r".into(),
            PeerPolicy::default(),
            crate::relay::auth::Quotas {
                per_endpoint: 1,
                per_member: 10,
                total: 10,
                lookups_at_once: 256,
                known_endpoints: 100_000,
            },
            None,
            600,
        ));
        let generator = QuotaGenerator {
            state: state.clone(),
            bind_ip: ip("127.0.0.1"),
            public_ip: ip("127.0.0.1"),
        };
        assert!(
            generator.allocate_conn(true, 0).await.is_err(),
            "nobody authenticated"
        );
        let (username, _) = state.issue("ep", super::super::auth::unix_now() + 60);
        super::super::auth::RestAuth(state.clone())
            .auth_handle(&username, "r", "127.0.0.1:1".parse().unwrap())
            .unwrap();
        let (conn, _) = generator.allocate_conn(true, 0).await.unwrap();
        assert!(
            generator.allocate_conn(true, 0).await.is_err(),
            "quota of 1"
        );
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(
            conn.send_to(b"x", peer.local_addr().unwrap())
                .await
                .unwrap(),
            1
        );
        let mut buf = [0u8; 8];
        let got = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            peer.recv_from(&mut buf),
        )
        .await;
        assert!(got.is_err(), "nothing reaches a loopback peer");
        conn.close().await.unwrap();
        assert_eq!(state.allocation_count(None), 0);
        drop(conn);
        assert_eq!(state.allocation_count(None), 0, "released once");
    }
}
