//! Media anchored at the edge, for phones that do not run ICE and so cannot find a way through
//! NATs themselves.
//!
//! An anchored call leg gets one UDP socket per stream (two when RTP and RTCP are not
//! multiplexed) on the provider's media address. The SDP the phone sends on, and the SDP it is
//! shown, both name these sockets. What arrives from the other side's address (from its SDP,
//! usually the other provider's anchor) goes to the phone; what arrives from the phone's IP
//! address goes to the other side, and the phone's port is learned from it (symmetric RTP,
//! RFC 4961), so a phone behind a NAT is reached at its public mapping. The packets are
//! forwarded as they are: SRTP (SDES or DTLS-SRTP) stays encrypted end to end. Anything else is
//! dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::sdp;

/// Where a socket's packets go: the phone (learned from what it sends) and the other side.
#[derive(Default)]
struct Peers {
    phone: Option<SocketAddr>,
    /// The phone's address as its SDP gave it (see [`Anchor::set_phone`]).
    phone_sdp: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    /// The IP addresses the phone may send from (its SIP flows').
    phone_ips: Vec<IpAddr>,
}

struct Socket {
    advertised: SocketAddr,
    peers: Arc<Mutex<Peers>>,
    task: JoinHandle<()>,
}

/// The anchored sockets of one stream.
struct Stream {
    rtp: Socket,
    rtcp: Option<Socket>,
}

/// A call leg's anchored streams; dropping it closes them.
pub struct Anchor {
    streams: Vec<Stream>,
}

impl Drop for Anchor {
    fn drop(&mut self) {
        for stream in &self.streams {
            stream.rtp.task.abort();
            if let Some(rtcp) = &stream.rtcp {
                rtcp.task.abort();
            }
        }
    }
}

