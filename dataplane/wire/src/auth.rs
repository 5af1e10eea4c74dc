//! Authentication of processes by their application's secret, for every connection between
//! processes and with the control plane: challenge and response, so the secret never travels.
//!
//! The accepting side sends a random nonce; the connecting side answers
//! `HMAC-SHA256(secret, nonce || app || "/" || process)`; the accepting side recomputes it with the
//! secret it knows for `app` and compares in constant time. A process of one application cannot
//! answer for another application, nor replay an answer (each nonce is fresh).
//!
//! Data-plane clients authenticate the same way with the application's **client key**
//! ([`client_key`]), derived from the secret by a one-way function: a client holding it can invoke
//! the application's processes but cannot pass for one of them (nor derive the secret).

use hmac::Mac;
use thiserror::Error;

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

/// An application's secret as a process holds it: never empty (a process without one holds
/// `None`, and then authenticates nobody), and never printed (its `Debug` shows no byte of it).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// A secret was empty: an empty secret would authenticate anyone who sends the empty string.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("an application secret cannot be empty")]
pub struct EmptySecret;

impl Secret {
    /// The secret `value`; empty is refused.
    pub fn new(value: impl Into<String>) -> Result<Self, EmptySecret> {
        let value = value.into();
        if value.is_empty() {
            Err(EmptySecret)
        } else {
            Ok(Self(value))
        }
    }

    /// A fresh random secret ([`new_secret`]).
    pub fn random() -> Self {
        Self(new_secret())
    }

    /// The secret's text, for the HMAC functions of this module. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The application's [`client_key`] derived from this secret.
    pub fn client_key(&self) -> String {
        client_key(&self.0)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The application's client key: what its data-plane clients authenticate with (hex text).
pub fn client_key(secret: &str) -> String {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(b"praas client key");
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// What a data-plane client presents to a process that requires authentication: its
/// application, a name (for the process's logs), and the application's [`client_key`].
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The application whose processes the client invokes.
    pub app: String,
    /// The client's name.
    pub name: String,
    /// The application's client key.
    pub key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("app", &self.app).field("name", &self.name).finish_non_exhaustive()
    }
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

    #[test]
    fn the_client_key_is_fixed_per_secret_and_proves_nothing_the_secret_proves() {
        let secret = new_secret();
        let key = client_key(&secret);
        assert_eq!(key, client_key(&secret));
        assert_eq!(key.len(), 64);
        assert_ne!(key, client_key(&new_secret()));
        assert_ne!(key, secret);
        let n = nonce();
        assert!(!verify(&secret, &n, "app", "c", &proof(&key, &n, "app", "c")), "the key is not the secret");
        let credentials = Credentials { app: "app".into(), name: "c".into(), key };
        assert!(!format!("{credentials:?}").contains(&credentials.key), "Debug keeps the key out of logs");
    }

    #[test]
    fn a_secret_is_never_empty_and_never_printed() {
        assert_eq!(Secret::new(""), Err(EmptySecret));
        assert_eq!(Secret::new(String::new()), Err(EmptySecret));
        let secret = Secret::new("hunter2").unwrap();
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(secret.client_key(), client_key("hunter2"));
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        assert_eq!(format!("{:?}", Some(Secret::random())), "Some(Secret(..))");
        assert_ne!(Secret::random(), Secret::random());
    }
}
