//! The handshake that authenticates every connection between processes, and between a
//! data-plane client and a process, as pure state machines over frames: no socket, no SDK type.
//!
//! ```text
//! connecting side A ([`introduce`])                     accepting side B ([`Acceptance`])
//!   Hello  meta "APP/A"  payload nonce_a (32 B) [‖ 1]  ──▶
//!                                                ◀──  Hello  meta "APP/B"  payload nonce_b (32 B) ‖ proof_b (32 B)
//!   checks proof_b = HMAC(key, "praas-server" ‖ nonce_a ‖ "APP/B")
//!   Hello  meta "APP/A"  payload proof_a (32 B)  ──▶   checks proof_a = HMAC(key, "praas-client" ‖ nonce_b ‖ "APP/A")
//!                                                ◀──  Hello  status Ok
//! ```
//!
//! The key is the application's secret between processes, and its client key ([`crate::auth`])
//! between a data-plane client (its first nonce followed by the byte 1) and a process. The role
//! labels keep a process's answer as a server from being replayed as its answer as a client.

use crate::auth::{self, Secret, NONCE_LEN, PROOF_LEN};
use crate::protocol::{Header, MessageKind, OwnedFrame, Status};

/// Why a process without a secret refuses a handshake, and puts no message to another process.
pub const NO_SECRET: &str = "this process has no application secret: it accepts no peer or authenticated client";

/// Label mixed into the accepting side's proof.
const SERVER_ROLE: &[u8] = b"praas-server";
/// Label mixed into the connecting side's proof.
const CLIENT_ROLE: &[u8] = b"praas-client";
/// The byte after the nonce of a first `Hello` from a data-plane client (a process sends the nonce
/// alone): the handshake then runs with the application's client key instead of its secret.
const CLIENT_MARK: u8 = 1;

/// The identity a side names in its `Hello`: `APP/PROCESS`.
pub fn identity(app: &str, process: &str) -> Vec<u8> {
    format!("{app}/{process}").into_bytes()
}

fn role_nonce(role: &[u8], nonce: &[u8]) -> Vec<u8> {
    [role, nonce].concat()
}

/// A connection as the connecting side of the handshake needs it: send one frame, receive the
/// next (both bounded by the connection's deadline or timeout).
pub trait HandshakeWire {
    /// What a failed send or receive says.
    type Error;
    /// Sends one frame (the lengths in `header` are set from `meta` and `payload`).
    fn send_frame(&mut self, header: Header, meta: &[u8], payload: &[u8]) -> Result<(), Self::Error>;
    /// Receives the next frame, whatever its kind.
    fn recv_frame(&mut self) -> Result<OwnedFrame, Self::Error>;
}

/// Who connects, proving which key, to whom.
#[derive(Debug)]
pub struct Introduction<'a> {
    /// The application.
    pub app: &'a str,
    /// The connecting side's name: a process id, or a client's name.
    pub me: &'a str,
    /// The application's secret (a process), or its client key (a client).
    pub key: &'a str,
    /// A data-plane client (its first nonce carries the client mark).
    pub client: bool,
    /// The process it means to reach, if it knows which.
    pub to: Option<&'a str>,
}

/// Why the connecting side's handshake failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandshakeError<E> {
    /// The connection failed.
    Wire(E),
    /// The other side refused, or could not prove the key: why.
    Refused(String),
}

/// Why the other side refused a handshake, or could not prove the key ([`HandshakeError::Refused`]):
/// its words, as it sent them, or the connecting side's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandshakeRefused(pub String);

impl<E> HandshakeError<E> {
    /// The failed connection's error (`Ok`), or why the other side refused (`Err`): for callers
    /// outside this crate, which cannot match every variant of this non-exhaustive enum.
    pub fn wire_or_refusal(self) -> Result<E, HandshakeRefused> {
        match self {
            HandshakeError::Wire(e) => Ok(e),
            HandshakeError::Refused(text) => Err(HandshakeRefused(text)),
        }
    }
}