/// Binds an RTP socket, and when `pair` the RTCP one on the next port (where a phone without
/// `a=rtcp` sends it).
async fn bind_pair(bind: IpAddr, pair: bool) -> std::io::Result<(UdpSocket, Option<UdpSocket>)> {
    let mut last_error = None;
    for _ in 0..16 {
        let rtp = UdpSocket::bind(SocketAddr::new(bind, 0)).await?;
        if !pair {
            return Ok((rtp, None));
        }
        let port = rtp.local_addr()?.port();
        if port == u16::MAX {
            continue;
        }
        match UdpSocket::bind(SocketAddr::new(bind, port + 1)).await {
            Ok(rtcp) => return Ok((rtp, Some(rtcp))),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free port pair")))
}

fn spawn_socket(
    socket: UdpSocket,
    advertise: IpAddr,
    phone_ips: &[IpAddr],
) -> std::io::Result<Socket> {
    let advertised = SocketAddr::new(advertise, socket.local_addr()?.port());
    let peers = Arc::new(Mutex::new(Peers {
        phone_ips: phone_ips.to_vec(),
        ..Peers::default()
    }));
    let task = tokio::spawn(forward(socket, peers.clone()));
    Ok(Socket {
        advertised,
        peers,
        task,
    })
}

async fn forward(socket: UdpSocket, peers: Arc<Mutex<Peers>>) {
    // The buffer comes with the first packet: an anchor whose call carries no media yet (a
    // ringing call, a rejected one) holds none.
    let mut buf = Vec::new();
    loop {
        if socket.readable().await.is_err() {
            continue;
        }
        if buf.is_empty() {
            buf = vec![0u8; 2048];
        }
        let Ok((n, source)) = socket.try_recv_from(&mut buf) else {
            continue;
        };
        let destination = {
            let mut peers = peers.lock().expect("anchor peers");
            if Some(source) == peers.remote {
                peers.phone
            } else if peers.phone_ips.contains(&source.ip()) {
                peers.phone = Some(source);
                peers.remote
            } else {
                None
            }
        };
        if let Some(destination) = destination {
            if socket.send_to(&buf[..n], destination).await.is_ok() {
                metrics::counter!("switchyard_sip_anchored_packets_total").increment(1);
            }
        }
    }
}

impl Anchor {
    /// Opens sockets on `bind` (named `advertise` in SDP) for each stream of `offer` that is not
    /// disabled, accepting the phone's packets from `phone_ips`.
    pub async fn open(
        bind: IpAddr,
        advertise: IpAddr,
        phone_ips: &[IpAddr],
        offer: &str,
    ) -> std::io::Result<Anchor> {
        let mut streams = Vec::new();
        for stream in sdp::streams(offer) {
            if stream.port == 0 {
                continue;
            }
            let (rtp, rtcp) = bind_pair(bind, !stream.rtcp_mux).await?;
            streams.push(Stream {
                rtp: spawn_socket(rtp, advertise, phone_ips)?,
                rtcp: rtcp
                    .map(|s| spawn_socket(s, advertise, phone_ips))
                    .transpose()?,
            });
        }
        Ok(Anchor { streams })
    }

    /// The addresses the enabled streams are anchored at, in order.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.streams.iter().map(|s| s.rtp.advertised).collect()
    }

    /// `sdp` with its enabled streams moved to the anchor's sockets.
    pub fn rewrite(&self, sdp: &str) -> String {
        sdp::moved_to(sdp, &self.addresses())
    }

    /// Each of our sockets with the address `sdp` names for it: stream by stream, RTCP on the
    /// next port unless multiplexed.
    fn addresses_in<'a>(&'a self, sdp: &str) -> Vec<(&'a Socket, SocketAddr)> {
        let enabled = sdp::streams(sdp).into_iter().filter(|s| s.port != 0);
        let mut pairs = Vec::new();
        for (stream, theirs) in self.streams.iter().zip(enabled) {
            let Some(ip) = theirs.address else {
                continue;
            };
            pairs.push((&stream.rtp, SocketAddr::new(ip, theirs.port)));
            if let Some(rtcp) = &stream.rtcp {
                let port = if theirs.rtcp_mux {
                    theirs.port
                } else {
                    theirs.port.saturating_add(1)
                };
                pairs.push((rtcp, SocketAddr::new(ip, port)));
            }
        }
        pairs
    }

    /// Takes the other side's addresses from its SDP.
    pub fn set_remote(&self, remote_sdp: &str) {
        for (socket, address) in self.addresses_in(remote_sdp) {
            set_remote(socket, address);
        }
    }

    /// Where to reach the phone before it has sent anything: the addresses of its SDP, when they
    /// are on one of its IP addresses (never elsewhere: an SDP must not aim the other side's media
    /// at a third party). A DTLS server phone sends nothing until the other side's ClientHello
    /// reaches it. What it sends later still moves the latch.
    pub fn set_phone(&self, phone_sdp: &str) {
        for (socket, address) in self.addresses_in(phone_sdp) {
            let mut peers = socket.peers.lock().expect("anchor peers");
            if peers.phone_ips.contains(&address.ip()) {
                peers.phone_sdp = Some(address);
                peers.phone.get_or_insert(address);
            }
        }
    }

    /// Accepts the phone's packets from `ips` only (once it is known which phone answered).
    pub fn restrict_phone(&self, ips: &[IpAddr]) {
        for stream in &self.streams {
            for socket in std::iter::once(&stream.rtp).chain(stream.rtcp.as_ref()) {
                socket.peers.lock().expect("anchor peers").phone_ips = ips.to_vec();
            }
        }
    }
}

