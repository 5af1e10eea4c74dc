//! An application of several praas processes for the benchmarks that run between processes
//! (`remote-invoke`, `reduce`): each a `serve-praas` child with the application's secret, on a
//! port chosen up front so that every process is told every other's address, and a client of
//! each for the bench to start functions with.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use praas_dataplane::{Client, ClientOptions};
use tempfile::NamedTempFile;

use crate::child::ChildServer;
use crate::cli::TransportKind;
use crate::functions;

/// Where a process of the application runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cpu {
    /// Pinned to this CPU (every thread of it).
    Pinned(usize),
    /// Free to run on every online CPU.
    Any,
}

/// The running processes (dropping it ends them) and a client of each.
#[derive(Debug)]
pub struct Application {
    ids: Vec<String>,
    clients: Vec<Client>,
    // Dropped after the clients: their processes end when these go.
    _processes: Vec<ChildServer>,
    _manifest: NamedTempFile,
}

fn free_port() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    listener.local_addr().map_err(|e| e.to_string())
}

impl Application {
    /// Starts one process per `(id, cpu)`, serving the bench's manifest over `transport` with one
    /// worker each, every one a peer of all the others; waits at most `timeout` for each.
    pub fn start(processes: &[(String, Cpu)], transport: TransportKind, timeout: Duration) -> Result<Self, String> {
        let library = functions::library()?;
        let manifest = functions::write_manifest(&library)?;
        let secret = praas_dataplane::auth::new_secret();
        let addrs = processes.iter().map(|_| free_port()).collect::<Result<Vec<_>, _>>()?;
        // The secret goes through the environment: a command line is visible to every user (`ps`).
        let env = [(crate::serve::SECRET_VAR, secret.as_str())];
        let mut children = Vec::with_capacity(processes.len());
        for (index, (id, cpu)) in processes.iter().enumerate() {
            let mut args: Vec<OsString> = vec![
                "serve-praas".into(),
                "--manifest".into(),
                manifest.path().into(),
                "--id".into(),
                id.into(),
                "--listen".into(),
                addrs[index].to_string().into(),
                "--transport".into(),
                transport.name().into(),
            ];
            match cpu {
                Cpu::Pinned(cpu) => args.extend(["--cpu".into(), cpu.to_string().into()]),
                Cpu::Any => args.extend(["--cpu".into(), "0".into(), "--all-cpus".into()]),
            }
            for (other, (peer, _)) in processes.iter().enumerate() {
                if other != index {
                    args.extend(["--peer".into(), format!("{peer}={}", addrs[other]).into()]);
                }
            }
            children.push(ChildServer::spawn_with_env(&format!("process {id}"), &args, &env, None, timeout)?);
        }
        let options = ClientOptions {
            timeout,
            transport: praas_dataplane::transport::TransportKind::Mio,
            ..ClientOptions::default()
        };
        let mut clients = Vec::with_capacity(children.len());
        for (child, (id, _)) in children.iter().zip(processes) {
            clients
                .push(Client::connect_with(child.addr(), options.clone()).map_err(|e| format!("process {id}: {e}"))?);
        }
        Ok(Self {
            ids: processes.iter().map(|(id, _)| id.clone()).collect(),
            clients,
            _processes: children,
            _manifest: manifest,
        })
    }

    /// The client of process `id`.
    pub fn client(&mut self, id: &str) -> Result<&mut Client, String> {
        let index = self.ids.iter().position(|i| i == id).ok_or_else(|| format!("no process {id:?} was started"))?;
        Ok(&mut self.clients[index])
    }

    /// The clients of the processes `ids`, in their order (each named once).
    pub fn clients_of(&mut self, ids: &[String]) -> Result<Vec<&mut Client>, String> {
        let mut wanted: Vec<(usize, &mut Client)> = Vec::with_capacity(ids.len());
        for (index, client) in self.clients.iter_mut().enumerate() {
            if let Some(at) = ids.iter().position(|id| *id == self.ids[index]) {
                wanted.push((at, client));
            }
        }
        if wanted.len() != ids.len() {
            return Err(format!("not every one of {ids:?} was started (once): {:?}", self.ids));
        }
        wanted.sort_by_key(|(at, _)| *at);
        Ok(wanted.into_iter().map(|(_, client)| client).collect())
    }

    /// Invokes `function` of process `id` and waits for its output.
    pub fn invoke(&mut self, id: &str, function: &str, input: &[u8]) -> Result<Vec<u8>, String> {
        self.client(id)?.invoke(function, input).map_err(|e| format!("{function} on {id}: {e}"))
    }
}

/// Little-endian u64 nanoseconds (as the benchmark functions return them) into a histogram,
/// the first `warmup` dropped; fails unless there are exactly `total`.
pub fn times(bytes: &[u8], warmup: u64, total: u64, what: &str) -> Result<hdrhistogram::Histogram<u64>, String> {
    if bytes.len() as u64 != total * 8 {
        return Err(format!("{what} returned {} bytes, not the {total} timings asked for", bytes.len()));
    }
    let mut hist = crate::report::histogram();
    for chunk in bytes.chunks_exact(8).skip(warmup as usize) {
        hist.saturating_record(u64::from_le_bytes(chunk.try_into().expect("8 bytes")).max(1));
    }
    Ok(hist)
}
