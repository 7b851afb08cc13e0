//! Synthetic RTP media with real timing and sizes, receive statistics and RTCP reports.
//!
//! Sources are sans-I/O: the caller asks [`AudioSource::next_deadline`] when to wake up and calls
//! `poll(now)` until it returns `None`. Payloads are not real codec data but a recognizable
//! pseudo-random pattern ([`synthetic_payload`]) so tests can prove it never crosses the wire in
//! clear.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rtcp::receiver_report::ReceiverReport;
use rtcp::reception_report::ReceptionReport;
use rtcp::sender_report::SenderReport;
use rtcp::source_description::{
    SdesType, SourceDescription, SourceDescriptionChunk, SourceDescriptionItem,
};
use rtp::header::Header;
use rtp::packet::Packet;
use webrtc_util::Marshal;

/// First bytes of every synthetic payload.
pub const PAYLOAD_MAGIC: &[u8; 8] = b"SYNTHMED";
/// Largest RTP payload a video packet carries (fits a 1,280-byte path MTU after SRTP and DTLS).
pub const MAX_VIDEO_PAYLOAD: usize = 1200;
pub const AUDIO_PACKET_INTERVAL: Duration = Duration::from_millis(20);
pub const VIDEO_FPS: u32 = 15;
/// RTP timestamp step of one video frame at 90 kHz.
pub const VIDEO_TIMESTAMP_STEP: u32 = 90_000 / VIDEO_FPS;
/// A key frame every 2 s.
pub const KEY_FRAME_INTERVAL_FRAMES: u64 = 2 * VIDEO_FPS as u64;
pub const KEY_FRAME_SIZE: usize = 12_000;
pub const DELTA_FRAME_SIZES: std::ops::RangeInclusive<usize> = 2_000..=4_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("unknown audio codec `{0}`")]
    UnknownAudioCodec(String),
    #[error("header extension id {0} is outside 1..=14 (RFC 8285 one-byte form)")]
    BadExtensionId(u8),
    #[error("RTCP: {0}")]
    Rtcp(String),
}

/// xorshift64*: cheap, deterministic, good enough to look random on the wire.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // splitmix64 spreads nearby seeds apart; `| 1` because a zero state would stay zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        XorShift((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The payload the sources put in packet `index` of stream `ssrc`: [`PAYLOAD_MAGIC`] followed by
/// pseudo-random bytes derived from `(ssrc, index)`, truncated or filled to `len`.
pub fn synthetic_payload(ssrc: u32, index: u64, len: usize) -> Vec<u8> {
    let mut rng = XorShift::new(((ssrc as u64) << 32) ^ index);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&PAYLOAD_MAGIC[..len.min(PAYLOAD_MAGIC.len())]);
    while out.len() < len {
        let word = rng.next().to_be_bytes();
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&word[..take]);
    }
    out
}

/// Packets and payload octets sent on one SSRC (RFC 3550 §6.4.1 sender info).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    pub packets: u64,
    pub octets: u64,
}

impl SendStats {
    pub fn record(&mut self, packet: &Packet) {
        self.packets += 1;
        self.octets += packet.payload.len() as u64;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    Opus,
    Pcmu,
}

impl AudioCodec {
    pub fn from_name(name: &str) -> Result<Self, RtpError> {
        if name.eq_ignore_ascii_case("opus") {
            Ok(AudioCodec::Opus)
        } else if name.eq_ignore_ascii_case("PCMU") {
            Ok(AudioCodec::Pcmu)
        } else {
            Err(RtpError::UnknownAudioCodec(name.to_string()))
        }
    }

    pub fn clock_rate(self) -> u32 {
        match self {
            AudioCodec::Opus => 48_000,
            AudioCodec::Pcmu => 8_000,
        }
    }

    /// Bytes of one 20 ms frame: ~32 kbit/s opus, 64 kbit/s G.711.
    pub fn payload_len(self) -> usize {
        match self {
            AudioCodec::Opus => 80,
            AudioCodec::Pcmu => 160,
        }
    }

    /// RTP timestamp step of one 20 ms packet.
    pub fn timestamp_step(self) -> u32 {
        self.clock_rate() / 50
    }
}

/// Fields every synthetic stream keeps.
struct Stream {
    pt: u8,
    ssrc: u32,
    seq: u16,
    timestamp_base: u32,
    clock_rate: u32,
    start: Instant,
    index: u64,
    stats: SendStats,
}

impl Stream {
    fn new(pt: u8, ssrc: u32, clock_rate: u32, start: Instant) -> Self {
        // Random initial sequence number and timestamp (RFC 3550 §5.1).
        Stream {
            pt,
            ssrc,
            seq: rand::random(),
            timestamp_base: rand::random(),
            clock_rate,
            start,
            index: 0,
            stats: SendStats::default(),
        }
    }

