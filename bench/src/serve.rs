//! The server children: a praas process on the transport under test, and the raw TCP echo baseline.
//! Each pins itself before it starts a thread, so every thread it runs inherits the placement.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use praas_dataplane::control_channel::PeerList;
use praas_dataplane::lifecycle::ProcessStatus;
use praas_dataplane::peer::PeerInfo;
use praas_dataplane::serve::ConnectionLimits;
use praas_dataplane::{FunctionRegistry, Manifest, Process, ProcessConfig};

use crate::child::{announce, wait_for_stdin_close};
use crate::cli::{ServePraasArgs, ServeRawArgs};
use crate::placement::{pin_current_thread, unpin_current_thread};

/// The environment variable a `serve-praas` child takes the application's secret from (absent or
/// empty: none, and the process refuses every peer).
pub const SECRET_VAR: &str = "PRAAS_SECRET";

const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// `serve-praas`: a process with `--workers` workers (default one) serving the manifest's
/// functions, with the application's secret from [`SECRET_VAR`]; pinned to `--cpu`, or with
/// `--all-cpus` free to run on every online CPU.
pub fn praas(args: &ServePraasArgs) -> Result<(), String> {
    if args.all_cpus {
        unpin_current_thread()?;
    } else {
        pin_current_thread(args.cpu)?;
    }
    let manifest = Manifest::from_file(&args.manifest).map_err(|e| e.to_string())?;
    let functions = FunctionRegistry::load(&manifest).map_err(|e| e.to_string())?;
    let config = ProcessConfig {
        id: args.id.clone(),
        app: "bench".into(),
        secret: std::env::var(SECRET_VAR).ok().and_then(|secret| praas_dataplane::Secret::new(secret).ok()),
        workers: usize::try_from(args.workers).map_err(|_| format!("{} workers are too many", args.workers))?,
        function_stats: !args.no_function_stats,
        connection_limits: connection_limits(args),
        ..ProcessConfig::default()
    };
    let process = Process::start(config, functions).map_err(|e| format!("cannot start the process: {e}"))?;
    let mut peers = Vec::new();
    for peer in &args.peer {
        let (id, addr) = peer.split_once('=').ok_or_else(|| format!("--peer {peer:?} is not ID=HOST:PORT"))?;
        peers.push(PeerInfo { id: id.into(), addr: addr.into(), rdma: None, status: ProcessStatus::Allocated });
    }
    process.set_peers(PeerList { peers });
    let kind = args.transport.dataplane();
    let transport = praas_dataplane::transport::bind(kind, args.listen, Arc::clone(&process))
        .map_err(|e| format!("cannot serve with {kind} on {}: {e}", args.listen))?;
    let server = transport.spawn().map_err(|e| format!("cannot start the {kind} transport: {e}"))?;
    announce(server.local_addr()).map_err(|e| format!("cannot print the address: {e}"))?;
    wait_for_stdin_close();
    server.stop().map_err(|e| format!("transport failed: {e}"))
}

/// The connection limits `--max-connections` and `--max-connections-per-source` ask for.
fn connection_limits(args: &ServePraasArgs) -> ConnectionLimits {
    let default = ConnectionLimits::default();
    ConnectionLimits {
        max_connections: args.max_connections.unwrap_or(default.max_connections),
        max_per_source: args.max_connections_per_source.unwrap_or(default.max_per_source),
        ..default
    }
}

/// `serve-raw`: the blocking echo server of the baseline.
pub fn raw(args: &ServeRawArgs) -> Result<(), String> {
    pin_current_thread(args.cpu)?;
    let listener = TcpListener::bind(LOOPBACK).map_err(|e| format!("cannot listen on {LOOPBACK}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("raw-accept".into())
        .spawn(move || {
            if let Err(e) = crate::raw_tcp::serve(listener) {
                eprintln!("raw echo server: accept failed: {e}");
            }
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    announce(addr).map_err(|e| format!("cannot print the address: {e}"))?;
    wait_for_stdin_close();
    Ok(())
}
