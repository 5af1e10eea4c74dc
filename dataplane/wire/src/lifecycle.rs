//! The lifecycle status of a cloud process: one vocabulary for the control plane that drives it
//! and the processes that learn about their peers.

use serde::{Deserialize, Serialize};

/// Lifecycle status of a cloud process. Serialized (and named by the API) in upper case:
/// `ALLOCATED`, `SWAPPED_OUT`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProcessStatus {
    /// Starting; not registered yet.
    Allocating,
    /// Registered and serving: invocations and messages reach it.
    Allocated,
    /// Draining and writing its snapshot.
    SwappingOut,
    /// Its snapshot is in the swap store; nothing runs.
    SwappedOut,
    /// Starting from its snapshot.
    SwappingIn,
    /// Stopping on request.
    Closing,
    /// Stopped on request.
    Closed,
    /// Died or could not start.
    Failure,
}

impl ProcessStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 8] = [
        Self::Allocating,
        Self::Allocated,
        Self::SwappingOut,
        Self::SwappedOut,
        Self::SwappingIn,
        Self::Closing,
        Self::Closed,
        Self::Failure,
    ];

    /// The name the API and the CLI show.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allocating => "ALLOCATING",
            Self::Allocated => "ALLOCATED",
            Self::SwappingOut => "SWAPPING_OUT",
            Self::SwappedOut => "SWAPPED_OUT",
            Self::SwappingIn => "SWAPPING_IN",
            Self::Closing => "CLOSING",
            Self::Closed => "CLOSED",
            Self::Failure => "FAILURE",
        }
    }

    /// The status of a name (any case); an unknown name counts as `Failure` (not reachable).
    pub fn from_name(name: &str) -> Self {
        Self::ALL.into_iter().find(|s| s.name().eq_ignore_ascii_case(name)).unwrap_or(Self::Failure)
    }

    /// Whether an OS process should be running in this status.
    pub fn is_running(self) -> bool {
        matches!(self, Self::Allocating | Self::Allocated | Self::SwappingOut | Self::SwappingIn | Self::Closing)
    }

    /// Whether the status will change without a request (a transition is under way).
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Allocating | Self::SwappingOut | Self::SwappingIn | Self::Closing)
    }
}

/// Words, for error texts: `swapped out`.
impl std::fmt::Display for ProcessStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name().to_ascii_lowercase().replace('_', " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_serde_and_words_agree() {
        for status in ProcessStatus::ALL {
            assert_eq!(serde_json::to_string(&status).unwrap(), format!("\"{}\"", status.name()));
            assert_eq!(ProcessStatus::from_name(status.name()), status);
            assert_eq!(ProcessStatus::from_name(&status.name().to_ascii_lowercase()), status);
        }
        assert_eq!(ProcessStatus::from_name("no such status"), ProcessStatus::Failure);
        assert_eq!(ProcessStatus::SwappedOut.to_string(), "swapped out");
    }
}
