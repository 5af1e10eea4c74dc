//! The praas control plane: applications, process allocation on backends, lifecycle, swapping,
//! peer discovery, its REST API, and the `praas` command-line tool built on it.
//!
//! - [`model`]: applications, processes, lifecycle statuses;
//! - [`controller`]: the [`ControlPlane`] itself, every lifecycle transition;
//! - [`backend`]: where processes run ([`backend::LocalBackend`]: child OS processes;
//!   [`backend::SlurmBackend`]: Slurm jobs or job steps on a cluster);
//! - [`channel`]: the authenticated control channel processes register through;
//! - [`api`]: the HTTP API, behind the bearer token of [`api_token`], at the paths of [`routes`];
//!   [`metrics`]: what its `GET /metrics` answers;
//!   [`server`]: starts all of it;
//! - [`application`]: where an application's libraries may come from (uploads, function roots);
//! - [`private_fs`]: owner-only files and folders, whatever the umask;
//! - [`store`]: the embedded database that makes it survive restarts;
//! - [`cli`]: the client side of the `praas` tool;
//! - [`process_main`]: the start-up of a cloud process (`praas process serve`);
//! - [`logging`]: the log format of both servers (`--log-format text|json`).

pub mod api;
pub mod api_token;
pub mod application;
pub mod backend;
pub mod channel;
pub mod cli;
pub mod controller;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod private_fs;
pub mod process_main;
pub mod reclaim;
pub mod routes;
pub mod server;
pub mod store;

pub use controller::{ControlConfig, ControlError, ControlPlane};