/// The connecting side of the handshake: both sides prove they hold the key (the secret between
/// processes, the client key between a client and a process), which never travels.
pub fn introduce<W: HandshakeWire>(wire: &mut W, who: &Introduction<'_>) -> Result<(), HandshakeError<W::Error>> {
    let hello = Header { kind: MessageKind::Hello, meta_len: 0, status: 0, id: 0, timeout_ms: 0, payload_len: 0 };
    let me = identity(who.app, who.me);
    let what = if who.client { "client key" } else { "secret" };
    // 1. Our identity and a fresh nonce for the other side to answer (a client's marked).
    let nonce = auth::nonce();
    let mark: &[u8] = if who.client { &[CLIENT_MARK] } else { &[] };
    wire.send_frame(hello, &me, &[&nonce[..], mark].concat()).map_err(HandshakeError::Wire)?;
    // 2. The other side's identity, its nonce and its proof of the key.
    let challenge = wire.recv_frame().map_err(HandshakeError::Wire)?;
    if challenge.header.status != Status::Ok.code() {
        return Err(HandshakeError::Refused(String::from_utf8_lossy(&challenge.meta).into_owned()));
    }
    if challenge.header.kind != MessageKind::Hello || challenge.payload.len() != NONCE_LEN + PROOF_LEN {
        return Err(HandshakeError::Refused(format!("unexpected {:?} frame in the handshake", challenge.header.kind)));
    }
    let claimed = String::from_utf8_lossy(&challenge.meta).into_owned();
    let process = match (who.to, claimed.strip_prefix(&format!("{}/", who.app))) {
        (Some(to), Some(process)) if process == to => process,
        (None, Some(process)) => process,
        _ => {
            let wanted =
                who.to.map_or_else(|| format!("a process of application {:?}", who.app), |to| format!("{to:?}"));
            return Err(HandshakeError::Refused(format!("the process is {claimed:?}, not {wanted}")));
        }
    };
    let (their_nonce, their_proof) = challenge.payload.split_at(NONCE_LEN);
    if !auth::verify(who.key, &role_nonce(SERVER_ROLE, &nonce), who.app, process, their_proof) {
        return Err(HandshakeError::Refused(format!(
            "process {claimed:?} could not prove it holds the {what} of application {:?}",
            who.app
        )));
    }
    // 3. Our proof.
    let proof = auth::proof(who.key, &role_nonce(CLIENT_ROLE, their_nonce), who.app, who.me);
    wire.send_frame(hello, &me, &proof).map_err(HandshakeError::Wire)?;
    // 4. Accepted, or why not.
    let verdict = wire.recv_frame().map_err(HandshakeError::Wire)?;
    if verdict.header.status != Status::Ok.code() || verdict.header.kind != MessageKind::Hello {
        return Err(HandshakeError::Refused(String::from_utf8_lossy(&verdict.meta).into_owned()));
    }
    Ok(())
}

/// Why the accepting side refused a handshake: the text the connecting side is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeRefusal {
    /// This process has no secret ([`NO_SECRET`]).
    #[error("{}", NO_SECRET)]
    NoSecret,
    /// The `Hello` does not name `APP/PROCESS`.
    #[error("a Hello names \"APP/PROCESS\", not {claimed:?}")]
    BadIdentity {
        /// What it named.
        claimed: String,
    },
    /// The connecting side belongs to another application.
    #[error("process {me:?} does not serve processes of another application")]
    OtherApplication {
        /// This process.
        me: String,
    },
    /// The first `Hello` does not carry a nonce (and a client's mark).
    #[error("a first Hello carries a {NONCE_LEN}-byte nonce (and a client's a mark), not {len} bytes")]
    BadNonce {
        /// Bytes it carried.
        len: usize,
    },
    /// The second `Hello` names another process than the first.
    #[error("the handshake began as {expected:?} and went on as {got:?}")]
    Switched {
        /// The first name.
        expected: String,
        /// The second.
        got: String,
    },
    /// The proof does not verify.
    #[error("{claimed:?} did not prove it holds the {what} of application {app:?}")]
    NotProven {
        /// The identity claimed.
        claimed: String,
        /// `secret` or `client key`.
        what: &'static str,
        /// The application.
        app: String,
    },
    /// A `Hello` after the handshake ended.
    #[error("this connection already completed its handshake")]
    AlreadyDone,
}

/// The accepting process: its application, id and secret.
#[derive(Debug, Clone, Copy)]
pub struct Acceptor<'a> {
    /// Its application.
    pub app: &'a str,
    /// Its process id.
    pub id: &'a str,
    /// The application's secret; without one every handshake is refused.
    pub secret: Option<&'a Secret>,
}

