//! SRTP protect/unprotect throughput of [`SrtpSession`] (webrtc-srtp underneath), one core.
//!
//! ```sh
//! cargo bench -p switchyard-media --bench srtp            # 2 s per case
//! SRTP_BENCH_SECONDS=5 cargo bench -p switchyard-media --bench srtp
//! ```
//!
//! Cases: AES-128-GCM and AES-128-CM-HMAC-SHA1-80, 160- and 1,200-byte RTP payloads behind a
//! 12-byte header, protect and unprotect. Unprotect gets fresh packets (replay protection refuses
//! repeats): chunks of distinct packets are protected untimed, then unprotected timed, in sequence
//! order, until the case has run its time. Each line on stdout is
//! `switchyard <profile> <op> <payload bytes> <packets/s> <payload Mbit/s>`;
//! `bench/srtp/run.sh` prints it next to libsrtp's figures from `bench/srtp/srtp_bench.c`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use switchyard_media::secure::{SrtpProfile, SrtpSession};

const HEADER: usize = 12;
const PAYLOADS: [usize; 2] = [160, 1200];
/// Packets protected ahead of each timed unprotect chunk.
const CHUNK: usize = 16_384;
/// Packets between two looks at the clock.
const BATCH: usize = 1024;

fn session(profile: SrtpProfile) -> SrtpSession {
    let key: Vec<u8> = (0..profile.master_key_len() as u8)
        .map(|i| i.wrapping_mul(7) + 1)
        .collect();
    let salt: Vec<u8> = (0..profile.master_salt_len() as u8)
        .map(|i| i.wrapping_mul(13) + 5)
        .collect();
    // The same keys both ways: what this session protects, it can unprotect.
    SrtpSession::from_master_keys(profile, &key, &salt, &key, &salt).expect("keying")
}

/// An RTP packet: version 2, PT 111, the given sequence number, SSRC 0x5157_4954.
fn rtp_packet(payload: usize) -> Vec<u8> {
    let mut p = vec![0u8; HEADER + payload];
    p[0] = 0x80;
    p[1] = 111;
    p[8..12].copy_from_slice(&0x5157_4954u32.to_be_bytes());
    for (i, b) in p[HEADER..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

fn set_seq(p: &mut [u8], seq: u64) {
    p[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
    p[4..8].copy_from_slice(&((seq as u32).wrapping_mul(160)).to_be_bytes());
}

fn bench_protect(profile: SrtpProfile, payload: usize, min: Duration) -> (u64, Duration) {
    let s = session(profile);
    let mut pkt = rtp_packet(payload);
    let mut seq = 0u64;
    let start = Instant::now();
    loop {
        for _ in 0..BATCH {
            set_seq(&mut pkt, seq);
            seq += 1;
            black_box(s.protect_rtp(black_box(&pkt)).expect("protect"));
        }
        let elapsed = start.elapsed();
        if elapsed >= min {
            return (seq, elapsed);
        }
    }
}

fn bench_unprotect(profile: SrtpProfile, payload: usize, min: Duration) -> (u64, Duration) {
    let s = session(profile);
    let mut pkt = rtp_packet(payload);
    let mut seq = 0u64;
    let mut done = 0u64;
    let mut timed = Duration::ZERO;
    let mut chunk = Vec::with_capacity(CHUNK);
    while timed < min {
        chunk.clear();
        for _ in 0..CHUNK {
            set_seq(&mut pkt, seq);
            seq += 1;
            chunk.push(s.protect_rtp(&pkt).expect("protect"));
        }
        let start = Instant::now();
        for srtp in &chunk {
            let rtp = s.unprotect_rtp(black_box(srtp)).expect("unprotect");
            debug_assert_eq!(rtp.len(), HEADER + payload);
            black_box(rtp);
        }
        timed += start.elapsed();
        done += CHUNK as u64;
    }
    (done, timed)
}

fn main() {
    let secs: f64 = std::env::var("SRTP_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let min = Duration::from_secs_f64(secs.max(1.0));
    for (profile, label) in [
        (SrtpProfile::AeadAes128Gcm, "AES-128-GCM"),
        (SrtpProfile::Aes128CmHmacSha1_80, "AES-128-CM-HMAC-SHA1-80"),
    ] {
        for payload in PAYLOADS {
            for op in ["protect", "unprotect"] {
                let (packets, elapsed) = if op == "protect" {
                    bench_protect(profile, payload, min)
                } else {
                    bench_unprotect(profile, payload, min)
                };
                let pps = packets as f64 / elapsed.as_secs_f64();
                let mbps = pps * payload as f64 * 8.0 / 1e6;
                println!("switchyard {label} {op} {payload} {pps:.0} {mbps:.1}");
            }
        }
    }
}
