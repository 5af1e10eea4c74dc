//! Which TCP transport a process serves with, or a client connects with, and whether io_uring
//! serves on this kernel.

/// Which TCP data-plane transport a process serves with, or a client connects with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// io_uring where the kernel allows it (probed once), else mio with one log line saying why.
    #[default]
    Auto,
    /// io_uring; fails where the kernel does not allow it.
    Uring,
    /// mio (epoll).
    Mio,
}

impl TransportKind {
    /// Resolves `Auto` to what this kernel supports; `Uring` and `Mio` stay as they are.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto if uring_available() => Self::Uring,
            Self::Auto => Self::Mio,
            kind => kind,
        }
    }

    /// The name used on command lines and in benchmark output: `auto`, `uring`, `mio`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Uring => "uring",
            Self::Mio => "mio",
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TransportKind {
    type Err = UnknownTransport;
    fn from_str(s: &str) -> Result<Self, UnknownTransport> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Self::Uring),
            "mio" | "tcp" | "epoll" => Ok(Self::Mio),
            other => Err(UnknownTransport(other.to_owned())),
        }
    }
}

/// A transport name [`TransportKind`] does not know (the name given).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport {0:?}: expected uring, mio or auto")]
pub struct UnknownTransport(pub String);

/// Whether io_uring serves here: probed once per process; the first negative answer logs why.
pub fn uring_available() -> bool {
    #[cfg(target_os = "linux")]
    {
        super::uring::probe::available()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}