    fn packet(&mut self, timestamp: u32, marker: bool, payload: Vec<u8>) -> Packet {
        let packet = Packet {
            header: Header {
                version: 2,
                marker,
                payload_type: self.pt,
                sequence_number: self.seq,
                timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: Bytes::from(payload),
        };
        self.seq = self.seq.wrapping_add(1);
        self.index += 1;
        self.stats.record(&packet);
        packet
    }

    fn rtp_time_at(&self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.start);
        let ticks = elapsed.as_nanos() * self.clock_rate as u128 / 1_000_000_000;
        self.timestamp_base.wrapping_add(ticks as u32)
    }
}

/// One RTP packet every 20 ms.
pub struct AudioSource {
    stream: Stream,
    codec: AudioCodec,
    packets_due: u64,
}

impl AudioSource {
    pub fn new(codec: AudioCodec, pt: u8, ssrc: u32, start: Instant) -> Self {
        AudioSource {
            stream: Stream::new(pt, ssrc, codec.clock_rate(), start),
            codec,
            packets_due: 0,
        }
    }

    /// When the next packet is due (already past when the caller is behind).
    pub fn next_deadline(&self) -> Instant {
        self.stream.start + AUDIO_PACKET_INTERVAL * self.packets_due as u32
    }

    /// The next due packet, if any. A late caller gets the backlog one packet per call, with the
    /// timestamps it would have had.
    pub fn poll(&mut self, now: Instant) -> Option<Packet> {
        if now < self.next_deadline() {
            return None;
        }
        let ts = self
            .stream
            .timestamp_base
            .wrapping_add((self.packets_due as u32).wrapping_mul(self.codec.timestamp_step()));
        self.packets_due += 1;
        let payload = synthetic_payload(
            self.stream.ssrc,
            self.stream.index,
            self.codec.payload_len(),
        );
        Some(self.stream.packet(ts, false, payload))
    }

    pub fn stats(&self) -> SendStats {
        self.stream.stats
    }

    pub fn ssrc(&self) -> u32 {
        self.stream.ssrc
    }

    /// RTP timestamp corresponding to `now`, for Sender Reports.
    pub fn rtp_time_at(&self, now: Instant) -> u32 {
        self.stream.rtp_time_at(now)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    Deg0,
    Deg90,
    Deg180,
    Deg270,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Camera {
    Front,
    Back,
}

/// Coordination of video orientation (3GPP TS 26.114 §7.4.5): the byte `0000 C F R1 R0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orientation {
    pub rotation: Rotation,
    pub camera: Camera,
}

impl Orientation {
    pub fn to_cvo(self) -> u8 {
        let r = match self.rotation {
            Rotation::Deg0 => 0,
            Rotation::Deg90 => 1,
            Rotation::Deg180 => 2,
            Rotation::Deg270 => 3,
        };
        let c = match self.camera {
            Camera::Front => 0,
            Camera::Back => 1 << 3,
        };
        c | r
    }

    /// Reads a CVO byte; the flip bit is not produced here and is ignored.
    pub fn from_cvo(byte: u8) -> Self {
        let rotation = match byte & 0b11 {
            0 => Rotation::Deg0,
            1 => Rotation::Deg90,
            2 => Rotation::Deg180,
            _ => Rotation::Deg270,
        };
        let camera = if byte & (1 << 3) != 0 {
            Camera::Back
        } else {
            Camera::Front
        };
        Orientation { rotation, camera }
    }
}

/// 15 fps video: a ~12 KB key frame every 2 s, 2–4 KB delta frames otherwise.
pub struct VideoSource {
    stream: Stream,
    orientation_ext_id: Option<u8>,
    orientation: Orientation,
    frames: u64,
    sizes: XorShift,
    /// Packets of the current frame not yet handed out.
    pending: std::collections::VecDeque<Packet>,
}

impl VideoSource {
    pub fn new(
        pt: u8,
        ssrc: u32,
        orientation_ext_id: Option<u8>,
        start: Instant,
    ) -> Result<Self, RtpError> {
        if let Some(id) = orientation_ext_id {
            if !(1..=14).contains(&id) {
                return Err(RtpError::BadExtensionId(id));
            }
        }
        Ok(VideoSource {
            stream: Stream::new(pt, ssrc, 90_000, start),
            orientation_ext_id,
            orientation: Orientation {
                rotation: Rotation::Deg0,
                camera: Camera::Front,
            },
            frames: 0,
            sizes: XorShift::new(ssrc as u64),
            pending: Default::default(),
        })
    }

    pub fn set_orientation(&mut self, rotation: Rotation, camera: Camera) {
        self.orientation = Orientation { rotation, camera };
    }

    fn frame_time(&self, frame: u64) -> Instant {
        // Computed from the frame index so 1/15 s rounding does not drift.
        self.stream.start + Duration::from_nanos(frame * 1_000_000_000 / VIDEO_FPS as u64)
    }

    /// When the next packet is due: now-ish while a frame is being sent out, else the next frame.
    pub fn next_deadline(&self) -> Instant {
        if self.pending.is_empty() {
            self.frame_time(self.frames)
        } else {
            self.frame_time(self.frames - 1)
        }
    }

