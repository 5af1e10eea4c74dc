//! The HTTP API's bearer token: how the control plane tells its owner from every other user of
//! the machine (a cluster login node is shared by hundreds, and all of them reach 127.0.0.1).
//!
//! At first start the control plane draws 32 random bytes and writes them, as hex, to
//! `DATA/api-token` (mode 0600 in the 0700 data folder); later starts on the same folder reuse
//! it. Every request presents it as `Authorization: Bearer TOKEN` and is compared in constant
//! time; anything else is answered 401 before its body is read.
//!
//! So that the CLI, the SDKs and the benchmarks find the token without flags, the control plane
//! also *publishes* it in its user's runtime folder ([`runtime_dir`]: `$PRAAS_RUNTIME_DIR`, else
//! `$XDG_RUNTIME_DIR/praas`, else `$HOME/.praas`, else `TMP/praas-UID`, mode 0700), one file per HTTP address
//! (`api/IP_PORT`, mode 0600, with the control plane's pid), and removes the file when it stops
//! (files of control planes that died are pruned at the next start). A client looks the file up
//! by the address of the URL it was given ([`discover`]); `PRAAS_TOKEN` or `PRAAS_TOKEN_FILE`
//! override the lookup. Another user has neither the file nor read access to the data folder.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

use crate::private_fs::{self, PrivateFileError};
use thiserror::Error;

/// The token's file in the data folder.
pub const TOKEN_FILE: &str = "api-token";

/// Bytes of randomness in a token.
const TOKEN_BYTES: usize = 32;

/// Why a token could not be made, read or published.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TokenError {
    /// A file or folder could not be made or written owner-only.
    #[error(transparent)]
    Private(#[from] PrivateFileError),
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The token file holds no token.
    #[error("{path} holds no API token (64 hex digits expected)")]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// The runtime folder is not private to this user.
    #[error("{path} is not a folder of this user with mode 0700: refusing to keep a token there")]
    Unsafe {
        /// The folder.
        path: PathBuf,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> TokenError + '_ {
    move |source| TokenError::Io { path: path.to_owned(), source }
}

/// A bearer token of the HTTP API. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        let nonce = praas_dataplane::auth::nonce();
        debug_assert_eq!(nonce.len(), TOKEN_BYTES);
        Self(nonce.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A token as text (from `PRAAS_TOKEN` or a file); `None` when it is not 64 hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        (text.len() == TOKEN_BYTES * 2 && text.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Self(text.to_owned()))
    }

    /// The token as sent in `Authorization: Bearer ...`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` header value presents this token (constant-time comparison).
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(|value| value.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let expected = self.0.as_bytes();
        // `ct_eq` of slices of different lengths is false without looking at the bytes; the
        // length of a token is no secret.
        presented.len() == expected.len() && bool::from(presented.ct_eq(expected))
    }

    /// Reads the token file `path`.
    pub fn read(path: &Path) -> Result<Self, TokenError> {
        let text = fs::read_to_string(path).map_err(io_error(path))?;
        Self::parse(&text).ok_or_else(|| TokenError::Malformed { path: path.to_owned() })
    }

    /// The token of the control plane whose data folder is `data_dir`: read from
    /// `DATA/api-token`, or generated and written there (mode 0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, TokenError> {
        let path = data_dir.join(TOKEN_FILE);
        match fs::metadata(&path) {
            Ok(_) => {
                private_fs::tighten_file(&path)?;
                Self::read(&path)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let token = Self::generate();
                private_fs::write_file(&path, token.as_str().as_bytes())?;
                Ok(token)
            }
            Err(e) => Err(io_error(&path)(e)),
        }
    }
}

/// The folder where this user's control planes publish their tokens: `$PRAAS_RUNTIME_DIR`, else
/// `$XDG_RUNTIME_DIR/praas`, else `$HOME/.praas`, else (no home) `TMP/praas-UID`. Whichever it is,
/// it is used only while it is this user's and 0700 (another user cannot plant one first).
pub fn runtime_dir() -> Option<PathBuf> {
    let from = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    from("PRAAS_RUNTIME_DIR")
        .or_else(|| from("XDG_RUNTIME_DIR").map(|d| d.join("praas")))
        .or_else(|| from("HOME").map(|d| d.join(".praas")))
        .or_else(|| Some(std::env::temp_dir().join(format!("praas-{uid}"))))
}

fn published_name(addr: SocketAddr) -> String {
    format!("{}_{}", addr.ip(), addr.port())
}

/// Checks that a runtime folder is this user's alone before trusting what it holds.
fn check_private(dir: &Path) -> Result<(), TokenError> {
    if !private_fs::owned_private_dir(dir)? {
        return Err(TokenError::Unsafe { path: dir.to_owned() });
    }
    Ok(())
}

/// A token published for a control plane's HTTP address; removed again when dropped.
#[derive(Debug)]
pub struct Publication {
    path: PathBuf,
}

