//! Clients that hold connections without finishing requests: each HTTP listener cuts them off
//! (TLS handshake and headers within the header timeout, also between kept-alive requests and on
//! an HTTP/2 connection that only pings, and a body within the body timeout) and, at its
//! connection cap, makes new clients wait instead of running out of file descriptors; a
//! legitimate request still gets through. (The idle timeout, for a connection that stalls
//! mid-request, is unit-tested in `provider/src/listener.rs`.)

use std::time::{Duration, Instant};

use switchyard_endpoint::client::ClientError;
use switchyard_protocol::dict::Encoding;
use switchyard_provider::config::HttpLimits;
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMITS: HttpLimits = HttpLimits {
    max_connections: 16,
    header_timeout_seconds: 1,
    idle_timeout_seconds: 3,
    body_timeout_seconds: 1,
    // Every client of these tests is 127.0.0.1: the per-client limits stay out of the way of
    // the listener-wide ones tested here (and are tested on their own below).
    max_connections_per_client: 1024,
    requests_per_second_per_client: 1000,
    request_burst_per_client: 1000,
};

async fn limited() -> anyhow::Result<Harness> {
    let (mut config, dir) = test_config().await?;
    config.endpoint_api.limits = LIMITS;
    config.admin.limits = LIMITS;
    config.push.long_poll_max_seconds = 2;
    Harness::start_with(config, dir).await
}

/// Whether `metrics` (Prometheus text) has a sample of `name` carrying every label of `labels`.
fn has_sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    metrics.lines().any(|line| {
        line.starts_with(name)
            && labels
                .iter()
                .all(|(label, value)| line.contains(&format!("{label}=\"{value}\"")))
    })
}

/// Waits until the server closes `stream` (reads end of file), for at most `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + within),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => anyhow::bail!("still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn slow_clients_fill_no_listener_and_legitimate_requests_get_through() -> anyhow::Result<()> {
    let h = limited().await?;
    let admin = h.provider.admin_addr;
    let endpoint = h.provider.endpoint_addr;

    // As many clients as each listener takes, each stopping halfway: headers that never end
    // on the admin listener, a TLS handshake that never starts on the endpoint API.
    let mut slow = Vec::new();
    for _ in 0..LIMITS.max_connections {
        let mut stream = TcpStream::connect(admin).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await?;
        slow.push(stream);
        slow.push(TcpStream::connect(endpoint).await?);
    }
    // Both listeners are full; the next clients wait until the slow ones are cut off.
    let started = Instant::now();
    let health = reqwest::Client::new()
        .get(format!("{}/healthz", h.admin_url))
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    assert_eq!(health.status(), 200);
    let endpoint_api = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(h.ca_pem().as_bytes())?])
        .timeout(Duration::from_secs(5))
        .build()?
        .get(format!("{}/v1/no-such-path", h.provider_url))
        .send()
        .await?;
    assert_eq!(endpoint_api.status(), 404);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    for stream in &mut slow {
        closed_within(stream, Duration::from_secs(3)).await?;
    }

    // A body that stops arriving is answered 408 within the body timeout.
    let mut stream = TcpStream::connect(admin).await?;
    let request = format!(
        "POST /admin/v1/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"display_",
        h.token()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body-timeout"), "{answer}");

    // A kept-alive connection must start its next request within the header timeout.
    let mut stream = TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let n = stream.read(&mut [0u8; 4096]).await?;
    assert!(n > 0);
    let quiet = closed_within(&mut stream, Duration::from_secs(3)).await?;
    assert!(
        quiet >= Duration::from_millis(500),
        "closed after {quiet:?}"
    );

    let metrics = h.metrics().await?;
    for (listener, phase) in [("admin", "body"), ("endpoint", "handshake")] {
        assert!(
            has_sample(
                &metrics,
                "switchyard_http_timeouts_total",
                &[("listener", listener), ("phase", phase)]
            ),
            "no {listener} {phase} timeout counted"
        );
    }
    assert!(metrics.contains("switchyard_http_connections_at_cap_total"));
    h.provider.shutdown().await;
    Ok(())
}

