//! The error type of the image store and builder.

use std::path::PathBuf;
use std::process::ExitStatus;

/// Errors from resolving, listing, building and removing images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to lock {path} against concurrent image builds")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "image manifest {path} is invalid; rebuild the image with `smolvm image build --force`"
    )]
    InvalidManifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "image manifest {path} has format {found}, but this smolvm reads format {expected}; \
         rebuild the image with `smolvm image build --force`"
    )]
    ManifestFormat {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    #[error(
        "image {name} is incomplete because {path} is missing; \
         rebuild it with `smolvm image build --force`"
    )]
    MissingImageFile { name: String, path: PathBuf },

    #[error("image {name} not found; `smolvm image list` shows the built images")]
    ImageNotFound { name: String },

    #[error(
        "invalid image name {name:?}: expected letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    InvalidImageName { name: String },

    #[error(
        "invalid image reference {reference:?}: expected `default`, `debian-bookworm`, \
         `file:///ABSOLUTE/PATH.ext4` (raw ext4 root filesystem) or \
         `file:///ABSOLUTE/PATH.qcow2` (qcow2 root disk)"
    )]
    InvalidReference { reference: String },

    #[error(
        "{feature} are not supported yet (reference {reference:?}); use `default` or a \
         `file:///` path to a raw ext4 or qcow2 root disk"
    )]
    Unsupported {
        reference: String,
        feature: &'static str,
    },

    #[error("root disk {path} from image reference {reference:?} cannot be opened")]
    DiskNotFound {
        reference: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "root disk {path} is neither a raw ext4 filesystem nor a qcow2 disk; \
         pass an ext4 filesystem image or a qcow2 disk holding one"
    )]
    UnrecognizedDisk { path: PathBuf },

    #[error(
        "smolvm-agent not found (searched {}); run scripts/build.sh or set SMOLVM_AGENT_BIN",
        display_paths(.searched)
    )]
    AgentNotFound { searched: Vec<PathBuf> },

    #[error(
        "agent binary {path} is dynamically linked (it has an ELF interpreter), but the \
         guest needs a static binary; build it with scripts/build.sh"
    )]
    AgentNotStatic { path: PathBuf },

    #[error("agent binary {path} is not an x86-64 ELF executable; build it with scripts/build.sh")]
    AgentNotElf { path: PathBuf },

    #[error("{step} needs root; run `smolvm image build` as root")]
    NotRoot { step: &'static str },

    #[error(
        "`{tool}` was not found; install the Debian package `{package}` (scripts/install-deps.sh does)"
    )]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("`{program}` failed ({status}): {stderr}")]
    CommandFailed {
        program: String,
        status: ExitStatus,
        stderr: String,
    },

    #[error("`{program}` failed ({status}); full log in {log}; last lines:\n{tail}")]
    LoggedCommandFailed {
        program: String,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },

    #[error(
        "no Linux {series} kernel package found behind `{metapackage}` in the apt package \
         lists; run `apt-get update` (scripts/install-deps.sh does)"
    )]
    KernelPackageNotFound {
        metapackage: &'static str,
        series: &'static str,
    },

    #[error("the kernel package {deb} contains no boot/vmlinuz-* or no lib/modules/<release>")]
    KernelNotInPackage { deb: PathBuf },

    #[error("kernel module {module} is neither in {modules_dep} nor built into the kernel")]
    ModuleNotFound {
        module: String,
        modules_dep: PathBuf,
    },

    #[error("kernel modules in {modules_dep} depend on each other in a cycle through {module}")]
    ModuleDependencyCycle {
        module: String,
        modules_dep: PathBuf,
    },

    #[error(
        "no Debian mirror found in the apt sources (read {}); set SMOLVM_DEBIAN_MIRROR to a \
         Debian archive URL",
        display_paths(.sources)
    )]
    MirrorNotFound { sources: Vec<PathBuf> },
}

fn display_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    if names.is_empty() {
        return "nothing".to_owned();
    }
    names.join(", ")
}

impl ImageError {
    /// Wraps an I/O error on `path`; `action` completes "failed to …".
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
