//! The frames of the HTTP relay (`/v1/media-relay`, docs/protocol.md "HTTP relay"), which
//! carries an endpoint's datagrams over HTTPS: the provider's relay and the endpoint both encode
//! and decode them here. All integers are big-endian.
//!
//! * `ADDR` = family (1 byte, `4` or `6`) ++ IP (4 or 16 bytes) ++ port (2 bytes). An
//!   IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is an IPv4 address: it is written with family
//!   `4`, and read as IPv4 when a peer sends it with family `6`.
//! * `FRAME` = `0x01` ALLOCATED ++ `ADDR` (the allocation's public address), or `0x02` DATA ++
//!   `ADDR` ++ payload (the rest, at most [`MAX_PAYLOAD`] bytes).
//! * A long-poll body is frames each prefixed by its length (`u16`, never zero).

use std::net::{IpAddr, SocketAddr};

/// Frame type: the allocation's public address (server → endpoint).
pub const ALLOCATED: u8 = 0x01;
/// Frame type: a datagram to or from a peer.
pub const DATA: u8 = 0x02;
/// The longest DATA payload: the largest UDP payload (a 65,535-byte datagram less its 8-byte
/// header), since the relay sends each payload as one datagram.
pub const MAX_PAYLOAD: usize = 65_535 - 8;
/// The longest `wait` of a long-poll `recv`, in milliseconds; a longer one is taken as this.
pub const MAX_RECV_WAIT_MS: u64 = 25_000;

const V4_ADDR_LEN: usize = 1 + 4 + 2;
const V6_ADDR_LEN: usize = 1 + 16 + 2;

/// Why bytes are not a frame or a long-poll body, or a frame cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the frame is empty")]
    Empty,
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("a frame of type {0:#04x} where DATA was expected")]
    NotData(u8),
    #[error("unknown address family {0} (expected 4 or 6)")]
    UnknownFamily(u8),
    /// `needed` is the length of the whole `ADDR` (of the shorter, IPv4, one when even the family
    /// byte is missing).
    #[error("the address is truncated: {available} bytes where it needs {needed}")]
    TruncatedAddress { needed: usize, available: usize },
    #[error("{0} bytes after the address of an ALLOCATED frame")]
    TrailingBytes(usize),
    #[error("a {0}-byte payload is longer than the largest datagram ({MAX_PAYLOAD} bytes)")]
    PayloadTooLong(usize),
    #[error("a length prefix is cut short")]
    TruncatedLength,
    #[error("a length prefix of zero")]
    ZeroLength,
    #[error(
        "a length prefix of {declared} runs past the end of the body ({available} bytes left)"
    )]
    LengthOverrun { declared: usize, available: usize },
    #[error("a {0}-byte frame is longer than a length prefix can say (65535 bytes)")]
    FrameTooLong(usize),
}

/// A datagram: from the endpoint, its payload is to be sent to its peer; to the endpoint, it
/// arrived from its peer. Its payload is never longer than [`MAX_PAYLOAD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    peer: SocketAddr,
    payload: &'a [u8],
}

/// One frame of the HTTP relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The allocation's public address.
    Allocated(SocketAddr),
    Data(Datagram<'a>),
}

