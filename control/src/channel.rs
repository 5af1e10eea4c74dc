//! The control plane's end of the control channel (see `praas_dataplane::control_channel` for the
//! conversation): authenticates each process by its application's secret, registers it, and
//! feeds its metrics and swap confirmations to the [`ControlPlane`].

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use praas_dataplane::auth;
use praas_dataplane::control_channel::{
    read_json, unhex, FrameStream, HelloMessage, MetricsReport, SwapConfirmation, MAX_HANDSHAKE_FRAME,
};
use praas_dataplane::protocol::{Header, MessageKind, Status};

use crate::controller::{ControlLink, ControlPlane};

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// Listens for processes on `addr`; returns the bound address. Serves on background threads.
pub fn listen(plane: ControlPlane, addr: SocketAddr) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("praas-control-channel".into()).spawn(move || {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    let plane = plane.clone();
                    let spawned = std::thread::Builder::new()
                        .name("praas-control-link".into())
                        .spawn(move || serve(&plane, stream));
                    if let Err(e) = spawned {
                        tracing::error!("cannot serve a control connection: {e}");
                    }
                }
                Err(e) => tracing::warn!("control channel accept failed: {e}"),
            }
        }
    })?;
    Ok(local)
}

fn respond(channel: &mut FrameStream, status: Status, message: &str) -> io::Result<()> {
    let header = Header::response(0, status, 0, 0);
    channel.send(header, message.as_bytes(), &[])
}

fn serve(plane: &ControlPlane, stream: TcpStream) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let writer = match stream.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => return tracing::warn!(%peer, "control connection: {e}"),
    };
    let mut channel = FrameStream::new(stream);
    match handshake(plane, &mut channel, writer) {
        Ok(Some((app, process, link_id))) => {
            let result = follow(plane, &mut channel, &app, &process);
            plane.on_link_closed(&app, &process, link_id);
            if let Err(e) = result {
                tracing::debug!(%peer, app, process, "control connection ended: {e}");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(%peer, "control handshake failed: {e}"),
    }
}

/// Challenges the peer, checks its proof and registers it; `None` if it was refused.
fn handshake(
    plane: &ControlPlane,
    channel: &mut FrameStream,
    writer: Arc<Mutex<TcpStream>>,
) -> io::Result<Option<(String, String, u64)>> {
    let nonce = auth::nonce();
    let hello = Header { kind: MessageKind::Hello, meta_len: 0, status: 0, id: 0, timeout_ms: 0, payload_len: 0 };
    channel.send(hello, &[], &nonce)?;
    // Before the peer proved who it is, a frame may be small only: nothing it announces costs
    // more than that.
    let frame = channel.recv_within(Duration::from_secs(10), MAX_HANDSHAKE_FRAME)?.ok_or(io::ErrorKind::TimedOut)?;
    if frame.header.kind != MessageKind::Hello {
        respond(channel, Status::Malformed, "the first frame must be Hello")?;
        return Ok(None);
    }
    let message: HelloMessage = read_json(&frame)?;
    let registration = &message.registration;
    let proof = unhex(&message.proof).unwrap_or_default();
    let authentic = plane
        .app_secret(&registration.app)
        .is_some_and(|secret| auth::verify(&secret, &nonce, &registration.app, &registration.process, &proof));
    if !authentic {
        tracing::warn!(app = registration.app, process = registration.process, "refused: authentication failed");
        respond(channel, Status::InvalidArgument, "authentication failed: wrong application secret")?;
        return Ok(None);
    }
    let link_id = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
    // Hold the link's writer until the answer is out: once registered, the link is visible to
    // other threads' peer updates, which must not reach the process before its answer.
    let shared = Arc::clone(&writer);
    let answering = writer.lock().unwrap_or_else(|p| p.into_inner());
    let answer = match plane.on_register(registration, ControlLink { id: link_id, writer: shared }) {
        Ok(answer) => answer,
        Err(refusal) => {
            respond(channel, Status::InvalidArgument, &refusal.to_string())?;
            return Ok(None);
        }
    };
    let payload = serde_json::to_vec(&answer).map_err(io::Error::other)?;
    channel.send(Header::response(0, Status::Ok, 0, 0), &[], &payload)?;
    drop(answering);
    if answer.swap_committed {
        // Not registered: the process exits once it read this.
        return Ok(None);
    }
    plane.announce_peers(&registration.app);
    Ok(Some((registration.app.clone(), registration.process.clone(), link_id)))
}

fn follow(plane: &ControlPlane, channel: &mut FrameStream, app: &str, process: &str) -> io::Result<()> {
    loop {
        let Some(frame) = channel.recv(Duration::from_secs(3600))? else { continue };
        match frame.header.kind {
            MessageKind::Metrics => {
                plane.on_metrics(app, process, read_json::<MetricsReport>(&frame)?);
            }
            MessageKind::SwapConfirm => plane.on_swap_confirm(app, process, read_json::<SwapConfirmation>(&frame)?),
            MessageKind::Pong => {}
            other => tracing::warn!(app, process, "unexpected {other:?} on the control channel"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_of_processes_that_predate_function_figures_still_parse() {
        let plain = r#"{"invocations":1,"local_invocations":0,"compute_ns":5,"last_invocation_ns":0,
            "in_flight":0,"state_keys":0,"state_bytes":0}"#;
        let report: MetricsReport = serde_json::from_str(plain).unwrap();
        assert_eq!(report.invocations, 1);
        assert!(report.functions.is_empty());
        let full = r#"{"invocations":1,"local_invocations":0,"compute_ns":5,"last_invocation_ns":0,
            "in_flight":0,"state_keys":0,"state_bytes":0,"mailbox_depth":3,
            "functions":[{"name":"echo","latency":{"buckets":[[40,2]],"sum_ns":9000,"max_ns":5000},"errors":[[1,1]]}]}"#;
        let report: MetricsReport = serde_json::from_str(full).unwrap();
        assert_eq!((report.mailbox_depth, report.functions[0].latency.count()), (3, 2));
    }
}