    pub fn poll(&mut self, now: Instant) -> Option<Packet> {
        if self.pending.is_empty() && now >= self.frame_time(self.frames) {
            self.packetize_frame();
        }
        self.pending.pop_front()
    }

    /// A muted camera: the frames due by `now` are skipped, not sent, so no sequence number is
    /// used (the receiver counts no loss) while the RTP clock keeps running for the unmute.
    pub fn skip(&mut self, now: Instant) {
        self.pending.clear();
        while now >= self.frame_time(self.frames) {
            self.frames += 1;
        }
    }

    fn packetize_frame(&mut self) {
        let frame = self.frames;
        self.frames += 1;
        let size = if frame.is_multiple_of(KEY_FRAME_INTERVAL_FRAMES) {
            KEY_FRAME_SIZE
        } else {
            let span = (DELTA_FRAME_SIZES.end() - DELTA_FRAME_SIZES.start() + 1) as u64;
            DELTA_FRAME_SIZES.start() + (self.sizes.next() % span) as usize
        };
        let ts = self
            .stream
            .timestamp_base
            .wrapping_add((frame as u32).wrapping_mul(VIDEO_TIMESTAMP_STEP));
        let count = size.div_ceil(MAX_VIDEO_PAYLOAD);
        for i in 0..count {
            let len = (size - i * MAX_VIDEO_PAYLOAD).min(MAX_VIDEO_PAYLOAD);
            let last = i + 1 == count;
            let payload = synthetic_payload(self.stream.ssrc, self.stream.index, len);
            let mut packet = self.stream.packet(ts, last, payload);
            if let (true, Some(id)) = (last, self.orientation_ext_id) {
                // The id was range-checked in `new`, and one byte always fits.
                let cvo = Bytes::from(vec![self.orientation.to_cvo()]);
                // Cannot fail: the id was range-checked in `new` and one byte fits the one-byte
                // form. The extension is header, not payload, so octet counts are unaffected.
                let _ = packet.header.set_extension(id, cvo);
            }
            self.pending.push_back(packet);
        }
    }

    pub fn stats(&self) -> SendStats {
        self.stream.stats
    }

    pub fn ssrc(&self) -> u32 {
        self.stream.ssrc
    }

