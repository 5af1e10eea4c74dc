//! The Redis baseline of `praas-bench message --redis` (the comparison of the PraaS paper's
//! section 6.2): a real `redis-server` started on a free loopback port with persistence off,
//! carrying the same ping-pong as the praas processes through `LPUSH`/`BLPOP` on two lists, with
//! two clients that speak RESP over a blocking `TcpStream`.
//!
//! One round trip: client A `LPUSH ping <bytes>` (acknowledged by Redis once stored, as a praas
//! put is by its destination), `BLPOP pong`; client B `BLPOP ping`, `LPUSH pong <bytes>`.

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use thiserror::Error;

use crate::placement;
use crate::report;

/// The Debian package that has `redis-server` (`scripts/setup.sh` installs it).
pub const PACKAGE: &str = "redis-server";

/// How long a stopped `redis-server` may take to leave before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// Why the Redis baseline could not run.
#[derive(Debug, Error)]
pub enum RedisError {
    /// No `redis-server` on the `PATH`.
    #[error("redis-server is not installed (asked for by --redis): install the Debian package {PACKAGE} (scripts/setup.sh does)")]
    NotInstalled,
    /// It could not be started.
    #[error("cannot start {path}: {source}")]
    Start {
        /// The executable.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// It exited before it answered.
    #[error("redis-server exited ({0}) before it answered PING")]
    Exited(std::process::ExitStatus),
    /// It did not answer within the time allowed.
    #[error("redis-server on {addr} did not answer PING within {timeout:?}")]
    NotReady {
        /// Where it should listen.
        addr: SocketAddr,
        /// The time allowed.
        timeout: Duration,
    },
    /// A socket call failed (`doing` says which).
    #[error("redis {doing}: {source}")]
    Io {
        /// What the client was doing.
        doing: &'static str,
        /// What failed.
        source: io::Error,
    },
    /// Redis answered with an error reply.
    #[error("redis answered {0:?}")]
    Reply(String),
    /// Redis answered what RESP does not say, or what the command does not answer.
    #[error("unexpected redis reply: {0}")]
    Protocol(String),
    /// A thread of the ping-pong failed.
    #[error("{0}")]
    Thread(String),
}

fn io_error(doing: &'static str) -> impl FnOnce(io::Error) -> RedisError {
    move |source| RedisError::Io { doing, source }
}

/// `redis-server` on the `PATH`, if there is one.
pub fn find_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("redis-server")).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running `redis-server`; dropping it stops it (SIGTERM, then SIGKILL after a grace time)
/// and reaps it, on every path out of the benchmark.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    addr: SocketAddr,
    /// Its working folder (nothing is written there with persistence off; removed on drop).
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free port of 127.0.0.1 with persistence off (no RDB snapshots,
    /// no append-only file), pinned to `cpu` (`None`: free to run on every online CPU), and waits
    /// at most `timeout` until it answers PING.
    pub fn start(cpu: Option<usize>, timeout: Duration) -> Result<Self, RedisError> {
        let path = find_server().ok_or(RedisError::NotInstalled)?;
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").map_err(io_error("finding a free port"))?;
            listener.local_addr().map_err(io_error("finding a free port"))?
        };
        let dir = tempfile::tempdir().map_err(io_error("making its working folder"))?;
        let mut command = Command::new(&path);
        command
            .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--logfile", "", "--loglevel", "warning"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // Its threads inherit the CPU mask of the thread that starts it: start it from a thread
        // pinned to `cpu`, so the server runs where the praas processes do.
        let child = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    match cpu {
                        Some(cpu) => placement::pin_current_thread(cpu),
                        None => placement::unpin_current_thread(),
                    }
                    .map_err(|e| RedisError::Thread(format!("pinning: {e}")))?;
                    command.spawn().map_err(|source| RedisError::Start { path: path.clone(), source })
                })
                .join()
                .unwrap_or_else(|_| Err(RedisError::Thread("the thread starting redis-server panicked".into())))
        })?;
        let mut server = Self { child, addr, _dir: dir };
        server.wait_ready(timeout)?;
        Ok(server)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Polls until a PING is answered, the server exits, or `timeout` passes.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), RedisError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(io_error("waiting for redis-server"))? {
                return Err(RedisError::Exited(status));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RedisError::NotReady { addr: self.addr, timeout });
            }
            if let Ok(mut client) = RespClient::connect(self.addr, left.min(Duration::from_secs(1))) {
                if matches!(client.command(&[b"PING"]), Ok(Reply::Simple(pong)) if pong == "PONG") {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(10).min(left));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(0);
        if pid > 0 {
            // SAFETY: kill(2) on the pid of our own child, which is not reaped yet (so the pid
            // cannot belong to another process); no memory is passed.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + EXIT_GRACE;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        if let Err(e) = self.child.kill() {
            eprintln!("praas-bench: cannot kill redis-server: {e}");
        }
        let _ = self.child.wait();
    }
}

