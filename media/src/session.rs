//! An endpoint's media session: the tokio shell around the sans-I/O parts.
//!
//! One UDP port carries everything (RFC 7983): STUN (connectivity checks, and the provider's TURN
//! relay), DTLS (keys, and SIP for media negotiation) and SRTP/SRTCP (media). [`Gathered::gather`]
//! binds the port, learns the server-reflexive address and allocates a relayed one from the
//! provider's TURN server, and yields the blob to send in Initiate or Accept; [`Gathered::start`]
//! takes the peer's blob and runs the call: connectivity checks choose a path, DTLS secures it
//! end to end (the provider relays only DTLS records and SRTP packets), SIP over DTLS negotiates
//! audio and video, and synthetic media flows both ways with RTCP reports until either side hangs
//! up. With a peer that speaks SDP instead (a SIP phone through the provider's SIP edge,
//! [`crate::sdp_peer`]), the offer and answer travel in the blobs, the peer's certificate is
//! checked by the fingerprint its SDP gave, and media starts once DTLS is up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use rtp::packet::Packet;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use webrtc_util::{Conn, Marshal, Unmarshal};

use crate::blob::{self, Candidate, CandidateKind, Credentials, MediaBlob, COMPONENT_RTP};
use crate::demux::{classify, PacketKind};
use crate::ice::{IceAgent, IceEvent, LocalCandidate, Role};
use crate::inbox::DatagramInbox;
use crate::rtp::{
    marshal_compound, ntp_time, parse_compound, random_cname, receiver_report, round_trip_time,
    sender_report, AudioCodec, AudioSource, Camera, ReceiveStats, Rotation, RtcpReport, SendStats,
    VideoSource,
};
use crate::sdp::{self, LocalSsrcs, MediaSession};
use crate::sdp_peer::{self, Answered, PeerTransport};
use crate::secure::{
    DtlsRole, EndpointIdentity, PacketConn, PeerExpectation, SecureChannel, SrtpSession,
};
use crate::sip::{SipEvent, SipSession};
use switchyard_protocol::capabilities::{Capabilities, MediaKind};
use switchyard_protocol::CanonicalUri;

/// The local socket is base 0 for the connectivity checks; the TURN allocation is base 1.
const HOST_BASE: usize = 0;
const RELAY_BASE: usize = 1;
/// An allocation at the provider's HTTP relay, for networks that let no UDP out.
const TUNNEL_BASE: usize = 2;
const RTCP_INTERVAL: Duration = Duration::from_secs(1);
const DTLS_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("media socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("bind the media socket to a specific address (not {0}) so it can be advertised")]
    UnspecifiedBind(SocketAddr),
    #[error("the relay server: {0}")]
    Relay(String),
    #[error("the peer's media blob: {0}")]
    Blob(#[from] blob::BlobError),
    #[error("no path to the peer: every candidate pair failed its connectivity checks")]
    NoPath,
    #[error(transparent)]
    Secure(#[from] crate::secure::SecureError),
    #[error("media negotiation: {0}")]
    Negotiation(String),
}

/// The provider's TURN relay and the short-lived credentials it issued this endpoint.
#[derive(Debug, Clone)]
pub struct RelayServer {
    pub address: SocketAddr,
    pub username: String,
    pub password: String,
    pub realm: String,
}

pub struct SessionConfig {
    pub identity: EndpointIdentity,
    /// The URI this endpoint acts as in the call (canonical).
    pub local_uri: String,
    pub capabilities: Capabilities,
    pub media: Vec<MediaKind>,
    /// The media port's address; its IP is advertised as the host candidate.
    pub bind: SocketAddr,
    pub relay: Option<RelayServer>,
    /// An allocation at the provider's HTTP relay (WebSocket or long-poll), reached over HTTPS:
    /// a relayed candidate for a network that blocks UDP.
    pub tunnel: Option<Arc<dyn Conn + Send + Sync>>,
    /// Advertise only relayed candidates (networks where direct paths must not be tried).
    pub relay_only: bool,
    pub check_timeout: Duration,
}

/// What either side may observe of a running call.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    PathSelected {
        local: CandidateKind,
        remote: CandidateKind,
        remote_address: SocketAddr,
    },
    Secured {
        profile: String,
    },
    Negotiated {
        audio: Option<String>,
        video: Option<String>,
    },
    RemoteVideoMuted(bool),
    RemoteHangUp,
    Ended,
    Failed(String),
}

/// Figures of one direction of one stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStats {
    pub packets_sent: u64,
    pub packets_received: u64,
    pub packets_lost: i64,
    pub jitter_ms: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallStats {
    pub audio: StreamStats,
    pub video: StreamStats,
    pub round_trip: Option<Duration>,
    /// SRTP/SRTCP packets refused (authentication, replay): should stay 0.
    pub srtp_failures: u64,
    /// DTLS, RTP and RTCP datagrams dropped because they came from no valid candidate pair
    /// (one whose connectivity check succeeded): injected or stray traffic.
    pub dropped_unvalidated: u64,
    pub path: Option<(CandidateKind, CandidateKind)>,
    pub remote_orientation: Option<(Rotation, Camera)>,
    /// The peer's RTCP CNAME (SDES), once a compound packet from it named one of its streams.
    pub remote_cname: Option<String>,
}

/// A packet received on the media port or the relayed allocation.
struct Inbound {
    base: usize,
    from: SocketAddr,
    bytes: Vec<u8>,
}

/// The TURN client's view of the shared socket: it receives what the router picks out for it.
struct TurnSide {
    socket: Arc<UdpSocket>,
    inbound: DatagramInbox,
}

#[async_trait]
impl Conn for TurnSide {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        self.inbound.recv_from(buf).await
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other(
            "the TURN client always names its destination".into(),
        ))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