fn set_remote(socket: &Socket, remote: SocketAddr) {
    let mut peers = socket.peers.lock().expect("anchor peers");
    // The other side may have sent before its address was known here, and been taken for the
    // phone (both can be on one host): learn the phone again.
    if peers.phone == Some(remote) {
        peers.phone = peers.phone_sdp.filter(|a| *a != remote);
    }
    peers.remote = Some(remote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
        m=audio 4000 RTP/AVP 0\r\na=rtcp-mux\r\n";

    async fn receive(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 64];
        let (n, from) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
            .await
            .expect("a packet")
            .unwrap();
        (buf[..n].to_vec(), from)
    }

    #[tokio::test]
    async fn packets_go_between_the_latched_phone_and_the_other_side_and_nothing_else() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let anchor = Anchor::open(loopback, loopback, &[loopback], OFFER)
            .await
            .unwrap();
        let [at] = anchor.addresses()[..] else {
            panic!("one stream")
        };
        let rewritten = anchor.rewrite(OFFER);
        assert!(
            rewritten.contains(&format!("m=audio {} RTP/AVP 0", at.port())),
            "{rewritten}"
        );
        assert!(rewritten.contains("c=IN IP4 127.0.0.1"), "{rewritten}");

        let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let remote = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let remote_sdp = format!(
            "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {} RTP/AVP 0\r\na=rtcp-mux\r\n",
            remote.local_addr().unwrap().port()
        );
        // The other side sends before its address is known: taken for the phone at first.
        remote.send_to(b"early", at).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        anchor.set_remote(&remote_sdp);

        phone.send_to(b"from the phone", at).await.unwrap();
        let (bytes, from) = receive(&remote).await;
        assert_eq!(bytes, b"from the phone");
        assert_eq!(from, at);
        remote.send_to(b"to the phone", at).await.unwrap();
        assert_eq!(receive(&phone).await.0, b"to the phone");

        // Once only another address may be the phone, the first phone is nobody.
        anchor.restrict_phone(&["192.0.2.99".parse().unwrap()]);
        phone.send_to(b"dropped", at).await.unwrap();
        remote
            .send_to(b"still to the latched phone", at)
            .await
            .unwrap();
        assert_eq!(receive(&phone).await.0, b"still to the latched phone");
        let mut buf = [0u8; 64];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), remote.recv_from(&mut buf))
                .await
                .is_err(),
            "a packet from an address that is neither side is dropped"
        );
    }

    #[tokio::test]
    async fn without_rtcp_mux_rtcp_gets_the_next_port() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let offer = OFFER.replace("a=rtcp-mux\r\n", "");
        let anchor = Anchor::open(loopback, loopback, &[loopback], &offer)
            .await
            .unwrap();
        let rtp = anchor.addresses()[0];
        let rtcp = anchor.streams[0].rtcp.as_ref().expect("an RTCP socket");
        assert_eq!(rtcp.advertised.port(), rtp.port() + 1);
    }

    fn sdp_at(port: u16, ip: &str) -> String {
        format!(
            "v=0\r\no=- 3 3 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0\r\na=rtcp-mux\r\n"
        )
    }

    #[tokio::test]
    async fn a_silent_phone_is_reached_at_its_sdp_address_on_its_own_ips_only() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let remote = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let phone_sdp = sdp_at(phone.local_addr().unwrap().port(), "127.0.0.1");
        let remote_sdp = sdp_at(remote.local_addr().unwrap().port(), "127.0.0.1");

        // An SDP naming another host than the phone's is not followed.
        let anchor = Anchor::open(loopback, loopback, &[loopback], OFFER)
            .await
            .unwrap();
        let at = anchor.addresses()[0];
        anchor.set_remote(&remote_sdp);
        anchor.set_phone(&sdp_at(4000, "192.0.2.1"));
        remote.send_to(b"nowhere", at).await.unwrap();
        let mut buf = [0u8; 64];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), phone.recv_from(&mut buf))
                .await
                .is_err()
        );

        // A DTLS server phone waits for the ClientHello: it gets it at its SDP address, even when
        // the first one came before the other side's address was known (and, from an IP of the
        // phone's, was taken for the phone).
        let anchor = Anchor::open(loopback, loopback, &[loopback], OFFER)
            .await
            .unwrap();
        let at = anchor.addresses()[0];
        anchor.set_phone(&phone_sdp);
        remote.send_to(b"early ClientHello", at).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        anchor.set_remote(&remote_sdp);
        remote.send_to(b"ClientHello", at).await.unwrap();
        assert_eq!(receive(&phone).await.0, b"ClientHello");
        phone.send_to(b"ServerHello", at).await.unwrap();
        assert_eq!(receive(&remote).await.0, b"ServerHello");
    }
}