/// The accepting side of the handshake on one connection.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Acceptance {
    /// No `Hello` yet: invocations only.
    #[default]
    Anonymous,
    /// Challenge sent to `process` (a data-plane client if `client`), waiting for its proof.
    Challenged {
        /// The identity the first `Hello` claimed.
        process: String,
        /// The nonce it must answer.
        nonce: [u8; NONCE_LEN],
        /// A data-plane client (proving the client key).
        client: bool,
    },
    /// Proven to be `process` of this process's application, or (`client`) a data-plane client
    /// of it named so.
    Authenticated {
        /// Its name.
        process: String,
        /// A data-plane client.
        client: bool,
    },
    /// Refused; nothing more is served.
    Refused,
}

impl Acceptance {
    /// The process this connection proved to be, once authenticated (`None` for a client).
    pub fn peer(&self) -> Option<&str> {
        match self {
            Acceptance::Authenticated { process, client: false } => Some(process),
            _ => None,
        }
    }

    /// Whether the connection proved it holds the application's secret or its client key.
    pub fn authenticated(&self) -> bool {
        matches!(self, Acceptance::Authenticated { .. })
    }

    /// Takes one `Hello` (`meta`, `payload`): the answer's metadata and payload, or why it is
    /// refused (the state is then [`Acceptance::Refused`]).
    pub fn step(
        &mut self,
        me: &Acceptor<'_>,
        meta: &[u8],
        payload: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), HandshakeRefusal> {
        let result = self.advance(me, meta, payload);
        if result.is_err() {
            *self = Acceptance::Refused;
        }
        result
    }