struct Relay {
    client: turn::client::Client,
    conn: Arc<dyn Conn + Send + Sync>,
    address: SocketAddr,
}

/// Where the port's router sends the TURN server's own messages: set when an allocation is made,
/// at gathering or later in the call (a relay learned from the other side's provider).
type TurnTap = Arc<Mutex<Option<(SocketAddr, mpsc::Sender<(Vec<u8>, SocketAddr)>)>>>;

/// The other side of a call, as its blob describes it.
pub enum Peer {
    /// A Switchyard endpoint: its blob, and what its certificate must show.
    Endpoint {
        blob: MediaBlob,
        expectation: PeerExpectation,
    },
    /// A peer that speaks SDP: its answer to our [`Gathered::offer_sdp`] when we call, its offer
    /// (already answered with [`Gathered::answer_sdp`]) when it calls.
    Sdp(String),
}

/// A media port with its candidates, ready to start a call.
pub struct Gathered {
    config: SessionConfig,
    socket: Arc<UdpSocket>,
    credentials: Credentials,
    blob: MediaBlob,
    ssrcs: LocalSsrcs,
    /// Our answer to an SDP peer's offer, made before the Accept that carries it.
    answered: Option<Answered>,
    local: Vec<LocalCandidate>,
    relay: Option<Relay>,
    tunnel: Option<Arc<dyn Conn + Send + Sync>>,
    tap: TurnTap,
    inbound_tx: mpsc::Sender<Inbound>,
    inbound: mpsc::Receiver<Inbound>,
    tasks: Vec<JoinHandle<()>>,
}

fn candidate(kind: CandidateKind, address: SocketAddr, related: Option<SocketAddr>) -> Candidate {
    Candidate {
        foundation: format!("{}{}", kind.as_str(), address.ip().is_ipv4() as u8),
        priority: blob::priority(kind, 65_535, COMPONENT_RTP),
        address,
        kind,
        related,
    }
}

impl Gathered {
    /// Binds the media port and gathers host, server-reflexive and relayed candidates.
    pub async fn gather(config: SessionConfig) -> Result<Gathered, MediaError> {
        let socket = Arc::new(UdpSocket::bind(config.bind).await?);
        let host = socket.local_addr()?;
        if host.ip().is_unspecified() {
            return Err(MediaError::UnspecifiedBind(host));
        }
        let (inbound_tx, inbound) = mpsc::channel(4096);
        let tap = TurnTap::default();
        let mut tasks = vec![tokio::spawn(route(
            socket.clone(),
            tap.clone(),
            inbound_tx.clone(),
        ))];
        let mut local = vec![LocalCandidate {
            id: HOST_BASE,
            candidate: candidate(CandidateKind::Host, host, None),
        }];
        let mut advertised = Vec::new();
        if !config.relay_only {
            advertised.push(local[0].candidate.clone());
        }
        let mut relay = None;
        if let Some(server) = &config.relay {
            match allocate(&socket, &tap, server).await {
                Ok(allocated) => {
                    advertised.extend(allocated.candidates(host, config.relay_only));
                    local.push(allocated.local.clone());
                    tasks.push(tokio::spawn(read_relay(
                        allocated.relay.conn.clone(),
                        RELAY_BASE,
                        inbound_tx.clone(),
                    )));
                    relay = Some(allocated.relay);
                }
                // Without the relay only the relayed-only set-up is impossible; otherwise the
                // call goes on with the direct candidates (the relay may be unreachable).
                Err(e) if config.relay_only && config.tunnel.is_none() => return Err(e),
                Err(e) => {
                    tracing::warn!(relay = %server.address, error = %e, "no relayed candidate; going on with the direct ones");
                }
            }
        }
        if let Some(tunnel) = &config.tunnel {
            let address = tunnel
                .local_addr()
                .map_err(|e| MediaError::Relay(format!("HTTP relay: {e}")))?;
            let relayed = candidate(CandidateKind::Relayed, address, None);
            advertised.push(relayed.clone());
            local.push(LocalCandidate {
                id: TUNNEL_BASE,
                candidate: relayed,
            });
            tasks.push(tokio::spawn(read_relay(
                tunnel.clone(),
                TUNNEL_BASE,
                inbound_tx.clone(),
            )));
        }
        let tunnel = config.tunnel.clone();
        let credentials = Credentials::random();
        let blob = MediaBlob {
            ice_ufrag: credentials.ufrag.clone(),
            ice_pwd: credentials.pwd.clone(),
            fingerprint: config.identity.fingerprint_sha256_hex(),
            candidates: advertised,
            sdp: None,
        };
        Ok(Gathered {
            config,
            socket,
            credentials,
            blob,
            ssrcs: LocalSsrcs {
                audio: rand::random(),
                video: rand::random(),
            },
            answered: None,
            local,
            relay,
            tunnel,
            tap,
            inbound_tx,
            inbound,
            tasks,
        })
    }

    /// The blob to send as `self-blob`.
    pub fn blob(&self) -> &MediaBlob {
        &self.blob
    }

    /// The relayed address, when the relay allocated one.
    pub fn relayed_address(&self) -> Option<SocketAddr> {
        self.relay.as_ref().map(|r| r.address)
    }

    /// Puts an SDP offer (audio, with our ICE and DTLS transport) in the blob, for a callee that
    /// turns out to be an SDP peer.
    pub fn offer_sdp(&mut self) -> Result<(), MediaError> {
        let offer = sdp_peer::offer(&self.blob, &self.config.capabilities, self.ssrcs)
            .map_err(|e| MediaError::Negotiation(e.to_string()))?;
        self.blob.sdp = Some(offer);
        Ok(())
    }

