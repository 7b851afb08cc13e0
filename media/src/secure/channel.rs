//! The DTLS handshake between two endpoints, its application data, and the SRTP it keys.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dtls::config::{ClientAuthType, Config, ExtendedMasterSecretType};
use dtls::conn::DTLSConn;
use webrtc_util::Conn;

use super::identity::PeerVerifier;
use super::{EndpointIdentity, PeerExpectation, SecureError, SrtpProfile, SrtpSession};

/// Largest application-data message [`SecureChannel::send_app`] accepts (the DTLS record limit).
/// Messages above the path MTU (about 1,200 bytes to be safe) go out as one IP-fragmented datagram;
/// larger SIP messages should be kept small or split by the caller.
pub const MAX_APP_DATA_LEN: usize = 16_384;

/// Receive buffer for application data (a full record plus slack).
const APP_RECV_BUF: usize = MAX_APP_DATA_LEN + 1_024;

/// Placeholder DTLS server name: the client sends it in SNI, so it must not leak the peer's URI,
/// and it is not checked (peers are checked by fingerprint, CA and URI instead).
const SERVER_NAME: &str = "endpoint.switchyard.invalid";

/// Which side of the DTLS handshake this endpoint plays (from the signalling's `setup` role:
/// `active` = client, `passive` = server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DtlsRole {
    /// Sends the ClientHello (`a=setup:active`).
    Client,
    /// Waits for the ClientHello (`a=setup:passive`).
    Server,
}

impl DtlsRole {
    fn is_client(self) -> bool {
        self == DtlsRole::Client
    }
}

/// An established, mutually authenticated DTLS association with a peer endpoint, and the SRTP
/// session keyed from it.
pub struct SecureChannel {
    dtls: DTLSConn,
    srtp: Arc<SrtpSession>,
    role: DtlsRole,
    peer_uri: String,
    peer_cert_der: Vec<u8>,
}

impl std::fmt::Debug for SecureChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureChannel")
            .field("role", &self.role)
            .field("peer_uri", &self.peer_uri)
            .field("profile", &self.srtp.profile())
            .finish_non_exhaustive()
    }
}