impl Drop for Publication {
    fn drop(&mut self) {
        self.withdraw();
    }
}

impl Publication {
    /// Removes the published file now (at shutdown).
    pub fn withdraw(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Publishes `token` for the HTTP API at `addr` in [`runtime_dir`], and prunes the files of
/// control planes that no longer run.
pub fn publish(addr: SocketAddr, token: &ApiToken) -> Result<Publication, TokenError> {
    let Some(root) = runtime_dir() else {
        return Err(TokenError::Unsafe { path: PathBuf::from("$HOME") });
    };
    private_fs::create_dir(&root)?;
    check_private(&root)?;
    let dir = root.join("api");
    private_fs::create_dir(&dir)?;
    prune(&dir);
    let path = dir.join(published_name(addr));
    let content = format!("{}\n{}\n", token.as_str(), std::process::id());
    private_fs::write_file(&path, content.as_bytes())?;
    Ok(Publication { path })
}

/// Removes published files whose control plane (the pid on their second line) is gone.
fn prune(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let pid = fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.lines().nth(1).and_then(|line| line.trim().parse::<u32>().ok()));
        if pid.is_some_and(|pid| !crate::backend::alive(pid)) {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Reads a published file: its token, if its control plane still runs.
fn read_published(path: &Path) -> Option<ApiToken> {
    let text = fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let token = ApiToken::parse(lines.next()?)?;
    let pid: u32 = lines.next()?.trim().parse().ok()?;
    crate::backend::alive(pid).then_some(token)
}

/// The host and port of an `http://HOST:PORT[/...]` URL.
fn url_authority(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port))
}

/// The token to present to the control plane at `url`: `PRAAS_TOKEN`, else the file
/// `PRAAS_TOKEN_FILE` names, else the one its control plane published in this user's
/// [`runtime_dir`] for that address (or for the unspecified address on that port, for a control
/// plane listening on all interfaces). `None` when there is none: requests then go without one,
/// and the control plane answers 401.
pub fn discover(url: &str) -> Option<ApiToken> {
    if let Some(token) = std::env::var("PRAAS_TOKEN").ok().and_then(|t| ApiToken::parse(&t)) {
        return Some(token);
    }
    if let Some(file) = std::env::var_os("PRAAS_TOKEN_FILE").filter(|f| !f.is_empty()) {
        return ApiToken::read(Path::new(&file)).ok();
    }
    let dir = runtime_dir()?;
    check_private(&dir).ok()?;
    let (host, port) = url_authority(url)?;
    let mut candidates: Vec<SocketAddr> =
        (host.as_str(), port).to_socket_addrs().map(Iterator::collect).unwrap_or_default();
    candidates.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    candidates.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
    candidates.into_iter().find_map(|addr| read_published(&dir.join("api").join(published_name(addr))))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_token_admits_only_itself() {
        let token = ApiToken::generate();
        assert_eq!(token.as_str().len(), 64);
        assert!(token.admits(Some(format!("Bearer {}", token.as_str()).as_bytes())));
        assert!(!token.admits(None));
        assert!(!token.admits(Some(token.as_str().as_bytes())), "the scheme is required");
        assert!(!token.admits(Some(format!("Bearer {}", ApiToken::generate().as_str()).as_bytes())));
        assert!(!token.admits(Some(format!("Bearer {}", &token.as_str()[..63]).as_bytes())));
        assert!(!token.admits(Some(format!("Bearer {}x", token.as_str()).as_bytes())));
        assert!(!format!("{token:?}").contains(token.as_str()), "Debug keeps the token out of logs");
    }

    #[test]
    fn only_64_hex_digits_parse() {
        assert!(ApiToken::parse(&"ab".repeat(32)).is_some());
        assert!(ApiToken::parse(&format!("{}\n", "ab".repeat(32))).is_some());
        assert!(ApiToken::parse("").is_none());
        assert!(ApiToken::parse(&"zz".repeat(32)).is_none());
        assert!(ApiToken::parse(&"ab".repeat(31)).is_none());
    }

    #[test]
    fn urls_give_their_authority() {
        assert_eq!(url_authority("http://127.0.0.1:7000"), Some(("127.0.0.1".into(), 7000)));
        assert_eq!(url_authority("http://localhost:80/apps"), Some(("localhost".into(), 80)));
        assert_eq!(url_authority("http://[::1]:9/"), Some(("::1".into(), 9)));
        assert_eq!(url_authority("https://x:1"), None);
        assert_eq!(url_authority("http://x"), None);
    }

    #[test]
    fn the_token_file_is_created_once_owner_only() {
        let dir = std::env::temp_dir().join(format!("praas-token-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        private_fs::create_dir(&dir).unwrap();
        let first = ApiToken::load_or_create(&dir).unwrap();
        let mode = fs::metadata(dir.join(TOKEN_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(ApiToken::load_or_create(&dir).unwrap(), first, "a restart keeps the token");
        fs::remove_dir_all(&dir).unwrap();
    }
}