impl<'a> Frame<'a> {
    /// Decodes one whole frame (a WebSocket message, or one frame of a long-poll body).
    pub fn decode(frame: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let (&frame_type, rest) = frame.split_first().ok_or(FrameError::Empty)?;
        match frame_type {
            ALLOCATED => {
                let (addr, rest) = decode_addr(rest)?;
                if !rest.is_empty() {
                    return Err(FrameError::TrailingBytes(rest.len()));
                }
                Ok(Frame::Allocated(addr))
            }
            DATA => {
                let (peer, payload) = decode_addr(rest)?;
                Datagram::new(peer, payload).map(Frame::Data)
            }
            other => Err(FrameError::UnknownType(other)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Frame::Allocated(addr) => {
                let mut frame = Vec::with_capacity(1 + V6_ADDR_LEN);
                frame.push(ALLOCATED);
                encode_addr(&mut frame, *addr);
                frame
            }
            Frame::Data(datagram) => datagram.encode(),
        }
    }
}

impl<'a> Datagram<'a> {
    /// A datagram for `peer`, unless `payload` is longer than [`MAX_PAYLOAD`].
    pub fn new(peer: SocketAddr, payload: &'a [u8]) -> Result<Datagram<'a>, FrameError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(FrameError::PayloadTooLong(payload.len()));
        }
        Ok(Datagram { peer, payload })
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Decodes a frame that must be DATA: what an endpoint sends, and what follows ALLOCATED.
    pub fn decode(frame: &'a [u8]) -> Result<Datagram<'a>, FrameError> {
        match Frame::decode(frame)? {
            Frame::Data(datagram) => Ok(datagram),
            Frame::Allocated(_) => Err(FrameError::NotData(ALLOCATED)),
        }
    }

    /// Encodes the datagram as a DATA frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(1 + V6_ADDR_LEN + self.payload.len());
        frame.push(DATA);
        encode_addr(&mut frame, self.peer);
        frame.extend_from_slice(self.payload);
        frame
    }
}

fn encode_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip().to_canonical() {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Decodes the `ADDR` at the start of `bytes`; returns it and the bytes after it.
fn decode_addr(bytes: &[u8]) -> Result<(SocketAddr, &[u8]), FrameError> {
    let truncated = |needed| FrameError::TruncatedAddress {
        needed,
        available: bytes.len(),
    };
    let (&family, after) = bytes.split_first().ok_or_else(|| truncated(V4_ADDR_LEN))?;
    let (ip, port, rest) = match family {
        4 => split_ip_port::<4>(after)
            .map(|(ip, port, rest)| (IpAddr::from(ip), port, rest))
            .ok_or_else(|| truncated(V4_ADDR_LEN))?,
        6 => split_ip_port::<16>(after)
            .map(|(ip, port, rest)| (IpAddr::from(ip).to_canonical(), port, rest))
            .ok_or_else(|| truncated(V6_ADDR_LEN))?,
        other => return Err(FrameError::UnknownFamily(other)),
    };
    Ok((SocketAddr::new(ip, port), rest))
}

/// An `N`-byte IP and a port, and the bytes after them.
fn split_ip_port<const N: usize>(bytes: &[u8]) -> Option<([u8; N], u16, &[u8])> {
    let (ip, rest) = bytes.split_first_chunk::<N>()?;
    let (port, rest) = rest.split_first_chunk::<2>()?;
    Some((*ip, u16::from_be_bytes(*port), rest))
}

/// Appends `frame` to a long-poll body, after its length.
pub fn append_length_prefixed(body: &mut Vec<u8>, frame: &[u8]) -> Result<(), FrameError> {
    let len = u16::try_from(frame.len()).map_err(|_| FrameError::FrameTooLong(frame.len()))?;
    if len == 0 {
        return Err(FrameError::ZeroLength);
    }
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(frame);
    Ok(())
}

/// The frames of a long-poll body, in order (not yet decoded). The first fault in the framing
/// is yielded as an error and ends the iteration, since nothing after it can be found.
pub fn split_length_prefixed(body: &[u8]) -> LengthPrefixed<'_> {
    LengthPrefixed { rest: Some(body) }
}

/// The iterator of [`split_length_prefixed`].
#[derive(Debug, Clone)]
pub struct LengthPrefixed<'a> {
    /// `None` once a fault has been yielded.
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for LengthPrefixed<'a> {
    type Item = Result<&'a [u8], FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        let body = self.rest.take().filter(|body| !body.is_empty())?;
        let Some((len, after)) = body.split_first_chunk::<2>() else {
            return Some(Err(FrameError::TruncatedLength));
        };
        let declared = usize::from(u16::from_be_bytes(*len));
        if declared == 0 {
            return Some(Err(FrameError::ZeroLength));
        }
        let Some((frame, rest)) = after.split_at_checked(declared) else {
            return Some(Err(FrameError::LengthOverrun {
                declared,
                available: after.len(),
            }));
        };
        self.rest = Some(rest);
        Some(Ok(frame))
    }
}