/// Make sure rustls has a process-wide crypto provider: the DTLS crate builds rustls verifiers,
/// which panic when no provider (or an ambiguous set) is installed. Installs ring if none is.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: some provider is then installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl SecureChannel {
    /// Run the DTLS 1.2 handshake over `conn` as `role`, presenting `identity` and requiring the
    /// peer to present the certificate described by `peer` (fingerprint, issued by one of
    /// `peer.ca_certs_der`, currently valid, SAN URI equal to `peer.uri`). Offers
    /// `SRTP_AEAD_AES_128_GCM` then `SRTP_AES128_CM_HMAC_SHA1_80`, requires the extended master
    /// secret, and derives the SRTP session from the negotiated profile.
    ///
    /// Fails with [`SecureError::HandshakeTimeout`] if not done within `timeout`. On failure the
    /// `conn` is left open (the caller owns it); don't retry a handshake over the same conn.
    pub async fn establish(
        conn: Arc<dyn Conn + Send + Sync>,
        role: DtlsRole,
        identity: &EndpointIdentity,
        peer: PeerExpectation,
        timeout: Duration,
    ) -> Result<SecureChannel, SecureError> {
        Self::establish_offering(conn, role, identity, peer, timeout, &SrtpProfile::OFFERED).await
    }

    /// [`SecureChannel::establish`] with another list of SRTP profiles (tests: the fallback).
    pub(crate) async fn establish_offering(
        conn: Arc<dyn Conn + Send + Sync>,
        role: DtlsRole,
        identity: &EndpointIdentity,
        peer: PeerExpectation,
        timeout: Duration,
        offered: &[SrtpProfile],
    ) -> Result<SecureChannel, SecureError> {
        ensure_crypto_provider();
        let verifier = peer.verifier()?;
        let certificate = identity.dtls_certificate()?;
        let is_client = role.is_client();

        // The DTLS crate turns our callback's error into a string; keep the typed reason aside.
        let rejection: Arc<Mutex<Option<SecureError>>> = Arc::new(Mutex::new(None));
        let accepted: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
        let callback = {
            let verifier: PeerVerifier = verifier.clone();
            let rejection = Arc::clone(&rejection);
            let accepted = Arc::clone(&accepted);
            Arc::new(
                move |chain: &[Vec<u8>],
                      _verified: &[rustls::pki_types::CertificateDer<'static>]|
                      -> Result<(), dtls::Error> {
                    match verifier.verify(chain) {
                        Ok(()) => {
                            *accepted.lock().unwrap_or_else(|p| p.into_inner()) =
                                chain.first().cloned();
                            Ok(())
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            tracing::warn!(error = %msg, "DTLS peer certificate refused");
                            *rejection.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            Err(dtls::Error::Other(msg))
                        }
                    }
                },
            )
        };

        let config = Config {
            certificates: vec![certificate],
            srtp_protection_profiles: offered.iter().map(|p| p.dtls()).collect(),
            // Server: demand a client certificate; the DTLS crate then leaves all checking to our
            // callback. Client: skip the crate's WebPKI/hostname check, likewise.
            client_auth: ClientAuthType::RequireAnyClientCert,
            insecure_skip_verify: true,
            verify_peer_certificate: Some(callback),
            extended_master_secret: ExtendedMasterSecretType::Require,
            server_name: SERVER_NAME.to_string(),
            ..Default::default()
        };

        let handshake = DTLSConn::new(conn, config, is_client, None);
        let dtls = match tokio::time::timeout(timeout, handshake).await {
            Err(_) => {
                // A refusal by our callback ends the handshake at once, so a timeout means the peer
                // never completed; still prefer a typed refusal if one was recorded.
                if let Some(e) = rejection.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    return Err(e);
                }
                return Err(SecureError::HandshakeTimeout(timeout));
            }
            Ok(Err(e)) => {
                if let Some(e) = rejection.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    return Err(e);
                }
                return Err(SecureError::HandshakeFailed(match e {
                    dtls::Error::ErrAlertFatalOrClose => {
                        "the peer aborted with a fatal alert (it may have refused our certificate)"
                            .to_string()
                    }
                    other => other.to_string(),
                }));
            }
            Ok(Ok(dtls)) => dtls,
        };

        let accepted_der = accepted.lock().unwrap_or_else(|p| p.into_inner()).take();
        let peer_cert_der = match accepted_der {
            Some(der) => der,
            None => {
                // Defensive: the callback did not run (cannot happen with this configuration).
                let _ = dtls.close().await;
                return Err(SecureError::HandshakeFailed(
                    "peer certificate was not verified".into(),
                ));
            }
        };

        let srtp = match Self::derive_srtp(&dtls, is_client, offered).await {
            Ok(s) => s,
            Err(e) => {
                let _ = dtls.close().await;
                return Err(e);
            }
        };
        tracing::debug!(?role, peer = verifier.uri(), profile = %srtp.profile(), "DTLS-SRTP established");

        Ok(SecureChannel {
            dtls,
            srtp: Arc::new(srtp),
            role,
            peer_uri: verifier.uri().to_string(),
            peer_cert_der,
        })
    }

    async fn derive_srtp(
        dtls: &DTLSConn,
        is_client: bool,
        offered: &[SrtpProfile],
    ) -> Result<SrtpSession, SecureError> {
        let negotiated = dtls.selected_srtpprotection_profile();
        let profile = SrtpProfile::from_dtls(negotiated).ok_or_else(|| {
            SecureError::SrtpProfile("the peer did not agree to any offered SRTP profile".into())
        })?;
        if !offered.contains(&profile) {
            return Err(SecureError::SrtpProfile(format!(
                "negotiated {profile}, which was not offered"
            )));
        }
        let mut cfg = webrtc_srtp::config::Config {
            profile: profile.srtp(),
            ..Default::default()
        };
        cfg.extract_session_keys_from_dtls(dtls.connection_state().await, is_client)
            .await
            .map_err(|e| SecureError::SrtpKeying(e.to_string()))?;
        let k = &cfg.keys;
        SrtpSession::from_master_keys(
            profile,
            &k.local_master_key,
            &k.local_master_salt,
            &k.remote_master_key,
            &k.remote_master_salt,
        )
    }

    /// Send one DTLS application-data message (e.g. a SIP message) to the peer.
    pub async fn send_app(&self, data: &[u8]) -> Result<(), SecureError> {
        if data.len() > MAX_APP_DATA_LEN {
            return Err(SecureError::AppDataTooLarge {
                len: data.len(),
                max: MAX_APP_DATA_LEN,
            });
        }
        self.dtls
            .write(data, None)
            .await
            .map(|_| ())
            .map_err(map_dtls_io)
    }

    /// Wait for the next DTLS application-data message from the peer. Fails with
    /// [`SecureError::Closed`] once the association is closed (by either side).
    pub async fn recv_app(&self) -> Result<Vec<u8>, SecureError> {
        self.recv_app_inner(None).await
    }

    /// Like [`SecureChannel::recv_app`], giving up with [`SecureError::Timeout`] after `timeout`.
    pub async fn recv_app_timeout(&self, timeout: Duration) -> Result<Vec<u8>, SecureError> {
        self.recv_app_inner(Some(timeout)).await
    }

    async fn recv_app_inner(&self, timeout: Option<Duration>) -> Result<Vec<u8>, SecureError> {
        let mut buf = vec![0u8; APP_RECV_BUF];
        let n = self
            .dtls
            .read(&mut buf, timeout)
            .await
            .map_err(map_dtls_io)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Protect an outgoing RTP packet into SRTP.
    pub fn protect_rtp(&self, rtp: &[u8]) -> Result<Bytes, SecureError> {
        self.srtp.protect_rtp(rtp)
    }

    /// Authenticate, replay-check and decrypt an incoming SRTP packet.
    pub fn unprotect_rtp(&self, srtp: &[u8]) -> Result<Bytes, SecureError> {
        self.srtp.unprotect_rtp(srtp)
    }

    /// Protect an outgoing RTCP packet into SRTCP.
    pub fn protect_rtcp(&self, rtcp: &[u8]) -> Result<Bytes, SecureError> {
        self.srtp.protect_rtcp(rtcp)
    }

    /// Authenticate, replay-check and decrypt an incoming SRTCP packet.
    pub fn unprotect_rtcp(&self, srtcp: &[u8]) -> Result<Bytes, SecureError> {
        self.srtp.unprotect_rtcp(srtcp)
    }

    /// The SRTP session, to hand to media send/receive tasks (it outlives [`SecureChannel::close`]).
    pub fn srtp(&self) -> Arc<SrtpSession> {
        Arc::clone(&self.srtp)
    }

    /// The negotiated SRTP protection profile.
    pub fn profile(&self) -> SrtpProfile {
        self.srtp.profile()
    }

    /// The peer's URI, as verified in its certificate.
    pub fn peer_uri(&self) -> &str {
        &self.peer_uri
    }

    /// DER of the certificate the peer presented (verified).
    pub fn peer_certificate_der(&self) -> &[u8] {
        &self.peer_cert_der
    }

    /// Our handshake role.
    pub fn role(&self) -> DtlsRole {
        self.role
    }

    /// Send close_notify and close the DTLS association and the underlying conn. Pending and later
    /// [`SecureChannel::recv_app`] calls fail with [`SecureError::Closed`]. SRTP keeps working on
    /// any [`SecureChannel::srtp`] handle. Idempotent.
    pub async fn close(&self) -> Result<(), SecureError> {
        match self.dtls.close().await {
            Ok(()) => Ok(()),
            // The conn already being gone is not worth reporting on close.
            Err(dtls::Error::Util(_)) => Ok(()),
            Err(e) => Err(SecureError::Transport(e.to_string())),
        }
    }
}

fn map_dtls_io(e: dtls::Error) -> SecureError {
    match e {
        dtls::Error::ErrConnClosed | dtls::Error::ErrAlertFatalOrClose => SecureError::Closed,
        dtls::Error::ErrDeadlineExceeded => SecureError::Timeout,
        other => SecureError::Transport(other.to_string()),
    }
}
