//! Guest images: the store of built images, resolving image references to
//! bootable files, and the builder of the default Debian image.
//!
//! On disk, under the images folder:
//!
//! ```text
//! .lock                                 held while building or removing
//! .build-*/                             scratch space of a build in progress
//! default/manifest.json                 what the image consists of
//! default/vmlinuz-<release>-<fp>        Debian cloud kernel
//! default/initrd-<fp>.img               agent as /init plus virtio modules
//! default/rootfs-<fp>-<build time>.ext4 raw ext4 root filesystem
//! ```
//!
//! Downloads, debootstrap's package cache and build logs live in the cache
//! folder, under `kernel/`, `debootstrap/` and `logs/`.

mod agent;
mod build;
mod cpio;
mod error;
mod fingerprint;
mod host;
mod initramfs;
mod kernel;
mod manifest;
mod mirror;
mod modules;
mod reference;
mod rootfs;
mod staging;
mod store;

pub use agent::{AGENT_BIN_ENV, locate_agent_binary};
pub use build::{BuildOptions, BuildProgress};
pub use error::ImageError;
pub use mirror::MIRROR_ENV;
pub use reference::DiskFormat;
pub use store::{BootImage, ImageInfo, ImageStore};
