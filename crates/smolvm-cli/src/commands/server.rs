//! `smolvm server` and `smolvm openapi`.

use std::process::ExitCode;

use smolvm_server::{DEFAULT_MAX_FILE_BYTES, DEFAULT_PORT, ServerConfig, TOKEN_ENV};

use super::open_engine;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    options: Options,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Start the server (the same as `smolvm server`).
    Start(Options),
}

#[derive(Debug, Clone, clap::Args)]
struct Options {
    /// Address to listen on. Anything but loopback needs --token.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// TCP port to listen on.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Require `Authorization: Bearer TOKEN` on every request.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    token: Option<String>,
    /// Origin that browsers may call the API from (sends CORS headers).
    #[arg(long)]
    cors_origin: Option<String>,
    /// Largest file upload accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_FILE_BYTES)]
    max_file_size: u64,
    /// Directory whose disk images `file://` image references may name;
    /// repeatable. Without it the API rejects `file://` images.
    #[arg(long, value_name = "DIR")]
    image_root: Vec<std::path::PathBuf>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = match args.action {
        Some(Action::Start(options)) => options,
        None => args.options,
    };
    let config = ServerConfig {
        host: options.host,
        port: options.port,
        token: options.token,
        cors_origin: options.cors_origin,
        max_file_bytes: options.max_file_size,
        image_roots: options.image_root,
    };
    smolvm_server::serve(config, open_engine()?).await?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the OpenAPI document the server serves at `/openapi.json`.
pub(crate) fn print_openapi() -> ExitCode {
    print!("{}", smolvm_server::openapi_json());
    ExitCode::SUCCESS
}