/// A RESP reply, as far as the ping-pong needs one.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+text`.
    Simple(String),
    /// `:n`.
    Integer(i64),
    /// `$n` and its bytes (`None`: the null bulk string, `$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*n` and its elements (`None`: the null array, `*-1`, as BLPOP answers a timeout).
    Array(Option<Vec<Reply>>),
}

/// Bytes read from the socket at a time for replies (a large bulk string's bytes are read
/// straight into its own vector).
const READ_BUF: usize = 64 << 10;

/// A blocking RESP client: commands as RESP arrays of bulk strings, replies parsed from a
/// read buffer.
pub struct RespClient {
    stream: TcpStream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl RespClient {
    /// Connects to `addr` within `timeout`; every later read and write is bounded by it too.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, RedisError> {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(io_error("connect"))?;
        stream.set_nodelay(true).map_err(io_error("connect"))?;
        stream.set_read_timeout(Some(timeout)).map_err(io_error("connect"))?;
        stream.set_write_timeout(Some(timeout)).map_err(io_error("connect"))?;
        Ok(Self { stream, buf: vec![0; READ_BUF].into_boxed_slice(), start: 0, end: 0 })
    }

    /// Sends one command (its arguments as bulk strings, in one vectored write) and reads its reply.
    pub fn command(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        self.send(args)?;
        match self.reply()? {
            Reply::Simple(text) if text.starts_with('-') => Err(RedisError::Reply(text[1..].to_owned())),
            reply => Ok(reply),
        }
    }

    fn send(&mut self, args: &[&[u8]]) -> Result<(), RedisError> {
        // The lengths between the arguments: `*N\r\n$len\r\n`, then `\r\n$len\r\n` ..., then `\r\n`.
        let mut heads: Vec<Vec<u8>> = Vec::with_capacity(args.len() + 1);
        for (i, arg) in args.iter().enumerate() {
            let mut head = Vec::with_capacity(32);
            if i == 0 {
                head.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            } else {
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            heads.push(head);
        }
        heads.push(b"\r\n".to_vec());
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * args.len() + 1);
        for (head, arg) in heads.iter().zip(args) {
            parts.push(head);
            parts.push(arg);
        }
        parts.push(&heads[args.len()]);
        write_all_vectored(&mut self.stream, &parts).map_err(io_error("send"))
    }