    /// Answers an SDP peer's offer: the answer goes in the blob (for the Accept), and the call
    /// [`Gathered::start`]s with what it settled.
    pub fn answer_sdp(&mut self, offer: &str) -> Result<(), MediaError> {
        let answered = sdp_peer::answer(offer, &self.blob, &self.config.capabilities, self.ssrcs)
            .map_err(|e| MediaError::Negotiation(e.to_string()))?;
        self.blob.sdp = Some(answered.sdp.clone());
        self.answered = Some(answered);
        Ok(())
    }

    /// Runs the call with `peer`: the caller controls the checks; with an endpoint it is the
    /// DTLS client and sends the SIP INVITE, with an SDP peer the SDP's `a=setup` decides.
    pub fn start(mut self, caller: bool, peer: Peer) -> Result<MediaCall, MediaError> {
        let negotiation = |e: &dyn std::fmt::Display| MediaError::Negotiation(e.to_string());
        let (peer_blob, expectation, sdp_peer) = match peer {
            Peer::Endpoint { blob, expectation } => {
                let expectation = PeerExpectation {
                    fingerprint_sha256_hex: blob.fingerprint.clone(),
                    ..expectation
                };
                (blob, expectation, None)
            }
            Peer::Sdp(text) => {
                let (session, transport, role) = if caller {
                    let offer = self.blob.sdp.as_deref().ok_or_else(|| {
                        MediaError::Negotiation("an SDP answer to no offer of ours".into())
                    })?;
                    sdp_peer::read_answer(&text, offer).map_err(|e| negotiation(&e))?
                } else {
                    let answered = self.answered.take().ok_or_else(|| {
                        MediaError::Negotiation("the peer's SDP offer was not answered".into())
                    })?;
                    (answered.session, answered.peer, answered.role)
                };
                let blob = transport_blob(transport);
                let expectation = PeerExpectation::fingerprint_only(blob.fingerprint.clone());
                (blob, expectation, Some((session, role)))
            }
        };
        let role = if caller {
            Role::Controlling
        } else {
            Role::Controlled
        };
        let mut agent = IceAgent::new(
            role,
            self.credentials.clone(),
            peer_blob.credentials(),
            rand::random(),
        )
        .with_check_timeout(self.config.check_timeout);
        for local in &self.local {
            if !(self.config.relay_only && local.id == HOST_BASE) {
                agent.add_local_candidate(local.clone());
            }
        }
        for remote in &peer_blob.candidates {
            agent.add_remote_candidate(remote.clone());
        }
        let peer = expectation;
        let stats = Arc::new(Mutex::new(CallStats::default()));
        let (events_tx, events) = mpsc::unbounded_channel();
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (dtls_conn, dtls_shell) = PacketConn::new(256);
        let (media_tx, media_rx) = mpsc::unbounded_channel();
        let ssrcs = self.ssrcs;
        let cname = random_cname();
        let (sip_commands_tx, sip_commands_rx) = mpsc::unbounded_channel();
        // Canonicalized here, before the handshake: the first `tel:` parse loads the numbering
        // metadata, which must not stall the packet loop mid-handshake.
        let canonical = |uri: &str| {
            switchyard_protocol::Canonicalizer::new(None)
                .canonicalize(uri)
                .map_err(|e| MediaError::Negotiation(format!("{uri}: {e}")))
        };
        let local_uri = canonical(&self.config.local_uri)?;
        // An SDP peer is known by its fingerprint; its URI is not checked.
        let remote_uri = canonical(if sdp_peer.is_some() {
            &self.config.local_uri
        } else {
            &peer.uri
        })?;
        let signalling = Signalling {
            caller,
            sdp_peer,
            identity: self.config.identity,
            local_uri,
            remote_uri,
            capabilities: self.config.capabilities,
            media: self.config.media,
            ssrcs,
            peer,
            events: events_tx.clone(),
            start_media: media_tx,
            commands: sip_commands_rx,
        };
        let mut tasks = self.tasks;
        tasks.push(tokio::spawn(signalling.run(dtls_conn)));
        let io = MediaIo {
            socket: self.socket.clone(),
            relay_conn: self.relay.as_ref().map(|r| r.conn.clone()),
            tunnel: self.tunnel.clone(),
            agent,
            selected: None,
            pending_dtls: Vec::new(),
            dtls_in: dtls_shell.inbound_tx,
            stats: stats.clone(),
            events: events_tx,
            ssrcs,
            cname: cname.clone(),
            media: None,
            video_muted: false,
            receive: HashMap::new(),
            last_rtcp: Instant::now(),
        };
        tasks.push(tokio::spawn(io.run(
            self.inbound,
            dtls_shell.outbound_rx,
            media_rx,
            commands_rx,
        )));
        Ok(MediaCall {
            stats,
            events,
            commands: commands_tx,
            sip_commands: sip_commands_tx,
            relay: self.relay,
            tunnel: self.tunnel,
            tasks,
            socket: self.socket,
            tap: self.tap,
            inbound: self.inbound_tx,
            relay_only: self.config.relay_only,
            blob: self.blob,
            peer_blob,
            cname,
        })
    }
}

/// An SDP peer's transport in the shape of a blob, so that Updates are checked the same way.
fn transport_blob(transport: PeerTransport) -> MediaBlob {
    MediaBlob {
        ice_ufrag: transport.credentials.ufrag,
        ice_pwd: transport.credentials.pwd,
        fingerprint: transport.fingerprint,
        candidates: transport.candidates,
        sdp: None,
    }
}

/// A TURN allocation on the shared media port, with the server-reflexive address the relay saw.
struct Allocated {
    relay: Relay,
    reflexive: SocketAddr,
    local: LocalCandidate,
}

impl Allocated {
    /// What to advertise of it: the server-reflexive address (when it differs from the host's and
    /// direct paths are offered) and the relayed one.
    fn candidates(&self, host: SocketAddr, relay_only: bool) -> Vec<Candidate> {
        let mut advertised = Vec::new();
        if self.reflexive != host && !relay_only {
            advertised.push(candidate(
                CandidateKind::ServerReflexive,
                self.reflexive,
                Some(host),
            ));
        }
        advertised.push(self.local.candidate.clone());
        advertised
    }
}

