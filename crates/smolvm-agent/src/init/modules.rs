//! Loading the kernel modules the initramfs ships (virtio drivers and the
//! like), in the order `/modules/load.order` lists them, with
//! `finit_module`.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::log::log;
use crate::session::Chain;

const MODULES_DIR: &str = "/modules";
const LOAD_ORDER: &str = "/modules/load.order";

/// `finit_module` flag: the kernel decompresses the module itself. Only
/// kernels built with `CONFIG_MODULE_DECOMPRESS` accept it.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// Extensions of compressed modules.
const COMPRESSED_EXTENSIONS: [&str; 3] = [".ko.xz", ".ko.zst", ".ko.gz"];

#[derive(Debug, thiserror::Error)]
enum ModuleError {
    #[error("failed to open kernel module {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kernel rejected module {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the kernel cannot load compressed module {path}; put it in the initramfs uncompressed (.ko)"
    )]
    Compressed {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Loads every listed module. A module that fails is logged and skipped.
/// A missing driver then shows up as a missing device, and this log line
/// on the console explains why.
pub(super) fn load_all() {
    let list = match fs::read_to_string(LOAD_ORDER) {
        Ok(list) => list,
        Err(e) => return log!("loading no kernel modules: reading {LOAD_ORDER} failed: {e}"),
    };
    let names = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    for name in names {
        if let Err(e) = load(&Path::new(MODULES_DIR).join(name)) {
            log!("{}", Chain(&e));
        }
    }
}

fn load(path: &Path) -> Result<(), ModuleError> {
    let file = File::open(path).map_err(|source| ModuleError::Open {
        path: path.into(),
        source,
    })?;
    let name = path.to_string_lossy();
    let compressed = COMPRESSED_EXTENSIONS.iter().any(|ext| name.ends_with(ext));
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };

    // SAFETY: finit_module takes an open descriptor, a NUL-terminated
    // parameter string (empty here) and integer flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            c"".as_ptr(),
            flags,
        )
    };
    if ret == 0 {
        return Ok(());
    }

    let source = io::Error::last_os_error();
    match source.raw_os_error() {
        Some(libc::EEXIST) => Ok(()),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOEXEC) if compressed => {
            Err(ModuleError::Compressed {
                path: path.into(),
                source,
            })
        }
        _ => Err(ModuleError::Load {
            path: path.into(),
            source,
        }),
    }
}
