//! Authentication of processes by their application's secret, for every connection between
//! processes and with the control plane: challenge and response, so the secret never travels.
//!
//! The accepting side sends a random nonce; the connecting side answers
//! `HMAC-SHA256(secret, nonce || app || "/" || process)`; the accepting side recomputes it with the
//! secret it knows for `app` and compares in constant time. A process of one application cannot
//! answer for another application, nor replay an answer (each nonce is fresh).

use hmac::Mac;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a proof.
pub const PROOF_LEN: usize = 32;

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the OS random source works");
    nonce
}

/// A fresh random application secret, as hex text.
pub fn new_secret() -> String {
    nonce().iter().map(|b| format!("{b:02x}")).collect()
}

fn mac(secret: &str, nonce: &[u8], app: &str, process: &str) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(nonce);
    mac.update(app.as_bytes());
    mac.update(b"/");
    mac.update(process.as_bytes());
    mac
}

/// The answer of `app/process`, holding `secret`, to `nonce`.
pub fn proof(secret: &str, nonce: &[u8], app: &str, process: &str) -> [u8; PROOF_LEN] {
    mac(secret, nonce, app, process).finalize().into_bytes().into()
}

/// Whether `proof` answers `nonce` for `app/process` with `secret` (constant-time comparison).
pub fn verify(secret: &str, nonce: &[u8], app: &str, process: &str, proof: &[u8]) -> bool {
    mac(secret, nonce, app, process).verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_secret_app_and_nonce_verify() {
        let secret = new_secret();
        assert_eq!(secret.len(), 64);
        let n = nonce();
        let p = proof(&secret, &n, "app", "p1");
        assert!(verify(&secret, &n, "app", "p1", &p));
        assert!(!verify("other-secret", &n, "app", "p1", &p));
        assert!(!verify(&secret, &n, "other-app", "p1", &p));
        assert!(!verify(&secret, &n, "app", "p2", &p));
        assert!(!verify(&secret, &nonce(), "app", "p1", &p), "a proof does not answer another nonce");
        assert!(!verify(&secret, &n, "app", "p1", &p[..16]));
    }
}