/// One client address that opens connection after connection and sends request after request:
/// past its share it is closed or told `429` with `Retry-After`, while another client (another
/// loopback address) is served as usual.
#[tokio::test]
async fn one_client_is_held_to_its_share_and_others_are_served() -> anyhow::Result<()> {
    let (mut config, dir) = test_config().await?;
    config.admin.limits = HttpLimits {
        max_connections_per_client: 4,
        requests_per_second_per_client: 5,
        request_burst_per_client: 10,
        ..config.admin.limits
    };
    let h = Harness::start_with(config, dir).await?;
    let admin = h.provider.admin_addr;
    let flooder_ip: std::net::IpAddr = "127.0.0.2".parse()?;
    let connect_from = |ip: std::net::IpAddr| async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(ip, 0))?;
        anyhow::Ok(socket.connect(admin).await?)
    };

    // Four connections held open; the fifth is closed at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(flooder_ip).await?);
    }
    let mut fifth = connect_from(flooder_ip).await?;
    closed_within(&mut fifth, Duration::from_secs(2)).await?;
    let other = connect_from("127.0.0.1".parse()?).await?;
    drop(other);

    // Requests past the burst: 429 with Retry-After, as an error dictionary.
    let flooder = reqwest::Client::builder()
        .local_address(flooder_ip)
        .build()?;
    drop(held);
    // The listener frees the slots once it reads the closes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut statuses = Vec::new();
    let mut refusal = None;
    for _ in 0..20 {
        let response = flooder
            .get(format!("{}/healthz", h.admin_url))
            .send()
            .await?;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            refusal = Some((retry_after, response.json::<serde_json::Value>().await?));
        }
    }
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert!((10..=12).contains(&served), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let (retry_after, body) = refusal.expect("the flooder was refused");
    assert_eq!(retry_after, Some(1));
    assert_eq!(body["error"], "rate-limited");
    // Another client is served meanwhile.
    let health = reqwest::get(format!("{}/healthz", h.admin_url)).await?;
    assert_eq!(health.status(), 200);
    // The flooder's bucket refills at its rate.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let again = flooder
        .get(format!("{}/healthz", h.admin_url))
        .send()
        .await?;
    assert_eq!(again.status(), 200);

    let metrics = h.metrics().await?;
    for reason in ["client-connections", "client-rate"] {
        assert!(
            has_sample(
                &metrics,
                "switchyard_http_refused_total",
                &[("listener", "admin"), ("reason", reason)]
            ),
            "no {reason} refusal counted:\n{metrics}"
        );
    }
    h.provider.shutdown().await;
    Ok(())
}

/// One source sending requests faster than its rate: past its burst it gets `503` with
/// `Retry-After`, while another source is answered as usual.
#[tokio::test]
async fn a_sip_source_over_its_rate_gets_503_and_others_are_answered() -> anyhow::Result<()> {
    let (mut config, dir) = test_config().await?;
    enable_sip_on_loopback(&mut config)?;
    config.sip.requests_per_second_per_source = 5;
    config.sip.request_burst_per_source = 10;
    let h = Harness::start_with(config, dir).await?;
    let udp = h.provider.sip_udp_addr.expect("SIP over UDP");
    let options = |port: u16, i: usize| {
        format!(
            "OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKrate{port}x{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:rate@127.0.0.1>;tag=r{i}\r\nTo: <sip:edge@127.0.0.1>\r\n\
             Call-ID: rate{port}x{i}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let ask = |socket: std::sync::Arc<tokio::net::UdpSocket>, i: usize| async move {
        let port = socket.local_addr()?.port();
        socket.send_to(options(port, i).as_bytes(), udp).await?;
        let mut buf = vec![0u8; 65_535];
        let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await??;
        anyhow::Ok(String::from_utf8_lossy(&buf[..n]).to_string())
    };
    let flooder = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.2:0").await?);
    let mut answers = Vec::new();
    for i in 0..20 {
        answers.push(ask(flooder.clone(), i).await?);
    }
    let ok = answers
        .iter()
        .filter(|a| a.starts_with("SIP/2.0 200"))
        .count();
    let refused: Vec<&String> = answers
        .iter()
        .filter(|a| a.starts_with("SIP/2.0 503"))
        .collect();
    assert!((10..=11).contains(&ok), "{answers:#?}");
    assert_eq!(ok + refused.len(), 20, "{answers:#?}");
    assert!(refused[0].contains("Retry-After: 1\r\n"), "{}", refused[0]);
    let phone = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
    assert!(ask(phone, 0).await?.starts_with("SIP/2.0 200"));
    let metrics = h.metrics().await?;
    assert!(
        metrics.contains("switchyard_sip_refused_total{reason=\"source-rate\"}"),
        "{metrics}"
    );
    h.provider.shutdown().await;
    Ok(())
}

/// A SIP client over TCP that sends requests and never reads the answers: the edge queues a
/// bounded number for it, then gives the connection up, and other phones are still answered.
#[tokio::test]
async fn a_sip_client_that_never_reads_loses_its_connection() -> anyhow::Result<()> {
    let (mut config, dir) = test_config().await?;
    enable_sip_on_loopback(&mut config)?;
    let h = Harness::start_with(config, dir).await?;
    let tcp = h.provider.sip_tcp_addr.expect("SIP over TCP");
    let options = |i: usize| {
        format!(
            "OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKflood{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:flood@127.0.0.1>;tag=f{i}\r\nTo: <sip:edge@127.0.0.1>\r\n\
             Call-ID: flood{i}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // From an address of its own: the phone below is another source to the edge's rate limit.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.2:0".parse()?)?;
    let mut flooder = socket.connect(tcp).await?;
    let started = Instant::now();
    let mut cut_off = false;
    // Its answers fill both sides' socket buffers (a few MiB), then the edge's queue.
    for i in 0..200_000 {
        match tokio::time::timeout(
            Duration::from_secs(15),
            flooder.write_all(options(i).as_bytes()),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Err(_) => anyhow::bail!("the edge neither reads nor closes after {i} requests"),
        }
    }
    assert!(
        cut_off,
        "200,000 unread answers and the connection is still open"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    let mut phone = TcpStream::connect(tcp).await?;
    phone.write_all(options(0).as_bytes()).await?;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), phone.read(&mut answer)).await??;
    assert!(
        answer[..n].starts_with(b"SIP/2.0 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    h.provider.shutdown().await;
    Ok(())
}

/// A member's request body on the federation listener is held to that listener's own limits
/// (`federation.max_body_bytes`, `federation.limits.body_timeout_seconds`), not the endpoint
/// API's, and a stalled one is counted as the federation listener's.
#[tokio::test]
async fn a_members_request_body_is_held_to_the_federation_limits() -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use switchyard_protocol::dict::Encoding;
    use switchyard_tests::federation::{ProviderSpec, TestFederation};

    let fed = TestFederation::start(&[
        ProviderSpec::plist("a.test"),
        ProviderSpec::plist("b.test").tune(|config| {
            config.federation.max_body_bytes = 4096;
            config.federation.limits.body_timeout_seconds = 1;
            // Larger than the federation's, so an answer within 1 s comes from the right one.
            config.endpoint_api.limits.body_timeout_seconds = 60;
            config.endpoint_api.max_body_bytes = 1 << 20;
        }),
    ])
    .await?;
    let as_a = fed.peer_client_of("a.test")?;
    let initiate = format!("{}/federation/v1/initiate", fed.federation_url("b.test"));
    let plist = Encoding::Plist.content_type();

    let too_large = as_a
        .post(&initiate)
        .header(reqwest::header::CONTENT_TYPE, plist)
        .body(vec![b' '; 5000])
        .send()
        .await?;
    assert_eq!(too_large.status(), 413);
    assert!(too_large.text().await?.contains("body-too-large"));

    let started = Instant::now();
    let stalled = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(b"<?xml version=\"1.0\"?><plist".to_vec())
    })
    .chain(futures_util::stream::pending());
    let answer = as_a
        .post(&initiate)
        .header(reqwest::header::CONTENT_TYPE, plist)
        .body(reqwest::Body::wrap_stream(stalled))
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    assert_eq!(answer.status(), 408);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(answer.text().await?.contains("body-timeout"));
    let metrics = fed.provider("b.test").metrics().await?;
    assert!(
        has_sample(
            &metrics,
            "switchyard_http_timeouts_total",
            &[("listener", "federation"), ("phase", "body")]
        ),
        "{metrics}"
    );
    fed.shutdown().await;
    Ok(())
}

