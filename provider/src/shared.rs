//! What every area of the daemon uses and none owns: random tokens, the clock and the shutdown
//! signal.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::watch;

/// `bytes` random bytes from the system's CSPRNG, base64url without padding: push tokens,
/// provisioning codes, session ids, forward ids.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("system randomness");
    URL_SAFE_NO_PAD.encode(buf)
}

/// The wall clock, Unix milliseconds: what records, pushes and sweeps are stamped with.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn shutting_down(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await.map(|_| ());
}