    /// Fills the buffer with at least one more byte.
    fn fill(&mut self) -> Result<(), RedisError> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(RedisError::Protocol("the server closed the connection".into())),
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RedisError::Io { doing: "receive", source: e }),
            }
        }
    }

    /// One `\r\n`-terminated line, without its terminator.
    fn line(&mut self) -> Result<String, RedisError> {
        loop {
            if let Some(at) = self.buf[self.start..self.end].windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[self.start..self.start + at]).into_owned();
                self.start += at + 2;
                return Ok(line);
            }
            if self.end - self.start == self.buf.len() {
                return Err(RedisError::Protocol(format!("a line longer than {} bytes", self.buf.len())));
            }
            self.fill()?;
        }
    }

    /// Exactly `out.len()` bytes: what is buffered first, the rest straight from the socket.
    fn exact(&mut self, out: &mut [u8]) -> Result<(), RedisError> {
        let buffered = (self.end - self.start).min(out.len());
        out[..buffered].copy_from_slice(&self.buf[self.start..self.start + buffered]);
        self.start += buffered;
        self.stream.read_exact(&mut out[buffered..]).map_err(io_error("receive"))
    }

    fn length(line: &str) -> Result<i64, RedisError> {
        line[1..].parse().map_err(|_| RedisError::Protocol(format!("bad length in {line:?}")))
    }

    /// Reads one reply.
    pub fn reply(&mut self) -> Result<Reply, RedisError> {
        let line = self.line()?;
        match line.as_bytes().first() {
            Some(b'+') => Ok(Reply::Simple(line[1..].to_owned())),
            // An error reply is kept with its sign for `command` to tell apart.
            Some(b'-') => Ok(Reply::Simple(line)),
            Some(b':') => Ok(Reply::Integer(Self::length(&line)?)),
            Some(b'$') => {
                let Ok(len) = usize::try_from(Self::length(&line)?) else { return Ok(Reply::Bulk(None)) };
                let mut data = vec![0u8; len + 2];
                self.exact(&mut data)?;
                if !data.ends_with(b"\r\n") {
                    return Err(RedisError::Protocol("a bulk string not ended by CRLF".into()));
                }
                data.truncate(len);
                Ok(Reply::Bulk(Some(data)))
            }
            Some(b'*') => {
                let Ok(count) = usize::try_from(Self::length(&line)?) else { return Ok(Reply::Array(None)) };
                // Bounded by what BLPOP answers (two elements); never trust a count to reserve.
                let mut items = Vec::with_capacity(count.min(16));
                for _ in 0..count {
                    items.push(self.reply()?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(RedisError::Protocol(format!("{line:?}"))),
        }
    }

    /// `LPUSH list data`: stored once Redis answers.
    pub fn lpush(&mut self, list: &[u8], data: &[u8]) -> Result<(), RedisError> {
        match self.command(&[b"LPUSH", list, data])? {
            Reply::Integer(_) => Ok(()),
            other => Err(RedisError::Protocol(format!("LPUSH answered {other:?}"))),
        }
    }

    /// `BLPOP list timeout`: pops the element at the head of `list`, waiting at most `timeout`
    /// (whole seconds, at least one); the ping-pong has one element in a list at a time.
    pub fn blpop(&mut self, list: &[u8], timeout: Duration) -> Result<Vec<u8>, RedisError> {
        let seconds = timeout.as_secs().max(1).to_string();
        match self.command(&[b"BLPOP", list, seconds.as_bytes()])? {
            Reply::Array(Some(mut items)) if items.len() == 2 => match items.pop() {
                Some(Reply::Bulk(Some(data))) => Ok(data),
                other => Err(RedisError::Protocol(format!("BLPOP answered the element {other:?}"))),
            },
            Reply::Array(None) => Err(RedisError::Protocol(format!("BLPOP found nothing within {seconds} s"))),
            other => Err(RedisError::Protocol(format!("BLPOP answered {other:?}"))),
        }
    }
}

/// Writes every byte of `parts` with vectored writes.
fn write_all_vectored(stream: &mut TcpStream, parts: &[&[u8]]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut sent = 0;
    while sent < total {
        let mut skip = sent;
        let mut slices = Vec::with_capacity(parts.len());
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices.push(IoSlice::new(&part[skip..]));
            skip = 0;
        }
        match stream.write_vectored(&slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the connection takes no more bytes")),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `total` round trips of `size` bytes through `server` (client A pushes to `ping` and pops
/// `pong`, client B pops `ping` and pushes it to `pong`, both on threads pinned to `cpu`), the
/// first `warmup` dropped; each timed by A from its LPUSH to the end of its BLPOP.
pub fn round_trips(
    server: &RedisServer,
    cpu: usize,
    size: usize,
    warmup: u64,
    total: u64,
    timeout: Duration,
) -> Result<Histogram<u64>, RedisError> {
    let addr = server.addr();
    let mut a = RespClient::connect(addr, timeout)?;
    let mut b = RespClient::connect(addr, timeout)?;
    // Nothing left over from an earlier size.
    a.command(&[b"DEL", b"ping", b"pong"])?;
    let payload = crate::raw_tcp::payload(size);
    std::thread::scope(|scope| {
        let bouncer = scope.spawn(move || -> Result<(), RedisError> {
            placement::pin_current_thread(cpu).map_err(RedisError::Thread)?;
            for _ in 0..total {
                let data = b.blpop(b"ping", timeout)?;
                b.lpush(b"pong", &data)?;
            }
            Ok(())
        });
        let timer = scope.spawn(|| -> Result<Histogram<u64>, RedisError> {
            placement::pin_current_thread(cpu).map_err(RedisError::Thread)?;
            let mut hist = report::histogram();
            for i in 0..total {
                let started = Instant::now();
                a.lpush(b"ping", &payload)?;
                let answer = a.blpop(b"pong", timeout)?;
                let elapsed = started.elapsed();
                if answer.len() != payload.len() {
                    return Err(RedisError::Protocol(format!(
                        "the bounced message has {} bytes, not {}",
                        answer.len(),
                        payload.len()
                    )));
                }
                if i >= warmup {
                    report::record(&mut hist, elapsed);
                }
            }
            Ok(hist)
        });
        let hist = timer.join().unwrap_or_else(|_| Err(RedisError::Thread("client a panicked".into())));
        let bounced = bouncer.join().unwrap_or_else(|_| Err(RedisError::Thread("client b panicked".into())));
        // A failed client A leaves B waiting for a ping until its BLPOP times out: report A's error.
        let hist = hist?;
        bounced?;
        Ok(hist)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RESP client's reply parser against bytes a server wrote on a real loopback socket.
    fn client_reading(bytes: &'static [u8]) -> RespClient {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(bytes).unwrap();
        });
        let client = RespClient::connect(addr, Duration::from_secs(5)).unwrap();
        writer.join().unwrap();
        client
    }

    #[test]
    fn replies_parse_as_resp_says() {
        let mut client =
            client_reading(b"+PONG\r\n:3\r\n$5\r\nhel\r\n\r\n$-1\r\n*2\r\n$4\r\nping\r\n$0\r\n\r\n*-1\r\n-ERR no\r\n");
        assert_eq!(client.reply().unwrap(), Reply::Simple("PONG".into()));
        assert_eq!(client.reply().unwrap(), Reply::Integer(3));
        assert_eq!(client.reply().unwrap(), Reply::Bulk(Some(b"hel\r\n".to_vec())));
        assert_eq!(client.reply().unwrap(), Reply::Bulk(None));
        assert_eq!(
            client.reply().unwrap(),
            Reply::Array(Some(vec![Reply::Bulk(Some(b"ping".to_vec())), Reply::Bulk(Some(Vec::new()))]))
        );
        assert_eq!(client.reply().unwrap(), Reply::Array(None));
        assert_eq!(client.reply().unwrap(), Reply::Simple("-ERR no".into()));
        let err = client.reply().unwrap_err();
        assert!(err.to_string().contains("closed the connection"), "{err}");
    }

    #[test]
    fn a_bulk_string_not_ended_by_crlf_is_refused() {
        let mut client = client_reading(b"$2\r\nabcd");
        assert!(matches!(client.reply(), Err(RedisError::Protocol(_))));
    }
}
