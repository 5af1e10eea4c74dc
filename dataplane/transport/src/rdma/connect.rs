//! Connection set-up: an out-of-band exchange over TCP, then the queue pair's state changes.
//!
//! The client opens a TCP connection to the process's `rdma://HOST:PORT` and sends its
//! [`Endpoint`] (queue pair number, first PSN, GID, LID, MTU, receive-buffer size); the process
//! creates a queue pair for it, brings it to ready-to-send, and answers with its own endpoint and
//! the client's credits. Only then does the client bring its queue pair up, so the process's side
//! is always ready to receive before the client can send. The TCP connection stays open for the
//! life of the RDMA connection: when either side goes away (even killed), the other sees the
//! socket close at once and tears its side down. See `docs/rdma.md` for why this and not rdma_cm.
//!
//! The GID used is the one whose address is the local IP address of the TCP connection
//! (`::ffff:a.b.c.d` for IPv4, RoCE v2 preferred): the RoCE route follows the IP route.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, TcpStream};
use std::sync::Arc;

use rdma_sys::{ibv_access_flags, ibv_qp_attr, ibv_qp_attr_mask, ibv_qp_state};

use super::verbs::{QueuePair, VerbsContext, LINK_LAYER_ETHERNET};

/// First bytes of a handshake message.
const MAGIC: [u8; 4] = *b"PRDM";
/// Version of the handshake.
const VERSION: u8 = 1;
/// Bytes of an encoded [`Endpoint`].
pub const ENDPOINT_LEN: usize = 44;

/// Why a process refused a connection (the `status` of its endpoint answer).
pub const STATUS_OK: u32 = 0;
/// The process serves as many connections as its shared receive queue has credits for.
pub const STATUS_FULL: u32 = 1;
/// The process could not create the connection's verbs objects.
pub const STATUS_INTERNAL: u32 = 2;

/// One side's half of the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// `ibv_mtu` value of the active MTU.
    pub mtu: u8,
    /// Port LID (InfiniBand).
    pub lid: u16,
    /// Queue pair number.
    pub qpn: u32,
    /// First packet sequence number this side sends.
    pub psn: u32,
    /// GID of the address this side uses.
    pub gid: [u8; 16],
    /// From the process: messages the client may have in flight. From the client: 0.
    pub credits: u32,
    /// Largest SEND the other side may post to this side (its receive-buffer size).
    pub recv_size: u32,
    /// From the process: [`STATUS_OK`] or why the connection is refused.
    pub status: u32,
}

impl Endpoint {
    /// Wire form.
    pub fn encode(&self) -> [u8; ENDPOINT_LEN] {
        let mut out = [0u8; ENDPOINT_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = self.mtu;
        out[6..8].copy_from_slice(&self.lid.to_le_bytes());
        out[8..12].copy_from_slice(&self.qpn.to_le_bytes());
        out[12..16].copy_from_slice(&self.psn.to_le_bytes());
        out[16..32].copy_from_slice(&self.gid);
        out[32..36].copy_from_slice(&self.credits.to_le_bytes());
        out[36..40].copy_from_slice(&self.recv_size.to_le_bytes());
        out[40..44].copy_from_slice(&self.status.to_le_bytes());
        out
    }

    /// Parses an endpoint from untrusted bytes.
    pub fn decode(bytes: &[u8; ENDPOINT_LEN]) -> io::Result<Self> {
        if bytes[0..4] != MAGIC || bytes[4] != VERSION {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a praas RDMA handshake (or another version)"));
        }
        let le32 = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&bytes[16..32]);
        Ok(Self {
            mtu: bytes[5],
            lid: u16::from_le_bytes([bytes[6], bytes[7]]),
            qpn: le32(8),
            psn: le32(12),
            gid,
            credits: le32(32),
            recv_size: le32(36),
            status: le32(40),
        })
    }

    /// Reads one endpoint from `stream`.
    pub fn read_from(stream: &mut TcpStream) -> io::Result<Self> {
        let mut bytes = [0u8; ENDPOINT_LEN];
        stream.read_exact(&mut bytes)?;
        Self::decode(&bytes)
    }

    /// Writes this endpoint to `stream`.
    pub fn write_to(&self, stream: &mut TcpStream) -> io::Result<()> {
        stream.write_all(&self.encode())
    }
}

/// Where on the device a connection's traffic goes: port, GID index and GID.
#[derive(Debug, Clone, Copy)]
pub struct LocalPort {
    /// Port number (from 1).
    pub port: u8,
    /// Index of the GID in the port's table.
    pub gid_index: u8,
    /// The GID.
    pub gid: [u8; 16],
    /// The port's LID.
    pub lid: u16,
    /// The port's active MTU (`ibv_mtu`).
    pub mtu: u8,
}

