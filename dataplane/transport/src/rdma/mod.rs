//! The RDMA verbs transport (feature `rdma`): reliable-connected queue pairs, small frames by
//! SEND into a shared receive queue, large payloads by RDMA WRITE WITH IMMEDIATE into buffers the
//! receiver advertised, with credits so that no receiver is ever overrun.
//!
//! - [`verbs`]: safe RAII wrappers of the verbs objects (`// SAFETY:` on each unsafe block).
//! - [`connect`]: connection set-up by an out-of-band exchange over TCP (why: `docs/rdma.md`).
//! - [`flow`]: the immediate-data header of every message, grants, the credit ledger, the send
//!   window (slots, signalling, retire, work request ids) and the large transfers' states, as pure
//!   logic used by both ends.
//! - [`server`]: [`RdmaTransport`], the process side, behind the [`Transport`](super::handle::Transport) seam.
//! - [`client`]: [`RdmaClient`], the SDK side, with the API of [`Client`](crate::Client).
//!
//! Completions are polled by the policy [`PollPolicy`]: busy polling, blocking on the completion
//! channel, or (the default) busy polling that falls back to the channel after a quiet spell, so
//! an idle process does not burn a core.

pub mod connect;
pub mod flow;
pub mod server;
pub mod verbs;

use std::time::Duration;

pub use server::{RdmaOptions, RdmaStats, RdmaTransport};

/// How a thread waits for completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollPolicy {
    /// Poll the completion queue without ever sleeping: lowest latency, one core per poller.
    Busy,
    /// Sleep on the completion channel whenever the queue is empty: no idle CPU, one wake-up
    /// (a few microseconds) per message.
    Events,
    /// Busy-poll, and fall back to the completion channel after `spin` without a completion.
    Adaptive {
        /// How long to keep polling an empty queue before sleeping.
        spin: Duration,
    },
}

impl Default for PollPolicy {
    fn default() -> Self {
        Self::Adaptive { spin: Duration::from_millis(1) }
    }
}

impl PollPolicy {
    /// The policy `PRAAS_RDMA_POLL` names, if it is set to one.
    pub fn from_env() -> Option<Self> {
        std::env::var("PRAAS_RDMA_POLL").ok().and_then(|p| Self::parse(&p))
    }

    /// Parses `busy`, `events`, `adaptive` or `adaptive:MICROS` (the env var and CLI form).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "busy" => Some(Self::Busy),
            "events" => Some(Self::Events),
            "adaptive" => Some(Self::default()),
            _ => {
                let micros = text.strip_prefix("adaptive:")?.parse().ok()?;
                Some(Self::Adaptive { spin: Duration::from_micros(micros) })
            }
        }
    }

    /// Whether a poller that last saw a completion `idle` ago should go to sleep.
    pub fn should_sleep(&self, idle: Duration) -> bool {
        match self {
            Self::Busy => false,
            Self::Events => true,
            Self::Adaptive { spin } => idle >= *spin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_policies_parse_and_decide() {
        assert_eq!(PollPolicy::parse("busy"), Some(PollPolicy::Busy));
        assert_eq!(PollPolicy::parse("events"), Some(PollPolicy::Events));
        assert_eq!(PollPolicy::parse("adaptive:50"), Some(PollPolicy::Adaptive { spin: Duration::from_micros(50) }));
        assert_eq!(PollPolicy::parse("sometimes"), None);
        assert!(!PollPolicy::Busy.should_sleep(Duration::from_secs(9)));
        assert!(PollPolicy::Events.should_sleep(Duration::ZERO));
        let adaptive = PollPolicy::Adaptive { spin: Duration::from_micros(100) };
        assert!(!adaptive.should_sleep(Duration::from_micros(10)));
        assert!(adaptive.should_sleep(Duration::from_micros(100)));
    }
}
