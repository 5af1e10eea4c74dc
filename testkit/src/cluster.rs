//! Processes of one application served inside the test process, that know each other as the
//! control plane would tell them ([`Node`], [`introduce`]), for the tests of messages and remote
//! invocations between processes.

use std::sync::Arc;

use praas_dataplane::lifecycle::ProcessStatus;
use praas_dataplane::peer::PeerInfo;
use praas_dataplane::transport::TransportKind;
use praas_dataplane::{ClientError, Manifest, Process, ProcessConfig, ServerHandle, Status};

/// One process and the server it is reached at (stopped when dropped).
pub struct Node {
    /// The process.
    pub process: Arc<Process>,
    /// Its server on a loopback port.
    pub server: ServerHandle,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("process", &self.process.id()).field("addr", &self.server.local_addr()).finish()
    }
}

impl Node {
    /// Serves `manifest` as a process configured by `config` over `kind`.
    pub fn start(kind: TransportKind, manifest: &Manifest, config: ProcessConfig) -> Self {
        let (process, server) = crate::serve_on(kind, manifest, config);
        Self { process, server }
    }

    /// How its peers know it: ALLOCATED, at its server's address.
    pub fn info(&self) -> PeerInfo {
        PeerInfo {
            id: self.process.id().to_owned(),
            addr: self.server.local_addr().to_string(),
            rdma: None,
            status: ProcessStatus::Allocated,
        }
    }
}

/// Tells every node about all of them, as the control plane's peer update would.
pub fn introduce(nodes: &[Node]) {
    let infos: Vec<PeerInfo> = nodes.iter().map(Node::info).collect();
    for node in nodes {
        node.process.peers().update(infos.clone());
    }
}

/// The status and message of an error response; panics on any other error.
#[track_caller]
pub fn remote_error(err: ClientError) -> (Status, String) {
    match err {
        ClientError::Remote { status, message } => (status, message),
        other => panic!("expected an error response, got {other:?}"),
    }
}