/// Finds the port and GID of `context` that carry traffic from `ip`. On InfiniBand ports without
/// an IP-based GID, GID 0 (LID routing) is used.
pub fn local_port(context: &VerbsContext, ip: IpAddr) -> io::Result<LocalPort> {
    let ports = context.port_count()?;
    let mut fallback = None;
    for port in 1..=ports {
        let info = context.port(port)?;
        let mtu = u8::try_from(info.active_mtu).unwrap_or(3);
        if let Some((index, gid)) = context.gid_index_of(port, ip)? {
            let gid_index = u8::try_from(index).map_err(|_| io::Error::other("GID index beyond 255"))?;
            return Ok(LocalPort { port, gid_index, gid, lid: info.lid, mtu });
        }
        if info.link_layer != LINK_LAYER_ETHERNET && fallback.is_none() {
            let gid = context.gid(port, 0)?;
            fallback = Some(LocalPort { port, gid_index: 0, gid, lid: info.lid, mtu });
        }
    }
    fallback.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("RDMA device {} has no GID for {ip} (is the RoCE device on that interface?)", context.name()),
        )
    })
}

/// Finds a device with a GID for `ip`: the one named `preferred` if given, else the first.
pub fn device_for(ip: IpAddr, preferred: Option<&str>) -> io::Result<(Arc<VerbsContext>, LocalPort)> {
    let names = match preferred {
        Some(name) => vec![name.to_owned()],
        None => super::verbs::device_names()?,
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no RDMA device on this machine");
    for name in names {
        let context = VerbsContext::open(&name)?;
        if ip.is_unspecified() {
            // Bound to every address: GIDs are resolved per connection.
            return Ok((context, LocalPort { port: 1, gid_index: 0, gid: [0; 16], lid: 0, mtu: 3 }));
        }
        match local_port(&context, ip) {
            Ok(port) => return Ok((context, port)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Where an RDMA transport listens, as `praas process serve --rdma-listen` and the control
/// plane's `--process-rdma` say it: `auto` (the IP address of an RDMA device: `PRAAS_RDMA_DEVICE`,
/// else the first that has one), an IP address (port 0: any free port) or `IP:PORT`.
pub fn listen_address(spec: &str) -> io::Result<std::net::SocketAddr> {
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    if spec == "auto" {
        let preferred = std::env::var("PRAAS_RDMA_DEVICE").ok().filter(|d| !d.is_empty());
        let (_, ip) = device_address(preferred.as_deref())?;
        return Ok(std::net::SocketAddr::new(ip, 0));
    }
    if let Ok(addr) = spec.parse() {
        return Ok(addr);
    }
    let ip: IpAddr = spec.parse().map_err(|_| invalid(format!("{spec:?} is not auto, an IP address or IP:PORT")))?;
    Ok(std::net::SocketAddr::new(ip, 0))
}

/// An IP address an RDMA device carries (a RoCE GID; IPv4 first), from sysfs: the device named
/// `preferred`, else the first device that has one. Returns the device and the address.
pub fn device_address(preferred: Option<&str>) -> io::Result<(String, IpAddr)> {
    let names = match preferred {
        Some(name) => vec![name.to_owned()],
        None => super::verbs::device_names()
            .map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("no RDMA device on this machine ({e})")))?,
    };
    for name in &names {
        let ports = std::path::Path::new("/sys/class/infiniband").join(name).join("ports");
        let mut found: Vec<IpAddr> = Vec::new();
        for port in std::fs::read_dir(&ports).into_iter().flatten().flatten() {
            for gid in std::fs::read_dir(port.path().join("gids")).into_iter().flatten().flatten() {
                if let Some(ip) = std::fs::read_to_string(gid.path()).ok().and_then(|text| gid_address(&text)) {
                    found.push(ip);
                }
            }
        }
        found.sort_by_key(|ip| !ip.is_ipv4());
        if let Some(ip) = found.first() {
            return Ok((name.clone(), *ip));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!("no RDMA device with an IP address (devices: {names:?}; RoCE devices carry their netdev's addresses)"),
    ))
}

/// The IP address in a GID as sysfs shows it (`0000:0000:0000:0000:0000:ffff:0a4d:0001`), if it
/// holds one: an IPv4-mapped GID, or an IPv6 one that is neither unset nor link-local.
fn gid_address(text: &str) -> Option<IpAddr> {
    let ip: std::net::Ipv6Addr = text.trim().parse().ok()?;
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(IpAddr::V4(v4));
    }
    let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
    (!ip.is_unspecified() && !link_local).then_some(IpAddr::V6(ip))
}

/// A random first packet sequence number (24 bits).
pub fn random_psn() -> u32 {
    let mut bytes = [0u8; 4];
    // A fixed PSN is only a weaker guard against stale packets; never fail set-up for it.
    let _ = getrandom::fill(&mut bytes);
    u32::from_le_bytes(bytes) & 0x00ff_ffff
}

fn zeroed_attr() -> ibv_qp_attr {
    // SAFETY: all-zero is a valid ibv_qp_attr (integers, and unions of integers and arrays).
    unsafe { MaybeUninit::zeroed().assume_init() }
}

/// Brings `qp` from RESET through INIT and RTR to RTS, connected to `remote`.
pub fn bring_up(qp: &QueuePair, local: &LocalPort, psn: u32, remote: &Endpoint) -> io::Result<()> {
    to_init(qp, local)?;
    to_rts(qp, local, psn, remote)
}

/// Brings `qp` from RESET to INIT (receives may be posted from here on).
pub fn to_init(qp: &QueuePair, local: &LocalPort) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.qp_state = ibv_qp_state::IBV_QPS_INIT;
    attr.pkey_index = 0;
    attr.port_num = local.port;
    attr.qp_access_flags = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
    qp.modify(
        &mut attr,
        ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_PKEY_INDEX
            | ibv_qp_attr_mask::IBV_QP_PORT
            | ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS,
    )
}

/// Brings `qp` from INIT through RTR to RTS, connected to `remote`.
pub fn to_rts(qp: &QueuePair, local: &LocalPort, psn: u32, remote: &Endpoint) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.qp_state = ibv_qp_state::IBV_QPS_RTR;
    attr.path_mtu = u32::from(local.mtu.min(remote.mtu).max(1));
    attr.dest_qp_num = remote.qpn;
    attr.rq_psn = remote.psn;
    attr.max_dest_rd_atomic = 1;
    attr.min_rnr_timer = 12;
    attr.ah_attr.is_global = 1;
    attr.ah_attr.dlid = remote.lid;
    attr.ah_attr.port_num = local.port;
    attr.ah_attr.grh.dgid.raw = remote.gid;
    attr.ah_attr.grh.sgid_index = local.gid_index;
    attr.ah_attr.grh.hop_limit = 64;
    qp.modify(
        &mut attr,
        ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_AV
            | ibv_qp_attr_mask::IBV_QP_PATH_MTU
            | ibv_qp_attr_mask::IBV_QP_DEST_QPN
            | ibv_qp_attr_mask::IBV_QP_RQ_PSN
            | ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC
            | ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER,
    )?;

    let mut attr = zeroed_attr();
    attr.qp_state = ibv_qp_state::IBV_QPS_RTS;
    attr.sq_psn = psn;
    attr.timeout = 14;
    attr.retry_cnt = 7;
    attr.rnr_retry = 7;
    attr.max_rd_atomic = 1;
    qp.modify(
        &mut attr,
        ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_SQ_PSN
            | ibv_qp_attr_mask::IBV_QP_TIMEOUT
            | ibv_qp_attr_mask::IBV_QP_RETRY_CNT
            | ibv_qp_attr_mask::IBV_QP_RNR_RETRY
            | ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_name_their_addresses() {
        assert_eq!(gid_address("0000:0000:0000:0000:0000:ffff:0a4d:0001\n"), Some("10.77.0.1".parse().unwrap()));
        assert_eq!(gid_address("fe80:0000:0000:0000:5054:00ff:fe12:3456"), None);
        assert_eq!(gid_address("0000:0000:0000:0000:0000:0000:0000:0000"), None);
        assert_eq!(gid_address("2001:0db8:0000:0000:0000:0000:0000:0001"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(gid_address("garbage"), None);
        assert_eq!(listen_address("10.0.0.1").unwrap(), "10.0.0.1:0".parse().unwrap());
        assert_eq!(listen_address("10.0.0.1:7").unwrap(), "10.0.0.1:7".parse().unwrap());
        assert!(listen_address("nowhere").is_err());
    }

    #[test]
    fn endpoints_round_trip_and_foreign_bytes_are_refused() {
        let e = Endpoint {
            mtu: 3,
            lid: 7,
            qpn: 0x11,
            psn: 0xabcdef,
            gid: [9; 16],
            credits: 16,
            recv_size: 8192,
            status: STATUS_OK,
        };
        assert_eq!(Endpoint::decode(&e.encode()).unwrap(), e);
        let mut bad = e.encode();
        bad[0] = b'X';
        assert!(Endpoint::decode(&bad).is_err());
    }
}
