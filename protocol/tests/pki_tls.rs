//! Mutual TLS between providers of one federation, over loopback TCP.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;

use rustls::{ClientConnection, ServerConnection, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use switchyard_protocol::pki::{
    certificate_fingerprint, certs_from_pem, client_config, pinned_client_config,
    provider_identity, server_config, FederationCa, IssuedProvider,
};

fn new_ca(dir: &Path, name: &str) -> FederationCa {
    FederationCa::init(
        &dir.join(format!("{name}.crt")),
        &dir.join(format!("{name}.key")),
        name,
    )
    .unwrap()
}

fn issue(ca: &FederationCa, id: &str) -> IssuedProvider {
    ca.issue_provider(id, &["localhost".to_owned(), "127.0.0.1".to_owned()], 30)
        .unwrap()
}

fn key(issued: &IssuedProvider) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap()
}

fn server_side(ca: &FederationCa, issued: &IssuedProvider) -> Arc<rustls::ServerConfig> {
    server_config(
        ca.cert_pem(),
        certs_from_pem(&issued.cert_pem).unwrap(),
        key(issued),
    )
    .unwrap()
}

/// Runs one exchange: the client sends "ping", the server answers with the provider
/// id of the client's certificate. Returns what the server saw (or its error) and
/// what the client received (or its error).
fn exchange(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> (Result<String, String>, Result<String, String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_thread = thread::spawn(move || -> Result<String, String> {
        let (socket, _) = listener.accept().map_err(|e| e.to_string())?;
        let conn = ServerConnection::new(server).map_err(|e| e.to_string())?;
        let mut tls = StreamOwned::new(conn, socket);
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).map_err(|e| e.to_string())?;
        let peer = tls
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or("no client certificate")?;
        let id = provider_identity(peer)
            .map_err(|e| e.to_string())?
            .provider_id;
        tls.write_all(id.as_bytes()).map_err(|e| e.to_string())?;
        tls.conn.send_close_notify();
        tls.flush().map_err(|e| e.to_string())?;
        Ok(id)
    });

    let client_result = (|| -> Result<String, String> {
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(client, name).map_err(|e| e.to_string())?;
        let socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        let mut tls = StreamOwned::new(conn, socket);
        tls.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut answer = String::new();
        tls.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        Ok(answer)
    })();
    (server_thread.join().unwrap(), client_result)
}

#[test]
fn providers_of_one_federation_authenticate_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), "fed");
    let (alpha, beta) = (issue(&ca, "alpha"), issue(&ca, "beta"));
    let client = client_config(
        ca.cert_pem(),
        certs_from_pem(&beta.cert_pem).unwrap(),
        key(&beta),
    )
    .unwrap();
    let (server_saw, client_got) = exchange(server_side(&ca, &alpha), client);
    assert_eq!(server_saw.unwrap(), "beta");
    assert_eq!(client_got.unwrap(), "beta");
}

#[test]
fn client_from_another_federation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), "fed");
    let other_ca = new_ca(dir.path(), "other");
    let alpha = issue(&ca, "alpha");
    let mallory = issue(&other_ca, "mallory");
    // Mallory trusts our CA, so only the server's check can stop her.
    let client = client_config(
        ca.cert_pem(),
        certs_from_pem(&mallory.cert_pem).unwrap(),
        key(&mallory),
    )
    .unwrap();
    let (server_saw, client_got) = exchange(server_side(&ca, &alpha), client);
    let error = server_saw.unwrap_err();
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(client_got.is_err());
}

#[test]
fn client_without_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), "fed");
    let alpha = issue(&ca, "alpha");
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs_from_pem(ca.cert_pem()).unwrap());
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let (server_saw, client_got) = exchange(server_side(&ca, &alpha), client);
    let error = server_saw.unwrap_err();
    assert!(error.contains("peer sent no certificates"), "{error}");
    assert!(client_got.is_err());
}

#[test]
fn client_refuses_a_server_from_another_federation() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), "fed");
    let other_ca = new_ca(dir.path(), "other");
    let beta = issue(&ca, "beta");
    let client = client_config(
        ca.cert_pem(),
        certs_from_pem(&beta.cert_pem).unwrap(),
        key(&beta),
    )
    .unwrap();
    let impostor = issue(&other_ca, "impostor");
    let (server_saw, client_got) = exchange(server_side(&other_ca, &impostor), client);
    let error = client_got.unwrap_err();
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(server_saw.is_err());
}

/// A client pinned to the certificate the discovery dictionary lists talks to the member that
/// holds it, and to no other member of the same federation.
#[test]
fn a_pinned_client_talks_only_to_the_listed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), "fed");
    let (alpha, beta, gamma) = (issue(&ca, "alpha"), issue(&ca, "beta"), issue(&ca, "gamma"));
    let listed = certificate_fingerprint(&certs_from_pem(&alpha.cert_pem).unwrap()[0]);
    let pinned = || {
        pinned_client_config(
            ca.cert_pem(),
            certs_from_pem(&beta.cert_pem).unwrap(),
            key(&beta),
            &listed,
        )
        .unwrap()
    };
    let (server_saw, client_got) = exchange(server_side(&ca, &alpha), pinned());
    assert_eq!(server_saw.unwrap(), "beta");
    assert_eq!(client_got.unwrap(), "beta");

    let (server_saw, client_got) = exchange(server_side(&ca, &gamma), pinned());
    let error = client_got.unwrap_err();
    assert!(error.contains("the discovery dictionary lists"), "{error}");
    assert!(error.contains(&listed), "{error}");
    assert!(server_saw.is_err());
}

/// Runs a handshake in memory and returns the application protocol both sides agreed on.
fn negotiated_protocol(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Option<Vec<u8>> {
    let mut server = ServerConnection::new(server).unwrap();
    let mut client =
        ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut wire = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        wire.clear();
        client.write_tls(&mut wire).unwrap();
        server.read_tls(&mut wire.as_slice()).unwrap();
        server.process_new_packets().unwrap();
        wire.clear();
        server.write_tls(&mut wire).unwrap();
        client.read_tls(&mut wire.as_slice()).unwrap();
        client.process_new_packets().unwrap();
    }
    assert_eq!(client.alpn_protocol(), server.alpn_protocol());
    client.alpn_protocol().map(<[u8]>::to_vec)
}

/// Forwards between providers multiplex over one HTTP/2 connection per peer; a client that
/// offers only HTTP/1.1 (a Python peer, say), or no protocol at all, still connects.
#[test]
fn providers_agree_on_http2_and_an_http1_client_still_connects() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), "fed");
    let (alpha, beta) = (issue(&ca, "alpha"), issue(&ca, "beta"));
    let listed = certificate_fingerprint(&certs_from_pem(&alpha.cert_pem).unwrap()[0]);
    let pinned = pinned_client_config(
        ca.cert_pem(),
        certs_from_pem(&beta.cert_pem).unwrap(),
        key(&beta),
        &listed,
    )
    .unwrap();
    assert_eq!(
        negotiated_protocol(server_side(&ca, &alpha), pinned.clone()),
        Some(b"h2".to_vec())
    );
    let mut http1_only = (*pinned).clone();
    http1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
    assert_eq!(
        negotiated_protocol(server_side(&ca, &alpha), Arc::new(http1_only)),
        Some(b"http/1.1".to_vec())
    );
    // A client that offers nothing gets no protocol and still connects (HTTP/1.1 then).
    let mut no_alpn = (*pinned).clone();
    no_alpn.alpn_protocols.clear();
    assert_eq!(
        negotiated_protocol(server_side(&ca, &alpha), Arc::new(no_alpn)),
        None
    );
}
