//! `praas-bench`: praas microbenchmarks, each against a baseline measured in the same run.
//!
//! Output follows the benchmark contract: a human table by default, one JSON object per line on
//! stdout with `--json` (logs on stderr). Servers run as separate OS processes: the bench
//! re-executes itself with a hidden `serve-*` subcommand.

mod allocate;
mod api_load;
mod application;
mod child;
mod cli;
mod flood;
mod functions;
mod invoke;
mod message;
mod output;
mod placement;
mod plot;
mod python_gil;
mod raw_tcp;
#[cfg(feature = "rdma")]
mod rdma;
mod redis;
mod reduce;
mod remote_invoke;
mod report;
mod serve;
mod stats_cost;
mod swap;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Invoke(args) => invoke::run(args),
        Command::Swap(args) => swap::run(args),
        #[cfg(feature = "rdma")]
        Command::Message(args) if args.transport == cli::TransportKind::Rdma => rdma::message(args),
        Command::Message(args) => message::run(args),
        Command::RemoteInvoke(args) => remote_invoke::run(args),
        Command::Reduce(args) => reduce::run(args),
        Command::Allocate(args) => allocate::run(args),
        Command::ApiLoad(args) => api_load::run(args),
        Command::StatsCost(args) => stats_cost::run(args),
        Command::Flood(args) => flood::run(args),
        Command::PythonGil(args) => python_gil::run(args),
        Command::DispatchLoop(args) => stats_cost::dispatch_loop(args),
        Command::ServePraas(args) => serve::praas(args),
        Command::ServeRaw(args) => serve::raw(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("praas-bench: {message}");
            ExitCode::from(1)
        }
    }
}
