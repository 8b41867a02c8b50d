//! `smolvm`: create disposable microVM sandboxes and run commands in them.

mod commands;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{bench, doctor, image, sandbox, server, supervise};

/// Disposable, hardware-isolated Linux sandboxes for agents and tools.
#[derive(Debug, Parser)]
#[command(name = "smolvm", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that this host can run sandboxes, and report the accel choice.
    Doctor(doctor::Args),
    /// Build, list and remove guest images.
    #[command(subcommand)]
    Image(image::Command),
    /// Create, use and remove sandboxes.
    #[command(subcommand)]
    Sandbox(sandbox::Command),
    /// Serve the HTTP API (alias: `smolvm server start`).
    Server(server::Args),
    /// Print the HTTP API's OpenAPI document.
    Openapi,
    /// Time sandbox operations and print a table of medians and p95s.
    Bench(bench::Args),
    /// Internal: supervise one sandbox (started by smolvm itself).
    #[command(name = "__supervise", hide = true)]
    Supervise(supervise::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(
        cli.command,
        Command::Supervise(_) | Command::Server(_)
    ));

    if let Command::Supervise(args) = cli.command {
        return supervise::run(args);
    }
    if let Command::Openapi = cli.command {
        return server::print_openapi();
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Doctor(args) => doctor::run(args).await,
            Command::Image(command) => image::run(command).await,
            Command::Sandbox(command) => sandbox::run(command).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Server(args) => server::run(args).await,
            Command::Supervise(_) | Command::Openapi => unreachable!("handled above"),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", output::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings, or info for
/// the server and supervisors, whose stderr is their log file).
fn init_logging(long_running: bool) {
    let default = if long_running { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour codes only for a terminal, not for log files and pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
