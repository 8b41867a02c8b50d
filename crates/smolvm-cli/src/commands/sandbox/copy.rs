//! `smolvm sandbox cp`: files between the host and a sandbox.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use smolvm_engine::sandbox::FileReader;
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
                .with_context(|| format!("cannot open {}", source.display()))?;
            anyhow::ensure!(
                file.metadata().await?.is_file(),
                "{} is not a regular file; smolvm sandbox cp copies one file",
                source.display()
            );
            let mode = file.metadata().await?.permissions().mode() & 0o7777;
            let bytes = engine
                .write_file(&id, &path, mode, args.parents, &mut file)
                .await?;
            eprintln!("copied {bytes} bytes to {id}:{path}");
        }
        (Location::Sandbox { id, path }, Location::Host(destination)) => {
            let destination = resolve_destination(&destination, &path);
            let reader = engine.read_file(&id, &path).await?;
            let copied = download(reader, &destination).await?;
            eprintln!("copied {copied} bytes to {}", destination.display());
        }
        _ => anyhow::bail!(
            "one side of cp must be a sandbox path written ID:/absolute/path and the other a host path"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Returns where a download goes: into `destination` under the source's
/// file name when `destination` is a directory, like cp(1).
fn resolve_destination(destination: &Path, source: &str) -> PathBuf {
    let name = source
        .rsplit('/')
        .find(|part| !part.is_empty())
        .unwrap_or("file");
    if destination.is_dir() || destination.as_os_str().to_string_lossy().ends_with('/') {
        destination.join(name)
    } else {
        destination.to_path_buf()
    }
}

/// Writes a sandbox file to `destination` through a temporary file that
/// is created exclusively, with a random name, in the same directory, so a
/// planted symlink cannot redirect the write and concurrent downloads do
/// not share it. The mode is the guest's permission bits (no setuid,
/// setgid or sticky bit) less the host's umask.
async fn download(mut reader: FileReader, destination: &Path) -> anyhow::Result<u64> {
    let directory = match destination.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".smolvm-download-")
        .tempfile_in(&directory)
        .with_context(|| format!("cannot create a file in {}", directory.display()))?;
    let mut file = tokio::fs::File::from_std(temp.as_file().try_clone()?);

    let mut copied = 0u64;
    while let Some(chunk) = reader.next_chunk().await? {
        file.write_all(&chunk).await?;
        copied += chunk.len() as u64;
    }
    file.flush().await?;
    file.sync_all().await?;

    let mode = reader.mode & 0o777 & !current_umask();
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(mode))?;
    temp.persist(destination)
        .with_context(|| format!("cannot write {}", destination.display()))?;
    Ok(copied)
}

/// Returns the process umask. Reading it means setting it, so it is set
/// straight back; nothing else in this process creates files meanwhile.
fn current_umask() -> u32 {
    // SAFETY: umask only swaps the process file mode mask and cannot fail.
    let mask = unsafe { libc::umask(0o022) };
    // SAFETY: as above; this restores the original mask.
    unsafe { libc::umask(mask) };
    mask as u32
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