impl std::iter::FusedIterator for LengthPrefixed<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn datagram(peer: SocketAddr, payload: &[u8]) -> Datagram<'_> {
        Datagram::new(peer, payload).unwrap()
    }

    fn data(peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
        datagram(peer, payload).encode()
    }

    #[test]
    fn frames_are_written_as_the_protocol_says() {
        let v4 = addr("192.0.2.7:4242");
        assert_eq!(
            data(v4, b"hi"),
            [DATA, 4, 192, 0, 2, 7, 0x10, 0x92, b'h', b'i']
        );
        assert_eq!(
            Frame::Allocated(v4).encode(),
            [ALLOCATED, 4, 192, 0, 2, 7, 0x10, 0x92]
        );
        let v6 = addr("[2001:db8::1]:9");
        let mut expected = vec![DATA, 6, 0x20, 0x01, 0x0d, 0xb8];
        expected.extend_from_slice(&[0; 11]);
        expected.extend_from_slice(&[1, 0, 9]);
        assert_eq!(data(v6, b""), expected);
    }

    #[test]
    fn frames_round_trip() {
        let addrs = [
            "192.0.2.7:4242",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[2001:db8::1]:9",
            "[::]:0",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        ];
        let max = vec![0xa5; MAX_PAYLOAD];
        for peer in addrs.map(addr) {
            for payload in [&b""[..], b"payload", &max] {
                let datagram = datagram(peer, payload);
                let frame = datagram.encode();
                assert_eq!(Frame::Data(datagram).encode(), frame);
                assert_eq!(Frame::decode(&frame), Ok(Frame::Data(datagram)));
                assert_eq!(Datagram::decode(&frame), Ok(datagram));
                assert_eq!((datagram.peer(), datagram.payload()), (peer, payload));
            }
            let allocated = Frame::Allocated(peer).encode();
            assert_eq!(Frame::decode(&allocated), Ok(Frame::Allocated(peer)));
        }
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let v4 = addr("192.0.2.7:4242");
        let mapped = addr("[::ffff:192.0.2.7]:4242");
        assert_eq!(data(mapped, b"hi"), data(v4, b"hi"));
        assert_eq!(
            Frame::Allocated(mapped).encode(),
            Frame::Allocated(v4).encode()
        );
        // A peer that writes one as family 6 still names the IPv4 address.
        let mut as_v6 = vec![DATA, 6];
        as_v6.extend_from_slice(&[0; 10]);
        as_v6.extend_from_slice(&[0xff, 0xff, 192, 0, 2, 7, 0x10, 0x92, b'h', b'i']);
        assert_eq!(Datagram::decode(&as_v6), Ok(datagram(v4, b"hi")));
    }

    #[test]
    fn malformed_frames_say_what_is_wrong() {
        let v4 = addr("192.0.2.7:4242");
        let cases: &[(&[u8], FrameError)] = &[
            (&[], FrameError::Empty),
            (&[0x03, 4, 1, 2, 3, 4, 0, 1], FrameError::UnknownType(0x03)),
            (&[0x00], FrameError::UnknownType(0x00)),
            (
                &[DATA],
                FrameError::TruncatedAddress {
                    needed: 7,
                    available: 0,
                },
            ),
            (
                &[DATA, 4, 1, 2, 3],
                FrameError::TruncatedAddress {
                    needed: 7,
                    available: 4,
                },
            ),
            (
                &[DATA, 4, 1, 2, 3, 4, 0],
                FrameError::TruncatedAddress {
                    needed: 7,
                    available: 6,
                },
            ),
            (
                &[
                    ALLOCATED, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0,
                ],
                FrameError::TruncatedAddress {
                    needed: 19,
                    available: 18,
                },
            ),
            (&[DATA, 5, 1, 2, 3, 4, 0, 1], FrameError::UnknownFamily(5)),
            (&[ALLOCATED, 0], FrameError::UnknownFamily(0)),
            (
                &[ALLOCATED, 4, 1, 2, 3, 4, 0, 1, 9, 9],
                FrameError::TrailingBytes(2),
            ),
        ];
        for (frame, error) in cases {
            assert_eq!(Frame::decode(frame).as_ref(), Err(error), "{frame:?}");
            assert_eq!(Datagram::decode(frame).as_ref(), Err(error), "{frame:?}");
        }
        let allocated = Frame::Allocated(v4).encode();
        assert_eq!(
            Datagram::decode(&allocated),
            Err(FrameError::NotData(ALLOCATED))
        );
    }

    #[test]
    fn oversize_payloads_are_refused() {
        // The largest UDP payload: 65,535 bytes of datagram less the 8-byte UDP header.
        assert_eq!(MAX_PAYLOAD, 65_527);
        let peer = addr("[2001:db8::1]:9");
        let too_long = vec![0; MAX_PAYLOAD + 1];
        let error = FrameError::PayloadTooLong(MAX_PAYLOAD + 1);
        assert_eq!(Datagram::new(peer, &too_long), Err(error.clone()));
        let mut frame = data(peer, b"");
        frame.extend_from_slice(&too_long);
        assert_eq!(Frame::decode(&frame), Err(error));
    }

    #[test]
    fn truncating_a_frame_never_panics() {
        let frames = [
            data(addr("192.0.2.7:4242"), b"hi"),
            data(addr("[2001:db8::1]:9"), b"hi"),
            Frame::Allocated(addr("[2001:db8::1]:9")).encode(),
        ];
        for frame in &frames {
            for len in 0..frame.len() {
                let _ = Frame::decode(&frame[..len]);
            }
        }
        for first in 0..=u8::MAX {
            for second in 0..=u8::MAX {
                let _ = Frame::decode(&[first, second, 1, 2, 3]);
            }
        }
    }

    fn split(body: &[u8]) -> Vec<Result<&[u8], FrameError>> {
        split_length_prefixed(body).collect()
    }

    #[test]
    fn length_prefixed_bodies_round_trip() {
        let a = [DATA, 4, 1, 2, 3, 4, 0, 1, 9];
        let longest = vec![7; usize::from(u16::MAX)];
        let mut body = Vec::new();
        for frame in [&a[..], &a[..3], &longest] {
            append_length_prefixed(&mut body, frame).unwrap();
        }
        assert_eq!(&body[..2], &[0, 9]);
        assert_eq!(&body[11..13], &[0, 3]);
        assert_eq!(&body[16..18], &[0xff, 0xff]);
        assert_eq!(split(&body), [Ok(&a[..]), Ok(&a[..3]), Ok(&longest[..])]);
        assert_eq!(split(&[]), []);
    }

    #[test]
    fn malformed_length_prefixes_end_the_body() {
        assert_eq!(split(&[0]), [Err(FrameError::TruncatedLength)]);
        assert_eq!(split(&[0, 0, 9]), [Err(FrameError::ZeroLength)]);
        assert_eq!(
            split(&[0, 1, 9, 0, 5, 1, 2]),
            [
                Ok(&[9][..]),
                Err(FrameError::LengthOverrun {
                    declared: 5,
                    available: 2
                })
            ]
        );
        assert_eq!(
            split(&[0, 1, 9, 0]),
            [Ok(&[9][..]), Err(FrameError::TruncatedLength)]
        );
        let mut body = Vec::new();
        assert_eq!(
            append_length_prefixed(&mut body, &[]),
            Err(FrameError::ZeroLength)
        );
        let too_long = vec![0; usize::from(u16::MAX) + 1];
        assert_eq!(
            append_length_prefixed(&mut body, &too_long),
            Err(FrameError::FrameTooLong(too_long.len()))
        );
        assert!(body.is_empty());
    }
}
