//! `smolvm sandbox ...`.

mod copy;
mod exec;

use std::process::ExitCode;

use smolvm_engine::accel::AccelChoice;
use smolvm_engine::sandbox::{CreateProgress, SandboxInfo};
use smolvm_engine::spec::{BackendChoice, CreateRequest, NetworkMode, Os};

use super::open_engine;
use crate::output::{print_json, table};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create and boot a sandbox; prints its id once commands can run.
    Create(CreateArgs),
    /// List every sandbox on this host.
    #[command(alias = "ls")]
    List(JsonArg),
    /// Show one sandbox.
    Info(IdArgs),
    /// Power a sandbox off, keeping its disk.
    Stop(IdArgs),
    /// Boot a stopped sandbox again.
    Start(IdArgs),
    /// Stop and remove a sandbox with its disk.
    #[command(alias = "rm")]
    Delete(IdArgs),
    /// Remove sandboxes in `error` and leftover directories.
    Prune(JsonArg),
    /// Run a command in a sandbox; exits with the command's exit code
    /// (124 when it timed out).
    Exec(exec::Args),
    /// Copy a file between the host and a sandbox: `cp FILE ID:/path` or
    /// `cp ID:/path FILE`.
    Cp(copy::Args),
}

#[derive(Debug, clap::Args)]
pub(crate) struct JsonArg {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct IdArgs {
    /// Sandbox id, as printed by `smolvm sandbox create`.
    id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// Guest memory in MiB (128–16384).
    #[arg(long)]
    memory: Option<u32>,
    /// Disk size in MiB (512–262144).
    #[arg(long = "disk-size")]
    disk_size: Option<u32>,
    /// Virtual CPUs (1 to the host's core count).
    #[arg(long)]
    cpus: Option<u32>,
    /// VMM to run the sandbox: auto, qemu or firecracker.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    /// CPU accelerator: auto (probe KVM, else TCG), kvm or tcg.
    #[arg(long, env = "SMOLVM_ACCEL")]
    accel: Option<AccelChoice>,
    /// Guest operating system.
    #[arg(long, default_value = "linux")]
    os: Os,
    /// Image to boot: omit for the default Debian image, or file:///path
    /// to a raw ext4 or qcow2 root disk.
    #[arg(long)]
    image: Option<String>,
    /// Network: open (outbound access, host loopback blocked) or off.
    #[arg(long, default_value = "open")]
    network: NetworkMode,
    /// Print the sandbox as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Create(args) => create(args).await,
        Command::List(args) => list(args).await,
        Command::Info(args) => {
            let info = open_engine()?.get(&args.id).await?;
            show(&info, args.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop(args) => {
            let info = open_engine()?.stop(&args.id).await?;
            show_or_id(&info, args.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Start(args) => {
            let info = open_engine()?.start(&args.id).await?;
            show_or_id(&info, args.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete(args) => {
            open_engine()?.delete(&args.id).await?;
            if args.json {
                print_json(&serde_json::json!({ "id": args.id, "deleted": true }));
            } else {
                println!("{}", args.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune(args) => {
            let removed = open_engine()?.prune().await?;
            if args.json {
                print_json(&serde_json::json!({ "removed": removed }));
            } else {
                for id in removed {
                    println!("{id}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec(args) => exec::run(args).await,
        Command::Cp(args) => copy::run(args).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let engine = open_engine()?;
    let request = CreateRequest {
        os: Some(args.os),
        image: args.image,
        memory_mib: args.memory,
        disk_mib: args.disk_size,
        cpus: args.cpus,
        backend: args.backend,
        accel: args.accel,
        network: args.network,
    };
    let progress = |step: CreateProgress| match step {
        CreateProgress::Image(step) => eprintln!("image: {step}"),
        CreateProgress::Queued => eprintln!("waiting for a free boot slot..."),
        CreateProgress::Booting { id } => eprintln!("booting {id}..."),
    };
    let info = engine.create(request, &progress).await?;
    show_or_id(&info, args.json);
    Ok(ExitCode::SUCCESS)
}

async fn list(args: JsonArg) -> anyhow::Result<ExitCode> {
    let sandboxes = open_engine()?.list().await?;
    if args.json {
        print_json(&sandboxes);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = sandboxes
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.status.to_string(),
                s.image.clone(),
                format!("{} MiB", s.memory),
                s.cpus.to_string(),
                s.accel.to_string(),
                s.network.to_string(),
                s.created_at.clone(),
            ]
        })
        .collect();
    let header = [
        "ID", "STATUS", "IMAGE", "MEMORY", "CPUS", "ACCEL", "NETWORK", "CREATED",
    ];
    print!("{}", table(&header, &rows));
    Ok(ExitCode::SUCCESS)
}

fn show(info: &SandboxInfo, json: bool) {
    if json {
        print_json(info);
        return;
    }
    let lines = [
        ("id", info.id.clone()),
        ("status", info.status.to_string()),
        ("os", info.os.to_string()),
        ("image", info.image.clone()),
        ("memory", format!("{} MiB", info.memory)),
        ("disk_size", format!("{} MiB", info.disk_size)),
        ("cpus", info.cpus.to_string()),
        ("backend", info.backend.to_string()),
        ("accel", info.accel.to_string()),
        ("network", info.network.to_string()),
        ("created_at", info.created_at.clone()),
        (
            "boot_ms",
            info.boot_ms.map_or("-".into(), |ms| ms.to_string()),
        ),
        ("error", info.error.clone().unwrap_or_else(|| "-".into())),
    ];
    for (name, value) in lines {
        println!("{name:<11} {value}");
    }
}

fn show_or_id(info: &SandboxInfo, json: bool) {
    if json {
        print_json(info);
    } else {
        println!("{}", info.id);
    }
}