/// A TURN client of a relay on the shared media port: the server-reflexive address it reports,
/// and an allocation.
async fn allocate(
    socket: &Arc<UdpSocket>,
    tap: &TurnTap,
    server: &RelayServer,
) -> Result<Allocated, MediaError> {
    let (turn_tx, turn_rx) = mpsc::channel(256);
    *tap.lock().expect("turn tap lock") = Some((server.address, turn_tx));
    let turn_side = Arc::new(TurnSide {
        socket: socket.clone(),
        inbound: DatagramInbox::new(turn_rx),
    });
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.address.to_string(),
        turn_serv_addr: server.address.to_string(),
        username: server.username.clone(),
        password: server.password.clone(),
        realm: server.realm.clone(),
        software: "switchyard".into(),
        rto_in_ms: 0,
        conn: turn_side,
        vnet: None,
    })
    .await
    .map_err(|e| MediaError::Relay(e.to_string()))?;
    client
        .listen()
        .await
        .map_err(|e| MediaError::Relay(e.to_string()))?;
    let reflexive = client
        .send_binding_request()
        .await
        .map_err(|e| MediaError::Relay(format!("binding request: {e}")))?;
    let conn: Arc<dyn Conn + Send + Sync> = Arc::new(
        client
            .allocate()
            .await
            .map_err(|e| MediaError::Relay(format!("allocation: {e}")))?,
    );
    let address = conn
        .local_addr()
        .map_err(|e| MediaError::Relay(e.to_string()))?;
    Ok(Allocated {
        local: LocalCandidate {
            id: RELAY_BASE,
            candidate: candidate(CandidateKind::Relayed, address, Some(reflexive)),
        },
        relay: Relay {
            client,
            conn,
            address,
        },
        reflexive,
    })
}

/// Sorts what arrives on the media port: the TURN server's own messages (allocation, refreshes,
/// Data indications and ChannelData) go to the TURN client; everything else is the call's.
async fn route(socket: Arc<UdpSocket>, tap: TurnTap, inbound: mpsc::Sender<Inbound>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(error = %e, "media socket closed");
                return;
            }
        };
        let bytes = buf[..n].to_vec();
        let turn = tap
            .lock()
            .expect("turn tap lock")
            .as_ref()
            .filter(|(server, _)| *server == from)
            .map(|(_, turn)| turn.clone());
        if let Some(turn) = turn {
            let _ = turn.try_send((bytes, from));
        } else if inbound
            .try_send(Inbound {
                base: HOST_BASE,
                from,
                bytes,
            })
            .is_err()
            && inbound.is_closed()
        {
            return;
        }
    }
}

/// What peers send to a relayed address, unwrapped by the TURN client or the HTTP tunnel.
async fn read_relay(
    conn: Arc<dyn Conn + Send + Sync>,
    base: usize,
    inbound: mpsc::Sender<Inbound>,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok((n, from)) = conn.recv_from(&mut buf).await {
        let item = Inbound {
            base,
            from,
            bytes: buf[..n].to_vec(),
        };
        if inbound.try_send(item).is_err() && inbound.is_closed() {
            return;
        }
    }
}

enum Command {
    MuteVideo(bool),
    Orientation(Rotation, Camera),
    /// A relay allocated after the call started: its conn and our relayed candidate.
    AddRelay(Arc<dyn Conn + Send + Sync>, LocalCandidate),
    /// Candidates of the peer learned from its Update.
    RemoteCandidates(Vec<Candidate>),
}

enum SipCommand {
    MuteVideo(bool),
    HangUp,
}

/// Media to send once SIP has negotiated it, with the keys DTLS made.
struct MediaStart {
    srtp: Arc<SrtpSession>,
    session: MediaSession,
}

/// DTLS, then SIP over it: the call's signalling, end to end between the two endpoints.
struct Signalling {
    caller: bool,
    /// With an SDP peer: the media its offer/answer settled and our DTLS role; no SIP runs.
    sdp_peer: Option<(MediaSession, DtlsRole)>,
    identity: EndpointIdentity,
    local_uri: CanonicalUri,
    remote_uri: CanonicalUri,
    capabilities: Capabilities,
    media: Vec<MediaKind>,
    ssrcs: LocalSsrcs,
    peer: PeerExpectation,
    events: mpsc::UnboundedSender<MediaEvent>,
    start_media: mpsc::UnboundedSender<MediaStart>,
    commands: mpsc::UnboundedReceiver<SipCommand>,
}

impl Signalling {
    async fn run(mut self, conn: Arc<PacketConn>) {
        let outcome = self.negotiate(conn).await;
        match outcome {
            Ok(()) => {
                let _ = self.events.send(MediaEvent::Ended);
            }
            Err(e) => {
                let _ = self.events.send(MediaEvent::Failed(e.to_string()));
            }
        }
    }