    pub fn rtp_time_at(&self, now: Instant) -> u32 {
        self.stream.rtp_time_at(now)
    }
}

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// 64-bit NTP timestamp (RFC 3550 §4) of a wall-clock time.
pub fn ntp_time(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() + NTP_UNIX_OFFSET;
    let frac = ((since.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The middle 32 bits of an NTP timestamp, the unit of LSR and of RTT arithmetic.
fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// A Sender Report for a stream (RFC 3550 §6.4.1).
pub fn sender_report(
    ssrc: u32,
    now_ntp: u64,
    rtp_time: u32,
    sent: SendStats,
    reports: Vec<ReceptionReport>,
) -> SenderReport {
    SenderReport {
        ssrc,
        ntp_time: now_ntp,
        rtp_time,
        // The counts wrap in 32 bits on the wire (RFC 3550 §6.4.1).
        packet_count: sent.packets as u32,
        octet_count: sent.octets as u32,
        reports,
        profile_extensions: Bytes::new(),
    }
}

pub fn receiver_report(ssrc: u32, reports: Vec<ReceptionReport>) -> ReceiverReport {
    ReceiverReport {
        ssrc,
        reports,
        profile_extensions: Bytes::new(),
    }
}

/// Round-trip time from a reception report about one of our streams, received when the local
/// wall clock read `arrival_ntp` (RFC 3550 §6.4.1: A - LSR - DLSR). `None` when the peer has not
/// yet received a Sender Report from us (LSR 0) or the result would be negative.
pub fn round_trip_time(report: &ReceptionReport, arrival_ntp: u64) -> Option<Duration> {
    if report.last_sender_report == 0 {
        return None;
    }
    let a = ntp_middle(arrival_ntp);
    let rtt = a
        .wrapping_sub(report.last_sender_report)
        .wrapping_sub(report.delay);
    // A wrapped (negative) value means clock trouble, not a 18-hour round trip.
    if rtt > u32::MAX / 2 {
        return None;
    }
    Some(Duration::from_nanos(rtt as u64 * 1_000_000_000 / 65_536))
}

/// The reports a compound RTCP packet can carry that this stack acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum RtcpReport {
    Sender(SenderReport),
    Receiver(ReceiverReport),
    /// SDES: the CNAME of each source (RFC 3550 §6.5.1); other SDES items are not kept.
    Cnames(Vec<SourceCname>),
}

/// One SSRC's canonical name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceCname {
    pub ssrc: u32,
    pub cname: String,
}

/// A short-term persistent CNAME (RFC 7022 §4.2): 16 random base64 characters (96 bits), new for
/// each session so calls cannot be linked through it.
pub fn random_cname() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..16)
        .map(|_| ALPHABET[rand::random::<u8>() as usize % 64] as char)
        .collect()
}

/// Serializes reports into one compound RTCP packet. RFC 3550 §6.1: it must begin with an SR or
/// RR, and it must carry an SDES with a CNAME: when `reports` has none, one is appended naming
/// every reporting SSRC `cname`.
pub fn marshal_compound(reports: &[RtcpReport], cname: &str) -> Result<Vec<u8>, RtpError> {
    if !matches!(
        reports.first(),
        Some(RtcpReport::Sender(_) | RtcpReport::Receiver(_))
    ) {
        return Err(RtpError::Rtcp(
            "a compound packet must begin with a Sender or Receiver Report".into(),
        ));
    }
    let mut all: Vec<RtcpReport> = reports.to_vec();
    if !reports.iter().any(|r| matches!(r, RtcpReport::Cnames(_))) {
        let mut named: Vec<SourceCname> = Vec::new();
        for r in reports {
            let ssrc = match r {
                RtcpReport::Sender(sr) => sr.ssrc,
                RtcpReport::Receiver(rr) => rr.ssrc,
                RtcpReport::Cnames(_) => continue,
            };
            if !named.iter().any(|c| c.ssrc == ssrc) {
                named.push(SourceCname {
                    ssrc,
                    cname: cname.to_string(),
                });
            }
        }
        all.push(RtcpReport::Cnames(named));
    }
    let mut out = Vec::new();
    for r in &all {
        let bytes = match r {
            RtcpReport::Sender(sr) => sr.marshal(),
            RtcpReport::Receiver(rr) => rr.marshal(),
            RtcpReport::Cnames(cnames) => SourceDescription {
                chunks: cnames
                    .iter()
                    .map(|c| SourceDescriptionChunk {
                        source: c.ssrc,
                        items: vec![SourceDescriptionItem {
                            sdes_type: SdesType::SdesCname,
                            text: Bytes::from(c.cname.clone().into_bytes()),
                        }],
                    })
                    .collect(),
            }
            .marshal(),
        }
        .map_err(|e| RtpError::Rtcp(e.to_string()))?;
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// Parses a compound RTCP packet, keeping Sender and Receiver Reports and the CNAMEs of SDES
/// packets; other packet types (BYE, feedback) and SDES items are valid but skipped. A compound
/// packet without SDES is accepted: the CNAME is informative here, not needed to play media.
pub fn parse_compound(bytes: &[u8]) -> Result<Vec<RtcpReport>, RtpError> {
    let mut buf = bytes;
    let packets = rtcp::packet::unmarshal(&mut buf).map_err(|e| RtpError::Rtcp(e.to_string()))?;
    Ok(packets
        .iter()
        .filter_map(|p| {
            let any = p.as_any();
            if let Some(sr) = any.downcast_ref::<SenderReport>() {
                Some(RtcpReport::Sender(sr.clone()))
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                Some(RtcpReport::Receiver(rr.clone()))
            } else {
                any.downcast_ref::<SourceDescription>()
                    .map(|sdes| RtcpReport::Cnames(cnames(sdes)))
            }
        })
        .collect())
}

fn cnames(sdes: &SourceDescription) -> Vec<SourceCname> {
    sdes.chunks
        .iter()
        .filter_map(|chunk| {
            let item = chunk
                .items
                .iter()
                .find(|i| i.sdes_type == SdesType::SdesCname)?;
            // RFC 3550 §6.5: SDES text is UTF-8; a chunk whose CNAME is not is ignored.
            let cname = std::str::from_utf8(&item.text).ok()?;
            Some(SourceCname {
                ssrc: chunk.source,
                cname: cname.to_string(),
            })
        })
        .collect()
}

const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;

/// Receive statistics of one remote SSRC (RFC 3550 A.1, A.3, A.8).
#[derive(Debug, Clone)]
pub struct ReceiveStats {
    ssrc: u32,
    clock_rate: u32,
    orientation_ext_id: Option<u8>,
    /// Set by the first packet.
    started: Option<Started>,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Interarrival jitter in RTP clock units, unscaled (RFC 3550 A.8 keeps it as J*16).
    jitter: f64,
    last_orientation: Option<Orientation>,
    /// Middle bits of the last Sender Report's NTP time, and when it arrived.
    last_sr: Option<(u32, Instant)>,
}

#[derive(Debug, Clone, Copy)]
struct Started {
    epoch: Instant,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    /// A.1: after a large jump, the sequence number that would confirm a restart.
    bad_seq: Option<u16>,
    last_transit: u32,
}

impl ReceiveStats {
    pub fn new(ssrc: u32, clock_rate: u32, orientation_ext_id: Option<u8>) -> Self {
        ReceiveStats {
            ssrc,
            clock_rate,
            orientation_ext_id,
            started: None,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            jitter: 0.0,
            last_orientation: None,
            last_sr: None,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Counts a packet of this SSRC that arrived at `arrival`; packets of other SSRCs are ignored.
    pub fn record(&mut self, packet: &Packet, arrival: Instant) {
        let h = &packet.header;
        if h.ssrc != self.ssrc {
            return;
        }
        if let Some(id) = self.orientation_ext_id {
            if let Some(&byte) = h.get_extension(id).as_deref().and_then(|b| b.first()) {
                self.last_orientation = Some(Orientation::from_cvo(byte));
            }
        }
        let clock = self.clock_rate as u128;
        let Some(s) = self.started.as_mut() else {
            self.started = Some(Started {
                epoch: arrival,
                base_seq: h.sequence_number as u32,
                max_seq: h.sequence_number,
                cycles: 0,
                bad_seq: None,
                last_transit: 0u32.wrapping_sub(h.timestamp),
            });
            self.received = 1;
            return;
        };
        let seq = h.sequence_number;
        let udelta = seq.wrapping_sub(s.max_seq);
        if udelta < MAX_DROPOUT {
            if seq < s.max_seq {
                s.cycles = s.cycles.wrapping_add(1 << 16);
            }
            s.max_seq = seq;
        } else if udelta <= u16::MAX - MAX_MISORDER {
            // A large jump: the sender probably restarted; believe it on the second packet.
            if s.bad_seq == Some(seq) {
                s.base_seq = seq as u32;
                s.max_seq = seq;
                s.cycles = 0;
                self.received = 0;
                self.expected_prior = 0;
                self.received_prior = 0;
            } else {
                s.bad_seq = Some(seq.wrapping_add(1));
                return;
            }
        }
        // Otherwise a duplicate or reordered packet: counted, but it does not move max_seq.
        self.received += 1;

        // Arrival time in RTP clock units, relative to the first packet (A.8).
        let elapsed = arrival.saturating_duration_since(s.epoch).as_nanos();
        let arrival_units = (elapsed * clock / 1_000_000_000) as u32;
        let transit = arrival_units.wrapping_sub(h.timestamp);
        let d = (transit.wrapping_sub(s.last_transit) as i32).unsigned_abs() as f64;
        s.last_transit = transit;
        self.jitter += (d - self.jitter) / 16.0;
    }

    fn extended_max(&self) -> u64 {
        self.started
            .map(|s| s.cycles as u64 + s.max_seq as u64)
            .unwrap_or(0)
    }

    pub fn packets_received(&self) -> u64 {
        self.received
    }

    pub fn packets_expected(&self) -> u64 {
        match self.started {
            Some(s) => self.extended_max() + 1 - s.base_seq as u64,
            None => 0,
        }
    }

    /// Cumulative loss; negative when duplicates outnumber losses (RFC 3550 A.3).
    pub fn packets_lost(&self) -> i64 {
        self.packets_expected() as i64 - self.received as i64
    }

    /// Highest extended sequence number received.
    pub fn highest_sequence(&self) -> u32 {
        self.extended_max() as u32
    }

    /// Interarrival jitter in RTP clock units.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    pub fn jitter_ms(&self) -> f64 {
        self.jitter * 1000.0 / self.clock_rate as f64
    }

    /// Orientation from the last packet that carried the video orientation extension.
    pub fn last_orientation(&self) -> Option<Orientation> {
        self.last_orientation
    }

    /// Notes a Sender Report from this SSRC, for LSR/DLSR in our next reception report.
    pub fn record_sender_report(&mut self, sr: &SenderReport, arrival: Instant) {
        if sr.ssrc == self.ssrc {
            self.last_sr = Some((ntp_middle(sr.ntp_time), arrival));
        }
    }

    /// A reception report block as of `now`; starts a new fraction-lost interval (A.3).
    pub fn reception_report(&mut self, now: Instant) -> ReceptionReport {
        let expected = self.packets_expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = (lost_interval << 8)
            .checked_div(expected_interval)
            .map_or(0, |f| f.min(255) as u8);
        // The wire field is a 24-bit signed value; clamp to it (A.3).
        let total_lost = self.packets_lost().clamp(-0x80_0000, 0x7F_FFFF) as i32 as u32 & 0xFF_FFFF;
        let (lsr, dlsr) = match self.last_sr {
            Some((lsr, at)) => {
                let delay = now.saturating_duration_since(at);
                let units = delay.as_nanos() * 65_536 / 1_000_000_000;
                (lsr, units.min(u32::MAX as u128) as u32)
            }
            None => (0, 0),
        };
        ReceptionReport {
            ssrc: self.ssrc,
            fraction_lost,
            total_lost,
            last_sequence_number: self.highest_sequence(),
            jitter: self.jitter as u32,
            last_sender_report: lsr,
            delay: dlsr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc_util::Unmarshal;

    fn packet(seq: u16, ts: u32) -> Packet {
        Packet {
            header: Header {
                version: 2,
                payload_type: 111,
                sequence_number: seq,
                timestamp: ts,
                ssrc: 7,
                ..Default::default()
            },
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn audio_timing_over_one_second_is_fifty_packets() {
        let t0 = Instant::now();
        let mut src = AudioSource::new(AudioCodec::Opus, 111, 42, t0);
        let mut got = Vec::new();
        let mut now = t0;
        // Step 1 ms at a time across [0, 1 s): packets at 0, 20, ..., 980 ms.
        while now < t0 + Duration::from_secs(1) {
            while let Some(p) = src.poll(now) {
                got.push((now - t0, p));
            }
            now += Duration::from_millis(1);
        }
        assert_eq!(got.len(), 50);
        assert_eq!(src.next_deadline(), t0 + Duration::from_secs(1));
        for (i, (at, p)) in got.iter().enumerate() {
            assert_eq!(*at, Duration::from_millis(20 * i as u64));
            assert_eq!(p.payload.len(), 80);
            assert_eq!(&p.payload[..8], PAYLOAD_MAGIC);
            assert_eq!(p.payload, synthetic_payload(42, i as u64, 80));
            if i > 0 {
                let prev = &got[i - 1].1.header;
                assert_eq!(p.header.timestamp.wrapping_sub(prev.timestamp), 960);
                assert_eq!(
                    p.header.sequence_number,
                    prev.sequence_number.wrapping_add(1)
                );
            }
        }
        assert_eq!(
            src.stats(),
            SendStats {
                packets: 50,
                octets: 4000
            }
        );

        // PCMU: 160 bytes, +160 at 8 kHz; a late caller gets the backlog.
        let mut pcmu = AudioSource::new(AudioCodec::from_name("pcmu").unwrap(), 0, 43, t0);
        let late: Vec<_> =
            std::iter::from_fn(|| pcmu.poll(t0 + Duration::from_millis(59))).collect();
        assert_eq!(late.len(), 3);
        assert!(late.iter().all(|p| p.payload.len() == 160));
        assert_eq!(
            late[2]
                .header
                .timestamp
                .wrapping_sub(late[0].header.timestamp),
            320
        );
        assert_ne!(synthetic_payload(43, 0, 160), synthetic_payload(43, 1, 160));
    }

    #[test]
    fn video_frames_split_with_marker_and_orientation_on_last_packet() {
        let t0 = Instant::now();
        let mut src = VideoSource::new(96, 99, Some(3), t0).unwrap();
        src.set_orientation(Rotation::Deg90, Camera::Back);
        let mut frames: Vec<Vec<Packet>> = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_millis(2050) {
            let mut frame = Vec::new();
            while let Some(p) = src.poll(now) {
                frame.push(p);
            }
            if !frame.is_empty() {
                frames.push(frame);
            }
            now += Duration::from_millis(5);
        }
        // Frames at 0, 66.7, ..., 2000 ms: 31 frames, two of them key frames.
        assert_eq!(frames.len(), 31);
        for (i, frame) in frames.iter().enumerate() {
            let size: usize = frame.iter().map(|p| p.payload.len()).sum();
            if i % 30 == 0 {
                assert_eq!(size, KEY_FRAME_SIZE);
                assert_eq!(frame.len(), 10);
            } else {
                assert!(DELTA_FRAME_SIZES.contains(&size), "frame {i}: {size}");
            }
            let ts = frame[0].header.timestamp;
            for (j, p) in frame.iter().enumerate() {
                let last = j + 1 == frame.len();
                assert!(p.payload.len() <= MAX_VIDEO_PAYLOAD);
                assert_eq!(p.header.timestamp, ts);
                assert_eq!(p.header.marker, last);
                assert_eq!(p.header.extension, last);
                if last {
                    assert_eq!(p.header.extension_profile, 0xBEDE);
                    assert_eq!(p.header.get_extension(3).unwrap().as_ref(), &[0b1001]);
                }
            }
            if i > 0 {
                let prev = frames[i - 1][0].header.timestamp;
                assert_eq!(ts.wrapping_sub(prev), 6000);
            }
        }
        let packets: u64 = frames.iter().map(|f| f.len() as u64).sum();
        assert_eq!(src.stats().packets, packets);
        assert!(VideoSource::new(96, 1, Some(15), t0).is_err());
    }

    #[test]
    fn a_muted_camera_skips_frames_without_using_sequence_numbers() {
        let t0 = Instant::now();
        let mut src = VideoSource::new(96, 5, None, t0).unwrap();
        let mut last = None;
        while let Some(p) = src.poll(t0) {
            last = Some(p);
        }
        let before = last.unwrap();
        // One second muted: 15 frames skipped.
        src.skip(t0 + Duration::from_millis(1000));
        let after = src
            .poll(t0 + Duration::from_millis(1070))
            .expect("the next frame after the unmute");
        assert_eq!(
            after.header.sequence_number,
            before.header.sequence_number.wrapping_add(1),
            "no sequence number is spent while muted"
        );
        assert_eq!(
            after.header.timestamp.wrapping_sub(before.header.timestamp),
            16 * VIDEO_TIMESTAMP_STEP,
            "the RTP clock kept running"
        );
    }

    #[test]
    fn header_extension_round_trips_through_the_wire_into_receive_stats() {
        let t0 = Instant::now();
        let mut src = VideoSource::new(96, 5, Some(1), t0).unwrap();
        let mut stats = ReceiveStats::new(5, 90_000, Some(1));
        for (rotation, camera) in [
            (Rotation::Deg270, Camera::Front),
            (Rotation::Deg180, Camera::Back),
        ] {
            src.set_orientation(rotation, camera);
            while let Some(p) = src.poll(src.next_deadline()) {
                let wire = p.marshal().unwrap();
                let back = Packet::unmarshal(&mut wire.as_ref()).unwrap();
                assert_eq!(back, p);
                stats.record(&back, t0);
                if back.header.marker {
                    break;
                }
            }
            assert_eq!(
                stats.last_orientation(),
                Some(Orientation { rotation, camera })
            );
        }
        for byte in 0..16u8 {
            let o = Orientation::from_cvo(byte);
            assert_eq!(o.to_cvo(), byte & 0b1011);
        }
    }

    #[test]
    fn sequence_wrap_and_loss_counting() {
        let t0 = Instant::now();
        let mut stats = ReceiveStats::new(7, 48_000, None);
        // 65530..=65535, 0..=9 with 65533, 2 and 3 dropped; 5 duplicated; 7/8 reordered.
        let mut seqs: Vec<u16> = (65530..=65535).chain(0..=9).collect();
        seqs.retain(|s| ![65533, 2, 3].contains(s));
        let i7 = seqs.iter().position(|&s| s == 7).unwrap();
        seqs.swap(i7, i7 + 1);
        seqs.insert(seqs.iter().position(|&s| s == 5).unwrap(), 5);
        for s in &seqs {
            stats.record(&packet(*s, 0), t0);
        }
        assert_eq!(stats.packets_expected(), 16);
        assert_eq!(stats.packets_received(), 14);
        assert_eq!(stats.packets_lost(), 2); // 3 lost, 1 duplicate
        assert_eq!(stats.highest_sequence(), 65536 + 9);
        let rr = stats.reception_report(t0);
        assert_eq!(rr.last_sequence_number, 65545);
        assert_eq!(rr.total_lost, 2);
        assert_eq!(rr.fraction_lost, (2 * 256 / 16) as u8);
        // Next interval: nothing lost.
        stats.record(&packet(10, 0), t0);
        let rr = stats.reception_report(t0);
        assert_eq!(rr.fraction_lost, 0);
        // Other SSRCs are not counted.
        let mut other = packet(11, 0);
        other.header.ssrc = 8;
        stats.record(&other, t0);
        assert_eq!(stats.packets_received(), 15);
    }

    #[test]
    fn jitter_on_a_synthetic_arrival_pattern() {
        let t0 = Instant::now();
        // Perfect 20 ms spacing: zero jitter.
        let mut steady = ReceiveStats::new(7, 8000, None);
        for i in 0..50u32 {
            steady.record(
                &packet(i as u16, i * 160),
                t0 + Duration::from_millis(20 * i as u64),
            );
        }
        assert_eq!(steady.jitter(), 0.0);

        // Alternating +5 ms / -5 ms offsets: |D| = 10 ms = 80 units each step, so J → 80.
        let mut wobbly = ReceiveStats::new(7, 8000, None);
        let mut expected = 0.0f64;
        for i in 0..400u32 {
            let offset = if i % 2 == 0 { 0 } else { 10 };
            wobbly.record(
                &packet(i as u16, i * 160),
                t0 + Duration::from_millis(20 * i as u64 + offset),
            );
            if i > 0 {
                expected += (80.0 - expected) / 16.0;
            }
        }
        assert!((wobbly.jitter() - expected).abs() < 1e-6);
        assert!((wobbly.jitter() - 80.0).abs() < 0.01);
        assert!((wobbly.jitter_ms() - 10.0).abs() < 0.01);
        assert_eq!(wobbly.reception_report(t0).jitter, 79);
    }

    #[test]
    fn rtt_from_a_crafted_sender_and_receiver_report_exchange() {
        // A sends an SR at wall time T; B receives it, waits 250 ms and sends an RR; A receives
        // the RR 100 ms of network time later in each direction: RTT = 100 ms.
        let t0 = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let sent = SendStats {
            packets: 50,
            octets: 4000,
        };
        let sr = sender_report(0xA, ntp_time(wall), 1234, sent, vec![]);
        let wire = marshal_compound(&[RtcpReport::Sender(sr.clone())], "cname-a").unwrap();

        // B: one-way 50 ms later.
        let mut b_stats = ReceiveStats::new(0xA, 48_000, None);
        b_stats.record(&packet(1, 0), t0);
        let parsed = parse_compound(&wire).unwrap();
        let RtcpReport::Sender(got) = &parsed[0] else {
            panic!("expected an SR, got {parsed:?}");
        };
        assert_eq!(
            (got.packet_count, got.octet_count, got.rtp_time),
            (50, 4000, 1234)
        );
        b_stats.record_sender_report(got, t0 + Duration::from_millis(50));
        let block = b_stats.reception_report(t0 + Duration::from_millis(300));
        assert_eq!(block.delay, 65_536 / 4);
        let mut rr = receiver_report(0xB, vec![block]);
        rr.ssrc = 0xB;
        let sr_b = sender_report(0xB, ntp_time(wall), 0, SendStats::default(), vec![]);
        let wire = marshal_compound(
            &[RtcpReport::Sender(sr_b), RtcpReport::Receiver(rr)],
            "cname-b",
        )
        .unwrap();

        // A: receives at T + 50 + 250 + 50 ms.
        let parsed = parse_compound(&wire).unwrap();
        assert_eq!(parsed.len(), 3);
        let RtcpReport::Receiver(rr) = &parsed[1] else {
            panic!("expected an RR, got {parsed:?}");
        };
        let arrival = ntp_time(wall + Duration::from_millis(350));
        let rtt = round_trip_time(&rr.reports[0], arrival).unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(100)) < Duration::from_micros(100),
            "{rtt:?}"
        );
        // Without an SR the block carries no LSR and gives no RTT.
        let fresh = ReceiveStats::new(1, 8000, None).reception_report(t0);
        assert_eq!(round_trip_time(&fresh, arrival), None);
        assert!(parse_compound(b"\x80\xc9\x00").is_err());
        assert!(parse_compound(&[]).is_err());
    }

    #[test]
    fn compound_packets_carry_an_sdes_cname_after_the_reports() {
        let cname = random_cname();
        assert_eq!(cname.len(), 16);
        assert!(cname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'));
        assert_ne!(cname, random_cname(), "a new CNAME per session");

        let sr = |ssrc| sender_report(ssrc, 1 << 32, 0, SendStats::default(), vec![]);
        let wire = marshal_compound(
            &[RtcpReport::Sender(sr(1)), RtcpReport::Sender(sr(2))],
            &cname,
        )
        .unwrap();
        // On the wire: SR (PT 200), SR, then SDES (PT 202) with one CNAME chunk per SSRC.
        let mut buf = wire.as_slice();
        let packets = rtcp::packet::unmarshal(&mut buf).unwrap();
        let types: Vec<u8> = packets
            .iter()
            .map(|p| p.header().packet_type as u8)
            .collect();
        assert_eq!(types, [200, 200, 202]);
        let cnames = |ssrcs: &[u32], cname: &str| {
            RtcpReport::Cnames(
                ssrcs
                    .iter()
                    .map(|&ssrc| SourceCname {
                        ssrc,
                        cname: cname.to_string(),
                    })
                    .collect(),
            )
        };
        let parsed = parse_compound(&wire).unwrap();
        assert_eq!(
            parsed,
            [
                RtcpReport::Sender(sr(1)),
                RtcpReport::Sender(sr(2)),
                cnames(&[1, 2], &cname)
            ]
        );

        // A receiver-only compound: RR then SDES.
        let wire =
            marshal_compound(&[RtcpReport::Receiver(receiver_report(9, vec![]))], "x").unwrap();
        assert_eq!(parse_compound(&wire).unwrap()[1], cnames(&[9], "x"));

        // Other SDES items are skipped, a chunk without CNAME is ignored.
        let sdes = SourceDescription {
            chunks: vec![
                SourceDescriptionChunk {
                    source: 3,
                    items: vec![
                        SourceDescriptionItem {
                            sdes_type: SdesType::SdesTool,
                            text: Bytes::from_static(b"other stack"),
                        },
                        SourceDescriptionItem {
                            sdes_type: SdesType::SdesCname,
                            text: Bytes::from_static(b"peer@example"),
                        },
                    ],
                },
                SourceDescriptionChunk {
                    source: 4,
                    items: vec![SourceDescriptionItem {
                        sdes_type: SdesType::SdesName,
                        text: Bytes::from_static(b"Bob"),
                    }],
                },
            ],
        };
        let mut wire = receiver_report(3, vec![]).marshal().unwrap().to_vec();
        wire.extend_from_slice(&sdes.marshal().unwrap());
        assert_eq!(
            parse_compound(&wire).unwrap()[1],
            cnames(&[3], "peer@example")
        );

        // A compound from a stack that sends no SDES is still accepted.
        let bare = sr(5).marshal().unwrap();
        assert_eq!(parse_compound(&bare).unwrap(), [RtcpReport::Sender(sr(5))]);

        // A compound must begin with a report.
        assert!(marshal_compound(&[], "x").is_err());
        assert!(marshal_compound(&[cnames(&[1], "x")], "x").is_err());
    }
}
