//! `praas`: the command-line tool. It parses arguments, calls the libraries, and maps errors to
//! exit codes: 0 success, 1 the operation failed (the message says why), 2 bad usage.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use praas_dataplane::{
    Client, ClientOptions, FunctionRegistry, Manifest, Process, ProcessConfig, TcpOptions, TcpTransport, Transport,
};

/// praas: Process-as-a-Service for HPC clusters.
#[derive(Debug, Parser)]
#[command(name = "praas", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage cloud processes.
    #[command(subcommand)]
    Process(ProcessCommand),
    /// Invoke a function of a cloud process and print its output.
    Invoke(InvokeArgs),
}

#[derive(Debug, Subcommand)]
enum ProcessCommand {
    /// Run a cloud process in the foreground, serving the functions of a manifest.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML manifest listing the functions (name, library, symbol, mode).
    #[arg(long)]
    manifest: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed on start).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Threads of the worker pool.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Process id.
    #[arg(long, default_value = "process-0")]
    id: String,
    /// Default deadline of an invocation in milliseconds (0: none).
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
    /// Largest frame accepted or produced, in bytes.
    #[arg(long, default_value_t = praas_dataplane::protocol::DEFAULT_MAX_FRAME)]
    max_frame: usize,
    /// Bytes of buffers the process may hand out at once.
    #[arg(long, default_value_t = praas_dataplane::buffer::DEFAULT_BUDGET)]
    buffer_budget: usize,
}

#[derive(Debug, Args)]
struct InvokeArgs {
    /// Data-plane address of the process (HOST:PORT).
    #[arg(long)]
    process: String,
    /// Function to invoke.
    function: String,
    /// Input: TEXT as given, @FILE for a file's bytes, - for standard input.
    #[arg(long, default_value = "")]
    input: String,
    /// How long to wait for the result, in milliseconds; also the process's deadline.
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u32,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Process(ProcessCommand::Serve(args)) => serve(args),
        Command::Invoke(args) => invoke(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("praas: {message}");
            ExitCode::from(1)
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let manifest = Manifest::from_file(&args.manifest).map_err(|e| e.to_string())?;
    let functions = FunctionRegistry::load(&manifest).map_err(|e| e.to_string())?;
    let config = ProcessConfig {
        id: args.id,
        workers: args.workers,
        default_timeout: (args.timeout_ms > 0).then(|| Duration::from_millis(args.timeout_ms)),
        max_frame: args.max_frame,
        buffer_budget: args.buffer_budget,
        ..ProcessConfig::default()
    };
    let names = functions.names().join(", ");
    let process = Process::start(config, functions).map_err(|e| format!("cannot start the process: {e}"))?;
    let transport = TcpTransport::bind(args.listen, Arc::clone(&process), TcpOptions::default())
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let server = Box::new(transport).spawn().map_err(|e| format!("cannot start the transport: {e}"))?;
    // Scripts read this line to learn the port.
    println!("listening on {}", server.local_addr());
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    tracing::info!(process = process.id(), functions = %names, "serving");
    server.join().map_err(|e| format!("transport failed: {e}"))
}

fn read_input(spec: &str) -> Result<Vec<u8>, String> {
    if spec == "-" {
        let mut input = Vec::new();
        std::io::stdin().read_to_end(&mut input).map_err(|e| format!("cannot read standard input: {e}"))?;
        Ok(input)
    } else if let Some(path) = spec.strip_prefix('@') {
        std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
    } else {
        Ok(spec.as_bytes().to_vec())
    }
}

fn invoke(args: InvokeArgs) -> Result<(), String> {
    let input = read_input(&args.input)?;
    let options = ClientOptions {
        timeout: Duration::from_millis(args.timeout_ms.into()) + Duration::from_secs(1),
        invocation_timeout_ms: args.timeout_ms,
        ..ClientOptions::default()
    };
    let mut client = Client::connect_with(&*args.process, options)
        .map_err(|e| format!("cannot connect to {}: {e}", args.process))?;
    let output = client.invoke(&args.function, &input).map_err(|e| format!("{}: {e}", args.function))?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&output).and_then(|()| stdout.flush()).map_err(|e| e.to_string())
}
