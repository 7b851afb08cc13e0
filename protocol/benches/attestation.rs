//! The cost of a caller attestation (one core): `cargo bench -p switchyard-protocol --bench
//! attestation`. Every Initiate Forward is signed once by its originator and verified once by
//! its receiver, so sign + verify is what the scheme adds to a set-up. Ed25519 (ring) on the
//! same message is the alternative a faster scheme would be.

use std::hint::black_box;
use std::time::Instant;

use ring::rand::SystemRandom;
use ring::signature::{
    Ed25519KeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ED25519,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use switchyard_protocol::attestation::{Attestation, Level};
use switchyard_protocol::pki::{FederationCa, SigningKey};

const NOW: i64 = 1_800_000_000;

fn measure(label: &str, iterations: u32, mut op: impl FnMut()) {
    for _ in 0..iterations / 10 {
        op();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        op();
    }
    let each = start.elapsed().as_secs_f64() / f64::from(iterations);
    println!("{label:<58} {:>8.1} µs", each * 1e6);
}

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = FederationCa::init(
        &dir.path().join("ca.pem"),
        &dir.path().join("ca.key"),
        "bench",
    )
    .expect("federation CA");
    let issued = ca
        .issue_provider("a.example", &["a.example".into()], 30)
        .expect("provider certificate");
    let cert_der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
        .expect("certificate PEM")
        .to_vec();
    let key = SigningKey::from_pem(&issued.key_pem).expect("provider key");
    let attestation = Attestation {
        session_id: "0190f5a2-7c1e-7b3a-9d2e-5f6a7b8c9d0e".into(),
        caller_uri: "tel:+16502530000".into(),
        callee_uri: "mailto:bob@b.example".into(),
        provider_id: "a.example".into(),
        timestamp: NOW,
        level: Level::Full,
    };
    let signature = attestation.sign(&key).expect("sign");
    attestation
        .verify(&signature, &cert_der, NOW, 30)
        .expect("verifies");

    let n = 5_000;
    measure(
        "P-256 attestation: sign (as the originator does)",
        n,
        || {
            black_box(attestation.sign(&key).expect("sign"));
        },
    );
    measure(
        "P-256 attestation: verify (certificate read, then ECDSA)",
        n,
        || {
            attestation
                .verify(black_box(&signature), &cert_der, NOW, 30)
                .expect("verifies");
        },
    );

    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).expect("certificate");
    let p256_public = UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.to_vec(),
    );
    let message = attestation.signed_bytes().expect("no line breaks");
    measure(
        "P-256, same message: verify with the key already read",
        n,
        || {
            p256_public
                .verify(black_box(message.as_slice()), &signature)
                .expect("verifies");
        },
    );

    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
    let ed_key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key");
    let ed_public = UnparsedPublicKey::new(&ED25519, ed_key.public_key().as_ref().to_vec());
    let ed_signature = ed_key.sign(&message);
    measure("Ed25519, same message: sign", n, || {
        black_box(ed_key.sign(black_box(message.as_slice())));
    });
    measure("Ed25519, same message: verify", n, || {
        ed_public
            .verify(black_box(message.as_slice()), ed_signature.as_ref())
            .expect("verifies");
    });
}
