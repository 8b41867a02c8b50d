//! `smolvm sandbox cp`: files between the host and a sandbox.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::io::AsyncWriteExt;

use crate::commands::open_engine;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Source: a host path, or ID:/path in a sandbox.
    source: String,
    /// Destination: a host path, or ID:/path in a sandbox.
    destination: String,
    /// Create missing parent directories in the sandbox.
    #[arg(long, short = 'p')]
    parents: bool,
}

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Location {
    Host(PathBuf),
    Sandbox { id: String, path: String },
}

fn parse_location(text: &str) -> Location {
    match text.split_once(':') {
        Some((id, path)) if id.starts_with("sbx-") && path.starts_with('/') => Location::Sandbox {
            id: id.to_owned(),
            path: path.to_owned(),
        },
        _ => Location::Host(PathBuf::from(text)),
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let engine = open_engine()?;
    match (
        parse_location(&args.source),
        parse_location(&args.destination),
    ) {
        (Location::Host(source), Location::Sandbox { id, path }) => {
            let mut file = tokio::fs::File::open(&source)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", source.display()))?;
            let mode = file.metadata().await?.permissions().mode() & 0o7777;
            let bytes = engine
                .write_file(&id, &path, mode, args.parents, &mut file)
                .await?;
            eprintln!("copied {bytes} bytes to {id}:{path}");
        }
        (Location::Sandbox { id, path }, Location::Host(destination)) => {
            let mut reader = engine.read_file(&id, &path).await?;
            let temp = destination.with_extension("smolvm-partial");
            let mut file = tokio::fs::File::create(&temp)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", temp.display()))?;
            let mut copied = 0u64;
            let result: anyhow::Result<()> = async {
                while let Some(chunk) = reader.next_chunk().await? {
                    file.write_all(&chunk).await?;
                    copied += chunk.len() as u64;
                }
                file.flush().await?;
                Ok(())
            }
            .await;
            if let Err(e) = result {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
            let mode = std::fs::Permissions::from_mode(reader.mode & 0o7777);
            tokio::fs::set_permissions(&temp, mode).await?;
            tokio::fs::rename(&temp, &destination).await?;
            eprintln!("copied {copied} bytes to {}", destination.display());
        }
        _ => anyhow::bail!(
            "one side of cp must be a sandbox path written ID:/absolute/path and the other a host path"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            parse_location("sbx-abcdefghjk:/tmp/x"),
            Location::Sandbox {
                id: "sbx-abcdefghjk".into(),
                path: "/tmp/x".into()
            }
        );
        assert_eq!(
            parse_location("./file:name"),
            Location::Host("./file:name".into())
        );
        assert_eq!(
            parse_location("sbx-abc:relative"),
            Location::Host("sbx-abc:relative".into())
        );
    }
}