    async fn negotiate(&mut self, conn: Arc<PacketConn>) -> Result<(), MediaError> {
        let role = match (&self.sdp_peer, self.caller) {
            (Some((_, role)), _) => *role,
            (None, true) => DtlsRole::Client,
            (None, false) => DtlsRole::Server,
        };
        let channel =
            SecureChannel::establish(conn, role, &self.identity, self.peer.clone(), DTLS_TIMEOUT)
                .await?;
        let _ = self.events.send(MediaEvent::Secured {
            profile: channel.profile().to_string(),
        });
        if let Some((session, _)) = self.sdp_peer.take() {
            return self.hold_sdp_call(channel, session).await;
        }
        let mut sip = SipSession::new(self.local_uri.clone(), self.remote_uri.clone());
        let negotiation = |e: &dyn std::fmt::Display| MediaError::Negotiation(e.to_string());
        // The answer is read against the offer it answers (RFC 3264 §6).
        let mut offer_sent = None;
        if self.caller {
            let offer = sdp::build_offer(&self.capabilities, &self.media, self.ssrcs)
                .map_err(|e| negotiation(&e))?;
            sip.start_call(Instant::now(), &offer)
                .map_err(|e| negotiation(&e))?;
            offer_sent = Some(offer);
        }
        let mut hung_up = false;
        let mut established = false;
        // A mute asked for before the call is set up is sent once it is.
        let mut pending_mute: Option<bool> = None;
        loop {
            while let Some(event) = sip.poll_event() {
                match event {
                    SipEvent::IncomingCall { offer } => {
                        let (answer, session) =
                            match sdp::build_answer(&offer, &self.capabilities, self.ssrcs) {
                                Ok(answered) => answered,
                                Err(e) => {
                                    // 488 Not Acceptable Here: the caller learns it at once.
                                    sip.decline(488).map_err(|e| negotiation(&e))?;
                                    while let Some(bytes) = sip.poll_transmit() {
                                        channel.send_app(&bytes).await?;
                                    }
                                    return Err(negotiation(&e));
                                }
                            };
                        sip.accept(&answer).map_err(|e| negotiation(&e))?;
                        established = true;
                        self.begin_media(&channel, session);
                    }
                    SipEvent::Established { answer } => {
                        let offer = offer_sent.as_deref().ok_or_else(|| {
                            MediaError::Negotiation("an SDP answer to no offer of ours".into())
                        })?;
                        let session =
                            sdp::parse_answer(&answer, offer).map_err(|e| negotiation(&e))?;
                        established = true;
                        self.begin_media(&channel, session);
                    }
                    SipEvent::RemoteVideoMuted(muted) => {
                        let _ = self.events.send(MediaEvent::RemoteVideoMuted(muted));
                    }
                    SipEvent::RemoteHangUp => {
                        let _ = self.events.send(MediaEvent::RemoteHangUp);
                        // Let the 200 to the BYE go out before the channel closes.
                        while let Some(bytes) = sip.poll_transmit() {
                            channel.send_app(&bytes).await?;
                        }
                        let _ = channel.close().await;
                        return Ok(());
                    }
                    SipEvent::Ended => {
                        let _ = channel.close().await;
                        return Ok(());
                    }
                    SipEvent::Failed(failure) => {
                        return Err(MediaError::Negotiation(format!("{failure:?}")));
                    }
                }
            }
            if established {
                if let Some(muted) = pending_mute.take() {
                    if let Err(e) = sip.set_video_muted(Instant::now(), muted) {
                        tracing::warn!(error = %e, "video mute not signalled");
                    }
                }
            }
            // After the events: answering one (the 200 to an INVITE) queues a message.
            while let Some(bytes) = sip.poll_transmit() {
                channel.send_app(&bytes).await?;
            }
            let deadline = sip
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                received = channel.recv_app() => {
                    let bytes = received?;
                    if let Err(e) = sip.handle_incoming(Instant::now(), &bytes) {
                        tracing::debug!(error = %e, "SIP message refused");
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => sip.handle_timeout(Instant::now()),
                command = self.commands.recv(), if !hung_up => match command {
                    Some(SipCommand::MuteVideo(muted)) => pending_mute = Some(muted),
                    Some(SipCommand::HangUp) | None => {
                        hung_up = true;
                        sip.hang_up(Instant::now()).map_err(|e| negotiation(&e))?;
                    }
                },
            }
        }
    }

    /// An SDP peer's call: media at once (the offer/answer is done), until we hang up or the
    /// peer's DTLS association goes away. The SIP dialog that ends it runs at the SIP edge.
    async fn hold_sdp_call(
        &mut self,
        channel: SecureChannel,
        session: MediaSession,
    ) -> Result<(), MediaError> {
        self.begin_media(&channel, session);
        loop {
            tokio::select! {
                received = channel.recv_app() => {
                    if received.is_err() {
                        return Ok(());
                    }
                }
                command = self.commands.recv() => match command {
                    Some(SipCommand::MuteVideo(_)) => {}
                    Some(SipCommand::HangUp) | None => {
                        let _ = channel.close().await;
                        return Ok(());
                    }
                },
            }
        }
    }

    fn begin_media(&self, channel: &SecureChannel, session: MediaSession) {
        let _ = self.events.send(MediaEvent::Negotiated {
            audio: session.audio.as_ref().map(|s| s.codec.clone()),
            video: session.video.as_ref().map(|s| s.codec.clone()),
        });
        let _ = self.start_media.send(MediaStart {
            srtp: channel.srtp(),
            session,
        });
    }
}

struct Sending {
    srtp: Arc<SrtpSession>,
    audio: Option<AudioSource>,
    video: Option<VideoSource>,
    session: MediaSession,
}

/// The packet loop: connectivity checks, DTLS datagrams to and from the signalling task, SRTP
/// media out on the selected path and in from any valid pair, RTCP every second.
struct MediaIo {
    socket: Arc<UdpSocket>,
    relay_conn: Option<Arc<dyn Conn + Send + Sync>>,
    tunnel: Option<Arc<dyn Conn + Send + Sync>>,
    agent: IceAgent,
    selected: Option<(usize, SocketAddr)>,
    /// DTLS datagrams written before a path was chosen (DTLS retransmits anyway; these just
    /// save a round of timers).
    pending_dtls: Vec<Vec<u8>>,
    dtls_in: mpsc::Sender<Vec<u8>>,
    stats: Arc<Mutex<CallStats>>,
    events: mpsc::UnboundedSender<MediaEvent>,
    ssrcs: LocalSsrcs,
    /// Our RTCP CNAME, the same for the audio and the video SSRC (RFC 7022).
    cname: String,
    media: Option<Sending>,
    video_muted: bool,
    receive: HashMap<u32, ReceiveStats>,
    last_rtcp: Instant,
}

impl MediaIo {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut dtls_out: mpsc::Receiver<Vec<u8>>,
        mut media_start: mpsc::UnboundedReceiver<MediaStart>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        loop {
            let now = Instant::now();
            self.drive_agent(now).await;
            self.send_media(now).await;
            let deadline = self.next_deadline(now);
            tokio::select! {
                item = inbound.recv() => match item {
                    Some(item) => self.handle_inbound(item).await,
                    None => return,
                },
                datagram = dtls_out.recv() => match datagram {
                    Some(datagram) => self.send_dtls(datagram).await,
                    // The signalling task ended: the call is over.
                    None => return,
                },
                start = media_start.recv(), if self.media.is_none() => {
                    if let Some(start) = start {
                        self.begin(start, Instant::now());
                    }
                }
                command = commands.recv() => match command {
                    Some(Command::MuteVideo(muted)) => self.video_muted = muted,
                    Some(Command::Orientation(rotation, camera)) => {
                        if let Some(video) = self.media.as_mut().and_then(|m| m.video.as_mut()) {
                            video.set_orientation(rotation, camera);
                        }
                    }
                    Some(Command::AddRelay(conn, local)) => {
                        self.relay_conn = Some(conn);
                        self.agent.add_local_candidate(local);
                    }
                    Some(Command::RemoteCandidates(candidates)) => {
                        for candidate in candidates {
                            self.agent.add_remote_candidate(candidate);
                        }
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut deadline = now + Duration::from_millis(500);
        if let Some(t) = self.agent.poll_timeout() {
            deadline = deadline.min(t);
        }
        if let Some(media) = &self.media {
            if let Some(audio) = &media.audio {
                deadline = deadline.min(audio.next_deadline());
            }
            if let Some(video) = &media.video {
                deadline = deadline.min(video.next_deadline());
            }
            deadline = deadline.min(self.last_rtcp + RTCP_INTERVAL);
        }
        deadline.max(now)
    }

    async fn send_on(&self, base: usize, to: SocketAddr, bytes: &[u8]) {
        let result = match (base, &self.relay_conn, &self.tunnel) {
            (RELAY_BASE, Some(relay), _) | (TUNNEL_BASE, _, Some(relay)) => relay
                .send_to(bytes, to)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ => self
                .socket
                .send_to(bytes, to)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            tracing::debug!(%to, base, error = %e, "media datagram not sent");
        }
    }

    async fn drive_agent(&mut self, now: Instant) {
        self.agent.handle_timeout(now);
        while let Some(transmit) = self.agent.poll_transmit(now) {
            self.send_on(transmit.base, transmit.to, &transmit.bytes)
                .await;
        }
        while let Some(event) = self.agent.poll_event() {
            match event {
                IceEvent::Selected {
                    base,
                    remote,
                    kind_local,
                    kind_remote,
                } => {
                    self.selected = Some((base, remote));
                    self.stats.lock().expect("stats lock").path = Some((kind_local, kind_remote));
                    let _ = self.events.send(MediaEvent::PathSelected {
                        local: kind_local,
                        remote: kind_remote,
                        remote_address: remote,
                    });
                    for datagram in std::mem::take(&mut self.pending_dtls) {
                        self.send_on(base, remote, &datagram).await;
                    }
                }
                IceEvent::BackupReady { .. } => {}
                IceEvent::Failed => {
                    let _ = self
                        .events
                        .send(MediaEvent::Failed(MediaError::NoPath.to_string()));
                }
            }
        }
    }

    async fn send_dtls(&mut self, datagram: Vec<u8>) {
        match self.selected {
            Some((base, remote)) => self.send_on(base, remote, &datagram).await,
            None if self.pending_dtls.len() < 16 => self.pending_dtls.push(datagram),
            None => {}
        }
    }

    async fn handle_inbound(&mut self, item: Inbound) {
        let now = Instant::now();
        match classify(&item.bytes) {
            PacketKind::Stun => {
                if let Err(e) = self
                    .agent
                    .handle_packet(now, item.base, item.from, &item.bytes)
                {
                    tracing::debug!(from = %item.from, error = %e, "STUN datagram refused");
                }
            }
            PacketKind::Dtls | PacketKind::Rtp | PacketKind::Rtcp
                if !self.agent.is_valid(item.base, item.from) =>
            {
                tracing::debug!(
                    from = %item.from,
                    base = item.base,
                    "datagram from no valid pair dropped"
                );
                self.stats.lock().expect("stats lock").dropped_unvalidated += 1;
            }
            PacketKind::Dtls => {
                let _ = self.dtls_in.try_send(item.bytes);
            }
            PacketKind::Rtp => self.receive_rtp(&item.bytes, now),
            PacketKind::Rtcp => self.receive_rtcp(&item.bytes, now),
            PacketKind::Unknown => {
                tracing::debug!(from = %item.from, "unclassifiable datagram dropped");
            }
        }
    }

    fn begin(&mut self, start: MediaStart, now: Instant) {
        let audio = start.session.audio.as_ref().and_then(|stream| {
            AudioCodec::from_name(&stream.codec)
                .ok()
                .map(|codec| AudioSource::new(codec, stream.pt, self.ssrcs.audio, now))
        });
        let video = start.session.video.as_ref().and_then(|stream| {
            VideoSource::new(
                stream.pt,
                self.ssrcs.video,
                start.session.orientation_ext_id,
                now,
            )
            .ok()
        });
        for stream in [&start.session.audio, &start.session.video]
            .into_iter()
            .flatten()
        {
            self.receive.insert(
                stream.remote_ssrc,
                ReceiveStats::new(
                    stream.remote_ssrc,
                    stream.clock_rate,
                    start.session.orientation_ext_id,
                ),
            );
        }
        self.last_rtcp = now;
        self.media = Some(Sending {
            srtp: start.srtp,
            audio,
            video,
            session: start.session,
        });
    }

    async fn send_media(&mut self, now: Instant) {
        let Some((base, remote)) = self.selected else {
            return;
        };
        let Some(media) = self.media.as_mut() else {
            return;
        };
        let mut packets = Vec::new();
        if let Some(audio) = media.audio.as_mut() {
            while let Some(packet) = audio.poll(now) {
                packets.push(packet);
            }
        }
        if let Some(video) = media.video.as_mut() {
            if self.video_muted {
                video.skip(now);
            } else {
                while let Some(packet) = video.poll(now) {
                    packets.push(packet);
                }
            }
        }
        let mut protected = Vec::with_capacity(packets.len());
        for packet in &packets {
            if let Ok(clear) = packet.marshal() {
                match media.srtp.protect_rtp(&clear) {
                    Ok(bytes) => protected.push(bytes),
                    Err(e) => tracing::warn!(error = %e, "SRTP protect failed"),
                }
            }
        }
        let rtcp = if now >= self.last_rtcp + RTCP_INTERVAL {
            self.last_rtcp = now;
            self.rtcp_packet(now)
        } else {
            None
        };
        {
            let mut stats = self.stats.lock().expect("stats lock");
            let media = self.media.as_ref().expect("media checked above");
            if let Some(audio) = &media.audio {
                stats.audio.packets_sent = audio.stats().packets;
            }
            if let Some(video) = &media.video {
                stats.video.packets_sent = video.stats().packets;
            }
        }
        for bytes in protected.iter().chain(rtcp.iter()) {
            self.send_on(base, remote, bytes).await;
        }
    }

    /// One compound packet: a Sender Report per stream we send (a Receiver Report when we send
    /// none), carrying reception reports about what we receive, then an SDES with our CNAME.
    fn rtcp_packet(&mut self, now: Instant) -> Option<Bytes> {
        let media = self.media.as_ref()?;
        let reports: Vec<_> = self
            .receive
            .values_mut()
            .filter(|r| r.packets_received() > 0)
            .map(|r| r.reception_report(now))
            .collect();
        let ntp = ntp_time(SystemTime::now());
        let mut compound = Vec::new();
        let mut sent: Vec<(u32, u32, SendStats)> = Vec::new();
        if let Some(audio) = &media.audio {
            sent.push((audio.ssrc(), audio.rtp_time_at(now), audio.stats()));
        }
        if let Some(video) = &media.video {
            sent.push((video.ssrc(), video.rtp_time_at(now), video.stats()));
        }
        let mut reports = Some(reports);
        for (ssrc, rtp_time, stats) in sent {
            compound.push(RtcpReport::Sender(sender_report(
                ssrc,
                ntp,
                rtp_time,
                stats,
                reports.take().unwrap_or_default(),
            )));
        }
        if compound.is_empty() {
            compound.push(RtcpReport::Receiver(receiver_report(
                self.ssrcs.audio,
                reports.take().unwrap_or_default(),
            )));
        }
        let clear = marshal_compound(&compound, &self.cname).ok()?;
        media.srtp.protect_rtcp(&clear).ok()
    }

    fn receive_rtp(&mut self, bytes: &[u8], now: Instant) {
        let Some(media) = &self.media else {
            return;
        };
        let clear = match media.srtp.unprotect_rtp(bytes) {
            Ok(clear) => clear,
            Err(e) => {
                tracing::debug!(error = %e, "SRTP packet refused");
                self.stats.lock().expect("stats lock").srtp_failures += 1;
                return;
            }
        };
        let Ok(packet) = Packet::unmarshal(&mut clear.as_ref()) else {
            return;
        };
        let Some(receive) = self.receive.get_mut(&packet.header.ssrc) else {
            return;
        };
        receive.record(&packet, now);
        let figures = StreamStats {
            packets_sent: 0,
            packets_received: receive.packets_received(),
            packets_lost: receive.packets_lost(),
            jitter_ms: receive.jitter_ms(),
        };
        let orientation = receive.last_orientation();
        let is_video = media
            .session
            .video
            .as_ref()
            .is_some_and(|v| v.remote_ssrc == packet.header.ssrc);
        let mut stats = self.stats.lock().expect("stats lock");
        let stream = if is_video {
            &mut stats.video
        } else {
            &mut stats.audio
        };
        stream.packets_received = figures.packets_received;
        stream.packets_lost = figures.packets_lost;
        stream.jitter_ms = figures.jitter_ms;
        if let Some(o) = orientation {
            stats.remote_orientation = Some((o.rotation, o.camera));
        }
    }

    fn receive_rtcp(&mut self, bytes: &[u8], now: Instant) {
        let Some(media) = &self.media else {
            return;
        };
        let clear = match media.srtp.unprotect_rtcp(bytes) {
            Ok(clear) => clear,
            Err(e) => {
                tracing::debug!(error = %e, "SRTCP packet refused");
                self.stats.lock().expect("stats lock").srtp_failures += 1;
                return;
            }
        };
        let Ok(reports) = parse_compound(&clear) else {
            return;
        };
        let arrival = ntp_time(SystemTime::now());
        let ours = [self.ssrcs.audio, self.ssrcs.video];
        for report in reports {
            let blocks = match &report {
                RtcpReport::Sender(sr) => {
                    if let Some(receive) = self.receive.get_mut(&sr.ssrc) {
                        receive.record_sender_report(sr, now);
                    }
                    sr.reports.clone()
                }
                RtcpReport::Receiver(rr) => rr.reports.clone(),
                RtcpReport::Cnames(cnames) => {
                    // Only a CNAME of one of the negotiated remote streams names the peer.
                    if let Some(c) = cnames.iter().find(|c| self.receive.contains_key(&c.ssrc)) {
                        self.stats.lock().expect("stats lock").remote_cname = Some(c.cname.clone());
                    }
                    continue;
                }
            };
            for block in blocks.iter().filter(|b| ours.contains(&b.ssrc)) {
                if let Some(rtt) = round_trip_time(block, arrival) {
                    self.stats.lock().expect("stats lock").round_trip = Some(rtt);
                }
            }
        }
    }
}

/// A running call.
pub struct MediaCall {
    stats: Arc<Mutex<CallStats>>,
    events: mpsc::UnboundedReceiver<MediaEvent>,
    commands: mpsc::UnboundedSender<Command>,
    sip_commands: mpsc::UnboundedSender<SipCommand>,
    relay: Option<Relay>,
    tunnel: Option<Arc<dyn Conn + Send + Sync>>,
    tasks: Vec<JoinHandle<()>>,
    /// What a late allocation needs: the port, its router's TURN tap and the inbound queue.
    socket: Arc<UdpSocket>,
    tap: TurnTap,
    inbound: mpsc::Sender<Inbound>,
    relay_only: bool,
    /// Our blob as last sent, and the peer's as last received.
    blob: MediaBlob,
    peer_blob: MediaBlob,
    cname: String,
}

impl MediaCall {
    pub fn stats(&self) -> CallStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// The next event; None once the call's tasks are gone.
    pub async fn next_event(&mut self) -> Option<MediaEvent> {
        self.events.recv().await
    }

    /// Stops (or resumes) sending video and tells the peer with a SIP MESSAGE.
    pub fn set_video_muted(&self, muted: bool) {
        let _ = self.commands.send(Command::MuteVideo(muted));
        let _ = self.sip_commands.send(SipCommand::MuteVideo(muted));
    }

    /// Camera orientation, carried in the video RTP header extension.
    pub fn set_orientation(&self, rotation: Rotation, camera: Camera) {
        let _ = self.commands.send(Command::Orientation(rotation, camera));
    }

    /// Our RTCP CNAME (what the peer sees as its `remote_cname`).
    pub fn cname(&self) -> &str {
        &self.cname
    }

    /// Our blob as last advertised (with any relay allocated during the call).
    pub fn blob(&self) -> &MediaBlob {
        &self.blob
    }

    /// Whether the call has a TURN allocation.
    pub fn has_relay(&self) -> bool {
        self.relay.is_some()
    }

    /// Allocates at `server` during the call (the relay chosen for the call became known only
    /// with the other side's answer) and returns the blob to send in an Update: the new
    /// server-reflexive and relayed candidates join the checks at once.
    pub async fn add_relay(&mut self, server: &RelayServer) -> Result<MediaBlob, MediaError> {
        if self.relay.is_some() {
            return Err(MediaError::Relay(
                "the call already holds a relay allocation".into(),
            ));
        }
        let allocated = allocate(&self.socket, &self.tap, server).await?;
        let host = self.socket.local_addr()?;
        self.blob
            .candidates
            .extend(allocated.candidates(host, self.relay_only));
        self.tasks.push(tokio::spawn(read_relay(
            allocated.relay.conn.clone(),
            RELAY_BASE,
            self.inbound.clone(),
        )));
        let _ = self.commands.send(Command::AddRelay(
            allocated.relay.conn.clone(),
            allocated.local,
        ));
        self.relay = Some(allocated.relay);
        Ok(self.blob.clone())
    }

    /// Applies the peer's new blob from an Update: its new candidates are checked, and a better
    /// working pair is selected. The ICE credentials and the DTLS fingerprint must not change
    /// (that would be a new session, not an update of this one).
    pub fn apply_remote_blob(&mut self, blob: &MediaBlob) -> Result<usize, MediaError> {
        if blob.credentials() != self.peer_blob.credentials() {
            return Err(MediaError::Negotiation(
                "the update changes the ICE credentials; restarting ICE mid-call is not supported"
                    .into(),
            ));
        }
        if blob.fingerprint != self.peer_blob.fingerprint {
            return Err(MediaError::Negotiation(
                "the update changes the DTLS certificate fingerprint of a secured call".into(),
            ));
        }
        let new: Vec<Candidate> = blob
            .candidates
            .iter()
            .filter(|c| {
                !self
                    .peer_blob
                    .candidates
                    .iter()
                    .any(|known| known.address == c.address)
            })
            .cloned()
            .collect();
        let count = new.len();
        self.peer_blob.candidates.extend(new.iter().cloned());
        if count > 0 {
            let _ = self.commands.send(Command::RemoteCandidates(new));
        }
        Ok(count)
    }

    /// Applies an SDP peer's new offer or answer (a re-INVITE through the SIP edge) as
    /// [`MediaCall::apply_remote_blob`] does a blob.
    pub fn apply_remote_sdp(&mut self, sdp: &str) -> Result<usize, MediaError> {
        let transport =
            sdp_peer::transport(sdp).map_err(|e| MediaError::Negotiation(e.to_string()))?;
        self.apply_remote_blob(&transport_blob(transport))
    }

    /// Sends SIP BYE; the call ends when the peer answers (or the request times out). With an
    /// SDP peer, closes the DTLS association (the SIP edge sends the BYE).
    pub fn hang_up(&self) {
        let _ = self.sip_commands.send(SipCommand::HangUp);
    }

    /// Releases the port and the relay allocation.
    pub async fn close(self) {
        if let Some(relay) = &self.relay {
            let _ = relay.conn.close().await;
            let _ = relay.client.close().await;
        }
        if let Some(tunnel) = &self.tunnel {
            let _ = tunnel.close().await;
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}