/// The rate limit's `429` is JSON whatever the client asked for; an endpoint client asking for
/// property lists reads it as the refusal it is.
#[tokio::test]
async fn an_endpoint_over_its_rate_reads_the_refusal_in_any_encoding() -> anyhow::Result<()> {
    let h = Harness::start_with_endpoint_rate(1, 2).await?;
    let alice_id = h.add_user("Alice", &["tel:+16502530000"]).await?;
    let alice = h
        .endpoint(&alice_id, "tel:+16502530000", None, Encoding::Plist)
        .await?;
    let mut refused = None;
    for _ in 0..10 {
        match alice.relay_credentials(None).await {
            Err(ClientError::Refused {
                status: 429, code, ..
            }) => {
                refused = Some(code);
                break;
            }
            Ok(_) => {}
            Err(other) => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(refused.as_deref(), Some("rate-limited"));
    h.provider.shutdown().await;
    Ok(())
}

/// HTTP/2 has no "next request" for hyper's header timeout to wait on, and a client's PINGs keep
/// the connection from ever being idle: a connection that asks nothing is still closed within
/// the header timeout, where without that rule it would stay for as long as it pings.
#[tokio::test]
async fn an_http2_connection_that_only_pings_is_closed() -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let h = limited().await?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(h.ca_pem().as_bytes()) {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(h.provider.endpoint_addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // The client preface and an empty SETTINGS frame.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await?;
    let started = Instant::now();
    let bound = Duration::from_secs(LIMITS.idle_timeout_seconds + 3);
    let mut buf = [0u8; 4096];
    let closed_after = loop {
        anyhow::ensure!(
            started.elapsed() < bound,
            "still open after {bound:?} of PINGs"
        );
        // A PING every 200 ms: length 8, type 6, no flags, stream 0, 8 bytes of payload.
        tls.write_all(b"\0\0\x08\x06\0\0\0\0\0pingpong").await?;
        match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            Ok(Ok(_)) | Err(_) => continue,
        }
    };
    let header_timeout = Duration::from_secs(LIMITS.header_timeout_seconds);
    assert!(
        closed_after >= header_timeout
            && closed_after < Duration::from_secs(LIMITS.idle_timeout_seconds),
        "closed after {closed_after:?}: within the header timeout ({header_timeout:?}), before the idle one"
    );
    let metrics = h.metrics().await?;
    assert!(
        has_sample(
            &metrics,
            "switchyard_http_timeouts_total",
            &[("listener", "endpoint"), ("phase", "no-request")]
        ),
        "no HTTP/2 no-request timeout counted"
    );
    h.provider.shutdown().await;
    Ok(())
}
