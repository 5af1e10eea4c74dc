//! Server processes: the bench re-executes itself with a hidden `serve-*` subcommand, reads the
//! address the child prints, and owns the child through a guard that always ends and reaps it.
//!
//! A child serves until its stdin closes (so it also goes when the bench dies) or it is killed.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a child may take to leave after its stdin closed before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// What a `serve-*` child prints first on stdout.
pub const ANNOUNCE: &str = "listening on ";

/// A running server child; dropping it closes its stdin, waits a little, then kills and reaps it.
#[derive(Debug)]
pub struct ChildServer {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
}

impl ChildServer {
    /// Starts `current_exe() args...` (under `wrapper`, a command line, if given) and waits at
    /// most `timeout` for its address.
    pub fn spawn(name: &str, args: &[OsString], wrapper: Option<&str>, timeout: Duration) -> Result<Self, String> {
        Self::spawn_with_env(name, args, &[], wrapper, timeout)
    }

    /// [`ChildServer::spawn`] with `env` added to the child's environment: what must not be on
    /// its command line, which every user of the machine can read (`ps`), such as a secret.
    pub fn spawn_with_env(
        name: &str,
        args: &[OsString],
        env: &[(&str, &str)],
        wrapper: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench executable: {e}"))?;
        let mut command = match wrapper.map(|w| w.split_whitespace().collect::<Vec<_>>()) {
            Some(words) if !words.is_empty() => {
                let mut command = Command::new(words[0]);
                command.args(&words[1..]).arg(&exe);
                command
            }
            _ => Command::new(&exe),
        };
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().map_err(|e| format!("cannot start the {name}: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
        // From here on the guard owns the child: every error below ends it.
        let mut guard = Self { name: name.to_string(), child, stdin, addr: SocketAddr::from(([0, 0, 0, 0], 0)) };

        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{name} stdout"))
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                let first = reader.read_line(&mut line).map(|_| line);
                let _ = tx.send(first);
                // Keep draining, so the child never blocks on a full pipe; ends when it exits.
                let _ = io::copy(&mut reader, &mut io::sink());
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let line = match rx.recv_timeout(timeout) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(format!("cannot read the {name}'s address: {e}")),
            Err(_) => return Err(format!("the {name} printed no address within {timeout:?}")),
        };
        guard.addr = parse_announce(&line).ok_or_else(|| match guard.child.try_wait() {
            Ok(Some(status)) => format!("the {name} exited ({status}) before it printed its address"),
            _ => format!("the {name} printed {line:?} instead of its address"),
        })?;
        Ok(guard)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        // Closing stdin asks the child to leave (a wrapper such as strace then writes its report).
        drop(self.stdin.take());
        let deadline = Instant::now() + EXIT_GRACE;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        if let Err(e) = self.child.kill() {
            let _ = writeln!(io::stderr(), "praas-bench: cannot kill the {}: {e}", self.name);
        }
        let _ = self.child.wait();
    }
}

/// The address in a child's first line, `listening on ADDR`.
pub fn parse_announce(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix(ANNOUNCE)?.parse().ok()
}

/// Prints the address as a child's first line and flushes it.
pub fn announce(addr: SocketAddr) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{ANNOUNCE}{addr}")?;
    out.flush()
}

/// Blocks until stdin closes: the parent went away or asked the child to leave.
pub fn wait_for_stdin_close() {
    let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_line_parses() {
        assert_eq!(parse_announce("listening on 127.0.0.1:4000\n"), Some("127.0.0.1:4000".parse().unwrap()));
        assert_eq!(parse_announce("error: no\n"), None);
        assert_eq!(parse_announce(""), None);
    }
}
