//! The endpoint's media session (`switchyard_media::session`) driven from the pushes: prepared
//! for an Initiate or an Accept, started with the other side's blob, joined to a relay named
//! late, updated from an Update Push.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use switchyard_media::blob::{MediaBlob, PeerMedia};
use switchyard_media::secure::{EndpointIdentity, PeerExpectation};
pub use switchyard_media::session::MediaCall;
use switchyard_media::session::{Gathered, Peer, SessionConfig};
use switchyard_protocol::capabilities::MediaKind;
use switchyard_protocol::dict::Dict;

use std::sync::Arc;

use crate::client::EndpointClient;
use crate::http_relay::{HttpRelayConn, TunnelMode};

/// How the endpoint sets up its media.
#[derive(Debug, Clone)]
pub struct MediaOptions {
    /// The address the media port binds to and advertises.
    pub address: IpAddr,
    /// Advertise only the relayed candidate.
    pub relay_only: bool,
    /// As the caller, mute video this many seconds into the call (counted from the media's
    /// negotiation), and unmute as many seconds later.
    pub mute_video_after: Option<u64>,
    /// Reach the media only through the provider's HTTP relay (a network without UDP).
    pub http_relay: Option<TunnelMode>,
}

/// Binds the media port and gathers candidates, with a TURN allocation at the relay of
/// `relay_provider` (the one a push named), or at the relay the provider chooses for a new call;
/// the blob goes in Initiate or Accept. Returns the provider whose relay the candidates use.
pub async fn prepare(
    client: &EndpointClient,
    uri: &str,
    media: Vec<MediaKind>,
    options: &MediaOptions,
    relay_provider: Option<&str>,
) -> anyhow::Result<(Gathered, Option<String>)> {
    let identity = &client.identity;
    let (grant, tunnel): (_, Option<Arc<dyn webrtc_util::Conn + Send + Sync>>) =
        match options.http_relay {
            Some(mode) => (None, Some(HttpRelayConn::open(client, mode).await?)),
            None => (client.relay_credentials(relay_provider).await?, None),
        };
    let config = SessionConfig {
        identity: EndpointIdentity::from_pem(&identity.certificate_pem, &identity.key_pem)?,
        local_uri: uri.to_string(),
        capabilities: identity.capabilities.clone(),
        media,
        bind: SocketAddr::new(options.address, 0),
        relay: grant.as_ref().map(|g| g.server.clone()),
        tunnel,
        relay_only: options.relay_only || options.http_relay.is_some(),
        check_timeout: Duration::from_secs(10),
    };
    let gathered = Gathered::gather(config).await?;
    let relay_provider = grant
        .filter(|_| gathered.relayed_address().is_some())
        .map(|g| g.provider);
    Ok((gathered, relay_provider))
}

/// The other side's media, from its push (Initiate Push for the callee, Accept Push for the
/// caller): an endpoint's blob, checked against its URI and endpoint CA, or a SIP phone's SDP.
pub fn peer(push: &Dict) -> anyhow::Result<Peer> {
    Ok(match PeerMedia::from_bytes(&push.data("peer-blob")?)? {
        PeerMedia::Endpoint(blob) => {
            let ca = push.opt_str("peer-ca")?.ok_or_else(|| {
                anyhow::anyhow!("the push names no certificate authority for the other endpoint")
            })?;
            let expectation =
                PeerExpectation::with_ca_pem(&blob.fingerprint, push.str("peer-uri")?, ca)?;
            Peer::Endpoint { blob, expectation }
        }
        PeerMedia::Sdp(sdp) => Peer::Sdp(sdp),
    })
}

/// Starts the media of a call with the peer its push described ([`peer`]).
pub fn start(gathered: Gathered, caller: bool, push: &Dict) -> anyhow::Result<MediaCall> {
    Ok(gathered.start(caller, peer(push)?)?)
}

/// After the answer, when the Accept Push names a relay for the call that the media does not
/// use yet (the callee's provider's, known only now): allocates there and returns the blob to
/// send in an Update.
pub async fn join_call_relay(
    call: &mut MediaCall,
    client: &EndpointClient,
    push: &Dict,
    relay_provider: Option<&str>,
    options: &MediaOptions,
) -> anyhow::Result<Option<MediaBlob>> {
    let Some(wanted) = push.opt_str("relay-provider")? else {
        return Ok(None);
    };
    if options.http_relay.is_some() || call.has_relay() || relay_provider == Some(wanted) {
        return Ok(None);
    }
    let Some(grant) = client.relay_credentials(Some(wanted)).await? else {
        return Ok(None);
    };
    Ok(Some(call.add_relay(&grant.server).await?))
}

/// Applies the other side's Update Push to the running media; returns how many new candidates
/// it brought.
pub fn apply_update(call: &mut MediaCall, push: &Dict) -> anyhow::Result<usize> {
    Ok(match PeerMedia::from_bytes(&push.data("peer-blob")?)? {
        PeerMedia::Endpoint(blob) => call.apply_remote_blob(&blob)?,
        PeerMedia::Sdp(sdp) => call.apply_remote_sdp(&sdp)?,
    })
}

pub fn media_kinds(push: &Dict) -> anyhow::Result<Vec<MediaKind>> {
    let kinds = push
        .opt_string_array("media")?
        .unwrap_or_else(|| vec!["audio".to_string()]);
    Ok(kinds.iter().map(|k| k.parse()).collect::<Result<_, _>>()?)
}
