//! `smolvm image ...`.

use std::process::ExitCode;

use smolvm_engine::Paths;
use smolvm_engine::image::{BuildOptions, BuildProgress, ImageStore, locate_agent_binary};

use crate::output::{print_json, table};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Build the default Debian image (reused when its inputs are unchanged).
    Build(BuildArgs),
    /// List built images.
    #[command(alias = "ls")]
    List(ListArgs),
    /// Remove a built image.
    Rm(RmArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct BuildArgs {
    /// Rebuild even when a matching image exists.
    #[arg(long)]
    force: bool,
    /// Print the built image as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RmArgs {
    /// Image name, as shown by `smolvm image list`.
    name: String,
    /// Remove it even when sandboxes boot from it; stopped ones then
    /// cannot start again.
    #[arg(long)]
    force: bool,
}

pub(crate) async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let images = ImageStore::new(&Paths::from_env());
    match command {
        Command::Build(args) => {
            let agent_binary = locate_agent_binary()?;
            let options = BuildOptions {
                agent_binary,
                force: args.force,
            };
            let image = tokio::task::spawn_blocking(move || {
                images.build_default(&options, &mut |step: &BuildProgress| eprintln!("{step}"))
            })
            .await??;
            if args.json {
                print_json(&serde_json::json!({
                    "name": image.name,
                    "fingerprint": image.fingerprint,
                    "kernel": image.kernel,
                    "initrd": image.initrd,
                    "root_disk": image.root_disk,
                    "kernel_release": image.kernel_release,
                }));
            } else {
                println!("{} ({})", image.name, image.fingerprint);
            }
        }
        Command::List(args) => {
            let list = images.list()?;
            if args.json {
                let json: Vec<_> = list
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "name": i.name,
                            "fingerprint": i.fingerprint,
                            "kernel_release": i.kernel_release,
                            "suite": i.suite,
                            "created_at": humantime::format_rfc3339_seconds(i.created).to_string(),
                            "root_disk_bytes": i.root_disk_bytes,
                            "root_disk_allocated_bytes": i.root_disk_allocated_bytes,
                        })
                    })
                    .collect();
                print_json(&json);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            short(&i.fingerprint),
                            i.kernel_release.clone(),
                            format!("{:.0} MiB", i.root_disk_allocated_bytes as f64 / MIB),
                            humantime::format_rfc3339_seconds(i.created).to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["NAME", "FINGERPRINT", "KERNEL", "SIZE", "CREATED"], &rows)
                );
            }
        }
        Command::Rm(args) => {
            if !args.force {
                let in_use = super::open_engine()?.image_files_in_use()?;
                let image = images.list()?.into_iter().find(|i| i.name == args.name);
                let used = image.is_some_and(|i| {
                    [i.kernel, i.initrd, i.root_disk]
                        .iter()
                        .any(|f| in_use.contains(f))
                });
                anyhow::ensure!(
                    !used,
                    "sandboxes boot from image {}; delete them first, or pass --force",
                    args.name
                );
            }
            images.remove(&args.name)?;
            println!("{}", args.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

const MIB: f64 = 1024.0 * 1024.0;

fn short(fingerprint: &str) -> String {
    fingerprint.chars().take(12).collect()
}