    fn advance(
        &mut self,
        me: &Acceptor<'_>,
        meta: &[u8],
        payload: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), HandshakeRefusal> {
        // Without a secret there is no key to prove or check: nobody is authenticated (an empty
        // key would let in anyone who computes the proofs with the empty string).
        let Some(secret) = me.secret else {
            return Err(HandshakeRefusal::NoSecret);
        };
        let claimed = String::from_utf8_lossy(meta).into_owned();
        let Some((app, peer)) = claimed.split_once('/') else {
            return Err(HandshakeRefusal::BadIdentity { claimed });
        };
        if app != me.app {
            return Err(HandshakeRefusal::OtherApplication { me: me.id.to_owned() });
        }
        // A process proves the secret; a data-plane client the client key derived from it.
        let key = |client: bool| if client { secret.client_key() } else { secret.expose().to_owned() };
        match std::mem::take(self) {
            Acceptance::Anonymous => {
                let (their_nonce, client) = match payload {
                    [nonce @ .., CLIENT_MARK] if nonce.len() == NONCE_LEN => (nonce, true),
                    nonce if nonce.len() == NONCE_LEN => (nonce, false),
                    _ => return Err(HandshakeRefusal::BadNonce { len: payload.len() }),
                };
                let proof = auth::proof(&key(client), &role_nonce(SERVER_ROLE, their_nonce), me.app, me.id);
                let nonce = auth::nonce();
                *self = Acceptance::Challenged { process: peer.to_owned(), nonce, client };
                Ok((identity(me.app, me.id), [&nonce[..], &proof].concat()))
            }
            Acceptance::Challenged { process: expected, nonce, client } => {
                if peer != expected {
                    return Err(HandshakeRefusal::Switched { expected, got: peer.to_owned() });
                }
                if !auth::verify(&key(client), &role_nonce(CLIENT_ROLE, &nonce), me.app, peer, payload) {
                    let what = if client { "client key" } else { "secret" };
                    return Err(HandshakeRefusal::NotProven { claimed: claimed.clone(), what, app: app.to_owned() });
                }
                *self = Acceptance::Authenticated { process: peer.to_owned(), client };
                Ok((Vec::new(), Vec::new()))
            }
            Acceptance::Authenticated { .. } | Acceptance::Refused => Err(HandshakeRefusal::AlreadyDone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both sides of the handshake, wired back to back in memory.
    struct Loopback<'a> {
        acceptor: Acceptor<'a>,
        state: Acceptance,
        answers: Vec<OwnedFrame>,
    }

    impl HandshakeWire for Loopback<'_> {
        type Error = std::convert::Infallible;

        fn send_frame(&mut self, header: Header, meta: &[u8], payload: &[u8]) -> Result<(), Self::Error> {
            let (status, meta, payload) = match self.state.step(&self.acceptor, meta, payload) {
                Ok((meta, payload)) => (Status::Ok, meta, payload),
                Err(refusal) => (Status::Unauthenticated, refusal.to_string().into_bytes(), Vec::new()),
            };
            let header = Header {
                status: status.code(),
                meta_len: u16::try_from(meta.len()).expect("a refusal text of a few words"),
                payload_len: u32::try_from(payload.len()).expect("a nonce and a proof"),
                ..header
            };
            self.answers.push(OwnedFrame { header, meta, payload });
            Ok(())
        }

        fn recv_frame(&mut self) -> Result<OwnedFrame, Self::Error> {
            Ok(self.answers.remove(0))
        }
    }

    fn run(acceptor: Acceptor<'_>, who: &Introduction<'_>) -> (Result<(), String>, Acceptance) {
        let mut wire = Loopback { acceptor, state: Acceptance::default(), answers: Vec::new() };
        let result = introduce(&mut wire, who).map_err(|e| match e {
            HandshakeError::Refused(text) => text,
            HandshakeError::Wire(never) => match never {},
        });
        (result, wire.state)
    }

    #[test]
    fn the_right_key_authenticates_a_peer_and_a_client() {
        let secret = Secret::random();
        let acceptor = Acceptor { app: "app", id: "b", secret: Some(&secret) };
        let peer = Introduction { app: "app", me: "a", key: secret.expose(), client: false, to: Some("b") };
        let (result, state) = run(acceptor, &peer);
        assert_eq!(result, Ok(()));
        assert_eq!(state.peer(), Some("a"));
        let key = secret.client_key();
        let client = Introduction { app: "app", me: "sdk", key: &key, client: true, to: None };
        let (result, state) = run(acceptor, &client);
        assert_eq!(result, Ok(()));
        assert!(state.authenticated() && state.peer().is_none(), "a client is no peer");
    }

    #[test]
    fn wrong_keys_other_applications_and_no_secret_are_refused() {
        let secret = Secret::random();
        let other = Secret::random();
        let acceptor = Acceptor { app: "app", id: "b", secret: Some(&secret) };
        let wrong = Introduction { app: "app", me: "a", key: other.expose(), client: false, to: Some("b") };
        let (result, state) = run(acceptor, &wrong);
        assert!(result.unwrap_err().contains("could not prove"), "the connecting side finds the server's proof wrong");
        assert!(!state.authenticated());
        // And the accepting side refuses a proof made with another key.
        let mut state = Acceptance::default();
        state.step(&acceptor, b"app/a", &auth::nonce()).unwrap();
        let forged = auth::proof(other.expose(), b"whatever", "app", "a");
        let refused = state.step(&acceptor, b"app/a", &forged).unwrap_err();
        assert!(matches!(refused, HandshakeRefusal::NotProven { what: "secret", .. }), "{refused}");
        assert_eq!(state, Acceptance::Refused);
        let client_with_secret = Introduction { app: "app", me: "c", key: secret.expose(), client: true, to: None };
        assert!(run(acceptor, &client_with_secret).0.is_err(), "a client proves the client key, not the secret");
        let stranger = Introduction { app: "other", me: "a", key: secret.expose(), client: false, to: None };
        assert!(run(acceptor, &stranger).0.unwrap_err().contains("another application"));
        let open = Acceptor { secret: None, ..acceptor };
        let empty = Introduction { app: "app", me: "a", key: "", client: false, to: Some("b") };
        assert_eq!(run(open, &empty).0.unwrap_err(), NO_SECRET);
    }

    #[test]
    fn a_malformed_or_repeated_hello_is_refused() {
        let secret = Secret::random();
        let me = Acceptor { app: "app", id: "b", secret: Some(&secret) };
        let mut state = Acceptance::default();
        assert_eq!(
            state.step(&me, b"no-slash", &[0; NONCE_LEN]),
            Err(HandshakeRefusal::BadIdentity { claimed: "no-slash".into() })
        );
        assert_eq!(state, Acceptance::Refused);
        let mut state = Acceptance::default();
        assert_eq!(state.step(&me, b"app/a", &[0; 3]), Err(HandshakeRefusal::BadNonce { len: 3 }));
        let mut state = Acceptance::default();
        state.step(&me, b"app/a", &[0; NONCE_LEN]).unwrap();
        let switched = state.step(&me, b"app/z", &[0; PROOF_LEN]);
        assert_eq!(switched, Err(HandshakeRefusal::Switched { expected: "a".into(), got: "z".into() }));
        assert_eq!(Acceptance::Refused.clone().step(&me, b"app/a", &[]), Err(HandshakeRefusal::AlreadyDone));
    }
}
