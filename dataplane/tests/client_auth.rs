//! Processes that serve authenticated clients only (`ProcessConfig::client_auth`), on both
//! transports (`mio::*` and `uring::*`): clients prove they hold the application's client key.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration;

use praas_dataplane::auth;
use praas_dataplane::protocol::{Header, MessageKind};
use praas_dataplane::transport::TransportKind;
use praas_dataplane::{
    Client, ClientError, ClientOptions, Credentials, FunctionRegistry, Process, ProcessConfig, Secret, ServerHandle,
    Status,
};
use praas_testkit::raw::RawConnection;
use praas_testkit::{example_manifest, pattern, serve_on};

const APP: &str = "guarded-app";
const SECRET: &str = "the secret of guarded-app";

fn config() -> ProcessConfig {
    ProcessConfig {
        id: "guarded".into(),
        app: APP.into(),
        secret: Secret::new(SECRET).ok(),
        client_auth: true,
        workers: 2,
        ..ProcessConfig::default()
    }
}

fn start(kind: TransportKind) -> (Arc<Process>, ServerHandle) {
    serve_on(kind, &example_manifest(), config())
}

fn credentials(key: &str) -> Credentials {
    Credentials { app: APP.into(), name: "tester".into(), key: key.into() }
}

fn connect(
    kind: TransportKind,
    server: &ServerHandle,
    credentials: Option<Credentials>,
) -> Result<Client, ClientError> {
    let options =
        ClientOptions { timeout: Duration::from_secs(10), transport: kind, credentials, ..ClientOptions::default() };
    Client::connect_with(server.local_addr(), options)
}

fn unauthenticated(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Err(ClientError::Remote { status: Status::Unauthenticated, message }) => message,
        other => panic!("expected an Unauthenticated refusal, got {other:?}"),
    }
}

fn a_client_with_the_client_key_is_served(kind: TransportKind) {
    let (process, server) = start(kind);
    let mut client = connect(kind, &server, Some(credentials(&auth::client_key(SECRET)))).unwrap();
    for i in 0..50u64 {
        let input = pattern(1 + (i as usize * 1031) % 100_000, i);
        assert!(client.invoke("echo", &input).unwrap() == input, "invocation {i}");
    }
    assert_eq!(process.metrics().invocations(), 50);
}

fn an_anonymous_client_is_refused_and_disconnected(kind: TransportKind) {
    let (process, server) = start(kind);
    let mut client = connect(kind, &server, None).unwrap();
    let message = unauthenticated(client.invoke("echo", b"let me in"));
    assert!(message.contains("client key") && message.contains(APP), "{message}");
    assert!(client.invoke("echo", b"again").is_err(), "the connection is closed");
    assert_eq!(process.metrics().invocations(), 0);
}

fn a_wrong_key_the_secret_itself_or_another_application_is_refused(kind: TransportKind) {
    let (process, server) = start(kind);
    let wrong = [
        credentials(&auth::client_key("another application's secret")),
        // The secret authenticates processes, not clients.
        credentials(SECRET),
        Credentials { app: "other-app".into(), ..credentials(&auth::client_key(SECRET)) },
    ];
    for credentials in wrong {
        let message = unauthenticated(connect(kind, &server, Some(credentials.clone())));
        assert!(!message.is_empty(), "{credentials:?}");
    }
    // The process serves on.
    let mut client = connect(kind, &server, Some(credentials(&auth::client_key(SECRET)))).unwrap();
    assert_eq!(client.invoke("echo", b"still serving").unwrap(), b"still serving");
    assert_eq!(process.metrics().invocations(), 1);
}

fn a_client_cannot_pass_for_a_process(kind: TransportKind) {
    let (process, server) = start(kind);
    // An authenticated client (the handshake the SDK runs, over a plain socket)...
    let mut raw = RawConnection::connect(server.local_addr(), Duration::from_secs(10)).unwrap();
    raw.authenticate(&credentials(&auth::client_key(SECRET))).expect("the client key is accepted");
    // ...sends a message to the process's mailbox: what only processes of the application may send.
    let header = Header { kind: MessageKind::Message, meta_len: 3, status: 0, id: 7, timeout_ms: 0, payload_len: 4 };
    raw.send(&[&header.encode()[..], b"key", b"data"].concat()).unwrap();
    let frames = raw.frames_until_closed(Duration::from_secs(10));
    let [refusal] = &frames[..] else { panic!("one refusal before the close, got {frames:?}") };
    assert_eq!((refusal.header.kind, refusal.header.id), (MessageKind::MessageAck, 7), "{refusal:?}");
    assert_eq!(Status::from_code(refusal.header.status), Status::Unauthenticated, "{refusal:?}");
    assert!(process.mailbox().is_empty(), "nothing reached the mailbox");
    // The process serves the others on.
    let mut client = connect(kind, &server, Some(credentials(&auth::client_key(SECRET)))).unwrap();
    assert_eq!(client.invoke("echo", b"after").unwrap(), b"after");
}

on_both_transports!(
    a_client_with_the_client_key_is_served,
    an_anonymous_client_is_refused_and_disconnected,
    a_wrong_key_the_secret_itself_or_another_application_is_refused,
    a_client_cannot_pass_for_a_process,
);

#[test]
fn client_authentication_needs_a_secret() {
    let functions = FunctionRegistry::load(&example_manifest()).unwrap();
    let err = Process::start(ProcessConfig { secret: None, ..config() }, functions).unwrap_err();
    assert!(err.to_string().contains("secret"), "{err}");
}
