//! Floods of connections against a process on loopback, and what the process costs meanwhile:
//! for the tests of its connection limits, timeouts and memory ([`open`], [`vm_rss_kib`],
//! [`open_fds`], [`raise_nofile_limit`]). Every connection is a real socket, closed when dropped.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use praas_dataplane::protocol::{Header, HEADER_LEN};

/// What each connection of a flood sends, and then nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    /// Nothing at all.
    Idle,
    /// The first 10 bytes of a header.
    PartialHeader,
    /// A whole header announcing an invocation with a 64 MiB body.
    Announce64MiB,
}

impl Flood {
    /// The bytes such a connection sends.
    pub fn bytes(self) -> Vec<u8> {
        let header = Header::invoke(7, 4, 0, (64 << 20) - 4).encode();
        match self {
            Self::Idle => Vec::new(),
            Self::PartialHeader => header[..10].to_vec(),
            Self::Announce64MiB => header[..HEADER_LEN].to_vec(),
        }
    }
}

/// Opens `n` connections to `addr`, each sending what `kind` says.
pub fn open(addr: SocketAddr, n: usize, kind: Flood) -> io::Result<Vec<TcpStream>> {
    let bytes = kind.bytes();
    (0..n).map(|_| connect(addr, &bytes)).collect()
}

/// As [`open`], to the process `pid`, never more than 1,024 ahead of what it accepted (its
/// descriptors tell): a flood faster than the process accepts overflows the kernel's accept
/// queue, and connects then wait a second for their SYN's retry.
pub fn open_paced(addr: SocketAddr, n: usize, kind: Flood, pid: u32) -> io::Result<Vec<TcpStream>> {
    let bytes = kind.bytes();
    let start = open_fds(pid);
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n {
        let batch = (n - conns.len()).min(512);
        for _ in 0..batch {
            conns.push(connect(addr, &bytes)?);
        }
        let behind = conns.len().saturating_sub(1024);
        crate::wait_until(Duration::from_secs(20), "the process to accept the flood's connections", || {
            open_fds(pid) >= start + behind
        });
    }
    Ok(conns)
}

fn connect(addr: SocketAddr, bytes: &[u8]) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    if !bytes.is_empty() {
        stream.write_all(bytes)?;
    }
    Ok(stream)
}

/// The soft limit of open files raised to the hard one (a flood needs a descriptor per
/// connection, and the processes started after inherit it); returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    praas_dataplane::connection::raise_descriptor_limit(None).expect("raise the open-file limit")
}

/// The resident memory of process `pid` in KiB (`VmRSS` in `/proc/PID/status`).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_sends_what_its_kind_says() {
        assert!(Flood::Idle.bytes().is_empty());
        assert_eq!(Flood::PartialHeader.bytes().len(), 10);
        let head = Flood::Announce64MiB.bytes();
        let header = Header::decode(head.first_chunk().unwrap(), Default::default()).unwrap();
        assert_eq!(header.body_len(), 64 << 20);
        assert!(vm_rss_kib(std::process::id()).unwrap() > 0);
        assert!(open_fds(std::process::id()) >= 3);
    }
}
