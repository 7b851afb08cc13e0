//! Demultiplexing of the one UDP socket an endpoint uses for STUN, DTLS, RTP and RTCP.
//!
//! RFC 7983 §7 tells the protocols apart by the first byte of the datagram; RFC 5761 §4
//! then tells RTCP from RTP by the second byte, because RTCP packet types 192..=223 never
//! collide with the RTP payload types (0..=63 and 96..=127) a session may use.

/// What a received datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    /// Empty, truncated, or in a range nothing of ours uses (ZRTP, TURN channels, QUIC).
    Unknown,
}

/// Classifies a datagram by its first bytes; the packet itself is not validated.
pub fn classify(packet: &[u8]) -> PacketKind {
    match packet {
        [0..=3, ..] => PacketKind::Stun,
        [20..=63, ..] => PacketKind::Dtls,
        // The second byte is the marker bit plus the payload type (RTP) or the packet
        // type (RTCP); without it the two cannot be told apart.
        [128..=191, second, ..] => match second & 0x7f {
            64..=95 => PacketKind::Rtcp,
            _ => PacketKind::Rtp,
        },
        _ => PacketKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_binding_request() {
        // RFC 5769 §2.1 sample request, first 20 bytes (the header).
        let packet = [
            0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34,
            0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        assert_eq!(classify(&packet), PacketKind::Stun);
        // A Binding success response starts with 0x01.
        assert_eq!(classify(&[0x01, 0x01, 0x00, 0x0c]), PacketKind::Stun);
    }

    #[test]
    fn dtls_records() {
        // ClientHello handshake record, DTLS 1.2.
        assert_eq!(classify(&[22, 0xfe, 0xfd, 0, 0]), PacketKind::Dtls);
        // ChangeCipherSpec, alert and application data records.
        assert_eq!(classify(&[20, 0xfe, 0xfd]), PacketKind::Dtls);
        assert_eq!(classify(&[21, 0xfe, 0xfd]), PacketKind::Dtls);
        assert_eq!(classify(&[23, 0xfe, 0xfd]), PacketKind::Dtls);
        // DTLS 1.3 unified header (0b001xxxxx).
        assert_eq!(classify(&[0x2f, 0x00]), PacketKind::Dtls);
    }

    #[test]
    fn rtp_packets() {
        // V=2, PT=111 (Opus), marker clear; and PT=96 with the marker bit set.
        assert_eq!(classify(&[0x80, 111, 0x12, 0x34]), PacketKind::Rtp);
        assert_eq!(classify(&[0x80, 0x80 | 96, 0, 1]), PacketKind::Rtp);
        // PT=0 (PCMU), with CSRC count and extension bit.
        assert_eq!(classify(&[0x91, 0, 0, 1]), PacketKind::Rtp);
        // PT=127 with the marker bit set: byte 255, still RTP.
        assert_eq!(classify(&[0x80, 0xff]), PacketKind::Rtp);
    }

    #[test]
    fn rtcp_packets() {
        // Sender report (200), receiver report (201), SDES (202), BYE (203), RTPFB (205),
        // PSFB (206); the first byte carries the report count.
        for pt in [200u8, 201, 202, 203, 205, 206] {
            assert_eq!(classify(&[0x81, pt, 0, 7]), PacketKind::Rtcp, "type {pt}");
        }
        // The edges of the RFC 5761 range.
        assert_eq!(classify(&[0x80, 192]), PacketKind::Rtcp);
        assert_eq!(classify(&[0x80, 223]), PacketKind::Rtcp);
        assert_eq!(classify(&[0x80, 224]), PacketKind::Rtp);
        assert_eq!(classify(&[0x80, 191]), PacketKind::Rtp);
    }

    #[test]
    fn unknown_packets() {
        assert_eq!(classify(&[]), PacketKind::Unknown);
        // ZRTP (16..=19), TURN ChannelData (64..=79), QUIC (and anything else up top).
        assert_eq!(classify(&[16, 0]), PacketKind::Unknown);
        assert_eq!(classify(&[0x40, 0x00, 0x00, 0x04]), PacketKind::Unknown);
        assert_eq!(classify(&[0xc0, 0x00]), PacketKind::Unknown);
        assert_eq!(classify(&[4]), PacketKind::Unknown);
        // An RTP-range first byte alone cannot say RTP or RTCP.
        assert_eq!(classify(&[0x80]), PacketKind::Unknown);
    }
}
